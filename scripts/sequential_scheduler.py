"""Cost of the sequential scheduler: model calls, host synchronisations and wall time on digits.

Trains (once, cached under --out) the digits_cnn of scripts/sequential_study.py (Gaussian augmentation,
sigma 0.25, 10 epochs, Adam lr 0.001), then runs ``Smooth.certify_batch_at`` on the digits test images
(every --skip-th) at radius --radius with max_n --max-n, and reports:

- model calls: calls of the model's forward during the estimation draw (the selection draw excluded);
- host synchronisations: reads of device values by the host during the estimation draw, counted by
  wrapping ``Tensor.cpu/.item/.tolist/.numpy/__bool__/__int__/__float__`` (on a GPU each one waits for
  the device; on the CPU they are counted the same way);
- wall time of the whole call (selection and estimation), and the decisions (which must not change).

    OMP_NUM_THREADS=1 python scripts/sequential_scheduler.py --out /tmp/seqsched
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import time

import torch

from costsmooth import Smooth
from costsmooth.data import load_dataset
from costsmooth.models import load_model
from costsmooth.train import train

_READS = ("cpu", "item", "tolist", "numpy", "__bool__", "__int__", "__float__")


@contextlib.contextmanager
def count_host_reads(counter: collections.Counter):
    """Count the Tensor methods that copy device values to the host while the context is open."""
    saved = {name: getattr(torch.Tensor, name) for name in _READS}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            counter[name] += 1
            return fn(self, *args, **kwargs)
        return counted

    for name, fn in saved.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield counter
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)


class CountedModel(torch.nn.Module):
    """The model, counting its forward calls and rows."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = self.rows = 0

    def forward(self, x):
        self.calls += 1
        self.rows += x.shape[0]
        return self.model(x)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="seqsched")
    p.add_argument("--radius", type=float, default=0.25)
    p.add_argument("--max-n", type=int, default=100000)
    p.add_argument("--skip", type=int, default=1, help="every k-th digits test image")
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    sigma = 0.25
    ckpt = os.path.join(args.out, "digits_cnn", "checkpoint.pt")
    if not os.path.isfile(ckpt):
        train(load_dataset("digits", "train"), "digits_cnn", "gaussian", sigma, os.path.dirname(ckpt), epochs=10,
              lr=0.001, optimizer="adam", progress=False)
    test = load_dataset("digits", "test")
    idx = list(range(0, len(test), args.skip))
    model = CountedModel(load_model(ckpt).eval())
    smooth = Smooth(model, 10, sigma, batch_size=args.batch, seed=0)
    X, y = test.inputs[idx], test.labels[idx].tolist()
    selection_calls = -(-len(idx) // max(args.batch // 100, 1))  # n0 = 100 rows per input, whole inputs per call
    reads = collections.Counter()
    t0 = time.perf_counter()
    with count_host_reads(reads):
        results = smooth.certify_batch_at(X, args.radius, args.alpha, max_n=args.max_n, labels=y, indices=idx)
    seconds = time.perf_counter() - t0
    out = {"inputs": len(idx), "radius": args.radius, "max_n": args.max_n, "batch": args.batch,
           "model_calls": model.calls - selection_calls, "rows": model.rows - 100 * len(idx),
           "host_reads": sum(reads.values()), "host_reads_by_kind": dict(reads), "seconds": round(seconds, 2),
           "samples": sum(r.samples for r in results),
           "decisions": dict(collections.Counter(r.decision for r in results))}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
