"""Class-wise robustness disparity (Zhong & Tandon 2024): reports and the synthetic study.

- ``disparity(values)``: worst class, max-min gap and standard deviation of per-class errors.
- ``classwise_robustness(model, X, y, eps=...)``: per-class natural error and PGD robust error of the
  base model (or of the soft smoothed classifier, ``attack="smoothed"``), from ``costsmooth.attacks``.
- ``fairness_report(model, dataset, sigma, outdir, ...)``: the above plus the class-wise *certified*
  error at radius r (``runs.certify_dataset`` into ``outdir/certify.tsv``, resumable, then
  ``metrics.classwise``); ``format_report`` and ``plot_report`` (three bars per class).
- ``synthetic_study()``: two Gaussian classes with unequal variances, a linear model trained by
  natural and PGD training, with and without ``SameClassMixup``, over several seeds; the class-wise
  natural and robust errors of a linear model under Gaussian classes are computed exactly (no test
  sampling). ``population_optimum()`` gives the same errors at the exact minimiser of the expected
  (adversarial) logistic loss, i.e. what the theory predicts for infinitely many training samples.
- ``register_cli``: ``costsmooth fairness DATA MODEL`` and ``costsmooth fairness --synthetic``.

Robust errors from PGD are empirical (an upper bound on robust accuracy: a stronger attack can only
raise them); certified errors are certificates at level alpha (``costsmooth.certify``). An input
counts as a robust error when it is misclassified at x or at the attack's x' (x itself lies in the
ball), so robust error >= natural error input by input.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from scipy import optimize, stats

from . import metrics
from .analysis import json_safe
from ._checks import check_count, check_float_tensor, check_positive_finite
from .args import (HelpFormatter, UsageError, add_model_args, add_sampling_args, check_data_model_order,
                   model_from_args, positive_float, positive_int, probability, resolve_device)
from .attacks import pgd_attack, smoothed_pgd_attack, soft_smoothed_probs
from .data import load_dataset
from .losses import NoiseSource, PGDTraining
from .metrics import format_table
from .mixup import SameClassMixup
from .results import load_records, select_indices
from .runs import certify_dataset, probe_num_classes
from .sampling import eval_mode

__all__ = ["disparity", "classwise_robustness", "fairness_report", "format_report", "plot_report",
           "linear_classwise_errors", "synthetic_study", "population_optimum", "format_synthetic", "register_cli"]

_METRICS = (("natural_error", "natural"), ("robust_error", "robust (PGD)"), ("certified_error", "certified"))


def disparity(values: Mapping) -> Dict[str, object]:
    """Spread of per-class errors ``{class: error}`` (NaN entries ignored): the worst class (largest
    error) and its error, the best, the max-min gap, the population standard deviation over classes
    and the mean (``metrics.spread``, as ``metrics.classwise`` uses it for accuracies)."""
    return metrics.spread(values, worst="max")


def _soft_predict(model, x: torch.Tensor, m: int, sigma: float, seed: int, offset: int) -> torch.Tensor:
    source = NoiseSource(seed)
    source.counter = offset
    with torch.no_grad():
        return soft_smoothed_probs(model, x, source.noise(x, m, sigma)).argmax(1)


def classwise_robustness(model, X: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "l2", steps: int = 10,
                         step_size: Optional[float] = None, attack: str = "base", sigma: Optional[float] = None,
                         m: int = 16, seed: int = 0, batch: int = 256,
                         clamp=None) -> Dict[str, object]:
    """Natural and PGD robust error of each class of ``X [N, *shape]`` with labels ``y [N]`` (int).

    ``attack="base"``: the base model ``argmax f``, attacked by ``pgd_attack`` (untargeted, random start
    seeded by ``seed`` and the batch). ``attack="smoothed"``: the soft smoothed classifier
    ``argmax mean_i softmax(f(x + d_i))`` at noise level ``sigma`` with ``m`` draws, attacked by
    ``smoothed_pgd_attack`` (SmoothAdv's objective, noise fixed during the attack) and evaluated with
    independent noise. Returns ``{"per_input": {"natural": bool [N], "robust": bool [N]} (True =
    error), "classes": [{"class", "count", "natural_error", "robust_error"}], "natural_error",
    "robust_error"}`` (overall error rates).
    """
    check_float_tensor(X, "X")
    y = torch.as_tensor(y).long()
    if y.shape != X.shape[:1]:
        raise ValueError(f"labels must have shape [{X.shape[0]}], got {list(y.shape)}")
    if attack not in ("base", "smoothed"):
        raise ValueError(f"attack must be 'base' or 'smoothed', got {attack!r}")
    if attack == "smoothed":
        if sigma is None:
            raise ValueError("attack='smoothed' needs the noise level sigma")
        sigma = check_positive_finite(sigma, "sigma")
        m = check_count(m, "m")
    batch = check_count(batch, "batch")
    device = next((p.device for p in model.parameters()), torch.device("cpu")) if hasattr(model, "parameters") \
        else torch.device("cpu")
    natural, robust = [], []
    with eval_mode(model, inference=False):
        for start in range(0, X.shape[0], batch):
            xb, yb = X[start:start + batch].to(device), y[start:start + batch].to(device)
            bseed = seed * 1000003 + start
            if attack == "base":
                with torch.no_grad():
                    nat = model(xb).argmax(1) != yb
                adv = pgd_attack(model, xb, yb, eps=eps, norm=norm, steps=steps, step_size=step_size, seed=bseed,
                                 clamp=clamp)
                with torch.no_grad():
                    rob = model(adv).argmax(1) != yb
            else:
                # attack noise and evaluation noise come from disjoint index ranges of the training stream
                attack_noise = NoiseSource(seed)
                attack_noise.counter = start
                noise = attack_noise.noise(xb, m, sigma)
                adv = smoothed_pgd_attack(model, xb, yb, noise, eps=eps, norm=norm, steps=steps, step_size=step_size,
                                          seed=bseed, clamp=clamp)
                offset = 2**30 + start
                nat = _soft_predict(model, xb, m, sigma, seed, offset) != yb
                rob = _soft_predict(model, adv, m, sigma, seed, offset + X.shape[0]) != yb
            natural.append(nat.cpu())
            robust.append((rob | nat).cpu())
    natural = torch.cat(natural) if natural else torch.zeros(0, dtype=torch.bool)
    robust = torch.cat(robust) if robust else torch.zeros(0, dtype=torch.bool)
    classes = []
    for c in torch.unique(y).tolist():
        where = y == c
        count = int(where.sum())
        classes.append({"class": int(c), "count": count, "natural_error": int(natural[where].sum()) / count,
                        "robust_error": int(robust[where].sum()) / count})
    total = len(natural)
    return {"per_input": {"natural": natural, "robust": robust}, "classes": classes,
            "natural_error": int(natural.sum()) / total if total else float("nan"),
            "robust_error": int(robust.sum()) / total if total else float("nan")}


def fairness_report(model, dataset, sigma: float, outdir: str, *, eps: float = 0.25, norm: str = "l2",
                    steps: int = 10, step_size: Optional[float] = None, attack: str = "base", m: int = 16,
                    radius: float = 0.25, n0: int = 64, n: int = 1000, alpha: float = 0.001, batch: int = 1000,
                    skip: int = 1, max_index: int = -1, seed: int = 0, device=None, progress: bool = False,
                    meta_extra: Optional[dict] = None) -> Dict[str, object]:
    """Class-wise natural, PGD robust (at ``eps``) and certified (at ``radius``) error of ``model`` on
    ``dataset`` (a ``costsmooth.data.Dataset``), each with its disparity (``disparity``).

    Certification: ``runs.certify_dataset`` at ``sigma`` with (n0, n, alpha, seed) into
    ``outdir/certify.tsv`` (resumable, with its metadata and counts), then ``metrics.classwise`` at
    ``radius``: certified error = 1 - certified accuracy (an abstention is an error). Each input's
    certificate holds with probability >= 1 - alpha (Cohen et al.'s CERTIFY: the n0 selection draws
    pick the class, the n estimation draws bound p_A at level alpha), so a class's certified error
    overstates the smoothed classifier's true error at ``radius`` unless a certificate failed, an
    event of probability <= alpha per input.
    Natural and robust errors come from ``classwise_robustness`` on the same inputs (every
    ``skip``-th index below ``max_index``). Writes ``outdir/fairness.json``; returns the report dict.
    """
    radius = float(radius)
    if not radius >= 0:
        raise ValueError(f"radius must be a number >= 0, got {radius!r}")
    os.makedirs(outdir, exist_ok=True)
    device = torch.device(device) if device is not None else torch.device("cpu")
    model = model.to(device)
    tsv = os.path.join(outdir, "certify.tsv")
    certify_dataset(model, dataset, sigma, tsv, n0=n0, n=n, alpha=alpha, batch=batch, skip=skip,
                    max_index=max_index, seed=seed, device=device, progress=progress,
                    meta_extra={"dataset": dataset.name, **(meta_extra or {})})
    rec = load_records(tsv)
    cert = {row["class"]: row for row in metrics.classwise(rec, radius)["classes"]}
    indices = select_indices(len(dataset), skip, max_index)
    X, y = dataset.take(indices)  # image datasets: only these are decoded
    rob = classwise_robustness(model, X, y, eps=eps, norm=norm, steps=steps, step_size=step_size, attack=attack,
                               sigma=sigma, m=m, seed=seed)
    names = dataset.class_names or None
    classes = []
    for row in rob["classes"]:
        c = row["class"]
        cert_acc = cert[c]["cert_acc"] if c in cert else float("nan")
        classes.append({"class": names[c] if names else c, "count": row["count"], "natural_error": row["natural_error"],
                        "robust_error": row["robust_error"], "certified_error": 1.0 - cert_acc})
    report = {"settings": {"sigma": sigma, "eps": eps, "norm": norm, "steps": steps, "step_size": step_size,
                           "attack": attack, "m": m if attack == "smoothed" else None, "radius": radius, "n0": n0,
                           "n": n, "alpha": alpha, "seed": seed, "skip": skip, "max": max_index,
                           "dataset": dataset.name, **(meta_extra or {})},
              "inputs": len(indices), "classes": classes,
              "overall": {"natural_error": rob["natural_error"], "robust_error": rob["robust_error"],
                          "certified_error": 1.0 - metrics.certified_accuracy(rec, radius)},
              "disparity": {key: disparity({r["class"]: r[key] for r in classes}) for key, _ in _METRICS},
              "files": {"certify": tsv}}
    with open(os.path.join(outdir, "fairness.json"), "w") as f:
        json.dump(json_safe(report), f, indent=1)
    return report


def format_report(report: Mapping) -> str:
    """The per-class table (natural, robust, certified error) and one line of disparity per metric."""
    s = report["settings"]
    lines = [f"Class-wise errors on {report['inputs']} inputs: natural, PGD robust ({s['attack']} classifier, "
             f"{s['norm']} eps {s['eps']}, {s['steps']} steps), certified at r = {s['radius']} "
             f"(sigma {s['sigma']}, n0 {s['n0']}, n {s['n']}, alpha {s['alpha']})",
             format_table(list(report["classes"]) + [{"class": "all", "count": report["inputs"], **report["overall"]}],
                          ["class", "count", "natural_error", "robust_error", "certified_error"],
                          ["class", "count", "natural", "robust", "certified"])]
    for key, label in _METRICS:
        d = report["disparity"][key]
        lines.append(f"{label} error: worst class {d['worst_class']} ({d['worst']:.3f}), max-min gap {d['gap']:.3f}, "
                     f"std {d['std']:.3f}")
    return "\n".join(lines)


def run_title(model_path: str, dataset: str, sigma: float) -> str:
    """A plot title naming the run: a train run's directory for its ``checkpoint.pt`` (the file name
    alone says nothing), else the model file's name; the dataset and sigma."""
    path = os.path.normpath(os.path.abspath(model_path))
    name = os.path.basename(os.path.dirname(path)) if os.path.basename(path) == "checkpoint.pt" else \
        os.path.basename(path)
    return f"{name} on {dataset}, sigma={sigma:g}"


