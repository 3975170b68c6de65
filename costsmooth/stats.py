"""Confidence bounds for Monte Carlo vote counts: one-sided Clopper-Pearson bounds and Cohen's PREDICT.

All bounds are one-sided Clopper-Pearson (exact binomial) bounds: for k successes in n trials,
``P(p < lower(k, n, alpha)) <= alpha`` and ``P(p > upper(k, n, alpha)) <= alpha`` over the draw.
Several bounds that must hold together split alpha by the union bound (``bonferroni``).
Every function is vectorised over numpy arrays and uses scipy only.

Outward rounding: a bound is a float, and the float nearest the exact bound may lie on the optimistic
side of it. Every bound here is rounded toward the conservative side: ``cp_lower`` is stepped down
until scipy's binomial tail at it is below alpha with a relative margin (``TAIL_MARGIN``) far above
the tail's own error, ``cp_upper`` and ``complement_up`` round ``1 - x`` up, and ``norm_ppf_down`` /
``norm_ppf_up`` widen Phi^-1 by a relative margin (``PPF_MARGIN``) above its error. The cost is a
relative change of about 1e-11 in a bound and 1e-14 in Phi^-1: invisible in any printed digit.
"""
from __future__ import annotations

import numpy as np
import scipy.special
import scipy.stats

from ._checks import check_alpha

__all__ = ["cp_lower", "cp_upper", "bonferroni", "predict_from_counts", "predict_level", "abstain_pvalue",
           "complement_up", "norm_ppf_down", "norm_ppf_up", "round_toward_zero", "TAIL_MARGIN", "PPF_MARGIN"]

# scipy's regularised incomplete beta (Boost's ibeta) is accurate to about 1e-13 relative at worst
# (Boost's published error tables: some hundreds of ulps for large parameters); 1e-11 leaves a factor
# of ~100. cp_lower returns a p whose computed tail is at most alpha * (1 - TAIL_MARGIN).
TAIL_MARGIN = 1e-11
# scipy's Phi^-1 (cephes ndtri) has a relative error below 1e-15; 2^-44 (5.7e-14) leaves a factor of ~50.
PPF_MARGIN = 2.0 ** -44


def _kn(k, n):
    k = np.asarray(k)
    n = np.asarray(n)
    if np.any(n < 1):
        raise ValueError(f"the number of trials n must be >= 1, got {np.min(n)}")
    if np.any((k < 0) | (k > n)):
        raise ValueError("counts k must satisfy 0 <= k <= n")
    return k.astype(np.float64), n.astype(np.float64)


def cp_lower(k, n, alpha: float):
    """One-sided Clopper-Pearson lower bound at level alpha: ``Beta^-1(alpha; k, n - k + 1)``, 0 at k = 0.

    With probability >= 1 - alpha over k ~ Bin(n, p), ``p >= cp_lower(k, n, alpha)``.
    Rounded down: the returned p satisfies ``P(Bin(n, p) >= k) <= alpha`` (the exact bound is the p
    where equality holds and the tail grows with p), checked with scipy's incomplete beta with a
    relative margin ``TAIL_MARGIN`` and stepped down until it does.
    """
    alpha = check_alpha(alpha)
    k, n = _kn(k, n)
    k, n = np.broadcast_arrays(k, n)
    b = n - k + 1
    with np.errstate(invalid="ignore"):
        p = np.where(k == 0, 0.0, scipy.special.betaincinv(np.maximum(k, 1), b, alpha))
    return _step_down_to_tail(p, k, b, alpha * (1.0 - TAIL_MARGIN))[()]


def _step_down_to_tail(p: np.ndarray, a: np.ndarray, b: np.ndarray, level: float) -> np.ndarray:
    """Lower each ``p`` (a = k >= 1, b = n - k + 1) until ``P(Bin(n, p) >= k) = I_p(a, b) <= level``.

    One Newton step on the excess (doubled), then relative steps of 2^-52, 2^-51, ... while still
    above: the tail is increasing in p and 0 at p = 0, so this ends."""
    shape = np.shape(p)
    p, a, b = (np.array(v, dtype=np.float64, ndmin=1).ravel() for v in (p, a, b))
    todo = np.nonzero((a > 0) & (p > 0))[0]
    excess = scipy.special.betainc(a[todo], b[todo], p[todo]) - level
    todo, excess = todo[excess > 0], excess[excess > 0]
    if todo.size:
        log_pdf = ((a[todo] - 1) * np.log(p[todo]) + (b[todo] - 1) * np.log1p(-p[todo])
                   - scipy.special.betaln(a[todo], b[todo]))
        with np.errstate(over="ignore", invalid="ignore"):
            newton = p[todo] - 2.0 * excess / np.exp(log_pdf)
        p[todo] = np.where(np.isfinite(newton) & (newton >= 0), np.minimum(newton, p[todo]), p[todo])
    step = 2.0 ** -52
    while todo.size:
        todo = todo[(p[todo] > 0) & (scipy.special.betainc(a[todo], b[todo], p[todo]) > level)]
        p[todo] = p[todo] * (1.0 - step) if step < 1.0 else 0.0
        step *= 2.0
    return p.reshape(shape)


