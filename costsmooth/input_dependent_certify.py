"""The certificate of input-dependent smoothing (Súkeník, Kuvshinov, Günnemann, ICML 2022): pure maths on
counts, numpy and scipy (torch only to read noise levels); the sigma function ``KNNSigma`` and the command
line are in ``costsmooth.input_dependent``.

The smoothed classifier draws the noise of input x with its own level sigma(x). Cohen's formula at a
per-input sigma is *not* a certificate: the point x1 = x0 + delta is smoothed with sigma(x1), not with
sigma(x0). A sound certificate needs a bound on how fast sigma may change: sigma is
**r-semi-elastic** when ``|log sigma(x) - log sigma(x')| <= r * ||x - x'||_2``. Then at distance d the
unknown sigma1 = sigma(x1) lies in ``[sigma0 e^{-r d}, sigma0 e^{+r d}]`` and the worst case over all
base classifiers with ``P0(B) <= pB`` is the likelihood-ratio superlevel set of the two Gaussians,
a ball (sigma1 < sigma0) or the complement of a ball (sigma1 > sigma0), whose probabilities are
noncentral chi-square CDFs (``worst_case_probability``).

Contents:
- ``worst_case_probability``: xi, the largest probability of a class B at the displaced point x1 over
  all base classifiers with P(B) <= pB at x0 (noncentral chi-square bound; Cohen's at sigma1 = sigma0).
- ``certified_radius`` / ``two_class_radius``: the sound radius (standard and two-class form).
- ``certificates_from_counts``: ``costsmooth.certify.Certificate`` objects from vote counts, per-input
  sigma0, r and the input dimension (standard and cost-sensitive; the cost-sensitive one bounds p_A at
  alpha/2 and each of the K targets at alpha/(2K), so all hold together with probability >= 1 - alpha).
  ``Smooth(model, C, sigma=KNNSigma(...))`` dispatches here; Cohen's formula is never used at a
  per-input sigma.
- ``admissible_ratio`` / ``admissible_table``: the band of sigma1/sigma0 that keeps a class at distance
  d (the curse of dimensionality: the band shrinks to {1} as the dimension grows).
- ``check_sigma_fn`` / ``check_semi_elasticity``: a sigma function's declared r, checked;
  ``sigma_noise_level``: the float32 level the kernels draw with.

Numerical assumptions (stated, and checked numerically in tests/test_input_dependent.py): for fixed
d the worst-case probability is quasi-convex in sigma1 (so its largest value over the semi-elastic
interval is at an end; the radius search also checks sigma1 = sigma0 and the interval's geometric
midpoints), and the pass condition is monotone in d between the points of the search grid.
"""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.stats import ncx2, norm

from . import stats
from ._checks import check_alpha, check_count, check_positive_finite
from .certify import (ABSTAIN, Certificate, check_charge, check_counts_matrix, check_labels, conservative_sigma,
                      cost_sensitive_certificate, cost_sensitive_fields, half_gap_radius, lower_bound,
                      standard_certificate)
from .cost import CostMatrix

__all__ = ["check_sigma_fn", "check_semi_elasticity", "worst_case_probability", "certified_radius",
           "two_class_radius", "admissible_ratio", "admissible_table", "certificates_from_counts",
           "sigma_noise_level", "FLOAT32_RATIO_SLACK", "LAMBDA_MAX", "XI_MARGIN"]

# Above this noncentrality scipy's noncentral chi-square loses accuracy (NaN from about 1e11) and
# slows down; sigma1 that close to sigma0 is handled by the safe limit in ``worst_case_probability``.
LAMBDA_MAX = 1e7
# Relative slack on both ends of the sigma1/sigma0 interval when the noise is drawn with float32
# sigma: each of sigma(x0), sigma(x1) is rounded by at most 2^-24, and their ratio by 2^-23; 2^-22
# also covers float64 rounding in computing sigma(x).
FLOAT32_RATIO_SLACK = 2.0 ** -22
# A point "keeps the class" when xi_A + xi_B < 1 - XI_MARGIN (room for CDF rounding, ~1e-14).
XI_MARGIN = 1e-10
GRID_POINTS = 64  # coarse scan of [0, Cohen's radius] before bisection
REL_TOL = 1e-9  # bisection stops when the bracket is below REL_TOL * Cohen's radius


