"""Calibration metrics and their certified worst cases over confidence boxes.

Top-label metrics over N inputs with confidences z_n in [0, 1] and correctness c_n in {0, 1}:
- Brier score ``mean_n (c_n - z_n)^2``;
- binned ECE ``(1/N) sum_m | sum_{n in B_m} (c_n - z_n) |`` with M equal-width bins on [0, 1].

Bin convention (the same in the plain ECE, the MILP, the sign enumeration, ADMM and the tests): edges
``e = linspace(0, 1, M + 1)``; bin m holds ``e_m <= z < e_{m+1}``, the last bin also holds z = 1
(``bin_index``). A box [low, up] can put its input in bin m iff ``up >= e_m`` and (``low < e_{m+1}`` or m is
the last bin); inside bin m the input's confidence ranges over the closed interval
``[max(low, e_m), min(up, e_{m+1})]``. The closure only adds limit points, so the worst cases below are
suprema of the ECE over the boxes; the confidences returned with them are nudged by one ulp below an
upper edge where needed, so that the plain ECE at them equals the value to ~1e-15.

Certified ECE (CECE): the maximum of the ECE over confidences inside the boxes. Three solvers:
- "signs" (exact, this module's addition): ``sum_m |S_m| = max_{s in {+-1}^M} sum_m s_m S_m``, and for
  fixed signs the maximum separates over inputs: input n takes the bin and box end maximising
  ``s_m (c_n - z)``. So ``CECE = max_s (1/N) sum_n max_m [s_m = +1: c_n - lo_nm ; s_m = -1: up_nm - c_n]``,
  exact in ``O(2^M N M)`` time: linear in N, fast for M <= 16.
- "milp" (exact, Emde et al.'s mixed-integer program, solved by HiGHS through ``scipy.optimize.milp``):
  binaries ``x[n, m, +/-]`` (input n in bin m at the box end that pushes bin m's sum up or down) and a
  sign binary ``b_m`` per bin, with ``sum_{m, +/-} x[n, m, .] = 1``, ``x[n, m, +] <= b_m``,
  ``x[n, m, -] <= 1 - b_m``; objective ``(1/N) sum x+ (c - lo) + x- (up - c)``. This is the paper's
  program (bin assignments a[n, m], bin confidences z[n, m], |.| split by a sign binary) after two
  exact reductions: for fixed bins and signs the optimum z is a box end, so ``w = a z`` needs no
  big-M, and the sign binary enters only through the two linking rows.
- "admm" (attained lower estimate): ADMM on the convex relaxation (each input a distribution over its
  (bin, end) vertices, the bin sums split off as ``s = D lambda``), rounded by best responses to the
  relaxation's bin signs and improved by alternating signs and best responses. It returns the ECE at
  a feasible confidence vector, so it never exceeds the maximum.
``method="auto"``: "signs" for M <= SIGNS_MAX_BINS, else "milp" up to MILP_MAX_N inputs, else "admm".
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ["round_up_mean", "bin_edges", "bin_index", "expected_calibration_error", "brier_score", "certified_brier",
           "brier_worst_confidences", "certified_ece", "CertifiedECE", "brute_force_certified_ece", "dece",
           "ece_at_brier_worst", "dece_ascent", "CECE_METHODS", "MILP_MAX_N", "SIGNS_MAX_BINS"]

CECE_METHODS = ("auto", "signs", "milp", "admm")
MILP_MAX_N = 2000      # beyond this, with more than SIGNS_MAX_BINS bins, "auto" uses ADMM (HiGHS took 4.3 s at N = 2000, 60 s at 5000)
SIGNS_MAX_BINS = 16    # 2^16 sign vectors


def _check_bins(n_bins) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return int(n_bins)


def bin_edges(n_bins: int) -> np.ndarray:
    """float64 ``[M + 1]`` equal-width bin edges on [0, 1]."""
    return np.linspace(0.0, 1.0, _check_bins(n_bins) + 1)


def bin_index(conf, n_bins: int) -> np.ndarray:
    """int64 ``[N]``: the bin of each confidence (``e_m <= z < e_{m+1}``; z = 1 in the last bin)."""
    edges = bin_edges(n_bins)
    return np.clip(np.searchsorted(edges, np.asarray(conf, dtype=np.float64), side="right") - 1, 0, n_bins - 1)


def _inputs(conf, correct, name: str = "conf") -> Tuple[np.ndarray, np.ndarray]:
    z = np.asarray(conf.detach().cpu() if hasattr(conf, "detach") else conf, dtype=np.float64).ravel()
    c = np.asarray(correct.cpu() if hasattr(correct, "cpu") else correct)
    if c.dtype != np.bool_ and not np.all((c == 0) | (c == 1)):
        raise ValueError("correct must hold booleans or 0/1 values")
    c = c.astype(np.float64).ravel()
    if z.shape != c.shape:
        raise ValueError(f"{name} and correct must have the same length, got {z.size} and {c.size}")
    if z.size and (not np.all(np.isfinite(z)) or z.min() < 0 or z.max() > 1):
        raise ValueError(f"{name} must lie in [0, 1]")
    return z, c


def expected_calibration_error(conf, correct, n_bins: int = 10, bins: Optional[np.ndarray] = None) -> float:
    """Top-label binned ECE ``(1/N) sum_m |sum_{n in B_m} (c_n - z_n)|`` (0.0 for N = 0).

    conf: float ``[N]`` confidences of the predicted class; correct: bool ``[N]``. ``bins`` (int ``[N]``)
    overrides the bin of each input (used to evaluate a point of the closure of a bin)."""
    z, c = _inputs(conf, correct)
    if z.size == 0:
        return 0.0
    m = bin_index(z, n_bins) if bins is None else np.asarray(bins, dtype=np.int64)
    return float(np.abs(np.bincount(m, weights=c - z, minlength=_check_bins(n_bins))).sum() / z.size)


def brier_score(conf, correct) -> float:
    """Top-label Brier score ``mean_n (c_n - z_n)^2`` (0.0 for N = 0)."""
    z, c = _inputs(conf, correct)
    return float(np.mean((c - z) ** 2)) if z.size else 0.0


def _boxes(low, up, correct):
    lo, c = _inputs(low, correct, "low")
    hi, _ = _inputs(up, correct, "up")
    if np.any(lo > hi):
        raise ValueError("every box needs low <= up")
    return lo, hi, c


def brier_worst_confidences(low, up, correct) -> np.ndarray:
    """float64 ``[N]``: the box end farthest from c_n (low for correct inputs, up for wrong ones)."""
    lo, hi, c = _boxes(low, up, correct)
    return np.where(c == 1, lo, hi)


def round_up_mean(value: float, terms: int) -> float:
    """A float mean of ``terms`` values in [-1, 1] (or their absolute values' sum over ``terms``), moved up
    past its rounding error: a float64 sum of N such values errs by at most ``(N - 1) N 2^-53``, so the
    mean by ``N 2^-53``; ``(N + 4) 2^-53`` covers that and the division, then one ulp up. A certified
    worst case (CBS, the exact CECE) is an upper bound, so it is reported on that side (about 1e-12
    at N = 10^4: invisible in any printed digit)."""
    return float(np.nextafter(value + (terms + 4) * 2.0 ** -53, np.inf))


def certified_brier(low, up, correct) -> float:
    """Certified Brier score: ``max`` of the Brier score over confidences inside the boxes, exact.

    The score separates over inputs and (c - z)^2 is convex in z, so the maximum is at the end of
    each box farthest from c: ``CBS = mean_n (c_n - z*_n)^2``, attained at ``brier_worst_confidences``,
    rounded up (``round_up_mean``). low, up: float ``[N]`` boxes; correct: bool ``[N]``.
    """
    worst = brier_worst_confidences(low, up, correct)
    return min(round_up_mean(brier_score(worst, correct), worst.size), 1.0) if worst.size else 0.0


@dataclass
class CertifiedECE:
    """A certified-ECE result. value: the ECE maximum (``exact``) or an attained lower estimate of it;
    method: the solver; confidences float64 ``[N]`` (inside the boxes) and bins int64 ``[N]`` at which
    ``value`` is attained; seconds: solver time."""
    value: float
    exact: bool
    method: str
    confidences: np.ndarray
    bins: np.ndarray
    seconds: float

    def __float__(self) -> float:
        return self.value

    @property
    def label(self) -> str:
        """"exact" or "attained (lower estimate)": print it beside the value."""
        return "exact" if self.exact else "attained (lower estimate)"


class _Problem:
    """The boxes clipped to bins: allowed (input, bin) pairs and their interval ends."""

    def __init__(self, low, up, correct, n_bins: int):
        self.lo, self.hi, self.c = _boxes(low, up, correct)
        self.M = _check_bins(n_bins)
        self.N = self.c.size
        e = bin_edges(self.M)
        last = np.arange(self.M) == self.M - 1
        self.allowed = (self.hi[:, None] >= e[None, :-1]) & ((self.lo[:, None] < e[None, 1:]) | last[None, :])
        self.lo_nm = np.maximum(self.lo[:, None], e[None, :-1])
        self.up_nm = np.minimum(self.hi[:, None], e[None, 1:])
        # gain of input n in bin m when bin m's sum is pushed up (+: z = lo_nm) or down (-: z = up_nm)
        self.plus = np.where(self.allowed, self.c[:, None] - self.lo_nm, -np.inf)
        self.minus = np.where(self.allowed, self.up_nm - self.c[:, None], -np.inf)
        self.edges = e

    def respond(self, signs: np.ndarray):
        """Best response to bin signs ``[M]`` (True = +): (objective, bins [N], ends [N] True = lo)."""
        g = np.where(signs[None, :], self.plus, self.minus)
        bins = np.argmax(g, axis=1)
        return float(g[np.arange(self.N), bins].sum()), bins, signs[bins]

    def point(self, bins: np.ndarray, use_low: np.ndarray) -> np.ndarray:
        """The confidences at (bins, box ends), nudged below an upper edge so ``bin_index`` agrees."""
        rows = np.arange(self.N)
        z = np.where(use_low, self.lo_nm[rows, bins], self.up_nm[rows, bins])
        at_edge = (bins < self.M - 1) & (z >= self.edges[bins + 1])
        return np.where(at_edge, np.nextafter(self.edges[bins + 1], 0.0), z)

    def value(self, bins: np.ndarray, z: np.ndarray) -> float:
        return float(np.abs(np.bincount(bins, weights=self.c - z, minlength=self.M)).sum() / max(self.N, 1))

    def closure_value(self, bins: np.ndarray) -> float:
        """max over z in the bins' closed intervals of the ECE with these bins (each bin at its better end)."""
        rows = np.arange(self.N)
        up_sum = np.bincount(bins, weights=self.c - self.lo_nm[rows, bins], minlength=self.M)
        down_sum = np.bincount(bins, weights=self.c - self.up_nm[rows, bins], minlength=self.M)
        return float(np.maximum(np.abs(up_sum), np.abs(down_sum)).sum() / max(self.N, 1))

    def polish(self, signs: np.ndarray, rounds: int = 50):
        """Alternate best responses and the signs of the resulting bin sums until nothing improves."""
        best = (-np.inf, None, None)
        for _ in range(rounds):
            _, bins, ends = self.respond(signs)
            z = np.where(ends, self.lo_nm[np.arange(self.N), bins], self.up_nm[np.arange(self.N), bins])
            val = self.value(bins, z)
            if val <= best[0] + 1e-15:
                break
            best = (val, bins, ends)
            sums = np.bincount(bins, weights=self.c - z, minlength=self.M)
            signs = np.where(sums != 0, sums > 0, signs)
        return best

    def result(self, bins, method: str, exact: bool, t0: float) -> CertifiedECE:
        """The result at these bins, each bin's inputs at the box end that maximises |bin sum|."""
        bins = np.asarray(bins, dtype=np.int64)
        rows = np.arange(self.N)
        up_sum = np.bincount(bins, weights=self.c - self.lo_nm[rows, bins], minlength=self.M)
        down_sum = np.bincount(bins, weights=self.c - self.up_nm[rows, bins], minlength=self.M)
        use_low = (np.abs(up_sum) >= np.abs(down_sum))[bins]
        z = self.point(bins, use_low)
        if not (self.allowed[rows, bins].all() and np.all((z >= self.lo) & (z <= self.hi))):
            raise RuntimeError(f"the {method} solver returned confidences outside the boxes; please report this")
        value = round_up_mean(self.closure_value(bins), self.N) if exact else self.value(bins, z)
        return CertifiedECE(value=value, exact=exact, method=method, confidences=z, bins=bins,
                            seconds=time.perf_counter() - t0)


def _solve_signs(p: _Problem):
    signs = ((np.arange(2 ** p.M)[:, None] >> np.arange(p.M)[None, :]) & 1).astype(bool)  # [2^M, M]
    chunk = max(1, int(4e6 // max(p.N * p.M, 1)))
    best_val, best_signs = -np.inf, None
    for s0 in range(0, signs.shape[0], chunk):
        s = signs[s0:s0 + chunk]
        g = np.where(s[:, None, :], p.plus[None], p.minus[None]).max(axis=2).sum(axis=1)
        k = int(np.argmax(g))
        if g[k] > best_val:
            best_val, best_signs = g[k], s[k]
    return p.respond(best_signs)[1]


def _solve_milp(p: _Problem, time_limit: Optional[float]):
    # scipy's MILP solver and its sparse constraints: imported only when the milp method runs
    import scipy.sparse as sp
    from scipy.optimize import Bounds, LinearConstraint, milp

    n_idx, m_idx = np.nonzero(p.allowed)
    K = n_idx.size
    # variables: x+ [K], x- [K], b [M]
    cost = -np.concatenate([p.plus[n_idx, m_idx], p.minus[n_idx, m_idx], np.zeros(p.M)]) / p.N
    rows, cols, vals = [], [], []
    # each input in exactly one (bin, end)
    rows += [n_idx, n_idx]
    cols += [np.arange(K), K + np.arange(K)]
    vals += [np.ones(K), np.ones(K)]
    r0 = p.N
    # x+ - b_m <= 0
    rows += [r0 + np.arange(K), r0 + np.arange(K)]
    cols += [np.arange(K), 2 * K + m_idx]
    vals += [np.ones(K), -np.ones(K)]
    # x- + b_m <= 1
    r1 = r0 + K
    rows += [r1 + np.arange(K), r1 + np.arange(K)]
    cols += [K + np.arange(K), 2 * K + m_idx]
    vals += [np.ones(K), np.ones(K)]
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(p.N + 2 * K, 2 * K + p.M))
    lb = np.concatenate([np.ones(p.N), -np.inf * np.ones(K), -np.inf * np.ones(K)])
    ub = np.concatenate([np.ones(p.N), np.zeros(K), np.ones(K)])
    options = {"mip_rel_gap": 0.0}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    res = milp(cost, constraints=LinearConstraint(A, lb, ub), integrality=np.ones(2 * K + p.M),
               bounds=Bounds(0, 1), options=options)
    if res.x is None:
        raise RuntimeError(f"HiGHS found no solution of the certified-ECE MILP ({res.message})")
    optimal = res.status == 0
    x = np.round(res.x).astype(bool)
    # decode, then improve by alternating best responses from the MILP's bin signs (never lowers the value)
    bins = np.zeros(p.N, dtype=np.int64)
    chosen = x[:K] | x[K:2 * K]
    bins[n_idx[chosen]] = m_idx[chosen]
    polished = p.polish(x[2 * K:])[1]
    decoded = np.bincount(n_idx[chosen], minlength=p.N) == 1  # one allowed (bin, end) per input
    if not decoded.all() or p.closure_value(polished) > p.closure_value(bins):
        bins = polished
    return bins, optimal and bool(decoded.all())


def _project_simplex(y: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean projection of ``y [N, V]`` onto the simplex over the allowed entries ``mask``."""
    y = np.where(mask, y, -1e9)
    u = -np.sort(-y, axis=1)
    css = np.cumsum(u, axis=1) - 1.0
    j = np.arange(1, y.shape[1] + 1)
    rho = np.sum(u - css / j > 0, axis=1)
    theta = css[np.arange(y.shape[0]), rho - 1] / rho
    return np.where(mask, np.maximum(y - theta[:, None], 0.0), 0.0)


def _solve_admm(p: _Problem, iterations: int = 300, seed: int = 0, restarts: int = 16):
    # vertices v = (m, end): columns [0, M) push bin m up (z = lo_nm), [M, 2M) push it down (z = up_nm)
    mask = np.concatenate([p.allowed, p.allowed], axis=1)
    d = np.where(mask, np.concatenate([p.c[:, None] - p.lo_nm, p.c[:, None] - p.up_nm], axis=1), 0.0) / p.N
    vbin = np.concatenate([np.arange(p.M), np.arange(p.M)])

    flat_bins = np.tile(vbin, p.N)

    def bin_sums(lam):
        return np.bincount(flat_bins, weights=(lam * d).ravel(), minlength=p.M)

    lam = _project_simplex(np.random.default_rng(seed).random(mask.shape), mask)
    s = bin_sums(lam)
    u = np.zeros(p.M)
    lipschitz = max(float(np.bincount(flat_bins, weights=(d ** 2).ravel(), minlength=p.M).max()), 1e-12)
    for it in range(iterations):
        rho = 10.0 ** (1 + 3 * it / max(iterations - 1, 1))      # 10 -> 10^4: from exploration to consensus
        for _ in range(3):                                      # lambda: projected gradient on (rho/2)||D lam - s + u||^2
            r = bin_sums(lam) - s + u
            lam = _project_simplex(lam - (d * r[vbin][None, :]) / lipschitz, mask)
        v = bin_sums(lam) + u
        s = v + np.where(v >= 0, 1.0, -1.0) / rho                # prox of -|s|: pushes the bin sums apart
        u = u + bin_sums(lam) - s
    worst = np.where(p.c == 1, p.lo, p.hi)   # the Brier-worst point's bin signs, then random restarts
    worst_sums = np.bincount(bin_index(worst, p.M), weights=p.c - worst, minlength=p.M)
    candidates = [bin_sums(lam) >= 0, worst_sums >= 0, np.ones(p.M, bool), np.zeros(p.M, bool),
                  *(np.random.default_rng(seed + 1).random((restarts, p.M)) < 0.5)]
    best = (-np.inf, None, None)
    for signs in candidates:
        cand = p.polish(signs)
        if cand[0] > best[0]:
            best = cand
    return best[1]


def certified_ece(low, up, correct, n_bins: int = 10, method: str = "auto",
                  time_limit: Optional[float] = None) -> CertifiedECE:
    """The maximum of the binned top-label ECE over confidences inside the boxes (certified ECE).

    Args:
        low, up: float ``[N]`` certified confidence boxes (``confidence_box``); correct: bool ``[N]``,
            fixed by the certified predictions.
        n_bins: M equal-width bins on [0, 1] (convention in the module docstring).
        method: "signs" or "milp" (exact), "admm" (attained lower estimate), "auto" (see module).
        time_limit: seconds for HiGHS ("milp"); a run stopped by it is reported as not exact.

    Returns:
        ``CertifiedECE``: ``value`` (exact maximum, or with ``exact=False`` an ECE attained inside the
        boxes, hence a lower estimate of the maximum), the confidences and bins attaining it, time.
    """
    if method not in CECE_METHODS:
        raise ValueError(f"method must be one of {', '.join(CECE_METHODS)}, got {method!r}")
    t0 = time.perf_counter()
    p = _Problem(low, up, correct, n_bins)
    if p.N == 0:
        return CertifiedECE(0.0, True, method, np.zeros(0), np.zeros(0, np.int64), 0.0)
    if method == "auto":
        method = "signs" if p.M <= SIGNS_MAX_BINS else ("milp" if p.N <= MILP_MAX_N else "admm")
    if method == "signs":
        if p.M > 24:
            raise ValueError(f"method 'signs' enumerates 2^n_bins sign vectors; n_bins={p.M} is too many, use "
                             f"'milp' or 'admm'")
        return p.result(_solve_signs(p), "signs", True, t0)
    if method == "milp":
        bins, optimal = _solve_milp(p, time_limit)
        return p.result(bins, "milp", optimal, t0)
    return p.result(_solve_admm(p), "admm", False, t0)


def brute_force_certified_ece(low, up, correct, n_bins: int = 10) -> float:
    """The certified ECE by enumeration (tests; N <= ~7): every input's bin among those its box meets and,
    since the ECE for fixed bins is convex in z (a sum of |affine|), every end of the box clipped to the bin."""
    lo, hi, c = _boxes(low, up, correct)
    M = _check_bins(n_bins)
    e = bin_edges(M)
    options = []
    for n in range(c.size):
        opts = []
        for m in range(M):
            if hi[n] >= e[m] and (lo[n] < e[m + 1] or m == M - 1):
                opts += [(m, max(lo[n], e[m])), (m, min(hi[n], e[m + 1]))]
        options.append(opts)
    best = 0.0
    for combo in itertools.product(*options):
        sums = np.zeros(M)
        for n, (m, z) in enumerate(combo):
            sums[m] += c[n] - z
        best = max(best, float(np.abs(sums).sum()) / max(c.size, 1))
    return best


def ece_at_brier_worst(low, up, correct, n_bins: int = 10) -> float:
    """Cheap baseline: the ECE at the Brier-worst confidences (an attained lower estimate of CECE)."""
    return expected_calibration_error(brier_worst_confidences(low, up, correct), correct, n_bins)


def dece(conf, correct, n_bins: int = 10, temperature: float = 0.01):
    """Differentiable ECE (Bohdal, Yang, Hospedales 2021): soft bin memberships
    ``softmax((w z + b) / temperature)`` with ``w = [1..M]``, ``b = -cumsum([0, e_1..e_{M-1}])`` (Yang et al.'s
    soft binning), then ``(1/N) sum_m |sum_n o_nm (c_n - z_n)|``. conf, correct: torch ``[N]``; returns a
    0-d tensor, differentiable in conf."""
    M = _check_bins(n_bins)
    cuts = torch.linspace(0, 1, M + 1, dtype=conf.dtype, device=conf.device)[1:-1]
    w = torch.arange(1, M + 1, dtype=conf.dtype, device=conf.device)
    b = -torch.cat([torch.zeros(1, dtype=conf.dtype, device=conf.device), torch.cumsum(cuts, 0)])
    member = torch.softmax((conf[:, None] * w[None, :] + b[None, :]) / temperature, dim=1)
    gap = (correct.to(conf.dtype) - conf)[:, None] * member
    return gap.sum(0).abs().sum() / max(conf.shape[0], 1)


def _dece_grad(z: np.ndarray, c: np.ndarray, n_bins: int, temperature: float) -> np.ndarray:
    """Gradient of ``dece`` with respect to the confidences ``z [N]`` (float64, numpy)."""
    w = np.arange(1, n_bins + 1, dtype=np.float64)
    b = -np.concatenate([[0.0], np.cumsum(np.linspace(0, 1, n_bins + 1)[1:-1])])
    logits = (z[:, None] * w[None, :] + b[None, :]) / temperature
    o = np.exp(logits - logits.max(axis=1, keepdims=True))
    o /= o.sum(axis=1, keepdims=True)
    gap = c - z
    sign = np.sign((o * gap[:, None]).sum(axis=0))
    w_bar = (o * w[None, :]).sum(axis=1, keepdims=True)
    d_gap = -o + gap[:, None] * o * (w[None, :] - w_bar) / temperature
    return (d_gap * sign[None, :]).sum(axis=1) / z.size


def dece_ascent(low, up, correct, n_bins: int = 10, steps: int = 200, lr: float = 0.01,
                temperature: float = 0.01) -> float:
    """Cheap baseline: projected gradient ascent of the dECE inside the boxes (normalised-sign steps of
    size ``lr``, decaying linearly, from the box centres), then the best plain ECE met on the way (an
    attained lower estimate of CECE)."""
    lo, hi, c = _boxes(low, up, correct)
    n_bins = _check_bins(n_bins)
    if c.size == 0:
        return 0.0
    z = (lo + hi) / 2
    best = expected_calibration_error(z, c, n_bins)
    for t in range(steps):
        z = np.clip(z + lr * (1 - t / steps) * np.sign(_dece_grad(z, c, n_bins, temperature)), lo, hi)
        best = max(best, expected_calibration_error(z, c, n_bins))
    return best
