"""Base classifiers, with input normalisation as their first layer (noise lives in input space), and
the loading of model files, safely.

Architectures: ``digits_cnn`` (8x8 digits), ``mlp`` (tabular), ``lenet`` (MNIST), ``cifar_resnet20/56/110``
(He et al.'s CIFAR ResNets with the parameter names of Cohen et al.'s ``archs/cifar_resnet.py``),
``resnet50`` (torchvision's ResNet-50 parameter names; torchvision is not needed). A model is
``nn.Sequential(Normalize, arch)``, so its state dict has Cohen et al.'s keys: ``1.conv1.weight``,
``1.layer1.0.bn1.running_mean``, ... plus ``0.mean`` and ``0.std`` (the normalisation, which Cohen et
al.'s checkpoints do not carry: theirs comes from the dataset).

Checkpoints follow Cohen et al.'s layout ``{"arch", "state_dict", ...}`` plus ``"arch_kwargs"``
(num_classes, input_shape). What loading each file format trusts:

- **checkpoints and bare state dicts** are read with ``torch.load(weights_only=True)``: only tensors
  and plain containers are rebuilt, no code from the file runs;
- **TorchScript** (``torch.jit.save``) runs the model's TorchScript code, which torch interprets: it
  can compute anything on its inputs but cannot import Python modules or call the operating system;
- **a ``torch.save``d ``nn.Module``** is a pickle that imports and calls whatever it names, so loading
  it runs code from the file: it loads only with ``trust_code=True`` (``--trust-model-code``).
"""
from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .data import NORMALIZATION

__all__ = ["Normalize", "ARCHS", "build_model", "save_checkpoint", "load_model", "read_checkpoint", "load_weights",
           "parse_normalization", "NORMALIZE_CHOICES", "UnsafeModelFile"]

NORMALIZE_CHOICES = "cifar10|imagenet|none|M1,M2,M3/S1,S2,S3"


class UnsafeModelFile(ValueError):
    """The file holds pickled Python objects that only load by running code from it."""


