"""Certified calibration (SPEC 6): bounds against enumeration and closed forms, confidence intervals
against a classifier whose smoothed confidence is known, attacks, ACT losses, the command line."""
import copy
import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import binom, norm

import costsmooth
from costsmooth import calibration as cal
from costsmooth.certify import certify_from_counts
from costsmooth.sound import gaussian_charge
from tests.models import Linear2


def _random_boxes(rng, n, n_bins, snap=False):
    centre = rng.random(n)
    width = rng.random(n) * 0.35
    lo = np.clip(centre - width * rng.random(n), 0, 1)
    up = np.clip(centre + width * rng.random(n), 0, 1)
    if snap:  # box ends exactly on bin edges (the edge-ownership convention matters)
        lo = np.round(lo * n_bins) / n_bins
        up = np.maximum(lo, np.round(up * n_bins) / n_bins)
    return lo, up, rng.random(n) < 0.7


# -- certified ECE ----------------------------------------------------------------------------------

def test_certified_ece_exact_methods_equal_brute_force_and_admm_is_below():
    rng = np.random.default_rng(0)
    for trial in range(100):
        n_bins = 10 if trial % 3 == 0 else int(rng.integers(1, 6))
        lo, up, c = _random_boxes(rng, int(rng.integers(1, 7)), n_bins, snap=trial % 4 == 0)
        truth = cal.brute_force_certified_ece(lo, up, c, n_bins)
        milp = cal.certified_ece(lo, up, c, n_bins, method="milp")
        signs = cal.certified_ece(lo, up, c, n_bins, method="signs")
        admm = cal.certified_ece(lo, up, c, n_bins, method="admm")
        assert milp.exact and signs.exact and not admm.exact
        assert abs(milp.value - truth) <= 1e-9 and abs(signs.value - truth) <= 1e-9, (trial, truth, milp, signs)
        assert admm.value <= milp.value + 1e-12
        for res in (milp, signs, admm):  # each value is attained inside the boxes, with the plain ECE's bins
            assert np.all(res.confidences >= lo) and np.all(res.confidences <= up)
            assert np.array_equal(cal.bin_index(res.confidences, n_bins), res.bins)
            assert abs(cal.expected_calibration_error(res.confidences, c, n_bins) - res.value) <= 1e-12


def test_exact_solvers_agree_at_moderate_size_and_dominate_baselines():
    rng = np.random.default_rng(1)
    lo, up, c = _random_boxes(rng, 60, 10)
    milp = cal.certified_ece(lo, up, c, method="milp").value
    assert cal.certified_ece(lo, up, c, method="signs").value == pytest.approx(milp, abs=1e-12)
    assert cal.certified_ece(lo, up, c).method == "signs"  # auto
    for lower in (cal.certified_ece(lo, up, c, method="admm").value, cal.ece_at_brier_worst(lo, up, c),
                  cal.dece_ascent(lo, up, c, steps=50)):
        assert lower <= milp + 1e-12


def test_dece_gradient_matches_autograd():
    from costsmooth.calibration.bounds import _dece_grad
    rng = np.random.default_rng(4)
    z = torch.tensor(rng.random(40), requires_grad=True)
    c = torch.tensor(rng.random(40) < 0.6)
    cal.dece(z, c).backward()
    assert np.allclose(z.grad.numpy(), _dece_grad(z.detach().numpy(), c.numpy().astype(float), 10, 0.01), atol=1e-12)


def test_plain_ece_bin_convention():
    # bins [0, .5) and [.5, 1]: 0.5 belongs to the upper bin, 1.0 to the last
    z = np.array([0.5, 0.25, 1.0])
    c = np.array([True, False, True])
    assert list(cal.bin_index(z, 2)) == [1, 0, 1]
    assert cal.expected_calibration_error(z, c, 2) == pytest.approx((abs(0.5 + 0.0) + abs(-0.25)) / 3)


