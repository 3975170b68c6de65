"""Certificates from vote counts: the standard L2 certificate (Cohen et al.) and the cost-sensitive one
(Xin, Backes & Zhang).

These are pure functions of the counts, so saved counts can be re-certified at another alpha or
cost matrix without sampling again. ``costsmooth.smooth.Smooth`` draws the counts.

Guarantees (over the Monte Carlo noise of the estimation draw, selection draw independent):
- standard: with probability >= 1 - alpha, g(x + delta) = cA for all ||delta||_2 < radius
  (Cohen, Rosenfeld, Kolter 2019; one Clopper-Pearson lower bound at level alpha).
- cost-sensitive: with probability >= 1 - alpha, g(x + delta) is not in the target set Omega_y for
  all ||delta||_2 < cs_radius (Xin, Backes, Zhang 2023). The level is split by the union bound:
  alpha/2 for the lower bound on p_cA and alpha/(2K) for each of the K target upper bounds, so all
  K + 1 bounds hold together with probability >= 1 - alpha. The per-target radii come from that
  same event.
The two statements are separate claims, each at level alpha.

Rounding: every bound and radius is rounded toward its conservative side (``costsmooth.stats``):
lower bounds and Phi^-1 of a lower bound down, upper bounds, ``1 - pA_lower`` and Phi^-1 of an upper
bound up, and each radius one ulp toward 0 after every float operation that forms it. A radius
written to a result file is therefore never above the one the exact bounds give.

Noise charge: the counts estimate probabilities under the law the generator draws, which differs
from the Gaussian by at most ``charge`` in total variation (``costsmooth.sound``: Box-Muller's
truncation on the standard path, the table's rounding and tails in sound mode). Every bound pays
it here, in ``lower_bound`` and ``upper_bound``: ``charge`` is subtracted from each lower bound and
added to each upper bound (rounded outward), so each bound holds for the Gaussian law whenever the
Clopper-Pearson bound holds for the drawn one; the alpha split is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from . import stats
from ._checks import check_alpha, check_positive_finite
from .cost import CostMatrix

__all__ = ["Certificate", "standard_certificate", "cost_sensitive_certificate", "cost_sensitive_fields",
           "certify_from_counts",
           "conservative_sigma", "half_gap_radius", "check_labels", "check_counts_matrix", "lower_bound",
           "upper_bound", "check_charge"]

ABSTAIN = -1


@dataclass
class Certificate:
    """The certificate of one input.

    prediction: the smoothed prediction cA, or -1 when the standard certificate abstains.
    radius: standard L2 radius at level alpha (0.0 on abstention).
    top_class: cA, the argmax of the selection counts (also when abstaining).
    pA_lower: Clopper-Pearson lower bound on p_cA at level alpha (feeds ``radius``).
    counts, selection_counts: int64 estimation and selection counts ``[C]``.
    label: the input's label, or None when unknown.
    cs_radius: cost-sensitive radius (0.0 when not certified); None when no cost matrix was given or
        the label is not a seed class.
    cs_certified: cs_radius > 0 (and the top class is not a target).
    top_is_target: cA lies in the label's target set: the input is not cost-sensitively robust.
    cs_pA_lower: lower bound on p_cA at level alpha/2.
    target_upper: {j: upper bound on p_j at level alpha/(2K)} for j in Omega_y.
    target_radii: {j: radius within which class j cannot be reached (0.0 when not certified)}.
    sigma0: the noise level the radii used, for input-dependent sigma (costsmooth.input_dependent);
        None for a constant sigma.
    """
    prediction: int
    radius: float
    top_class: int
    pA_lower: float
    counts: np.ndarray
    selection_counts: Optional[np.ndarray] = None
    label: Optional[int] = None
    cs_radius: Optional[float] = None
    cs_certified: bool = False
    top_is_target: bool = False
    cs_pA_lower: Optional[float] = None
    target_upper: Dict[int, float] = field(default_factory=dict)
    target_radii: Dict[int, float] = field(default_factory=dict)
    sigma0: Optional[float] = None  # input-dependent sigma (costsmooth.input_dependent)
    prob_sums: Optional[np.ndarray] = None  # float64 [C] softmax sums of the estimation draw (Smooth(prob_sums=True))

    @property
    def correct(self) -> Optional[bool]:
        """prediction == label (an abstention is not correct); None without a label."""
        return None if self.label is None else self.prediction == self.label


def _counts_vector(counts, name: str) -> np.ndarray:
    c = np.asarray(counts)
    if c.ndim != 1 or c.size < 1 or not np.issubdtype(c.dtype, np.integer) or np.any(c < 0):
        raise ValueError(f"{name} must be a 1-d array of non-negative integer counts, got {c!r}")
    if c.sum() < 1:
        raise ValueError(f"{name} must hold at least one sample")
    return c.astype(np.int64)


def check_counts_matrix(counts, name: str) -> np.ndarray:
    """``counts`` (array or tensor) as a [B, C] int64 matrix, refusing other shapes, non-integer dtypes, negative
    entries and rows without a sample; ``name`` names the argument in the error."""
    c = np.asarray(counts.cpu() if hasattr(counts, "cpu") else counts)
    if c.ndim != 2:
        raise ValueError(f"{name} must be a [B, C] array, got shape {list(c.shape)}")
    if c.size and (not np.issubdtype(c.dtype, np.integer) or c.dtype == np.bool_):
        raise ValueError(f"{name} must be integers (vote counts), got dtype {c.dtype}; counts are never fractional")
    if c.size and c.min() < 0:
        rows = np.nonzero((c < 0).any(axis=1))[0]
        raise ValueError(f"{name} must be non-negative; rows {rows[:5].tolist()} have negative entries")
    empty = np.nonzero(c.sum(axis=1) < 1)[0] if c.size else np.arange(c.shape[0])
    if c.shape[0] and empty.size:
        raise ValueError(f"{name} must hold at least one sample per input; rows {empty[:5].tolist()} are all zero")
    return c.astype(np.int64)


def check_labels(labels, batch: int, num_classes: int) -> List[int]:
    """Labels as Python ints, refusing floats, booleans and out-of-range values (never coerced)."""
    labels = list(labels.tolist() if hasattr(labels, "tolist") else labels)
    if len(labels) != batch:
        raise ValueError(f"{len(labels)} labels for {batch} inputs")
    out = []
    for y in labels:
        if isinstance(y, (bool, np.bool_)) or not isinstance(y, (int, np.integer)):
            raise ValueError(f"labels must be integer class indices, got {y!r} ({type(y).__name__})")
        if not 0 <= int(y) < num_classes:
            raise ValueError(f"label {int(y)} out of range for a {num_classes}-class model: labels lie in "
                             f"[0, {num_classes})")
        out.append(int(y))
    return out


def conservative_sigma(sigma: float) -> float:
    """The noise level a certificate may use for a requested ``sigma``.

    The kernels draw noise with sigma rounded to float32 (0.12 becomes 0.1199999973); radii are
    proportional to sigma, so certificates use the smaller of the float64 value and its float32
    rounding: never more than the noise that was actually drawn (a certificate errs only on the small side).
    """
    return min(float(sigma), float(np.float32(sigma)))


def check_charge(charge) -> float:
    """A noise charge: a probability in [0, 1)."""
    if isinstance(charge, bool) or not isinstance(charge, (int, float, np.floating)) or not 0 <= charge < 1:
        raise ValueError(f"the noise charge must be a probability in [0, 1), got {charge!r}")
    return float(charge)


def lower_bound(k, n, alpha: float, charge: float = 0.0):
    """Lower confidence bound at level alpha on the Gaussian-law probability of an event seen k times in
    n draws: Clopper-Pearson's, minus the noise charge (rounded down; 0 at most)."""
    p = np.asarray(stats.cp_lower(k, n, alpha), dtype=np.float64)
    if charge:
        p = np.maximum(np.nextafter(p - charge, -np.inf), 0.0)
    return p[()]