class Normalize(nn.Module):
    """(x - mean) / std with buffers broadcast over channels (images) or features (vectors)."""

    def __init__(self, input_shape: Sequence[int]):
        super().__init__()
        shape = (input_shape[0],) + (1,) * (len(input_shape) - 1)
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def set(self, mean, std) -> "Normalize":
        self.mean.copy_(torch.as_tensor(mean, dtype=torch.float32).reshape(self.mean.shape))
        self.std.copy_(torch.as_tensor(std, dtype=torch.float32).reshape(self.std.shape))
        return self

    def forward(self, x):
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def _digits_cnn(num_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * (h // 2) * (w // 2), 128), nn.ReLU(),
                         nn.Linear(128, num_classes))


def _mlp(num_classes, input_shape, hidden=64):
    features = 1
    for s in input_shape:
        features *= s
    return nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def _lenet(num_classes, input_shape):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * ((h // 2 - 4) // 2) * ((w // 2 - 4) // 2), 120),
                         nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, num_classes))


def _downsample(cin: int, cout: int, stride: int) -> Optional[nn.Sequential]:
    """The projection shortcut (1x1 convolution + batch norm) where the shape changes, else None."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """He et al.'s two-convolution residual block (names: conv1 bn1 conv2 bn2 downsample)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = _downsample(cin, cout, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block: 1x1, 3x3 (strided), 1x1 x4 (names: conv1..3 bn1..3 downsample)."""

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, 4 * width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * width)
        self.relu = nn.ReLU()
        self.downsample = _downsample(cin, 4 * width, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet of depth 6k + 2 (16/32/64 channels), with the parameter names of Cohen et
    al.'s ``archs/cifar_resnet.py``: conv1 bn1 layer1..3 fc. Global average pooling (Cohen et al.'s
    ``AvgPool2d(8)`` on 32x32 inputs)."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6k + 2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        cin = 16
        for i, (cout, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            self.add_module(f"layer{i}", nn.Sequential(*[BasicBlock(cin if b == 0 else cout, cout, stride if b == 0 else 1)
                                                         for b in range(blocks)]))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet50(nn.Module):
    """ResNet-50 for ImageNet-sized inputs with torchvision's parameter names (conv1 bn1 layer1..4 fc), so
    torchvision's and Cohen et al.'s weights load without torchvision."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (width, count, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            self.add_module(f"layer{i}", nn.Sequential(*[Bottleneck(cin if b == 0 else 4 * width, width,
                                                                    stride if b == 0 else 1) for b in range(count)]))
            cin = 4 * width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _cifar_resnet(depth):
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6k + 2, got {depth}")
    return lambda num_classes, input_shape: CifarResNet(depth, num_classes, input_shape[0])


ARCHS: Dict[str, Callable] = {
    "digits_cnn": _digits_cnn,
    "mlp": _mlp,
    "lenet": _lenet,
    "cifar_resnet20": _cifar_resnet(20),
    "cifar_resnet56": _cifar_resnet(56),
    "cifar_resnet110": _cifar_resnet(110),
    "resnet50": lambda num_classes, input_shape: ResNet50(num_classes, input_shape[0]),
}

# Input size of the archs of published checkpoints, used when a file does not record it (only the
# channel count matters to these fully convolutional nets; it is read from the first convolution).
_DEFAULT_SIZE = {"cifar_resnet20": (32, 32), "cifar_resnet56": (32, 32), "cifar_resnet110": (32, 32),
                 "resnet50": (224, 224)}
_DATASET_SHAPE = {"cifar10": (3, 32, 32), "imagenet": (3, 224, 224)}


def build_model(arch: str, num_classes: int, input_shape: Sequence[int], mean=None, std=None) -> nn.Sequential:
    """``Normalize`` followed by the named architecture. mean/std: per channel (images) or per feature."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(sorted(ARCHS))}")
    input_shape = tuple(int(s) for s in input_shape)
    norm = Normalize(input_shape)
    if mean is not None:
        norm.set(mean, std if std is not None else 1.0)
    return nn.Sequential(norm, ARCHS[arch](num_classes, input_shape))


def save_checkpoint(path: str, model: nn.Module, arch: str, num_classes: int, input_shape, **extra) -> None:
    """Write ``{"arch", "state_dict", "arch_kwargs", **extra}`` atomically (Cohen et al.'s format, extended).

    ``extra`` must hold only tensors, numbers, strings, None and lists/tuples/dicts of them, so that the
    file loads with ``torch.load(weights_only=True)``."""
    state = {"arch": arch, "state_dict": model.state_dict(),
             "arch_kwargs": {"num_classes": int(num_classes), "input_shape": [int(s) for s in input_shape]}, **extra}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


