"""Certificates against cases where the truth is known, and the SPEC formulas recomputed from counts."""
import numpy as np
import pytest
import scipy.stats
import torch
from scipy.stats import norm

from costsmooth import CostMatrix, Smooth, certify_from_counts, sample_counts, stats
from costsmooth.certify import cost_sensitive_certificate

from .models import Bins, Linear2


def linear_setup(p_a=0.9, sigma=0.5, dim=10):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(dim, generator=g, dtype=torch.float64)
    x = torch.randn(dim, generator=g, dtype=torch.float64)
    target_distance = sigma * norm.ppf(p_a)
    b = target_distance * float(w.norm()) - float(x @ w)  # w.x + b = distance * ||w||: class 1 at that distance
    model = Linear2(w, b)
    return model, x.float(), model.distance(x.float())


def test_linear_radius_never_exceeds_distance_beyond_alpha():
    # T independent certificates of the same input (distinct dataset indices: independent noise).
    # A valid certificate exceeds the true radius with probability <= alpha; the count of such
    # trials exceeds the binomial 1 - 1e-4 quantile with probability <= 1e-4 (false-failure rate).
    sigma, alpha, trials = 0.5, 0.05, 300
    model, x, distance = linear_setup(sigma=sigma)
    smooth = Smooth(model, 2, sigma, batch_size=20000, seed=1)
    certs = smooth.certify_batch(x.expand(trials, -1).contiguous(), n0=100, n=1000, alpha=alpha)
    assert all(c.prediction in (1, -1) for c in certs)
    exceed = sum(c.radius > distance for c in certs)
    assert exceed <= scipy.stats.binom.ppf(1 - 1e-4, trials, alpha)
    assert np.mean([c.radius for c in certs]) > 0.8 * distance  # and the certificates are not vacuous


def test_linear_radius_is_tight_at_large_n():
    # n = 100000, p_A = 0.9, alpha = 0.001: the CP lower bound is about 0.897, so the radius is within
    # about 1.3% below the truth; 2.5% leaves room for the Monte Carlo spread (> 5 standard errors).
    sigma = 0.5
    model, x, distance = linear_setup(sigma=sigma)
    prediction, radius = Smooth(model, 2, sigma, batch_size=50000, seed=2).certify(x, 100, 100000, 0.001)
    assert prediction == 1
    assert radius <= distance and radius == pytest.approx(distance, rel=0.025)


def test_predict_and_certify_follow_cohen_semantics():
    model, x, _ = linear_setup(p_a=0.9)
    smooth = Smooth(model, 2, 0.5, seed=3)
    assert smooth.predict(x, 1000, 0.001) == 1
    first = smooth.certify(x, 100, 2000, 0.001)
    second = smooth.certify(x, 100, 2000, 0.001)
    assert first != second  # each call draws fresh noise
    replay = Smooth(model, 2, 0.5, seed=3)
    replay.predict(x, 1000, 0.001)
    assert replay.certify(x, 100, 2000, 0.001) == first  # the same seed replays the same calls
    near = Smooth(Linear2(torch.ones(10, dtype=torch.float64), 0.0), 2, 0.5)
    assert near.certify(torch.zeros(10), 100, 1000, 0.001) == (-1, 0.0)  # on the boundary: abstain


def test_predict_tests_at_the_level_that_pays_the_draws_noise_charge():
    # Smooth.predict runs PREDICT on the counts of its draw at predict_level(alpha, n, charge): an alpha
    # just above the p-value (by less than the charge's factor (1 + 2^-32)^1000) abstains.
    from costsmooth.sound import gaussian_charge
    model, x, _ = linear_setup(p_a=0.56)
    counts = sample_counts(model, x[None], 1000, 0.5, seed=4, stream=1, index_offset=7)[0].numpy()
    p = stats.abstain_pvalue(int(counts.max()), int(counts.min()))
    assert 1e-6 < p < 0.01
    alpha = p * (1 + 1e-7)
    assert stats.predict_from_counts(counts, alpha) == 1
    assert stats.predict_level(alpha, 1000, gaussian_charge(x.numel())) < p
    assert Smooth(model, 2, 0.5, seed=4).predict(x, 1000, alpha, index=7) == -1


