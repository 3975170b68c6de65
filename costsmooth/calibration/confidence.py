"""Smoothed top-label confidences, their confidence intervals and certified boxes (Emde et al.; Kumar et al. 2020).

The smoothed confidence of the predicted class cA is ``z(x) = E_e softmax(f(x + e))_cA``, e ~ N(0, sigma^2 I).
The engine's ``prob_sum`` gives ``sum_j softmax(f(x + e_j))`` over the n samples of the estimation draw,
so ``z_hat = prob_sums[cA] / n``. The samples are i.i.d. and in [0, 1], so a Hoeffding interval (or the
tighter Chernoff-KL one) bounds z(x). Because ``Phi^-1(z(x))`` is 1/sigma-Lipschitz in x (Salman et al.
2019; Kumar, Levine, Feizi, Goldstein 2020), the interval at x gives a box that holds for every
``||delta||_2 <= eps``: ``Phi(Phi^-1(low) - eps/sigma) <= z(x + delta) <= Phi(Phi^-1(up) + eps/sigma)``.

Which inputs count: calibration under attack is evaluated on the inputs whose prediction is certified
at radius eps (standard certificate), so that the correctness c_n of every input is fixed within the
ball and only its confidence moves.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
from scipy.special import ndtr, xlogy

from .. import stats
from .._checks import check_alpha, check_non_negative_finite
from ..certify import ABSTAIN, certify_from_counts, check_charge, conservative_sigma
from ..sampling import eval_mode
from ..smooth import Smooth

__all__ = ["CI_METHODS", "confidence_interval", "confidence_box", "CertifiedConfidences", "certified_confidences",
           "sample_confidences"]

CI_METHODS = ("hoeffding", "kl")


def _as_float_array(value, name: str) -> np.ndarray:
    a = np.asarray(value.cpu() if hasattr(value, "cpu") else value, dtype=np.float64)
    if a.ndim > 1:
        raise ValueError(f"{name} must be a number or a 1-d array, got shape {list(a.shape)}")
    if a.size and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    return np.atleast_1d(a)


def _kl_bernoulli(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(Bernoulli(p) || Bernoulli(q)), with 0 log 0 = 0 (q strictly inside (0, 1))."""
    return xlogy(p, p) - xlogy(p, q) + xlogy(1 - p, 1 - p) - xlogy(1 - p, 1 - q)


# The float KL of two Bernoulli laws errs by a few ulps of its terms (each at most 0.37 in size): 2^-46
# (1.4e-14) is far above that. A point counts as inside the KL ball only when its computed KL is below
# the threshold (rounded up) plus this margin, so every point left outside is outside the exact ball.
KL_MARGIN = 2.0 ** -46


def _kl_bound(mean: np.ndarray, level: float, n: np.ndarray, upper: bool) -> np.ndarray:
    """The Chernoff-KL bound: the q farthest from ``mean`` on one side with ``n KL(mean || q) <= log(1/level)``,
    found by bisection; the bracket end returned is the conservative one (never inside the true bound):
    the comparison takes the threshold larger by ``KL_MARGIN`` and a relative 2^-50."""
    threshold = np.log(1.0 / level) / n * (1.0 + 2.0 ** -50) + KL_MARGIN
    inside = mean.copy()                            # KL(mean || inside) = 0 <= threshold
    outside = np.ones_like(mean) if upper else np.zeros_like(mean)
    for _ in range(80):  # 2^-80: the bracket is far below float64 resolution
        mid = 0.5 * (inside + outside)
        with np.errstate(divide="ignore", invalid="ignore"):
            ok = _kl_bernoulli(mean, np.clip(mid, 1e-300, 1 - 1e-16)) <= threshold
        inside = np.where(ok, mid, inside)
        outside = np.where(ok, outside, mid)
    return outside


