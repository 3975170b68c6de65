"""Digits certified in sound mode (grid 1/16) beside standard practice: the README's table.

For each sigma, a digits_cnn is trained with Gaussian augmentation (``costsmooth.train``), then every
``--skip``-th test image is certified twice with ``costsmooth.runs.certify_dataset``: on the standard
path (float32 Box-Muller noise) and in sound mode (the model sees the grid point of the cell of
x + delta on the digits' grid 1/16, drawn exactly; ``costsmooth.sound``). Same model, seed, n and
alpha. Writes the TSVs and ``summary.md`` (a markdown table of certified accuracy and ACR).
Re-running reuses finished checkpoints and TSVs.

    OMP_NUM_THREADS=1 ./run.sh python scripts/sound_digits.py --n 2000 --skip 1 --out /tmp/sound_digits   # the README's table
"""
from __future__ import annotations

import argparse
import os
import time

import torch

from costsmooth import metrics
from costsmooth.data import load_dataset
from costsmooth.models import load_model
from costsmooth.results import load_records, read_meta
from costsmooth.runs import certify_dataset
from costsmooth.sound import format_grid
from costsmooth.train import train

RADII = [0.0, 0.25, 0.5, 0.75, 1.0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="sound_digits", help="output directory (checkpoints, TSVs, summary.md)")
    p.add_argument("--sigmas", default="0.25,0.5", help="noise levels")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--skip", type=int, default=2, help="certify every skip-th test image")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
    rows = []
    for sigma in [float(v) for v in args.sigmas.split(",")]:
        ckpt = train(train_set, "digits_cnn", "gaussian", sigma, os.path.join(args.out, f"sigma{sigma:g}"),
                     epochs=args.epochs, optimizer="adam", lr=0.001, batch_size=64, seed=args.seed, resume=True,
                     progress=False)
        for sound in (False, True):
            tsv = os.path.join(args.out, f"sigma{sigma:g}_{'sound' if sound else 'standard'}.tsv")
            t0 = time.perf_counter()
            certify_dataset(load_model(ckpt), test_set, sigma, tsv, n0=args.n0, n=args.n, alpha=args.alpha,
                            batch=max(4096, args.n), skip=args.skip, seed=args.seed, progress=False, sound=sound,
                            meta_extra={"dataset": "digits", "model": ckpt, "split": "test"})
            meta = read_meta(tsv)
            rec = load_records(tsv)
            mode = f"sound, grid {format_grid(meta['grid'])}" if sound else "standard"
            rows.append(f"| {sigma:g} | {mode} | " + " | ".join(f"{metrics.certified_accuracy(rec, r):.3f}"
                                                                  for r in RADII)
                        + f" | {metrics.acr(rec):.3f} | {meta['charge']:.2g} |")
            print(f"sigma {sigma:g} {mode}: {time.perf_counter() - t0:.0f} s -> {tsv}", flush=True)
    count = len(range(0, len(test_set), args.skip))
    which = f"all {count}" if args.skip == 1 else f"every {args.skip}th, {count}"
    summary = (f"Digits test images ({which} images), "
               f"digits_cnn trained with Gaussian noise, n0 = {args.n0}, n = {args.n}, alpha = {args.alpha}\n\n"
               "| sigma | noise | " + " | ".join(f"R={r:g}" for r in RADII) + " | ACR | charge |\n"
               "|---|---|" + "---|" * (len(RADII) + 2) + "\n" + "\n".join(rows) + "\n")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(summary)
    print(summary)


if __name__ == "__main__":
    main()