# -- reading files --------------------------------------------------------------------------------------
def _is_torchscript(path: str) -> bool:
    """TorchScript archives hold a code/ folder; torch.save archives do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())


def _unsafe_globals(path: str, err: Exception) -> List[str]:
    """The Python names a torch.save file would import to load (read without running anything); empty
    when the file is no pickle at all."""
    try:
        names = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a legacy (non-zip) file: the unpickler's refusal names the first one
        names = set(re.findall(r"GLOBAL ([\w.]+)", str(err)))
    return sorted(names, key=lambda n: (n.startswith("torch."), n))  # the user's own classes first


def read_checkpoint(path: str, map_location="cpu", *, trust_code: bool = False, what: str = "model file"):
    """The object in a model or checkpoint file: a TorchScript module, or what ``torch.save`` wrote.

    Read with ``torch.load(weights_only=True)`` (tensors and plain containers; nothing from the file
    runs). A file that needs more (a pickled ``nn.Module``, or any other pickled class or function)
    raises ``UnsafeModelFile`` naming what it would import, unless ``trust_code`` (then it is
    unpickled, which runs whatever code it names). ``what`` names the file in messages (e.g.
    ``"--init"``). Every error is a one-line ``ValueError`` (or ``FileNotFoundError``).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(path, map_location=map_location)
        except Exception as err:
            raise ValueError(f"cannot read the TorchScript {what} {path}: {_first_line(err)}") from None
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        names = _unsafe_globals(path, err)
        if not names:  # not a pickle that needs code: a damaged or foreign file
            raise ValueError(f"cannot read {what} {path}: it is not a file written by torch.save or torch.jit.save "
                             f"({_unpickling_reason(err)}). Expected TorchScript, a checkpoint {{'arch', "
                             f"'state_dict'}} or a state dict") from None
        if not trust_code:
            held = f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
            raise UnsafeModelFile(
                f"{what} {path} holds pickled Python code{held}: loading it would run code from the file. Load it "
                f"only if you trust its source, with --trust-model-code (API: trust_code=True); or save it in a "
                f"format that holds no Python code: TorchScript (torch.jit.save(torch.jit.script(model), PATH)) "
                f"or a state dict (torch.save(model.state_dict(), PATH)) loaded with --arch NAME") from None
    except Exception as err:
        raise ValueError(f"cannot read {what} {path}: {_first_line(err)}. Expected TorchScript, a checkpoint "
                         f"{{'arch', 'state_dict'}} or a state dict") from None
    try:  # trust_code: the user vouches for the file
        return torch.load(path, map_location=map_location, weights_only=False)
    except (AttributeError, ImportError) as err:  # the class of a pickled module is not importable here
        raise ValueError(f"{what} {path} holds a pickled object whose class cannot be imported here "
                         f"({_first_line(err)}); save a state dict (torch.save(model.state_dict(), PATH)) and load "
                         f"it with --arch NAME, or save TorchScript (torch.jit.save)") from None
    except Exception as err:
        raise ValueError(f"cannot read {what} {path}: {_first_line(err)}") from None


