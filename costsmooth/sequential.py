"""Sequential certification: "is this input certified at radius r?" with as few samples as needed.

Cohen et al.'s CERTIFY spends the same n (often 100000) estimation samples on every input, although
an input with p_A = 0.999 is certified at a moderate radius after a few hundred samples and one with
p_A = 0.4 is hopeless after as many. This module tests, per input, the condition of SPEC 3.1 at a
fixed radius r, ``p_cA >= Phi(r / sigma)`` (or SPEC 3.2's cost-sensitive condition ``R_cs >= r`` for
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
Cost-sensitive inputs (label a seed class of the cost matrix) split each alpha_k as SPEC 3.2:
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

Scheduler: ``certify_batch_at`` packs the samples of many inputs into each model call and admits the
next input when one finishes, so calls stay full while inputs stop at different times. The noise of
input i's sample j is (seed, stream 1, i, j) as everywhere, so decisions and sample counts do not
depend on the packing, the batch size or the number of slots. The selection draw (stream 0, n0
samples) is separate, as in CERTIFY.

Adaptive-n radius estimation: ``estimate_radius_batch`` runs the same confidence sequence and stops
an input when its certified radius is within ``tolerance`` of what continued sampling could reach
(the smaller of the upper-bound radius and the radius certifiable at max_n).
"""
from __future__ import annotations

import collections
import contextlib
import math
import os
import time
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from scipy.stats import norm

from . import ops, stats
from ._checks import check_alpha, check_count, check_float_tensor, check_positive_finite, check_seed, sigma_tensor
from .certify import ABSTAIN, _labels, conservative_sigma
from .cost import CostMatrix
from .sampling import STREAM_ESTIMATION, STREAM_SELECTION, eval_mode

__all__ = ["Boundary", "SequentialResult", "RadiusEstimate", "certify_batch_at", "estimate_radius_batch",
           "standard_test", "cost_sensitive_test", "simulate_standard", "certify_dataset_at", "DEFAULT_FIRST",
           "DEFAULT_GROWTH", "SEQUENTIAL_COLUMNS", "add_sequential_args", "run_certify_command"]

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


def _phi_inv(p):
    return norm.ppf(np.clip(p, 0.0, 1.0))


