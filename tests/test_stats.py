"""Clopper-Pearson bounds and PREDICT's abstention test."""
import numpy as np
import pytest
import scipy.stats

from costsmooth import stats


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (10, 10), (3, 10), (500, 1000), (99990, 100000),
                                 (1, 100000)])
@pytest.mark.parametrize("alpha", [0.05, 0.001, 1e-10])
def test_clopper_pearson_matches_the_beta_quantiles(k, n, alpha):
    # SPEC formulas from scipy.stats.beta directly; relative tolerances, so that bounds near 1e-15
    # (k = 1, n = 100000, alpha = 1e-10) are compared in their own scale. The outward rounding moves a
    # bound by about 1e-11 relative (never more than 1e-9). (scipy's binomtest interval is itself off by
    # up to 3e-5 relative at k = 1, n = 100000: not a reference at this tolerance.)
    low = 0.0 if k == 0 else scipy.stats.beta.ppf(alpha, k, n - k + 1)
    up = 1.0 if k == n else scipy.stats.beta.isf(alpha, k + 1, n - k)  # isf: no rounding of 1 - alpha
    assert stats.cp_lower(k, n, alpha) == pytest.approx(low, rel=1e-9, abs=0)
    assert stats.cp_upper(k, n, alpha) == pytest.approx(up, rel=1e-9, abs=0)
    if k == 1:  # closed form: 1 - (1 - p)^n = alpha
        assert stats.cp_lower(k, n, alpha) == pytest.approx(-np.expm1(np.log1p(-alpha) / n), rel=1e-9, abs=0)


def test_clopper_pearson_edges_and_vectorised():
    assert stats.cp_lower(0, 50, 0.01) == 0.0
    assert stats.cp_upper(50, 50, 0.01) == 1.0
    assert stats.cp_lower(50, 50, 0.01) == pytest.approx(0.01 ** (1 / 50))  # all n successes: alpha^(1/n)
    k = np.array([0, 5, 10])
    lo, hi = stats.cp_lower(k, 10, 0.05), stats.cp_upper(k, 10, 0.05)
    assert lo.shape == hi.shape == (3,) and np.all(lo < k / 10 + 1e-12) and np.all(hi > k / 10 - 1e-12)


def test_clopper_pearson_coverage():
    # Fixed seed. Exact one-sided coverage of CP is >= 1 - alpha; over 20000 draws the miss count of
    # a valid bound exceeds the binomial 1 - 1e-6 quantile with probability <= 1e-6.
    rng = np.random.default_rng(0)
    p, n, alpha, trials = 0.3, 200, 0.05, 20000
    k = rng.binomial(n, p, size=trials)
    limit = scipy.stats.binom.ppf(1 - 1e-6, trials, alpha)
    assert np.sum(stats.cp_lower(k, n, alpha) > p) <= limit
    assert np.sum(stats.cp_upper(k, n, alpha) < p) <= limit


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, float("nan"), "0.1"])
def test_alpha_must_lie_in_open_unit_interval(bad):
    with pytest.raises(ValueError, match=r"alpha must be a number in \(0, 1\)"):
        stats.cp_lower(3, 10, bad)


def test_bad_counts():
    with pytest.raises(ValueError, match="n must be >= 1"):
        stats.cp_lower(0, 0, 0.05)
    with pytest.raises(ValueError, match="0 <= k <= n"):
        stats.cp_upper(11, 10, 0.05)


def test_predict_abstains_on_a_close_race_and_answers_a_clear_one():
    assert stats.predict_from_counts([0, 52, 48], 0.05) == -1
    assert stats.predict_from_counts([0, 90, 10], 0.001) == 1
    assert stats.predict_from_counts([30, 30, 0], 0.5) == -1  # exact tie: p-value 1
    assert stats.bonferroni(0.01, 4) == pytest.approx(0.0025)


def test_predict_abstains_at_a_p_value_equal_to_its_level():
    # the p-value is rounded up: one exactly at alpha may lie above it; a slightly larger alpha answers
    p = stats.abstain_pvalue(60, 20)
    assert stats.predict_from_counts([60, 20], p) == -1
    assert stats.predict_from_counts([60, 20], p * (1 + 1e-9)) == 0


