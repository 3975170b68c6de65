"""Sequential certification: "is this input certified at radius r?" with as few samples as needed.

Cohen et al.'s CERTIFY spends the same n (often 100000) estimation samples on every input, although
an input with p_A = 0.999 is certified at a moderate radius after a few hundred samples and one with
p_A = 0.4 is hopeless after as many. This module tests, per input, Cohen et al.'s condition at a
fixed radius r, ``p_cA >= Phi(r / sigma)`` (or the cost-sensitive condition ``R_cs >= r`` for
inputs of a seed class), and stops each input as soon as the evidence decides it.

Boundary (anytime-valid): Clopper-Pearson bounds at a geometric grid of checkpoints
``n_1 < n_2 < ... < n_K = max_n`` (``n_{k+1} ~ growth * n_k``), the k-th at level ``alpha_k`` with
``sum_k alpha_k = alpha`` (by default alpha/2 at max_n and alpha/(2(K-1)) at each earlier checkpoint):
a union bound over the checkpoints (Bonferroni; Wald 1945 for the sequential setting; Howard,
Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric, nonasymptotic confidence sequences",
for confidence sequences). Validity, in three lines: the
noise of sample j of input i is a pure function of (seed, stream, i, j), so every input has one
fixed infinite sequence of i.i.d. Bernoulli(p) votes whether or not it is drawn; the bound at
``n_k`` uses the first ``n_k`` of them, so ``P(lower_k > p) <= alpha_k`` for each k by Clopper-Pearson,
and a wrong statement at *any* stopping rule needs one of these events:
``P(exists k: lower_k > p) <= sum_k alpha_k = alpha``. The same holds for the upper bounds.

Decisions (each a claim at level alpha; only one of the two errors is possible for a given input):
- "certified": the lower bound of p_cA gives radius ``sigma * Phi^-1(pA_lower) >= r`` (and
  pA_lower >= 1/2). Guarantee: with probability >= 1 - alpha, g(x + delta) = cA for ||delta|| < r.
- "not_certified": the upper bound of p_cA is below ``Phi(r / sigma)``: with probability >= 1 - alpha
  the true radius sigma * Phi^-1(p_cA) is below r, so no amount of sampling would certify r.
- "undecided": neither after ``max_n`` samples.
Cost-sensitive inputs (label a seed class of the cost matrix) split each alpha_k by the union bound:
alpha_k/2 for the bound on p_cA and alpha_k/(2K') for each of the K' target bounds. "certified":
cA is not a target and ``sigma/2 * (Phi^-1(pA_lower) - Phi^-1(min(max_j pj_upper, 1 - pA_lower))) >= r``;
"not_certified": cA is a target, or the optimistic radius (upper bound of p_cA, lower bounds of
the p_j) is below r.

What is lost against fixed-n CERTIFY: the output is a decision at one radius r, not the largest
radius; the bound at each checkpoint is at a fraction of alpha, so an input needs slightly more
samples than a fixed-n test that happened to pick the right n, and the largest radius certifiable
at max_n is ``sigma * Phi^-1(alpha_K^(1/max_n))`` instead of ``sigma * Phi^-1(alpha^(1/max_n))``.
The naive rule "stop as soon as the fixed-n bound at level alpha crosses" checks K times at level
alpha and is *not* valid (its error rate grows with K; see ``tests/test_sequential.py`` and
docs/sequential.md).

Each claim uses the noise level that is conservative for it: the kernels draw with sigma rounded to
float32, so a "certified" claim (radius at least r) uses the smaller of sigma and its float32
rounding, and a "not_certified" claim (radius below r) the larger (``sigma_bounds``).

Every bound pays the noise charge of the draw (``charge``: the total variation between the law the
generator draws and the Gaussian, ``costsmooth.sound``), as fixed-n certificates do
(``certify.lower_bound`` / ``upper_bound``): subtracted from each lower bound and added to each upper
bound, for the "certified" and the "not_certified" claims alike.

Layers: this module is pure numpy/scipy (the boundary, the tests, the result types and
``SequentialTest`` / ``RadiusTest``, which turn counts at a checkpoint into decisions). The packed
scheduler that draws the samples is ``costsmooth.packing`` (engine); ``Smooth.certify_at``,
``Smooth.certify_batch_at`` and ``Smooth.estimate_radius_batch`` join the two; the dataset run and
its result file are ``costsmooth.runs.certify_dataset_at`` and ``costsmooth.results.SequentialWriter``.

Adaptive-n radius estimation (``RadiusTest``) runs the same confidence sequence and stops an input
when its certified radius is within ``tolerance`` of what continued sampling could reach (the
smaller of the upper-bound radius and the radius certifiable at max_n).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import stats
from ._checks import check_alpha, check_count, check_positive_finite
from .certify import ABSTAIN, check_charge, conservative_sigma, half_gap_radius, lower_bound, upper_bound
from .cost import CostMatrix

__all__ = ["Boundary", "SequentialResult", "RadiusEstimate", "SequentialTest", "RadiusTest", "standard_test",
           "cost_sensitive_test", "target_radii", "simulate_standard", "sigma_bounds", "DEFAULT_FIRST",
           "DEFAULT_GROWTH", "DEFAULT_FINAL_SHARE", "CONTINUE", "CERTIFIED", "NOT_CERTIFIED"]

DEFAULT_FIRST = 64      # first checkpoint (estimation samples)
DEFAULT_GROWTH = 1.25   # checkpoint ratio; 1.25-1.5 balances overshoot against the alpha split over K looks
DEFAULT_FINAL_SHARE = 0.5  # part of alpha spent at max_n, so that inputs decided only there lose little

CONTINUE, CERTIFIED, NOT_CERTIFIED = 0, 1, 2
_NAMES = {CERTIFIED: "certified", NOT_CERTIFIED: "not_certified"}


# -- the boundary ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Boundary:
    """Checkpoints ``n_1 < ... < n_K`` (int64 ``[K]``) and their levels ``alpha_k`` (float64 ``[K]``).

    A statement made at any checkpoint holds with probability >= 1 - ``guaranteed_alpha``
    (= sum_k alpha_k, by the union bound; see the module docstring).
    """
    checkpoints: np.ndarray
    levels: np.ndarray

    def __post_init__(self):
        n = np.asarray(self.checkpoints)
        a = np.asarray(self.levels, dtype=np.float64)
        if n.ndim != 1 or n.size < 1 or not np.issubdtype(n.dtype, np.integer) or n[0] < 1 or np.any(np.diff(n) <= 0):
            raise ValueError(f"checkpoints must be increasing integers >= 1, got {n!r}")
        if a.shape != n.shape or np.any(a <= 0) or np.any(a >= 1):
            raise ValueError(f"levels must be {n.size} numbers in (0, 1), one per checkpoint, got {a!r}")
        object.__setattr__(self, "checkpoints", n.astype(np.int64))
        object.__setattr__(self, "levels", a)

    @classmethod
    def geometric(cls, alpha: float, max_n: int, first: int = DEFAULT_FIRST, growth: float = DEFAULT_GROWTH,
                  final_share: float = DEFAULT_FINAL_SHARE) -> "Boundary":
        """Checkpoints ``ceil(first * growth^k)`` below max_n, then max_n.

        The last checkpoint (max_n) gets ``final_share * alpha``, the K - 1 others
        ``(1 - final_share) * alpha / (K - 1)`` each (all of alpha when there is one checkpoint).
        ``final_share = 1/K`` is the even split.
        """
        alpha = check_alpha(alpha)
        max_n, first = check_count(max_n, "max_n"), check_count(first, "first")
        growth = check_positive_finite(growth, "growth")
        if growth <= 1:
            raise ValueError(f"growth must be > 1 (the ratio of consecutive checkpoints, e.g. 1.25), got {growth}")
        if not 0 < final_share < 1:
            raise ValueError(f"final_share must lie in (0, 1) (the part of alpha spent at max_n), got {final_share}")
        points, n = [], float(min(first, max_n))
        while math.ceil(n) < max_n:
            if not points or math.ceil(n) > points[-1]:
                points.append(math.ceil(n))
            n *= growth
        points.append(max_n)
        if len(points) == 1:
            return cls(np.array(points, dtype=np.int64), np.array([alpha]))
        levels = np.full(len(points), (1 - final_share) * alpha / (len(points) - 1))
        levels[-1] = final_share * alpha
        while levels.sum() > alpha:  # rounding must never spend more than alpha
            levels[-1] = np.nextafter(levels[-1], 0.0)
        return cls(np.array(points, dtype=np.int64), levels)

    @property
    def guaranteed_alpha(self) -> float:
        return float(self.levels.sum())

    def __len__(self) -> int:
        return int(self.checkpoints.size)

    def describe(self) -> dict:
        return {"checkpoints": self.checkpoints.tolist(), "levels": self.levels.tolist()}


def sigma_bounds(sigma: float) -> Tuple[float, float]:
    """(low, high): the requested sigma and its float32 rounding (the kernels' noise), smaller and larger.

    A claim that the radius is at least r uses ``low`` (``certify.conservative_sigma``); a claim that it
    is below r uses ``high``: each is then true for either value.
    """
    sigma = check_positive_finite(sigma, "sigma")
    return conservative_sigma(sigma), max(sigma, float(np.float32(sigma)))


def _round_up(x):
    """x one ulp up (toward +inf): the conservative side of a radius that a "not certified" claim bounds."""
    return np.nextafter(x, np.inf)


def standard_test(n_A, t, level, radius: float, sigma: float, charge: float = 0.0):
    """Cohen et al.'s condition ``p_cA >= Phi(r / sigma)`` at radius r from ``n_A`` votes for cA in ``t`` samples, bounds at ``level`` (vectorised).

    ``sigma`` is the requested noise level; "certified" uses the lower and "not_certified" the upper of
    ``sigma_bounds(sigma)``. Returns ``(decision, pA_lower, certified_radius)``: int arrays of CONTINUE /
    CERTIFIED / NOT_CERTIFIED, the lower bound on p_cA, and ``sigma_low * Phi^-1(pA_lower)`` (0 when
    pA_lower < 1/2). Both bounds pay the noise ``charge``.
    """
    low, high = sigma_bounds(sigma)
    n_A = np.asarray(n_A)
    p_low = np.asarray(lower_bound(n_A, t, level, charge), dtype=np.float64)
    p_up = np.asarray(upper_bound(n_A, t, level, charge), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        r_low = np.where(p_low >= 0.5, stats.round_toward_zero(low * stats.norm_ppf_down(p_low)), 0.0)
        r_up = _round_up(high * stats.norm_ppf_up(p_up))  # the largest radius the data allow
    certified = (p_low >= 0.5) & (r_low >= radius)
    hopeless = (r_up < radius) & ~certified
    return np.where(certified, CERTIFIED, np.where(hopeless, NOT_CERTIFIED, CONTINUE)), p_low, r_low


def target_radii(counts, top_class, targets: Sequence[int], t, level, sigma: float, charge: float = 0.0):
    """Per-target radii ``[B, K]`` and the lower bound of p_cA ``[B]`` from counts ``[B, C]`` (p_cA at alpha/2, each of the K targets at alpha/(2K)).

    ``R_j = sigma_low/2 * (Phi^-1(pA_lower) - Phi^-1(min(pj_upper, 1 - pA_lower)))`` with pA_lower at
    ``level/2`` and each pj_upper at ``level/(2K)``: all K + 1 bounds hold together at ``level``, so
    every R_j (and their minimum, the cost-sensitive radius) comes from one event. NaN becomes -inf.
    Every bound pays the noise ``charge``.
    """
    counts = np.atleast_2d(np.asarray(counts))
    top = np.broadcast_to(np.asarray(top_class), counts.shape[:1])
    targets = list(targets)
    t_col = np.asarray(t)[..., None] if np.ndim(t) else t
    low = sigma_bounds(sigma)[0]
    p_low = np.asarray(lower_bound(counts[np.arange(counts.shape[0]), top], t, level / 2, charge), dtype=np.float64)
    tg_up = np.atleast_2d(upper_bound(counts[:, targets], t_col, level / (2 * len(targets)), charge))
    with np.errstate(divide="ignore", invalid="ignore"):
        cap = np.asarray(stats.complement_up(p_low), dtype=np.float64)[:, None]
        radii = np.asarray(half_gap_radius(p_low[:, None], np.minimum(tg_up, cap), low), dtype=np.float64)
    return np.where(np.isnan(radii), -np.inf, radii), p_low


def cost_sensitive_test(counts, top_class, targets: Sequence[int], t, level, radius: float, sigma: float,
                        charge: float = 0.0):
    """The cost-sensitive condition ``R_cs >= r`` at radius r from counts ``[B, C]`` (vectorised over B), the label's target set fixed.

    ``level`` is split alpha/2 (p_cA) and alpha/(2K) (each target). ``top_class`` is an int or int
    ``[B]``. "certified" uses the cost-sensitive radius (``target_radii``, at the lower sigma);
    "not_certified" the optimistic radius (pA_upper against the largest pj_lower) at the upper sigma.
    Returns ``(decision, cs_pA_lower, cs_radius)`` (cs_radius 0 when not positive or cA is a target).
    Every bound pays the noise ``charge``.
    """
    counts = np.atleast_2d(np.asarray(counts))
    rows = np.arange(counts.shape[0])
    top = np.broadcast_to(np.asarray(top_class), rows.shape)
    targets = list(targets)
    k = len(targets)
    high = sigma_bounds(sigma)[1]
    t_col = np.asarray(t)[..., None] if np.ndim(t) else t
    radii, p_low = target_radii(counts, top, targets, t, level, sigma, charge)
    r_cs = radii.min(axis=1)
    p_up = np.asarray(upper_bound(counts[rows, top], t, level / 2, charge), dtype=np.float64)
    tg_low = np.atleast_2d(lower_bound(counts[:, targets], t_col, level / (2 * k), charge)).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):  # the optimistic radius, rounded up
        r_opt = _round_up(high / 2 * _round_up(stats.norm_ppf_up(p_up) - stats.norm_ppf_down(tg_low)))
    top_is_target = np.isin(top, targets)
    certified = ~top_is_target & (r_cs > 0) & (r_cs >= radius)
    hopeless = ~certified & (top_is_target | (r_opt < radius) | (r_opt <= 0))
    radius_out = np.where(~top_is_target & (r_cs > 0), r_cs, 0.0)
    return np.where(certified, CERTIFIED, np.where(hopeless, NOT_CERTIFIED, CONTINUE)), p_low, radius_out


def simulate_standard(p_A: float, radius: float, sigma: float, boundary: Boundary, trials: int,
                      rng: np.random.Generator):
    """Decisions of ``standard_test`` on ``trials`` simulated vote sequences with known p_A.

    Votes are drawn as Binomial increments between checkpoints (exactly the law of the counts at
    the checkpoints). Returns ``(decision [trials] as "certified"/"not_certified"/"undecided",
    samples [trials])``. Used to measure coverage where the truth is known.
    """
    n = boundary.checkpoints
    increments = rng.binomial(np.diff(np.concatenate([[0], n]))[None, :].repeat(trials, 0), p_A)
    votes = np.cumsum(increments, axis=1)  # [trials, K]
    decision = np.zeros(trials, dtype=np.int64)
    samples = np.full(trials, n[-1], dtype=np.int64)
    for k in range(len(n)):
        open_ = decision == CONTINUE
        if not open_.any():
            break
        d, _, _ = standard_test(votes[open_, k], n[k], boundary.levels[k], radius, sigma)
        idx = np.nonzero(open_)[0]
        decision[idx] = d
        samples[idx[d != CONTINUE]] = n[k]
    names = np.array(["undecided", "certified", "not_certified"])
    return names[decision], samples


# -- results -----------------------------------------------------------------------------------
@dataclass
class SequentialResult:
    """The sequential test of one input at radius r.

    decision: "certified", "not_certified" or "undecided" (max_n reached).
    samples: estimation samples used (the n0 selection samples are not included).
    prediction: cA when the lower bound of p_cA at the stop is >= 1/2, else -1 (abstain).
    top_class: cA, the argmax of the selection counts. radius: the radius r that was tested.
    certified_radius: the radius the confidence sequence certifies at the stop (the cost-sensitive
        radius for a cost-sensitive test; >= r when certified). A valid certificate at level alpha.
    pA_lower: lower bound on p_cA at the stop (at alpha_k; alpha_k/2 for a cost-sensitive test).
    test: "standard" or "cost_sensitive" (label a seed class of the cost matrix).
    counts, selection_counts: int64 ``[C]``; label: the input's label or None.
    top_is_target: cA lies in the label's target set (a cost-sensitive test; then "not_certified").
    standard_radius: the standard radius ``sigma * Phi^-1`` of the lower bound of p_cA at alpha_k at the
        stop (0 on abstention): a valid level-alpha certificate for every input, equal to
        certified_radius for a standard test.
    seconds: time from the start of the batch's estimation draw to this input's decision.
    target_radii: for a cost-sensitive test, {j: radius within which target j cannot be reached} at the
        stop (0.0 when not certified), from the same event as certified_radius (their minimum).
    """
    decision: str
    samples: int
    prediction: int
    top_class: int
    radius: float
    certified_radius: float
    pA_lower: float
    test: str
    counts: np.ndarray
    selection_counts: np.ndarray
    label: Optional[int] = None
    top_is_target: bool = False
    seconds: float = 0.0
    standard_radius: float = 0.0
    target_radii: Dict[int, float] = field(default_factory=dict)

    @property
    def certified(self) -> bool:
        return self.decision == "certified"

    @property
    def correct(self) -> Optional[bool]:
        """prediction == label (an abstention is not correct); None without a label."""
        return None if self.label is None else self.prediction == self.label


@dataclass
class RadiusEstimate:
    """Adaptive-n radius of one input: ``radius`` = sigma * Phi^-1(pA_lower) (0 on abstention), a valid
    certificate at level alpha; ``limit`` what more sampling (up to max_n) could reach; ``samples``."""
    prediction: int
    radius: float
    limit: float
    samples: int
    pA_lower: float
    top_class: int
    counts: np.ndarray
    converged: bool
    label: Optional[int] = None




# -- decisions of a batch (the scheduler's check at each checkpoint, and the results) ------------
class SequentialTest:
    """The sequential test of a batch of inputs at radius r, from counts (no sampling here).

    ``tops``: cA per input (int ``[B]``, from the selection draw); with ``cost`` and ``labels``, inputs
    whose label is a seed class get the cost-sensitive test, the others the standard one.
    ``check`` is the scheduler's callback at checkpoints (``costsmooth.packing.sample_until``);
    ``results`` turns the counts at the stop into ``SequentialResult`` objects. ``charge``: the noise
    charge of one sample (``costsmooth.sound.noise_charge``), paid by every bound.
    """

    def __init__(self, boundary: Boundary, radius: float, sigma: float, tops, labels: Optional[Sequence[int]] = None,
                 cost: Optional[CostMatrix] = None, charge: float = 0.0):
        radius = float(radius)
        if not math.isfinite(radius) or radius < 0:
            raise ValueError(f"radius must be a finite number >= 0 (the L2 radius to certify), got {radius!r}")
        if cost is not None and not isinstance(cost, CostMatrix):
            raise TypeError(f"cost must be a costsmooth.CostMatrix, got {type(cost).__name__}")
        self.boundary, self.radius, self.sigma = boundary, radius, check_positive_finite(sigma, "sigma")
        self.tops = np.asarray(tops, dtype=np.int64)
        self.labels, self.cost = labels, cost
        self.cs = np.array([cost is not None and labels is not None and cost.is_seed(labels[b])
                            for b in range(self.tops.size)], dtype=bool)
        self.decided_at: Dict[int, float] = {}
        self.charge = check_charge(charge)

    def _decide(self, b: np.ndarray, counts: np.ndarray, t: np.ndarray, level: float):
        """(decision, pA_lower, certified radius, standard pA_lower) of inputs ``b`` (one level)."""
        n_top = counts[np.arange(b.size), self.tops[b]]
        decision, p_low, r_cert = standard_test(n_top, t, level, self.radius, self.sigma, self.charge)
        p_std = p_low.copy()
        for j in np.nonzero(self.cs[b])[0]:
            d, p, r = cost_sensitive_test(counts[j][None], int(self.tops[b[j]]), self.cost.targets(self.labels[b[j]]),
                                          int(t[j]), level, self.radius, self.sigma, self.charge)
            decision[j], p_low[j], r_cert[j] = d[0], p[0], r[0]
        return decision, p_low, r_cert, p_std

    def check(self, bs: np.ndarray, ks: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Which of inputs ``bs`` (at checkpoints ``ks``, counts ``[D, C]``) are decided (bool ``[D]``)."""
        done = np.zeros(bs.size, dtype=bool)
        levels = self.boundary.levels[ks]
        for level in np.unique(levels):  # inputs at checkpoints of the same level are tested together
            at = np.nonzero(levels == level)[0]
            decision = self._decide(bs[at], counts[at], self.boundary.checkpoints[ks[at]], float(level))[0]
            done[at] = decision != CONTINUE
        now = time.perf_counter()
        for b in bs[done]:
            self.decided_at[int(b)] = now
        return done

    def results(self, counts: np.ndarray, selection: np.ndarray, t0: float) -> List[SequentialResult]:
        """The results at the stop from counts ``[B, C]`` (their row sums are the samples used)."""
        batch = self.tops.size
        n = counts.sum(axis=1)
        stop = np.searchsorted(self.boundary.checkpoints, n)
        decision = np.full(batch, CONTINUE, dtype=np.int64)
        p_low, r_cert, p_std = np.zeros(batch), np.zeros(batch), np.zeros(batch)
        for level in np.unique(self.boundary.levels[stop]):
            at = np.nonzero(self.boundary.levels[stop] == level)[0]
            decision[at], p_low[at], r_cert[at], p_std[at] = self._decide(at, counts[at], n[at], float(level))
        low = sigma_bounds(self.sigma)[0]
        out = []
        for b in range(batch):
            top, label = int(self.tops[b]), None if self.labels is None else self.labels[b]
            radii = {}
            if self.cs[b]:
                targets = self.cost.targets(label)
                r_j = target_radii(counts[b][None], top, targets, int(n[b]), float(self.boundary.levels[stop[b]]),
                                   self.sigma, self.charge)[0][0]
                radii = {j: float(r) if (top not in targets and r > 0) else 0.0 for j, r in zip(targets, r_j)}
            out.append(SequentialResult(
                decision=_NAMES.get(int(decision[b]), "undecided"), samples=int(n[b]),
                prediction=top if p_std[b] >= 0.5 else ABSTAIN, top_class=top, radius=self.radius,
                certified_radius=float(r_cert[b]), pA_lower=float(p_low[b]),
                test="cost_sensitive" if self.cs[b] else "standard", counts=counts[b].copy(),
                selection_counts=selection[b].copy(), label=label,
                top_is_target=bool(self.cs[b] and top in self.cost.targets(label)),
                seconds=self.decided_at.get(b, time.perf_counter()) - t0,
                standard_radius=float(stats.round_toward_zero(low * stats.norm_ppf_down(p_std[b])))
                if p_std[b] >= 0.5 else 0.0, target_radii=radii))
        return out


class RadiusTest:
    """Adaptive-n standard certificates: each input stops when its radius is within ``tolerance`` of its limit.

    The lower confidence sequence of p_cA gives at every checkpoint a radius ``R_lo = sigma *
    Phi^-1(pA_lower)`` that is a valid certificate at level alpha whenever the input stops (union
    bound over checkpoints). The limit is ``min(sigma * Phi^-1(pA_upper), R_cap)`` with ``R_cap =
    sigma * Phi^-1(alpha_K^(1/max_n))`` the largest radius certifiable at max_n (clipped at 0);
    sampling stops when ``R_lo >= limit - tolerance`` or at max_n. Guarantee: with probability >=
    1 - alpha, g(x + delta) = prediction for ||delta|| < radius. Every bound pays the noise ``charge``.
    """

    def __init__(self, boundary: Boundary, tolerance: float, sigma: float, tops,
                 labels: Optional[Sequence[int]] = None, charge: float = 0.0):
        self.boundary, self.tolerance = boundary, check_positive_finite(tolerance, "tolerance")
        self.sigma = sigma_bounds(sigma)[0]
        self.tops, self.labels = np.asarray(tops, dtype=np.int64), labels
        self.charge = check_charge(charge)
        last = len(boundary) - 1
        n_max = boundary.checkpoints[last]
        self.r_cap = float(self.sigma * stats.norm_ppf_up(lower_bound(n_max, n_max, boundary.levels[last],
                                                                      self.charge)))

    def bounds(self, n_A, t, level):
        """(pA_lower, R_lo, limit) arrays for vote counts n_A at checkpoint size t and level."""
        p_low = np.asarray(lower_bound(n_A, t, level, self.charge), dtype=np.float64)
        p_up = np.asarray(upper_bound(n_A, t, level, self.charge), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            r_lo = np.where(p_low >= 0.5, stats.round_toward_zero(self.sigma * stats.norm_ppf_down(p_low)), 0.0)
            r_hi = np.where(p_up < 1, self.sigma * stats.norm_ppf_up(p_up), np.inf)
        return p_low, r_lo, np.clip(np.minimum(r_hi, self.r_cap), 0.0, None)

    def check(self, bs: np.ndarray, ks: np.ndarray, counts: np.ndarray) -> np.ndarray:
        done = np.zeros(bs.size, dtype=bool)
        levels = self.boundary.levels[ks]
        for level in np.unique(levels):
            at = np.nonzero(levels == level)[0]
            _, r_lo, limit = self.bounds(counts[at, self.tops[bs[at]]], self.boundary.checkpoints[ks[at]], float(level))
            done[at] = r_lo >= limit - self.tolerance
        return done

    def results(self, counts: np.ndarray) -> List[RadiusEstimate]:
        out = []
        for b in range(self.tops.size):
            n = int(counts[b].sum())
            k = int(np.searchsorted(self.boundary.checkpoints, n))
            top = int(self.tops[b])
            p_low, r_lo, limit = (float(v) for v in self.bounds(counts[b][top], n, float(self.boundary.levels[k])))
            out.append(RadiusEstimate(prediction=top if p_low >= 0.5 else ABSTAIN, radius=r_lo, limit=limit, samples=n,
                                      pA_lower=p_low, top_class=top, counts=counts[b].copy(),
                                      converged=r_lo >= limit - self.tolerance,
                                      label=None if self.labels is None else self.labels[b]))
        return out
