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

import os
import time

import torch

from costsmooth import metrics
from costsmooth.data import load_dataset
from costsmooth.results import load_records, read_meta
from costsmooth.sound import format_grid
from digits_study import certify_test, study_parser, train_or_load

RADII = [0.0, 0.25, 0.5, 0.75, 1.0]


def main(argv=None):
    args = study_parser(__doc__, "sound_digits", n0=100, n=10000).parse_args(argv)
    torch.set_num_threads(1)
    train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
    rows = []
    for sigma in [float(v) for v in args.sigmas.split(",")]:
        ckpt = train_or_load(train_set, sigma, os.path.join(args.out, f"sigma{sigma:g}"), args)
        for sound in (False, True):
            tsv = os.path.join(args.out, f"sigma{sigma:g}_{'sound' if sound else 'standard'}.tsv")
            t0 = time.perf_counter()
            certify_test(ckpt, test_set, sigma, tsv, args, sound=sound)
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
