"""Projected gradient attacks (PGD) in L2 and Linf, for base models and for soft smoothed classifiers.

``pgd(objective, x, eps=...)`` is the generic loop: it maximises a per-input objective ``[B]`` over
``||x' - x|| <= eps`` by projected steps (L2: steps along the normalised gradient; Linf: signed
steps), from a random start inside the ball or from x itself. ``keep`` (optional) is a constraint a
step must satisfy per input (e.g. "the prediction is unchanged", for calibration attacks): an input
whose step would break it keeps its last admissible point. ``pgd_attack`` and ``smoothed_pgd_attack``
are the usual objectives: cross-entropy of the base model, and of the soft smoothed classifier
``mean_i softmax(f(x' + d_i))`` with the noise d_i drawn once and held fixed across the steps
(Salman et al. 2019, SmoothAdv).

Randomness (the random start) comes from a ``torch.Generator`` seeded by ``seed``, so an attack is
reproducible. Attacks are empirical: a failed attack proves nothing; certificates come from
``costsmooth.certify``.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from ._checks import check_count, check_float_tensor, check_non_negative_finite, check_positive_finite
from .sampling import eval_mode

__all__ = ["NORMS", "norm_name", "pgd", "pgd_attack", "smoothed_pgd_attack", "soft_smoothed_probs", "project"]

NORMS = ("l2", "linf")


def _check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    return norm


def norm_name(norm) -> str:
    """"l2" or "linf" from "l2"/"linf" or the numbers 2 / inf (as ``--loss-arg norm=2`` or ``norm=inf`` give them)."""
    names = {2: "l2", float("inf"): "linf", "l2": "l2", "linf": "linf", "2": "l2", "inf": "linf"}
    if isinstance(norm, bool) or not isinstance(norm, (int, float, str)) or norm not in names:
        raise ValueError(f"norm must be l2 or linf (or 2 / inf), got {norm!r}")
    return names[norm]


def _per_input(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The perturbation ``delta [B, *shape]`` projected onto the ``norm`` ball of radius eps (per input)."""
    if _check_norm(norm) == "linf":
        return delta.clamp(-eps, eps)
    length = delta.flatten(1).norm(dim=1)
    return delta * _per_input(torch.clamp(eps / length.clamp_min(1e-12), max=1.0), delta)


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A point drawn uniformly from the ball of radius eps around 0 (per input), on the CPU generator."""
    shape = x.shape
    if norm == "linf":
        delta = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * eps
    else:
        direction = torch.randn(shape, generator=generator, dtype=torch.float64)
        direction = direction / _per_input(direction.flatten(1).norm(dim=1).clamp_min(1e-12), direction)
        dim = x[0].numel() if x.shape[0] else 1
        radius = eps * torch.rand(shape[0], generator=generator, dtype=torch.float64) ** (1.0 / dim)
        delta = direction * _per_input(radius, direction)
    return delta.to(device=x.device, dtype=x.dtype)


def _step(grad: torch.Tensor, size: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return size * grad.sign()
    length = _per_input(grad.flatten(1).norm(dim=1).clamp_min(1e-12), grad)
    return size * grad / length


def pgd(objective: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, eps: float, norm: str = "l2",
        steps: int = 10, step_size: Optional[float] = None, random_start: bool = True, seed: int = 0,
        clamp: Optional[Tuple[float, float]] = None,
        keep: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> torch.Tensor:
    """Maximise ``objective(x') [B]`` over ``||x' - x||_norm <= eps`` by projected gradient ascent.

    Args:
        objective: maps a batch ``[B, *shape]`` to per-input values ``[B]`` to maximise (differentiable).
        x: the clean inputs ``[B, *shape]`` (float). eps: radius (>= 0; 0 returns x).
        norm: "l2" (steps along the normalised gradient) or "linf" (signed steps).
        steps: number of steps. step_size: default ``2.5 * eps / steps`` (Madry et al.'s rule).
        random_start: start from a uniform point of the ball (seeded by ``seed``), else from x.
        clamp: optional (low, high) box of valid inputs (e.g. (0, 1) for images); off by default,
            because smoothing adds unclipped noise in input space.
        keep: optional constraint ``x' -> bool [B]``; a point that breaks it is never returned (a
            step or a random start that would break it leaves that input at its last admissible
            point; x itself is assumed admissible).

    Returns:
        ``x' [B, *shape]`` (detached, x's dtype) with ``||x' - x|| <= eps`` for every input.
    """
    check_float_tensor(x, "x")
    norm = _check_norm(norm)
    eps = check_non_negative_finite(eps, "eps")
    steps = check_count(steps, "steps")
    step_size = 2.5 * eps / steps if step_size is None else check_positive_finite(step_size, "step_size")
    x = x.detach()
    if eps == 0 or x.shape[0] == 0:
        return x.clone()

    def admissible(candidate: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        if clamp is not None:
            candidate = candidate.clamp(*clamp)
        if keep is None:
            return candidate
        with torch.no_grad():
            ok = keep(candidate).to(torch.bool)
        return torch.where(_per_input(ok, candidate), candidate, current)

    adv = x.clone()
    if random_start:
        generator = torch.Generator().manual_seed(int(seed))
        adv = admissible(x + _random_start(x, eps, norm, generator), adv)
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            value = objective(adv)
            if value.shape != (x.shape[0],):
                raise ValueError(f"the attack objective must return one value per input, shape [{x.shape[0]}], "
                                 f"got {list(value.shape)}")
            grad, = torch.autograd.grad(value.sum(), adv)
        with torch.no_grad():
            grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
            candidate = x + project(adv.detach() + _step(grad, step_size, norm) - x, eps, norm)
            adv = admissible(candidate, adv.detach())
    return adv.detach()


def pgd_attack(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "l2", steps: int = 10,
               step_size: Optional[float] = None, random_start: bool = True, targeted: bool = False,
               seed: int = 0, clamp: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """PGD on the base model's cross-entropy: untargeted (maximise CE at labels ``y``) or targeted
    (``targeted=True``: ``y`` are the target classes, minimise their CE). Returns x' (see ``pgd``)."""
    y = y.to(x.device).long()
    sign = -1.0 if targeted else 1.0
    with eval_mode(model, inference=False):
        return pgd(lambda z: sign * F.cross_entropy(model(z), y, reduction="none"), x, eps=eps, norm=norm,
                   steps=steps, step_size=step_size, random_start=random_start, seed=seed, clamp=clamp)


