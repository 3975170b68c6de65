"""Calibration tables and reliability diagrams, and the ``costsmooth calibration`` command.

``calibration_table`` computes, at each radius eps, over the inputs whose prediction is certified at
eps: accuracy, the clean ECE and Brier score (point estimates z_hat), CBS and CECE (the certified worst
cases over the boxes), and the two cheap lower estimates of CECE (ECE at the Brier-worst confidences;
dECE ascent). ``costsmooth calibration DATA MODEL SIGMA OUT`` samples the confidences with the engine;
``costsmooth calibration --from RUN.tsv OUT`` computes the same tables from a ``certify --prob-sums``
run without sampling (same seed and settings give the same numbers).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import List, Optional, Sequence

import numpy as np

from ..args import (HelpFormatter, UsageError, add_model_args, add_sampling_args, add_sound_args,
                    check_data_model_order, float_list, model_from_args, probability, resolve_device)
from ..data import load_dataset
from ..progress import progress_bar
from ..results import read_counts, read_meta, select_indices
from ..runs import probe_num_classes, sound_grid
from ..sound import format_grid
from .bounds import (CECE_METHODS, bin_index, brier_score, certified_brier, certified_ece, dece_ascent,
                     ece_at_brier_worst, expected_calibration_error)
from .confidence import CI_METHODS, CertifiedConfidences, certified_confidences, sample_confidences

__all__ = ["calibration_table", "format_table", "plot_reliability", "confidences_from_run", "register_cli"]

COLUMNS = ["eps", "inputs", "certified", "accuracy", "ece", "brier", "cbs", "cece", "cece_kind",
           "ece_brier_worst", "ece_dece_ascent"]


def calibration_table(conf: CertifiedConfidences, eps_list: Sequence[float], n_bins: int = 10,
                      method: str = "auto", baselines: bool = True) -> List[dict]:
    """One row per eps: inputs (all), certified (fraction with a prediction certified at eps), accuracy,
    ece and brier (clean point estimates on those inputs), cbs, cece (with ``cece_kind`` "exact" or
    "attained (lower estimate)" and ``cece_method``), and the baselines ``ece_brier_worst`` and
    ``ece_dece_ascent`` (attained lower estimates of CECE), and ``level``: the probability with which
    CBS and CECE hold (``CertifiedConfidences.level``). ``_worst`` holds the CECE-attaining
    confidences and correctness (for the diagrams; not part of the printed table)."""
    rows = []
    for eps in eps_list:
        mask, low, up, correct, z_hat = conf.box(eps)
        res = certified_ece(low, up, correct, n_bins, method)
        rows.append({
            "eps": float(eps), "inputs": len(conf), "certified": float(mask.mean()) if len(conf) else 0.0,
            "accuracy": float(correct.mean()) if correct.size else float("nan"),
            "ece": expected_calibration_error(z_hat, correct, n_bins), "brier": brier_score(z_hat, correct),
            "cbs": certified_brier(low, up, correct), "cece": res.value, "cece_kind": res.label,
            "cece_method": res.method, "level": conf.level,
            "ece_brier_worst": ece_at_brier_worst(low, up, correct, n_bins) if baselines else None,
            "ece_dece_ascent": dece_ascent(low, up, correct, n_bins) if baselines and correct.size else None,
            "_worst": (res.confidences, correct, z_hat)})
    return rows


def format_table(rows: List[dict]) -> str:
    """Markdown table of ``calibration_table`` rows (CECE marked with its kind)."""
    head = ("| eps | certified | accuracy of certified | ECE | Brier | CBS | CECE | ECE at Brier-worst (lower) "
            "| dECE ascent (lower) |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]

    def f(v):
        return "-" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.4f}"

    for r in rows:
        kind = "" if r["cece_kind"] == "exact" else " (attained, lower estimate)"
        lines.append(f"| {r['eps']:g} | {r['certified']:.3f} | {f(r['accuracy'])} | {f(r['ece'])} | {f(r['brier'])} "
                     f"| {f(r['cbs'])} | {f(r['cece'])}{kind} | {f(r['ece_brier_worst'])} | {f(r['ece_dece_ascent'])} |")
    lines.append("\ncertified: the share of inputs whose prediction is certified at eps; every other column is over "
                 "those inputs (accuracy of certified = correct among them, not certified accuracy)")
    if rows and rows[0].get("level") is not None:
        lines.append(f"CBS and CECE hold, at every eps together, with probability >= {rows[0]['level']:.6g} over the "
                     f"noise" + (" (per-input intervals: no dataset-level guarantee)" if rows[0]["level"] == 0 else ""))
    return "\n".join(lines)


def _reliability(ax, z, c, n_bins: int, title: str) -> None:
    edges = np.linspace(0, 1, n_bins + 1)
    if z.size:
        m = bin_index(z, n_bins)
        count = np.bincount(m, minlength=n_bins)
        acc = np.bincount(m, weights=c.astype(float), minlength=n_bins) / np.maximum(count, 1)
        mean_z = np.bincount(m, weights=z, minlength=n_bins) / np.maximum(count, 1)
        used = count > 0
        ax.bar(edges[:-1][used], acc[used], width=1 / n_bins, align="edge", alpha=0.6, edgecolor="k",
               label="accuracy")
        ax.plot(mean_z[used], acc[used], "o", color="C3", ms=4, label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_title(title, fontsize=9)


def plot_reliability(rows: List[dict], path: str, n_bins: int = 10, title: str = "") -> None:
    """Reliability diagrams: the clean confidences at the first eps, then the certified worst case
    (CECE-attaining confidences) at each eps > 0 (up to three)."""
    import matplotlib  # heavy: imported only when a plot is drawn
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    worst = [r for r in rows if r["eps"] > 0][:3]
    first = rows[0]
    panels = [(first["_worst"][2], first["_worst"][1], f"clean (eps={first['eps']:g}), ECE {first['ece']:.3f}")]
    for r in worst:
        kind = "" if r["cece_kind"] == "exact" else ", lower est."
        panels.append((r["_worst"][0], r["_worst"][1], f"certified worst case eps={r['eps']:g}\nCECE "
                                                        f"{r['cece']:.3f}{kind}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (z, c, t) in zip(axes[0], panels):
        _reliability(ax, np.asarray(z), np.asarray(c), n_bins, t)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confidences_from_run(tsv: str, alpha: Optional[float] = None, method: str = "hoeffding",
                         joint: bool = True) -> CertifiedConfidences:
    """``certified_confidences`` from a ``certify --prob-sums`` run's saved statistics (no sampling).

    alpha: total failure probability (default: the run's alpha), split as in ``CertifiedConfidences``
    (over all inputs together; ``joint=False``: per input, level 1 - N * alpha).
    Inputs recorded as invalid (not sampled) are left out.
    """
    meta = read_meta(tsv)
    if not meta:
        raise ValueError(f"{tsv}.meta.json not found: --from needs a run written by costsmooth certify --prob-sums")
    if isinstance(meta.get("sigma"), dict):
        raise ValueError(f"{tsv} was certified with an input-dependent sigma; certified calibration needs a "
                         f"constant sigma")
    counts = read_counts(tsv)
    ids = sorted(i for i, r in counts.items() if not r.get("invalid"))
    missing = [i for i in ids if "prob_sums" not in counts[i]]
    if missing:
        raise ValueError(f"{len(missing)} of {len(ids)} inputs of {tsv} have no saved probability sums (e.g. index "
                         f"{missing[0]}); certify with --prob-sums into a new OUTFILE")
    if not ids:
        raise ValueError(f"{tsv} holds no sampled inputs")
    if any(counts[i]["label"] is None for i in ids):
        raise ValueError(f"{tsv} has inputs without labels; calibration needs labelled inputs")
    sel = np.array([counts[i]["selection"] for i in ids], dtype=np.int64)
    est = np.array([counts[i]["estimation"] for i in ids], dtype=np.int64)
    sums = np.array([counts[i]["prob_sums"] for i in ids], dtype=np.float64)
    labels = [int(counts[i]["label"]) for i in ids]
    conf = certified_confidences(sel, est, sums, labels, meta["alpha"] if alpha is None else alpha, meta["sigma"],
                                 method, joint, meta.get("charge", 0.0))
    conf.grid = meta.get("grid")
    return conf


def _json_rows(rows):
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def _bins_arg(text: str) -> int:
    """--bins: 1 to 100 equal-width bins (ECE is read with 10-20; the exact CECE grows with the bin count)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to 100, got {text!r}")
    return value


def register_cli(sub) -> None:
    p = sub.add_parser("calibration", formatter_class=HelpFormatter,
                       help="certified calibration: ECE, Brier, certified Brier score and certified ECE at radii",
                       usage="costsmooth calibration DATA MODEL SIGMA OUT [options]\n"
                             "       costsmooth calibration --from RUN.tsv OUT [options]",
                       description="Smoothed top-label confidences with certified boxes (Kumar et al. 2020) and the "
                                   "certified calibration of Emde et al.: at each --eps, over the inputs whose "
                                   "prediction is certified at eps, the clean ECE and Brier score, the certified "
                                   "Brier score (CBS, exact) and certified ECE (CECE; exact, or an attained lower "
                                   "estimate where labelled). Writes OUT/calibration.md, OUT/calibration.json and "
                                   "OUT/reliability.png. CBS and CECE are maxima over all N inputs, so they hold "
                                   "with probability >= 1 - alpha over all inputs together: each input's "
                                   "certificate and confidence interval take alpha/(2N). --per-input takes alpha/2 "
                                   "each per input instead; the tables then hold only at 1 - N * alpha, and the "
                                   "header says so. With --from, the tables come from a certify --prob-sums run.")
    p.add_argument("positional", nargs="*", metavar="DATA MODEL SIGMA OUT",
                   help="dataset, model file, noise level and output directory (with --from: OUT only)")
    p.add_argument("--from", dest="from_run", metavar="RUN.tsv", help="a certify --prob-sums run: the tables come from its saved statistics (no sampling; the sampling options are not used)")
    p.add_argument("--eps", default="0,0.125,0.25,0.5", help="comma-separated L2 radii")
    p.add_argument("--bins", type=_bins_arg, default=10, help="equal-width ECE bins on [0, 1] (1 to 100)")
    p.add_argument("--method", default="auto", choices=list(CECE_METHODS),
                   help="CECE solver: signs/milp exact, admm an attained lower estimate")
    p.add_argument("--ci", default="hoeffding", choices=list(CI_METHODS),
                   help="confidence interval of the smoothed confidence (kl: Chernoff, tighter near 0 and 1)")
    level = p.add_mutually_exclusive_group()  # neither given: joint (args.joint is None)
    level.add_argument("--per-input", dest="joint", action="store_false", default=None,
                       help="alpha per input (as for certified accuracy): CBS and CECE then hold only with "
                            "probability 1 - N * alpha")
    level.add_argument("--joint", dest="joint", action="store_true", default=None,
                       help="alpha over all N inputs together (alpha/N each), as without --per-input; kept for "
                            "old command lines")
    p.add_argument("--alpha", type=probability, help="total failure probability (default 0.001; with --from the run's)")
    add_sampling_args(p, n0=100, n=10000)
    add_model_args(p)  # --arch --normalize --trust-model-code
    add_sound_args(p, "the certificates and boxes hold")  # --sound --grid H

    def run(args):
        eps_list = float_list(args.eps, "--eps")
        if any(not (e >= 0 and np.isfinite(e)) for e in eps_list):
            raise UsageError(f"--eps {args.eps}: radii must be finite numbers >= 0")
        if args.from_run:
            if len(args.positional) != 1:
                raise UsageError("with --from RUN.tsv give exactly one argument, OUT (the output directory)")
            if args.sound or args.grid is not None:
                raise UsageError("--sound and --grid set how calibration samples; --from uses the run's recorded noise "
                                 "(certify --prob-sums --sound for a sound run): drop them")
            out = args.positional[0]
            conf = confidences_from_run(args.from_run, args.alpha, args.ci, args.joint is not False)
            source = f"from {args.from_run}"
        else:
            if len(args.positional) != 4:
                raise UsageError(f"expected DATA MODEL SIGMA OUT, got {len(args.positional)} argument(s); or use "
                                 f"--from RUN.tsv OUT")
            data, model_path, sigma_text, out = args.positional
            check_data_model_order("calibration", data, model_path)
            try:
                sigma = float(sigma_text)
            except ValueError:
                raise UsageError(f"SIGMA must be a positive number, got {sigma_text!r}") from None
            if not (sigma > 0 and np.isfinite(sigma)):
                raise UsageError(f"SIGMA must be a positive finite number, got {sigma_text!r}")
            conf = _sample(args, model_path, data, sigma)
            source = f"{model_path} on {data}, N0={args.N0}, N={args.N}, seed={args.seed}"
        rows = calibration_table(conf, eps_list, args.bins, args.method)
        noise = "" if conf.grid is None else f", sound mode on the grid {format_grid(conf.grid)}"
        header = (f"Certified calibration ({source}): {len(conf)} inputs, {args.bins} bins, {conf.method} "
                  f"interval, sigma={conf.sigma:g}{noise}; {conf.statement()}")
        table = format_table(rows)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "calibration.md"), "w") as f:
            f.write(header + "\n\n" + table + "\n")
        with open(os.path.join(out, "calibration.json"), "w") as f:
            json.dump({"source": source, "alpha": conf.alpha, "joint": conf.joint, "level": conf.level,
                       "interval": conf.method, "charge": conf.charge, "grid": conf.grid,
                       "sigma": conf.sigma, "n": conf.n, "bins": args.bins, "rows": _json_rows(rows)}, f, indent=1)
        plot_reliability(rows, os.path.join(out, "reliability.png"), args.bins, header if len(header) < 120 else "")
        print(header + "\n\n" + table)
        print(f"\nwrote {os.path.join(out, 'calibration.md')}, calibration.json, reliability.png")

    p.set_defaults(func=run)


def _sample(args, model_path: str, data: str, sigma: float) -> CertifiedConfidences:

    device = resolve_device(args.device)
    dataset = load_dataset(data, split=args.split)
    model = model_from_args(args, model_path, data, dataset, map_location=device).to(device)
    num_classes = probe_num_classes(model, dataset, device)
    ids = select_indices(len(dataset), args.skip, args.max)
    grid = sound_grid(dataset, ids, args.sound, args.grid)  # None without --sound; inputs off the grid refused
    bar = progress_bar(total=len(ids) * args.N, unit="sample", unit_scale=True, disable=args.quiet, desc="calibration")
    x, y = dataset.take(ids)  # image datasets: only the selected inputs are decoded
    conf, *_ = sample_confidences(model, x.to(device), y, sigma, n0=args.N0,
                                  n=args.N, alpha=args.alpha or 0.001, seed=args.seed, batch_size=args.batch,
                                  indices=ids, method=args.ci, joint=args.joint is not False, num_classes=num_classes,
                                  progress=bar, sound=args.sound, grid=grid)
    bar.close()
    return conf
