"""Training objectives for smoothed classifiers, usable from any training loop (formulas at each class).

Each loss is a callable object holding its hyper-parameters: ``loss(model, x, y) -> (loss, diagnostics)``
with ``x`` a batch ``[B, *shape]`` in input space, ``y`` int64 labels ``[B]``, the scalar loss
differentiable w.r.t. the model's parameters, and a dict of floats (mean xi, how many inputs each
hinge term used, ...). Noise comes from the engine's training stream (stream 2) through a
``NoiseSource``, whose counter is part of ``state_dict()`` so that resumed training replays exactly.

Notation (one input, k noisy copies with logits z_i): ``g_hat = mean_i softmax(z_i)``,
``g_beta = mean_i softmax(beta * z_i)``; ``Phi^-1`` is ``torch.special.ndtri``. Non-finite xi values are
dropped from hinge terms, never propagated.
"""
from __future__ import annotations

import inspect
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from . import ops
from ._checks import check_count, check_non_negative_finite, check_positive_finite
from .attacks import norm_name, pgd_attack, smoothed_pgd_attack
from .cost import CostMatrix
from .sampling import STREAM_TRAINING

__all__ = ["NoiseSource", "GaussianAugmentation", "GaussianReweighted", "MACER", "CSRSSeedwise", "CSRSPairwise",
           "CSRSSeedwiseReference", "CSRSPairwiseReference", "SmoothAdv", "LOSSES", "COST_SENSITIVE_LOSSES", "make_loss",
           "Loss", "check_batch", "EXTENSION_LOSSES"]

Diagnostics = Dict[str, float]


class NoiseSource:
    """Gaussian noise from the engine's counter-based stream: each draw uses fresh input indices.

    ``draw(x, k, sigma)`` returns ``x.repeat_interleave(k, 0) + sigma * noise`` (differentiable in x).
    ``grid`` (sound mode, ``costsmooth.sound``; None: the standard path): the noise is ``k * grid`` with
    the cell offsets ``k`` drawn exactly from the Gaussian's cell law, and ``draw`` returns the grid
    points ``ops.noisy_batch(x, k, sigma, grid=grid)`` exactly, the inputs the sound certificate's
    ``f o q`` gives the model (x must lie on the grid; the gradient passes to x unchanged).
    """

    def __init__(self, seed: int = 0, stream: int = STREAM_TRAINING, grid: Optional[float] = None):
        self.seed = seed
        self.stream = stream
        self.counter = 0
        self.grid = grid

    def _draw(self, x: torch.Tensor, k: int, sigma, dtype) -> torch.Tensor:
        out = ops.noisy_batch(x, k, sigma, seed=self.seed, stream=self.stream, index_offset=self.counter % 2**31,
                              dtype=dtype, grid=self.grid)
        self.counter += x.shape[0]
        return out

    def noise(self, x: torch.Tensor, k: int, sigma) -> torch.Tensor:
        """``[B * k, *shape]`` noise; sigma a number or a ``[B]`` tensor (input-dependent sigma)."""
        return self._draw(torch.zeros_like(x, dtype=torch.float32), k, sigma, x.dtype)

    def draw(self, x: torch.Tensor, k: int, sigma) -> torch.Tensor:
        rows = x.repeat_interleave(k, dim=0)
        if self.grid is None:
            return rows + self.noise(x.detach(), k, sigma)
        return self._draw(x.detach(), k, sigma, x.dtype) + (rows - rows.detach())  # the grid points, exactly

    def state_dict(self) -> dict:
        return {"seed": self.seed, "stream": self.stream, "counter": self.counter}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.stream, self.counter = state["seed"], state["stream"], state["counter"]


