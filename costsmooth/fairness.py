"""Class-wise robustness disparity (Zhong & Tandon 2024): reports and the synthetic study.

- ``disparity(values)``: worst class, max-min gap and standard deviation of per-class errors.
- ``classwise_robustness(model, X, y, eps=...)``: per-class natural error and PGD robust error of the
  base model (or of the soft smoothed classifier, ``attack="smoothed"``), from ``costsmooth.attacks``.
- ``fairness_report(model, dataset, sigma, outdir, ...)``: the above plus the class-wise *certified*
  error at radius r (``runs.certify_dataset`` into ``outdir/certify.tsv``, resumable, then
  ``metrics.classwise``); ``format_report`` and ``plot_report`` (three bars per class).
- ``synthetic_study()``, ``population_optimum()``, ``linear_classwise_errors()``, ``format_synthetic()``:
  the two-Gaussian study of same-class mixup, in ``costsmooth.fairness_synthetic`` (re-exported here).
- ``register_cli``: ``costsmooth fairness DATA MODEL`` and ``costsmooth fairness --synthetic``.

Robust errors from PGD are empirical (an upper bound on robust accuracy: a stronger attack can only
raise them); certified errors are certificates at level alpha (``costsmooth.certify``). An input
counts as a robust error when it is misclassified at x or at the attack's x' (x itself lies in the
ball), so robust error >= natural error input by input.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Mapping, Optional

import numpy as np
import torch

from . import metrics
from .analysis import json_safe
from ._checks import check_count, check_float_tensor, check_positive_finite
from .args import (HelpFormatter, UsageError, add_model_args, add_sampling_args, check_data_model_order,
                   model_from_args, positive_float, positive_int, probability, resolve_device)
from .attacks import pgd_attack, smoothed_pgd_attack, soft_smoothed_probs
from .data import load_dataset
from .fairness_synthetic import (SYNTHETIC_DEFAULTS, format_synthetic, linear_classwise_errors, population_optimum,
                                 synthetic_study)
from .losses import NoiseSource
from .metrics import format_table
from .results import load_records, select_indices
from .runs import certify_dataset, probe_num_classes
from .sampling import eval_mode

__all__ = ["disparity", "classwise_robustness", "fairness_report", "format_report", "plot_report",
           "linear_classwise_errors", "synthetic_study", "population_optimum", "format_synthetic", "register_cli",
           "run_title", "SYNTHETIC_DEFAULTS"]

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