def standard_test(n_A, t, level, radius: float, sigma: float):
    """SPEC 3.1 at radius r from ``n_A`` votes for cA in ``t`` samples, bounds at ``level`` (vectorised).

    ``sigma`` must already be the conservative (float32-rounded-down) value. Returns
    ``(decision, pA_lower, certified_radius)``: int arrays of CONTINUE / CERTIFIED / NOT_CERTIFIED,
    the lower bound on p_cA, and ``sigma * Phi^-1(pA_lower)`` (0 when pA_lower < 1/2).
    """
    n_A = np.asarray(n_A)
    p_low = np.asarray(stats.cp_lower(n_A, t, level), dtype=np.float64)
    p_up = np.asarray(stats.cp_upper(n_A, t, level), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        r_low = np.where(p_low >= 0.5, sigma * _phi_inv(p_low), 0.0)
    certified = (p_low >= 0.5) & (r_low >= radius)
    hopeless = (p_up < norm.cdf(radius / sigma)) & ~certified
    return np.where(certified, CERTIFIED, np.where(hopeless, NOT_CERTIFIED, CONTINUE)), p_low, r_low


def cost_sensitive_test(counts, top_class, targets: Sequence[int], t, level, radius: float, sigma: float):
    """SPEC 3.2 at radius r from counts ``[B, C]`` (vectorised over B), the label's target set fixed.

    ``level`` is split alpha/2 (p_cA) and alpha/(2K) (each target). ``top_class`` is an int or int
    ``[B]``. Returns ``(decision, cs_pA_lower, cs_radius)`` (cs_radius 0 when not positive or cA is a
    target).
    """
    counts = np.atleast_2d(np.asarray(counts))
    rows = np.arange(counts.shape[0])
    top = np.broadcast_to(np.asarray(top_class), rows.shape)
    targets = list(targets)
    k = len(targets)
    n_top, n_tg = counts[rows, top], counts[:, targets]
    t_col = np.asarray(t)[..., None] if np.ndim(t) else t
    p_low = np.asarray(stats.cp_lower(n_top, t, level / 2), dtype=np.float64)
    p_up = np.asarray(stats.cp_upper(n_top, t, level / 2), dtype=np.float64)
    tg_up = np.atleast_2d(stats.cp_upper(n_tg, t_col, level / (2 * k))).max(axis=1)
    tg_low = np.atleast_2d(stats.cp_lower(n_tg, t_col, level / (2 * k))).max(axis=1)
    top_is_target = np.isin(top, targets)
    with np.errstate(divide="ignore", invalid="ignore"):
        r_cs = sigma / 2 * (_phi_inv(p_low) - _phi_inv(np.minimum(tg_up, 1.0 - p_low)))
        r_opt = sigma / 2 * (_phi_inv(p_up) - _phi_inv(tg_low))
    r_cs = np.where(np.isnan(r_cs), -np.inf, r_cs)
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


# -- the scheduler -----------------------------------------------------------------------------
def _check_smooth(smooth) -> None:
    if callable(smooth.sigma):
        raise ValueError("sequential certification needs a constant sigma; input-dependent sigma "
                         "(costsmooth.input_dependent) is certified with Smooth.certify_batch")
    if smooth.sample_split is not None:
        raise ValueError("sequential certification runs in one process; drop sample_split (each input stops "
                         "at its own sample count)")


def _indices(indices, batch: int) -> List[int]:
    """Dataset indices (default 0..B-1), checked to lie in [0, 2^31) as in ``Smooth.certify_batch``."""
    from .smooth import _FRESH_INDEX_BASE
    indices = list(range(batch)) if indices is None else [int(i) for i in indices]
    if len(indices) != batch:
        raise ValueError(f"{batch} inputs need as many indices, got {len(indices)}")
    if indices and (min(indices) < 0 or max(indices) >= _FRESH_INDEX_BASE):
        raise ValueError(f"dataset indices must lie in [0, 2^31), got {min(indices)}..{max(indices)}")
    return indices


def _selection(smooth, X, indices, n0, batch_size) -> np.ndarray:
    from .smooth import _consecutive_runs
    parts = [smooth._counts(X[a:b], n0, STREAM_SELECTION, indices[a], batch_size, sigma=smooth.sigma)
             for a, b in _consecutive_runs(indices)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, smooth.num_classes), dtype=np.int64)