def check_batch(x: torch.Tensor, y: torch.Tensor, num_classes: Optional[int] = None) -> None:
    """Refuse labels ``y`` that are not one per input of ``x`` or (given ``num_classes``) outside [0, num_classes)."""
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have shape [{x.shape[0]}], got {list(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or (num_classes is not None and int(y.max()) >= num_classes)):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {int(y.min())}..{int(y.max())}")


class Loss:
    """Base of the training losses: ``loss(model, x, y)`` returns ``(scalar to minimise, diagnostics dict)``,
    drawing its noise from a resumable ``NoiseSource(seed)``; subclasses set ``name`` and are listed in ``LOSSES``."""
    name = "loss"
    accepts_sigma_fn = False  # Gaussian and CS-RS losses also take an input-dependent sigma function
    # Sound mode (NoiseSource.grid) draws grid points of the inputs it is given: losses that draw noise
    # only at the clean inputs take it; those that attack the inputs first (off the grid) do not.
    accepts_grid = True

    def __init__(self, sigma, seed: int = 0):
        if callable(sigma) and not self.accepts_sigma_fn:
            raise TypeError(f"the {self.name} loss takes a number sigma; input-dependent sigma functions work with "
                            f"the gaussian, cs_rs and cs_rs_pairwise losses")
        # sigma: a number, or an input-dependent sigma function [B, *shape] -> [B] (costsmooth.input_dependent)
        self.sigma = sigma if callable(sigma) else check_positive_finite(sigma, "sigma")
        self.noise = NoiseSource(seed)

    def _sigma_of(self, x: torch.Tensor):
        """The batch's noise level: the number, or the sigma function evaluated on ``x`` (``[B]``, no grad)."""
        if not callable(self.sigma):
            return self.sigma
        with torch.no_grad():
            return self.sigma(x.detach())

    @staticmethod
    def _scale(sigma) -> float:
        """sigma in the hinge weight ``lambda * sigma / 2``: the batch mean for a per-input sigma."""
        return float(sigma.mean()) if isinstance(sigma, torch.Tensor) else sigma

    def state_dict(self) -> dict:
        return {"noise": self.noise.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.noise.load_state_dict(state["noise"])

    def __repr__(self) -> str:
        params = {k: v for k, v in vars(self).items() if k not in ("noise", "cost") and not k.startswith("_")}
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in params.items())})"


class GaussianAugmentation(Loss):
    """Cohen et al. 2019: cross-entropy on ``x + N(0, sigma^2 I)``, one draw per input and step.

    ``sigma`` may be an input-dependent sigma function (``costsmooth.input_dependent.KNNSigma``): each
    input's noise is then drawn at ``sigma(x)``."""
    name = "gaussian"
    accepts_sigma_fn = True

    def __call__(self, model, x, y) -> Tuple[torch.Tensor, Diagnostics]:
        check_batch(x, y)
        logits = model(self.noise.draw(x, 1, self._sigma_of(x)))
        loss = F.cross_entropy(logits, y)
        return loss, {"ce": float(loss.detach()), "acc": float((logits.argmax(1) == y).float().mean())}


def _seed_mask(cost: CostMatrix, y: torch.Tensor) -> torch.Tensor:
    seeds = torch.tensor(cost.seed_classes, device=y.device)
    return torch.isin(y, seeds)


def _check_cost(cost, model_out: torch.Tensor) -> None:
    if not isinstance(cost, CostMatrix):
        raise TypeError(f"cost must be a costsmooth.CostMatrix, got {type(cost).__name__}")
    cost.check_num_classes(model_out.shape[-1])


class GaussianReweighted(Loss):
    """Gaussian-R (baseline of Xin et al.): ``CE(all) + w * CE(seed-class inputs)``; an empty seed subset adds 0."""
    name = "gaussian_r"

    def __init__(self, sigma: float, cost: CostMatrix, w: float = 0.1, seed: int = 0):
        super().__init__(sigma, seed)
        self.cost, self.w = cost, float(w)

    def __call__(self, model, x, y):
        check_batch(x, y, self.cost.num_classes)
        logits = model(self.noise.draw(x, 1, self.sigma))
        _check_cost(self.cost, logits)
        per = F.cross_entropy(logits, y, reduction="none")
        seed = _seed_mask(self.cost, y)
        seed_term = per[seed].mean() if seed.any() else per.sum() * 0.0
        loss = per.mean() + self.w * seed_term
        return loss, {"ce": float(per.mean().detach()), "seed_ce": float(seed_term.detach()),
                      "seed_inputs": float(seed.sum())}


def _smoothed_probs(model, noise: NoiseSource, x, k: int, sigma: float, beta: float):
    """(g_hat, g_beta, logits) for k noisy copies per input: [B, C], [B, C], [B, k, C]."""
    logits = model(noise.draw(x, k, sigma)).view(x.shape[0], k, -1)
    g_hat = logits.softmax(-1).mean(1)
    g_beta = (beta * logits).softmax(-1).mean(1)
    return g_hat, g_beta, logits