def spec_cs_radius(counts, top, targets, alpha, sigma, charge=0.0):
    """SPEC 3.2 written out with scipy.stats.beta directly (independent of costsmooth.stats); the noise
    charge is subtracted from the lower bound and added to the upper ones."""
    n, k = counts.sum(), len(targets)
    na = counts[top]
    p_low = max(0.0, (0.0 if na == 0 else scipy.stats.beta.ppf(alpha / 2, na, n - na + 1)) - charge)
    ups = [min(1.0, (1.0 if counts[j] == n else scipy.stats.beta.isf(alpha / (2 * k), counts[j] + 1,
                                                                   n - counts[j])) + charge)
           for j in targets]
    p_omega = min(max(ups), 1 - p_low)
    return sigma / 2 * (norm.ppf(p_low) - norm.ppf(p_omega)), p_low, ups


@pytest.mark.parametrize("targets", [[2], [1, 2, 3]])
def test_cs_radius_recomputed_from_returned_counts(targets):
    model = Bins([-1.0, 0.0, 1.0])
    cost = CostMatrix.pairwise(4, {0: targets})
    smooth = Smooth(model, 4, 1.0, seed=4)
    for t in (-1.8, -1.2, -0.5):
        x = torch.tensor([t, 0.0, 0.0])
        cert = smooth.certify_cost_sensitive(x, 0, cost, 100, 5000, 0.01)
        expected, p_low, ups = spec_cs_radius(cert.counts, cert.top_class, targets, 0.01, 1.0,
                                              smooth.noise_charge(3))  # Box-Muller's truncation: 2 * 2^-33
        # relative tolerances: target bounds here go down to ~1e-4, and outward rounding moves a
        # bound by ~1e-11 relative (a radius by ~1e-13), always to the conservative side
        assert cert.cs_pA_lower == pytest.approx(p_low, rel=1e-9, abs=0) and cert.cs_pA_lower <= p_low * (1 + 1e-15)
        assert [cert.target_upper[j] for j in targets] == pytest.approx(ups, rel=1e-9, abs=0)
        if cert.top_class in targets or expected <= 0:
            assert cert.cs_radius == 0.0 and not cert.cs_certified
        else:
            assert cert.cs_radius == pytest.approx(expected, rel=1e-9, abs=0) and cert.cs_certified


@pytest.mark.parametrize("targets", [[2], [1, 2, 3]])
def test_cost_sensitive_coverage(targets):
    # Bins classifier at t = -1.5 with sigma 1: p = (0.69, 0.24, 0.06, 0.006). Over T independent
    # certificates at alpha = 0.1, the event "cs_pA_lower <= p_cA and target_upper[j] >= p_j for every
    # target" fails with probability <= alpha; the failure count exceeds the binomial 1 - 1e-4
    # quantile with probability <= 1e-4. Whenever the event holds, cs_radius cannot exceed the radius
    # computed from the true probabilities (the formula is monotone in each bound).
    model, sigma, alpha, trials, t = Bins([-1.0, 0.0, 1.0]), 1.0, 0.1, 300, -1.5
    p = model.probs(t, sigma)
    cost = CostMatrix.pairwise(4, {0: targets})
    certs = Smooth(model, 4, sigma, seed=5, batch_size=100000).certify_batch(
        torch.tensor([[t, 0.0]]).expand(trials, -1).contiguous(), [0] * trials, cost, n0=100, n=2000, alpha=alpha)
    failures = 0
    for c in certs:
        p_a = p[c.top_class]
        true_cs = sigma / 2 * (norm.ppf(p_a) - norm.ppf(min(max(p[targets]), 1 - p_a)))
        holds = c.cs_pA_lower <= p_a and all(c.target_upper[j] >= p[j] for j in targets)
        failures += not holds
        if holds:
            assert c.cs_radius <= max(true_cs, 0.0) + 1e-12
    assert failures <= scipy.stats.binom.ppf(1 - 1e-4, trials, alpha)
    assert np.mean([c.cs_certified for c in certs]) > 0.9


def test_cs_radius_at_least_standard_radius_at_half_alpha():
    rng = np.random.default_rng(6)
    cost = CostMatrix.seedwise(5, [0])
    for _ in range(200):
        counts = rng.multinomial(1000, rng.dirichlet(np.ones(5) * 0.3))
        top = int(np.argmax(counts))
        if top in cost.targets(0):
            continue
        cs = cost_sensitive_certificate(top, counts, 0, cost, 0.001, 0.5)
        p_low = stats.cp_lower(counts[top], 1000, 0.0005)
        if p_low > 0.5:
            assert cs["cs_radius"] >= 0.5 * norm.ppf(p_low) - 1e-12