def _schedule(smooth, X: torch.Tensor, indices: List[int], boundary: Boundary, check: Callable,
              batch_size: int, slots: Optional[int], progress=None) -> np.ndarray:
    """Draw estimation samples in packed model calls until ``check`` stops each input.

    Input b is sampled up to checkpoint ``n_k`` (its samples ``t .. n_k - 1``, stream 1, index
    ``indices[b]``), then ``check(b, k, counts)`` (int64 arrays ``[D]``, ``[D]``, ``[D, C]`` for the D inputs
    that reached a checkpoint in one model call) says which are done (bool ``[D]``); the others continue
    to ``n_{k+1}``; at the last checkpoint an input is done regardless. Each model call takes up to
    ``batch_size`` rows from the active inputs in admission order; a new input is admitted while the
    active ones need fewer than batch_size rows (and fewer than ``slots`` are active). Returns int64
    counts ``[B, C]`` at the stop of each input.
    """
    batch, num_classes = X.shape[0], smooth.num_classes
    points = boundary.checkpoints
    counts = torch.zeros(batch, num_classes, dtype=torch.int64, device=X.device)
    drawn = np.zeros(batch, dtype=np.int64)
    stage = np.zeros(batch, dtype=np.int64)
    sig = sigma_tensor(smooth.sigma, batch, X.device)
    seed64 = check_seed(smooth.seed)
    dtype = smooth.dtype or X.dtype
    fmt = torch.channels_last if smooth.channels_last else torch.contiguous_format
    amp = (torch.autocast(device_type=X.device.type, dtype=smooth.autocast) if smooth.autocast is not None
           else contextlib.nullcontext())
    queue = collections.deque(range(batch))
    active: List[int] = []
    buffer = None
    limit = check_count(slots, "slots") if slots is not None else batch_size
    with eval_mode(smooth.model):
        while queue or active:
            while queue and len(active) < limit and sum(int(points[stage[b]] - drawn[b]) for b in active) < batch_size:
                active.append(queue.popleft())
            plan, rows = [], 0
            for b in active:
                if rows == batch_size:
                    break
                m = int(min(points[stage[b]] - drawn[b], batch_size - rows))
                plan.append((b, rows, m))
                rows += m
            if buffer is None or buffer.shape[0] < rows:
                buffer = torch.empty((max(rows, batch_size),) + tuple(X.shape[1:]), dtype=dtype, device=X.device,
                                     memory_format=fmt)
            noisy = buffer[:rows]
            for b, start, m in plan:
                torch.ops.costsmooth.noisy_batch_into(X[b:b + 1], sig[b:b + 1], m, seed64, STREAM_ESTIMATION,
                                                      indices[b], int(drawn[b]), noisy[start:start + m])
            with amp:
                logits = smooth.model(noisy)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != rows:
                raise ValueError(f"the model must map a batch of {rows} inputs to logits [{rows}, num_classes]")
            if logits.shape[1] != num_classes:
                raise ValueError(f"the model returns {logits.shape[1]} logits per input but num_classes="
                                 f"{num_classes}; pass the model's class count")
            nan_rows = torch.zeros(batch, dtype=torch.int64, device=X.device)
            for b, start, m in plan:
                nan_rows[b:b + 1] += ops.vote_count_nan(logits[start:start + m], m, counts[b:b + 1])
            ops.raise_on_nan(nan_rows, "the vote counts")
            if progress is not None:
                progress.update(rows)
            for b, _, m in plan:
                drawn[b] += m
            due = np.array([b for b, _, _ in plan if drawn[b] == points[stage[b]]], dtype=np.int64)
            if due.size:
                done = np.asarray(check(due, stage[due], counts[torch.from_numpy(due).to(X.device)].cpu().numpy()))
                done |= stage[due] == len(points) - 1
                finished = set(due[done].tolist())
                active = [b for b in active if b not in finished]
                stage[due[~done]] += 1
    return counts.cpu().numpy()


def _prepare(smooth, X, indices, labels, alpha, max_n, n0, batch_size, slots, first, growth):
    """Checked arguments and the selection draw: (X on the device, indices, labels, boundary, batch_size,
    selection counts, conservative sigma, cA per input)."""
    _check_smooth(smooth)
    check_float_tensor(X, "X")
    if X.dim() < 1:
        raise ValueError("X must have a batch dimension [B, *shape]; add one with x.unsqueeze(0)")
    if slots is not None:
        check_count(slots, "slots")
    if labels is not None:
        labels = _labels(labels, X.shape[0], smooth.num_classes)
    alpha = check_alpha(alpha)
    max_n, n0 = check_count(max_n, "max_n"), check_count(n0, "n0")
    boundary = Boundary.geometric(alpha, max_n, first, growth)
    if indices is None or len(indices) != X.shape[0]:
        raise ValueError(f"{X.shape[0]} inputs need as many indices")
    X = X.to(smooth.device)
    if X.numel() and not bool(torch.isfinite(X).all()):
        raise ValueError("X contains NaN or infinite values; certificates of such inputs are meaningless, clean the "
                         "data first")
    batch_size = check_count(batch_size, "batch_size") if batch_size is not None else smooth.batch_size
    selection = _selection(smooth, X, indices, n0, batch_size)
    tops = selection.argmax(axis=1) if selection.size else np.zeros(0, dtype=np.int64)
    return X, indices, labels, boundary, batch_size, selection, conservative_sigma(smooth.sigma), tops


