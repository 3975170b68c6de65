"""The ``costsmooth`` command line: certify, recertify, analyze, train, demo, info."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import torch

from .args import UsageError, add_cost_args, batch_arg, float_list, parse_cost, resolve_device
from .input_dependent import add_sigma_fn_args, sigma_from_args
from .runs import analyze, certify_dataset, recertify

__all__ = ["main", "build_parser"]


def cmd_certify(args) -> None:
    from .data import load_dataset
    from .models import load_model

    dataset = load_dataset(args.dataset, split=args.split)
    model = load_model(args.model)
    device = resolve_device(args.device)
    num_classes = dataset.num_classes
    cost = parse_cost(args, num_classes)
    sigma = sigma_from_args(args, device)  # a number, or KNNSigma with --sigma-fn (costsmooth.input_dependent)
    certify_dataset(model, dataset, sigma, args.outfile, n0=args.N0, n=args.N, alpha=args.alpha,
                    batch=args.batch, skip=args.skip, max_index=args.max, cost=cost, seed=args.seed, device=device,
                    meta_extra={"dataset": args.dataset, "model": os.path.abspath(args.model), "split": args.split},
                    autocast={"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision],
                    channels_last=args.channels_last, cuda_graphs=args.cuda_graphs)
    print(f"wrote {args.outfile}")


def cmd_recertify(args) -> None:
    from .results import read_meta
    meta = read_meta(args.tsv)
    cost = parse_cost(args, meta.get("num_classes", 0)) if (args.cost or args.seed_classes) else None
    recertify(args.tsv, args.outfile, args.alpha, cost)
    print(f"wrote {args.outfile}")


def cmd_analyze(args) -> None:
    analyze(args.tsv, float_list(args.radii, "--radii"), args.classwise, args.plot)


def cmd_info(args) -> None:
    from . import build_info
    info = build_info()
    info["torch"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    for k, v in info.items():
        print(f"{k}: {v}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="costsmooth", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("certify", help="certify a dataset with a smoothed classifier (Cohen et al.'s CLI)")
    p.add_argument("dataset", help="digits, breast_cancer, cifar10:ROOT, mnist:ROOT, ham10000:ROOT, folder:ROOT, "
                                   "or a .pt file {'inputs', 'labels'}")
    p.add_argument("base_classifier", metavar="MODEL", help="TorchScript, torch.save'd module, or checkpoint")
    p.add_argument("sigma", type=float, help="noise level")
    p.add_argument("outfile", help="output TSV (re-running the same command resumes it)")
    p.add_argument("--N0", type=int, default=100, help="selection samples")
    p.add_argument("--N", type=int, default=100000, help="estimation samples")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--batch", type=batch_arg, default=1000,
                   help="batch size of model calls, or 'auto' (largest that fits, by out-of-memory recovery)")
    p.add_argument("--skip", type=int, default=1, help="certify every skip-th input")
    p.add_argument("--max", type=int, default=-1, help="stop before this dataset index")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast precision of the model (a reduced-precision run certifies that model)")
    p.add_argument("--channels-last", action="store_true", help="channels-last inputs and model (4-d inputs)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay model + vote as a CUDA graph (CUDA only)")
    add_cost_args(p)
    add_sigma_fn_args(p)  # --sigma-fn knn --sigma-r --sigma-k --sigma-m (costsmooth.input_dependent)
    p.set_defaults(func=lambda a: (setattr(a, "model", a.base_classifier), cmd_certify(a)))

    p = sub.add_parser("recertify", help="recompute certificates from saved counts at another alpha or cost")
    p.add_argument("tsv")
    p.add_argument("outfile")
    p.add_argument("--alpha", type=float)
    add_cost_args(p)
    p.set_defaults(func=cmd_recertify)

    p = sub.add_parser("analyze", help="metric tables and plots of certification TSVs")
    p.add_argument("tsv", nargs="+")
    p.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="comma-separated radii")
    p.add_argument("--classwise", type=float, metavar="R", help="also print class-wise metrics at radius R")
    p.add_argument("--plot", help="save the curves to this PNG")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("info", help="how costsmooth was built")
    p.set_defaults(func=cmd_info)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    from . import demo, input_dependent, train
    return [train.register_cli, demo.register_cli, input_dependent.register_cli]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