def test_zero_radius_degenerate_boxes_give_plain_metrics():
    rng = np.random.default_rng(2)
    z = np.concatenate([rng.random(20), np.linspace(0, 1, 11)])  # includes every bin edge exactly
    c = rng.random(z.size) < 0.6
    lo, up = cal.confidence_box(z, z, 0.0, 0.25)
    assert np.array_equal(lo, z) and np.array_equal(up, z)
    assert 0 < cal.certified_brier(lo, up, c) - cal.brier_score(z, c) < 1e-14  # rounded up, (N + 4) 2^-53
    plain = cal.expected_calibration_error(z, c, 10)
    for method in ("signs", "milp", "admm"):
        assert cal.certified_ece(lo, up, c, method=method).value == pytest.approx(plain, abs=1e-12)


def test_certified_brier_is_attained_and_dominates_any_point_in_the_boxes():
    rng = np.random.default_rng(3)
    lo, up, c = _random_boxes(rng, 50, 10)
    z_star = cal.brier_worst_confidences(lo, up, c)
    assert np.all((z_star >= lo) & (z_star <= up))
    cbs = cal.certified_brier(lo, up, c)
    assert cbs == cal.round_up_mean(cal.brier_score(z_star, c), 50) > cal.brier_score(z_star, c)
    exact = sum((Fraction(int(ci)) - Fraction(float(zi))) ** 2 for ci, zi in zip(c, z_star)) / len(c)
    assert Fraction(cbs) >= exact  # the float mean rounded up is above the exact one
    for _ in range(200):
        z = lo + (up - lo) * rng.random(lo.size)
        assert cal.brier_score(z, c) <= cbs


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="method"):
        cal.certified_ece([0.1], [0.2], [True], method="exact")
    with pytest.raises(ValueError, match="low <= up"):
        cal.certified_ece([0.3], [0.2], [True])
    with pytest.raises(ValueError, match="same length"):
        cal.certified_brier([0.1, 0.2], [0.3, 0.4], [True])
    with pytest.raises(ValueError, match="n_bins"):
        cal.expected_calibration_error([0.1], [True], n_bins=0)
    with pytest.raises(ValueError, match="method"):
        cal.confidence_interval([5.0], 10, 0.01, method="dkw")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cal.confidence_interval([11.0], 10, 0.01)


# -- confidences, intervals, boxes ---------------------------------------------------------------------

def _soft_confidence(t: float, sigma: float) -> float:
    """E sigmoid(2 (t + sigma e)), e ~ N(0, 1): the smoothed softmax of class 1 of Linear2([1, 0], 0)."""
    return integrate.quad(lambda e: norm.pdf(e) / (1 + np.exp(-2 * (t + sigma * e))), -12, 12, epsabs=1e-13)[0]


@pytest.mark.parametrize("method", ["hoeffding", "kl"])
def test_confidence_interval_covers_the_known_smoothed_confidence(method):
    # 400 independent estimation draws (distinct input indices) of n = 100 samples at alpha = 0.2. A valid
    # interval misses at most 20% of the time; the test fails when the misses exceed the binomial
    # 1 - 1e-6 quantile (false-failure rate < 1e-6 for a valid interval).
    sigma, t, n, alpha, draws = 0.5, 0.3, 100, 0.2, 400
    model = Linear2([1.0, 0.0], 0.0)
    x = torch.tensor([[t, 0.0]], dtype=torch.float64).repeat(draws, 1)
    stats = costsmooth.sample_statistics(model, x, n, sigma, seed=7, prob_sums=True)
    truth = _soft_confidence(t, sigma)
    low, up = cal.confidence_interval(stats.prob_sums[:, 1].numpy(), n, alpha, method)
    misses = int(((truth < low) | (truth > up)).sum())
    assert misses <= binom.ppf(1 - 1e-6, draws, alpha)
    if method == "kl":  # tighter than Hoeffding on the same sums, and still valid above
        h_low, h_up = cal.confidence_interval(stats.prob_sums[:, 1].numpy(), n, alpha, "hoeffding")
        assert np.all(up - low <= h_up - h_low + 1e-12)