def certify_batch_at(smooth, X: torch.Tensor, radius: float, alpha: float = 0.001, *, max_n: int = 100000,
                     labels: Optional[Sequence[int]] = None, cost: Optional[CostMatrix] = None, n0: int = 100,
                     indices: Optional[Sequence[int]] = None, batch_size: Optional[int] = None,
                     slots: Optional[int] = None, first: int = DEFAULT_FIRST, growth: float = DEFAULT_GROWTH,
                     progress=None) -> List[SequentialResult]:
    """Sequential test of "certified at L2 radius ``radius``" for each input of ``X[B, *shape]``.

    ``smooth`` is a ``costsmooth.Smooth`` with a constant sigma. Per input: cA from ``n0`` selection
    samples (stream 0), then estimation samples (stream 1) drawn up to the checkpoints of
    ``Boundary.geometric(alpha, max_n, first, growth)`` until the decision is made (see the module
    docstring for the boundary, its validity and the alpha split). With ``cost`` and ``labels``,
    inputs whose label is a seed class are tested for the cost-sensitive condition at ``radius``
    instead (SPEC 3.2); the others for the standard one.

    Guarantee: for each input, P(decision "certified" while the smoothed classifier is not robust at
    ``radius``) <= alpha, and P("not_certified" while it is) <= alpha; the samples used and the
    decisions do not depend on ``batch_size`` or ``slots`` (noise keyed by (seed, stream, index,
    sample)). ``indices`` are dataset indices (default 0..B-1), as in ``Smooth.certify_batch``.
    """
    check_float_tensor(X, "X")
    return _certify_at(smooth, X, radius, alpha, max_n=max_n, labels=labels, cost=cost, n0=n0,
                       indices=_indices(indices, X.shape[0] if X.dim() else 0), batch_size=batch_size, slots=slots,
                       first=first, growth=growth, progress=progress)


def _certify_at(smooth, X, radius, alpha, *, max_n, labels, cost, n0, indices, batch_size=None, slots=None,
                first=DEFAULT_FIRST, growth=DEFAULT_GROWTH, progress=None) -> List[SequentialResult]:
    """``certify_batch_at`` with indices already checked (``Smooth.certify_at`` passes a fresh index)."""
    radius = float(radius)
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number >= 0 (the L2 radius to certify), got {radius!r}")
    if cost is not None and not isinstance(cost, CostMatrix):
        raise TypeError(f"cost must be a costsmooth.CostMatrix, got {type(cost).__name__}")
    if cost is not None:
        cost.check_num_classes(smooth.num_classes)
    X, indices, labels, boundary, batch_size, selection, sigma, tops = _prepare(
        smooth, X, indices, labels, alpha, max_n, n0, batch_size, slots, first, growth)
    cs = np.array([cost is not None and labels is not None and cost.is_seed(labels[b]) for b in range(X.shape[0])],
                  dtype=bool)
    done_at = {}

    def check(bs, ks, rows):
        done = np.zeros(bs.size, dtype=bool)
        levels = boundary.levels[ks]
        for level in np.unique(levels):  # inputs at checkpoints of the same level are tested together
            at = levels == level
            std = np.nonzero(at & ~cs[bs])[0]
            if std.size:
                d = standard_test(rows[std, tops[bs[std]]], boundary.checkpoints[ks[std]], float(level), radius,
                                  sigma)[0]
                done[std] = d != CONTINUE
            for j in np.nonzero(at & cs[bs])[0]:
                b = bs[j]
                d = cost_sensitive_test(rows[j][None], int(tops[b]), cost.targets(labels[b]),
                                        int(boundary.checkpoints[ks[j]]), float(level), radius, sigma)[0]
                done[j] = d[0] != CONTINUE
        now = time.perf_counter()
        for b in bs[done]:
            done_at[int(b)] = now
        return done

    t0 = time.perf_counter()
    counts = _schedule(smooth, X, indices, boundary, check, batch_size, slots, progress)
    n = counts.sum(axis=1)
    stop = np.searchsorted(boundary.checkpoints, n)
    rows = np.arange(X.shape[0])
    n_top = counts[rows, tops]
    decision = np.full(X.shape[0], CONTINUE, dtype=np.int64)
    p_low = np.zeros(X.shape[0])
    r_cert = np.zeros(X.shape[0])
    p_std = np.zeros(X.shape[0])
    for level in np.unique(boundary.levels[stop]):
        at = np.nonzero(boundary.levels[stop] == level)[0]
        p_std[at] = stats.cp_lower(n_top[at], n[at], float(level))
        std = at[~cs[at]]
        if std.size:
            decision[std], p_low[std], r_cert[std] = standard_test(n_top[std], n[std], float(level), radius, sigma)
        for b in at[cs[at]]:
            d, p, r = cost_sensitive_test(counts[b][None], int(tops[b]), cost.targets(labels[b]), int(n[b]),
                                          float(level), radius, sigma)
            decision[b], p_low[b], r_cert[b] = d[0], p[0], r[0]
    out = []
    for b in range(X.shape[0]):
        top = int(tops[b])
        out.append(SequentialResult(
            decision=_NAMES.get(int(decision[b]), "undecided"), samples=int(n[b]),
            prediction=top if p_std[b] >= 0.5 else ABSTAIN, top_class=top, radius=radius,
            certified_radius=float(r_cert[b]), pA_lower=float(p_low[b]),
            test="cost_sensitive" if cs[b] else "standard", counts=counts[b].copy(),
            selection_counts=selection[b].copy(), label=None if labels is None else labels[b],
            top_is_target=bool(cs[b] and top in cost.targets(labels[b])),
            seconds=done_at.get(b, time.perf_counter()) - t0,
            standard_radius=float(sigma * norm.ppf(p_std[b])) if p_std[b] >= 0.5 else 0.0))
    return out


