"""Adversarial calibration training (ACT, Emde et al.): ``ACTBrier`` and ``ACTECE``.

Both follow the ``costsmooth.losses`` interface (``loss(model, x, y) -> (loss, diagnostics)``, noise from
a ``NoiseSource`` on the training stream, ``state_dict`` for exact resume) and are registered as
``act_brier`` and ``act_ece`` in ``costsmooth.losses.LOSSES`` (``costsmooth train --loss act_brier``).

Per batch, m noise vectors per input are drawn once. The soft smoothed classifier
``p(x') = mean_i softmax(f(x' + d_i))`` predicts ``cA = argmax p(x)`` with correctness ``c = [cA == y]``.
The adversary (``attacks.pgd``, the prediction cA held fixed, eval mode) moves x within
``||x' - x|| <= eps`` to maximise:
- ACTBrier: the top-label Brier score ``(c - p(x')_cA)^2`` of each input;
- ACTECE: the batch ECE objective ``sum_m |S_m|``. With the bin signs ``s_m = sign(S_m)`` at x held fixed,
  it is ``sum_n s_{bin(n)} (c_n - p(x')_cA)``, a per-input objective (the decomposition behind
  ``certified_ece``'s exact "signs" solver).
The training loss is ``CE + lam * calibration term at x'``: CE is Gaussian augmentation's cross-entropy
over the m noisy copies of x (keeps accuracy), the term is the Brier score (ACTBrier) or the
differentiable ECE ``dece`` of the batch (ACTECE) of the soft smoothed classifier at x'.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .._checks import check_count, check_non_negative_finite, check_positive_finite
from ..attacks import norm_name, pgd, soft_smoothed_probs
from ..losses import LOSSES, Loss, check_batch
from ..sampling import eval_mode
from .bounds import bin_index, dece

__all__ = ["ACTBrier", "ACTECE"]


class _ACT(Loss):
    name = "act"
    accepts_grid = False  # the attack moves the inputs off the grid

    def __init__(self, sigma: float, eps: float = 0.25, steps: int = 4, m: int = 4, lam: float = 1.0,
                 norm: str = "l2", step_size: Optional[float] = None, seed: int = 0):
        super().__init__(sigma, seed)
        self.eps = check_non_negative_finite(eps, "eps")
        self.steps, self.m = check_count(steps, "steps"), check_count(m, "m")
        self.lam = check_non_negative_finite(lam, "lam")
        self.norm = norm_name(norm)
        self.step_size = None if step_size is None else check_positive_finite(step_size, "step_size")

    def _adversary(self, model, x, y, noise, start_seed: int):
        """(x', cA [B], c [B] float, clean confidences [B]) -- the adversary runs in eval mode."""
        with eval_mode(model, inference=False):
            with torch.no_grad():
                probs = soft_smoothed_probs(model, x, noise)
            pred = probs.argmax(1)
            correct = (pred == y).to(x.dtype)
            objective = self._objective(pred, correct, probs.gather(1, pred[:, None]).squeeze(1))

            def keep(z):
                return soft_smoothed_probs(model, z, noise).argmax(1) == pred

            def value(z):
                return objective(soft_smoothed_probs(model, z, noise).gather(1, pred[:, None]).squeeze(1))

            x_adv = pgd(value, x, eps=self.eps, norm=self.norm, steps=self.steps, step_size=self.step_size,
                        seed=start_seed, keep=keep) if self.eps > 0 else x
        return x_adv, pred, correct

    def __call__(self, model, x, y):
        check_batch(x, y)
        x = x.detach()
        start_seed = self.noise.counter  # part of the saved state: a resumed run replays the same starts
        noise = self.noise.noise(x, self.m, self.sigma)
        x_adv, pred, correct = self._adversary(model, x, y, noise, start_seed)
        logits = model(x.repeat_interleave(self.m, 0) + noise)
        ce = F.cross_entropy(logits, y.repeat_interleave(self.m))
        z_adv = soft_smoothed_probs(model, x_adv, noise).gather(1, pred[:, None]).squeeze(1)
        term = self._term(z_adv, correct)
        loss = ce + self.lam * term
        return loss, {"ce": float(ce.detach()), self._term_name: float(term.detach()),
                      "acc": float((logits.argmax(1) == y.repeat_interleave(self.m)).float().mean()),
                      "perturbation": float((x_adv - x).flatten(1).norm(dim=1).mean())}


class ACTBrier(_ACT):
    """ACT with a Brier adversary: maximise ``(c - p(x')_cA)^2``; loss ``CE + lam * mean (c - p(x')_cA)^2``.

    Args: sigma (training noise), eps (attack radius, default 0.25), steps (PGD steps, 4), m (noise copies
    per input, 4), lam (weight of the calibration term, 1.0), norm ("l2"/"linf"), step_size (default
    2.5 eps / steps), seed (noise stream seed)."""
    name = "act_brier"
    _term_name = "brier_adv"

    def _objective(self, pred, correct, clean_conf):
        return lambda z: (correct - z) ** 2

    def _term(self, z_adv, correct):
        return ((correct - z_adv) ** 2).mean()


class ACTECE(_ACT):
    """ACT with an ECE adversary: maximise ``sum_n s_{bin(n)} (c_n - p(x')_cA)`` with the bin signs of the clean
    batch; loss ``CE + lam * dece(p(x')_cA, c)`` (soft-binned ECE, ``n_bins`` bins, ``temperature``).
    Other arguments as ``ACTBrier``."""
    name = "act_ece"
    _term_name = "dece_adv"

    def __init__(self, sigma: float, eps: float = 0.25, steps: int = 4, m: int = 4, lam: float = 1.0,
                 norm: str = "l2", step_size: Optional[float] = None, n_bins: int = 10, temperature: float = 0.01,
                 seed: int = 0):
        super().__init__(sigma, eps, steps, m, lam, norm, step_size, seed)
        self.n_bins = check_count(n_bins, "n_bins")
        self.temperature = check_positive_finite(temperature, "temperature")

    def _objective(self, pred, correct, clean_conf):
        z = clean_conf.detach().double().cpu().numpy()
        c = correct.detach().double().cpu().numpy()
        bins = bin_index(z, self.n_bins)
        sums = np.bincount(bins, weights=c - z, minlength=self.n_bins)
        sign = torch.as_tensor(np.where(sums >= 0, 1.0, -1.0)[bins], dtype=clean_conf.dtype,
                               device=clean_conf.device)
        return lambda conf: sign * (correct - conf)

    def _term(self, z_adv, correct):
        return dece(z_adv, correct, self.n_bins, self.temperature)


for _cls in (ACTBrier, ACTECE):
    LOSSES.setdefault(_cls.name, _cls)
