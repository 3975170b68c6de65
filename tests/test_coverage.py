"""Coverage of every alpha split, from the count distribution.

Counts are drawn with numpy from known probabilities (Binomial/Multinomial: exactly the law of the
engine's vote counts) and fed to the certificate functions, so thousands of certificates cost no model
call. Each bound is checked at its own level: the standard pA_lower at alpha, the cost-sensitive
pA_lower at alpha/2 and each of the K target upper bounds at alpha/(2K).

How each check can fail (stated, and verified in the test itself): a bound at level L misses its true
probability at most with probability L, so over T independent certificates the miss count exceeds the
binomial 1 - 1e-6 quantile of Bin(T, L) with probability <= 1e-6 (the false-failure rate of one check;
the file makes 19 such checks, so < 2e-5 in all). Against a factor-2 error in a split (the bound
computed at 2L), the exact miss rate m(2L) of the Clopper-Pearson bound at these n and p is summed
over the binomial law, and the power P(Bin(T, m(2L)) > limit) is asserted to be >= 0.99 before the
counts are looked at. At these settings it is 0.9988 for each target bound at K = 4 and above 0.99999
for every other check (the CP bounds miss at 81-97% of their nominal level here, 92-98% at 2L).
"""
import numpy as np
import pytest
from scipy.stats import binom, norm

from costsmooth import CostMatrix, certify_from_counts, stats

FALSE_FAILURE = 1e-6  # per check
POWER = 0.99          # against a factor-2 error in the bound's level
N = 1000              # samples per certificate


def exact_miss_rate(n: int, p: float, level: float, upper: bool) -> float:
    """P(the CP bound at ``level`` misses p) for k ~ Bin(n, p), summed exactly over k = 0..n."""
    k = np.arange(n + 1)
    miss = stats.cp_upper(k, n, level) < p if upper else stats.cp_lower(k, n, level) > p
    return float(binom.pmf(k, n, p)[miss].sum())


def check_rate(misses: int, trials: int, n: int, p: float, level: float, upper: bool, what: str) -> None:
    limit = binom.ppf(1 - FALSE_FAILURE, trials, level)
    power = binom.sf(limit, trials, exact_miss_rate(n, p, min(2 * level, 0.999), upper))
    assert power >= POWER, f"{what}: the test design has power {power:.4f} against a factor-2 error"
    assert misses <= limit, f"{what}: {misses} misses in {trials} at level {level:g} (limit {limit:g})"


def test_standard_bound_coverage():
    # p_A = 0.7, alpha = 0.2, 600 certificates; exact miss rate 0.19 at alpha, 0.38 at 2 alpha
    rng = np.random.default_rng(0)
    trials, alpha, p = 600, 0.2, np.array([0.7, 0.2, 0.1])
    est = rng.multinomial(N, p, size=trials)
    sel = np.tile([10, 1, 1], (trials, 1))
    certs = certify_from_counts(sel, est, alpha, 0.5)
    misses = sum(c.pA_lower > p[0] for c in certs)
    check_rate(misses, trials, N, p[0], alpha, False, "standard pA_lower")
    truth = 0.5 * norm.ppf(p[0])  # the radius of the true probability, never exceeded when the bound holds
    assert all(c.radius <= truth for c in certs if c.pA_lower <= p[0])


@pytest.mark.parametrize("K", [1, 2, 3, 4])
def test_cost_sensitive_split_coverage(K):
    # Label 0, top class 0, class 1 harmless, classes 2..K+1 the targets, sharing 0.3 of the mass.
    # alpha = 0.8 keeps every level large (pA_lower at 0.4, each target at 0.4/K >= 0.1), so 1000
    # certificates have power >= 0.99 against a factor 2 in either part of the split.
    rng = np.random.default_rng(10 + K)
    trials, alpha = 1000, 0.8
    targets = list(range(2, K + 2))
    p = np.array([0.55, 0.15] + [0.3 / K] * K)
    cost = CostMatrix.pairwise(K + 2, {0: targets})
    est = rng.multinomial(N, p, size=trials)
    sel = np.tile([10] + [1] * (K + 1), (trials, 1))
    certs = certify_from_counts(sel, est, alpha, 0.5, [0] * trials, cost)
    check_rate(sum(c.cs_pA_lower > p[0] for c in certs), trials, N, p[0], alpha / 2, False, "cs pA_lower")
    for j in targets:
        check_rate(sum(c.target_upper[j] < p[j] for c in certs), trials, N, p[j], alpha / (2 * K), True,
                   f"target {j} upper bound")
    # the joint event at alpha, and the radius it implies
    holds = [c.cs_pA_lower <= p[0] and all(c.target_upper[j] >= p[j] for j in targets) for c in certs]
    assert trials - sum(holds) <= binom.ppf(1 - FALSE_FAILURE, trials, alpha)
    truth = 0.25 * (norm.ppf(p[0]) - norm.ppf(min(p[targets].max(), 1 - p[0])))
    assert all(c.cs_radius <= truth for c, ok in zip(certs, holds) if ok)
    assert np.mean([c.cs_certified for c in certs]) > 0.9  # and not vacuous


def spec_cs_radius(counts, targets, alpha, sigma, per_target):
    """sigma/2 (Phi^-1(pA_low) - Phi^-1(min(max_j pj_up, 1 - pA_low))) from scipy.stats.beta directly,
    pA_low at alpha/2 and each pj_up at ``per_target``."""
    from scipy.stats import beta
    n, na = counts.sum(), counts[0]
    p_low = beta.ppf(alpha / 2, na, n - na + 1)
    ups = [1.0 if counts[j] == n else beta.isf(per_target, counts[j] + 1, n - counts[j]) for j in targets]
    return sigma / 2 * (norm.ppf(p_low) - norm.ppf(min(max(ups), 1 - p_low)))


@pytest.mark.parametrize("K", [1, 2, 4])
def test_cost_sensitive_radius_on_a_linear_classifier_from_both_sides(K):
    # A linear classifier: class 0 on one side of a hyperplane at distance 0.3 (sigma 0.5), the far side
    # cut into K target classes by an independent coordinate: p_0 = Phi(0.6), p_j = (1 - p_0) / K
    # (100000 votes per certificate, 40 certificates).
    # For counts of its smoothed votes the certificate must equal the formula with alpha/2 and
    # alpha/(2K) from both sides: below it by at most 1e-9 relative (outward rounding), and never above.
    # With alpha/2 per target instead (the reference code's error), the radius is larger by far more
    # than the tolerance whenever K > 1, so that implementation fails the upper side.
    rng = np.random.default_rng(20 + K)
    sigma, alpha = 0.5, 0.01
    targets = list(range(1, K + 1))
    p0 = norm.cdf(0.3 / sigma)
    p = np.array([p0] + [(1 - p0) / K] * K)
    cost = CostMatrix.pairwise(K + 1, {0: targets})
    est = rng.multinomial(100000, p, size=40)
    certs = certify_from_counts(np.tile([10] + [0] * K, (40, 1)), est, alpha, sigma, [0] * 40, cost)
    for counts, cert in zip(est, certs):
        exact = spec_cs_radius(counts, targets, alpha, sigma, alpha / (2 * K))
        assert exact > 0 and cert.cs_certified
        assert exact * (1 - 1e-9) <= cert.cs_radius <= exact * (1 + 1e-13)
        if K > 1:
            wrong = spec_cs_radius(counts, targets, alpha, sigma, alpha / 2)
            assert wrong > exact * (1 + 1e-4)  # what the oracle would reject