def cp_upper(k, n, alpha: float):
    """One-sided Clopper-Pearson upper bound at level alpha: ``Beta^-1(1 - alpha; k + 1, n - k)``, 1 at k = n.

    With probability >= 1 - alpha over k ~ Bin(n, p), ``p <= cp_upper(k, n, alpha)``. Computed as
    ``1 - cp_lower(n - k, n, alpha)`` (the same quantity, without cancellation near 1): the lower
    bound is rounded down and the subtraction up (``complement_up``), so the result is rounded up.
    """
    k, n = _kn(k, n)
    return complement_up(cp_lower(n - k, n, alpha))


def complement_up(x):
    """``1 - x`` rounded up (x in [0, 1]): an upper bound on 1 - p from a lower bound x on p.

    The float subtraction rounds to nearest; where it was inexact the result is moved one ulp up.
    (For x <= 1/2, ``1 - u`` is exact for u = fl(1 - x), so ``1 - u == x`` tells exactness; for x > 1/2
    the subtraction is exact.)
    """
    x = np.asarray(x, dtype=np.float64)
    u = 1.0 - x
    return np.minimum(np.where(1.0 - u == x, u, np.nextafter(u, np.inf)), 1.0)[()]


def norm_ppf_down(p):
    """Phi^-1(p) rounded down (below the exact value by at most a relative 2 * PPF_MARGIN); -inf at 0."""
    q = np.asarray(scipy.special.ndtri(np.clip(p, 0.0, 1.0)), dtype=np.float64)
    return np.where(np.isfinite(q), q - np.abs(q) * PPF_MARGIN, q)[()]


def norm_ppf_up(p):
    """Phi^-1(p) rounded up (above the exact value by at most a relative 2 * PPF_MARGIN); +inf at 1."""
    q = np.asarray(scipy.special.ndtri(np.clip(p, 0.0, 1.0)), dtype=np.float64)
    return np.where(np.isfinite(q), q + np.abs(q) * PPF_MARGIN, q)[()]


def round_toward_zero(x):
    """A positive result of one float operation moved one ulp toward 0 (radii: rounded down); 0, negative
    and non-finite values unchanged."""
    x = np.asarray(x, dtype=np.float64)
    return np.where((x > 0) & np.isfinite(x), np.nextafter(x, 0.0), x)[()]


def bonferroni(alpha: float, parts: int) -> float:
    """Level of each of ``parts`` bounds that must hold together with probability >= 1 - alpha."""
    alpha = check_alpha(alpha)
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    return alpha / parts


def abstain_pvalue(n1: int, n2: int) -> float:
    """Two-sided binomial test p-value of n1 ~ Bin(n1 + n2, 1/2) (Cohen et al.'s PREDICT)."""
    if n1 + n2 == 0:
        return 1.0
    return float(scipy.stats.binomtest(int(n1), int(n1 + n2), 0.5).pvalue)


def predict_level(alpha: float, n: int, charge: float = 0.0) -> float:
    """The level at which PREDICT tests ``n`` votes drawn with noise charge ``charge`` so that its
    error stays at most ``alpha``: ``alpha / (1 + 2 charge)^n``, rounded down.

    Why: the vote law differs from the Gaussian's by at most ``charge`` per class probability, so for
    the true class c and another class j, ``q_j - q_c <= 2 charge`` where the Gaussian has ``p_j <= p_c``.
    Given the pair's total m, the top count is Binomial(m, 1/2 + eps) with ``eps <= charge / s``
    (``s = q_j + q_c``): against the fair coin of the test, the likelihood ratio of any outcome is at
    most ``(1 + 2 charge / s)^m``, and over m ~ Bin(n, s) its mean is ``(1 + 2 charge)^n``. So each
    rejection the test makes at level ``alpha'`` under the fair coin has probability at most
    ``alpha' (1 + 2 charge)^n`` under the drawn law.
    """
    alpha = check_alpha(alpha)
    if not charge:
        return alpha
    # the exponent rounded up by 4 ulps (log1p and the product err by 1 ulp each), the result down
    exponent = int(n) * np.log1p(2.0 * float(charge)) * (1.0 + 2.0 ** -50)
    return float(alpha * np.exp(-exponent) * (1.0 - 2.0 ** -50))


def predict_from_counts(counts, alpha: float, charge: float = 0.0) -> int:
    """Cohen et al.'s PREDICT on one draw of counts ``[C]``: the top class, or -1 (abstain).

    Abstains when the two-sided binomial test of the top count against the runner-up has p-value
    above the level: alpha, or with a noise charge ``predict_level(alpha, n, charge)``. The p-value is
    taken as larger by a relative ``TAIL_MARGIN`` (scipy's binomial tails are accurate far beyond it),
    so a p-value at the level abstains. Guarantee: the returned class differs from g(x) with
    probability <= alpha.
    """
    alpha = check_alpha(alpha)
    counts = np.asarray(counts).astype(np.int64).ravel()
    if counts.size == 0:
        raise ValueError("counts must have at least one class")
    order = np.argsort(-counts, kind="stable")  # ties to the lowest class index
    n1 = int(counts[order[0]])
    n2 = int(counts[order[1]]) if counts.size > 1 else 0
    level = predict_level(alpha, int(counts.sum()), charge)
    return -1 if abstain_pvalue(n1, n2) * (1.0 + TAIL_MARGIN) > level else int(order[0])