def test_confidence_intervals_round_outward_against_exact_arithmetic():
    # Exact arithmetic (mpmath, 40 digits) against the float bounds: each must lie outside the exact
    # interval of the exact mean, or be clipped to [0, 1].
    mpmath = pytest.importorskip("mpmath")
    rng = np.random.default_rng(0)
    with mpmath.workdps(40):
        # Hoeffding from a float64 sum of n values (the engine's softmax sums): the sum errs by ~1e-9
        # here, far beyond one ulp of the bound.
        n, alpha = 100000, 1e-3
        v = rng.uniform(0.9, 1.0, n)
        mean = mpmath.fsum([mpmath.mpf(x) for x in v]) / n
        half = mpmath.sqrt(mpmath.log(2 / mpmath.mpf(alpha)) / (2 * n))
        low, up = cal.confidence_interval(float(np.cumsum(v)[-1]), n, alpha)
        assert low[0] <= mean - half and up[0] >= mean + half
        # Chernoff-KL: n KL(mean || bound) >= log(2 / alpha) at each end that is not clipped
        def kl(p, q):
            return sum(a * mpmath.log(a / b) for a, b in ((p, q), (1 - p, 1 - q)) if a > 0)
        for _ in range(150):
            n, alpha = int(rng.integers(10, 100000)), float(10 ** rng.uniform(-8, -1))
            total = float(rng.choice([0.0, 1.0, rng.uniform()])) * n
            low, up = (float(b[0]) for b in cal.confidence_interval(total, n, alpha, "kl"))
            mean, threshold = mpmath.mpf(total) / n, mpmath.log(2 / mpmath.mpf(alpha)) / n
            assert low <= mean <= up
            assert low == 0 or kl(mean, mpmath.mpf(low)) >= threshold
            assert up == 1 or kl(mean, mpmath.mpf(up)) >= threshold


@pytest.mark.parametrize("method", ["hoeffding", "kl"])
def test_confidence_intervals_pay_the_noise_charge(method):
    low, up = cal.confidence_interval([30.0, 99.0], 100, 0.01, method)
    c_low, c_up = cal.confidence_interval([30.0, 99.0], 100, 0.01, method, charge=1e-6)
    assert np.all(c_low <= low - 1e-6) and np.all(c_up >= np.minimum(up + 1e-6, 1.0))


def test_confidence_box_is_sound_and_tight():
    sigma, eps = 0.5, 0.3
    for t in (-0.4, 0.1, 0.6):
        z = _soft_confidence(t, sigma)
        lo, up = cal.confidence_box([z], [z], eps, sigma)
        for shift in np.linspace(-eps, eps, 7):  # the soft classifier stays inside the box
            assert lo[0] - 1e-12 <= _soft_confidence(t + shift, sigma) <= up[0] + 1e-12
        # a hard linear classifier meets the box ends exactly: z(x) = Phi(t / sigma)
        hard = norm.cdf(t / sigma)
        lo, up = cal.confidence_box([hard], [hard], eps, sigma)
        assert lo[0] == pytest.approx(norm.cdf((t - eps) / sigma), abs=1e-12)
        assert up[0] == pytest.approx(norm.cdf((t + eps) / sigma), abs=1e-12)


