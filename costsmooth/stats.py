"""Confidence bounds for Monte Carlo vote counts (SPEC 2).

All bounds are one-sided Clopper-Pearson (exact binomial) bounds: for k successes in n trials,
``P(p < lower(k, n, alpha)) <= alpha`` and ``P(p > upper(k, n, alpha)) <= alpha`` over the draw.
Several bounds that must hold together split alpha by the union bound (``bonferroni``).
Every function is vectorised over numpy arrays and uses scipy only.
"""
from __future__ import annotations

import numpy as np
import scipy.stats

from ._checks import check_alpha

__all__ = ["cp_lower", "cp_upper", "bonferroni", "predict_from_counts", "abstain_pvalue"]


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
    """
    alpha = check_alpha(alpha)
    k, n = _kn(k, n)
    with np.errstate(invalid="ignore"):
        out = scipy.stats.beta.ppf(alpha, k, n - k + 1)
    return np.where(k == 0, 0.0, out)[()]


def cp_upper(k, n, alpha: float):
    """One-sided Clopper-Pearson upper bound at level alpha: ``Beta^-1(1 - alpha; k + 1, n - k)``, 1 at k = n.

    With probability >= 1 - alpha over k ~ Bin(n, p), ``p <= cp_upper(k, n, alpha)``. Computed as
    ``1 - cp_lower(n - k, n, alpha)`` (the same quantity, without cancellation near 1).
    """
    k, n = _kn(k, n)
    return (1.0 - np.asarray(cp_lower(n - k, n, alpha)))[()]


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


def predict_from_counts(counts, alpha: float) -> int:
    """Cohen et al.'s PREDICT on one draw of counts ``[C]``: the top class, or -1 (abstain).

    Abstains when the two-sided binomial test of the top count against the runner-up has p-value
    > alpha. Guarantee: the returned class differs from g(x) with probability <= alpha.
    """
    alpha = check_alpha(alpha)
    counts = np.asarray(counts).astype(np.int64).ravel()
    if counts.size == 0:
        raise ValueError("counts must have at least one class")
    order = np.argsort(-counts, kind="stable")  # ties to the lowest class index
    n1 = int(counts[order[0]])
    n2 = int(counts[order[1]]) if counts.size > 1 else 0
    return -1 if abstain_pvalue(n1, n2) > alpha else int(order[0])