def soft_smoothed_probs(model, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``mean_i softmax(f(x + d_i))`` ``[B, C]`` for fixed noise ``noise [B * m, *shape]`` (m copies per
    input, as ``costsmooth.losses.NoiseSource.noise`` returns); differentiable in x."""
    m = noise.shape[0] // max(x.shape[0], 1)
    if m * x.shape[0] != noise.shape[0] or noise.shape[1:] != x.shape[1:]:
        raise ValueError(f"noise must have shape [B * m, *shape] for x of shape {list(x.shape)}, got "
                         f"{list(noise.shape)}")
    probs = model(x.repeat_interleave(m, 0) + noise.to(x.dtype)).softmax(-1)
    return probs.view(x.shape[0], m, -1).mean(1)


def smoothed_pgd_attack(model, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, *, eps: float,
                        norm: str = "l2", steps: int = 10, step_size: Optional[float] = None,
                        random_start: bool = True, targeted: bool = False, seed: int = 0,
                        clamp: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """PGD on the soft smoothed classifier (SmoothAdv): maximise ``-log(mean_i softmax(f(x' + d_i))_y)``
    (targeted: minimise it for the target classes ``y``) with the noise ``d_i`` fixed across steps
    (``noise [B * m, *shape]``, e.g. ``NoiseSource(seed).noise(x, m, sigma)``). Returns x'."""
    y = y.to(x.device).long()
    sign = -1.0 if targeted else 1.0

    def objective(z):
        p = soft_smoothed_probs(model, z, noise).gather(1, y[:, None]).squeeze(1)
        return -sign * torch.log(p + 1e-10)

    with eval_mode(model, inference=False):
        return pgd(objective, x, eps=eps, norm=norm, steps=steps, step_size=step_size, random_start=random_start,
                   seed=seed, clamp=clamp)