def estimate_radius_batch(smooth, X: torch.Tensor, tolerance: float, alpha: float = 0.001, *, max_n: int = 100000,
                          labels: Optional[Sequence[int]] = None, n0: int = 100,
                          indices: Optional[Sequence[int]] = None, batch_size: Optional[int] = None,
                          slots: Optional[int] = None, first: int = DEFAULT_FIRST, growth: float = DEFAULT_GROWTH,
                          progress=None) -> List[RadiusEstimate]:
    """Adaptive-n standard certificates: each input stops when its radius is within ``tolerance`` of its limit.

    The lower confidence sequence of p_cA (``Boundary.geometric(alpha, max_n, first, growth)``) gives
    at every checkpoint a radius ``R_lo = sigma * Phi^-1(pA_lower)`` that is a valid certificate at
    level alpha whenever the input stops (union bound over checkpoints). The limit is
    ``min(sigma * Phi^-1(pA_upper), R_cap)`` with ``R_cap = sigma * Phi^-1(alpha_K^(1/max_n))`` the
    largest radius certifiable at max_n (clipped at 0); sampling stops when ``R_lo >= limit - tolerance``
    or at max_n. Guarantee: with probability >= 1 - alpha, g(x + delta) = prediction for ||delta|| < radius.
    """
    tolerance = check_positive_finite(tolerance, "tolerance")
    check_float_tensor(X, "X")
    indices = _indices(indices, X.shape[0] if X.dim() else 0)
    X, indices, labels, boundary, batch_size, selection, sigma, tops = _prepare(
        smooth, X, indices, labels, alpha, max_n, n0, batch_size, slots, first, growth)
    last = len(boundary) - 1
    r_cap = float(sigma * _phi_inv(stats.cp_lower(boundary.checkpoints[last], boundary.checkpoints[last],
                                                  boundary.levels[last])))

    def bounds(n_A, t, level):
        """(pA_lower, R_lo, limit) arrays for vote counts n_A at checkpoint size t and level."""
        p_low = np.asarray(stats.cp_lower(n_A, t, level), dtype=np.float64)
        p_up = np.asarray(stats.cp_upper(n_A, t, level), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            r_lo = np.where(p_low >= 0.5, sigma * _phi_inv(p_low), 0.0)
            r_hi = np.where(p_up < 1, sigma * _phi_inv(p_up), np.inf)
        return p_low, r_lo, np.clip(np.minimum(r_hi, r_cap), 0.0, None)

    def check(bs, ks, rows):
        done = np.zeros(bs.size, dtype=bool)
        levels = boundary.levels[ks]
        for level in np.unique(levels):
            at = np.nonzero(levels == level)[0]
            _, r_lo, limit = bounds(rows[at, tops[bs[at]]], boundary.checkpoints[ks[at]], float(level))
            done[at] = r_lo >= limit - tolerance
        return done

    counts = _schedule(smooth, X, indices, boundary, check, batch_size, slots, progress)
    out = []
    for b in range(X.shape[0]):
        n = int(counts[b].sum())
        k = int(np.searchsorted(boundary.checkpoints, n))
        top = int(tops[b])
        p_low, r_lo, limit = (float(v) for v in bounds(counts[b][top], n, float(boundary.levels[k])))
        out.append(RadiusEstimate(prediction=top if p_low >= 0.5 else ABSTAIN, radius=r_lo, limit=limit, samples=n,
                                  pA_lower=p_low, top_class=top, counts=counts[b].copy(),
                                  converged=r_lo >= limit - tolerance, label=None if labels is None else labels[b]))
    return out


# -- dataset runs (the certify --sequential command) --------------------------------------------
SEQUENTIAL_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "cs_radius", "top_class",
                      "top_is_target", "pA_lower", "decision", "samples", "radius_tested"]