def check_semi_elasticity(r, name: str = "r") -> float:
    """``r`` as a float, refused unless a finite number >= 0 (the error names it ``name``)."""
    if isinstance(r, bool) or not isinstance(r, numbers.Real) or not math.isfinite(r) or r < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {r!r}")
    return float(r)


# ----------------------------------------------------------------------------------------------
# The worst-case probability xi
# ----------------------------------------------------------------------------------------------
def _cohen_xi(p_b, t):
    """xi at sigma1 = sigma0: Phi(Phi^-1(pB) + d / sigma0), t = d / sigma0."""
    return norm.cdf(norm.ppf(p_b) + t)


def _ncx2_xi(p_b, t, s, dim):
    """xi for s != 1 from the noncentral chi-square formulas (arrays, already broadcast)."""
    one_minus_s2 = -np.expm1(2.0 * np.log(s))  # 1 - s^2 without cancellation
    lam0 = (t / one_minus_s2) ** 2
    lam1 = s * s * lam0
    with np.errstate(all="ignore"):
        small = s < 1
        q = np.where(small, p_b, 1.0 - p_b)
        # ball (s < 1): xi = F_lam1(F^-1_lam0(pB) / s^2); complement (s > 1): 1 - F_lam1(F^-1_lam0(1 - pB) / s^2)
        arg = ncx2.ppf(q, dim, lam0) / (s * s)
        return np.where(small, ncx2.cdf(arg, dim, lam1), ncx2.sf(arg, dim, lam1))


def worst_case_probability(p_b, d, sigma0, sigma1, dim: int):
    """xi: the largest ``P(f(x1 + N(0, sigma1^2 I)) = B)`` over all classifiers f with
    ``P(f(x0 + N(0, sigma0^2 I)) = B) <= p_b``, for ``||x1 - x0|| = d`` in dimension ``dim``.

    Args: ``p_b`` in (0, 1), ``d >= 0``, ``sigma0, sigma1 > 0`` (numbers or numpy arrays, broadcast);
    ``dim`` >= 1. Returns float64 (array or scalar).

    Neyman-Pearson: the maximiser is the likelihood-ratio superlevel set of N(x1, sigma1^2) against
    N(x0, sigma0^2): a ball (sigma1 < sigma0) or the complement of a ball (sigma1 > sigma0), whose
    probabilities are noncentral chi-square CDFs with ``dim`` degrees of freedom and noncentralities
    ``lam0 = sigma0^2 d^2 / (sigma0^2 - sigma1^2)^2``, ``lam1 = sigma1^2 d^2 / (sigma0^2 - sigma1^2)^2``.
    At sigma1 = sigma0 it is Cohen's ``Phi(Phi^-1(p_b) + d / sigma0)``.

    Safe limit near sigma1 = sigma0: when ``lam0 > LAMBDA_MAX`` (1e7; scipy's ncx2 is accurate well
    beyond, NaN from about 1e11), xi is replaced by ``max(xi(s'), Cohen's xi)`` where s' is the ratio on
    the same side of 1 with ``lam0 = LAMBDA_MAX`` (farther from 1). By quasi-convexity of xi in sigma1
    this is an upper bound (conservative), and it tends to Cohen's value as sigma1 -> sigma0.
    A non-finite result (scipy failure) is returned as 1.0: "not certified", never a larger radius.
    """
    p_b, d, sigma0, sigma1 = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (p_b, d, sigma0, sigma1)))
    dim = check_count(dim, "dim")
    t = d / sigma0
    s = sigma1 / sigma0
    out = np.asarray(_cohen_xi(p_b, t), dtype=np.float64).copy()
    off = s != 1.0
    if np.any(off):
        pb, tt, ss = p_b[off], t[off], s[off]
        one_minus_s2 = -np.expm1(2.0 * np.log(ss))
        near = (tt / one_minus_s2) ** 2 > LAMBDA_MAX
        # s' with (1 - s'^2) = sign(1 - s^2) * t / sqrt(LAMBDA_MAX), i.e. lam0 = LAMBDA_MAX
        gap = np.sign(one_minus_s2) * tt / math.sqrt(LAMBDA_MAX)
        s_eval = np.where(near, np.sqrt(np.clip(1.0 - gap, 1e-300, None)), ss)
        xi = _ncx2_xi(pb, tt, s_eval, dim)
        xi = np.where(near, np.maximum(xi, out[off]), xi)
        out[off] = xi
    out = np.where(np.isfinite(out), out, 1.0)
    return out[()] if out.ndim == 0 else out


