"""Cost of the sequential scheduler: model calls, host synchronisations and wall time on digits.

Trains (once, cached under --out) the digits_cnn of scripts/sequential_study.py (Gaussian augmentation,
sigma 0.25, 10 epochs, Adam lr 0.001), then runs ``Smooth.certify_batch_at`` on the digits test images
(every --skip-th) at radius --radius with max_n --max-n, and reports:

- model calls: calls of the model's forward inside the scheduler (the estimation draw; the selection
  draw is not the scheduler's);
- host synchronisations: reads of tensor values by the host inside the scheduler, counted by wrapping
  ``Tensor.cpu/.item/.tolist/.numpy/__bool__/__int__/__float__`` (on a GPU each read of a device value
  waits for the device; on the CPU they are counted the same way, so reads of host copies count too);
- wall time of the scheduler and of the whole call (selection and estimation), and the decisions
  (which must not change).

It measures whichever scheduler the installed costsmooth has (``packing.sample_until`` or the older
``sequential._schedule``), so the same script gives the before and after figures.

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
_ACTIVE = [False]  # counting only inside the scheduler


@contextlib.contextmanager
def count_host_reads(counter: collections.Counter):
    """Count the Tensor methods that copy device values to the host while the context is open."""
    saved = {name: getattr(torch.Tensor, name) for name in _READS}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            if _ACTIVE[0]:
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
        if _ACTIVE[0]:
            self.calls += 1
            self.rows += x.shape[0]
        return self.model(x)


def instrument_scheduler(seconds: list):
    """Wrap the scheduler so that reads and calls are counted only inside it, and time it."""
    try:
        from costsmooth import smooth as module  # packing.sample_until, as Smooth calls it
        name = "sample_until"
        getattr(module, name)
    except AttributeError:
        from costsmooth import sequential as module  # the scheduler before costsmooth.packing
        name = "_schedule"
    inner = getattr(module, name)

    def timed(*args, **kwargs):
        _ACTIVE[0] = True
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - t0)
            _ACTIVE[0] = False

    setattr(module, name, timed)


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
    scheduler_seconds = []
    instrument_scheduler(scheduler_seconds)
    reads = collections.Counter()
    t0 = time.perf_counter()
    with count_host_reads(reads):
        results = smooth.certify_batch_at(X, args.radius, args.alpha, max_n=args.max_n, labels=y, indices=idx)
    seconds = time.perf_counter() - t0
    out = {"inputs": len(idx), "radius": args.radius, "max_n": args.max_n, "batch": args.batch,
           "model_calls": model.calls, "rows": model.rows, "host_reads": sum(reads.values()),
           "host_reads_by_kind": dict(reads), "scheduler_seconds": round(sum(scheduler_seconds), 2),
           "seconds": round(seconds, 2),
           "samples": sum(r.samples for r in results),
           "decisions": dict(collections.Counter(r.decision for r in results))}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
