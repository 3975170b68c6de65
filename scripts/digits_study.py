"""What the digits studies (``scripts/*_digits.py``) share: their common options, the digits_cnn trained
with Gaussian augmentation at a noise level (trained once in its directory, reused on re-runs), and
the certify run of the test images into a TSV (resumed on re-runs). Not a command of its own."""
from __future__ import annotations

import argparse

from costsmooth.models import load_model
from costsmooth.runs import certify_dataset
from costsmooth.train import train


def study_parser(doc: str, out: str, *, n0: int, n: int) -> argparse.ArgumentParser:
    """--out --sigmas --epochs --n0 --n --alpha --skip --seed, with this study's defaults."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=out, help="output directory (checkpoints, TSVs, summary.md)")
    p.add_argument("--sigmas", default="0.25,0.5", help="noise levels")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n0", type=int, default=n0)
    p.add_argument("--n", type=int, default=n)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--skip", type=int, default=2, help="certify every skip-th test image")
    p.add_argument("--seed", type=int, default=0)
    return p


def train_or_load(train_set, sigma, out_dir: str, args) -> str:
    """The checkpoint of digits_cnn trained with Gaussian augmentation at ``sigma`` (a number or a sigma
    function) in ``out_dir``: Adam, lr 0.001, batch 64, ``args.epochs``, ``args.seed``; a finished run is reused."""
    return train(train_set, "digits_cnn", "gaussian", sigma, out_dir, epochs=args.epochs, optimizer="adam", lr=0.001,
                 batch_size=64, seed=args.seed, resume=True, progress=False)


def certify_test(ckpt: str, test_set, sigma, tsv: str, args, **options) -> None:
    """Every ``args.skip``-th digits test image certified into ``tsv`` (n0, n, alpha, seed from ``args``);
    ``options`` go to ``certify_dataset`` (e.g. ``sound=True``)."""
    certify_dataset(load_model(ckpt), test_set, sigma, tsv, n0=args.n0, n=args.n, alpha=args.alpha,
                    batch=max(4096, args.n), skip=args.skip, seed=args.seed, progress=False,
                    meta_extra={"dataset": "digits", "model": ckpt, "split": "test"}, **options)