def _unpickling_reason(err: BaseException) -> str:
    """The unpickler's own complaint inside torch's 'Weights only load failed' explanation."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the documentation",
                                                       "Please file an issue", "(1)", "(2)"))]
    return (useful or lines or [type(err).__name__])[0].rstrip(".")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# -- state dicts in Cohen et al.'s, torchvision's and costsmooth's layouts -----------------------------------
def _unwrap(state: dict) -> dict:
    """Keys without ``module.`` wrappers (DataParallel, DistributedDataParallel) at any depth."""
    return {".".join(p for p in k.split(".") if p != "module"): v for k, v in state.items()}


def _legacy_key_map(arch: str) -> Tuple[Dict[str, str], Dict[str, str]]:
    """Old costsmooth (unnamed ``nn.Sequential``) module paths of ``arch`` -> today's names: (top-level
    indices, paths inside a block). Empty for archs whose names did not change."""
    if arch.startswith("cifar_resnet"):
        stages, first, inner = [(int(arch[len("cifar_resnet"):]) - 2) // 6] * 3, 3, {}
    elif arch == "resnet50":
        stages, first = [3, 4, 6, 3], 4
        inner = {"body.0": "conv1", "body.1": "bn1", "body.3": "conv2", "body.4": "bn2", "body.6": "conv3",
                 "body.7": "bn3"}
    else:
        return {}, {}
    table, j = {"0": "conv1", "1": "bn1"}, first
    for s, count in enumerate(stages, start=1):
        for b in range(count):
            table[str(j)] = f"layer{s}.{b}"
            j += 1
    table[str(j + 2)] = "fc"  # after pooling and flatten
    inner["shortcut"] = "downsample"
    return table, inner


def _from_legacy_layout(arch: str, body: dict) -> dict:
    """A state dict of an arch written by costsmooth before its ResNets had named parameters, renamed."""
    table, inner = _legacy_key_map(arch)
    if not table or "0.weight" not in body or "conv1.weight" in body:
        return body
    renamed = {}
    for key, value in body.items():
        head, _, rest = key.partition(".")
        if head not in table:
            return body  # not the old layout after all: left to the key check
        for old, new in inner.items():
            if rest.startswith(old + "."):
                rest = new + rest[len(old):]
        renamed[f"{table[head]}.{rest}"] = value
    return renamed


def _split_normalization(state: dict) -> Tuple[Optional[Tuple[torch.Tensor, torch.Tensor]], dict]:
    """(normalisation carried by the file or None, the classifier's own state dict).

    Cohen et al.'s and costsmooth's models are ``Sequential(normalisation, classifier)``: keys ``0.*`` are
    the normalisation (costsmooth's ``0.mean``/``0.std``; some forks' ``0.means``/``0.sds``; Cohen et
    al.'s layer has no state) and ``1.*`` the classifier. Keys without that split are a bare state dict.
    """
    if state and all(k.startswith(("0.", "1.")) for k in state) and any(k.startswith("1.") for k in state):
        norm = {k[2:]: v for k, v in state.items() if k.startswith("0.")}
        body = {k[2:]: v for k, v in state.items() if k.startswith("1.")}
        for mean_key, std_key in (("mean", "std"), ("means", "sds")):
            if mean_key in norm and std_key in norm:
                if set(norm) != {mean_key, std_key}:
                    break
                return (norm[mean_key], norm[std_key]), body
        if not norm:
            return None, body
    return None, state


def _shape_of(state: dict, dim: int, first: bool):
    keys = [k for k, v in state.items() if k.endswith("weight") and torch.is_tensor(v) and v.dim() == dim]
    if not keys:
        return None
    return state[keys[0] if first else keys[-1]].shape


def load_weights(model: nn.Module, state: dict, source: str, arch: Optional[str] = None) -> Optional[tuple]:
    """Load ``state`` (costsmooth's, Cohen et al.'s or a bare classifier state dict, with or without
    ``module.`` wrappers, old costsmooth ResNet names mapped) into ``model = Sequential(Normalize, arch)``.

    The normalisation the state carries is copied in and returned as (mean, std); without one, the
    model's is kept and None is returned. Missing ``num_batches_tracked`` counters (older torch) are
    accepted; any other missing, unexpected or misshapen key is a one-line ``ValueError`` naming the
    first few, with ``source`` (e.g. the file) and ``arch``.
    """
    norm, body = _split_normalization(_unwrap(state))
    if arch is not None:
        body = _from_legacy_layout(arch, body)
    target = model[1].state_dict()
    for key, value in target.items():
        if key.endswith("num_batches_tracked") and key not in body:
            body[key] = value
    missing = [k for k in target if k not in body]
    unexpected = [k for k in body if k not in target]
    misshapen = [f"{k} {list(body[k].shape)} in the file, {list(v.shape)} expected" for k, v in target.items()
                 if k in body and torch.is_tensor(body[k]) and body[k].shape != v.shape]
    what = f"a {arch} model" if arch else "the model"
    if missing or unexpected:
        parts = ([f"missing {_few(missing)}"] if missing else []) + ([f"unexpected {_few(unexpected)}"] if unexpected
                                                                     else [])
        raise ValueError(f"{source}: its keys do not fit {what} ({'; '.join(parts)}); expected Cohen et al.'s or "
                         f"torchvision's parameter names, e.g. {_few(list(target), 3)}")
    if misshapen:
        raise ValueError(f"{source}: its weights do not fit {what} ({_few(misshapen, 3)})")
    model[1].load_state_dict(body)
    if norm is not None:
        mean, std = norm
        try:
            model[0].set(mean.float(), std.float())
        except RuntimeError:
            raise ValueError(f"{source}: its normalisation has {mean.numel()} values, the model's inputs "
                             f"{model[0].mean.shape[0]} channels") from None
    return norm


def _few(keys: List[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def parse_normalization(spec) -> Optional[Tuple[List[float], List[float]]]:
    """``"cifar10"``/``"imagenet"`` (Cohen et al.'s constants), ``"none"`` (identity, returned as None),
    ``"M1,M2,M3/S1,S2,S3"``, or a pair (mean, std) -> (mean, std) lists."""
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        mean, std = ([float(v) for v in torch.as_tensor(s, dtype=torch.float64).reshape(-1)] for s in spec)
    elif isinstance(spec, str) and spec.lower() in NORMALIZATION:
        mean, std = (list(v) for v in NORMALIZATION[spec.lower()])
    elif isinstance(spec, str) and spec.lower() == "none":
        return None
    elif isinstance(spec, str) and spec.count("/") == 1:
        try:
            mean, std = ([float(v) for v in part.split(",")] for part in spec.split("/"))
        except ValueError:
            raise ValueError(f"--normalize {spec!r}: expected {NORMALIZE_CHOICES}") from None
    else:
        raise ValueError(f"--normalize {spec!r}: expected {NORMALIZE_CHOICES}")
    if len(mean) != len(std) or not all(s > 0 and s != float("inf") for s in std) \
            or not all(abs(m) != float("inf") and m == m for m in mean):
        raise ValueError(f"--normalize {spec!r}: needs as many means as standard deviations, finite means and "
                         f"positive finite standard deviations")
    return mean, std


def _dataset_name(dataset) -> Optional[str]:
    """'cifar10' of 'cifar10:ROOT' (a dataset given by name or command-line spec)."""
    if dataset is None:
        return None
    return str(dataset).split(":", 1)[0].lower()


def load_model(path: str, map_location="cpu", num_classes=None, input_shape=None, *, dataset=None,
               arch: Optional[str] = None, normalize=None, trust_code: bool = False) -> nn.Module:
    """A model from a TorchScript file, a checkpoint ``{"arch", "state_dict", ...}`` (costsmooth's or Cohen
    et al.'s: Cohen's, SmoothAdv's, MACER's ... published models), a bare state dict with ``arch``
    (e.g. torchvision's ``resnet50`` weights), or, with ``trust_code=True`` only, a ``torch.save``d
    ``nn.Module`` (a pickle: loading it runs code from the file).

    - ``arch``: the architecture of a bare state dict; for a checkpoint it must match its ``"arch"``.
    - ``dataset``: the dataset's name or command-line spec (``"cifar10"``, ``"imagenet:/data/imagenet"``).
      A file without its own input normalisation (Cohen et al.'s layout, torchvision's weights) gets the
      dataset's: CIFAR-10 mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010); ImageNet mean
      (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    - ``normalize``: ``"cifar10"``, ``"imagenet"``, ``"none"``, ``"M1,M2,M3/S1,S2,S3"`` or (mean, std),
      in place of the dataset's. A file that carries its own normalisation keeps it (a different
      ``normalize`` is refused).
    - ``num_classes``, ``input_shape``: used when the file does not record them (the class count is
      otherwise read from the last layer's weights).

    ``module.`` wrappers (DataParallel) at any depth are removed; checkpoints written by costsmooth
    before its ResNets had named parameters load too. Errors are one-line ``ValueError``s naming what
    was found and what was expected. A model built from a checkpoint or state dict is returned in eval
    mode.
    """
    if arch is not None and arch not in ARCHS:
        raise ValueError(f"--arch {arch!r}: unknown architecture; expected one of {', '.join(sorted(ARCHS))}")
    norm_given = parse_normalization(normalize) if normalize is not None else None
    obj = read_checkpoint(path, map_location, trust_code=trust_code)
    if isinstance(obj, nn.Module):  # TorchScript, or a trusted pickled module: complete as it is
        for flag, value in (("--arch", arch), ("--normalize", normalize)):
            if value is not None:
                raise ValueError(f"{path} holds a complete model ({type(obj).__name__}) with its own layers and "
                                 f"input normalisation; drop {flag}")
        return obj
    if not isinstance(obj, dict):
        raise ValueError(f"model file {path} holds a {type(obj).__name__}; expected TorchScript, a checkpoint "
                         f"dict {{'arch', 'state_dict'}} or a state dict")
    if "state_dict" in obj:
        state, file_arch, kwargs = obj["state_dict"], obj.get("arch"), dict(obj.get("arch_kwargs") or {})
    elif obj and all(torch.is_tensor(v) for v in obj.values()):
        state, file_arch, kwargs = obj, None, {}
    else:
        raise ValueError(f"model file {path} holds a dict with keys {_few(sorted(map(str, obj)))}; expected a "
                         f"checkpoint {{'arch', 'state_dict'}} or a state dict (parameter name -> tensor)")
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"model file {path}: its 'state_dict' is not a mapping of parameter names to tensors")
    if file_arch is not None and arch is not None and file_arch != arch:
        raise ValueError(f"{path} holds a {file_arch} checkpoint, not {arch}; drop --arch or pass --arch {file_arch}")
    arch = arch or file_arch
    if arch is None:
        raise ValueError(f"{path} holds a bare state dict (keys {_few(list(state), 3)}): name its architecture with "
                         f"--arch (API: arch=), one of {', '.join(sorted(ARCHS))}")
    if arch not in ARCHS:
        raise ValueError(f"{path} holds a checkpoint of arch {arch!r}, which costsmooth does not build; expected one "
                         f"of {', '.join(sorted(ARCHS))} (or export the model as TorchScript)")
    body = _split_normalization(_unwrap(state))[1]
    last, first_conv = _shape_of(body, 2, first=False), _shape_of(body, 4, first=True)
    classes = kwargs.get("num_classes") or num_classes or (int(last[0]) if last is not None else None)
    shape = kwargs.get("input_shape") or input_shape
    name = _dataset_name(dataset)
    if shape is None and arch in _DEFAULT_SIZE:
        channels = int(first_conv[1]) if first_conv is not None else 3
        shape = (channels, *(_DATASET_SHAPE[name][1:] if name in _DATASET_SHAPE else _DEFAULT_SIZE[arch]))
    if classes is None or shape is None:
        raise ValueError(f"{path} does not record the {arch} model's input shape; pass it (API: input_shape=) or "
                         f"certify it with its dataset")
    model = build_model(arch, int(classes), shape)
    own = load_weights(model, state, path, arch)
    if own is not None:
        if norm_given is not None or (normalize is not None and norm_given is None):
            wanted = norm_given or ([0.0] * own[0].numel(), [1.0] * own[0].numel())
            same = all(len(w) == o.numel() and torch.allclose(o.flatten().double(), torch.tensor(w, dtype=torch.float64),
                                                              atol=1e-6) for o, w in zip(own, wanted))
            if not same:
                raise ValueError(f"{path} carries its own input normalisation (mean {_fmt(own[0])}, std "
                                 f"{_fmt(own[1])}), not --normalize {normalize}; drop --normalize")
        return model.eval()
    if normalize is not None:
        chosen = norm_given
    elif name in NORMALIZATION:
        chosen = NORMALIZATION[name]
    else:
        raise ValueError(f"{path} carries no input normalisation (Cohen et al.'s layout keeps it outside the "
                         f"weights) and the dataset {dataset or '(not given)'} has no published constants; pass "
                         f"--normalize {NORMALIZE_CHOICES} (API: normalize=)")
    if chosen is not None:
        try:
            model[0].set(*chosen)
        except RuntimeError:
            raise ValueError(f"--normalize gives {len(chosen[0])} values, the {arch} model takes {shape[0]} "
                             f"channels") from None
    return model.eval()


def _fmt(t: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in t.flatten()) + ")"