# ----------------------------------------------------------------------------------------------
# Radii
# ----------------------------------------------------------------------------------------------
def _ratios(d, sigma0: float, r: float, slack: float) -> np.ndarray:
    """sigma1/sigma0 values checked at distances d [G]: [G, 5] = ends, geometric midpoints and 1."""
    e = np.exp(r * np.asarray(d, dtype=np.float64))
    lo, hi = (1.0 / e) * (1.0 - slack), e * (1.0 + slack)
    return np.stack([lo, np.sqrt(lo), np.ones_like(e), np.sqrt(hi), hi], axis=1)


def _passes(p_a: float, p_b: float, d, sigma0: float, r: float, dim: int, slack: float) -> np.ndarray:
    """bool [G]: at every checked sigma1 the class keeps more than the other's worst case.

    Condition at distance d: ``max_s xi(1 - pA) + max_s xi(pB) < 1 - XI_MARGIN`` (each maximum over
    the checked sigma1 values separately: an upper bound of the maximum of the sum).
    """
    d = np.asarray(d, dtype=np.float64)
    s = _ratios(d, sigma0, r, slack)
    dd = np.broadcast_to(d[:, None], s.shape)
    not_a = float(stats.complement_up(p_a))  # an upper bound on P(not A): 1 - p_a rounded up
    xi_a = worst_case_probability(not_a, dd, sigma0, sigma0 * s, dim).max(axis=1)
    if p_b == not_a:
        xi_b = xi_a
    else:
        xi_b = worst_case_probability(p_b, dd, sigma0, sigma0 * s, dim).max(axis=1)
    return xi_a + xi_b < 1.0 - XI_MARGIN


def _check_radius_args(p_a, p_b, sigma0, r, dim, slack):
    for v, name in ((p_a, "p_lower"), (p_b, "p_upper")):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")
    sigma0 = check_positive_finite(sigma0, "sigma0")
    r = check_semi_elasticity(r, "r (the semi-elasticity)")
    if not 0.0 <= slack < 1e-3:
        raise ValueError(f"ratio_slack must be in [0, 1e-3), got {slack!r}")
    return float(p_a), float(p_b), sigma0, float(r), check_count(dim, "dim"), float(slack)


def two_class_radius(p_lower: float, p_upper: float, sigma0: float, r: float, dim: int, *,
                     ratio_slack: float = 0.0) -> float:
    """Largest d such that class A keeps a larger probability than class B at every d' <= d.

    Args:
        p_lower: lower bound on P(f(x0 + N(0, sigma0^2)) = A); p_upper: upper bound on that of B
            (``p_upper <= 1 - p_lower`` is the caller's business; the standard case is equality).
        sigma0: noise level at x0 (the one the counts were drawn with); r: semi-elasticity of sigma;
        dim: number of input elements N; ratio_slack: relative widening of the sigma1/sigma0 interval
            (``FLOAT32_RATIO_SLACK`` when sigma is rounded to float32 for the noise).
    Returns a float radius >= 0.

    Condition at distance d (two-class form): for sigma1 in ``[sigma0 e^{-rd}, sigma0 e^{rd}]``
    (widened by ratio_slack), worst-case ``P1(not A) + P1(B) < 1``, checked at both ends, at sigma0 and
    at the two geometric midpoints. r = 0 (and no slack) gives Cohen's closed form
    ``sigma0/2 * (Phi^-1(p_lower) - Phi^-1(p_upper))`` exactly.

    Search: the checked set includes sigma1 = sigma0, so the radius is at most Cohen's closed form R_C.
    A grid of ``GRID_POINTS`` (64) equally spaced distances in (0, R_C] finds the first failing one;
    bisection then narrows the last passing / first failing pair to ``REL_TOL * R_C`` (1e-9) and
    returns the passing end: the result always rounds toward the smaller radius, and every grid point
    below it passed. 0.0 when nothing positive passes.
    """
    p_a, p_b, sigma0, r, dim, slack = _check_radius_args(p_lower, p_upper, sigma0, r, dim, ratio_slack)
    if p_a <= 0.0 or p_b >= 1.0 or p_b >= p_a:
        return 0.0
    cohen = float(half_gap_radius(p_a, p_b, sigma0)) if p_a < 1.0 else math.inf  # rounded down
    if r == 0.0 and slack == 0.0:
        return float(max(cohen, 0.0))
    if not math.isfinite(cohen):
        raise ValueError("p_lower = 1 or p_upper = 0 gives an unbounded radius; pass Clopper-Pearson bounds "
                         "(strictly inside (0, 1))")
    if cohen <= 0.0:
        return 0.0
    grid = cohen * np.arange(1, GRID_POINTS + 1) / GRID_POINTS
    ok = _passes(p_a, p_b, grid, sigma0, r, dim, slack)
    ok[-1] = False  # Cohen's own boundary: xi at sigma0 equals 1/2 there, never strictly below
    first_fail = int(np.argmin(ok))
    lo = grid[first_fail - 1] if first_fail > 0 else 0.0
    hi = grid[first_fail]
    if lo == 0.0 and not bool(_passes(p_a, p_b, np.array([0.0]), sigma0, r, dim, slack)[0]):
        return 0.0
    while hi - lo > REL_TOL * cohen:
        mid = 0.5 * (lo + hi)
        if bool(_passes(p_a, p_b, np.array([mid]), sigma0, r, dim, slack)[0]):
            lo = mid
        else:
            hi = mid
    return float(lo)