def plot_report(reports: Mapping[str, Mapping], path: str) -> None:
    """Save the per-class natural / robust / certified errors as three bars per class, one panel per
    report (``{title: report}``)."""
    import matplotlib  # heavy: imported only when a plot is drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(reports), 1, figsize=(11, 2.8 * len(reports)), squeeze=False, sharey=True)
    for ax, (title, rep) in zip(axes[:, 0], reports.items()):
        names = [str(r["class"]) for r in rep["classes"]]
        x = np.arange(len(names))
        s = rep["settings"]
        labels = {"natural_error": "natural", "robust_error": f"PGD {s['norm'].upper()} eps={s['eps']}",
                  "certified_error": f"certified r={s['radius']}"}
        for k, (key, _) in enumerate(_METRICS):
            d = rep["disparity"][key]
            ax.bar(x + (k - 1) * 0.27, [r[key] for r in rep["classes"]], 0.27,
                   label=f"{labels[key]} (gap {d['gap']:.2f}, std {d['std']:.2f})")
        ax.set_xticks(x, names)
        ax.set_ylabel("error")
        ax.set_title(title, fontsize=10)
        # beside the bars, never over them
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axes[-1, 0].set_xlabel("class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- the synthetic study ---------------------------------------------------------------------------
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


# -- command line ------------------------------------------------------------------------------------
def register_cli(sub) -> None:
    p = sub.add_parser("fairness", help="class-wise natural, PGD robust and certified error (robustness disparity)",
                       formatter_class=HelpFormatter,
                       description="Per class: natural error, PGD robust error at --eps and certified error at "
                                   "--radius, with the worst class, max-min gap and standard deviation of each; "
                                   "saves a bar plot. --synthetic runs the two-Gaussian study of same-class mixup "
                                   "(Zhong & Tandon 2024) instead, in seconds.")
    p.add_argument("dataset", nargs="?", metavar="DATA", help="digits, breast_cancer, cifar10:ROOT, ... or a .pt file")
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help="checkpoint, state dict (with --arch), TorchScript, or a torch.save'd module (with "
                        "--trust-model-code)")
    p.add_argument("--synthetic", action="store_true", help="run the two-Gaussian study (no DATA or MODEL)")
    p.add_argument("--seeds", type=positive_int, default=5, help="--synthetic: number of seeds")
    p.add_argument("--sigma", type=positive_float, help="noise level of the smoothed classifier (required with MODEL)")
    p.add_argument("--out", help="output directory (certify.tsv, fairness.json, fairness.png; default "
                                 "./fairness_out); --synthetic: where to write synthetic.json")
    p.add_argument("--eps", type=float, default=0.25, help="PGD radius")
    p.add_argument("--norm", default="l2", choices=["l2", "linf"], help="PGD norm")
    p.add_argument("--steps", type=positive_int, default=10, help="PGD steps")
    p.add_argument("--step-size", type=positive_float, help="PGD step size (unset: 2.5 * eps / steps)")
    p.add_argument("--attack", default="base", choices=["base", "smoothed"],
                   help="attack the base model, or the soft smoothed classifier (SmoothAdv's objective)")
    p.add_argument("--m", type=positive_int, default=16, help="--attack smoothed: noise draws per input")
    p.add_argument("--radius", type=float, default=0.25, help="radius of the certified error")
    p.add_argument("--alpha", type=probability, default=0.001, help="failure probability of each certificate")
    add_sampling_args(p, n0=64, n=1000, seed_help="seed of the noise and the attack's random start")
    add_model_args(p)  # --arch --normalize --trust-model-code

    def run(args):
        if args.synthetic:
            if args.model or args.dataset:
                raise UsageError("--synthetic takes no DATA or MODEL: drop them, or drop --synthetic")
            study = synthetic_study(seeds=range(args.seeds))
            print(format_synthetic(study))
            if args.out:
                os.makedirs(args.out, exist_ok=True)
                with open(os.path.join(args.out, "synthetic.json"), "w") as f:
                    json.dump(json_safe(study), f, indent=1)
                print(f"json: {os.path.join(args.out, 'synthetic.json')}")
            return
        if not (args.model and args.dataset):
            raise UsageError("fairness needs DATA and MODEL (or --synthetic for the two-Gaussian study)")
        check_data_model_order("fairness", args.dataset, args.model)
        if args.sigma is None:
            raise UsageError("fairness needs --sigma, the noise level the model is certified at (e.g. --sigma 0.25)")
        if not (args.eps >= 0 and np.isfinite(args.eps)):
            raise UsageError(f"--eps must be a finite number >= 0, got {args.eps}")
        if not (args.radius >= 0 and np.isfinite(args.radius)):
            raise UsageError(f"--radius must be a finite number >= 0, got {args.radius}")
        device = resolve_device(args.device)
        dataset = load_dataset(args.dataset, split=args.split)
        model = model_from_args(args, args.model, args.dataset, dataset)
        probe_num_classes(model.to(device), dataset, device)
        out = args.out or "fairness_out"
        report = fairness_report(model, dataset, args.sigma, out, eps=args.eps, norm=args.norm, steps=args.steps,
                                 step_size=args.step_size, attack=args.attack, m=args.m, radius=args.radius,
                                 n0=args.N0, n=args.N, alpha=args.alpha, batch=args.batch, skip=args.skip,
                                 max_index=args.max, seed=args.seed, device=device, progress=not args.quiet,
                                 meta_extra={"model": os.path.abspath(args.model), "split": args.split})
        print(format_report(report))
        png = os.path.join(out, "fairness.png")
        plot_report({run_title(args.model, dataset.name, args.sigma): report}, png)
        print(f"files: {os.path.join(out, 'certify.tsv')}, {os.path.join(out, 'fairness.json')}, {png}")

    p.set_defaults(func=run)