def test_standard_abstains_but_cost_sensitive_certifies():
    cost = CostMatrix.pairwise(4, {0: [3]})
    cert = certify_from_counts([[60, 30, 10, 0]], [[450, 300, 250, 0]], 0.001, 0.5, [0], cost)[0]
    assert cert.prediction == -1 and cert.radius == 0.0
    assert cert.cs_certified and cert.cs_radius > 0.4
    # end to end: Bins with class 3 far away; p_0 = 0.46 < 1/2, p_3 ~ 1e-9
    model = Bins([-0.1, 1.0, 6.0])
    cert = Smooth(model, 4, 1.0, seed=7).certify_cost_sensitive(torch.tensor([0.0]), 0, cost, 100, 10000, 0.001)
    assert cert.prediction == -1 and cert.cs_certified and cert.target_radii[3] == cert.cs_radius


def test_top_class_in_target_set_is_never_certified():
    cost = CostMatrix.pairwise(3, {0: [1]})
    cert = certify_from_counts([[5, 90, 5]], [[50, 900, 50]], 0.001, 0.5, [0], cost)[0]
    assert cert.top_is_target and not cert.cs_certified and cert.cs_radius == 0.0
    assert cert.target_radii == {1: 0.0}
    assert cert.prediction == 1 and cert.radius > 0  # the standard certificate is about class 1 itself


def test_non_seed_labels_get_only_the_standard_certificate():
    cost = CostMatrix.pairwise(3, {0: [1]})
    cert = certify_from_counts([[5, 90, 5]], [[50, 900, 50]], 0.001, 0.5, [1], cost)[0]
    assert cert.cs_radius is None and cert.correct and cert.radius > 0


def test_bad_input_to_certification():
    model, x, _ = linear_setup()
    smooth = Smooth(model, 2, 0.5)
    with pytest.raises(ValueError, match="cost matrix must be 2x2"):
        smooth.certify_cost_sensitive(x, 0, CostMatrix.seedwise(3, [0]), 10, 10, 0.01)
    for alpha in (0, 1, 2.0):
        with pytest.raises(ValueError, match="alpha must be"):
            smooth.certify(x, 10, 10, alpha)
    with pytest.raises(ValueError, match="n0 must be an integer >= 1"):
        smooth.certify(x, 0, 10, 0.01)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        smooth.certify(x, 10, 0, 0.01)
    with pytest.raises(ValueError, match=r"label 2 out of range for a 2-class model: labels lie in \[0, 2\)"):
        smooth.certify_cost_sensitive(x, 2, CostMatrix.seedwise(2, [0]), 10, 10, 0.01)
    with pytest.raises(ValueError, match="returns 2 logits per input but num_classes=3"):
        Smooth(model, 3, 0.5).certify(x, 10, 10, 0.01)
    with pytest.raises(ValueError, match="x contains NaN"):
        smooth.certify(torch.full((10,), float("nan")), 10, 10, 0.01)
    with pytest.raises(ValueError, match="sigma must be a positive"):
        Smooth(model, 2, 0.0)


