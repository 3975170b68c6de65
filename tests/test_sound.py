"""Sound mode (inputs on a grid, exact draws of the Gaussian's grid cells): the sampler, its charges."""
import math
import os
import types

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from costsmooth import ops, reference, sound
from tests.conftest import DEVICES, cuda_only, scalar_noise

H = 1 / 255


def grid_inputs(*shape, grid=H, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, round(1 / grid) + 1, shape, generator=g).float() * grid


# -- the table --------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma,grid", [(0.25, H), (1.0, H), (0.5, 1 / 16), (0.01, 1 / 16)])
def test_table_matches_the_cell_law(sigma, grid):
    t = sound.cell_table(sigma, grid)
    k = np.arange(t.cells) + t.first_cell
    exact = scipy.special.ndtr((k + 0.5) * grid / sigma) - scipy.special.ndtr((k - 0.5) * grid / sigma)
    np.testing.assert_allclose(t.probabilities, exact, rtol=1e-9, atol=1e-15)  # float64 ndtr vs 128-bit
    drawn = np.diff(np.concatenate([[0], t.thresholds[:-1].astype(object), [2**64]])).astype(float) / 2**64
    assert np.abs(drawn - exact).max() < 1e-15
    # the end cells reach 9.8 sigma: beyond them lies less than 2^-70; the law's rounding is ~cells * 2^-65
    assert (t.cells // 2) * grid / sigma >= 9.8
    assert 0 < t.tv <= t.cells * 2.0**-64 + 2.0**-70
    assert t.thresholds[-1] == 2**64 - 1 and np.all(np.diff(t.thresholds.astype(object)) >= 0)


def test_charges():
    # Box-Muller's radius is cut at word_to_uniform(0) = 2^-33: mass 2^-33 per pair, ceil(d / 2) pairs
    assert sound.gaussian_charge(150528) == 75264 * 2.0**-33  # an ImageNet input: 8.8e-6
    assert sound.gaussian_charge(3) == 2 * 2.0**-33
    assert sound.sound_charge(0.5, H, 3072) >= 3072 * sound.cell_table(0.5, H).tv
    assert sound.sound_charge(0.5, H, 3072) < 1e-12
    assert sound.noise_charge(64, 0.5) == sound.gaussian_charge(64)
    assert sound.noise_charge(64, 0.5, 1 / 16) == sound.sound_charge(0.5, 1 / 16, 64)


def test_parse_and_format_grid():
    assert sound.parse_grid("1/255") == 1 / 255 and sound.parse_grid(0.0625) == 1 / 16
    assert sound.format_grid(1 / 255) == "1/255" and sound.format_grid(0.3) == "0.3"
    for bad in ("0", "-1/2", "x", "1/0", "inf"):
        with pytest.raises(ValueError, match="grid step"):
            sound.parse_grid(bad)


# -- the kernels ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.12, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_grid_noise_matches_reference(device, sigma, dtype):
    x = grid_inputs(3, 5, 7, 3).to(device)  # 105 elements: eight-group steps and a remainder
    kw = dict(seed=5, stream=1, index_offset=11, sample_offset=3)
    out = ops.noisy_batch(x, 37, sigma, grid=H, dtype=dtype, **kw)
    ref = reference.noisy_grid(x, 37, sigma, H, dtype=dtype, **kw)
    assert out.dtype == dtype and torch.equal(out, ref)  # integer cells: bit-identical


def test_grid_noise_is_on_the_grid_and_channels_last(device):
    x = grid_inputs(2, 3, 4, 5).to(device)
    out = ops.noisy_batch(x, 6, 0.5, seed=1, grid=H, channels_last=True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out.contiguous(), ops.noisy_batch(x, 6, 0.5, seed=1, grid=H))
    k = out.double() / H  # grid points rounded to float32
    assert (k - k.round()).abs().max() < 1e-4
    buf = torch.empty(12, 3, 4, 5, device=device)
    assert torch.equal(ops.noisy_batch(x, 6, 0.5, seed=1, grid=H, out=buf), out.contiguous())
    # the noise of (seed, stream, input, sample) does not depend on the batch or on how n is split
    first = ops.noisy_batch(x[1:], 2, 0.5, seed=1, grid=H, index_offset=1, sample_offset=4)
    assert torch.equal(first, out.contiguous()[10:12])


def test_ties_are_decided_by_the_low_word():
    # A table whose thresholds share their high words with the words drawn for the first elements,
    # so that the low word decides: the kernels (AVX2 and scalar search) against the 64-bit reference.
    dim, n = 64, 4
    words = reference.noise_words(3, 1, torch.arange(0, 1), torch.arange(0, n), torch.arange(0, dim // 4))
    hi = sorted(set(words.flatten().tolist()))[::3]
    rng = np.random.default_rng(0)
    t = sorted({(h << 32) | int(rng.integers(0, 2**32)) for h in hi} | {int(v) for v in rng.integers(0, 2**63, 40)})
    thresholds = np.array(t + [2**64 - 1], dtype=np.uint64)
    table = types.SimpleNamespace(thresholds=thresholds, cells=len(thresholds))
    guide = sound._guide(thresholds)
    cells = torch.zeros(1, dim, dtype=torch.int32)
    out = torch.empty(n, dim, dtype=torch.float64)
    torch.ops.costsmooth.noisy_grid_into(cells, torch.from_numpy(thresholds.view(np.int64)), torch.from_numpy(guide),
                                         0, 1.0, n, 3, 1, 0, 0, out)
    expected = reference.noise_cells(table, 3, 1, 0, 1, 0, n, dim).reshape(n, dim).double()
    assert torch.equal(out, expected)
    ties = sum(1 for w in words.flatten().tolist() if w in set(hi))
    assert ties >= 20  # the low word was needed this often


def test_cpu_simd_and_scalar_cells_agree(tmp_path):
    x = grid_inputs(3, 2, 11, 13)  # 286 elements: full eight-group steps and a scalar remainder
    path, scalar = scalar_noise(tmp_path, x, 50, 0.7, seed=9, grid=H)
    assert path == "scalar"
    assert torch.equal(ops.noisy_batch(x, 50, 0.7, seed=9, grid=H), scalar)


@cuda_only
def test_cuda_cells_equal_cpu_cells():
    x = grid_inputs(4, 3, 9, 9)
    for sigma in (0.12, 0.5, 1.0):
        cpu = ops.noisy_batch(x, 64, sigma, seed=2, grid=H)
        assert torch.equal(ops.noisy_batch(x.cuda(), 64, sigma, seed=2, grid=H).cpu(), cpu)


# -- sampler exactness -------------------------------------------------------------------------------
def chi_square_pvalue(offsets: torch.Tensor, sigma: float, grid: float, law_sigma: float = None) -> float:
    """Pearson's chi-square of the drawn offsets against the exact cell law (computed here with scipy,
    independently of the table), cells pooled so that each expects at least 20 draws."""
    k = offsets.flatten().long().cpu().numpy()
    lo, hi = k.min(), k.max()
    observed = np.bincount(k - lo, minlength=hi - lo + 1).astype(float)
    s = law_sigma or sigma
    ks = np.arange(lo, hi + 1)
    p = scipy.stats.norm.cdf((ks + 0.5) * grid / s) - scipy.stats.norm.cdf((ks - 0.5) * grid / s)
    p[0] = scipy.stats.norm.cdf((lo + 0.5) * grid / s)  # the end bins take the tails
    p[-1] = scipy.stats.norm.sf((hi - 0.5) * grid / s)
    expected = p * k.size
    # pool from both ends towards the centre until each bin expects >= 20
    bins_o, bins_e, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed, expected):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 20:
            bins_o.append(acc_o)
            bins_e.append(acc_e)
            acc_o = acc_e = 0.0
    bins_o[-1] += acc_o
    bins_e[-1] += acc_e
    bins_o, bins_e = np.array(bins_o), np.array(bins_e)
    stat = ((bins_o - bins_e) ** 2 / bins_e).sum()
    return float(scipy.stats.chi2.sf(stat, len(bins_o) - 1))


def draw_offsets(sigma, grid, draws, device="cpu", seed=0):
    x = torch.zeros(10, 10000, device=device)
    return ops.noisy_batch(x, draws // 100000, sigma, seed=seed, grid=grid, dtype=torch.float64) / grid


# Each case: 1e7 draws; a correct sampler fails with probability 1e-4 (fixed seed: deterministic).
# The same draws against the law of a 1% larger sigma fail: the test can tell the laws apart.
@pytest.mark.parametrize("sigma,grid", [(0.25, H), (1.0, H), (0.12, H), (0.5, 1 / 16), (0.05, 1 / 16)])
def test_sampler_is_exact_chi_square(sigma, grid):
    k = draw_offsets(sigma, grid, 10**7)
    assert torch.equal(k, k.round())
    assert chi_square_pvalue(k, sigma, grid) > 1e-4
    assert chi_square_pvalue(k, sigma, grid, law_sigma=sigma * 1.01) < 1e-6


@cuda_only
@pytest.mark.parametrize("sigma,grid", [(0.25, H), (1.0, H), (0.5, 1 / 16)])
def test_sampler_is_exact_chi_square_cuda(sigma, grid):
    k = draw_offsets(sigma, grid, 10**7, device="cuda")
    assert chi_square_pvalue(k, sigma, grid) > 1e-4
    assert torch.equal(k.cpu(), draw_offsets(sigma, grid, 10**7))


# -- refusals -------------------------------------------------------------------------------------------
def test_off_grid_inputs_are_refused_naming_the_first():
    x = grid_inputs(2, 1, 4, 4)
    x[1, 0, 2, 3] = 0.5
    x[1, 0, 3, 0] = 0.7
    with pytest.raises(ValueError, match=r"element \[1, 0, 2, 3\] is 0\.5.*not on the grid of step 1/255"):
        ops.noisy_batch(x, 2, 0.5, seed=0, grid=H)
    with pytest.raises(ValueError, match=r"element \[0\] is nan"):
        ops.noisy_batch(torch.tensor([float("nan")]), 2, 0.5, seed=0, grid=H)
    with pytest.raises(ValueError, match="cannot hold this grid"):
        ops.noisy_batch(grid_inputs(1, 8).bfloat16(), 2, 0.5, seed=0, grid=H)
    assert ops.noisy_batch(grid_inputs(1, 8).half(), 2, 0.5, seed=0, grid=H).dtype == torch.float16
    with pytest.raises(ValueError, match="one noise level"):
        ops.noisy_batch(grid_inputs(2, 8), 2, torch.tensor([0.5, 0.5]), seed=0, grid=H)


# -- certificates ------------------------------------------------------------------------------------------
class Threshold1D(torch.nn.Module):
    """f(y) = 0 below t, 1 above (a 1-D input)."""

    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, y):
        above = (y.flatten(1)[:, 0] > self.t).double()
        return torch.stack([1 - above, above], dim=1)


def test_sound_coverage_against_the_exact_cell_sum():
    # x = m h on the grid 1/16; f o q votes 0 for the cells (m + k) h <= 0.8. The exact smoothed
    # probability of class 0 is the sum of the cells' Gaussian probabilities (scipy, not the table).
    from costsmooth import Smooth, stats
    grid, sigma, m, trials, n = 1 / 16, 0.5, 8, 3000, 100
    model = Threshold1D(0.8)
    ks = np.arange(-200, 201)
    cell_p = scipy.stats.norm.cdf((ks + 0.5) * grid / sigma) - scipy.stats.norm.cdf((ks - 0.5) * grid / sigma)
    p_true = float(cell_p[(m + ks) * grid <= 0.8].sum())
    assert abs(p_true - scipy.stats.norm.cdf(4.5 * grid / sigma)) < 1e-12
    smooth = Smooth(model, 2, sigma, sound=True, grid=grid, seed=4)
    x = torch.full((trials, 1), m * grid)
    certs = smooth.certify_batch(x, n0=10, n=n, alpha=0.1)
    counts = np.array([c.counts[0] for c in certs])
    low = np.array([c.pA_lower if c.top_class == 0 else 0.0 for c in certs])
    # the counts are Bin(n, p_true): their mean is within 4.5 standard errors (false failure 1e-5)
    assert abs(counts.mean() / n - p_true) < 4.5 * math.sqrt(p_true * (1 - p_true) / (n * trials))
    # coverage: P(bound > p_true) <= alpha; the exact miss probability of the one-sided bound at
    # alpha = 0.1 and at 0.2 (a factor-2 error in the split) are far apart at these settings
    ks_n = np.arange(n + 1)
    miss = lambda level: float(scipy.stats.binom.pmf(ks_n, n, p_true)[stats.cp_lower(ks_n, n, level) > p_true].sum())
    limit = scipy.stats.binom.ppf(1 - 1e-4, trials, miss(0.1))  # false failure 1e-4
    assert scipy.stats.binom.ppf(1e-4, trials, miss(0.2)) > limit  # a factor-2 error would fail
    assert int((low > p_true).sum()) <= limit


class LatticeProbe(torch.nn.Module):
    """Votes 0 when some coordinate of the noisy input is tiny (0 < |y| < 2^-8) and not a multiple of 2^-30.

    From x = 0 the standard path gives y = fl(z / 2): tiny values carry bits below 2^-30. From x = 2^-6
    in every coordinate, y = fl(2^-6 + z / 2) is tiny only when the sum is exact (Sterbenz), a
    multiple of 2^-30. The two points are 2^-6 * 64 = 1 apart in L2.
    """

    def forward(self, y):
        y = y.double().flatten(1)
        tiny = (y.abs() < 2.0**-8) & (y != 0)
        off = (y * 2.0**30) != torch.round(y * 2.0**30)
        vote = (tiny & off).any(dim=1).double()
        return torch.stack([vote, 1 - vote], dim=1)


def test_floating_point_false_certificate_on_the_standard_path_and_none_in_sound_mode():
    from costsmooth import Smooth
    model, sigma = LatticeProbe(), 0.5
    x0 = torch.zeros(1, 64, 64)
    x1 = torch.full((1, 64, 64), 2.0**-6)
    assert float((x1 - x0).norm()) == 1.0
    standard = Smooth(model, 2, sigma, seed=0)
    pred0, radius0 = standard.certify(x0, 100, 1000, 0.001)
    pred1, radius1 = standard.certify(x1, 100, 1000, 0.001)
    # the standard path certifies class 0 at x0 beyond x1, where it certifies class 1: one is false
    assert pred0 == 0 and radius0 > 1.2
    assert pred1 == 1 and radius1 > 1.2
    # sound mode: the model sees grid points; x0's certificate is for class 1 (and true), never class 0
    sound_smooth = Smooth(model, 2, sigma, sound=True, seed=0)
    pred, radius = sound_smooth.certify(x0, 100, 1000, 0.001)
    assert pred == 1 and radius > 1.2
    with pytest.raises(ValueError, match="not on the grid of step 1/255"):
        sound_smooth.certify(x1, 100, 1000, 0.001)


def test_smooth_sound_arguments_and_charges():
    from costsmooth import Smooth
    model = Threshold1D(0.5)
    with pytest.raises(ValueError, match="pass sound=True"):
        Smooth(model, 2, 0.5, grid=1 / 16)
    s = Smooth(model, 2, 0.5, sound=True)
    assert s.sound and s.grid == 1 / 255
    assert s.noise_charge(10) == sound.sound_charge(0.5, 1 / 255, 10)
    assert Smooth(model, 2, 0.5).noise_charge(10) == 5 * 2.0**-33
    # every bound pays the charge: pA_lower is Clopper-Pearson's minus the charge
    from costsmooth import stats
    cert = Smooth(model, 2, 0.5, seed=1).certify_batch(torch.full((1, 1), 0.25), n0=10, n=500, alpha=0.01)[0]
    assert cert.pA_lower == np.nextafter(float(stats.cp_lower(cert.counts[cert.top_class], 500, 0.01)) - 2.0**-33,
                                         -np.inf)


def test_sequential_sound_mode_draws_the_grid_cells_and_pays_their_charge():
    # the packed scheduler draws each input's rows from the cell table: the counts at the stop are the
    # first `samples` grid samples of stream 1 (as sample_counts(grid=...)), whatever the packing
    from costsmooth import Smooth, sample_counts
    from costsmooth.certify import lower_bound
    from costsmooth.sequential import Boundary
    grid, sigma = 1 / 16, 0.5
    model = Threshold1D(0.8)
    X = torch.tensor([[0.0], [0.5], [0.75], [1.0], [0.25]])
    idx = [3, 4, 9, 10, 11]
    smooth = Smooth(model, 2, sigma, sound=True, grid=grid, seed=2)
    runs = [smooth.certify_batch_at(X, 0.3, 0.01, max_n=4000, indices=idx, batch_size=b, slots=k)
            for b, k in ((1000, None), (97, 2))]
    boundary = Boundary.geometric(0.01, 4000)
    for i, x, a, b in zip(idx, X, *runs):
        assert (a.decision, a.samples) == (b.decision, b.samples) and np.array_equal(a.counts, b.counts)
        ref = sample_counts(model, x[None], a.samples, sigma, seed=2, stream=1, index_offset=i, grid=grid)
        assert np.array_equal(ref[0].numpy(), a.counts)
        level = float(boundary.levels[np.searchsorted(boundary.checkpoints, a.samples)])
        assert a.pA_lower == lower_bound(a.counts[a.top_class], a.samples, level, sound.sound_charge(sigma, grid, 1))
    assert {r.decision for r in runs[0]} >= {"certified", "not_certified"}
    with pytest.raises(ValueError, match="not on the grid of step 1/16"):
        smooth.certify_batch_at(X + 0.01, 0.3, 0.01, max_n=1000)


def test_sequential_sound_false_certification_rate_against_the_exact_cell_sum():
    # f o q votes 0 for the cells (m + k) h <= 0.8 from x = 8/16: p_true = Phi(4.5 h / sigma), whose true
    # radius sigma * Phi^-1(p_true) is 0.28125. 400 independent inputs tested just above it: "certified" is
    # always wrong, and must happen at most alpha of the time (3 standard deviations of slack: false
    # failure < 0.2%). On Gaussian noise the model's p would be Phi(0.6) (radius 0.3): certified nearly always.
    from costsmooth import Smooth
    grid, sigma, alpha, trials = 1 / 16, 0.5, 0.1, 400
    true_radius = sigma * 4.5 * grid / sigma
    smooth = Smooth(Threshold1D(0.8), 2, sigma, sound=True, grid=grid, seed=12)
    results = smooth.certify_batch_at(torch.full((trials, 1), 0.5), true_radius + 1e-6, alpha, max_n=2000,
                                      labels=[0] * trials, first=32, growth=1.5)
    rate = np.mean([r.decision == "certified" for r in results])
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)
    assert np.mean([r.decision == "not_certified" for r in results]) < 0.5  # a hard case, mostly undecided


def test_training_noise_in_sound_mode_gives_the_model_exact_grid_points():
    from costsmooth.losses import NoiseSource
    from costsmooth.sampling import STREAM_TRAINING
    x = grid_inputs(3, 5, grid=1 / 16, seed=1).requires_grad_(True)
    src = NoiseSource(seed=5, grid=1 / 16)
    drawn = src.draw(x, 4, 0.5)
    ref = ops.noisy_batch(x.detach(), 4, 0.5, seed=5, stream=STREAM_TRAINING, grid=1 / 16)
    assert torch.equal(drawn, ref)  # the grid points of f o q, bit for bit
    drawn.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, 4.0))  # the gradient passes to x unchanged
    offsets = src.noise(x.detach(), 2, 0.5)  # the next inputs' offsets: multiples of the grid step
    assert torch.equal(offsets * 16, torch.round(offsets * 16)) and src.counter == 6
    with pytest.raises(ValueError, match="not on the grid of step 1/16"):
        src.draw(x.detach() + 0.01, 1, 0.5)