def _margin(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Phi^-1(first) - Phi^-1(second), in float64 (for selecting inputs; no gradient needed)."""
    return torch.special.ndtri(first.double()) - torch.special.ndtri(second.double())


def _clamped_margin(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Phi^-1(first) - Phi^-1(second) with both probabilities clamped to [eps, 1 - eps] in their own dtype
    (eps its machine epsilon) before the float64 Phi^-1: the derivative of Phi^-1 is then at most
    ~1/phi(Phi^-1(eps)) (about 1e6 in float32), so the gradient stays finite for any finite logits.
    A probability outside the band (a float32 denormal, say) gets no gradient through this term."""
    eps = torch.finfo(first.dtype).eps
    return _margin(first.clamp(eps, 1 - eps), second.clamp(eps, 1 - eps))


def _hinge(gamma: float, first: torch.Tensor, second: torch.Tensor, select) -> Tuple[torch.Tensor, int, torch.Tensor]:
    """sum of (gamma - xi) over inputs where ``select(xi)`` holds and xi is finite, xi = _margin(first, second).

    The selection is made without gradient on the exact xi; the value (and gradient) is computed on
    the selected inputs only, with the probabilities clamped away from 0 and 1 (``_clamped_margin``),
    so neither 0 * inf nor an overflowing derivative of Phi^-1 can make the loss or its gradient NaN.
    Returns (sum, inputs used, xi of all inputs without gradient).
    """
    with torch.no_grad():
        xi_all = _margin(first, second)
        use = select(xi_all) & torch.isfinite(xi_all)
    if not bool(use.any()):
        return first.sum() * 0.0, 0, xi_all
    return (gamma - _clamped_margin(first[use], second[use])).sum().to(first.dtype), int(use.sum()), xi_all


def _mean_finite(xi: torch.Tensor) -> float:
    finite = torch.isfinite(xi)
    return float(xi[finite].mean()) if finite.any() else float("nan")


def _runner_up(g_beta: torch.Tensor, exclude: torch.Tensor) -> torch.Tensor:
    """max over classes other than ``exclude`` [B] of g_beta."""
    return g_beta.masked_fill(F.one_hot(exclude, g_beta.shape[1]).bool(), -1.0).max(1).values


class MACER(Loss):
    """Zhai et al. 2020: ``[sum -log(g_hat_y + 1e-10) + lambda * sigma/2 * sum_{correct, xi <= gamma} (gamma - xi)] / B``
    with ``xi = Phi^-1(p1) - Phi^-1(p2)`` for the top two of g_beta."""
    name = "macer"

    def __init__(self, sigma: float, k: int = 16, beta: float = 16.0, gamma: float = 8.0, lam: float = 12.0,
                 seed: int = 0):
        super().__init__(sigma, seed)
        self.k, self.beta, self.gamma, self.lam = check_count(k, "k"), float(beta), float(gamma), float(lam)

    def __call__(self, model, x, y):
        check_batch(x, y)
        g_hat, g_beta, _ = _smoothed_probs(model, self.noise, x, self.k, self.sigma, self.beta)
        ce = -torch.log(g_hat.gather(1, y[:, None]).squeeze(1) + 1e-10)
        top2 = g_beta.topk(2, dim=1).values
        correct = g_beta.argmax(1) == y
        hinge, used, xi = _hinge(self.gamma, top2[:, 0], top2[:, 1], lambda xi: correct & (xi <= self.gamma))
        loss = (ce.sum() + self.lam * self.sigma / 2 * hinge) / x.shape[0]
        return loss, {"ce": float(ce.mean().detach()), "hinge_inputs": float(used), "mean_xi": _mean_finite(xi)}


class CSRSSeedwise(Loss):
    """Xin et al.'s CS-RS (seedwise): ``xi = Phi^-1(g_beta_y) - Phi^-1(max_{c != y} g_beta_c)``.

    Seed-class inputs with ``|xi| < gamma1`` add ``gamma1 - xi`` (misclassified ones included, pushing
    them back); other inputs with ``0 < xi < gamma2`` add ``gamma2 - xi``.
    ``L = [sum CE + lambda1 * sigma/2 * (sum_seed + sum_other)] / B``, CE = ``-log(g_hat_y + 1e-10)``.
    ``window="correct"`` applies the seed hinge only where ``0 < xi < gamma1`` (misclassified seed inputs
    are left to the cross-entropy). ``anchor`` matters only for the pairwise loss (seedwise, the label and
    the top class give the same term). With an input-dependent sigma function, each input's noise is drawn
    at ``sigma(x)`` and the hinge weight uses the batch mean of sigma. Measured on digits and wine
    (docs/cs_rs.md), fine-tuning a Gaussian-trained model (``costsmooth train --init``) keeps its
    accuracy where training from scratch with the seed term loses 1.6 to 2 points; when fine-tuning,
    the default lambda1 = 6 (the paper's 3 is kept by ``cs_rs_reference``) certifies more seed inputs
    than lambda1 = 3 at the same accuracy.
    """
    name = "cs_rs"
    accepts_sigma_fn = True

    def __init__(self, sigma: float, cost: CostMatrix, k: int = 16, beta: float = 16.0, gamma1: float = 16.0,
                 gamma2: float = 4.0, lambda1: float = 6.0, window: str = "both", anchor: str = "label",
                 seed: int = 0):
        super().__init__(sigma, seed)
        self.cost, self.k, self.beta = cost, check_count(k, "k"), float(beta)
        self.gamma1, self.gamma2, self.lambda1 = float(gamma1), float(gamma2), float(lambda1)
        if window not in ("both", "correct"):
            raise ValueError(f"window must be 'both' (|xi| < gamma1) or 'correct' (0 < xi < gamma1), got {window!r}")
        if anchor not in ("label", "top"):
            raise ValueError(f"anchor must be 'label' or 'top', got {anchor!r}")
        self.window, self.anchor = window, anchor

    def _seed_select(self, seed):
        if self.window == "both":
            return lambda xi: seed & (xi.abs() < self.gamma1)
        return lambda xi: seed & (xi > 0) & (xi < self.gamma1)

    def _terms(self, model, x, y):
        check_batch(x, y, self.cost.num_classes)
        sigma = self._sigma_of(x)
        self._batch_sigma = self._scale(sigma)  # the hinge weight's sigma for this batch
        g_hat, g_beta, logits = _smoothed_probs(model, self.noise, x, self.k, sigma, self.beta)
        _check_cost(self.cost, logits)
        ce = -torch.log(g_hat.gather(1, y[:, None]).squeeze(1) + 1e-10)
        p_y = g_beta.gather(1, y[:, None]).squeeze(1)
        return ce, g_beta, p_y, _runner_up(g_beta, y), _seed_mask(self.cost, y)

    def __call__(self, model, x, y):
        ce, _, p_y, p_other, seed = self._terms(model, x, y)
        seed_sum, seed_used, xi = _hinge(self.gamma1, p_y, p_other, self._seed_select(seed))
        other_sum, other_used, _ = _hinge(self.gamma2, p_y, p_other, lambda xi: ~seed & (xi > 0) & (xi < self.gamma2))
        loss = (ce.sum() + self.lambda1 * self._batch_sigma / 2 * (seed_sum + other_sum)) / x.shape[0]
        return loss, {"ce": float(ce.mean().detach()), "seed_hinge_inputs": float(seed_used),
                      "other_hinge_inputs": float(other_used), "mean_xi": _mean_finite(xi)}


class CSRSPairwise(CSRSSeedwise):
    """CS-RS (pairwise): seed inputs use ``xi_cs = Phi^-1(p) - Phi^-1(max_{j in Omega_y} g_beta_j)``
    with the hinge ``gamma1 - xi_cs`` on ``|xi_cs| < gamma1``. ``anchor="label"``: p is the label's
    g_beta_y. ``anchor="top"`` (Xin et al.): p is the largest g_beta, or the label's when the top class is
    itself a target (so the term keeps a gradient). All inputs also get the MACER-style term
    ``gamma2 - xi`` on correct inputs with ``xi < gamma2``."""
    name = "cs_rs_pairwise"

    def __call__(self, model, x, y):
        ce, g_beta, p_y, p_other, seed = self._terms(model, x, y)
        target_mask = torch.as_tensor(self.cost.matrix > 0, device=y.device)[y]  # [B, C]: Omega_y
        p_target = g_beta.masked_fill(~target_mask, -1.0).max(1).values.clamp_min(0.0)
        if self.anchor == "top":
            top_val, top_idx = g_beta.max(1)
            top_is_target = target_mask.gather(1, top_idx[:, None]).squeeze(1)
            p_top = torch.where(top_is_target, p_y, top_val)
        else:
            p_top = p_y
        seed_sum, seed_used, _ = _hinge(self.gamma1, p_top, p_target, self._seed_select(seed))
        std_sum, std_used, _ = _hinge(self.gamma2, p_y, p_other, lambda xi: (xi > 0) & (xi < self.gamma2))
        loss = (ce.sum() + self.lambda1 * self._batch_sigma / 2 * (seed_sum + std_sum)) / x.shape[0]
        return loss, {"ce": float(ce.mean().detach()), "seed_hinge_inputs": float(seed_used),
                      "other_hinge_inputs": float(std_used)}


class CSRSSeedwiseReference(CSRSSeedwise):
    """Xin et al.'s seedwise objective with the paper's settings (gamma1 = 16, gamma2 = 4, lambda1 = 3,
    the two-sided seed window ``|xi| < gamma1``), kept by name beside the ``cs_rs`` default."""
    name = "cs_rs_reference"

    def __init__(self, sigma: float, cost: CostMatrix, k: int = 16, beta: float = 16.0, gamma1: float = 16.0,
                 gamma2: float = 4.0, lambda1: float = 3.0, window: str = "both", seed: int = 0):
        super().__init__(sigma, cost, k=k, beta=beta, gamma1=gamma1, gamma2=gamma2, lambda1=lambda1, window=window,
                         anchor="top", seed=seed)


class CSRSPairwiseReference(CSRSPairwise):
    """Xin et al.'s pairwise objective: the seed term anchored on the top class (``anchor="top"``), the
    paper's settings (gamma1 = 16, gamma2 = 4, lambda1 = 3, ``|xi_cs| < gamma1``), kept by name beside
    the ``cs_rs_pairwise`` default. Its seed term rewards moving a seed input to a harmless class."""
    name = "cs_rs_pairwise_reference"

    def __init__(self, sigma: float, cost: CostMatrix, k: int = 16, beta: float = 16.0, gamma1: float = 16.0,
                 gamma2: float = 4.0, lambda1: float = 3.0, window: str = "both", anchor: str = "top",
                 seed: int = 0):
        super().__init__(sigma, cost, k=k, beta=beta, gamma1=gamma1, gamma2=gamma2, lambda1=lambda1, window=window,
                         anchor=anchor, seed=seed)


class SmoothAdv(Loss):
    """Salman et al. 2019: L2 PGD on the soft smoothed classifier, then cross-entropy on x' + d_i.

    Per input, m noise vectors d_i are drawn once; T steps of normalised-gradient ascent of size
    2 * eps / T on ``-log(mean_i softmax(f(x' + d_i))_y)`` with projection onto ``||x' - x|| <= eps``,
    the same noise at every step. Set ``eps`` per epoch to ramp it up (``costsmooth train`` does).
    """
    name = "smoothadv"
    accepts_grid = False

    def __init__(self, sigma: float, eps: float = 0.25, steps: int = 2, m: int = 2, seed: int = 0):
        super().__init__(sigma, seed)
        self.eps, self.steps, self.m = float(eps), check_count(steps, "steps"), check_count(m, "m")

    def attack(self, model, x, y, noise):
        """x' for fixed noise ``[B * m, *shape]``: ``costsmooth.attacks.smoothed_pgd_attack`` from x itself."""
        if self.eps <= 0:
            return x.detach()
        return smoothed_pgd_attack(model, x, y, noise, eps=self.eps, norm="l2", steps=self.steps,
                                   step_size=2 * self.eps / self.steps, random_start=False)

    def __call__(self, model, x, y):
        check_batch(x, y)
        noise = self.noise.noise(x.detach(), self.m, self.sigma)
        x_adv = self.attack(model, x.detach(), y, noise)
        logits = model(x_adv.repeat_interleave(self.m, 0) + noise)
        loss = F.cross_entropy(logits, y.repeat_interleave(self.m))
        return loss, {"ce": float(loss.detach()), "eps": self.eps,
                      "perturbation": float((x_adv - x).flatten(1).norm(dim=1).mean())}


LOSSES = {cls.name: cls for cls in (GaussianAugmentation, GaussianReweighted, MACER, CSRSSeedwise, CSRSPairwise,
                                    CSRSSeedwiseReference, CSRSPairwiseReference, SmoothAdv)}


class PGDTraining(Loss):
    """Adversarial training of the base model (Madry et al. 2018): cross-entropy on ``x'``, the PGD
    maximiser of the base model's cross-entropy over ``||x' - x||_norm <= eps`` (``costsmooth.attacks.pgd_attack``:
    ``steps`` projected steps of ``step_size``, default ``2.5 * eps / steps``, from a random start).

    ``norm``: "l2"/"linf" (or 2 / inf, as ``--loss-arg norm=inf`` passes it). ``noise=1`` adds one
    Gaussian draw at ``sigma`` to ``x'`` before the cross-entropy (adversarial + Gaussian training
    for smoothing); with ``noise=0`` (default) sigma is unused. The random start of call t is seeded
    by (seed, t), the call counter saved in ``state_dict()``. ``eps`` can be ramped per epoch
    (``costsmooth train`` does, as for SmoothAdv). With ``costsmooth train --mixup A`` the attack runs
    on the same-class mixtures (Zhong & Tandon 2024).
    """
    name = "pgd"
    accepts_grid = False

    def __init__(self, sigma: float, eps: float = 0.25, steps: int = 7, step_size: Optional[float] = None,
                 norm="l2", noise: int = 0, seed: int = 0):
        super().__init__(sigma, seed)
        self.eps = check_non_negative_finite(eps, "eps")
        self.steps = check_count(steps, "steps")
        self.step_size = None if step_size is None else check_positive_finite(step_size, "step_size")
        self.norm = norm_name(norm)
        if noise not in (0, 1):
            raise ValueError(f"noise must be 0 (plain adversarial training) or 1 (add Gaussian noise), got {noise!r}")
        self.use_noise = bool(noise)
        self._calls = 0

    def __call__(self, model, x, y):
        check_batch(x, y)
        x_adv = pgd_attack(model, x.detach(), y, eps=self.eps, norm=self.norm, steps=self.steps,
                           step_size=self.step_size if self.eps > 0 else None,
                           seed=(self.noise.seed * 1000003 + self._calls) % 2**63)
        self._calls += 1
        inputs = self.noise.draw(x_adv, 1, self.sigma) if self.use_noise else x_adv
        logits = model(inputs)
        loss = F.cross_entropy(logits, y)
        return loss, {"ce": float(loss.detach()), "acc": float((logits.argmax(1) == y).float().mean()),
                      "eps": self.eps}

    def state_dict(self) -> dict:
        return {**super().state_dict(), "calls": self._calls}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._calls = int(state.get("calls", 0))


LOSSES[PGDTraining.name] = PGDTraining
__all__.append("PGDTraining")
# the losses that take a cost matrix (make_loss refuses them without one)
COST_SENSITIVE_LOSSES = {"gaussian_r", "cs_rs", "cs_rs_pairwise", "cs_rs_reference", "cs_rs_pairwise_reference"}
# Losses defined in modules built on this one: they import it and add their classes to LOSSES when they are
# imported (``costsmooth.train`` imports them, so every command and ``train()`` know them). name -> module.
EXTENSION_LOSSES = {"act_brier": "costsmooth.calibration", "act_ece": "costsmooth.calibration"}


def make_loss(name: str, sigma: float, cost: Optional[CostMatrix] = None, seed: int = 0, **kwargs):
    """A loss by name (``LOSSES``); the cost-sensitive ones need ``cost``. The losses of a module built on
    this one (``EXTENSION_LOSSES``: ``act_brier``, ``act_ece`` of ``costsmooth.calibration``) are known once
    that module (or ``costsmooth.train``) is imported."""
    if name not in LOSSES and name in EXTENSION_LOSSES:
        raise ValueError(f"loss {name!r} is defined in {EXTENSION_LOSSES[name]}: import {EXTENSION_LOSSES[name]} "
                         f"(or costsmooth.train) first, which registers it")
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    accepted = [k for k in inspect.signature(LOSSES[name].__init__).parameters if k not in ("self", "sigma", "cost", "seed")]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(f"loss {name!r} has no hyper-parameter {unknown[0]!r}; it takes {', '.join(accepted) or 'none'}")
    if name in COST_SENSITIVE_LOSSES:
        if cost is None:
            raise ValueError(f"loss {name!r} needs a cost matrix (--cost or --seed-classes)")
        return LOSSES[name](sigma, cost, seed=seed, **kwargs)
    return LOSSES[name](sigma, seed=seed, **kwargs)