def test_certified_confidences_split_alpha_and_match_smooth():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 3)).double()
    x = torch.randn(12, 2, dtype=torch.float64)
    y = torch.randint(0, 3, (12,))
    conf, sel, est, sums = cal.sample_confidences(model, x, y, 0.5, n0=20, n=300, alpha=0.01, seed=3,
                                                  joint=False)
    charge = gaussian_charge(2)  # every certificate and interval pays the draw's noise charge
    assert conf.charge == charge
    certs = certify_from_counts(sel, est, 0.005, 0.5, y.tolist(), charge=charge)  # alpha/2 for the prediction
    assert conf.prediction.tolist() == [c.prediction for c in certs]
    assert conf.alpha_prediction == conf.alpha_interval == 0.005
    assert conf.level == pytest.approx(1 - 12 * 0.01)  # per-input intervals: the dataset level is 1 - N alpha
    # the same engine draw as Smooth without sums
    plain = costsmooth.Smooth(model, 3, 0.5, seed=3).certify_batch(x, y.tolist(), n0=20, n=300, alpha=0.005,
                                                                   indices=range(12))
    assert np.array_equal(np.stack([c.counts for c in plain]), est)
    assert np.allclose(sums.sum(1), 300)
    top = np.array([c.top_class for c in certs])
    low, up = cal.confidence_interval(sums[np.arange(12), top], 300, 0.005, charge=charge)
    assert np.array_equal(conf.low, low) and np.array_equal(conf.up, up)
    assert np.all(low < cal.confidence_interval(sums[np.arange(12), top], 300, 0.005)[0])
    # the default: all 12 inputs together at 1 - alpha, each certificate and interval at alpha/(2N)
    joint = cal.certified_confidences(sel, est, sums, y.tolist(), 0.01, 0.5)
    assert joint.joint and joint.level == pytest.approx(0.99)
    assert joint.alpha_interval == joint.alpha_prediction == pytest.approx(0.01 / 12 / 2)
    jc = certify_from_counts(sel, est, 0.01 / 24, 0.5, y.tolist())
    assert joint.prediction.tolist() == [c.prediction for c in jc]
    j_low, j_up = cal.confidence_interval(sums[np.arange(12), top], 300, 0.01 / 24)
    assert np.array_equal(joint.low, j_low) and np.array_equal(joint.up, j_up)
    assert np.all(joint.low <= conf.low) and np.all(joint.up >= conf.up) and np.any(joint.low < conf.low)
    assert cal.certified_confidences(sel, est, sums, y.tolist(), 0.1, 0.5, joint=False).level == 0.0  # N alpha > 1
    mask, lo, hi, c, _ = conf.box(0.2)
    assert np.array_equal(mask, (conf.prediction != -1) & (conf.radius > 0.2))
    assert np.all(lo <= conf.low[mask]) and np.all(hi >= conf.up[mask])
    with pytest.raises(ValueError, match="sum to the row's number of samples"):
        cal.certified_confidences(sel, est, sums * 0.5, y.tolist(), 0.01, 0.5)


# -- attacks and ACT -------------------------------------------------------------------------------

def _linear3():
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3).double()
    return model, torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))


def test_ace_attack_moves_confidence_at_fixed_prediction():
    model, x, y = _linear3()
    with torch.no_grad():
        p0 = model(x).softmax(1)
    pred = p0.argmax(1)
    conf0 = p0.max(1).values
    for eta, sign in (("down", -1), ("up", 1)):
        adv = cal.ace_attack(model, x, y, eps=0.5, eta=eta, steps=10)
        with torch.no_grad():
            p = model(adv).softmax(1)
        assert torch.equal(p.argmax(1), pred)
        assert (adv - x).norm(dim=1).max() <= 0.5 + 1e-9
        moved = sign * (p.gather(1, pred[:, None]).squeeze(1) - conf0)
        assert bool((moved >= -1e-12).all()) and float(moved.mean()) > 0.01
    # smoothed model, fixed noise: the hard vote is kept and the soft confidence goes down
    noise = costsmooth.losses.NoiseSource(0).noise(x, 8, 0.3)
    adv = cal.ace_attack(model, x, y, eps=0.5, eta="down", noise=noise, steps=10)
    assert torch.equal(cal.predictions(model, adv, noise), cal.predictions(model, x, noise))
    soft = costsmooth.attacks.soft_smoothed_probs
    with torch.no_grad():
        p_pred = cal.predictions(model, x, noise)[:, None]
        assert float((soft(model, adv, noise).gather(1, p_pred) - soft(model, x, noise).gather(1, p_pred)).mean()) < 0


@pytest.mark.parametrize("name", ["act_brier", "act_ece"])
def test_act_losses_train_and_resume_exactly(name):
    model, x, y = _linear3()
    loss_fn = costsmooth.losses.make_loss(name, 0.3, seed=2, eps=0.3, steps=3, m=2)
    loss, diag = loss_fn(model, x, y)
    loss.backward()
    assert torch.isfinite(loss) and model.weight.grad.abs().sum() > 0 and diag["perturbation"] > 0
    saved = copy.deepcopy(loss_fn.state_dict())
    again, _ = loss_fn(model, x, y)
    resumed = costsmooth.losses.make_loss(name, 0.3, seed=2, eps=0.3, steps=3, m=2)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed(model, x, y)[0], again)


