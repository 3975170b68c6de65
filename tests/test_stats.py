"""Clopper-Pearson bounds and PREDICT's abstention test."""
import numpy as np
import pytest
import scipy.stats

from costsmooth import stats


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 10), (10, 10), (3, 10), (500, 1000), (99990, 100000),
                                 (1, 100000)])
@pytest.mark.parametrize("alpha", [0.05, 0.001, 1e-10])
def test_clopper_pearson_matches_scipy_binomtest(k, n, alpha):
    ci = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    assert stats.cp_lower(k, n, alpha) == pytest.approx(ci.low, abs=1e-9)
    assert stats.cp_upper(k, n, alpha) == pytest.approx(ci.high, abs=1e-9)


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
