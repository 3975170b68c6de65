"""Reading datasets in batches: one interface for in-memory tensors and images decoded from files.

``batches(dataset, groups)`` yields ``Batch(indices, inputs, labels, infos)`` for each group of
dataset indices. In-memory datasets are sliced directly; image datasets go through a
``torch.utils.data.DataLoader`` whose worker processes decode the next batches while the model runs
(pinned memory when the inputs go to a GPU). Decoding errors come back as one ``DatasetError``.
"""
from __future__ import annotations

import collections
import os
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from .base import DatasetError, tensor_digest
from .transforms import CONVERTED_CHANNELS, CONVERTED_SIZE

__all__ = ["Batch", "batches", "default_workers", "channel_stats", "augmentation_rng", "ConversionCount"]


def default_workers() -> int:
    """Loader processes when ``--workers`` is not given: one per spare core, at most 4 (certification
    spends most of its time in the model, so a few decoders keep ahead of it)."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def augmentation_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one input's training augmentation: a function of (seed, epoch, index) only, so a
    run is reproducible whichever worker decodes the input."""
    return np.random.default_rng([int(seed), int(epoch), int(index)])


class Batch(NamedTuple):
    indices: List[int]
    inputs: torch.Tensor
    labels: torch.Tensor
    infos: List[dict]  # per input: "sha256" (of its file or tensor), "converted" (transforms.CONVERTED_* flags)


class _Items(torch.utils.data.Dataset):
    """The worker side: (index, input, label, info) per index; an error is returned, not raised, so the
    main process reports it as one line."""

    def __init__(self, dataset, seed: Optional[int], epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        rng = augmentation_rng(self.seed, self.epoch, i) if self.seed is not None else None
        try:
            x, y, info = self.dataset.load(i, rng)
        except DatasetError as err:
            return i, None, -1, {"error": str(err)}
        return i, x, y, info


def _collate(items) -> Batch:
    errors = [info["error"] for _, _, _, info in items if "error" in info]
    if errors:
        return Batch([], torch.zeros(0), torch.zeros(0, dtype=torch.int64), [{"error": errors[0]}])
    return Batch([i for i, *_ in items], torch.stack([x for _, x, _, _ in items]),
                 torch.tensor([y for _, _, y, _ in items], dtype=torch.int64), [info for *_, info in items])


class ConversionCount(collections.Counter):
    """How many inputs read were converted (greyscale or RGBA to RGB, resized), for one report per run."""

    def add(self, infos: Iterable[dict]) -> None:
        for info in infos:
            self["read"] += 1
            flags = info.get("converted", 0)
            self["channels"] += bool(flags & CONVERTED_CHANNELS)
            self["resized"] += bool(flags & CONVERTED_SIZE)

    def report(self, name: str, size: Optional[int] = None) -> Optional[str]:
        """One line naming the conversions, or None when no image needed one."""
        if not (self["channels"] or self["resized"]):
            return None
        parts = []
        if self["channels"]:
            parts.append(f"{self['channels']} converted to RGB (greyscale, palette or RGBA)")
        if self["resized"]:
            parts.append(f"{self['resized']} resized from another size" + (f" to {size}x{size}" if size else ""))
        return f"{name}: of {self['read']} images read, " + " and ".join(parts)


def batches(dataset, groups: Sequence[Sequence[int]], *, workers: Optional[int] = None, device=None,
            seed: Optional[int] = None, epoch: int = 0, digests: bool = True) -> Iterator[Batch]:
    """``Batch`` per group of indices, in order. ``seed`` (training): inputs get the dataset's
    ``augment`` with ``augmentation_rng(seed, epoch, index)``; without it, inputs are the plain test
    transform. ``workers``: loader processes for image datasets (default ``default_workers()``; 0
    decodes in this process). ``digests``: in-memory inputs carry the sha256 of their values (image
    files always carry the sha256 of their bytes)."""
    groups = [list(g) for g in groups if len(g)]
    augment = seed is not None and getattr(dataset, "augment", None) is not None
    if getattr(dataset, "in_memory", True) and not augment:
        for ids in groups:
            x, y = dataset.take(ids)
            infos = [{"sha256": tensor_digest(x[k])} for k in range(len(ids))] if digests else [{} for _ in ids]
            yield Batch(ids, x, y, infos)
        return
    workers = default_workers() if workers is None else int(workers)
    if workers < 0:
        raise ValueError(f"--workers must be >= 0 (0 reads in the main process), got {workers}")
    if not groups:
        return
    workers = min(workers, len(groups))
    cuda = device is not None and torch.device(device).type == "cuda"
    loader = torch.utils.data.DataLoader(_Items(dataset, seed if augment else None, epoch), batch_sampler=groups,
                                         collate_fn=_collate, num_workers=workers, pin_memory=cuda,
                                         prefetch_factor=2 if workers else None)
    for batch in loader:
        if batch.infos and "error" in batch.infos[0]:
            raise DatasetError(batch.infos[0]["error"])
        yield batch


def channel_stats(dataset, *, workers: Optional[int] = None, batch: int = 256):
    """(mean, std) per channel over every pixel of every input (the test transform), in one streaming
    pass in float64; std is the sample standard deviation, at least 1e-6."""
    total = count = None
    squares = None
    for b in batches(dataset, [range(s, min(s + batch, len(dataset))) for s in range(0, len(dataset), batch)],
                     workers=workers, digests=False):
        x = b.inputs.double().transpose(0, 1).reshape(b.inputs.shape[1], -1)
        total = x.sum(1) if total is None else total + x.sum(1)
        squares = (x * x).sum(1) if squares is None else squares + (x * x).sum(1)
        count = x.shape[1] if count is None else count + x.shape[1]
    if count is None:
        raise DatasetError(f"the dataset {dataset.name} is empty: no statistics to compute")
    mean = total / count
    var = (squares - count * mean * mean) / max(count - 1, 1)
    return mean.tolist(), var.clamp_min(0).sqrt().clamp_min(1e-6).tolist()
