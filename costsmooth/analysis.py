"""``costsmooth analyze``'s work: the metric tables of certification runs (side by side), their curves,
and JSON/CSV copies of the tables."""
from __future__ import annotations

import csv
import json
import os
import sys
from typing import List, Optional

import numpy as np

from . import metrics
from .results import load_records, read_meta, read_tsv_checked

__all__ = ["analyze", "plot_curves", "json_safe"]


def _distinct_names(paths: List[str]) -> List[str]:
    """Short names for the files: base names, with parent folders added until they differ."""
    parts = [os.path.normpath(os.path.abspath(p)).split(os.sep) for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = [os.path.splitext("/".join(p[-depth:]))[0] for p in parts]
        if len(set(names)) == len(names):
            return names
    base = [os.path.splitext(os.path.basename(p))[0] for p in paths]  # the same file twice: numbered
    return [f"{b}#{k + 1}" for k, b in enumerate(base)]


def analyze(paths: List[str], radii, classwise_radius: Optional[float] = None, plot: Optional[str] = None,
            out=None, json_path: Optional[str] = None, csv_path: Optional[str] = None) -> List:
    """Print the metric tables of each TSV (side by side) and optionally save the curves to ``plot``,
    every table to ``json_path`` and the metric table to ``csv_path``.

    Each file's rows read and lines skipped (malformed) are reported; every table has the number of
    inputs per file.
    """
    out = out or sys.stdout

    records, report = [], {"files": [], "metrics": [], "classwise": []}
    for path, name in zip(paths, _distinct_names(paths)):
        rows, problems = read_tsv_checked(path)
        rec = load_records(path, rows=rows)
        rec.name = name
        meta = read_meta(path)
        rec.class_names = meta.get("class_names")
        rec.settings = {k: meta.get(k) for k in ("sigma", "alpha", "n")}
        records.append(rec)
        skipped = f", skipped {len(problems)} malformed line(s): " + ", ".join(
            f"line {n} ({why})" for n, why in problems[:3]) if problems else ""
        settings = ", ".join(f"{k}={v}" for k, v in rec.settings.items() if v is not None)
        print(f"{name}: read {len(rows)} rows from {path}{skipped}" + (f" [{settings}]" if settings else ""), file=out)
        if meta.get("sequential"):
            print(f"{name}: a sequential run at radius {meta.get('radius')}: its radii are those certified when each "
                  f"input's test stopped, so metrics at other radii and the ACR are lower bounds, not comparable "
                  f"with a fixed-n run", file=out)
        report["files"].append({"file": name, "path": path, "rows": len(rows), "skipped_lines": [n for n, _ in problems],
                                **rec.settings})
    rows = []
    for rec in records:
        for row in metrics.summary(rec, radii):
            rows.append({"file": rec.name, "n": len(rec), **row})
    report["metrics"] = rows
    print("\nCertified metrics (cert_acc over all inputs; rob_std, rob_cs, wc_cost over seed-class inputs)", file=out)
    print(metrics.format_table(rows, ["file", "n", "radius", "cert_acc", "rob_std", "rob_cs", "wc_cost", "acr"]),
          file=out)
    if classwise_radius is not None:
        for rec in records:
            cw = metrics.classwise(rec, classwise_radius, rec.class_names)
            print(f"\nClass-wise at radius {classwise_radius} ({rec.name}, {len(rec)} inputs)", file=out)
            for key, label in (("cert_acc", "certified accuracy"), ("acr", "ACR")):
                sp = cw["spread"][key]
                print(f"  {label}: worst class {sp['worst_class']} ({sp['worst']:.3f}), max-min gap {sp['gap']:.3f}, "
                      f"std {sp['std']:.3f}", file=out)
            print(metrics.format_table(cw["classes"], ["class", "count", "cert_acc", "acr", "rob_cs", "wc_cost"]),
                  file=out)
            report["classwise"].append({"file": rec.name, "radius": classwise_radius, **cw})
    if plot:
        plot_curves(records, plot)
        print(f"\nplots: {plot}", file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(json_safe(report), f, indent=1)
        print(f"json: {json_path}", file=out)
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["file"])
            w.writeheader()
            w.writerows(rows)
        print(f"csv: {csv_path}", file=out)
    return rows


def json_safe(value):
    """``value`` (nested dicts, lists and tuples of numbers) made valid JSON: NaN and infinities become None,
    numpy scalars Python numbers, dict keys strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def plot_curves(records, path: str) -> None:
    """Certified accuracy (and, for files with a cost matrix, Rob_std, Rob_cs and worst-case cost)
    against the L2 radius, one line per file, its sigma, alpha and n in the legend."""
    import matplotlib  # heavy: imported only when a plot is drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(len(r) for r in records):
        raise ValueError("nothing to plot: the files hold no certified rows")
    top = max([float(np.nanmax(np.concatenate([r.radius, np.nan_to_num(r.cs_radius)]))) for r in records if len(r)]
              + [0.1])
    grid = np.linspace(0, top * 1.05, 200)
    panels = [("certified accuracy", "fraction of all inputs", metrics.certified_accuracy, False),
              ("Rob_std (seed classes)", "fraction of seed-class inputs", metrics.rob_std, True),
              ("Rob_cs (seed classes)", "fraction of seed-class inputs", metrics.rob_cs, True),
              ("certified worst-case cost", "mean cost over seed-class inputs", metrics.worst_case_cost, True)]
    with_cost = [r for r in records if r.cost is not None and len(r)]
    panels = [p for p in panels if not p[3] or with_cost]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for ax, (title, ylabel, fn, needs_cost) in zip(axes[0], panels):
        for rec in (with_cost if needs_cost else [r for r in records if len(r)]):
            settings = getattr(rec, "settings", {}) or {}
            extra = ", ".join(f"{k}={v}" for k, v in settings.items() if v is not None)
            ax.plot(grid, [fn(rec, r) for r in grid], label=f"{rec.name} ({len(rec)} inputs{', ' + extra if extra else ''})")
        ax.set_title(title)
        ax.set_xlabel("L2 radius")
        ax.set_ylabel(ylabel)
        if fn is not metrics.worst_case_cost:  # fractions; a cost may exceed 1
            ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    # one legend for every panel, below them: it never covers a curve
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04 + 0.05 * ((len(labels) + 2) // 3), 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