def test_train_sound_draws_grid_noise_and_refuses_what_leaves_the_grid(tmp_path, capsys, monkeypatch):
    import costsmooth.losses
    from costsmooth.cli import main
    grids = []
    real = costsmooth.losses.ops.noisy_batch

    def spy(*args, **kwargs):
        grids.append((kwargs.get("grid"), kwargs.get("stream", 0)))
        return real(*args, **kwargs)

    monkeypatch.setattr(costsmooth.losses.ops, "noisy_batch", spy)
    common = ["--epochs", "1", "--batch", "256", "--quiet"]
    assert main(["train", "digits", "mlp", str(tmp_path / "a"), "--sound"] + common) == 0
    # the digits' grid for every draw: training (stream 2) and the epoch's accuracy under noise (stream 0)
    assert set(grids) == {(1 / 16, 2), (1 / 16, 0)}
    assert torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["settings"]["grid"] == 1 / 16
    capsys.readouterr()
    assert main(["train", "digits", "mlp", str(tmp_path / "a"), "--resume", "--epochs", "2"] + common[2:]) == 2
    assert "grid: 0.0625 in the checkpoint, None now" in capsys.readouterr().err
    for extra, message in ((["--loss", "smoothadv"], "the smoothadv loss attacks them off the grid"),
                           (["--mixup", "1"], "--mixup mixes inputs off the grid"),
                           (["--grid", "1/255"], "not on the grid of step 1/255")):
        assert main(["train", "digits", "mlp", str(tmp_path / "b"), "--sound"] + extra + common) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err
    assert main(["train", "digits", "mlp", str(tmp_path / "b"), "--grid", "1/16"] + common) == 2
    assert "add --sound" in capsys.readouterr().err