def test_radii_written_to_the_tsv_are_never_above_the_exact_ones():
    # Exact arithmetic (mpmath, 40 digits) on what the TSV row holds. Standard radius r: sound iff
    # Phi(r / sigma) is at most the exact CP lower bound p*, i.e. iff the exact tail
    # P(Bin(n, Phi(r / sigma)) >= k) <= alpha. Cost-sensitive: each written bound is checked by its exact
    # tail, and every radius against sigma/2 (Phi^-1(pA_low) - Phi^-1(min(pj_up, 1 - pA_low))) computed
    # exactly from those bounds. Float64 without outward rounding fails the first check on some rows.
    mpmath = pytest.importorskip("mpmath")
    from costsmooth.results import format_row
    mpmath.mp.dps = 40

    def phi_inv(p):
        return mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(p) - 1)

    def tail_at_least(k, n, p):  # P(Bin(n, p) >= k)
        return mpmath.betainc(k, n - k + 1, 0, p, regularized=True) if k > 0 else mpmath.mpf(1)

    rng = np.random.default_rng(8)
    cost = CostMatrix.pairwise(4, {0: [2, 3]})
    sigma = 0.12  # its float32 rounding is below it: the certificates use 0.1199999973
    s = mpmath.mpf(float(np.float32(sigma)))
    for trial in range(60):
        n = int(rng.choice([100, 1000, 2000]))  # (mpmath's series for the tail converges slowly beyond)
        alpha = float(rng.choice([0.05, 1e-3, 1e-10]))
        est = rng.multinomial(n, rng.dirichlet([8.0, 1.0, 0.3, 0.1]))
        cert = certify_from_counts([[50, 1, 1, 1]], [est], alpha, sigma, [0], cost)[0]
        fields = format_row(0, cert, 0.0).split("\t")
        radius, p_low = float(fields[3]), float(fields[9])
        k = int(est[0])
        assert tail_at_least(k, n, p_low) <= alpha
        if radius > 0:
            assert tail_at_least(k, n, mpmath.ncdf(mpmath.mpf(radius) / s)) <= alpha
        cs_low = cert.cs_pA_lower
        assert tail_at_least(k, n, cs_low) <= alpha / 2
        for j, up in cert.target_upper.items():  # P(Bin(n, up) <= n_j) <= alpha / (2K), as an upper tail
            assert mpmath.betainc(n - est[j], est[j] + 1, 0, 1 - mpmath.mpf(up), regularized=True) <= alpha / 4
        cap = 1 - mpmath.mpf(cs_low)
        radii = dict(item.split(":") for item in fields[10].split(";"))
        for j, up in cert.target_upper.items():
            written = float(radii[str(j)])
            if written > 0:
                assert written <= s / 2 * (phi_inv(cs_low) - phi_inv(min(mpmath.mpf(up), cap)))
        if float(fields[6]) > 0:
            worst = max(mpmath.mpf(u) for u in cert.target_upper.values())
            assert float(fields[6]) <= s / 2 * (phi_inv(cs_low) - phi_inv(min(worst, cap)))


def test_noise_identity_is_one_rule_for_single_and_batch_calls():
    model, x, _ = linear_setup(p_a=0.6)
    smooth = Smooth(model, 2, 0.5, seed=3)
    X = torch.stack([x, x, x])
    # an index makes a call reproducible, and the same index gives the same certificate in both calls
    at_7 = smooth.certify(x, 100, 2000, 0.001, index=7)
    assert smooth.certify(x, 100, 2000, 0.001, index=7) == at_7
    batch = smooth.certify_batch(X, n0=100, n=2000, alpha=0.001, indices=[5, 7, 9])
    assert (batch[1].prediction, batch[1].radius) == at_7
    assert smooth.certify_batch(X, n0=100, n=2000, alpha=0.001, indices=[5, 7, 9])[0].counts.tolist() \
        == batch[0].counts.tolist()
    assert smooth.predict(x, 1000, 0.001, index=7) == smooth.predict(x, 1000, 0.001, index=7)
    # without indices every call draws fresh noise, batches as single calls
    one = smooth.certify_batch(X, n0=100, n=2000, alpha=0.001)
    two = smooth.certify_batch(X, n0=100, n=2000, alpha=0.001)
    assert [c.counts.tolist() for c in one] != [c.counts.tolist() for c in two]
    assert one[0].counts.tolist() != one[1].counts.tolist()
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 2\^31\)"):
        smooth.certify(x, 100, 2000, 0.001, index=-1)


def test_single_input_calls_refuse_a_batch_of_one():
    model, x, _ = linear_setup(p_a=0.9)
    # a model that flattens its input cannot tell x[None] from x: the noise and the certificate are the same
    flat = Smooth(model, 2, 0.5, seed=3)
    assert flat.certify(x[None], 100, 1000, 0.001, index=4) == flat.certify(x, 100, 1000, 0.001, index=4)
    torch.manual_seed(0)
    smooth = Smooth(torch.nn.Linear(10, 2), 2, 0.5, seed=3)  # takes [B, 10]: x[None] is a batch of one
    smooth.certify(x, 10, 100, 0.01)
    for call in (lambda v: smooth.certify(v, 10, 100, 0.01), lambda v: smooth.predict(v, 100, 0.01),
                 lambda v: smooth.certify_at(v, 0.1, 0.01, max_n=100)):
        with pytest.raises(ValueError, match=r"is a batch of one input.*pass x\[0\]"):
            call(x[None])
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 3))
    image = torch.rand(1, 8, 8)  # one single-channel image: accepted
    assert Smooth(cnn, 3, 0.25).certify(image, 10, 50, 0.01)[0] in (-1, 0, 1, 2)
    with pytest.raises(ValueError, match="is a batch of one input"):
        Smooth(cnn, 3, 0.25).certify(image[None], 10, 50, 0.01)
