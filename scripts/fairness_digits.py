"""Digits study of same-class mixup (Zhong & Tandon 2024; docs/fairness.md).

Trains the digits CNN at sigma = 0.25 four ways -- Gaussian augmentation, Gaussian + same-class mixup,
PGD adversarial training, PGD + same-class mixup -- for each seed, then reports per model the class-wise
natural error and PGD robust error of the base model and the class-wise certified error of the smoothed
classifier at r = 0.25 (``costsmooth.fairness.fairness_report``), with worst class, max-min gap and std,
and the means over seeds. Writes OUT/<method>_s<seed>/ (checkpoint, certify.tsv, fairness.json),
OUT/summary.json, OUT/summary.md and the three-bar figure (--figure).

    PYTHONPATH=. .venv/bin/python scripts/fairness_digits.py --out fairness_digits --seeds 0,1,2 \
        --figure docs/fairness_digits.png

Re-running reuses finished trainings and certifications (certify.tsv resumes).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from costsmooth.data import load_digits  # noqa: E402
from costsmooth.fairness import fairness_report, format_report, plot_report  # noqa: E402
from costsmooth.models import load_model  # noqa: E402
from costsmooth.train import train  # noqa: E402

SIGMA = 0.25
EPS = 0.5  # L2 radius of PGD training and of the robust error (digits: 8x8 pixels in [0, 1])
METHODS = {
    "gaussian": dict(loss="gaussian", loss_kwargs={}, mixup=None),
    "gaussian+mixup": dict(loss="gaussian", loss_kwargs={}, mixup=1.0),
    "pgd": dict(loss="pgd", loss_kwargs={"eps": EPS, "steps": 5, "norm": "l2"}, mixup=None),
    "pgd+mixup": dict(loss="pgd", loss_kwargs={"eps": EPS, "steps": 5, "norm": "l2"}, mixup=1.0),
    # weaker mixing (lam near 0 or 1 most of the time), the usual mixup setting
    "gaussian+mixup0.2": dict(loss="gaussian", loss_kwargs={}, mixup=0.2),
    "pgd+mixup0.2": dict(loss="pgd", loss_kwargs={"eps": EPS, "steps": 5, "norm": "l2"}, mixup=0.2),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="fairness_digits")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--n0", type=int, default=64)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--alpha", type=float, default=0.001)
    ap.add_argument("--radius", type=float, default=0.25)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--figure", help="PNG of the three per-class bars (first seed), one panel per method")
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    train_set, test_set = load_digits("train"), load_digits("test")
    reports, timing = {}, {}
    for seed in seeds:
        for name in methods:
            spec = METHODS[name]
            run_dir = os.path.join(args.out, f"{name}_s{seed}")
            ckpt = os.path.join(run_dir, "checkpoint.pt")
            t0 = time.perf_counter()
            done = os.path.isfile(ckpt) and torch.load(ckpt, weights_only=True)["epoch"] == args.epochs
            if not done:
                train(train_set, "digits_cnn", spec["loss"], SIGMA, run_dir, epochs=args.epochs, lr=0.001,
                      batch_size=64, optimizer="adam", schedule="cosine", seed=seed, loss_kwargs=spec["loss_kwargs"],
                      mixup=spec["mixup"], resume=os.path.isfile(ckpt), progress=False)
            t1 = time.perf_counter()
            model = load_model(ckpt)
            rep = fairness_report(model, test_set, SIGMA, run_dir, eps=EPS, norm="l2", steps=10, radius=args.radius,
                                  n0=args.n0, n=args.n, alpha=args.alpha, batch=1000, seed=0)
            t2 = time.perf_counter()
            timing[f"{name}_s{seed}"] = {"train_s": round(t1 - t0, 1), "report_s": round(t2 - t1, 1)}
            reports[(name, seed)] = rep
            print(f"\n== {name}, seed {seed} (train {t1 - t0:.0f} s, report {t2 - t1:.0f} s)")
            print(format_report(rep), flush=True)

    rows = []
    for name in methods:
        reps = [reports[(name, s)] for s in seeds]
        row = {"method": name, "seeds": len(seeds)}
        for key, short in (("natural_error", "nat"), ("robust_error", "rob"), ("certified_error", "cert")):
            row[f"{short}_overall"] = float(np.mean([r["overall"][key] for r in reps]))
            row[f"{short}_worst"] = float(np.mean([r["disparity"][key]["worst"] for r in reps]))
            row[f"{short}_worst_class"] = [r["disparity"][key]["worst_class"] for r in reps]
            row[f"{short}_gap"] = float(np.mean([r["disparity"][key]["gap"] for r in reps]))
            row[f"{short}_std"] = float(np.mean([r["disparity"][key]["std"] for r in reps]))
            row[f"{short}_gap_per_seed"] = [r["disparity"][key]["gap"] for r in reps]
            row[f"{short}_gap_sd"] = float(np.std(row[f"{short}_gap_per_seed"]))
            row[f"{short}_overall_sd"] = float(np.std([r["overall"][key] for r in reps]))
        rows.append(row)
    lines = [f"digits_cnn, sigma {SIGMA}, {args.epochs} epochs, Adam lr 0.001 cosine, batch 64, seeds {seeds}; "
             f"PGD L2 eps {EPS} (training 5 steps, evaluation 10 steps, base model); certified error at r = "
             f"{args.radius} (n0 {args.n0}, n {args.n}, alpha {args.alpha}); 540 test images; means over seeds",
             "",
             "(+- : standard deviation over seeds; worst class: the class of each seed)", "",
             "| method | cert. acc r=0.25 | cert. err worst class | cert. err gap | cert. err std | PGD rob. acc | "
             "rob. err worst class | rob. err gap | rob. err std | nat. acc |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wc = lambda k: "/".join(str(c) for c in r[f"{k}_worst_class"])
        lines.append(f"| {r['method']} | {1 - r['cert_overall']:.3f} +- {r['cert_overall_sd']:.3f} | "
                     f"{r['cert_worst']:.3f} ({wc('cert')}) | {r['cert_gap']:.3f} +- {r['cert_gap_sd']:.3f} | "
                     f"{r['cert_std']:.3f} | {1 - r['rob_overall']:.3f} +- {r['rob_overall_sd']:.3f} | "
                     f"{r['rob_worst']:.3f} ({wc('rob')}) | {r['rob_gap']:.3f} +- {r['rob_gap_sd']:.3f} | "
                     f"{r['rob_std']:.3f} | {1 - r['nat_overall']:.3f} |")
    table = "\n".join(lines)
    print("\n" + table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"rows": rows, "timing": timing}, f, indent=1)
    if args.figure:
        plot_report({f"{name} (seed {seeds[0]})": reports[(name, seeds[0])] for name in methods}, args.figure)
        print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
