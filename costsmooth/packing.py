"""The sequential scheduler: estimation samples of many inputs packed into shared model calls, each
input drawn up to its next checkpoint until a decision rule stops it.

``sample_until`` fills each model call with up to ``batch_size`` rows taken from the active inputs (each
up to its next checkpoint), admitting the next input while the active ones need fewer rows than a call
holds (``slots`` caps how many are active). When an input is decided its slot is refilled, so calls
stay full while inputs stop at different times. The noise of input b's sample j is (seed, stream,
indices[b], j) as everywhere in the engine, so the counts, and hence the decisions, do not depend on
the batch size, the number of slots or which inputs share a call; an input's counts equal
``sample_counts`` of its first ``samples`` samples.

Each model call is one noise launch and one vote launch: a row -> (position, input index, sample
index) table (``ops.noisy_rows``, ``ops.vote_rows``) serves all the inputs packed into it. The model
calls run through ``sampling.ModelCalls`` (the loop of ``sample_statistics``): one reused noise
buffer, CUDA graphs for full calls, and out-of-memory recovery. Counts stay on the device; the host
reads them only when inputs reach a checkpoint (one transfer per decision, NaN rows with it).
"""
from __future__ import annotations

import collections
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from . import ops
from ._checks import check_count, check_seed, sigma_tensor
from .sampling import (STREAM_ESTIMATION, Chunk, ModelCalls, SamplingOptions, eval_mode, grid_noise_args,
                       sampling_options)

__all__ = ["sample_until"]


