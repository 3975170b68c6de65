"""costsmooth: certify classifiers with (cost-sensitive) randomized smoothing, analyze the results
and train models for it. 'costsmooth COMMAND --help' lists the options of a command."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from typing import List, Optional

import torch

from . import __version__, build_info, calibration, demo, distributed, fairness, input_dependent, train
from ._checks import error_line
from .analysis import analyze
from .args import (ArgumentParser, HelpFormatter, UsageError, add_cost_args, add_data_args, add_model_args,
                   add_sampling_args, add_sound_args, check_data_model_order, dataset_from_args, float_list, model_from_args,
                   parse_cost, positive_float, positive_int, PRECISIONS, probability, resolve_device, resolve_formats)
from .distributed import FailFast, RankError, certify_distributed, init_from_env, parse_shard
from .input_dependent import add_sigma_fn_args, sigma_from_args
from .results import read_meta
from .runs import (certify_dataset, certify_dataset_at, probe_num_classes, recertify, summarize_run,
                   summarize_sequential)
from .sequential import DEFAULT_FIRST, DEFAULT_GROWTH

__all__ = ["main", "build_parser"]


def cmd_certify(args) -> None:
    check_data_model_order("certify", args.dataset, args.model)
    if args.grid is not None and not args.sound:
        raise UsageError("--grid is the input grid of --sound: add --sound")
    if args.sound and getattr(args, "sigma_fn", None):
        raise UsageError("--sound draws with one noise level: it cannot be combined with --sigma-fn")
    if certify_sequential(args) is not None:  # --sequential --radius R (costsmooth.sequential)
        return
    if args.N0 > args.N:
        warnings.warn(f"--N0 {args.N0} > --N {args.N}: the selection draw is larger than the estimation draw; "
                      f"usually N0 is about 100 and N is 10^4-10^5")
    if args.cuda_graphs and not (args.device or "cuda").startswith("cuda"):
        raise UsageError("--cuda-graphs needs a CUDA device; drop it with --device cpu")
    shard = parse_shard(args.shard) if args.shard else None
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if args.split_samples and not distributed:
        raise UsageError("--split-samples splits each input's samples across torchrun processes: start the command "
                         "with torchrun --nproc-per-node K -m costsmooth certify ...")
    if distributed and shard is not None:
        raise UsageError("--shard is for separate jobs (SLURM arrays); under torchrun the inputs are sharded across "
                         "ranks already: drop --shard")
    device = resolve_device(args.device)
    # under torchrun the process group comes first, so that a failure anywhere below (an unreadable
    # file on one rank, a NaN input, out of memory) stops every rank at once (distributed.FailFast)
    ctx = init_from_env() if distributed else None
    guard = FailFast(ctx["rank"], ctx["world"]) if ctx is not None else contextlib.nullcontext()
    with guard:
        dataset = dataset_from_args(args)
        model = model_from_args(args, args.model, args.dataset, dataset)
        if ctx is not None and device.type == "cuda":
            device = ctx["device"]  # each rank on its local GPU
        num_classes = probe_num_classes(model.to(device), dataset, device)
        formats = resolve_formats(args.precision, args.channels_last, model, dataset, device,
                                  read_meta(args.outfile).get("precision"))
        cost = parse_cost(args, num_classes)
        sigma = sigma_from_args(args, device)  # a number, or KNNSigma with --sigma-fn (costsmooth.input_dependent)
        t0 = time.perf_counter()
        kwargs = dict(n0=args.N0, n=args.N, alpha=args.alpha, batch=args.batch, skip=args.skip, max_index=args.max,
                      cost=cost, seed=args.seed, device=device,
                      meta_extra={"dataset": args.dataset, "model": os.path.abspath(args.model), "split": args.split},
                      autocast=formats.autocast, channels_last=formats.channels_last, cuda_graphs=args.cuda_graphs,
                      skip_invalid=args.skip_invalid,
                      progress=not args.quiet, return_stats=True, prob_sums=args.prob_sums,
                      workers=args.workers, sound=args.sound, grid=args.grid)
        if ctx is None:
            stats = certify_dataset(model, dataset, sigma, args.outfile, shard=shard, **kwargs)
        else:
            stats = certify_distributed(model, dataset, sigma, args.outfile, split_samples=args.split_samples,
                                        ctx=ctx, **kwargs)
    if ctx is not None:
        import torch.distributed as dist  # optional: only under torchrun
        dist.destroy_process_group()  # after success only: on a failure the process ends (FailFast)
        if ctx["rank"] != 0:
            return
    print(summarize_run(stats["outfile"] if shard is not None else args.outfile, stats, time.perf_counter() - t0))
    print(formats.summary())


def add_sequential_args(p) -> None:
    """--sequential / --radius / --max-n / --first / --growth for ``costsmooth certify``."""
    g = p.add_argument_group("sequential certification at one radius (costsmooth.sequential, docs/sequential.md)")
    g.add_argument("--sequential", action="store_true",
                   help="decide per input 'certified at --radius R?' with an anytime-valid test, stopping each "
                        "input as soon as it is decided (columns decision and samples); --N0 is the selection draw")
    g.add_argument("--radius", type=positive_float, help="the L2 radius R tested by --sequential")
    g.add_argument("--max-n", type=positive_int, help="--sequential: most estimation samples per input (default --N)")
    g.add_argument("--first", type=positive_int, default=DEFAULT_FIRST, help="--sequential: first checkpoint")
    g.add_argument("--growth", type=positive_float, default=DEFAULT_GROWTH,
                   help="--sequential: ratio of consecutive checkpoints (> 1); half of alpha is spent at max-n, the "
                        "other half evenly over the earlier checkpoints (the levels are recorded in the metadata)")


def certify_sequential(args) -> Optional[dict]:
    """``costsmooth certify ... --sequential --radius R`` (``runs.certify_dataset_at``): returns None (and does
    nothing) without --sequential."""
    if not args.sequential:
        for flag, value in (("--radius", args.radius), ("--max-n", args.max_n)):
            if value is not None:
                raise UsageError(f"{flag} is a setting of sequential certification: add --sequential")
        return None
    if args.radius is None:
        raise UsageError("--sequential needs --radius R (the L2 radius to decide)")
    if args.growth <= 1:
        raise UsageError(f"--growth {args.growth}: the ratio of consecutive checkpoints must be > 1 (e.g. 1.25)")
    refused = [flag for flag, on in (("--shard", args.shard), ("--split-samples", args.split_samples),
                                     ("--sigma-fn", args.sigma_fn), ("--cuda-graphs", args.cuda_graphs),
                                     ("--skip-invalid", args.skip_invalid),
                                     ("--prob-sums", getattr(args, "prob_sums", False)),
                                     ("torchrun", int(os.environ.get("WORLD_SIZE", "1")) > 1)) if on]
    if refused:
        raise UsageError(f"{refused[0]} is not available with --sequential (one process, constant sigma); drop it")
    device = resolve_device(args.device)
    dataset = dataset_from_args(args)
    model = model_from_args(args, args.model, args.dataset, dataset)
    cost = parse_cost(args, probe_num_classes(model.to(device), dataset, device))
    formats = resolve_formats(args.precision, args.channels_last, model, dataset, device,
                              read_meta(args.outfile).get("precision"))
    t0 = time.perf_counter()
    out = certify_dataset_at(model, dataset, args.sigma, args.outfile, args.radius, n0=args.N0,
                             max_n=args.max_n or args.N, alpha=args.alpha,
                             batch=args.batch, skip=args.skip, max_index=args.max,
                             cost=cost, seed=args.seed, device=device, progress=not args.quiet, first=args.first,
                             growth=args.growth,
                             meta_extra={"dataset": args.dataset, "model": os.path.abspath(args.model),
                                         "split": args.split},
                             autocast=formats.autocast, channels_last=formats.channels_last, workers=args.workers,
                             sound=args.sound, grid=args.grid)
    print(summarize_sequential(out, args.radius, args.max_n or args.N, time.perf_counter() - t0))
    print(formats.summary())
    return out


def cmd_recertify(args) -> None:
    meta = read_meta(args.tsv)
    if not meta:
        raise UsageError(f"{args.tsv}.meta.json not found: recertify needs a run written by costsmooth certify")
    cost = parse_cost(args, meta.get("num_classes", 0)) if (args.cost or args.seed_classes) else None
    recertify(args.tsv, args.outfile, args.alpha, cost, available_only=args.available_only)
    print(f"wrote {args.outfile}")


def cmd_analyze(args) -> None:
    analyze(args.tsv, float_list(args.radii, "--radii"), args.classwise, args.plot, json_path=args.json,
            csv_path=args.csv)


def cmd_info(args) -> None:
    info = build_info()
    info["torch"] = torch.__version__
    info["cuda_available"] = torch.cuda.is_available()
    for k, v in info.items():
        print(f"{k}: {v}")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="costsmooth", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"costsmooth {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("certify", help="certify a dataset with a smoothed classifier (Cohen et al.'s CLI)",
                       formatter_class=HelpFormatter,
                       description="Certify every --skip-th input of DATASET with the smoothed MODEL (Cohen et al.'s "
                                   "certify.py, plus cost-sensitive certificates). Writes OUTFILE (TSV), "
                                   "OUTFILE.meta.json and OUTFILE.counts.jsonl; re-running the command resumes, and "
                                   "another --skip/--max extends the run.")
    p.add_argument("dataset", help="digits, breast_cancer, wine, imagenet:ROOT (its val folder), cifar10:ROOT, "
                                   "mnist:ROOT, ham10000:ROOT, folder:ROOT, or a .pt file (see the README for its keys)")
    p.add_argument("base_classifier", metavar="MODEL",
                   help="checkpoint (costsmooth's or Cohen et al.'s layout), state dict (with --arch), TorchScript, "
                        "or a torch.save'd module (with --trust-model-code)")
    p.add_argument("sigma", type=positive_float, help="noise level")
    p.add_argument("outfile", help="output TSV (re-running the same command resumes it)")
    p.add_argument("--alpha", type=probability, default=0.001, help="failure probability")
    add_sampling_args(p, n0=100, n=100000)  # --N0 --N --batch --skip --max --split --seed --device --quiet
    add_model_args(p)  # --arch --normalize --trust-model-code
    add_data_args(p)  # --workers --image-size --resize
    p.add_argument("--precision", choices=list(PRECISIONS),
                   help="autocast precision of the model; a reduced-precision run certifies that model, fp32 the "
                        "exact one (default: bf16 on a CUDA device when the model gives finite logits in it, else "
                        "fp32; a resumed run keeps its precision)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels-last inputs and model, for 4-d inputs (default: on a CUDA device when the model "
                        "runs in it, else off)")
    p.add_argument("--cuda-graphs", action="store_true", help="replay model + vote as a CUDA graph (CUDA only)")
    p.add_argument("--skip-invalid", action="store_true",
                   help="record inputs with NaN or infinite values as not certified (predict -1) and go on, "
                        "instead of stopping")
    p.add_argument("--prob-sums", action="store_true",
                   help="also save each input's softmax sums of the estimation draw in OUTFILE.counts.jsonl (for "
                        "costsmooth calibration --from)")
    add_sound_args(p)  # --sound --grid H
    g = p.add_argument_group("scale-out (see the README: several GPUs, machines, SLURM arrays)")
    g.add_argument("--shard", metavar="I/K",
                   help="certify only part I of K (every K-th selected input from the I-th); join the parts with "
                        "costsmooth merge")
    g.add_argument("--split-samples", action="store_true",
                   help="under torchrun: split each input's samples across the processes (counts summed exactly) "
                        "instead of sharding the inputs")
    add_cost_args(p)
    add_sigma_fn_args(p)  # --sigma-fn knn --sigma-r --sigma-k --sigma-m (costsmooth.input_dependent)
    add_sequential_args(p)  # --sequential --radius R --max-n N (costsmooth.sequential)
    p.set_defaults(func=lambda a: (setattr(a, "model", a.base_classifier), cmd_certify(a)))

    p = sub.add_parser("recertify", help="recompute certificates from saved counts at another alpha or cost",
                       formatter_class=HelpFormatter,
                       description="Recompute the certificates of a certify run from its saved counts "
                                   "(TSV.counts.jsonl) at another alpha and/or cost matrix, without sampling again.")
    p.add_argument("tsv", help="a TSV written by costsmooth certify (with its .meta.json and .counts.jsonl)")
    p.add_argument("outfile", help="new output TSV (must not exist)")
    p.add_argument("--alpha", type=probability, help="failure probability (default: the run's)")
    p.add_argument("--available-only", action="store_true",
                   help="recertify only the rows whose counts were saved when some are missing (else refused)")
    add_cost_args(p)
    p.set_defaults(func=cmd_recertify)

    p = sub.add_parser("analyze", help="metric tables and plots of certification TSVs", formatter_class=HelpFormatter,
                       description="Certified accuracy, Rob_std, Rob_cs, worst-case cost and ACR of one or more "
                                   "certification TSVs side by side, optionally class-wise, as plots, JSON or CSV.")
    p.add_argument("tsv", nargs="+", help="certification TSVs (costsmooth's or Cohen et al.'s format)")
    p.add_argument("--radii", default="0,0.25,0.5,0.75,1.0", help="comma-separated radii")
    p.add_argument("--classwise", type=float, metavar="R", help="also print class-wise metrics at radius R")
    p.add_argument("--plot", help="save the curves to this PNG")
    p.add_argument("--json", metavar="PATH", help="also write every table as JSON")
    p.add_argument("--csv", metavar="PATH", help="also write the metric table as CSV")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("info", help="how costsmooth was built", formatter_class=HelpFormatter)
    p.set_defaults(func=cmd_info)

    for register in _extra_commands():
        register(sub)
    return parser


def _extra_commands():
    return [train.register_cli, demo.register_cli, distributed.register_cli, input_dependent.register_cli,
            fairness.register_cli, calibration.register_cli]


def main(argv=None) -> int:
    """Run one command; returns the exit status (0 done, 2 a usage or input error, 130 interrupted).

    Errors a user can fix are printed as one line, ``error: ...``, without a traceback.
    """
    if argv is None:  # run as a program: its warnings are lines for a user, not the source lines that raised them
        warnings.formatwarning = _format_warning
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # torchrun ... -m costsmooth -- certify ...: the separator protects certify's options
        argv = argv[1:]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # argparse: --help, or a malformed command line (already printed)
        return int(stop.code or 0) if not isinstance(stop.code, str) else 2
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_what_was_kept(args)}", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, TypeError, OSError, RankError) as err:
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    return 0


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """A warning of the command line as one line, ``warning: ...`` (a category other than UserWarning named)."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    return f"warning{kind}: {message}\n"


def _what_was_kept(args) -> str:
    """After Ctrl-C: which results remain and how to go on (nothing is claimed that is not on disk)."""
    if getattr(args, "command", None) == "train":
        ckpt = os.path.join(args.out, "checkpoint.pt")
        if os.path.isfile(ckpt):
            return f"the checkpoint of the last finished epoch is kept ({ckpt}); run the same command with --resume " \
                   f"to continue"
        return "no epoch finished, so no checkpoint was written; run the same command again to start over"
    outfile = getattr(args, "outfile", None)
    if outfile and getattr(args, "command", None) == "certify":
        with open(outfile) if os.path.isfile(outfile) else open(os.devnull) as f:
            rows = sum(1 for _ in f) - 1  # below the header
        if rows > 0:
            return f"the finished rows are kept in {outfile}; run the same command again to resume"
        return "no input was finished, so no row was kept; run the same command again to start over"
    return "stopped before the end; run the same command again"
