"""Base classifiers, with input normalisation as their first layer (noise lives in input space).

Architectures: ``digits_cnn`` (8x8 digits), ``mlp`` (tabular), ``lenet`` (MNIST), ``cifar_resnet20/56/110``
(He et al.'s CIFAR ResNets, the family Cohen et al. certified), ``resnet50`` (ImageNet-sized
bottleneck ResNet). Checkpoints follow Cohen et al.'s format ``{"arch", "state_dict", ...}`` plus
``"arch_kwargs"`` (num_classes, input_shape) so ``load_model`` can rebuild them.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from typing import Callable, Dict, Sequence

import torch
from torch import nn

__all__ = ["Normalize", "ARCHS", "build_model", "save_checkpoint", "load_model"]


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


class _BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _cifar_resnet(depth):
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6k + 2, got {depth}")
    blocks = (depth - 2) // 6

    def build(num_classes, input_shape):
        layers, cin = [nn.Conv2d(input_shape[0], 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(blocks):
                layers.append(_BasicBlock(cin, cout, stride if b == 0 else 1))
                cin = cout
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
        return nn.Sequential(*layers)
    return build


class _Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.body(x) + self.shortcut(x))


def _resnet50(num_classes, input_shape):
    layers = [nn.Conv2d(input_shape[0], 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for b in range(count):
            layers.append(_Bottleneck(cin, width, stride if b == 0 else 1))
            cin = 4 * width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


ARCHS: Dict[str, Callable] = {
    "digits_cnn": _digits_cnn,
    "mlp": _mlp,
    "lenet": _lenet,
    "cifar_resnet20": _cifar_resnet(20),
    "cifar_resnet56": _cifar_resnet(56),
    "cifar_resnet110": _cifar_resnet(110),
    "resnet50": _resnet50,
}


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
    """Write ``{"arch", "state_dict", "arch_kwargs", **extra}`` atomically (Cohen et al.'s format, extended)."""
    state = {"arch": arch, "state_dict": model.state_dict(),
             "arch_kwargs": {"num_classes": int(num_classes), "input_shape": [int(s) for s in input_shape]}, **extra}
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _is_torchscript(path: str) -> bool:
    """TorchScript archives hold a code/ folder; torch.save archives do not."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())


def load_model(path: str, map_location="cpu", num_classes=None, input_shape=None) -> nn.Module:
    """A model from a TorchScript file, a ``torch.save``d module, or a checkpoint ``{"arch", "state_dict"}``.

    Checkpoints without ``arch_kwargs`` (e.g. Cohen et al.'s) need ``num_classes`` and ``input_shape``.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}")
    if _is_torchscript(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(path, map_location=map_location)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"cannot read model file {path}: {err}. Expected TorchScript, a torch.save'd nn.Module, "
                         f"or a checkpoint dict {{'arch', 'state_dict'}}") from err
    if isinstance(obj, nn.Module):
        return obj
    if isinstance(obj, dict) and "arch" in obj and "state_dict" in obj:
        kwargs = dict(obj.get("arch_kwargs", {}))
        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        if input_shape is not None:
            kwargs["input_shape"] = input_shape
        if "num_classes" not in kwargs or "input_shape" not in kwargs:
            raise ValueError(f"checkpoint {path} has no arch_kwargs; pass num_classes and input_shape")
        model = build_model(obj["arch"], kwargs["num_classes"], kwargs["input_shape"])
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj["state_dict"].items()}
        model.load_state_dict(state)
        return model
    raise ValueError(f"model file {path} holds a {type(obj).__name__}; expected TorchScript, an nn.Module, "
                     f"or a checkpoint dict with 'arch' and 'state_dict'")