def sample_until(model, x: torch.Tensor, sigma, indices: Sequence[int], checkpoints: np.ndarray,
                 check: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], *, num_classes: int,
                 seed: int = 0, stream: int = STREAM_ESTIMATION, slots: Optional[int] = None,
                 graph_cache: Optional[dict] = None, progress=None, options: Optional[SamplingOptions] = None,
                 **settings) -> np.ndarray:
    """Draw samples of each input of ``x[B, *shape]`` checkpoint by checkpoint until ``check`` stops it.

    Input b is sampled up to checkpoint ``checkpoints[k]`` (its samples ``t .. n_k - 1`` of (seed,
    stream, ``indices[b]``)), then ``check(b, k, counts)`` (int64 arrays ``[D]``, ``[D]``, ``[D, C]``
    for the D inputs that reached a checkpoint in one model call) says which are done (bool ``[D]``);
    the others continue to the next checkpoint; at the last checkpoint an input is done regardless.
    ``x`` must be finite and on the device to run on; sigma a number or ``[B]`` tensor. ``options`` (or
    its fields as keywords) as for ``sample_statistics``. Sound mode (``options.grid``; one sigma, inputs
    on the grid, else refused) draws each input's rows of a call with one grid-noise launch
    (``ops.noisy_batch(..., grid=...)``'s op), the same cells as ``sample_statistics`` draws. Returns int64
    counts ``[B, C]`` (numpy) at each input's stop. Raises ``NaNLogitsError`` when the model returned NaN
    for some rows of an input.
    """
    options = sampling_options(options, "sample_until", **settings)
    batch = x.shape[0]
    points = np.asarray(checkpoints, dtype=np.int64)
    seed64 = check_seed(seed)
    limit = check_count(slots, "slots") if slots is not None else None
    if options.sound:  # the inputs' grid indices and the sampler's table, once
        cells, *grid_args = grid_noise_args(x, sigma, options.grid)
    else:
        sig = sigma_tensor(sigma, batch, x.device)
    calls = ModelCalls(model, x, options, graph_cache=graph_cache, num_classes=num_classes)
    counts = torch.zeros(batch, num_classes, dtype=torch.int64, device=x.device)
    nan_rows = torch.zeros(batch, dtype=torch.int64, device=x.device)
    drawn = np.zeros(batch, dtype=np.int64)
    stage = np.zeros(batch, dtype=np.int64)
    queue = collections.deque(range(batch))
    active: List[int] = []
    index = np.asarray(indices, dtype=np.int64)
    uploads = _Uploads(x.device, calls.batch_size)

    def plan(rows_per_call: int) -> Chunk:
        cap = rows_per_call if limit is None else min(limit, rows_per_call)
        while queue and len(active) < cap and sum(int(points[stage[b]] - drawn[b]) for b in active) < rows_per_call:
            active.append(queue.popleft())
        parts, rows = [], 0
        for b in active:
            if rows == rows_per_call:
                break
            m = int(min(points[stage[b]] - drawn[b], rows_per_call - rows))
            parts.append((b, m))
            rows += m
        b_of_part, m_of_part = np.array(parts, dtype=np.int64).T
        table = np.empty((3, rows), dtype=np.int64)  # one row -> (position, input index, sample index) table
        table[0] = np.repeat(b_of_part, m_of_part)
        table[1] = index[table[0]]
        table[2] = drawn[table[0]] + np.arange(rows) - np.repeat(np.cumsum(m_of_part) - m_of_part, m_of_part)
        table = uploads.put(table)

        if options.sound:  # one launch per input: its m samples from its first undrawn one
            spans = [(b, m, int(drawn[b]), int(start)) for (b, m), start in zip(parts, np.cumsum(m_of_part) - m_of_part)]

            def write(out):
                for b, m, first, start in spans:
                    torch.ops.costsmooth.noisy_grid_into(cells[b:b + 1], *grid_args, m, seed64, stream, int(index[b]),
                                                         first, out[start:start + m])
        else:
            def write(out):  # arguments were checked once; the op is called directly (no synchronisation)
                torch.ops.costsmooth.noisy_rows_into(x, sig, table, seed64, stream, out)

        remaining = sum(int(points[-1] - drawn[b]) for b in active) + len(queue) * int(points[0])
        return Chunk(rows, write, 1 if rows == rows_per_call else None, remaining // rows_per_call, (parts, table))

    with eval_mode(model):
        while queue or active:
            chunk, logits, votes = calls.call(plan)
            parts, table = chunk.span
            if votes is not None:  # a graph replay: one-hot votes per row, added to each row's input
                counts.index_add_(0, table[0], votes[0])
                nan_rows.index_add_(0, table[0], votes[1])
            else:  # one vote launch for the whole call
                nan_rows.add_(torch.ops.costsmooth.vote_rows_(logits, counts, table[0]))
            if progress is not None:
                progress.update(chunk.rows)
            for b, m in parts:
                drawn[b] += m
            due = np.array([b for b, _ in parts if drawn[b] == points[stage[b]]], dtype=np.int64)
            if due.size:
                done = _decide(check, due, stage, counts, nan_rows, len(points))
                finished = set(due[done].tolist())
                active[:] = [b for b in active if b not in finished]
                stage[due[~done]] += 1
    return counts.cpu().numpy()


class _Uploads:
    """Row tables ``[3, rows]`` to the device without waiting for it. On CUDA: two pinned host buffers in
    turn, each refilled only after its previous copy finished (an event, long done by then: the host
    reads counts at every checkpoint), copied asynchronously into a device buffer reused in the same
    turn (stream order keeps the kernels that read it before the next copy). On the CPU the table is
    used as it is."""

    def __init__(self, device: torch.device, rows: int):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.host = [torch.empty(3 * rows, dtype=torch.int64, pin_memory=True) for _ in range(2)]
            self.device = [torch.empty(3 * rows, dtype=torch.int64, device=device) for _ in range(2)]
            self.copied = [None, None]
            self.turn = 0

    def put(self, table: np.ndarray) -> torch.Tensor:
        if not self.cuda:
            return torch.from_numpy(table)
        k, self.turn = self.turn, 1 - self.turn
        if self.copied[k] is not None:
            self.copied[k].synchronize()
        size = table.size
        self.host[k][:size].numpy()[:] = table.reshape(-1)
        out = self.device[k][:size]
        out.copy_(self.host[k][:size], non_blocking=True)
        self.copied[k] = torch.cuda.Event()
        self.copied[k].record()
        return out.view(table.shape)


def _decide(check, due: np.ndarray, stage: np.ndarray, counts: torch.Tensor, nan_rows: torch.Tensor,
            checkpoints: int) -> np.ndarray:
    """Which inputs ``due`` (at a checkpoint) are done: one device-to-host transfer of their counts and
    NaN rows; an input with NaN rows stops the run (its counts miss those votes)."""
    at = torch.from_numpy(due).to(counts.device)
    rows = torch.cat([counts[at], nan_rows[at][:, None]], dim=1).cpu()
    if bool(rows[:, -1].any()):  # name the inputs by their position in the batch
        ops.raise_on_nan(torch.zeros(counts.shape[0], dtype=torch.int64).index_add_(0, torch.from_numpy(due),
                                                                                    rows[:, -1]), "the vote counts")
    done = np.asarray(check(due, stage[due], rows[:, :-1].numpy()))
    return done | (stage[due] == checkpoints - 1)