def _format_row(idx: int, res: SequentialResult) -> str:
    label = "" if res.label is None else str(res.label)
    correct = "" if res.label is None else str(int(bool(res.correct)))
    cs = repr(float(res.certified_radius)) if res.test == "cost_sensitive" else ""
    fields = [str(idx), label, str(res.prediction), repr(float(res.standard_radius)), correct, f"{res.seconds:.4f}",
              cs, str(res.top_class), str(int(res.top_is_target)), repr(float(res.pA_lower)), res.decision,
              str(res.samples), repr(float(res.radius))]
    return "\t".join(fields) + "\n"


class SequentialWriter:
    """Appends rows of ``SEQUENTIAL_COLUMNS`` to OUTFILE (and counts to OUTFILE.counts.jsonl); resumes.

    OUTFILE.meta.json records the settings; reopening with other settings is refused (as
    ``results.ResultWriter``). ``OUTFILE.lock`` (filelock) is held while open. A torn last line is
    dropped on reopening, so the input is certified again.
    """

    def __init__(self, path: str, meta: dict):
        from .results import ResultFileError, _write_atomic, acquire_run_lock, begin_run

        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = acquire_run_lock(path)
        try:
            if begin_run(path, meta, SEQUENTIAL_COLUMNS):
                self.done = set()
                return
            with open(path) as f:
                text = f.read()
            lines = text.split("\n")
            if lines[0].split("\t") != SEQUENTIAL_COLUMNS:
                raise ResultFileError(f"{path} does not have the columns of a sequential run; choose another OUTFILE")
            good = [ln for ln in lines[1:-1] if len(ln.split("\t")) == len(SEQUENTIAL_COLUMNS)]
            if len(good) != len(lines) - 2 or lines[-1] != "":
                _write_atomic(path, lines[0] + "\n" + "".join(ln + "\n" for ln in good))
            self.done = {int(ln.split("\t")[0]) for ln in good}
        except BaseException:
            self.close()
            raise

    def write(self, idx: int, res: SequentialResult) -> None:
        from .results import append_record
        rec = {"idx": idx, "label": res.label, "selection": res.selection_counts.tolist(),
               "estimation": res.counts.tolist(), "decision": res.decision}
        append_record(self.path, rec, _format_row(idx, res))
        self.done.add(idx)

    def close(self) -> None:
        from .results import release_run_lock
        release_run_lock(self._lock)


