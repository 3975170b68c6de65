"""The ``costsmooth`` command line: certify, recertify, analyze, train, demo, info."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

import numpy as np
import torch

from .cost import CostMatrix

__all__ = ["main", "parse_cost"]


def _ham10000_cost():
    from .data import ham10000_cost_matrix
    return ham10000_cost_matrix()


COST_PRESETS = {"ham10000": _ham10000_cost}  # malignant lesion predicted benign is harmful


def add_cost_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cost matrix (cost-sensitive certificates)")
    g.add_argument("--cost", help="cost matrix file (CSV, JSON or .npy), or a preset: " + ", ".join(COST_PRESETS))
    g.add_argument("--seed-classes", help="comma-separated seed classes (with --targets: pairwise, else seedwise)")
    g.add_argument("--targets", help="comma-separated target classes of every seed class")


def _int_list(text: str, what: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: {what} must be comma-separated class indices, got {text!r}")


def parse_cost(args, num_classes: int) -> Optional[CostMatrix]:
    """The cost matrix named by --cost or --seed-classes/--targets, checked against num_classes."""
    if args.cost and args.seed_classes:
        raise SystemExit("error: give either --cost or --seed-classes, not both")
    if args.cost in COST_PRESETS and not os.path.exists(args.cost):
        cost = COST_PRESETS[args.cost]()
        cost.check_num_classes(num_classes)
        return cost
    if args.cost:
        return CostMatrix.from_file(args.cost, num_classes)
    if args.seed_classes:
        seeds = _int_list(args.seed_classes, "--seed-classes")
        if args.targets:
            targets = _int_list(args.targets, "--targets")
            return CostMatrix.pairwise(num_classes, {s: [t for t in targets if t != s] for s in seeds})
        return CostMatrix.seedwise(num_classes, seeds)
    if args.targets:
        raise SystemExit("error: --targets needs --seed-classes")
    return None


def resolve_device(name: Optional[str]) -> torch.device:
    if name:
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit(f"error: --device {name} requested but no CUDA device is available")
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def certify_dataset(model, dataset, sigma: float, outfile: str, *, n0: int = 100, n: int = 100000,
                    alpha: float = 0.001, batch: int = 1000, skip: int = 1, max_index: int = -1,
                    cost: Optional[CostMatrix] = None, seed: int = 0, device=None, meta_extra=None,
                    progress: bool = True, autocast: Optional[torch.dtype] = None, channels_last: bool = False,
                    cuda_graphs: bool = False) -> str:
    """Certify ``dataset`` (a ``costsmooth.data.Dataset``) into ``outfile``, resuming a previous run.

    Inputs are dataset indices ``i`` with ``i % skip == 0`` and ``i < max_index`` (when >= 0), as in
    Cohen et al.'s certify.py. Each input's noise depends on (seed, i) only. autocast, channels_last
    and cuda_graphs are passed to ``Smooth`` (the precision is recorded in the metadata).
    """
    from tqdm import tqdm

    from . import __version__
    from .results import ResultWriter
    from .sampling import resolve_batch_size
    from .smooth import Smooth

    device = torch.device(device) if device is not None else torch.device("cpu")
    model = model.to(device)
    with torch.inference_mode():
        was_training = model.training
        model.eval()
        num_classes = int(model(dataset.inputs[:1].to(device)).shape[1])
        model.train(was_training)
    if num_classes != dataset.num_classes and dataset.num_classes:
        raise ValueError(f"the model has {num_classes} outputs but the dataset {dataset.name} has "
                         f"{dataset.num_classes} classes")
    if cost is not None:
        cost.check_num_classes(num_classes)
    meta = {"sigma": sigma, "n0": n0, "n": n, "alpha": alpha, "seed": seed, "skip": skip, "max": max_index,
            "num_classes": num_classes, "cost": cost.to_json() if cost is not None else None,
            "class_names": dataset.class_names, "version": __version__,
            "precision": str(autocast).replace("torch.", "") if autocast is not None else "float32",
            **(meta_extra or {})}
    writer = ResultWriter(outfile, meta)
    indices = [i for i in range(len(dataset)) if i % skip == 0 and (max_index < 0 or i < max_index)]
    todo = [i for i in indices if i not in writer.done]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    smooth = Smooth(model, num_classes, sigma, batch_size=batch, seed=seed, device=device, autocast=autocast,
                    channels_last=channels_last, cuda_graphs=cuda_graphs)
    chunk = max(1, resolve_batch_size(batch, device) // max(n, 1))
    bar = tqdm(total=len(indices), initial=len(indices) - len(todo), unit="input", disable=not progress,
               desc=os.path.basename(outfile), dynamic_ncols=True)
    for start in range(0, len(todo), chunk):
        ids = todo[start:start + chunk]
        t0 = time.perf_counter()
        certs = smooth.certify_batch(dataset.inputs[ids], dataset.labels[ids].tolist(), cost, n0=n0, n=n, alpha=alpha,
                                     indices=ids)
        seconds = (time.perf_counter() - t0) / len(ids)
        for i, cert in zip(ids, certs):
            writer.write(i, cert, seconds)
        bar.update(len(ids))
    bar.close()
    writer.close()
    return outfile


def cmd_certify(args) -> None:
    from .data import load_dataset
    from .models import load_model

    dataset = load_dataset(args.dataset, split=args.split)
    model = load_model(args.model)
    device = resolve_device(args.device)
    num_classes = dataset.num_classes
    cost = parse_cost(args, num_classes)
    certify_dataset(model, dataset, args.sigma, args.outfile, n0=args.N0, n=args.N, alpha=args.alpha,
                    batch=args.batch, skip=args.skip, max_index=args.max, cost=cost, seed=args.seed, device=device,
                    meta_extra={"dataset": args.dataset, "model": os.path.abspath(args.model), "split": args.split},
                    autocast={"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision],
                    channels_last=args.channels_last, cuda_graphs=args.cuda_graphs)
    print(f"wrote {args.outfile}")


def recertify(tsv: str, outfile: str, alpha: Optional[float] = None, cost: Optional[CostMatrix] = None,
              keep_cost: bool = True) -> str:
    """Recompute certificates from the counts saved beside ``tsv`` at another alpha and/or cost matrix."""
    from .certify import certify_from_counts
    from .results import ResultWriter, read_counts, read_meta, read_tsv

    meta = read_meta(tsv)
    if not meta:
        raise ValueError(f"{tsv}.meta.json not found: recertify needs a run written by costsmooth certify")
    counts = read_counts(tsv)
    times = {int(r["idx"]): float(r["time"]) for r in read_tsv(tsv)}
    if cost is None and keep_cost and meta.get("cost"):
        cost = CostMatrix.from_json(meta["cost"])
    alpha = meta["alpha"] if alpha is None else alpha
    ids = sorted(i for i in counts if i in times)
    if os.path.exists(outfile):
        raise ValueError(f"{outfile} exists; choose a new output file")
    new_meta = dict(meta, alpha=alpha, cost=cost.to_json() if cost is not None else None, recertified_from=tsv)
    writer = ResultWriter(outfile, new_meta)
    if ids:
        labels = [counts[i]["label"] for i in ids]
        certs = certify_from_counts(np.array([counts[i]["selection"] for i in ids]),
                                    np.array([counts[i]["estimation"] for i in ids]), alpha, meta["sigma"],
                                    None if any(y is None for y in labels) else labels, cost)
        for i, cert in zip(ids, certs):
            writer.write(i, cert, times[i])
    writer.close()
    return outfile


def cmd_recertify(args) -> None:
    from .results import read_meta
    meta = read_meta(args.tsv)
    cost = parse_cost(args, meta.get("num_classes", 0)) if (args.cost or args.seed_classes) else None
    recertify(args.tsv, args.outfile, args.alpha, cost)
    print(f"wrote {args.outfile}")


def analyze(paths: List[str], radii, classwise_radius: Optional[float] = None, plot: Optional[str] = None,
            out=None) -> List:
    """Print the metric tables of each TSV (side by side) and optionally save the curves to ``plot``."""
    out = out or sys.stdout
    from . import metrics
    from .results import load_records, read_meta

    records = [load_records(p) for p in paths]
    for rec, path in zip(records, paths):
        rec.class_names = read_meta(path).get("class_names")
    rows = []
    for rec in records:
        for row in metrics.summary(rec, radii):
            rows.append({"file": rec.name, **row})
    print("Certified metrics (cert_acc over all inputs; rob_std, rob_cs, wc_cost over seed-class inputs)", file=out)
    print(metrics.format_table(rows, ["file", "radius", "cert_acc", "rob_std", "rob_cs", "wc_cost", "acr"]), file=out)
    if classwise_radius is not None:
        for rec in records:
            cw = metrics.classwise(rec, classwise_radius, rec.class_names)
            print(f"\nClass-wise at radius {classwise_radius} ({rec.name}): worst class {cw['worst_class']} "
                  f"({cw['worst']:.3f}), max-min gap {cw['gap']:.3f}, std {cw['std']:.3f}", file=out)
            print(metrics.format_table(cw["classes"], ["class", "count", "cert_acc", "acr", "rob_cs"]), file=out)
    if plot:
        plot_curves(records, plot)
        print(f"\nplots: {plot}", file=out)
    return rows


def plot_curves(records, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import metrics

    top = max([float(np.nanmax(np.concatenate([r.radius, np.nan_to_num(r.cs_radius)]))) for r in records] + [0.1])
    grid = np.linspace(0, top * 1.05, 200)
    panels = [("certified accuracy", metrics.certified_accuracy), ("Rob_std (seed classes)", metrics.rob_std),
              ("Rob_cs (seed classes)", metrics.rob_cs), ("certified worst-case cost", metrics.worst_case_cost)]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (title, fn) in zip(axes, panels):
        for rec in records:
            ax.plot(grid, [fn(rec, r) for r in grid], label=rec.name)
        ax.set_title(title)
        ax.set_xlabel("L2 radius")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _batch_arg(text: str):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch must be an integer or 'auto', got {text!r}")


def _radii(text: str) -> List[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"error: --radii must be comma-separated numbers, got {text!r}")


def cmd_analyze(args) -> None:
    analyze(args.tsv, _radii(args.radii), args.classwise, args.plot)


def cmd_info(args) -> None:
    from . import build_info
    info = build_info()
    info["torch"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    for k, v in info.items():
        print(f"{k}: {v}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="costsmooth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("certify", help="certify a dataset with a smoothed classifier (Cohen et al.'s CLI)")
    p.add_argument("dataset", help="digits, breast_cancer, cifar10:ROOT, mnist:ROOT, ham10000:ROOT, folder:ROOT, "
                                   "or a .pt file {'inputs', 'labels'}")
    p.add_argument("base_classifier", metavar="MODEL", help="TorchScript, torch.save'd module, or checkpoint")
    p.add_argument("sigma", type=float, help="noise level")
    p.add_argument("outfile", help="output TSV (re-running the same command resumes it)")
    p.add_argument("--N0", type=int, default=100, help="selection samples")
    p.add_argument("--N", type=int, default=100000, help="estimation samples")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch", type=_batch_arg, default=1000,
                   help="batch size of model calls, or 'auto' (largest that fits, by out-of-memory recovery)")
    p.add_argument("--skip", type=int, default=1, help="certify every skip-th input")
    p.add_argument("--max", type=int, default=-1, help="stop before this dataset index")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of the model (a reduced-precision run certifies that model)")
    p.add_argument("--channels-last", action="store_true", help="channels-last inputs and model (4-d inputs)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay model + vote as a CUDA graph (CUDA only)")
    add_cost_args(p)
    p.set_defaults(func=lambda a: (setattr(a, "model", a.base_classifier), cmd_certify(a)))

    p = sub.add_parser("recertify", help="recompute certificates from saved counts at another alpha or cost")
    p.add_argument("tsv")
    p.add_argument("outfile")
    p.add_argument("--alpha", type=float)
    add_cost_args(p)
    p.set_defaults(func=cmd_recertify)

    p = sub.add_parser("analyze", help="metric tables and plots of certification TSVs")
    p.add_argument("tsv", nargs="+")
    p.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="comma-separated radii")
    p.add_argument("--classwise", type=float, metavar="R", help="also print class-wise metrics at radius R")
    p.add_argument("--plot", help="save the curves to this PNG")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("info", help="how costsmooth was built")
    p.set_defaults(func=cmd_info)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    from . import demo, train
    return [train.register_cli, demo.register_cli]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