def certified_radius(p_lower: float, sigma0: float, r: float, dim: int, *, ratio_slack: float = 0.0) -> float:
    """The sound L2 radius of input-dependent smoothing from a lower bound on p_A:
    the largest d such that the class is kept for every sigma1 in [sigma0 e^{-rd}, sigma0 e^{rd}].

    Args:
        p_lower: Clopper-Pearson lower bound on p_A at x0 (``costsmooth.stats.cp_lower``); pB = 1 - p_lower.
        sigma0: the noise level the counts at x0 were drawn with; r: the sigma function's
            semi-elasticity; dim: number of input elements; ratio_slack: see ``two_class_radius``.
    Returns the largest d (float) such that every d' <= d keeps class A at both ends
    ``sigma1 = sigma0 e^{-r d'}`` and ``sigma0 e^{+r d'}`` (worst-case P(B) xi < 1/2). 0.0 when
    p_lower <= 1/2. r = 0 gives Cohen's ``sigma0 * Phi^-1(p_lower)``.

    Grid (64 points) then bisection to a relative tolerance of 1e-9, returning the passing end: the
    radius is rounded toward the smaller value (see ``two_class_radius``).
    Guarantee: if p_lower holds (probability >= 1 - alpha) and sigma is r-semi-elastic, the smoothed
    classifier predicts A at every x with ||x - x0|| < radius.
    """
    p_a = float(p_lower)
    if not 0.0 <= p_a <= 1.0:
        raise ValueError(f"p_lower must be a probability in [0, 1], got {p_lower!r}")
    if p_a <= 0.5:
        _check_radius_args(p_a, 1.0 - p_a, sigma0, r, dim, ratio_slack)
        return 0.0
    if r == 0.0 and ratio_slack == 0.0:  # Cohen's closed form, rounded down (costsmooth.stats)
        return float(stats.round_toward_zero(check_positive_finite(sigma0, "sigma0") * stats.norm_ppf_down(p_a)))
    return two_class_radius(p_a, float(stats.complement_up(p_a)), sigma0, r, dim, ratio_slack=ratio_slack)


def admissible_ratio(dim: int, sigma0: float, p_lower: float, d: float) -> Tuple[float, float]:
    """The band ``(lo, hi)`` of sigma1/sigma0 for which class A is kept at distance d (xi < 1/2).

    Args: dim (number of input elements), sigma0 > 0, p_lower in (1/2, 1) (lower bound on p_A, pB =
    1 - p_lower), d >= 0. Returns floats ``lo <= hi``, or ``(nan, nan)`` when no ratio keeps the class.

    The admissible set is an interval around the minimiser of xi (quasi-convexity); its ends are found
    by bisection in log(sigma1/sigma0) to 1e-12 and rounded inward (lo up, hi down): every reported
    ratio is admissible. A sigma function must keep sigma(x1)/sigma(x0) inside the band for all
    ||x1 - x0|| = d, i.e. ``r * d <= min(-log lo, log hi)``: in high dimension the band is close to 1,
    which forces r to be tiny (the curse of dimensionality).
    """
    dim = check_count(dim, "dim")
    sigma0 = check_positive_finite(sigma0, "sigma0")
    p = float(p_lower)
    if not 0.5 < p < 1.0:
        raise ValueError(f"p_lower must lie in (1/2, 1), got {p_lower!r}")
    if not (isinstance(d, numbers.Real) and math.isfinite(d) and d >= 0):
        raise ValueError(f"d must be a finite distance >= 0, got {d!r}")
    def xi(u):  # u = log(sigma1 / sigma0)
        return float(worst_case_probability(1.0 - p, d, sigma0, sigma0 * math.exp(u), dim))

    span = 20.0
    best = minimize_scalar(xi, bounds=(-span, span), method="bounded", options={"xatol": 1e-12})
    u_min = float(best.x) if xi(float(best.x)) <= xi(0.0) else 0.0
    if xi(u_min) >= 0.5 - XI_MARGIN:
        return (math.nan, math.nan)

    def edge(outside: float) -> float:
        inside = u_min
        if xi(outside) < 0.5 - XI_MARGIN:
            return outside
        while abs(outside - inside) > 1e-12:
            mid = 0.5 * (inside + outside)
            if xi(mid) < 0.5 - XI_MARGIN:
                inside = mid
            else:
                outside = mid
        return inside

    return (math.exp(edge(-span)), math.exp(edge(span)))


