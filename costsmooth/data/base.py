"""What every dataset module shares: the error type, the split names, digests of inputs."""
from __future__ import annotations

import hashlib

import torch

__all__ = ["DatasetError", "SPLITS", "check_split", "tensor_digest"]


class DatasetError(ValueError):
    """A dataset is missing or malformed; the message shows the expected layout."""


SPLITS = ("train", "test", "all")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def tensor_digest(*tensors: torch.Tensor, h=None) -> str:
    """sha256 of tensors (dtypes, shapes, values)."""
    h = h or hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
