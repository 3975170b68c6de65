"""Sequential certification study: coverage where the truth is known, and samples used against fixed-n CERTIFY.

1. Coverage (simulated Bernoulli votes with known p_A, the same decision code as the engine): the
   false-certification rate of the sequential test and of the naive rule "stop as soon as the
   fixed-n Clopper-Pearson bound at level alpha crosses", at alpha 0.1 and 0.01.
2. Digits (8x8, 540 test images): a digits_cnn trained with Gaussian augmentation (sigma 0.25).
   Sequential tests at each radius with max_n = 10000 and 100000 against fixed-n certification
   (Cohen et al.'s CERTIFY) at n = 10000 (every test image) and n = 100000 (every --fixed-skip-th).
3. CIFAR-shaped (3x32x32): a cifar_resnet20 trained briefly (--cifar-epochs) with Gaussian
   augmentation on the digits upsampled to 3x32x32 (no CIFAR-10 files are needed); every
   --cifar-skip-th test image, sequential at max_n = 10000 against fixed n = 10000 on a subset.

Both methods use the same seed and dataset indices, so they share the selection draw and the
sequential counts are a prefix of the fixed-n counts. The fixed-n sample total is n x inputs.
Results go to OUT/study.json (each finished part is reused when the script is re-run) and a
markdown summary to stdout.

    OMP_NUM_THREADS=1 python scripts/sequential_study.py --out /tmp/sequential_study
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from costsmooth import Smooth
from costsmooth.data import Dataset, load_dataset
from costsmooth.models import load_model
from costsmooth.sequential import Boundary, simulate_standard
from costsmooth.train import train
from scipy.stats import norm


def coverage(trials: int, seed: int = 0):
    """False-certification (p_A at and just below the threshold) and false-not-certified (just above) rates."""
    rng = np.random.default_rng(seed)
    sigma, radius, max_n = 0.25, 0.5, 20000
    rows = []
    for alpha in (0.1, 0.01):
        valid = Boundary.geometric(alpha, max_n)
        naive = Boundary(valid.checkpoints, np.full(len(valid), alpha))
        for name, d in (("at threshold", radius), ("just below (R = r - 0.005)", radius - 0.005),
                        ("just above (R = r + 0.005)", radius + 0.005)):
            p = float(norm.cdf(d / sigma))
            row = {"alpha": alpha, "case": name, "p_A": p, "trials": trials}
            for rule, boundary in (("sequential", valid), ("naive", naive)):
                decision, samples = simulate_standard(p, radius, sigma, boundary, trials, rng)
                wrong = "not_certified" if d > radius else "certified"
                row[rule] = float(np.mean(decision == wrong))
                row[rule + "_mean_samples"] = float(samples.mean())
            rows.append(row)
    return rows


def fixed_n(smooth, X, labels, idx, n, n0, alpha):
    t0 = time.perf_counter()
    certs = smooth.certify_batch(X, labels, n0=n0, n=n, alpha=alpha, indices=idx)
    return {"idx": idx, "radius": [c.radius for c in certs], "prediction": [c.prediction for c in certs],
            "label": labels, "n": n, "seconds": time.perf_counter() - t0}


def sequential(smooth, X, labels, idx, radius, max_n, n0, alpha):
    t0 = time.perf_counter()
    res = smooth.certify_batch_at(X, radius, alpha, max_n=max_n, labels=labels, n0=n0, indices=idx)
    return {"idx": idx, "decision": [r.decision for r in res], "samples": [r.samples for r in res],
            "prediction": [r.prediction for r in res], "label": labels, "radius": radius, "max_n": max_n,
            "seconds": time.perf_counter() - t0}


def compare(seq: dict, fix: dict, radius: float) -> dict:
    """Decisions of the sequential run against fixed-n on the inputs of ``fix`` (a subset of ``seq``)."""
    pos = {i: k for k, i in enumerate(seq["idx"])}
    at = [pos[i] for i in fix["idx"]]
    dec = np.array(seq["decision"])[at]
    seq_ok = np.array([seq["prediction"][k] == seq["label"][k] for k in at])
    fix_cert = np.array(fix["radius"]) >= radius
    fix_ok = np.array(fix["prediction"]) == np.array(fix["label"])
    samples_subset = int(np.sum(np.array(seq["samples"])[at]))
    return {
        "inputs": len(at), "radius": radius, "fixed_n": fix["n"], "max_n": seq["max_n"],
        "cert_acc_sequential": float(np.mean((dec == "certified") & seq_ok)),
        "cert_acc_fixed": float(np.mean(fix_cert & fix_ok)),
        "both_certified": int(np.sum((dec == "certified") & fix_cert)),
        "sequential_only": int(np.sum((dec == "certified") & ~fix_cert)),
        "fixed_only": int(np.sum((dec != "certified") & fix_cert)),
        "fixed_only_undecided": int(np.sum((dec == "undecided") & fix_cert)),
        "neither": int(np.sum((dec != "certified") & ~fix_cert)),
        "undecided": int(np.sum(dec == "undecided")),
        "samples_sequential": samples_subset, "samples_fixed": fix["n"] * len(at),
        "ratio": fix["n"] * len(at) / max(samples_subset, 1),
    }


def upsample(ds: Dataset, size: int = 32) -> Dataset:
    """The digits as 3 x size x size images (bilinear, the grey channel repeated): a CIFAR-shaped dataset."""
    x = F.interpolate(ds.inputs, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1).repeat(1, 3, 1, 1)
    return Dataset(name=ds.name + "32", inputs=x.contiguous(), labels=ds.labels, class_names=ds.class_names,
                   mean=[float(x.mean())] * 3, std=[float(x.std())] * 3)


def cached(store: dict, path: str, key: str, make):
    if key not in store:
        store[key] = make()
        with open(path, "w") as f:
            json.dump(store, f)
        print(f"[{time.strftime('%H:%M:%S')}] {key} done", flush=True)
    return store[key]


def summary(store: dict) -> str:
    out = ["## Coverage (simulated, sigma 0.25, r 0.5, max_n 20000, growth 1.25)", "",
           "| alpha | case | p_A | trials | wrong decisions, sequential | wrong decisions, naive |", "|---|---|---|---|---|---|"]
    for r in store.get("coverage", []):
        out.append(f"| {r['alpha']:g} | {r['case']} | {r['p_A']:.6f} | {r['trials']} | {r['sequential']:.4f} | "
                   f"{r['naive']:.4f} |")
    out += ["", "## Samples used vs fixed-n at the same inputs", "",
            "| model | r | fixed n | inputs | cert. acc. sequential | cert. acc. fixed | both | seq. only | fixed only "
            "(undecided) | undecided | samples sequential | samples fixed | ratio |", "|" + "---|" * 13]
    for key, c in store.items():
        if not key.startswith("cmp:"):
            continue
        out.append(f"| {key.split(':')[1]} | {c['radius']:g} | {c['fixed_n']} | {c['inputs']} | "
                   f"{c['cert_acc_sequential']:.3f} | {c['cert_acc_fixed']:.3f} | {c['both_certified']} | "
                   f"{c['sequential_only']} | {c['fixed_only']} ({c['fixed_only_undecided']}) | {c['undecided']} | "
                   f"{c['samples_sequential']:,} | {c['samples_fixed']:,} | {c['ratio']:.1f}x |")
    out += ["", "## Sequential runs over all selected inputs", "",
            "| run | inputs | certified | not certified | undecided | samples | fixed-n total (max_n x inputs) | ratio | s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for key, s in store.items():
        if not key.startswith("seq:"):
            continue
        dec = np.array(s["decision"])
        total, fixed = int(np.sum(s["samples"])), s["max_n"] * len(dec)
        out.append(f"| {key[4:]} | {len(dec)} | {int(np.sum(dec == 'certified'))} | "
                   f"{int(np.sum(dec == 'not_certified'))} | {int(np.sum(dec == 'undecided'))} | {total:,} | "
                   f"{fixed:,} | {fixed / total:.1f}x | {s['seconds']:.0f} |")
    out += ["", "Fixed-n runs: " + ", ".join(f"{k[4:]} {v['seconds']:.0f} s" for k, v in store.items()
                                            if k.startswith("fix:"))]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="sequential_study")
    p.add_argument("--radii", default="0.25,0.5")
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--epochs", type=int, default=10, help="digits_cnn epochs")
    p.add_argument("--fixed-skip", type=int, default=5, help="fixed n = 100000 on every k-th digits test image")
    p.add_argument("--cifar-epochs", type=int, default=3)
    p.add_argument("--cifar-skip", type=int, default=12, help="CIFAR-shaped: every k-th test image")
    p.add_argument("--cifar-fixed-skip", type=int, default=4, help="CIFAR-shaped fixed n = 10000 on every k-th of those")
    p.add_argument("--trials", type=int, default=20000)
    p.add_argument("--parts", default="coverage,digits,cifar")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "study.json")
    store = json.load(open(path)) if os.path.isfile(path) else {}
    radii = [float(r) for r in args.radii.split(",")]
    parts = args.parts.split(",")
    sigma = 0.25
    if "coverage" in parts:
        cached(store, path, "coverage", lambda: coverage(args.trials))
    if "digits" in parts:
        train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
        ckpt = os.path.join(args.out, "digits_cnn", "checkpoint.pt")
        if not os.path.isfile(ckpt):
            train(train_set, "digits_cnn", "gaussian", sigma, os.path.dirname(ckpt), epochs=args.epochs, lr=0.001,
                  optimizer="adam", progress=False)
        model = load_model(ckpt).eval()
        smooth = Smooth(model, 10, sigma, batch_size=1000, seed=0)
        idx = list(range(len(test_set)))
        X, y = test_set.inputs, test_set.labels.tolist()
        sub = idx[::args.fixed_skip]
        cached(store, path, "fix:digits n=10000", lambda: fixed_n(smooth, X, y, idx, 10000, args.n0, args.alpha))
        for r in radii:
            for max_n in (10000, 100000):
                cached(store, path, f"seq:digits r={r:g} max_n={max_n}",
                       lambda: sequential(smooth, X, y, idx, r, max_n, args.n0, args.alpha))
        cached(store, path, "fix:digits n=100000 subset",
               lambda: fixed_n(smooth, X[sub], [y[i] for i in sub], sub, 100000, args.n0, args.alpha))
        for r in radii:
            store[f"cmp:digits:{r:g}:10000"] = compare(store[f"seq:digits r={r:g} max_n=10000"],
                                                       store["fix:digits n=10000"], r)
            store[f"cmp:digits:{r:g}:100000"] = compare(store[f"seq:digits r={r:g} max_n=100000"],
                                                        store["fix:digits n=100000 subset"], r)
        json.dump(store, open(path, "w"))
    if "cifar" in parts:
        train32, test32 = upsample(load_dataset("digits", "train")), upsample(load_dataset("digits", "test"))
        ckpt = os.path.join(args.out, "cifar_resnet20", "checkpoint.pt")
        if not os.path.isfile(ckpt):
            train(train32, "cifar_resnet20", "gaussian", sigma, os.path.dirname(ckpt), epochs=args.cifar_epochs,
                  lr=0.001, optimizer="adam", progress=False)
        model = load_model(ckpt).eval()
        smooth = Smooth(model, 10, sigma, batch_size=500, seed=0)
        idx = list(range(0, len(test32), args.cifar_skip))
        y = test32.labels.tolist()
        sub = idx[::args.cifar_fixed_skip]
        for r in radii:
            cached(store, path, f"seq:cifar_resnet20 r={r:g} max_n=10000",
                   lambda: sequential(smooth, test32.inputs[idx], [y[i] for i in idx], idx, r, 10000, args.n0,
                                      args.alpha))
        cached(store, path, "fix:cifar_resnet20 n=10000 subset",
               lambda: fixed_n(smooth, test32.inputs[sub], [y[i] for i in sub], sub, 10000, args.n0, args.alpha))
        for r in radii:
            store[f"cmp:cifar_resnet20:{r:g}:10000"] = compare(store[f"seq:cifar_resnet20 r={r:g} max_n=10000"],
                                                               store["fix:cifar_resnet20 n=10000 subset"], r)
        json.dump(store, open(path, "w"))
    print(summary(store))


if __name__ == "__main__":
    main()
