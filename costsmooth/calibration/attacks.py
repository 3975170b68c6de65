"""Calibration attacks: (eta, omega)-ACE of Emde et al., on ``costsmooth.attacks.pgd``.

PGD maximises ``eta * CE(p(x'), omega)`` over ``||x' - x|| <= eps`` while the predicted label stays
the same (``pgd``'s ``keep`` constraint: a step that changes it is not taken). ``p`` is the base
model's softmax, or for a smoothed model the soft smoothed classifier ``mean_i softmax(f(x' + d_i))``
with the noise d_i fixed across steps. eta = +1 with omega = the prediction lowers the confidence
(under-confidence), eta = -1 raises it (over-confidence); ``eta="ece"`` uses +1 on correctly and -1 on
wrongly predicted inputs, the direction that increases the ECE. omega = "label" uses the labels.

For a smoothed model the prediction held fixed is the hard vote over the fixed noise (the smoothed
classifier's prediction on those samples). Attacks are empirical: they show calibration can be
broken, and bound the certified values from below; certificates come from ``certified_ece`` and
``certified_brier``.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from ..attacks import pgd, soft_smoothed_probs
from ..sampling import eval_mode

__all__ = ["ace_attack", "ace_eta", "predictions", "OMEGAS", "ETAS"]

OMEGAS = ("prediction", "label")
ETAS = ("down", "up", "ece")


def _votes(model, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Hard smoothed prediction over fixed noise: argmax of the vote counts ``[B]``."""
    m = noise.shape[0] // max(x.shape[0], 1)
    logits = model(x.repeat_interleave(m, 0) + noise.to(x.dtype))
    counts = F.one_hot(logits.argmax(1), logits.shape[1]).view(x.shape[0], m, -1).sum(1)
    return counts.argmax(1)


def predictions(model, x: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """int64 ``[B]``: the base model's argmax (``noise=None``) or the hard vote over ``noise [B * m, *shape]``."""
    with torch.no_grad(), eval_mode(model, inference=False):
        return model(x).argmax(1) if noise is None else _votes(model, x, noise)


def ace_eta(pred: torch.Tensor, y: torch.Tensor, eta: Union[str, int, float, torch.Tensor]) -> torch.Tensor:
    """float ``[B]`` of +-1: "down" = +1, "up" = -1, "ece" = +1 where pred == y else -1, or a number/tensor."""
    if isinstance(eta, str):
        if eta not in ETAS:
            raise ValueError(f"eta must be one of {', '.join(ETAS)}, +1, -1 or a [B] tensor of +-1, got {eta!r}")
        if eta == "ece":
            return torch.where(pred == y, 1.0, -1.0)
        return torch.full(pred.shape, 1.0 if eta == "down" else -1.0)
    eta = torch.as_tensor(eta, dtype=torch.float32).expand(pred.shape).clone()
    if not bool(((eta == 1) | (eta == -1)).all()):
        raise ValueError("eta must be +1 or -1 (per input)")
    return eta


def ace_attack(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, eta="ece", omega: str = "prediction",
               norm: str = "l2", steps: int = 20, step_size: Optional[float] = None, noise: Optional[torch.Tensor] = None,
               random_start: bool = False, seed: int = 0,
               clamp: Optional[Tuple[float, float]] = None) -> torch.Tensor:
    """(eta, omega)-ACE: PGD on ``eta * CE(p(x'), omega)`` with the prediction held fixed.

    Args:
        model: base classifier ``[B, *shape] -> [B, C]`` logits (run in eval mode, mode restored).
        x: clean inputs ``[B, *shape]``; y: int64 labels ``[B]`` (for omega = "label" and eta = "ece").
        eps, norm ("l2"/"linf"), steps, step_size, random_start, seed, clamp: as in ``attacks.pgd``.
        eta: "down" (+1), "up" (-1), "ece" (+1 on correct, -1 on wrong predictions), or +-1 per input.
        omega: "prediction" (the class predicted at x) or "label".
        noise: ``[B * m, *shape]`` fixed noise (``NoiseSource(seed).noise(x, m, sigma)``) to attack the
            smoothed classifier; None attacks the base model.

    Returns:
        x' ``[B, *shape]`` with ``||x' - x|| <= eps`` and the same prediction as x (on the fixed noise
        for a smoothed model).
    """
    if omega not in OMEGAS:
        raise ValueError(f"omega must be one of {', '.join(OMEGAS)}, got {omega!r}")
    y = y.to(x.device).long()
    pred = predictions(model, x, noise)
    target = pred if omega == "prediction" else y
    sign = ace_eta(pred.cpu(), y.cpu(), eta).to(device=x.device, dtype=x.dtype)

    def objective(z):
        if noise is None:
            ce = F.cross_entropy(model(z), target, reduction="none")
        else:
            ce = -torch.log(soft_smoothed_probs(model, z, noise).gather(1, target[:, None]).squeeze(1) + 1e-10)
        return sign * ce

    def keep(z):
        return (model(z).argmax(1) if noise is None else _votes(model, z, noise)) == pred

    with eval_mode(model, inference=False):
        return pgd(objective, x, eps=eps, norm=norm, steps=steps, step_size=step_size, random_start=random_start,
                   seed=seed, clamp=clamp, keep=keep)