def admissible_table(dims: Sequence[int] = (784, 3072, 150528), sigma0: float = 0.5,
                     p_lowers: Sequence[float] = (0.9, 0.99, 0.999), distances: Sequence[float] = (0.1, 0.25, 0.5)):
    """Rows ``{"dim", "sigma0", "p_lower", "d", "lo", "hi", "max_r"}`` of ``admissible_ratio``;
    ``max_r = min(-log lo, log hi) / d`` is the largest semi-elasticity that stays inside the band."""
    rows = []
    for dim in dims:
        for p in p_lowers:
            for d in distances:
                lo, hi = admissible_ratio(dim, sigma0, p, d)
                max_r = min(-math.log(lo), math.log(hi)) / d if math.isfinite(lo) and d > 0 else math.nan
                rows.append(dict(dim=dim, sigma0=sigma0, p_lower=p, d=d, lo=lo, hi=hi, max_r=max_r))
    return rows


# ----------------------------------------------------------------------------------------------
# Sigma functions: what a certificate needs of one
# ----------------------------------------------------------------------------------------------
def check_sigma_fn(sigma_fn) -> float:
    """The declared semi-elasticity r of a sigma function; refuses callables without one.

    A sigma function maps inputs ``[B, *shape]`` to positive noise levels ``[B]`` and must carry an
    attribute ``semi_elasticity`` = r >= 0 with ``|log sigma(x) - log sigma(x')| <= r ||x - x'||_2``.
    """
    if not callable(sigma_fn):
        raise TypeError(f"sigma must be a number or a sigma function, got {type(sigma_fn).__name__}")
    r = getattr(sigma_fn, "semi_elasticity", None)
    if r is None:
        name = getattr(sigma_fn, "__name__", type(sigma_fn).__name__)
        raise TypeError(f"the sigma function {name!r} has no 'semi_elasticity' attribute: an "
                        f"input-dependent sigma is only certifiable with a declared r such that |log sigma(x) - log "
                        f"sigma(x')| <= r * ||x - x'|| (Cohen's formula at a per-input sigma is not a certificate); "
                        f"use costsmooth.input_dependent.KNNSigma or set fn.semi_elasticity = r")
    return check_semi_elasticity(r, "semi_elasticity")


def sigma_noise_level(sigma) -> np.ndarray:
    """float64 ``[B]``: the noise level the kernels draw with for requested sigmas (float32 rounding).

    Radii of input-dependent smoothing are not monotone in sigma0 (a larger sigma0 also widens the
    sigma1 band in high dimension), so the certificate uses the exact level drawn, not a smaller one.
    """
    s = torch.as_tensor(sigma).detach().reshape(-1).cpu()
    return s.to(torch.float32).to(torch.float64).numpy()


# ----------------------------------------------------------------------------------------------
# Certificates from counts
# ----------------------------------------------------------------------------------------------
def _standard(top: int, counts: np.ndarray, alpha: float, sigma0: float, r: float, dim: int, slack: float,
              charge: float = 0.0):
    n = int(counts.sum())
    p_low = float(lower_bound(counts[top], n, alpha, charge))
    if p_low < 0.5:
        return ABSTAIN, 0.0, p_low
    return int(top), certified_radius(p_low, sigma0, r, dim, ratio_slack=slack), p_low