def certify_dataset_at(model, dataset, sigma: float, outfile: str, radius: float, *, n0: int = 100,
                       max_n: int = 100000, alpha: float = 0.001, batch: int = 1000, skip: int = 1,
                       max_index: int = -1, cost: Optional[CostMatrix] = None, seed: int = 0, device=None,
                       meta_extra=None, progress: bool = True, first: int = DEFAULT_FIRST,
                       growth: float = DEFAULT_GROWTH, chunk: int = 64, autocast: Optional[torch.dtype] = None,
                       channels_last: bool = False) -> dict:
    """``certify --sequential``: test every selected input of ``dataset`` at ``radius`` into ``outfile``.

    Inputs as in ``runs.certify_dataset`` (``i % skip == 0``, ``i < max_index``); rows are written as
    inputs of each chunk of ``chunk`` inputs finish; re-running resumes. Returns a summary dict
    (inputs, decisions, estimation samples used, the fixed-n total ``max_n * inputs``).
    """
    from tqdm import tqdm

    from . import __version__
    from .runs import fingerprint_dataset, fingerprint_model, probe_num_classes, select_indices
    from .smooth import Smooth

    sigma = check_positive_finite(sigma, "sigma")
    radius = float(radius)
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"--radius must be a finite number >= 0, got {radius!r}")
    alpha, n0, max_n = check_alpha(alpha), check_count(n0, "n0"), check_count(max_n, "max_n")
    boundary = Boundary.geometric(alpha, max_n, first, growth)
    device = torch.device(device) if device is not None else torch.device("cpu")
    indices = select_indices(len(dataset), skip, max_index)
    model = model.to(device)
    num_classes = probe_num_classes(model, dataset, device)
    if cost is not None:
        cost.check_num_classes(num_classes)
    if not bool(torch.isfinite(dataset.inputs[indices]).all()):
        raise ValueError(f"{dataset.name} has NaN or infinite values in the selected inputs; clean the data first")
    meta = {"sigma": sigma, "n0": n0, "max_n": max_n, "alpha": alpha, "seed": seed, "skip": skip, "max": max_index,
            "radius": radius, "sequential": {"boundary": "clopper_pearson_geometric_grid", "first": first,
                                             "growth": growth, "final_share": DEFAULT_FINAL_SHARE,
                                             **boundary.describe()},  # checkpoints and their levels
            "num_classes": num_classes, "cost": cost.to_json() if cost is not None else None,
            "class_names": dataset.class_names, "version": __version__, "model_sha256": fingerprint_model(model),
            "data_sha256": fingerprint_dataset(dataset), "num_inputs": len(dataset),
            "precision": str(autocast).replace("torch.", "") if autocast is not None else "float32",
            **(meta_extra or {})}
    if channels_last and dataset.inputs.dim() != 4:
        raise ValueError(f"--channels-last needs image inputs [N, C, H, W]; {dataset.name} has inputs of shape "
                         f"{list(dataset.inputs.shape)}")
    writer = SequentialWriter(outfile, meta)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    smooth = Smooth(model, num_classes, sigma, batch_size=batch, seed=seed, device=device, autocast=autocast,
                    channels_last=channels_last)
    summary = collections.Counter()
    try:
        todo = [i for i in indices if i not in writer.done]
        bar = tqdm(total=len(todo), unit="input", disable=not progress, desc=os.path.basename(outfile),
                   dynamic_ncols=True)
        for start in range(0, len(todo), chunk):
            ids = todo[start:start + chunk]
            results = certify_batch_at(smooth, dataset.inputs[ids], radius, alpha, max_n=max_n,
                                       labels=dataset.labels[ids].tolist(), cost=cost, n0=n0, indices=ids,
                                       first=first, growth=growth)
            for i, res in zip(ids, results):
                writer.write(i, res)
                summary[res.decision] += 1
                summary["samples"] += res.samples
                summary["certified_correct"] += int(res.certified and bool(res.correct))
            bar.update(len(ids))
        bar.close()
    finally:
        writer.close()
    return {"outfile": outfile, "inputs_now": len(todo), "selected": len(indices), "samples": summary["samples"],
            "fixed_n_samples": max_n * len(todo), "certified": summary["certified"],
            "not_certified": summary["not_certified"], "undecided": summary["undecided"],
            "certified_correct": summary["certified_correct"]}


