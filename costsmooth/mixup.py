"""Same-class mixup (Zhong & Tandon 2024): a batch transform for any training loss.

``x_mixed, y = SameClassMixup(alpha)(x, y)`` replaces each input by ``lam * x_i + (1 - lam) * x_j``
with ``x_j`` an input of the *same* class in the batch and ``lam ~ Beta(alpha, alpha)`` per input;
labels are unchanged. Mixing two inputs of one class shrinks the spread of that class in input
space (for two independent draws of ``N(mu, s^2 I)``, the mixture has variance
``(lam^2 + (1 - lam)^2) s^2``, on average ``(1 - alpha / (2 alpha + 1)) s^2``, i.e. 2/3 for
alpha = 1) without moving its mean; for linear models this provably shrinks the class-wise
disparity of (robust) error, and it is the input of adversarial (``--loss pgd``), Gaussian-noise
and CS-RS training alike (``costsmooth train --mixup ALPHA``).

Pairs: within each class the batch's members are put in a random order and each is mixed with the
next one in that order (cyclically), so every member of a class with two or more members gets a
partner other than itself and no input is ever mixed with another class. A class with one member
in the batch is left as is (bit for bit).

Randomness: the pairs and the ``lam`` of call t come from ``numpy.random.default_rng((seed, t))``;
the call counter is the whole state (``state_dict()``), so resumed training replays exactly, like
the training noise (``costsmooth.losses.NoiseSource``).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

from ._checks import check_float_tensor, check_positive_finite

__all__ = ["SameClassMixup"]


class SameClassMixup:
    """Mix each input with another input of the same class in the batch.

    Args:
        alpha: parameter of the symmetric ``Beta(alpha, alpha)`` law of the mixing weight ``lam``
            (alpha = 1: uniform on [0, 1]; small alpha: lam near 0 or 1, little mixing).
        seed: seed of the pairs and weights (training uses the run's seed).

    ``mixer(x, y)`` takes ``x`` ``[B, *shape]`` (floating point, any device) and integer labels ``[B]``
    and returns ``(x_mixed, y)``: ``x_mixed`` has x's shape, dtype and device, ``y`` is the labels
    tensor itself. Gradients flow to x (the weights are constants).
    """

    def __init__(self, alpha: float = 1.0, seed: int = 0):
        self.alpha = check_positive_finite(alpha, "mixup alpha")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"mixup seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self.step = 0

    def draw(self, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """The partners and weights of the next call for labels ``y [B]``, advancing the counter.

        Returns ``partner`` (int64 ``[B]``, on the CPU: the batch position each input is mixed with;
        ``y[partner] == y`` always, ``partner[i] == i`` exactly for inputs alone in their class) and
        ``lam`` (float64 ``[B]``, ``Beta(alpha, alpha)`` draws; 1.0 where ``partner[i] == i``).
        """
        if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(f"mixup needs integer class labels of shape [B], got "
                             f"{getattr(y, 'dtype', type(y).__name__)} of shape {list(getattr(y, 'shape', []))}")
        labels = y.detach().cpu().numpy().astype(np.int64)
        rng = np.random.default_rng((self.seed, self.step))
        self.step += 1
        b = labels.shape[0]
        if b == 0:
            return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)
        order = np.lexsort((rng.random(b), labels))  # grouped by class, random order within each class
        grouped = labels[order]
        starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
        ends = np.r_[starts[1:], b]
        nxt = np.arange(1, b + 1)
        nxt[ends - 1] = starts  # the last member of each class pairs with the first (a cycle per class)
        partner = np.empty(b, dtype=np.int64)
        partner[order] = order[nxt]
        lam = rng.beta(self.alpha, self.alpha, size=b)
        lam[partner == np.arange(b)] = 1.0
        return torch.from_numpy(partner), torch.from_numpy(lam)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        check_float_tensor(x, "x")
        if y.shape[:1] != x.shape[:1]:
            raise ValueError(f"mixup needs one label per input: x has {x.shape[0]} inputs, labels have shape "
                             f"{list(y.shape)}")
        partner, lam = self.draw(y)
        alone = partner == torch.arange(partner.shape[0])
        if bool(alone.all()):
            return x, y
        lam_x = lam.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.dim() - 1)))
        mixed = lam_x * x + (1 - lam_x) * x[partner.to(x.device)]
        keep = alone.to(x.device).view(-1, *([1] * (x.dim() - 1)))
        return torch.where(keep, x, mixed), y

    def state_dict(self) -> dict:
        return {"alpha": self.alpha, "seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if float(state["alpha"]) != self.alpha:
            raise ValueError(f"the saved mixup state has alpha {state['alpha']}, this mixup {self.alpha}")
        self.seed, self.step = int(state["seed"]), int(state["step"])

    def __repr__(self) -> str:
        return f"SameClassMixup(alpha={self.alpha}, seed={self.seed})"