def _cost_sensitive(top: int, counts: np.ndarray, label: int, cost: CostMatrix, alpha: float, sigma0: float,
                    r: float, dim: int, slack: float, charge: float = 0.0) -> dict:
    """The cost-sensitive certificate with the worst-case bound xi: the bounds and alpha split of
    ``costsmooth.certify.cost_sensitive_fields`` (p_A at alpha/2, each of the K targets at alpha/(2K)),
    radii from ``two_class_radius`` instead of Cohen's closed form."""
    return cost_sensitive_fields(top, counts, label, cost, alpha, lambda p_low, p_up: two_class_radius(
        p_low, p_up, sigma0, r, dim, ratio_slack=slack), charge)


def certificates_from_counts(selection_counts, counts, alpha: float, sigma0, r: float, dim: int,
                             labels: Optional[Sequence[int]] = None,
                             cost: Optional[CostMatrix] = None, charge: float = 0.0) -> List[Certificate]:
    """Certificates of input-dependent smoothing from selection and estimation counts ``[B, C]``.

    Args:
        selection_counts, counts: int64 ``[B, C]`` (independent draws, as in ``certify_from_counts``).
        alpha: failure probability of each certificate (standard; cost-sensitive: alpha/2 for p_A and
            alpha/(2K) for each of the K targets).
        sigma0: float ``[B]`` (tensor or array) or a number: the sigma requested for each input; the
            certificate uses the float32 value the kernels drew with (``sigma_noise_level``).
        r: the sigma function's semi-elasticity; dim: number of elements of one input.
        labels, cost, charge: as in ``costsmooth.certify.certify_from_counts``.

    Radii come from ``certified_radius`` / ``two_class_radius`` with ``FLOAT32_RATIO_SLACK`` (the
    float32 rounding of sigma at x0 and at the displaced point). r = 0 is a constant sigma: the
    certificates are exactly ``costsmooth.certify``'s (Cohen's formula is sound there).
    Each certificate's ``sigma0`` field holds the noise level its radius used.
    Guarantees: as in ``costsmooth.certify``, given that sigma is r-semi-elastic.
    """
    alpha = check_alpha(alpha)
    charge = check_charge(charge)
    r = check_semi_elasticity(r, "r (the semi-elasticity)")
    dim = check_count(dim, "dim")
    sel = check_counts_matrix(selection_counts, "selection counts")
    est = check_counts_matrix(counts, "estimation counts")
    if est.shape != sel.shape:
        raise ValueError(f"selection counts {list(sel.shape)} and estimation counts {list(est.shape)} must both be "
                         f"[B, C] with the same B and C")
    batch = sel.shape[0]
    sig = torch.as_tensor(sigma0, dtype=torch.float64).detach().cpu()
    sig = sig.expand(batch) if sig.dim() == 0 else sig
    if sig.dim() != 1 or sig.shape[0] != batch or not bool((torch.isfinite(sig) & (sig > 0)).all()):
        raise ValueError(f"sigma0 must be {batch} positive finite noise levels (one per input), got "
                         f"shape {list(sig.shape)}")
    if cost is not None:
        cost.check_num_classes(sel.shape[1])
    if labels is not None:
        labels = check_labels(labels, batch, sel.shape[1])
    out = []
    for b in range(batch):
        top = int(np.argmax(sel[b]))
        label = None if labels is None else labels[b]
        cs_fields = None
        if r == 0.0:  # constant sigma: the standard certificates, exactly
            s0 = conservative_sigma(float(sig[b]))
            pred, radius, p_low = standard_certificate(top, est[b], alpha, s0, charge)
            if cost is not None and label is not None and cost.is_seed(label):
                cs_fields = cost_sensitive_certificate(top, est[b], label, cost, alpha, s0, charge)
        else:
            s0 = float(sigma_noise_level(sig[b:b + 1])[0])
            pred, radius, p_low = _standard(top, est[b], alpha, s0, r, dim, FLOAT32_RATIO_SLACK, charge)
            if cost is not None and label is not None and cost.is_seed(label):
                cs_fields = _cost_sensitive(top, est[b], label, cost, alpha, s0, r, dim, FLOAT32_RATIO_SLACK, charge)
        cert = Certificate(prediction=pred, radius=radius, top_class=top, pA_lower=p_low,
                           counts=est[b].astype(np.int64), selection_counts=sel[b].astype(np.int64), label=label)
        cert.sigma0 = s0
        for key, value in (cs_fields or {}).items():
            setattr(cert, key, value)
        out.append(cert)
    return out