def test_predict_pays_the_noise_charge_where_the_truth_is_known():
    # The drawn law Q = (0.495, 0.505) is within the charge c = 0.005 of a Gaussian law P = (0.5 + e, 0.5 - e)
    # whose smoothed class is 0: returning 1 is an error. Its exact probability over n = 10000 votes
    # (summing the binomial law of class 1's count) is 0.057 > alpha = 0.01 with the uncharged test,
    # and at most alpha with the level predict_level(alpha, n, c).
    from scipy.stats import binom
    mpmath = pytest.importorskip("mpmath")
    alpha, n, c = 0.01, 10000, 0.005
    k = np.arange(5000, 5400)  # class 1's count: below 5000 it is not the top class; above 5400 counted as errors
    pmf, beyond = binom.pmf(k, n, 0.5 + c), binom.sf(k[-1], n, 0.5 + c)

    def error(charge):
        wrong = np.array([stats.predict_from_counts([n - i, i], alpha, charge) == 1 for i in k])
        return float(pmf[wrong].sum())

    assert error(0.0) > 5 * alpha
    assert error(c) + beyond <= alpha
    level = stats.predict_level(alpha, n, c)
    with mpmath.workdps(40):
        assert level <= mpmath.mpf(alpha) / (1 + 2 * mpmath.mpf(c)) ** n
    assert stats.predict_level(alpha, n, 0.0) == alpha
    # a p-value between the two levels answers without the charge and abstains with it
    p = stats.abstain_pvalue(60, 20)
    assert stats.predict_from_counts([60, 20], p * 1.001) == 0
    assert stats.predict_from_counts([60, 20], p * 1.001, charge=1e-5) == -1  # (1 + 2e-5)^80 = 1.0016


# -- outward rounding, against exact arithmetic (mpmath, 40 digits) ---------------------------------

ROUNDING_CASES = [(1, 1, 0.05), (3, 10, 0.05), (7, 10, 1e-10), (500, 1000, 0.001), (999, 1000, 1e-10),
                  (1, 100000, 1e-10), (2, 100000, 0.001), (99990, 100000, 1e-10), (100000, 100000, 0.001),
                  (99999, 100000, 0.05), (10, 20, 0.5 - 1e-9)]


@pytest.mark.parametrize("k,n,alpha", ROUNDING_CASES)
def test_bounds_are_rounded_outward_against_exact_tails(k, n, alpha):
    # The exact CP lower bound p* solves P(Bin(n, p*) >= k) = alpha and the tail grows with p, so a
    # returned p is sound iff the exact tail at p is <= alpha; likewise for the upper bound with
    # P(Bin(n, u) <= k) <= alpha. Checked in 40-digit arithmetic, where scipy's float64 bounds (the
    # nearest floats) fail in about half of these cases.
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    low = float(stats.cp_lower(k, n, alpha))
    assert mpmath.betainc(k, n - k + 1, 0, low, regularized=True) <= alpha
    if k < n:  # the upper bound of k is 1 - (lower bound of n - k): the same tail, from the other side
        up = float(stats.cp_upper(k, n, alpha))
        assert mpmath.betainc(n - k, k + 1, 0, 1 - mpmath.mpf(up), regularized=True) <= alpha
    # and tight: within a relative 1e-9 below the exact bound (the tail there is above alpha)
    assert mpmath.betainc(k, n - k + 1, 0, low * (1 + 1e-9), regularized=True) > alpha


def test_scipy_alone_would_round_some_bounds_the_optimistic_way():
    # What the outward rounding guards against: the nearest float to the exact bound lies above it in
    # some of the cases above (so a file written from scipy's value would publish an optimistic bound).
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    above = [(k, n, alpha) for k, n, alpha in ROUNDING_CASES
             if mpmath.betainc(k, n - k + 1, 0, float(scipy.stats.beta.ppf(alpha, k, n - k + 1)),
                               regularized=True) > alpha]
    assert above


def test_complement_and_phi_inverse_round_outward():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    rng = np.random.default_rng(0)
    ps = np.concatenate([rng.random(300), 10.0 ** -rng.uniform(1, 300, 100), 1 - 10.0 ** -rng.uniform(1, 15, 100),
                         [0.5, np.nextafter(0.5, 1), np.nextafter(0.5, 0), 0.25, 0.75]])
    up = stats.complement_up(ps)
    assert all(mpmath.mpf(float(u)) >= 1 - mpmath.mpf(float(p)) for p, u in zip(ps, up))
    assert np.any(up > 1 - ps)  # some subtractions were inexact and moved up
    assert stats.complement_up(0.0) == 1.0 and stats.complement_up(1.0) == 0.0
    down, high = stats.norm_ppf_down(ps), stats.norm_ppf_up(ps)
    for p, d, h in zip(ps, down, high):
        assert mpmath.ncdf(float(d)) <= float(p) <= mpmath.ncdf(float(h))
        assert abs(d - h) <= 1e-12 * max(abs(d), 1e-300)  # and tight
    assert stats.norm_ppf_down(0.0) == -np.inf and stats.norm_ppf_up(1.0) == np.inf
    assert stats.norm_ppf_down(0.5) == 0.0 == stats.norm_ppf_up(0.5)
