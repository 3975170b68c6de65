"""Input-dependent smoothing (costsmooth.input_dependent) against cases where the truth is known."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import ncx2, norm

from costsmooth import CostMatrix, Smooth, certify_from_counts, sample_counts
from costsmooth.certify import conservative_sigma
from costsmooth.cli import main
from costsmooth.input_dependent import (FLOAT32_RATIO_SLACK, LAMBDA_MAX, KNNSigma, admissible_ratio,
                                        certificates_from_counts, certified_radius, check_sigma_fn,
                                        two_class_radius, worst_case_probability)
from costsmooth.input_dependent_certify import _ncx2_xi
from costsmooth.losses import CSRSSeedwise, GaussianAugmentation, MACER, NoiseSource
from costsmooth.results import COLUMNS, ResultWriter, read_tsv

from .models import Linear2


# ---------------------------------------------------------------------------------------------
# The radius
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.5000001, 0.6, 0.9, 0.999, 1 - 1e-9])
@pytest.mark.parametrize("dim", [1, 784, 150528])
def test_r0_is_cohen(p, dim):
    for sigma0 in (0.12, 0.5, 3.0):
        assert certified_radius(p, sigma0, 0.0, dim) == pytest.approx(sigma0 * norm.ppf(p), abs=1e-9)
        assert two_class_radius(p, 1 - p, sigma0, 0.0, dim) == pytest.approx(sigma0 * norm.ppf(p), abs=1e-9)


def test_no_radius_at_or_below_one_half():
    assert certified_radius(0.5, 1.0, 0.1, 10) == 0.0
    assert certified_radius(0.3, 1.0, 0.0, 10) == 0.0
    assert two_class_radius(0.4, 0.4, 1.0, 0.1, 10) == 0.0


def test_radius_decreases_in_r_and_dim_and_stays_below_cohen():
    p, sigma0 = 0.99, 0.5
    cohen = sigma0 * norm.ppf(p)
    rs = [0.0, 1e-4, 1e-3, 0.01, 0.05, 0.2, 1.0]
    dims = [1, 2, 5, 64, 784, 3072, 150528]
    table = np.array([[certified_radius(p, sigma0, r, d) for r in rs] for d in dims])
    assert np.all(table <= cohen + 1e-12)
    assert np.all(np.diff(table, axis=1) <= 1e-12), table  # non-increasing in r
    assert np.all(np.diff(table, axis=0) <= 1e-12), table  # non-increasing in dim
    assert table[-1, 3] < 0.4 * cohen  # the curse of dimensionality: r = 0.01 at 224x224x3
    assert table[0, 3] > cohen - 1e-6  # in dim 1 the same r costs almost nothing


def test_radius_is_monotone_pass_boundary():
    # Every d below the returned radius passes, the first 1e-6 beyond fails (the search's claim).
    from costsmooth.input_dependent_certify import _passes
    for p, sigma0, r, dim in [(0.9, 0.5, 0.3, 2), (0.99, 0.25, 0.05, 784), (0.999, 1.0, 0.01, 3072)]:
        radius = certified_radius(p, sigma0, r, dim)
        d = np.linspace(0, radius, 200)
        assert _passes(p, 1 - p, d, sigma0, r, dim, 0.0).all()
        assert not _passes(p, 1 - p, np.array([radius * (1 + 1e-6)]), sigma0, r, dim, 0.0)[0]


def test_worst_case_probability_is_quasi_convex_in_sigma1():
    # The radius checks sigma1 at the ends of the semi-elastic band (plus midpoints and sigma0); that
    # bounds the band's maximum because xi is quasi-convex in sigma1. Check on a sweep.
    u = np.linspace(-1.5, 1.5, 301)
    for dim in (1, 5, 784, 150528):
        for pb in (1e-3, 0.1, 0.45):
            for t in (0.01, 0.5, 2.0):
                xi = worst_case_probability(pb, t, 1.0, np.exp(u), dim)
                i = int(np.argmin(xi))
                assert np.all(np.diff(xi[:i + 1]) <= 1e-12) and np.all(np.diff(xi[i:]) >= -1e-12), (dim, pb, t)


def test_sigma1_equal_sigma0_is_cohen_and_the_limit_is_safe():
    pb, d, dim = 0.1, 0.7, 3072
    cohen = norm.cdf(norm.ppf(pb) + d)
    assert worst_case_probability(pb, d, 1.0, 1.0, dim) == pytest.approx(cohen, abs=1e-15)
    for eps in (1e-15, 1e-12, 1e-9, 1e-7):
        for s in (1 - eps, 1 + eps):
            xi = worst_case_probability(pb, d, 1.0, s, dim)
            assert np.isfinite(xi)
            # the limit never undercuts Cohen's value and converges to it
            assert cohen - 1e-12 <= xi <= cohen + 1e-3
    # Across the switch (lam0 = LAMBDA_MAX) the safe limit is an upper bound of the direct formula,
    # which scipy still computes accurately a little beyond the switch.
    for side in (-1, 1):
        for factor in (1.5, 10.0):
            gap = side * d / math.sqrt(LAMBDA_MAX * factor)  # 1 - s^2 for lam0 = factor * LAMBDA_MAX
            s = math.sqrt(1 - gap)
            direct = float(_ncx2_xi(np.array(pb), np.array(d), np.array(s), dim))
            assert worst_case_probability(pb, d, 1.0, s, dim) >= direct - 1e-12
    # tiny r: a finite radius just below Cohen's (the limit keeps it conservative)
    for dim in (1, 784, 150528):
        radius = certified_radius(0.99, 0.5, 1e-9, dim)
        assert 0.95 * 0.5 * norm.ppf(0.99) < radius <= 0.5 * norm.ppf(0.99)


def _mc_worst_case(pb, d, sigma0, sigma1, dim, m, rng):
    """Monte Carlo P1 of the likelihood-ratio superlevel set with P0 = pb (no chi-square involved)."""
    delta = np.zeros(dim)
    delta[0] = d

    def llr(z):
        return (-((z - delta) ** 2).sum(1) / (2 * sigma1 ** 2) + (z ** 2).sum(1) / (2 * sigma0 ** 2)
                - dim * math.log(sigma1 / sigma0))

    z0 = rng.standard_normal((m, dim)) * sigma0
    tau = np.quantile(llr(z0), 1 - pb)
    z1 = delta + rng.standard_normal((m, dim)) * sigma1
    return float((llr(z1) >= tau).mean())


# Tolerance 0.015 is > 5 standard deviations of the estimate (binomial error of P1 ~ 0.9e-3 at
# m = 300000, plus the threshold's quantile error times the likelihood ratio ~ 2e-3): each comparison
# fails falsely with probability < 1e-6 (and the seed is fixed).
MC_TOL = 0.015


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_worst_case_probability_matches_monte_carlo_of_the_likelihood_ratio_set(dim):
    rng = np.random.default_rng(dim)
    for pb, d, s in [(0.1, 0.6, 0.6), (0.1, 0.6, 1.7), (0.3, 0.2, 0.9), (0.02, 1.0, 1.3)]:
        mc = _mc_worst_case(pb, d, 1.0, s, dim, 300_000, rng)
        assert worst_case_probability(pb, d, 1.0, s, dim) == pytest.approx(mc, abs=MC_TOL), (pb, d, s)


@pytest.mark.parametrize("dim,p,r", [(1, 0.9, 1.0), (2, 0.95, 0.5), (5, 0.99, 0.3)])
def test_radius_boundary_matches_monte_carlo(dim, p, r):
    # At the certified radius the worse end of the band reaches worst-case P(B) = 1/2 (Monte Carlo).
    sigma0 = 0.5
    radius = certified_radius(p, sigma0, r, dim)
    assert 0 < radius < sigma0 * norm.ppf(p)
    rng = np.random.default_rng(10 + dim)
    ends = [sigma0 * math.exp(-r * radius), sigma0 * math.exp(r * radius)]
    worst = max(_mc_worst_case(1 - p, radius, sigma0, s1, dim, 300_000, rng) for s1 in ends)
    assert worst == pytest.approx(0.5, abs=MC_TOL)


class _FarSet(torch.nn.Module):
    """1-D classifier: class 1 (B) when |z - c| >= rho, else class 0 (A)."""

    def __init__(self, c, rho):
        super().__init__()
        self.c, self.rho = float(c), float(rho)

    def forward(self, x):
        b = ((x[:, 0].double() - self.c).abs() >= self.rho).double()
        return torch.stack([1 - b, b], dim=1)


def test_naive_per_input_cohen_radius_is_provably_wrong():
    # sigma(x) = exp(x) in 1-D is 1-semi-elastic. At x0 = 0 (sigma0 = 1) the classifier below has
    # p_A = 0.9 exactly, so Cohen's formula at the per-input sigma claims radius Phi^-1(0.9) = 1.28.
    # At x1 = 1 (inside it), sigma1 = e and the smoothed classifier predicts B: P1(B) = 0.575 (exact,
    # normal CDFs). The sound radius is below 1.
    r, d, s0, s1, p_a = 1.0, 1.0, 1.0, math.e, 0.9
    c = d * s0 ** 2 / (s0 ** 2 - s1 ** 2)
    rho = s0 * math.sqrt(ncx2.ppf(p_a, 1, s0 ** 2 * d ** 2 / (s0 ** 2 - s1 ** 2) ** 2))
    p0_b = norm.cdf((c - rho) / s0) + norm.sf((c + rho) / s0)
    p1_b = norm.cdf((c - rho - d) / s1) + norm.sf((c + rho - d) / s1)
    assert p0_b == pytest.approx(1 - p_a, abs=1e-12)
    assert p1_b > 0.57
    naive = s0 * norm.ppf(p_a - 1e-12)
    assert naive > d  # the naive certificate covers x1 ...
    assert certified_radius(p_a, s0, r, 1) < d  # ... the sound one does not
    assert worst_case_probability(1 - p_a, d, s0, s1, 1) == pytest.approx(p1_b, abs=1e-9)

    # End to end through the sampling engine: sigma(x) = exp(r * x).
    def sigma_fn(x):
        return torch.exp(r * x[:, 0].double())
    sigma_fn.semi_elasticity = r
    smooth = Smooth(_FarSet(c, rho), 2, sigma_fn, batch_size=20000, seed=3)
    x0, x1 = torch.zeros(1, 1, dtype=torch.float64), torch.full((1, 1), d, dtype=torch.float64)
    certs = smooth.certify_batch(torch.cat([x0, x1]), n0=100, n=20000, alpha=0.001)
    assert certs[0].prediction == 0 and 0 < certs[0].radius < d
    # x1's counts: P(B) = 0.575, so B wins with margin (> 10 standard errors at n = 20000).
    assert certs[1].top_class == 1


def test_admissible_ratio_band():
    sigma0, p = 0.5, 0.99
    lo, hi = admissible_ratio(784, sigma0, p, 0.25)
    assert lo < 1 < hi
    for s in (lo, hi):
        assert worst_case_probability(1 - p, 0.25, sigma0, sigma0 * s, 784) < 0.5
    assert worst_case_probability(1 - p, 0.25, sigma0, sigma0 * lo * (1 - 1e-4), 784) >= 0.5
    assert worst_case_probability(1 - p, 0.25, sigma0, sigma0 * hi * (1 + 1e-4), 784) >= 0.5
    bands = [admissible_ratio(dim, sigma0, p, 0.25) for dim in (784, 3072, 150528)]
    widths = [b[1] - b[0] for b in bands]
    assert widths[0] > widths[1] > widths[2] > 0
    assert all(math.isnan(v) for v in admissible_ratio(784, sigma0, p, 5.0))  # far beyond Cohen's radius


def test_radius_arguments_are_checked():
    with pytest.raises(ValueError, match="semi-elasticity"):
        certified_radius(0.9, 0.5, -0.1, 10)
    with pytest.raises(ValueError, match="sigma0"):
        certified_radius(0.9, 0.0, 0.1, 10)
    with pytest.raises(ValueError, match="p_lower"):
        certified_radius(1.5, 0.5, 0.1, 10)
    with pytest.raises(TypeError, match="dim"):
        certified_radius(0.9, 0.5, 0.1, 2.5)


# ---------------------------------------------------------------------------------------------
# Certificates from counts
# ---------------------------------------------------------------------------------------------
def _random_counts(rng, batch, classes, n):
    probs = rng.dirichlet(np.full(classes, 0.3), size=batch)
    probs[:, 0] += 2.0
    probs /= probs.sum(1, keepdims=True)
    return np.stack([rng.multinomial(n, p) for p in probs]), np.stack([rng.multinomial(50, p) for p in probs])


def test_certificates_at_r0_equal_constant_sigma_exactly():
    rng = np.random.default_rng(0)
    est, sel = _random_counts(rng, 12, 4, 2000)
    labels = [0, 1, 2, 3] * 3
    cost = CostMatrix.seedwise(4, [0, 2])
    ref = certify_from_counts(sel, est, 0.001, 0.12, labels, cost)
    got = certificates_from_counts(sel, est, 0.001, torch.full((12,), 0.12), 0.0, 64, labels, cost)
    for a, b in zip(ref, got):
        assert (a.prediction, a.radius, a.pA_lower, a.cs_radius, a.target_radii) == \
               (b.prediction, b.radius, b.pA_lower, b.cs_radius, b.target_radii)
        assert b.sigma0 == conservative_sigma(0.12)


def test_certificates_with_r_use_the_sound_radius_at_the_drawn_sigma():
    rng = np.random.default_rng(1)
    est, sel = _random_counts(rng, 8, 3, 5000)
    sigma = torch.linspace(0.2, 0.9, 8, dtype=torch.float64) + 1e-3
    labels = [0, 1, 2, 0, 1, 2, 0, 1]
    cost = CostMatrix.seedwise(3, [0])
    certs = certificates_from_counts(sel, est, 0.001, sigma, 0.05, 784, labels, cost)
    ref = certify_from_counts(sel, est, 0.001, 0.5, labels, cost)
    for b, cert in enumerate(certs):
        s0 = float(np.float32(float(sigma[b])))
        assert cert.sigma0 == s0  # the float32 level the kernel draws with
        assert cert.pA_lower == ref[b].pA_lower and cert.top_class == ref[b].top_class
        expected = certified_radius(cert.pA_lower, s0, 0.05, 784, ratio_slack=FLOAT32_RATIO_SLACK)
        assert cert.radius == (expected if cert.pA_lower >= 0.5 else 0.0)
        assert cert.radius <= s0 * max(norm.ppf(cert.pA_lower), 0.0) + 1e-12  # never above Cohen at sigma0
        if cert.cs_radius is not None:
            cs_cohen = certify_from_counts(sel[b:b + 1], est[b:b + 1], 0.001, s0, [labels[b]], cost)[0]
            assert cert.cs_pA_lower == cs_cohen.cs_pA_lower and cert.target_upper == cs_cohen.target_upper
            assert cert.cs_radius <= cs_cohen.cs_radius + 1e-12
            for j, radius in cert.target_radii.items():
                assert radius <= cs_cohen.target_radii[j] + 1e-12
            assert cert.cs_radius == pytest.approx(min(cert.target_radii.values()), abs=1e-12) or \
                cert.top_is_target


def test_two_class_r0_is_the_cost_sensitive_closed_form():
    for pa, pb in [(0.7, 0.1), (0.45, 0.05), (0.99, 1e-4)]:
        assert two_class_radius(pa, pb, 0.3, 0.0, 100) == pytest.approx(0.15 * (norm.ppf(pa) - norm.ppf(pb)),
                                                                      abs=1e-12)
        r1 = two_class_radius(pa, pb, 0.3, 0.05, 100)
        assert 0 < r1 < 0.15 * (norm.ppf(pa) - norm.ppf(pb))


def test_sigma_function_without_semi_elasticity_is_refused():
    model = Linear2(torch.ones(4), 0.0)
    with pytest.raises(TypeError, match="semi_elasticity"):
        Smooth(model, 2, lambda x: torch.full((x.shape[0],), 0.5))

    def bad(x):
        return torch.full((x.shape[0],), 0.5)
    bad.semi_elasticity = -1.0
    with pytest.raises(ValueError, match="semi_elasticity"):
        check_sigma_fn(bad)


# ---------------------------------------------------------------------------------------------
# KNNSigma and the engine
# ---------------------------------------------------------------------------------------------
def _bank(n=300, shape=(1, 4, 4), seed=0):
    return torch.rand((n,) + shape, generator=torch.Generator().manual_seed(seed))


def test_knn_sigma_matches_brute_force_and_is_semi_elastic():
    bank = _bank()
    ks = KNNSigma(bank, sigma_base=0.4, r=0.3, k=7, chunk=37)
    x = torch.rand(25, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    dist = np.linalg.norm(x.reshape(25, 1, -1).double().numpy() - bank.reshape(1, 300, -1).double().numpy(), axis=2)
    dk = np.sort(dist, axis=1)[:, :7].mean(1)
    np.testing.assert_allclose(ks.distances(x).numpy(), dk, rtol=1e-12)
    np.testing.assert_allclose(ks(x).numpy(), 0.4 * np.exp(0.3 * (dk - ks.m)), rtol=1e-12)
    assert ks(x).dtype == torch.float64 and ks(x).shape == (25,)
    # default m: the median D_k of the bank, each point's own zero distance left out
    full = np.linalg.norm(bank.reshape(300, 1, -1).double().numpy() - bank.reshape(1, 300, -1).double().numpy(),
                          axis=2)
    np.fill_diagonal(full, np.inf)
    assert ks.m == pytest.approx(float(torch.tensor(np.sort(full, 1)[:, :7].mean(1)).median()), rel=1e-12)
    # semi-elasticity on random pairs, including very close ones
    y = x + 1e-3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    for a, b in ((x, y), (x, x.flip(0))):
        lhs = (ks(a).log() - ks(b).log()).abs()
        rhs = 0.3 * (a - b).double().flatten(1).norm(dim=1)
        assert bool((lhs <= rhs + 1e-12).all())
    clipped = KNNSigma(bank, sigma_base=0.4, r=3.0, k=7, m=ks.m, clip=(0.35, 0.45))
    assert float(clipped(x).min()) >= 0.35 and float(clipped(x).max()) <= 0.45
    assert ks.describe()["fn"] == "knn" and json.loads(json.dumps(ks.describe())) == ks.describe()


def test_knn_sigma_bad_arguments():
    with pytest.raises(ValueError, match="k=500"):
        KNNSigma(_bank(), sigma_base=0.5, k=500)
    with pytest.raises(ValueError, match="sigma_base"):
        KNNSigma(_bank(), sigma_base=-1.0)
    with pytest.raises(ValueError, match="clip"):
        KNNSigma(_bank(), sigma_base=0.5, clip=(0.6, 0.1))
    with pytest.raises(ValueError, match="elements"):
        KNNSigma(_bank(), sigma_base=0.5)(torch.rand(2, 5))


def test_smooth_with_knn_sigma_draws_per_input_noise_and_certifies_soundly():
    torch.manual_seed(0)
    bank = _bank()
    ks = KNNSigma(bank, sigma_base=0.5, r=0.2, k=5)
    w = torch.randn(16, dtype=torch.float64)
    model = Linear2(w, 0.3)
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(5)) * 2
    smooth = Smooth(model, 2, ks, batch_size=4000, seed=7)
    certs = smooth.certify_batch(x, n0=50, n=2000, alpha=0.001, indices=[10, 11, 12, 20, 21, 30])
    sigma = ks(x)
    assert len(set(np.round(sigma.numpy(), 6))) > 1  # inputs really get different sigmas
    # the noise used the per-input sigma: the same counts as the engine called with sigma [B]
    counts = sample_counts(model, x[:3], 2000, sigma[:3], seed=7, stream=1, index_offset=10)
    np.testing.assert_array_equal(np.stack([c.counts for c in certs[:3]]), counts.numpy())
    ref = certificates_from_counts(np.stack([c.selection_counts for c in certs]), np.stack([c.counts for c in certs]),
                                   0.001, sigma, 0.2, 16, charge=smooth.noise_charge(16))
    for cert, exp in zip(certs, ref):
        assert (cert.prediction, cert.radius, cert.sigma0) == (exp.prediction, exp.radius, exp.sigma0)
        if cert.pA_lower > 0.5:
            assert cert.radius < cert.sigma0 * norm.ppf(cert.pA_lower)  # strictly below the naive radius
    pred, radius = smooth.certify(x[0], n0=50, n=2000, alpha=0.001)
    assert radius <= float(sigma[0]) * norm.ppf(0.9999) and pred in (-1, 0, 1)


def test_losses_take_a_sigma_function():
    bank = _bank()
    ks = KNNSigma(bank, sigma_base=0.5, r=0.5, k=5, m=0.0)  # sigma grows with distance to the bank
    x = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    x[2:] += 3.0  # far from the bank: larger sigma
    sigma = ks(x)
    noise = NoiseSource(seed=1).noise(x, 4000, sigma).reshape(4, 4000 * 16)
    np.testing.assert_allclose(noise.std(1).numpy(), sigma.numpy(), rtol=0.03)  # 64000 draws: sd error ~0.3%
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    y = torch.tensor([0, 1, 2, 0])
    loss, _ = GaussianAugmentation(ks, seed=0)(model, x, y)
    loss.backward()
    assert torch.isfinite(loss) and model[1].weight.grad is not None
    loss, diag = CSRSSeedwise(ks, CostMatrix.seedwise(3, [0]), k=4)(model, x, y)
    assert torch.isfinite(loss)
    with pytest.raises(TypeError, match="number sigma"):
        MACER(ks)


# ---------------------------------------------------------------------------------------------
# Result files and the command line
# ---------------------------------------------------------------------------------------------
def test_sigma0_column_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(2)
    est, sel = _random_counts(rng, 3, 3, 500)
    sigma = torch.tensor([0.1, 1 / 3, 0.7777777], dtype=torch.float64)
    certs = certificates_from_counts(sel, est, 0.01, sigma, 0.1, 10, [0, 1, 2])
    out = str(tmp_path / "r.tsv")
    writer = ResultWriter(out, {"sigma": {"fn": "test"}})
    for i, cert in enumerate(certs):
        writer.write(i, cert, 0.0)
    writer.close()
    assert COLUMNS[-1] == "sigma0"
    rows = read_tsv(out)
    assert [float(r["sigma0"]) for r in rows] == [c.sigma0 for c in certs]
    # a file written before the sigma0 column resumes with its own width
    old = tmp_path / "old.tsv"
    old.write_text("\t".join(COLUMNS[:-1]) + "\n")
    (tmp_path / "old.tsv.meta.json").write_text(json.dumps({"sigma": 0.5}))
    writer = ResultWriter(str(old), {"sigma": 0.5})
    writer.write(0, certify_from_counts(sel[:1], est[:1], 0.01, 0.5)[0], 0.0)
    writer.close()
    assert len(read_tsv(str(old))) == 1


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    from costsmooth.data import load_dataset
    from costsmooth.models import build_model, save_checkpoint
    ds = load_dataset("digits", "train")
    path = tmp_path_factory.mktemp("m") / "model.pt"
    model = build_model("digits_cnn", 10, ds.input_shape, ds.mean, ds.std)
    save_checkpoint(str(path), model, "digits_cnn", 10, ds.input_shape)
    return path


def test_cli_certify_with_knn_sigma(digits_model, tmp_path, capsys):
    out = tmp_path / "knn.tsv"
    args = ["certify", "digits", str(digits_model), "0.5", str(out), "--N0", "10", "--N", "100", "--max", "4",
            "--device", "cpu", "--sigma-fn", "knn", "--sigma-r", "0.1", "--sigma-k", "5", "--seed-classes", "8"]
    assert main(args) == 0
    rows = read_tsv(str(out))
    assert len(rows) == 4 and all(float(r["sigma0"]) > 0 for r in rows)
    meta = json.loads((tmp_path / "knn.tsv.meta.json").read_text())
    assert meta["sigma"]["fn"] == "knn" and meta["sigma"]["r"] == 0.1 and meta["sigma"]["k"] == 5
    assert main(args) == 0  # resumes with the same settings
    assert main(["recertify", str(out), str(tmp_path / "re.tsv")]) == 2
    assert "input-dependent" in capsys.readouterr().err
    assert main(["certify", "digits", str(digits_model), "0.5", str(tmp_path / "x.tsv"), "--sigma-r", "0.1",
                 "--device", "cpu"]) == 2
    assert "--sigma-r needs --sigma-fn knn" in capsys.readouterr().err


def test_cli_admissible_ratio(capsys):
    assert main(["admissible-ratio", "--dim", "784", "--p", "0.99", "--d", "0.25"]) == 0
    out = capsys.readouterr().out
    lo, hi = admissible_ratio(784, 0.5, 0.99, 0.25)
    assert f"[{lo:.6f}, {hi:.6f}]" in out
    assert main(["admissible-ratio", "--p", "0.3"]) == 2


def test_training_accuracy_under_input_dependent_noise_keeps_the_inputs_dtype():
    # a sigma function returns float64 levels; the float32 model must still get float32 noisy inputs
    from costsmooth.train import noisy_accuracy
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(10, 4), torch.randint(0, 3, (10,))
    out = noisy_accuracy(model, x, y, lambda xb: torch.full((xb.shape[0],), 0.25, dtype=torch.float64), seed=1)
    assert 0.0 <= out["noisy_acc"] <= 1.0