def test_act_losses_register_when_calibration_is_imported():
    # losses sits below calibration and never imports it: make_loss names the module that defines the loss
    # until it (or costsmooth.train, which every command uses) is imported
    code = ("import costsmooth.losses as L, pytest; assert 'act_ece' not in L.LOSSES\n"
            "with pytest.raises(ValueError, match='defined in costsmooth.calibration: import costsmooth.calibration'):\n"
            "    L.make_loss('act_ece', 0.25)\n"
            "import costsmooth.train; print(type(L.make_loss('act_ece', 0.25)).__name__)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root, env=env)
    assert out.stdout.strip() == "ACTECE"


# -- command line, saved probability sums, fine-tuning -------------------------------------------------

def _toy_run(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(24, 2)
    data = tmp_path / "toy.pt"
    torch.save({"inputs": x, "labels": (x[:, 0] > 0).long(), "class_names": ["neg", "pos"]}, data)
    model = tmp_path / "model.pt"
    torch.save(Linear2([2.0, 0.5], 0.1), model)
    return str(data), str(model)


def test_calibration_sound_mode_samples_on_the_grid_and_equals_a_sound_certify_run(tmp_path, capsys):
    from costsmooth.cli import main
    from costsmooth.sound import sound_charge
    torch.manual_seed(0)
    x = torch.randint(-16, 17, (24, 2)).float() / 16  # on the grid 1/16
    data, model = str(tmp_path / "grid.pt"), str(tmp_path / "model.pt")
    torch.save({"inputs": x, "labels": (x[:, 0] > 0).long()}, data)
    torch.save(Linear2([2.0, 0.5], 0.1), model)
    common = ["--N0", "20", "--N", "300", "--split", "all", "--alpha", "0.01", "--quiet", "--trust-model-code"]
    sound_args = ["--sound", "--grid", "1/16"]
    eps = ["--eps", "0,0.2"]
    assert main(["calibration", data, model, "0.5", str(tmp_path / "a")] + common + sound_args + eps) == 0
    a = json.load(open(tmp_path / "a" / "calibration.json"))
    assert a["grid"] == 1 / 16 and a["charge"] == sound_charge(0.5, 1 / 16, 2)
    assert "sound mode on the grid 1/16" in open(tmp_path / "a" / "calibration.md").read()
    run = str(tmp_path / "run.tsv")
    assert main(["certify", data, model, "0.5", run, "--prob-sums"] + common + sound_args) == 0
    assert main(["calibration", "--from", run, str(tmp_path / "b")] + eps) == 0
    b = json.load(open(tmp_path / "b" / "calibration.json"))
    assert a["rows"] == b["rows"] and b["grid"] == 1 / 16
    # the standard path draws other noise: other tables
    assert main(["calibration", data, model, "0.5", str(tmp_path / "c")] + common + eps) == 0
    assert json.load(open(tmp_path / "c" / "calibration.json"))["rows"] != a["rows"]
    capsys.readouterr()
    assert main(["calibration", "--from", run, str(tmp_path / "d"), "--sound"] + eps) == 2
    assert "--from uses the run's recorded noise" in capsys.readouterr().err
    assert main(["calibration", data, model, "0.5", str(tmp_path / "e"), "--sound"] + common + eps) == 2
    assert "not on the grid of step 1/255" in capsys.readouterr().err


def test_calibration_command_from_engine_equals_offline_tables_of_certify_prob_sums(tmp_path):
    from costsmooth.cli import main
    data, model = _toy_run(tmp_path)
    common = ["--N0", "20", "--N", "300", "--split", "all", "--alpha", "0.01", "--quiet", "--trust-model-code"]
    run = str(tmp_path / "run.tsv")
    assert main(["certify", data, model, "0.5", run, "--prob-sums"] + common) == 0
    saved = [json.loads(line) for line in open(run + ".counts.jsonl")]
    assert len(saved) == 24 and all(abs(sum(r["prob_sums"]) - 300) < 1e-9 for r in saved)
    eps = ["--eps", "0,0.2,0.4"]
    assert main(["calibration", model, data, "0.5", str(tmp_path / "a")] + common + eps) == 2  # MODEL DATA: a hint
    assert not (tmp_path / "a").exists()
    assert main(["calibration", data, model, "0.5", str(tmp_path / "a")] + common + eps) == 0
    assert main(["calibration", "--from", run, str(tmp_path / "b")] + eps) == 0
    a = json.load(open(tmp_path / "a" / "calibration.json"))
    b = json.load(open(tmp_path / "b" / "calibration.json"))
    assert a["rows"] == b["rows"] and len(a["rows"]) == 3
    # CBS and CECE are maxima over the 24 boxes: by default they hold at 1 - alpha for all inputs together
    assert a["joint"] and a["level"] == pytest.approx(0.99) and a["rows"][0]["level"] == pytest.approx(0.99)
    text = open(tmp_path / "a" / "calibration.md").read()
    assert "probability >= 0.99 (1 - alpha, alpha=0.01 over all 24 inputs together" in text
    # per-input intervals only on request, and then the printed level is 1 - N alpha
    assert main(["calibration", "--from", run, str(tmp_path / "p"), "--per-input", "--alpha", "0.001"] + eps) == 0
    per = json.load(open(tmp_path / "p" / "calibration.json"))
    assert not per["joint"] and per["level"] == pytest.approx(1 - 24 * 0.001)
    assert "hold only with probability >= 0.976 (1 - N * alpha, N=24)" in open(tmp_path / "p" / "calibration.md").read()
    for row in a["rows"]:
        assert row["cece_kind"] == "exact" and row["cbs"] >= row["brier"] and row["cece"] >= row["ece_brier_worst"]
    assert (tmp_path / "a" / "reliability.png").stat().st_size > 0
    # recertify keeps the saved sums
    again = str(tmp_path / "again.tsv")
    assert main(["recertify", run, again]) == 0
    assert np.array_equal(cal.confidences_from_run(again).up, cal.confidences_from_run(run).up)
    # a run without saved sums is refused with the fix
    plain = str(tmp_path / "plain.tsv")
    assert main(["certify", data, model, "0.5", plain] + common) == 0
    with pytest.raises(ValueError, match="--prob-sums"):
        cal.confidences_from_run(plain)
    assert main(["calibration", "--from", plain, "x", "y"]) == 2
    assert main(["calibration", "--from", run]) == 2  # OUT missing
    assert main(["calibration", "--from", run, str(tmp_path / "c"), "--bins", "100000"]) == 2  # refused, not a hang


def test_train_init_fine_tunes_and_resume_checks_the_init_file(tmp_path):
    import hashlib
    from costsmooth.data import Dataset
    from costsmooth.train import train
    torch.manual_seed(0)
    x = torch.randn(32, 2)
    data = Dataset("toy", x, (x[:, 0] > 0).long(), ["neg", "pos"], [0.0, 0.0], [1.0, 1.0])
    start = train(data, "mlp", "gaussian", 0.25, str(tmp_path / "base"), epochs=1, progress=False)
    tuned = train(data, "mlp", "act_brier", 0.25, str(tmp_path / "act"), epochs=1, progress=False, init=start,
                  loss_kwargs={"steps": 1, "m": 2}, lr=1e-6)
    state = torch.load(tuned, weights_only=False)
    assert state["settings"]["init_sha256"] == hashlib.sha256(open(start, "rb").read()).hexdigest()
    base = torch.load(start, weights_only=False)["state_dict"]
    assert all(torch.allclose(state["state_dict"][k], base[k], atol=1e-4) for k in base)  # started from it
    with pytest.raises(ValueError, match="init_sha256"):
        train(data, "mlp", "act_brier", 0.25, str(tmp_path / "act"), epochs=1, progress=False, resume=True,
              loss_kwargs={"steps": 1, "m": 2}, lr=1e-6)
    with pytest.raises(ValueError, match="holds a mlp model"):
        train(data, "digits_cnn", "gaussian", 0.25, str(tmp_path / "x"), epochs=1, progress=False, init=start)
