"""Certification runs over datasets and their analysis: what the certify, recertify and analyze
commands do, callable from Python (the demo uses them too)."""
from __future__ import annotations

import os
import sys
import time
from typing import List, Optional

import numpy as np
import torch

from .cost import CostMatrix

__all__ = ["certify_dataset", "recertify", "analyze", "plot_curves"]


def certify_dataset(model, dataset, sigma: float, outfile: str, *, n0: int = 100, n: int = 100000,
                    alpha: float = 0.001, batch: int = 1000, skip: int = 1, max_index: int = -1,
                    cost: Optional[CostMatrix] = None, seed: int = 0, device=None, meta_extra=None,
                    progress: bool = True, autocast: Optional[torch.dtype] = None, channels_last: bool = False,
                    cuda_graphs: bool = False) -> str:
    """Certify ``dataset`` (a ``costsmooth.data.Dataset``) into ``outfile``, resuming a previous run.

    Inputs are dataset indices ``i`` with ``i % skip == 0`` and ``i < max_index`` (when >= 0), as in
    Cohen et al.'s certify.py. Each input's noise depends on (seed, i) only. autocast, channels_last
    and cuda_graphs are passed to ``Smooth`` (the precision is recorded in the metadata).
    ``sigma`` may be an input-dependent sigma function (``costsmooth.input_dependent.KNNSigma``): its
    ``describe()`` goes to the metadata and each row records its sigma0.
    """
    from tqdm import tqdm

    from . import __version__
    from .results import ResultWriter
    from .sampling import eval_mode, resolve_batch_size
    from .smooth import Smooth

    device = torch.device(device) if device is not None else torch.device("cpu")
    model = model.to(device)
    with eval_mode(model):
        num_classes = int(model(dataset.inputs[:1].to(device)).shape[1])
    if num_classes != dataset.num_classes and dataset.num_classes:
        raise ValueError(f"the model has {num_classes} outputs but the dataset {dataset.name} has "
                         f"{dataset.num_classes} classes")
    if cost is not None:
        cost.check_num_classes(num_classes)
    sigma_meta = sigma.describe() if callable(sigma) else sigma  # input-dependent sigma: its settings
    meta = {"sigma": sigma_meta, "n0": n0, "n": n, "alpha": alpha, "seed": seed, "skip": skip, "max": max_index,
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


def recertify(tsv: str, outfile: str, alpha: Optional[float] = None, cost: Optional[CostMatrix] = None,
              keep_cost: bool = True) -> str:
    """Recompute certificates from the counts saved beside ``tsv`` at another alpha and/or cost matrix."""
    from .certify import certify_from_counts
    from .results import ResultWriter, read_counts, read_meta, read_tsv

    meta = read_meta(tsv)
    if not meta:
        raise ValueError(f"{tsv}.meta.json not found: recertify needs a run written by costsmooth certify")
    if isinstance(meta.get("sigma"), dict):  # input-dependent sigma (costsmooth.input_dependent)
        raise ValueError(f"{tsv} was certified with an input-dependent sigma ({meta['sigma'].get('fn')}); recertify "
                         f"supports constant-sigma runs only: re-run costsmooth certify with the new settings")
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
            print(f"\nClass-wise at radius {classwise_radius} ({rec.name})", file=out)
            for key, label in (("cert_acc", "certified accuracy"), ("acr", "ACR")):
                sp = cw["spread"][key]
                print(f"  {label}: worst class {sp['worst_class']} ({sp['worst']:.3f}), max-min gap {sp['gap']:.3f}, "
                      f"std {sp['std']:.3f}", file=out)
            print(metrics.format_table(cw["classes"], ["class", "count", "cert_acc", "acr", "rob_cs", "wc_cost"]),
                  file=out)
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
