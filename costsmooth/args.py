"""Argument helpers shared by every command (certify, recertify, analyze, train, demo and the rest).

This module sits below all commands: command modules import from here, never from each other, so
imports run one way (engine -> certificates -> runs -> commands -> ``cli``).

Errors meant for the user are raised as ``UsageError``: ``cli.main`` prints them as one line,
``error: ...``, and exits with status 2.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch

from .cost import CostMatrix
from .data import default_workers, ham10000_cost_matrix, load_dataset
from .models import ARCHS, NORMALIZE_CHOICES, load_model
from .sampling import eval_mode
from .sound import parse_grid

__all__ = ["UsageError", "ArgumentParser", "HelpFormatter", "add_cost_args", "add_sound_args", "grid_step", "parse_cost",
           "resolve_device", "int_list",
           "batch_arg", "float_list", "COST_PRESETS", "positive_int", "non_negative_int", "positive_float",
           "probability", "max_arg", "check_data_model_order", "add_model_args", "model_from_args", "add_data_args",
           "dataset_from_args", "PRECISIONS", "runs_in", "default_formats", "ModelFormats", "resolve_formats"]


class UsageError(ValueError):
    """A mistake in the command line or its files; printed as one line naming the flag or file."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors: ``costsmooth certify: error: argument --skip: ... (see --help)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults in --help, once, and keeps the description's line breaks.

    An option whose help already names its default (``(default: ...)``), and an option without a
    default (None, or a flag's False), gets no ``(default: ...)`` appended."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "(default" in text or "%(default)" in text:
            return text
        return super()._get_help_string(action)


def _ham10000_cost():
    return ham10000_cost_matrix()


COST_PRESETS = {"ham10000": _ham10000_cost}  # malignant lesion predicted benign is harmful


def add_cost_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cost matrix (cost-sensitive certificates)")
    g.add_argument("--cost", help="cost matrix file (CSV, JSON or .npy), or a preset: " + ", ".join(COST_PRESETS))
    g.add_argument("--seed-classes", help="comma-separated seed classes (with --targets: pairwise, else seedwise)")
    g.add_argument("--targets", help="comma-separated target classes of every seed class")


def int_list(text: str, what: str) -> List[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated class indices, got {text!r}") from None


def float_list(text: str, what: str) -> List[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{what} needs at least one number")
    return values


def parse_cost(args, num_classes: int) -> Optional[CostMatrix]:
    """The cost matrix named by --cost or --seed-classes/--targets, checked against num_classes."""
    if args.cost and args.seed_classes:
        raise UsageError("give either --cost or --seed-classes, not both")
    if args.cost in COST_PRESETS and not os.path.exists(args.cost):
        cost = COST_PRESETS[args.cost]()
        try:
            cost.check_num_classes(num_classes)
        except ValueError as err:
            raise UsageError(f"--cost {args.cost}: the preset is a cost matrix of {cost.num_classes} classes, and "
                             f"here there are {num_classes}; use it with its dataset, or give a cost matrix file "
                             f"(--cost FILE) or --seed-classes") from err
        return cost
    if args.cost:
        if not os.path.exists(args.cost):
            raise UsageError(f"--cost {args.cost}: file not found (or use a preset: {', '.join(COST_PRESETS)})")
        return CostMatrix.from_file(args.cost, num_classes)
    if args.seed_classes:
        seeds = int_list(args.seed_classes, "--seed-classes")
        flags = f"--seed-classes {args.seed_classes}" + (f" --targets {args.targets}" if args.targets else "")
        try:
            if not args.targets:
                return CostMatrix.seedwise(num_classes, seeds)
            targets = int_list(args.targets, "--targets")
            alone = [s for s in seeds if not [t for t in targets if t != s]]
            if alone:
                raise UsageError(f"{flags}: a class cannot target itself, so seed class {alone[0]} has no target; "
                                 f"add other --targets, or drop {alone[0]} from --seed-classes")
            return CostMatrix.pairwise(num_classes, {s: [t for t in targets if t != s] for s in seeds})
        except UsageError:
            raise
        except ValueError as err:  # a class index outside the model's classes
            raise UsageError(f"{flags}: {err}; the classes are numbered 0 to "
                             f"{num_classes - 1}") from err
    if args.targets:
        raise UsageError("--targets needs --seed-classes")
    return None


def resolve_device(name: Optional[str]) -> torch.device:
    """The device named by --device (checked to exist), else cuda when available, else cpu."""
    if name:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise UsageError(f"--device {name}: unknown device; use cpu, cuda or cuda:N") from None
        if device.type not in ("cpu", "cuda"):
            raise UsageError(f"--device {name}: costsmooth runs on cpu or cuda devices")
        if device.type == "cuda":
            if not torch.cuda.is_available():
                raise UsageError(f"--device {name} requested but no CUDA device is available; use --device cpu")
            if device.index is not None and device.index >= torch.cuda.device_count():
                raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # --precision: autocast dtype
_PRECISION_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # the metadata's names


def runs_in(model, x: torch.Tensor, autocast: Optional[torch.dtype], channels_last: bool) -> bool:
    """Whether ``model`` gives finite float logits for ``x`` under ``autocast`` (a dtype or None) and,
    with ``channels_last``, with model and inputs in that memory format (the model's layout is
    restored afterwards)."""
    try:
        if channels_last:
            model.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        with eval_mode(model), torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
            out = model(x)
        return isinstance(out, torch.Tensor) and out.is_floating_point() and bool(torch.isfinite(out).all())
    except (RuntimeError, TypeError, ValueError):
        return False
    finally:
        if channels_last:
            model.to(memory_format=torch.contiguous_format)


def default_formats(model, x: torch.Tensor, bf16: bool, precision: Optional[str] = None) -> Tuple[str, bool]:
    """(precision, channels_last) of a GPU run by default: ``precision`` when given, else "bf16" when
    ``bf16`` (the GPU supports it) and the model gives finite logits for ``x`` under bf16 autocast,
    else "fp32"; channels-last for 4-d inputs ``x`` when the model runs in that layout too, at that
    precision."""
    if precision is None:
        precision = "bf16" if bf16 and runs_in(model, x, torch.bfloat16, False) else "fp32"
    channels_last = x.dim() == 4 and isinstance(model, torch.nn.Module) and runs_in(model, x, PRECISIONS[precision],
                                                                                    True)
    return precision, channels_last


@dataclass
class ModelFormats:
    """How certify runs the model: ``autocast`` (a dtype, or None for fp32), ``channels_last``, and
    ``chosen``, the settings taken by default (e.g. "bf16 by default on cuda")."""
    autocast: Optional[torch.dtype]
    channels_last: bool
    chosen: List[str]

    def summary(self) -> str:
        """The summary line that states the precision and layout of the run."""
        name = {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[self.autocast]
        line = f"model run in {name}, {'channels-last' if self.channels_last else 'standard layout'}"
        if self.chosen:
            line += f" ({'; '.join(self.chosen)})"
        if self.autocast is not None:
            line += "; a reduced-precision run certifies that model, --precision fp32 the exact one"
        return line


def resolve_formats(precision: Optional[str], channels_last: Optional[bool], model, dataset, device,
                    resumed: Optional[str] = None) -> ModelFormats:
    """certify's --precision and --channels-last; None means the default.

    On a CUDA device the default is bf16 autocast with channels-last inputs and model, the formats
    such a GPU is built for, each when the model gives finite logits in it (``default_formats``, on
    two finite inputs of ``dataset``). A reduced-precision run certifies the reduced-precision model:
    ``--precision fp32`` keeps the exact model. Elsewhere the default is fp32 and the standard layout.
    ``resumed``: the precision recorded by the run being resumed ("float32", ...), kept by default.
    """
    device = torch.device(device)
    chosen = []
    if precision is None and resumed in _PRECISION_NAMES:
        precision = _PRECISION_NAMES[resumed]
        chosen.append(f"{precision} as in the run resumed")
    if precision is None or channels_last is None:
        fast = ("fp32", False)
        if device.type == "cuda" and len(dataset):
            x = dataset.take(list(range(min(len(dataset), 8))))[0]
            x = x[torch.isfinite(x.flatten(1)).all(1)][:2].to(device)  # two inputs without NaN or inf
            if len(x):
                fast = default_formats(model, x, torch.cuda.is_bf16_supported(), precision)
        if precision is None:
            precision = fast[0]
            chosen.append(f"{precision} by default on {device.type}")
        if channels_last is None:
            channels_last = fast[1]
            chosen.append(f"channels-last {'on' if channels_last else 'off'} by default on {device.type}")
    return ModelFormats(PRECISIONS[precision], channels_last, chosen)


_BUILTIN_DATASETS = ("digits", "breast_cancer")
_MODEL_SUFFIXES = (".pt", ".pth", ".tar", ".ckpt", ".pkl")


def check_data_model_order(command: str, data: str, model: str) -> None:
    """Refuse MODEL DATA given where DATA MODEL is expected (every command takes DATA then MODEL, as
    Cohen et al.'s certify.py does), with a one-line hint: ``data`` is an existing model file and
    ``model`` names a dataset (a built-in one, NAME:ROOT, or a .pt file holding ``inputs`` and ``labels``)."""
    looks_like_model = data.endswith(_MODEL_SUFFIXES) and os.path.isfile(data)
    if not looks_like_model:
        return
    looks_like_data = model in _BUILTIN_DATASETS or (":" in model and not os.path.exists(model))
    if not looks_like_data and model.endswith(".pt") and os.path.isfile(model):
        try:  # tensors only (weights_only), memory-mapped: a model file fails or lacks the keys
            obj = torch.load(model, map_location="cpu", weights_only=True, mmap=True)
            looks_like_data = isinstance(obj, dict) and "inputs" in obj and "labels" in obj
        except Exception:  # not a dataset file (TorchScript, a pickled module, a legacy file ...)
            pass
    if looks_like_data:
        raise UsageError(f"{command} takes DATA then MODEL (as certify does), got the model {data} first: "
                         f"costsmooth {command} {model} {data} ...")


def _typed(convert, check, describe: str):
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {describe}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"must be {describe}, got {text!r}")
        return value
    parse.__name__ = describe
    return parse


positive_int = _typed(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _typed(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _typed(float, lambda v: v > 0 and v != float("inf"), "a positive finite number")
probability = _typed(float, lambda v: 0 < v < 1, "a number in (0, 1)")


max_arg = _typed(int, lambda v: v >= 1 or v == -1, "a dataset index >= 1, or -1 for all")


def batch_arg(text: str):
    """--batch: an integer >= 1 or 'auto'."""
    if text == "auto":
        return text
    return _typed(int, lambda v: v >= 1, "an integer >= 1 or 'auto'")(text)


seed_arg = _typed(int, lambda v: 0 <= v < 2**64, "an integer in [0, 2^64)")


def add_sampling_args(p: argparse.ArgumentParser, *, n0: int, n: int, seed_help: str = "noise seed") -> None:
    """The options every command that samples a dataset shares: which inputs (--skip, --max, --split),
    how many samples (--N0, --N), --batch, --seed, --device and --quiet."""
    p.add_argument("--N0", type=positive_int, default=n0, help="selection samples")
    p.add_argument("--N", type=positive_int, default=n, help="estimation samples")
    p.add_argument("--batch", type=batch_arg, default=1000,
                   help="batch size of model calls, or 'auto' (on a GPU: sized from the free memory and the bytes "
                        "per row of the model, measured; 1000 on a CPU)")
    p.add_argument("--skip", type=positive_int, default=1, help="use every skip-th input")
    p.add_argument("--max", "--max-index", dest="max", type=max_arg, default=-1,
                   help="stop before this dataset index (-1: all); under torchrun write --max-index (torchrun "
                        "reads --max as its --max-restarts)")
    p.add_argument("--split", default="test", choices=["train", "test", "all"],
                   help="dataset split ('all' for folder:/.pt datasets without one)")
    p.add_argument("--seed", type=seed_arg, default=0, help=seed_help)
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def grid_step(text: str) -> float:
    """--grid: a positive number or fraction (1/255)."""
    try:
        return parse_grid(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_sound_args(p: argparse.ArgumentParser, what: str = "the certificate holds") -> None:
    """--sound / --grid H: sound floating-point mode (``costsmooth.sound``); ``what`` completes its help."""
    g = p.add_argument_group("sound floating-point mode (Voracek and Hein 2023; see the README)")
    g.add_argument("--sound", action="store_true",
                   help=f"inputs on a grid: the model sees the grid point of the cell of x + noise, drawn exactly "
                        f"from the Gaussian's law, so {what} whatever the model does with floating point; inputs "
                        f"off the grid are refused")
    g.add_argument("--grid", metavar="H", type=grid_step,
                   help="the grid step of --sound (default: the dataset's, digits 1/16; else 1/255)")


def add_model_args(p: argparse.ArgumentParser, *, arch: bool = True, normalize: bool = True) -> None:
    """The options of every command that loads a model file: --arch (a bare state dict's architecture),
    --normalize (the input normalisation of a file without one) and --trust-model-code."""
    g = p.add_argument_group("model file (checkpoints and state dicts load without running code from the file)")
    if arch:
        g.add_argument("--arch", choices=sorted(ARCHS), metavar="ARCH",
                       help="architecture of a bare state dict, e.g. torchvision's resnet50 weights (one of "
                            f"{', '.join(sorted(ARCHS))}); a checkpoint names its own")
    if normalize:
        g.add_argument("--normalize", metavar=NORMALIZE_CHOICES,
                       help="input normalisation of a file that carries none (Cohen et al.'s checkpoints, torchvision "
                            "weights); default: DATASET's (cifar10 and imagenet: Cohen et al.'s constants). A file "
                            "with its own normalisation keeps it")
    g.add_argument("--trust-model-code", action="store_true",
                   help="also load a torch.save'd whole nn.Module: a pickle, so loading it runs code from the file; "
                        "use only for files you trust (not needed for TorchScript, checkpoints or state dicts)")


def model_from_args(args, path: str, dataset_spec: Optional[str] = None, dataset=None, map_location="cpu"):
    """The model in ``path`` loaded with the options of ``add_model_args`` (``costsmooth.models.load_model``);
    ``dataset_spec`` (e.g. ``cifar10:ROOT``) decides the default normalisation, ``dataset`` gives the
    input shape of a file that does not record it."""
    return load_model(path, map_location, input_shape=getattr(dataset, "input_shape", None), dataset=dataset_spec,
                      arch=getattr(args, "arch", None), normalize=getattr(args, "normalize", None),
                      trust_code=args.trust_model_code)


def add_data_args(p: argparse.ArgumentParser) -> None:
    """How a command reads its dataset: --workers (loader processes) and, for folder:/ham10000: datasets,
    --image-size and --resize."""
    g = p.add_argument_group("reading the data")
    g.add_argument("--workers", type=non_negative_int, default=None,
                   help=f"processes that decode images ahead of the model (imagenet:, folder:, ham10000: and "
                        f"augmented training data; 0 decodes in the main process; default {default_workers()} here)")
    g.add_argument("--image-size", type=positive_int, metavar="S",
                   help="folder: and ham10000: datasets: the input size S x S (default 32 for folder:, 64 for "
                        "ham10000:)")
    g.add_argument("--resize", metavar="POLICY",
                   help="folder: and ham10000: datasets: stretch (resize to S x S whatever the aspect ratio; the "
                        "default), crop (shorter side to S, centre crop), crop:R (shorter side to R, centre crop S; "
                        "crop:256 with --image-size 224 is Cohen et al.'s ImageNet test transform) or exact (refuse "
                        "images of another size)")


def dataset_from_args(args, split: Optional[str] = None):
    """The dataset named on the command line, with its --image-size and --resize when the command has them."""
    return load_dataset(args.dataset, split=split or args.split, image_size=getattr(args, "image_size", None),
                        resize=getattr(args, "resize", None))