# -- command line (a branch of ``costsmooth certify``) --------------------------------------------
def add_sequential_args(p) -> None:
    """--sequential / --radius / --max-n / --first / --growth for ``costsmooth certify``."""
    from .args import positive_float, positive_int

    g = p.add_argument_group("sequential certification at one radius (costsmooth.sequential, docs/sequential.md)")
    g.add_argument("--sequential", action="store_true",
                   help="decide per input 'certified at --radius R?' with an anytime-valid test, stopping each "
                        "input as soon as it is decided (columns decision and samples); --N0 is the selection draw")
    g.add_argument("--radius", type=positive_float, help="the L2 radius R tested by --sequential")
    g.add_argument("--max-n", type=positive_int, help="--sequential: most estimation samples per input (default --N)")
    g.add_argument("--first", type=positive_int, default=DEFAULT_FIRST, help="--sequential: first checkpoint")
    g.add_argument("--growth", type=positive_float, default=DEFAULT_GROWTH,
                   help="--sequential: ratio of consecutive checkpoints (> 1); half of alpha is spent at max-n, the "
                        "other half evenly over the earlier checkpoints (the levels are recorded in the metadata)")


def run_certify_command(args) -> Optional[dict]:
    """``costsmooth certify ... --sequential --radius R``: returns None (and does nothing) without --sequential."""
    from .args import UsageError, model_from_args, parse_cost, resolve_device
    from .data import load_dataset

    if not args.sequential:
        for flag, value in (("--radius", args.radius), ("--max-n", args.max_n)):
            if value is not None:
                raise UsageError(f"{flag} is a setting of sequential certification: add --sequential")
        return None
    if args.radius is None:
        raise UsageError("--sequential needs --radius R (the L2 radius to decide)")
    if args.growth <= 1:
        raise UsageError(f"--growth {args.growth}: the ratio of consecutive checkpoints must be > 1 (e.g. 1.25)")
    refused = [flag for flag, on in (("--shard", args.shard), ("--split-samples", args.split_samples),
                                     ("--sigma-fn", args.sigma_fn), ("--cuda-graphs", args.cuda_graphs),
                                     ("--skip-invalid", args.skip_invalid),
                                     ("--prob-sums", getattr(args, "prob_sums", False)),
                                     ("torchrun", int(os.environ.get("WORLD_SIZE", "1")) > 1)) if on]
    if refused:
        raise UsageError(f"{refused[0]} is not available with --sequential (one process, constant sigma); drop it")
    device = resolve_device(args.device)
    dataset = load_dataset(args.dataset, split=args.split)
    model = model_from_args(args, args.model, args.dataset, dataset)
    from .runs import probe_num_classes
    cost = parse_cost(args, probe_num_classes(model.to(device), dataset, device))
    t0 = time.perf_counter()
    out = certify_dataset_at(model, dataset, args.sigma, args.outfile, args.radius, n0=args.N0,
                             max_n=args.max_n or args.N, alpha=args.alpha,
                             batch=args.batch, skip=args.skip, max_index=args.max,
                             cost=cost, seed=args.seed, device=device, progress=not args.quiet, first=args.first,
                             growth=args.growth,
                             meta_extra={"dataset": args.dataset, "model": os.path.abspath(args.model),
                                         "split": args.split},
                             autocast={"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision],
                             channels_last=args.channels_last)
    seconds = time.perf_counter() - t0
    if out["samples"]:
        saving = (f"{out['samples']:,} estimation samples ({out['fixed_n_samples'] / out['samples']:.1f}x fewer than "
                  f"{out['fixed_n_samples']:,} at fixed n = {args.max_n or args.N})")
    else:
        saving = "no estimation samples drawn now (every selected input was already decided)"
    print(f"wrote {out['outfile']}: {out['inputs_now']} inputs tested now at radius {args.radius:g} "
          f"({out['certified']} certified, {out['certified_correct']} of them correct; {out['not_certified']} not "
          f"certified; {out['undecided']} undecided)\n{saving}; {seconds:.1f} s")
    return out