def upper_bound(k, n, alpha: float, charge: float = 0.0):
    """Upper confidence bound at level alpha, as ``lower_bound``: Clopper-Pearson's plus the noise
    charge (rounded up; 1 at most)."""
    p = np.asarray(stats.cp_upper(k, n, alpha), dtype=np.float64)
    if charge:
        p = np.minimum(np.nextafter(p + charge, np.inf), 1.0)
    return p[()]


def half_gap_radius(p_lower, p_upper, sigma: float):
    """``sigma/2 * (Phi^-1(p_lower) - Phi^-1(p_upper))`` rounded down: Phi^-1 of the lower bound down, of
    the upper bound up, the difference and the product one ulp toward 0 when positive (the value is
    certified only when positive). Vectorised over ``p_upper``."""
    gap = stats.norm_ppf_down(p_lower) - stats.norm_ppf_up(p_upper)
    return stats.round_toward_zero(sigma / 2 * stats.round_toward_zero(gap))


def standard_certificate(top_class: int, counts, alpha: float, sigma: float, charge: float = 0.0):
    """Cohen et al.'s CERTIFY from the estimation counts, given cA from the selection draw.

    Returns (prediction, radius, pA_lower): prediction -1 and radius 0.0 when pA_lower < 1/2,
    else ``radius = sigma * Phi^-1(pA_lower)``, pA_lower at level alpha; Phi^-1 and the product
    rounded down; pA_lower pays the noise charge (``lower_bound``).
    """
    counts = _counts_vector(counts, "counts")
    sigma = conservative_sigma(sigma)
    n = int(counts.sum())
    p_low = float(lower_bound(counts[top_class], n, alpha, charge))
    if p_low < 0.5:
        return ABSTAIN, 0.0, p_low
    return int(top_class), float(stats.round_toward_zero(sigma * stats.norm_ppf_down(p_low))), p_low


