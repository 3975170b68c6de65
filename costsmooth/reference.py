"""Pure-PyTorch reference of every compiled op: the test oracle and the benchmark baseline.

These follow the same definitions as the kernels (``csrc/philox.h``) with plain tensor arithmetic,
on any device. They are slow and memory-hungry by design, and never a fallback for a failed build.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch

from ._checks import sigma_tensor
from .sound import cell_table, grid_cells

_MASK32 = 0xFFFFFFFF
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)


def _mulhilo32(a: int, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product a * b, b an int64 tensor of 32-bit values.

    The product can exceed int64, so it is assembled from 16-bit halves (every partial fits).
    """
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    mid = a_hi * b_lo + a_lo * b_hi                     # < 2^33
    low = a_lo * b_lo + ((mid & 0xFFFF) << 16)          # < 2^33
    lo = low & _MASK32
    hi = (a_hi * b_hi + (mid >> 16) + (low >> 32)) & _MASK32
    return hi, lo


def philox4x32_10(counter: torch.Tensor, key: Tuple[int, int]) -> torch.Tensor:
    """Philox4x32-10 on int64 tensors holding 32-bit words.

    Args:
        counter: ``[..., 4]`` int64 words c0..c3; key: (k0, k1) Python ints.
    Returns:
        ``[..., 4]`` int64 output words.
    """
    c0, c1, c2, c3 = (counter[..., i].to(torch.int64) for i in range(4))
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    for _ in range(10):
        hi0, lo0 = _mulhilo32(PHILOX_M[0], c0)
        hi1, lo1 = _mulhilo32(PHILOX_M[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W[0]) & _MASK32, (k1 + PHILOX_W[1]) & _MASK32
    return torch.stack([c0, c1, c2, c3], dim=-1)


def noise_words(seed: int, stream: int, inputs: torch.Tensor, samples: torch.Tensor,
                groups: torch.Tensor) -> torch.Tensor:
    """Raw words ``[I, S, G, 4]`` for input indices ``[I]``, sample indices ``[S]``, element groups ``[G]``."""
    seed &= 2**64 - 1
    shape = (inputs.numel(), samples.numel(), groups.numel())
    counter = torch.stack([
        groups.view(1, 1, -1).expand(shape),
        samples.view(1, -1, 1).expand(shape),
        inputs.view(-1, 1, 1).expand(shape),
        torch.full(shape, stream, dtype=torch.int64, device=inputs.device),
    ], dim=-1)
    return philox4x32_10(counter, (seed & _MASK32, seed >> 32))


def words_to_normals(words: torch.Tensor) -> torch.Tensor:
    """Four float32 normals per four words, by two Box-Muller transforms (as ``noise_normals``)."""
    u = (words.to(torch.float32) + 0.5) * 2.0**-32
    r1 = torch.sqrt(-2.0 * torch.log(u[..., 0]))
    r2 = torch.sqrt(-2.0 * torch.log(u[..., 2]))
    t1 = u[..., 1] * 6.2831853071795865
    t2 = u[..., 3] * 6.2831853071795865
    return torch.stack([r1 * torch.cos(t1), r1 * torch.sin(t1), r2 * torch.cos(t2), r2 * torch.sin(t2)], dim=-1)


def noise(seed: int, stream: int, index_offset: int, batch: int, sample_offset: int, n: int, dim: int,
          device="cpu") -> torch.Tensor:
    """The float32 noise ``[batch, n, dim]`` the kernels add (before scaling by sigma)."""
    arange = lambda start, count: torch.arange(start, start + count, dtype=torch.int64, device=device)
    words = noise_words(seed, stream, arange(index_offset, batch), arange(sample_offset, n),
                        arange(0, (dim + 3) // 4))
    return words_to_normals(words).reshape(batch, n, 4 * ((dim + 3) // 4))[..., :dim]


def noisy_batch(x: torch.Tensor, n: int, sigma, *, seed: int, stream: int = 0, index_offset: int = 0,
                sample_offset: int = 0, dtype: Optional[torch.dtype] = None,
                channels_last: bool = False) -> torch.Tensor:
    """Reference of ``costsmooth.ops.noisy_batch`` (same arguments, same result up to float rounding)."""
    dtype = x.dtype if dtype is None else dtype
    batch, dim = x.shape[0], int(torch.Size(x.shape[1:]).numel())
    z = noise(seed, stream, index_offset, batch, sample_offset, n, dim, x.device)
    sig = sigma_tensor(sigma, batch, x.device)
    flat = x.reshape(batch, 1, dim)
    if dtype == torch.float64:
        out = flat.double() + sig.double().view(-1, 1, 1) * z.double()
    else:
        out = flat.float() + sig.view(-1, 1, 1) * z
    out = out.to(dtype).reshape((batch * n,) + tuple(x.shape[1:]))
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def noisy_rows(x: torch.Tensor, sigma, table: torch.Tensor, *, seed: int, stream: int = 0,
               dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Reference of ``costsmooth.ops.noisy_rows``: row r is x[b] + sigma_b * noise(seed, stream, input, sample)
    for ``(b, input, sample) = table[:, r]``."""
    dtype = x.dtype if dtype is None else dtype
    batch, dim, rows = x.shape[0], int(torch.Size(x.shape[1:]).numel()), table.shape[1]
    groups = (dim + 3) // 4
    shape = (rows, groups)
    seed &= 2**64 - 1
    counter = torch.stack([torch.arange(groups, dtype=torch.int64, device=x.device).view(1, -1).expand(shape),
                           table[2].view(-1, 1).expand(shape), table[1].view(-1, 1).expand(shape),
                           torch.full(shape, stream, dtype=torch.int64, device=x.device)], dim=-1)
    z = words_to_normals(philox4x32_10(counter, (seed & _MASK32, seed >> 32))).reshape(rows, 4 * groups)[:, :dim]
    b = table[0]
    sig = sigma_tensor(sigma, batch, x.device)[b].view(-1, 1)
    flat = x.reshape(batch, dim)[b]
    out = flat.double() + sig.double() * z.double() if dtype == torch.float64 else flat.float() + sig * z
    return out.to(dtype).reshape((rows,) + tuple(x.shape[1:]))


def vote_rows(logits: torch.Tensor, group: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Reference of ``costsmooth.ops.vote_rows`` (argmax + bincount by group). Returns NaN rows per counts row."""
    batch, classes = counts.shape
    valid = _valid_rows(logits)
    votes = logits.argmax(dim=1) if classes else torch.zeros(logits.shape[0], dtype=torch.int64, device=logits.device)
    counts += torch.bincount((group * classes + votes)[valid], minlength=batch * classes).view(batch, classes)
    return torch.bincount(group[~valid], minlength=batch)


def noise_cells(table, seed: int, stream: int, index_offset: int, batch: int, sample_offset: int, n: int, dim: int,
                device="cpu") -> torch.Tensor:
    """The table cells ``[batch, n, dim]`` (int64) the grid kernels draw (``csrc/grid.h``): the first cell c
    with U < thresholds[c] for the full 64-bit uniform U = (high word << 32) | low word."""
    arange = lambda start, count: torch.arange(start, start + count, dtype=torch.int64, device=device)
    groups = arange(0, (dim + 3) // 4)
    inputs, samples = arange(index_offset, batch), arange(sample_offset, n)
    hi = noise_words(seed, stream, inputs, samples, groups)
    lo = noise_words(seed, stream, inputs, samples, groups | 0x80000000)
    u = ((hi - 2**31) << 32) + lo  # U - 2^63: signed order is U's order
    thresholds = torch.from_numpy((table.thresholds ^ (1 << 63)).view("int64")).to(device)  # T - 2^63
    cells = torch.searchsorted(thresholds, u.reshape(-1), right=True).clamp_max(table.cells - 1)
    return cells.reshape(batch, n, 4 * ((dim + 3) // 4))[..., :dim]


def noisy_grid(x: torch.Tensor, n: int, sigma: float, grid: float, *, seed: int, stream: int = 0,
               index_offset: int = 0, sample_offset: int = 0, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Reference of ``costsmooth.ops.noisy_batch(..., grid=grid)`` (bit-identical values)."""
    dtype = x.dtype if dtype is None else dtype
    table = cell_table(sigma, grid)
    batch, dim = x.shape[0], int(torch.Size(x.shape[1:]).numel())
    k = noise_cells(table, seed, stream, index_offset, batch, sample_offset, n, dim, x.device) + table.first_cell
    value = (grid_cells(x, grid).reshape(batch, 1, dim).long() + k).double() * grid
    if dtype != torch.float64:
        value = value.float()
    return value.to(dtype).reshape((batch * n,) + tuple(x.shape[1:]))


def _valid_rows(logits: torch.Tensor) -> torch.Tensor:
    return ~logits.isnan().any(dim=1)


def vote_count(logits: torch.Tensor, n: int, counts: Optional[torch.Tensor] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference vote count (argmax + bincount). Returns (counts, NaN rows per input)."""
    rows, classes = logits.shape
    batch = rows // n
    if counts is None:
        counts = torch.zeros(batch, classes, dtype=torch.int64, device=logits.device)
    valid = _valid_rows(logits)
    owner = torch.arange(rows, device=logits.device) // n
    votes = logits.argmax(dim=1) if classes else torch.zeros(rows, dtype=torch.int64, device=logits.device)
    flat = (owner * classes + votes)[valid]
    counts += torch.bincount(flat, minlength=batch * classes).view(batch, classes)
    nan_rows = torch.bincount(owner[~valid], minlength=batch)
    return counts, nan_rows


def prob_sum(logits: torch.Tensor, n: int, sums: Optional[torch.Tensor] = None, temperature: float = 1.0
             ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference probability sum in float64. Returns (sums, rows with undefined softmax per input)."""
    rows, classes = logits.shape
    batch = rows // n
    if sums is None:
        sums = torch.zeros(batch, classes, dtype=torch.float64, device=logits.device)
    z = logits.double() / temperature
    bad = z.isnan().any(dim=1) | z.max(dim=1).values.isinf() if classes else torch.zeros(rows, dtype=torch.bool)
    probs = torch.softmax(z, dim=1).masked_fill(bad.unsqueeze(1), 0.0)
    sums += probs.view(batch, n, classes).sum(dim=1)
    return sums, bad.view(batch, n).sum(dim=1)


def cohen_sample_counts(model, x: torch.Tensor, n: int, sigma: float, num_classes: int,
                        batch_size: int = 400) -> torch.Tensor:
    """Cohen et al.'s sampling loop (locuslab/smoothing ``Smooth._sample_noise``), the speed baseline.

    For one input ``x`` (no batch dimension): repeat it, draw ``torch.randn`` noise, add, run the model,
    take the argmax, copy the predictions to the host and count them with numpy, batch by batch.
    Returns int64 counts ``[num_classes]`` on the CPU. Its noise is torch's, not costsmooth's stream.
    """
    counts = np.zeros(num_classes, dtype=np.int64)
    remaining = n
    with torch.no_grad():
        while remaining > 0:
            this_batch = min(batch_size, remaining)
            remaining -= this_batch
            batch = x.unsqueeze(0).repeat((this_batch,) + (1,) * x.dim())
            noise = torch.randn_like(batch) * sigma
            predictions = model(batch + noise).argmax(1)
            counts += np.bincount(predictions.cpu().numpy(), minlength=num_classes)
    return torch.from_numpy(counts)