def confidence_interval(conf_sum, n, alpha: float, method: str = "hoeffding",
                        charge: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Two-sided confidence interval ``[low, up]`` for the mean of [0, 1]-valued samples from their sum.

    Args:
        conf_sum: float ``[N]`` (or a number): sum over the n samples of the predicted class's softmax
            probability (``prob_sums[cA]`` of the estimation draw).
        n: the number of samples (a number or ``[N]``).
        alpha: failure probability of the interval, split alpha/2 per side.
        method: "hoeffding" (``mean -/+ sqrt(log(2/alpha) / (2n))``) or "kl" (Chernoff's
            relative-entropy bound ``n KL(mean || q) <= log(2/alpha)``, valid for any [0, 1]-valued
            i.i.d. samples and much tighter near 0 and 1, where confident models live). The CDF/DKW
            variant of Kumar et al. needs every sample's confidence, which the engine's sums do not
            keep, so it is not offered.
        charge: the noise charge of one sample (``costsmooth.sound``): the samples' law differs from
            the Gaussian's by at most this in total variation, so the mean of a [0, 1]-valued function
            by at most this too: it is subtracted from ``low`` and added to ``up``.

    Returns:
        (low, up), float64 ``[N]`` in [0, 1]. Guarantee: for each input, with probability >= 1 - alpha
        over the samples, ``low <= z(x) <= up``. Rounded outward: the float64 sum of n values in [0, 1]
        errs by at most ``(n - 1) 2^-53`` times n, so the mean by ``n 2^-53``; the half-width is widened
        by ``(n + 8) 2^-53`` (the mean's error and the few roundings after it) and a relative
        ``stats.PPF_MARGIN``; the KL bound is taken from the mean moved outward by that much.
    """
    alpha = check_alpha(alpha)
    if method not in CI_METHODS:
        raise ValueError(f"method must be one of {', '.join(CI_METHODS)}, got {method!r}")
    conf_sum = _as_float_array(conf_sum, "conf_sum")
    n = _as_float_array(n, "n")
    if np.any(n < 1):
        raise ValueError(f"n must be >= 1 (the number of samples), got {n.min()}")
    mean = conf_sum / n
    if np.any((mean < -1e-9) | (mean > 1 + 1e-9)):
        raise ValueError("conf_sum / n must lie in [0, 1]: conf_sum is a sum of n probabilities")
    mean = np.clip(mean, 0.0, 1.0) * np.ones(np.broadcast(mean, n).shape)
    rounding = (n + 8.0) * 2.0 ** -53  # the mean's summation error and the roundings below (absolute)
    if method == "hoeffding":
        half = np.sqrt(np.log(2.0 / alpha) / (2.0 * n)) * (1.0 + stats.PPF_MARGIN)  # rounded up: 3 float ops
        low, up = mean - (half + rounding), mean + (half + rounding)
    else:
        n_all = n * np.ones_like(mean)
        low = _kl_bound(np.clip(mean - rounding, 0.0, 1.0), alpha / 2, n_all, upper=False) - 4 * 2.0 ** -53
        up = _kl_bound(np.clip(mean + rounding, 0.0, 1.0), alpha / 2, n_all, upper=True) + 4 * 2.0 ** -53
    if charge:
        low, up = low - charge, up + charge
    return np.clip(np.nextafter(low, -1.0), 0.0, 1.0), np.clip(np.nextafter(up, 2.0), 0.0, 1.0)


def confidence_box(low, up, eps: float, sigma: float) -> Tuple[np.ndarray, np.ndarray]:
    """The certified box of the smoothed confidence at L2 radius eps (Kumar et al. 2020).

    ``(Phi(Phi^-1(low) - eps/sigma), Phi(Phi^-1(up) + eps/sigma))``: if ``low <= z(x) <= up`` then
    ``z(x + delta)`` lies in the box for every ``||delta||_2 <= eps``. sigma is the conservative one
    (``certify.conservative_sigma``: never more than the noise drawn); eps = 0 returns (low, up)
    unchanged. Otherwise the box is rounded outward: eps/sigma up, Phi^-1 outward
    (``stats.norm_ppf_down``/``norm_ppf_up``), the sum one ulp outward and Phi by a relative
    ``stats.PPF_MARGIN`` (above the error of scipy's ndtr). Shapes ``[N]`` float64.
    """
    low, up = _as_float_array(low, "low"), _as_float_array(up, "up")
    if low.shape != up.shape or np.any(low > up) or np.any(low < 0) or np.any(up > 1):
        raise ValueError("low and up must be arrays of the same shape with 0 <= low <= up <= 1")
    eps = check_non_negative_finite(eps, "eps")
    if eps == 0:
        return low.copy(), up.copy()
    shift = np.nextafter(eps / conservative_sigma(sigma), np.inf)
    with np.errstate(invalid="ignore"):
        box_low = ndtr(np.nextafter(stats.norm_ppf_down(low) - shift, -np.inf)) * (1.0 - stats.PPF_MARGIN)
        box_up = ndtr(np.nextafter(stats.norm_ppf_up(up) + shift, np.inf)) * (1.0 + stats.PPF_MARGIN)
    return np.clip(np.nextafter(box_low, -1.0), 0.0, 1.0), np.clip(np.nextafter(box_up, 2.0), 0.0, 1.0)


@dataclass
class CertifiedConfidences:
    """Per-input predictions, smoothed confidences and their confidence intervals (float64/int64 ``[N]``).

    prediction: cA when certified at level ``alpha_prediction``, else -1 (abstain); radius: its standard
    certified L2 radius. label, correct: the label and ``prediction == label``. confidence: the point
    estimate ``z_hat = prob_sums[cA] / n``. low, up: the confidence interval of z(x) at level
    ``alpha_interval``. Use ``box(eps)`` for the inputs certified at eps and their boxes.

    The alpha split (union bound): each input's prediction certificate at alpha/(2N) and its two-sided
    confidence interval at alpha/(2N), both from the estimation draw (cA from the independent selection
    draw). With probability >= 1 - alpha, for all N inputs and every eps at once: each prediction is
    constant and each confidence stays in ``box(eps)`` within ``||delta|| <= eps`` (``box`` is a
    deterministic function of the interval). CBS and CECE are maxima over all N boxes, so this joint
    statement is what they need: they hold with probability >= 1 - alpha (``level``).
    ``joint=False`` (on request only) takes alpha per input (alpha/2 certificate, alpha/2 interval), as
    for certified accuracy; then the dataset-level statement, and so every CBS and CECE, holds only with
    probability >= 1 - N * alpha (``level``; 0 when N * alpha >= 1).
    """
    prediction: np.ndarray
    radius: np.ndarray
    label: np.ndarray
    correct: np.ndarray
    confidence: np.ndarray
    low: np.ndarray
    up: np.ndarray
    sigma: float
    alpha: float
    alpha_prediction: float
    alpha_interval: float
    n: int
    method: str
    joint: bool
    charge: float = 0.0  # the noise charge of one sample, paid by every certificate and interval
    grid: Optional[float] = None  # sound mode's input grid (costsmooth.sound); None on the standard path

    def __len__(self) -> int:
        return int(self.prediction.size)

    @property
    def level(self) -> float:
        """The probability with which the boxes of all inputs -- and so CBS and CECE -- hold together:
        1 - alpha (joint), or 1 - N * alpha for per-input intervals (0 when that is negative)."""
        return 1.0 - self.alpha if self.joint else max(0.0, 1.0 - len(self) * self.alpha)

    def statement(self) -> str:
        """The level in words, for the header of every table that reports CBS or CECE."""
        if self.joint:
            return (f"CBS and CECE hold with probability >= {self.level:.6g} (1 - alpha, alpha={self.alpha:g} over "
                    f"all {len(self)} inputs together: each input's certificate and interval at "
                    f"alpha/(2N)={self.alpha_interval:.3g})")
        if self.level == 0:
            return (f"per-input alpha={self.alpha:g} (--per-input): N * alpha = {len(self) * self.alpha:.3g} >= 1, so "
                    f"CBS and CECE carry no dataset-level guarantee")
        return (f"per-input alpha={self.alpha:g} (--per-input): CBS and CECE hold only with probability >= "
                f"{self.level:.6g} (1 - N * alpha, N={len(self)})")

    def certified_at(self, eps: float) -> np.ndarray:
        """bool ``[N]``: the prediction is certified within ``||delta|| <= eps`` (radius > eps; at eps = 0,
        not abstained)."""
        eps = float(eps)
        return (self.prediction != ABSTAIN) & ((self.radius > eps) if eps > 0 else True)

    def box(self, eps: float):
        """(mask ``[N]`` bool, low ``[K]``, up ``[K]``, correct ``[K]`` bool, confidence ``[K]``) for the K
        inputs certified at eps: their certified confidence boxes at radius eps."""
        mask = self.certified_at(eps)
        low, up = confidence_box(self.low[mask], self.up[mask], eps, self.sigma)
        return mask, low, up, self.correct[mask], self.confidence[mask]


def certified_confidences(selection_counts, counts, prob_sums, labels: Sequence[int], alpha: float, sigma: float,
                          method: str = "hoeffding", joint: bool = True, charge: float = 0.0) -> CertifiedConfidences:
    """Predictions, confidences and confidence intervals from the saved statistics of a certify run.

    Args:
        selection_counts, counts: int ``[N, C]`` votes of the selection (stream 0) and estimation
            (stream 1) draws; prob_sums: float64 ``[N, C]`` softmax sums of the estimation draw.
        labels: ``[N]`` class indices. alpha: total failure probability, split as described in
            ``CertifiedConfidences``: alpha/(2N) per input for the certificate and for the interval
            (``joint``, the default), or with ``joint=False`` alpha/2 each per input, and then the
            dataset-level statement holds at 1 - N * alpha only.
        sigma: the noise level; method: the interval ("hoeffding" or "kl").
        charge: the noise charge of one sample of the draw (``costsmooth.sound.noise_charge``; a run
            records it in its metadata), paid by every certificate and every interval.
    """
    alpha = check_alpha(alpha)
    charge = check_charge(charge)
    sums = np.asarray(prob_sums.cpu() if hasattr(prob_sums, "cpu") else prob_sums, dtype=np.float64)
    est = np.asarray(counts.cpu() if hasattr(counts, "cpu") else counts)
    if sums.ndim != 2 or sums.shape != est.shape:
        raise ValueError(f"prob_sums must be [N, C] like the counts {list(est.shape)}, got {list(sums.shape)}")
    size = max(est.shape[0], 1)
    per_input = alpha / size if joint else alpha
    alpha_pred, alpha_ci = per_input / 2, per_input / 2
    certs = certify_from_counts(selection_counts, est, alpha_pred, sigma, labels, charge=charge)
    n = est.sum(axis=1).astype(np.float64)
    if np.any(np.abs(sums.sum(axis=1) - n) > 1e-6 * np.maximum(n, 1)):
        raise ValueError("each row of prob_sums must sum to the row's number of samples (softmax sums of the "
                         "estimation draw); were they saved from another draw?")
    top = np.array([c.top_class for c in certs], dtype=np.int64)
    conf_sum = sums[np.arange(top.size), top] if top.size else np.zeros(0)
    low, up = confidence_interval(conf_sum, n, alpha_ci, method, charge) if top.size else (np.zeros(0), np.zeros(0))
    prediction = np.array([c.prediction for c in certs], dtype=np.int64)
    label = np.array([c.label for c in certs], dtype=np.int64)
    return CertifiedConfidences(
        prediction=prediction, radius=np.array([c.radius for c in certs], dtype=np.float64), label=label,
        correct=prediction == label, confidence=np.clip(conf_sum / np.maximum(n, 1), 0, 1), low=low, up=up,
        sigma=float(sigma), alpha=alpha, alpha_prediction=alpha_pred, alpha_interval=alpha_ci,
        n=int(n.max()) if n.size else 0, method=method, joint=bool(joint), charge=charge)


def sample_confidences(model, x, labels, sigma: float, *, n0: int = 100, n: int = 10000, alpha: float = 0.001,
                       seed: int = 0, batch_size=1000, indices: Optional[Sequence[int]] = None,
                       method: str = "hoeffding", joint: bool = True, num_classes: Optional[int] = None,
                       progress=None, sound: bool = False, grid: Optional[float] = None):
    """``certified_confidences`` from fresh samples of the engine, as certification draws them.

    x: inputs ``[N, *shape]``; labels ``[N]``; indices: their dataset indices (noise keys; default
    0..N-1). The selection draw (n0 samples, stream 0) picks cA; the estimation draw (n samples,
    stream 1) gives the votes and the softmax sums. Returns (CertifiedConfidences, selection counts,
    estimation counts, prob_sums) -- the same statistics ``certify --prob-sums`` saves. ``sound``,
    ``grid``: sound floating-point mode (``costsmooth.Smooth``): the inputs must lie on the grid.
    """
    if num_classes is None:
        with eval_mode(model):
            num_classes = int(model(x[:1]).shape[1])
    smooth = Smooth(model, num_classes, sigma, batch_size=batch_size, seed=seed, prob_sums=True, sound=sound, grid=grid)
    per_input = check_alpha(alpha) / (max(x.shape[0], 1) if joint else 1)
    certs = smooth.certify_batch(x, [int(v) for v in labels], n0=n0, n=n, alpha=per_input / 2,
                                 indices=range(x.shape[0]) if indices is None else indices, progress=progress)
    sel = np.stack([c.selection_counts for c in certs]) if certs else np.zeros((0, num_classes), np.int64)
    est = np.stack([c.counts for c in certs]) if certs else np.zeros((0, num_classes), np.int64)
    sums = np.stack([c.prob_sums for c in certs]) if certs else np.zeros((0, num_classes))
    conf = certified_confidences(sel, est, sums, [int(v) for v in labels], alpha, sigma, method, joint,
                                 smooth.noise_charge(x.shape[1:].numel()))
    conf.grid = smooth.grid
    return conf, sel, est, sums