def cost_sensitive_certificate(top_class: int, counts, label: int, cost: CostMatrix, alpha: float, sigma: float,
                               charge: float = 0.0):
    """The cost-sensitive certificate of one input of a seed class. Returns a dict of the cost-sensitive fields.

    ``pA_low`` = CP lower bound of n_cA at alpha/2; ``pj_up`` = CP upper bound of n_j at alpha/(2K) for
    each target j; ``pOmega_up = min(max_j pj_up, 1 - pA_low)``; ``cs_radius = sigma/2 *
    (Phi^-1(pA_low) - Phi^-1(pOmega_up))`` when positive. If cA is itself a target, nothing is certified.
    ``1 - pA_low`` is rounded up, Phi^-1(pA_low) down and Phi^-1(pOmega_up) up, and the difference and
    the product toward 0 (``half_gap_radius``). Every bound pays the noise charge (``lower_bound``,
    ``upper_bound``).
    """
    sigma = conservative_sigma(sigma)
    return cost_sensitive_fields(top_class, counts, label, cost, alpha, lambda p_low, p_up: half_gap_radius(
        p_low, p_up, sigma), charge)


def cost_sensitive_fields(top_class: int, counts, label: int, cost: CostMatrix, alpha: float,
                          radius: Callable[[float, float], float], charge: float = 0.0) -> dict:
    """The cost-sensitive fields of one seed-class input, with the radius rule given.

    The bounds and the alpha split are fixed: ``pA_low`` = CP lower bound of n_cA at alpha/2, each of
    the K targets' CP upper bound at alpha/(2K) (Bonferroni), every bound paying the noise charge;
    ``pOmega_up = min(max_j pj_up, 1 - pA_low)`` with ``1 - pA_low`` rounded up. ``radius(pA_low,
    p_up)`` turns a lower bound of the top class and an upper bound of a target into a radius (rounded
    toward 0 by the rule). If cA is itself a target, nothing is certified.
    """
    counts = _counts_vector(counts, "counts")
    targets = cost.targets(label)
    if not targets:
        raise ValueError(f"label {label} is not a seed class of {cost}; it has no cost-sensitive certificate")
    n, k = int(counts.sum()), len(targets)
    p_low = float(lower_bound(counts[top_class], n, alpha / 2, charge))
    p_up = np.atleast_1d(upper_bound(counts[targets], n, stats.bonferroni(alpha / 2, k), charge))
    cap = float(stats.complement_up(p_low))
    top_is_target = top_class in targets

    def certified_radius(upper: float) -> float:
        if top_is_target:
            return 0.0
        value = float(radius(p_low, min(float(upper), cap)))
        return value if value > 0 else 0.0

    cs = certified_radius(float(p_up.max()))
    return dict(
        cs_radius=cs,
        cs_certified=cs > 0,
        top_is_target=bool(top_is_target),
        cs_pA_lower=p_low,
        target_upper={j: float(u) for j, u in zip(targets, p_up)},
        target_radii={j: certified_radius(float(u)) for j, u in zip(targets, p_up)},
    )


def certify_from_counts(selection_counts, counts, alpha: float, sigma: float, labels: Optional[Sequence[int]] = None,
                        cost: Optional[CostMatrix] = None, charge: float = 0.0) -> List[Certificate]:
    """Certificates for a batch from selection counts ``[B, C]`` and estimation counts ``[B, C]``.

    cA is the argmax of the selection counts (ties to the lowest class). The standard certificate is
    computed for every input; the cost-sensitive one for inputs whose label is a seed class of ``cost``.
    ``charge``: the noise charge of the draw (``costsmooth.sound.noise_charge``; a run records it in
    its metadata), paid by every bound.
    """
    alpha = check_alpha(alpha)
    charge = check_charge(charge)
    sigma = conservative_sigma(check_positive_finite(sigma, "sigma"))
    sel = check_counts_matrix(selection_counts, "selection counts")
    est = check_counts_matrix(counts, "estimation counts")
    if est.shape != sel.shape:
        raise ValueError(f"selection counts {list(sel.shape)} and estimation counts {list(est.shape)} must both be "
                         f"[B, C] with the same B and C")
    if cost is not None:
        cost.check_num_classes(sel.shape[1])
    if labels is not None:
        labels = check_labels(labels, sel.shape[0], sel.shape[1])
    out = []
    for b in range(sel.shape[0]):
        top = int(np.argmax(sel[b]))
        pred, radius, p_low = standard_certificate(top, est[b], alpha, sigma, charge)
        label = None if labels is None else labels[b]
        cert = Certificate(prediction=pred, radius=radius, top_class=top, pA_lower=p_low,
                           counts=est[b].astype(np.int64), selection_counts=sel[b].astype(np.int64), label=label)
        if cost is not None and label is not None and cost.is_seed(label):
            for key, value in cost_sensitive_certificate(top, est[b], label, cost, alpha, sigma, charge).items():
                setattr(cert, key, value)
        out.append(cert)
    return out
