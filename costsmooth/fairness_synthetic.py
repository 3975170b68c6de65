"""The two-Gaussian study of class-wise robustness disparity (Zhong & Tandon 2024), in seconds on a CPU.

Two Gaussian classes with unequal variances, a linear model trained by natural and PGD training, with and
without ``SameClassMixup``, over several seeds; the class-wise natural and robust errors of a linear model
under Gaussian classes are computed exactly (``linear_classwise_errors``, no test sampling).
``population_optimum()`` gives the same errors at the exact minimiser of the expected (adversarial)
logistic loss, i.e. what the theory predicts for infinitely many training samples. ``costsmooth fairness
--synthetic`` runs it (``costsmooth.fairness``, which re-exports these names).
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from scipy import optimize, stats

from .losses import PGDTraining
from .metrics import format_table
from .mixup import SameClassMixup

__all__ = ["linear_classwise_errors", "synthetic_study", "population_optimum", "format_synthetic",
           "SYNTHETIC_DEFAULTS"]


def linear_classwise_errors(weight: torch.Tensor, bias: torch.Tensor, mu: torch.Tensor, s0: float, s1: float,
                            eps: float, norm: str = "l2") -> Dict[str, List[float]]:
    """Exact class-wise natural and robust error of a two-class linear model under Gaussian classes.

    Model: logits ``weight [2, d] @ x + bias [2]``; class 0 ~ N(+mu, s0^2 I), class 1 ~ N(-mu, s1^2 I).
    With score ``s(x) = w.x + b`` (w, b the differences of the rows; class 0 when s > 0), class 0's
    error is ``Phi(-(w.mu + b) / (s0 ||w||))``; the worst perturbation in the ``norm`` ball of radius
    eps lowers the score by ``eps ||w||_*`` (dual norm: L2 for L2, L1 for Linf), so its robust error is
    ``Phi(-(w.mu + b - eps ||w||_*) / (s0 ||w||))``; symmetrically for class 1. Returns
    ``{"natural": [e0, e1], "robust": [r0, r1]}`` (float64 arithmetic).
    """
    w = (weight[0] - weight[1]).detach().double().cpu()
    b = float((bias[0] - bias[1]).detach().double())
    mu = mu.double().cpu()
    length = float(w.norm())
    dual = length if norm == "l2" else float(w.abs().sum())
    phi = torch.distributions.Normal(0.0, 1.0)
    m0, m1 = float(w @ mu) + b, float(w @ mu) - b  # signed margins of the two class means
    cdf = lambda v: float(phi.cdf(torch.tensor(v, dtype=torch.float64)))
    if length == 0:
        return {"natural": [float(b <= 0), float(b > 0)], "robust": [float(b <= 0), float(b > 0)]}
    return {"natural": [cdf(-m0 / (s0 * length)), cdf(-m1 / (s1 * length))],
            "robust": [cdf(-(m0 - eps * dual) / (s0 * length)), cdf(-(m1 - eps * dual) / (s1 * length))]}


def _synthetic_data(n: int, dim: int, mu: float, s0: float, s1: float, generator: torch.Generator):
    y = torch.arange(2 * n) % 2
    mean = torch.zeros(dim, dtype=torch.float64)
    mean[0] = mu
    scale = torch.where(y == 0, s0, s1).double()[:, None]
    x = torch.randn(2 * n, dim, generator=generator, dtype=torch.float64) * scale + torch.where(y[:, None] == 0,
                                                                                                mean, -mean)
    return x, y, mean


def _train_linear(x, y, *, adversarial: bool, mixup: Optional[float], eps: float, norm: str, steps: int,
                  epochs: int, batch: int, lr: float, seed: int) -> torch.nn.Linear:
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], 2).double()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    # eps = 0 is plain cross-entropy (pgd returns x); sigma is unused without noise=1
    objective = PGDTraining(sigma=1.0, eps=eps if adversarial else 0.0, steps=steps, norm=norm, seed=seed)
    mixer = SameClassMixup(mixup, seed) if mixup else None
    order_gen = torch.Generator().manual_seed(seed + 7919)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=order_gen)
        for start in range(0, x.shape[0], batch):
            xb, yb = x[order[start:start + batch]], y[order[start:start + batch]]
            if mixer is not None:
                xb, yb = mixer(xb, yb)
            loss, _ = objective(model, xb, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model


# The default setting and why: the effect of same-class mixup on a linear model comes from shrinking
# both class variances by the same factor (2/3 in expectation for alpha = 1) while keeping the
# means; the optimal boundary then moves towards the one that equalises the two classes' z-scores.
# The variance ratio s1/s0 = 4 and eps = 0.5 make the disparity of adversarial training large
# (~0.12 in robust error) so that the shift is several times the seed-to-seed spread; 1000 inputs
# per class and 30 epochs of Adam with cosine decay bring the trained model close to the population
# optimum (``population_optimum``: 0.124 without and 0.104 with mixup), which matters: a model
# stopped far from convergence has not yet moved its bias towards either optimum.
SYNTHETIC_DEFAULTS = dict(dim=5, mu=2.0, s0=0.5, s1=2.0, eps=0.5, norm="l2", alpha=1.0, n=1000, epochs=30,
                          batch=200, lr=0.1, steps=3)


def synthetic_study(seeds: Sequence[int] = range(5), trainings: Sequence[str] = ("natural", "adversarial"),
                    **settings) -> Dict[str, object]:
    """The two-Gaussian study of Zhong & Tandon: per seed, draw ``n`` training inputs per class
    (class 0 ~ N(+mu e_1, s0^2 I), class 1 ~ N(-mu e_1, s1^2 I) in ``dim`` dimensions, s1 > s0), train a
    linear model by natural and by PGD training (``losses.PGDTraining``, ``norm`` eps, ``steps``), each
    without and with ``SameClassMixup(alpha)`` on every batch, and compute its exact class-wise
    natural and robust (at eps) errors (``linear_classwise_errors``).

    Settings (keywords) default to ``SYNTHETIC_DEFAULTS``. Returns ``{"settings", "runs": [{training,
    mixup, seed, natural: [e0, e1], robust: [r0, r1], natural_gap, robust_gap}], "summary": [{training,
    mixup, natural: mean per class, robust: ..., natural_gap, robust_gap (means over seeds),
    natural_gap_sd, robust_gap_sd}]}``. For two classes the standard deviation over classes is half
    the gap.
    """
    unknown = set(settings) - set(SYNTHETIC_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown synthetic-study settings {sorted(unknown)}; choose from {sorted(SYNTHETIC_DEFAULTS)}")
    cfg = {**SYNTHETIC_DEFAULTS, **settings}
    if not cfg["s1"] > cfg["s0"] > 0:
        raise ValueError(f"the study needs unequal class spreads s1 > s0 > 0, got s0={cfg['s0']}, s1={cfg['s1']}")
    seeds = list(seeds)
    if not seeds:
        raise ValueError("the synthetic study needs at least one seed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors of a few hundred numbers: more threads only add synchronisation
    try:
        runs = _synthetic_runs(seeds, trainings, cfg)
    finally:
        torch.set_num_threads(threads)
    summary = []
    for training in trainings:
        for mix in (False, True):
            rows = [r for r in runs if r["training"] == training and r["mixup"] == mix]
            summary.append({"training": training, "mixup": mix,
                            "natural": np.mean([r["natural"] for r in rows], 0).tolist(),
                            "robust": np.mean([r["robust"] for r in rows], 0).tolist(),
                            "natural_gap": float(np.mean([r["natural_gap"] for r in rows])),
                            "robust_gap": float(np.mean([r["robust_gap"] for r in rows])),
                            "natural_gap_sd": float(np.std([r["natural_gap"] for r in rows])),
                            "robust_gap_sd": float(np.std([r["robust_gap"] for r in rows]))})
    return {"settings": {**cfg, "seeds": seeds}, "runs": runs, "summary": summary}


def _synthetic_runs(seeds, trainings, cfg) -> List[dict]:
    runs = []
    for seed in seeds:
        x, y, mean = _synthetic_data(cfg["n"], cfg["dim"], cfg["mu"], cfg["s0"], cfg["s1"],
                                     torch.Generator().manual_seed(int(seed)))
        for training in trainings:
            if training not in ("natural", "adversarial"):
                raise ValueError(f"trainings must be 'natural' or 'adversarial', got {training!r}")
            for mix in (None, cfg["alpha"]):
                model = _train_linear(x, y, adversarial=training == "adversarial", mixup=mix, eps=cfg["eps"],
                                      norm=cfg["norm"], steps=cfg["steps"], epochs=cfg["epochs"],
                                      batch=cfg["batch"], lr=cfg["lr"], seed=int(seed))
                err = linear_classwise_errors(model.weight, model.bias, mean, cfg["s0"], cfg["s1"], cfg["eps"],
                                              cfg["norm"])
                runs.append({"training": training, "mixup": mix is not None, "seed": int(seed), **err,
                             "natural_gap": abs(err["natural"][1] - err["natural"][0]),
                             "robust_gap": abs(err["robust"][1] - err["robust"][0])})
    return runs


def population_optimum(adversarial: bool, mixup: Optional[float], **settings) -> Dict[str, object]:
    """Class-wise errors at the exact minimiser of the expected (adversarial) logistic loss of the
    synthetic study, with or without same-class mixup: the study's limit of infinitely many samples.

    Only the direction of the mean matters (isotropic classes), so the problem is one-dimensional:
    ``min_{w, b} E log(1 + exp(-(y (w x + b) - eps |w|)))`` with x ~ N(y mu, s_y^2) for y = +1 (class 0)
    and -1 (class 1), eps = 0 for natural training; a same-class mixture of two such draws is
    ``y mu + s_y sqrt(lam^2 + (1 - lam)^2) z``, lam ~ Beta(alpha, alpha). The expectation is computed by
    Gauss-Hermite (z, 80 nodes) and Gauss-Legendre (lam, 60 nodes) quadrature, the minimum by
    Nelder-Mead. Returns ``{"threshold", "natural": [e0, e1], "robust": [r0, r1]}``.
    """
    cfg = {**SYNTHETIC_DEFAULTS, **settings}
    mu, s0, s1, eps = cfg["mu"], cfg["s0"], cfg["s1"], cfg["eps"]
    e = eps if adversarial else 0.0
    z, zw = np.polynomial.hermite_e.hermegauss(80)
    zw = zw / zw.sum()
    if mixup:
        nodes, lw = np.polynomial.legendre.leggauss(60)
        lam = (nodes + 1) / 2
        lw = lw * stats.beta.pdf(lam, mixup, mixup)
        lw, spread = lw / lw.sum(), np.sqrt(lam ** 2 + (1 - lam) ** 2)
    else:
        spread, lw = np.ones(1), np.ones(1)

    def risk(p):
        w, b = p
        total = 0.0
        for mean, s, sign in ((mu, s0, 1.0), (-mu, s1, -1.0)):
            x = mean + s * spread[:, None] * z[None, :]
            total += (lw[:, None] * zw[None, :] * np.logaddexp(0.0, -(sign * (w * x + b) - e * abs(w)))).sum()
        return total / 2

    w, b = optimize.minimize(risk, [1.0, 0.0], method="Nelder-Mead",
                             options={"xatol": 1e-9, "fatol": 1e-13, "maxiter": 10000}).x
    t = -b / w  # class 0 when x > t
    cdf = stats.norm.cdf
    return {"threshold": float(t), "natural": [float(cdf((t - mu) / s0)), float(cdf(-(t + mu) / s1))],
            "robust": [float(cdf((t + eps - mu) / s0)), float(cdf(-(t - eps + mu) / s1))]}


def format_synthetic(study: Mapping, population: bool = True) -> str:
    """The study's summary table (means over seeds; gap = |error of class 1 - error of class 0|, the
    standard deviation over the two classes is half of it), with the population optimum per row."""
    s = study["settings"]
    rows = []
    for row in study["summary"]:
        out = {"training": row["training"], "mixup": f"alpha={s['alpha']}" if row["mixup"] else "no",
               "nat0": row["natural"][0], "nat1": row["natural"][1], "nat_gap": row["natural_gap"],
               "rob0": row["robust"][0], "rob1": row["robust"][1], "rob_gap": row["robust_gap"],
               "rob_gap_sd": row["robust_gap_sd"]}
        if population:
            pop = population_optimum(row["training"] == "adversarial", s["alpha"] if row["mixup"] else None,
                                     **{k: s[k] for k in SYNTHETIC_DEFAULTS})
            out["pop_rob_gap"] = abs(pop["robust"][1] - pop["robust"][0])
            out["pop_nat_gap"] = abs(pop["natural"][1] - pop["natural"][0])
        rows.append(out)
    cols = ["training", "mixup", "nat0", "nat1", "nat_gap", "rob0", "rob1", "rob_gap", "rob_gap_sd"]
    if population:
        cols += ["pop_nat_gap", "pop_rob_gap"]
    head = (f"Two Gaussian classes in dim {s['dim']}: N(+{s['mu']} e1, {s['s0']}^2 I) and N(-{s['mu']} e1, "
            f"{s['s1']}^2 I), {s['n']} training inputs per class, linear model, Adam lr {s['lr']} cosine, "
            f"{s['epochs']} epochs, batch {s['batch']}; PGD {s['norm']} eps {s['eps']} ({s['steps']} steps); "
            f"exact errors, means over {len(s['seeds'])} seeds (rob_gap_sd: their spread); pop_*: the population "
            f"optimum of the same loss")
    return head + "\n" + format_table(rows, cols)