# -- command line ----------------------------------------------------------------------------------------
@pytest.fixture
def grid_files(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x = torch.randint(0, 17, (12, 6)).float() / 16
    with torch.no_grad():
        y = model(x).argmax(1)
    torch.jit.save(torch.jit.script(model), str(tmp_path / "model.pt"))
    torch.save({"inputs": x, "labels": y, "split": ["test"] * 12}, tmp_path / "data.pt")
    return tmp_path


def test_certify_sound_records_the_charge_and_recertify_pays_it(grid_files, capsys):
    from costsmooth.cli import main
    from costsmooth.certify import certify_from_counts
    from costsmooth.results import read_counts, read_meta, read_tsv
    d = grid_files
    args = ["certify", str(d / "data.pt"), str(d / "model.pt"), "0.5", str(d / "sound.tsv"), "--N0", "20", "--N",
            "500", "--sound", "--grid", "1/16"]
    assert main(args) == 0
    meta = read_meta(str(d / "sound.tsv"))
    assert meta["noise"] == "sound" and meta["grid"] == 1 / 16
    assert meta["charge"] == sound.sound_charge(0.5, 1 / 16, 6)
    assert main(args[:5] + ["--N0", "20", "--N", "500"]) == 2  # resuming with the standard noise is refused
    assert "charge" in capsys.readouterr().err
    assert main(["certify", str(d / "data.pt"), str(d / "model.pt"), "0.5", str(d / "std.tsv"), "--N0", "20",
                 "--N", "500"]) == 0
    assert read_meta(str(d / "std.tsv"))["charge"] == 3 * 2.0**-33 and read_meta(str(d / "std.tsv"))["noise"] == "gaussian"
    # recertify recomputes the same bounds from the saved counts, charge included
    assert main(["recertify", str(d / "std.tsv"), str(d / "re.tsv")]) == 0
    assert [r["pA_lower"] for r in read_tsv(str(d / "re.tsv"))] == [r["pA_lower"] for r in read_tsv(str(d / "std.tsv"))]
    saved = read_counts(str(d / "std.tsv"))
    ids = sorted(saved)
    certs = certify_from_counts(np.array([saved[i]["selection"] for i in ids]),
                                np.array([saved[i]["estimation"] for i in ids]), 0.001, 0.5, charge=3 * 2.0**-33)
    assert [float(r["pA_lower"]) for r in read_tsv(str(d / "std.tsv"))] == [c.pA_lower for c in certs]


def test_certify_sequential_sound_runs_on_the_grid_and_records_its_charge(grid_files, capsys):
    from costsmooth.cli import main
    from costsmooth.results import read_meta, read_tsv
    d = grid_files
    out = str(d / "seq.tsv")
    assert main(["certify", str(d / "data.pt"), str(d / "model.pt"), "0.5", out, "--sequential", "--radius", "0.1",
                 "--N0", "20", "--max-n", "2000", "--sound", "--grid", "1/16", "--quiet"]) == 0
    meta = read_meta(out)
    assert meta["noise"] == "sound" and meta["grid"] == 1 / 16 and meta["charge"] == sound.sound_charge(0.5, 1 / 16, 6)
    assert len(read_tsv(out)) == 12
    assert main(["certify", str(d / "data.pt"), str(d / "model.pt"), "0.5", str(d / "seq2.tsv"), "--sequential",
                 "--radius", "0.1", "--sound", "--quiet"]) == 2  # the default grid 1/255 does not hold them
    assert "not on the grid of step 1/255" in capsys.readouterr().err


def test_certify_sound_refusals(grid_files, capsys):
    from costsmooth.cli import main
    d = grid_files
    base = ["certify", str(d / "data.pt"), str(d / "model.pt"), "0.5"]
    assert main(base + [str(d / "a.tsv"), "--grid", "1/16"]) == 2
    assert "add --sound" in capsys.readouterr().err
    assert main(base + [str(d / "b.tsv"), "--sound"]) == 2  # the default grid 1/255 does not hold these inputs
    err = capsys.readouterr().err
    assert "input 0 of" in err and "not on the grid of step 1/255" in err and "Traceback" not in err
    assert not os.path.exists(d / "b.tsv")
    assert main(base + [str(d / "c.tsv"), "--sound", "--grid", "0"]) == 2
    assert "grid step" in capsys.readouterr().err
