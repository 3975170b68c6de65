"""Monte Carlo sampling of a base classifier under Gaussian noise: the loop around the fused ops.

``sample_counts`` chains noisy_batch -> model -> vote_count, chunked to a batch size, on the device of
the inputs. The noise for (seed, stream, input index, sample index) is fixed by those indices alone,
so the counts do not depend on the batch size, on how inputs are grouped or on how ``n`` is split.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Tuple, Union

import torch

from . import ops, sound
from ._checks import (FLOAT_DTYPES, check_count, check_float_tensor, check_index, check_seed, settings_or_keywords,
                      sigma_tensor)

__all__ = ["resolve_batch_size", "check_batch_size", "auto_batch_size", "device_memory", "DeviceMemory",
           "sample_counts", "sample_statistics", "SampleStatistics", "STREAM_SELECTION", "STREAM_ESTIMATION",
           "STREAM_TRAINING", "eval_mode", "Chunk", "ModelCalls", "check_sampling_options", "SamplingOptions",
           "sampling_options", "options_or_settings", "grid_noise_args"]

STREAM_SELECTION = 0
STREAM_ESTIMATION = 1
STREAM_TRAINING = 2


@dataclass
class SampleStatistics:
    """Per-input statistics of the base classifier's outputs on ``n`` noisy copies.

    counts: int64 ``[B, C]`` argmax votes. prob_sums: float64 ``[B, C]`` sums of softmax(logits / T),
    or None when not requested.
    """
    counts: torch.Tensor
    prob_sums: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class SamplingOptions:
    """How the noisy rows are drawn and the model is called: one object that ``Smooth``, the certify runs,
    ``sample_statistics`` and the sequential scheduler pass down instead of each setting by hand. Only
    ``grid`` (sound mode) changes the draws; the others change how fast they are made, not the counts
    (``autocast`` certifies the reduced-precision model).

    batch_size: rows per model call, or ``"auto"`` (see ``sample_statistics``).
    dtype, channels_last: dtype (None: x's) and memory format of the noisy inputs given to the model.
    autocast: run the model under ``torch.autocast`` with this dtype (bfloat16 or float16).
    cuda_graphs: replay model -> vote as a CUDA graph for the common chunk shape (CUDA inputs only).
    grid: sound mode (``costsmooth.sound``): the step of the input grid; None is the standard path.
    device: where ``Smooth`` and the certify runs put the model and the inputs (None: the model's device,
        else the CPU); ``sample_statistics`` runs where ``x`` is.
    """
    batch_size: Union[int, str] = 1000
    dtype: Optional[torch.dtype] = None
    channels_last: bool = False
    autocast: Optional[torch.dtype] = None
    cuda_graphs: bool = False
    grid: Optional[float] = None
    device: Optional[Union[str, torch.device]] = None

    @property
    def sound(self) -> bool:
        """Sound floating-point mode (inputs on the grid ``grid``)."""
        return self.grid is not None


def sampling_options(options: Optional[SamplingOptions] = None, caller: str = "sampling_options",
                     **settings) -> SamplingOptions:
    """``options`` (default ``SamplingOptions()``) with the given fields replaced: how the functions that take
    ``options`` also take its fields as keywords. An unknown keyword is a TypeError naming ``caller``."""
    if options is not None and not isinstance(options, SamplingOptions):
        raise TypeError(f"options must be a costsmooth.sampling.SamplingOptions, got {type(options).__name__}")
    fields = {f.name for f in dataclasses.fields(SamplingOptions)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise TypeError(f"{caller}() got an unexpected keyword argument {unknown[0]!r}")
    options = options if options is not None else SamplingOptions()
    return dataclasses.replace(options, **settings) if settings else options


def options_or_settings(options: Optional[SamplingOptions], settings: dict, caller: str) -> SamplingOptions:
    """``options``, or a ``SamplingOptions`` of ``settings`` (the keyword conveniences of ``caller``, each at its
    default unless given); refuses both at once, naming the keywords given."""
    return settings_or_keywords(options, SamplingOptions, settings, caller)


@contextlib.contextmanager
def eval_mode(model, inference: bool = True):
    """Put ``model`` in eval mode (under inference_mode unless ``inference=False``, e.g. for attacks
    that need gradients); restore its previous mode afterwards.

    Any callable works; only ``torch.nn.Module`` objects have a mode to switch.
    """
    is_module = isinstance(model, torch.nn.Module)
    was_training = is_module and model.training
    if is_module:
        model.eval()
    try:
        with torch.inference_mode() if inference else contextlib.nullcontext():
            yield model
    finally:
        if is_module:
            model.train(was_training)


def _next_chunk(b: int, j: int, batch: int, n: int, batch_size: int) -> Tuple[int, int, int, int]:
    """(first input, end input, first sample, samples) of the next model call from position (b, j).

    Several whole inputs share one call when n <= batch_size; otherwise each input's n samples are
    split into pieces of batch_size.
    """
    if j == 0 and n <= batch_size:
        return b, min(b + batch_size // n, batch), 0, n
    return b, b + 1, j, min(batch_size, n - j)


def _check_logits(logits, rows: int, num_classes: Optional[int]) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != rows:
        shape = list(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the model must map a batch of {rows} inputs to logits [{rows}, num_classes], got {shape}")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"the model returns {logits.shape[1]} logits per input but num_classes={num_classes}; "
                         f"pass the model's class count")


AUTO_BATCH_CUDA = 16384  # rows "auto" stands for before a call is sized (how many inputs a run reads at a time)
AUTO_BATCH_CPU = 1000
AUTO_BATCH_MAX = 1 << 20  # rows per model call at most, whatever the memory
AUTO_MEMORY_SHARE = 0.7  # of the available device memory planned for one call (fragmentation, the rest)
AUTO_PROBE_ROWS = (16, 64)  # rows of the two measured calls

# Batch sizes of batch_size="auto", per (model, input shape, dtype, device, autocast): measured once on
# a GPU (``auto_batch_size``), lowered when a call runs out of memory; later calls start there.
_FITTING_BATCH = {}


def _fit_key(model, x: torch.Tensor, dtype, autocast):
    return (id(model), tuple(x.shape[1:]), str(dtype or x.dtype), str(x.device), str(autocast))


def check_batch_size(batch_size):
    """"auto", or an integer batch size >= 1."""
    return batch_size if batch_size == "auto" else check_count(batch_size, "batch_size")


def resolve_batch_size(batch_size, device) -> int:
    """An integer batch size >= 1, or for "auto" the rows it stands for before any model call is sized:
    AUTO_BATCH_CUDA on CUDA devices, AUTO_BATCH_CPU elsewhere (``ModelCalls`` sizes the calls on a GPU
    from its free memory)."""
    if batch_size == "auto":
        return AUTO_BATCH_CUDA if torch.device(device).type == "cuda" else AUTO_BATCH_CPU
    return check_count(batch_size, "batch_size")


class DeviceMemory:
    """The memory queries that size the first call of batch_size="auto" on one CUDA device."""

    def __init__(self, device):
        self.device = torch.device(device)

    def available(self) -> int:
        """Bytes a call can use: free device memory plus what torch's allocator holds unused."""
        free, _ = torch.cuda.mem_get_info(self.device)
        return free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)


def device_memory(device) -> Optional[DeviceMemory]:
    """The memory queries of a CUDA device; None elsewhere (batch_size="auto" is AUTO_BATCH_CPU there)."""
    device = torch.device(device)
    return DeviceMemory(device) if device.type == "cuda" else None


def auto_batch_size(run_rows: Callable[[int], None], memory, *, probe_rows: Tuple[int, int] = AUTO_PROBE_ROWS,
                    share: float = AUTO_MEMORY_SHARE, limit: int = AUTO_BATCH_MAX) -> int:
    """The first batch size of batch_size="auto": ``share`` of the available memory over the bytes one
    row needs, within [1, limit].

    ``run_rows(k)`` makes one model call of k rows as the sampling loop does (noise buffer, model,
    votes). After a warm-up call (workspaces allocated lazily stay out of the measure), two calls of
    ``probe_rows`` rows are measured by their peak allocation above what was allocated before; the
    bytes per row are the difference of the peaks over the difference of the rows, which leaves out
    what does not grow with the rows. ``memory``: ``available()``, ``allocated()``, ``reset_peak()``
    and ``peak()`` in bytes (``DeviceMemory`` on CUDA; it resets the device's peak statistics).
    """
    run_rows(probe_rows[0])
    peaks = []
    for rows in probe_rows:
        memory.reset_peak()
        base = memory.allocated()
        run_rows(rows)
        peaks.append(memory.peak() - base)
    per_row = (peaks[1] - peaks[0]) / (probe_rows[1] - probe_rows[0])
    if per_row <= 0:  # nothing measurable grew with the rows: charge the whole peak to them
        per_row = max(peaks[1], 1) / probe_rows[1]
    return int(max(1, min(limit, share * memory.available() // per_row)))


def _empty_rows(x: torch.Tensor, rows: int, dtype, fmt) -> torch.Tensor:
    """An uninitialised buffer of ``rows`` noisy inputs shaped like x's rows."""
    return torch.empty((rows,) + tuple(x.shape[1:]), dtype=dtype or x.dtype, device=x.device, memory_format=fmt)


class _GraphedVotes:
    """model -> vote_count for one fixed chunk shape, captured once as a CUDA graph and replayed.

    ``static_in`` is filled by ``noisy_batch(..., out=static_in)`` before each replay; ``counts`` and
    ``nan_rows`` (zeroed inside the graph) hold the chunk's votes after it.
    """

    def __init__(self, model, static_in: torch.Tensor, m: int, amp, num_classes: Optional[int]):
        self.static_in = static_in
        rows, device = static_in.shape[0], static_in.device

        def body():
            with amp:
                logits = model(self.static_in)
            _check_logits(logits, rows, num_classes)
            counts = torch.zeros(rows // m, logits.shape[1], dtype=torch.int64, device=device)
            return counts, torch.ops.costsmooth.vote_count_(logits, counts, m)

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up outside the graph (allocator, cuDNN autotuning)
            for _ in range(2):
                body()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.counts, self.nan_rows = body()

    def replay(self):
        self.graph.replay()
        return self.counts, self.nan_rows


GRAPH_MIN_REPLAYS = 3  # a CUDA graph is captured only for a chunk shape replayed at least this often


def _replays(batch: int, n: int, batch_size: int) -> int:
    """How many model calls of the common chunk shape one sampling call makes."""
    if n <= batch_size:
        return -(-batch // max(batch_size // n, 1))
    return batch * (n // batch_size)


@dataclass
class Chunk:
    """One model call planned for a batch size: ``rows`` noisy rows that ``write(out)`` fills.

    graph_m: rows per vote group when this chunk may replay a CUDA graph (model -> vote_count with
    ``n = graph_m``), None when it always runs eagerly; replays: how often its shape is expected to
    repeat (a graph is captured only for at least ``GRAPH_MIN_REPLAYS``); span: the planner's own
    description of the chunk (which inputs and samples), returned with it.
    """
    rows: int
    write: Callable[[torch.Tensor], None]
    graph_m: Optional[int] = None
    replays: int = 0
    span: tuple = ()


class ModelCalls:
    """Model calls on noisy rows: one reused noise buffer, CUDA graphs for a repeated chunk shape, and
    out-of-memory recovery. Shared by ``sample_statistics`` and the sequential scheduler
    (``costsmooth.packing``).

    ``call(plan)`` plans a chunk for the current batch size, writes its noise, runs the model (or
    replays the chunk shape's graph) and returns ``(chunk, logits, graph_votes)``: the logits
    (checked to be ``[rows, num_classes]``) of an eager call, or the graph's ``(counts, nan_rows)``
    (``[rows / graph_m, C]``, ``[rows / graph_m]``) of a replay. With ``batch_size="auto"`` on a
    GPU the first size is measured when the calls are set up (``auto_batch_size``). When a call runs
    out of device memory, the batch size is halved and the chunk planned again (the counts do not
    change: the noise depends on indices only); with ``auto`` the size that fitted is remembered for
    later calls with the same model and input shape.
    """

    def __init__(self, model, x: torch.Tensor, options: SamplingOptions, *, graph_cache: Optional[dict] = None,
                 num_classes: Optional[int] = None):
        dtype, autocast = options.dtype, options.autocast
        self.model, self.x, self.dtype, self.num_classes = model, x, dtype, num_classes
        self.auto = options.batch_size == "auto"
        self.batch_size = resolve_batch_size(options.batch_size, x.device)
        self.fit_key = _fit_key(model, x, dtype, autocast)
        self.amp = (torch.autocast(device_type=x.device.type, dtype=autocast) if autocast is not None
                    else contextlib.nullcontext())
        self.fmt = torch.channels_last if options.channels_last else torch.contiguous_format
        if self.auto and self.fit_key in _FITTING_BATCH:
            self.batch_size = _FITTING_BATCH[self.fit_key]
        elif self.auto and x.shape[0]:
            memory = device_memory(x.device)
            if memory is not None:
                self.batch_size = _FITTING_BATCH[self.fit_key] = self._measure(memory)
        self.key = (id(model), str(dtype or x.dtype), str(self.fmt), str(autocast), str(x.device))
        self.cuda_graphs = options.cuda_graphs
        self.graphs = graph_cache if graph_cache is not None else {}
        self.buffer = None  # noisy inputs, reused across model calls (grown when a call needs more rows)

    def _measure(self, memory) -> int:
        """The first batch size of "auto" on a GPU: ``auto_batch_size`` from small calls of the model on
        copies of the first input (the noise values do not change the memory a call needs)."""
        def run_rows(rows: int) -> None:
            noisy = _empty_rows(self.x, rows, self.dtype, self.fmt)
            noisy.copy_(self.x[:1])
            with self.amp:
                logits = self.model(noisy)
            _check_logits(logits, rows, self.num_classes)
            torch.ops.costsmooth.vote_count_(logits, torch.zeros(1, logits.shape[1], dtype=torch.int64,
                                                                 device=self.x.device), rows)

        try:
            with eval_mode(self.model):
                return auto_batch_size(run_rows, memory)
        except torch.OutOfMemoryError:  # not even the small calls fit: out-of-memory recovery goes on from here
            return AUTO_PROBE_ROWS[0] // 2

    def call(self, plan: Callable[[int], Chunk]):
        while True:
            chunk = plan(self.batch_size)
            graph_key = self.key + (chunk.rows, chunk.graph_m, self.num_classes)
            use_graph = (self.cuda_graphs and chunk.graph_m is not None
                         and (graph_key in self.graphs or chunk.replays >= GRAPH_MIN_REPLAYS))
            logits = graph = votes = None
            out_of_memory = False
            try:
                if use_graph and graph_key not in self.graphs:
                    self.graphs[graph_key] = _GraphedVotes(self.model, _empty_rows(self.x, chunk.rows, self.dtype,
                                                                                   self.fmt),
                                                           chunk.graph_m, self.amp, self.num_classes)
                elif not use_graph and (self.buffer is None or self.buffer.shape[0] < chunk.rows):
                    self.buffer = None
                    self.buffer = _empty_rows(self.x, chunk.rows, self.dtype, self.fmt)
                graph = self.graphs.get(graph_key) if use_graph else None
                noisy = graph.static_in if use_graph else self.buffer[:chunk.rows]
                chunk.write(noisy)
                if use_graph:
                    votes = graph.replay()
                else:
                    with self.amp:
                        logits = self.model(noisy)
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                out_of_memory = True
            if out_of_memory:  # outside the except block: the traceback no longer holds the activations
                noisy = logits = self.buffer = graph = None
                self.graphs.pop(graph_key, None)
                if self.x.is_cuda:
                    torch.cuda.empty_cache()
                warnings.warn(f"out of memory at batch size {self.batch_size}; continuing at {self.batch_size // 2}")
                self.batch_size //= 2
                if self.auto:
                    _FITTING_BATCH[self.fit_key] = self.batch_size
                continue
            if logits is not None:
                _check_logits(logits, chunk.rows, self.num_classes)
            return chunk, logits, votes


def grid_noise_args(x: torch.Tensor, sigma, grid) -> tuple:
    """Sound mode's draw of inputs ``x`` (on the grid of step ``grid``, else refused) at one ``sigma``: the
    leading arguments of the grid-noise op ``noisy_grid_into`` (cells, thresholds, guide, first cell, grid)."""
    grid = sound.parse_grid(grid)
    table = sound.cell_table(ops.grid_sigma(sigma), grid)
    return (sound.grid_cells(x, grid), *table.tensors(x.device), table.first_cell, grid)


def sample_statistics(model: torch.nn.Module, x: torch.Tensor, n: int, sigma, *, seed: int = 0,
                      stream: int = STREAM_ESTIMATION, index_offset: int = 0, sample_offset: int = 0,
                      num_classes: Optional[int] = None, prob_sums: bool = False, temperature: float = 1.0,
                      progress=None, graph_cache: Optional[dict] = None, options: Optional[SamplingOptions] = None,
                      **settings) -> SampleStatistics:
    """Votes (and optionally softmax sums) of ``model`` on ``n`` noisy copies of each input.

    How the rows are drawn and the model called comes from ``options`` (a ``SamplingOptions``), or from
    its fields given as keywords (``batch_size=``, ``dtype=``, ``channels_last=``, ``autocast=``,
    ``cuda_graphs=``, ``grid=``), which replace those of ``options``.

    Args:
        model: maps ``[rows, *shape]`` to logits ``[rows, C]``; run in eval mode under inference_mode
            (its previous mode is restored).
        x: inputs ``[B, *shape]`` on the device to run on. sigma: number or ``[B]`` tensor.
        n: samples per input; seed, stream, index_offset, sample_offset: as in ``ops.noisy_batch``.
        batch_size: rows per model call, or ``"auto"``: on a GPU, ``AUTO_MEMORY_SHARE`` of the
            available device memory over the bytes one row needs, measured from the peak memory of
            two small calls of this model with these settings (``auto_batch_size``; once per model,
            input shape, dtype and autocast); 1000 on a CPU. When a call runs out of device memory,
            the batch size is halved and the call retried (the counts do not change: the noise
            depends on indices only); with "auto", the size that fitted is remembered for later
            calls with the same model and input shape.
        num_classes: checked against the model's output width.
        prob_sums: also accumulate ``sum_j softmax(logits_j / temperature)`` in float64.
        dtype, channels_last: dtype and memory format of the noisy inputs given to the model.
        autocast: run the model under ``torch.autocast`` with this dtype (bfloat16 or float16). A
            reduced-precision run certifies the reduced-precision model.
        cuda_graphs: capture model -> vote as a CUDA graph for the common chunk shape and replay it
            (CUDA inputs only; the model must be capturable: fixed shapes, no host synchronisation).
            The noise is written into the graph's input buffer before each replay; counts are the
            same as without graphs. A chunk shape replayed fewer than ``GRAPH_MIN_REPLAYS`` times
            (e.g. the selection draw) runs eagerly. ``graph_cache``: a dict in which captured graphs
            are kept across calls (``Smooth`` passes its own), keyed by model, chunk shape, dtype,
            memory format and autocast.
        progress: an optional tqdm-like object whose ``update(rows)`` is called after each chunk.
        grid: sound mode (``costsmooth.sound``): x lies on a grid of this step and the model sees the
            grid point of the cell of x + delta, drawn exactly (``ops.noisy_batch(..., grid=...)``);
            sigma must be one number, and inputs off the grid are refused.

    Returns:
        SampleStatistics with int64 counts ``[B, C]`` (on x's device). Raises ``NaNLogitsError``
        when the model returned NaN for some rows (those rows are never counted as votes).
    """
    options = sampling_options(options, "sample_statistics", **settings)
    grid = options.grid
    check_float_tensor(x, "x")
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension [B, *shape]; add one with x.unsqueeze(0)")
    check_sampling_options(x, options.dtype, options.channels_last)
    n = check_count(n, "n")
    check_index(index_offset, "index_offset", x.shape[0])
    check_index(sample_offset, "sample_offset", n)
    seed64, stream = check_seed(seed), check_index(stream, "stream")
    if num_classes is not None:
        num_classes = check_count(num_classes, "num_classes")
    if x.numel() and bool(torch.isnan(x).any()):
        raise ValueError("x contains NaN values; certificates of NaN inputs are meaningless, clean the data first")
    if options.cuda_graphs and (not x.is_cuda or prob_sums):
        raise ValueError("cuda_graphs needs inputs on a CUDA device and prob_sums=False")
    batch = x.shape[0]
    if grid is not None:  # sound mode: the inputs' grid indices and the sampler's table, once
        sound_args = grid_noise_args(x, sigma, grid)
    else:
        sig = sigma_tensor(sigma, batch, x.device)
    calls = ModelCalls(model, x, options, graph_cache=graph_cache, num_classes=num_classes)
    counts = sums = None  # allocated once the class count is known

    def accumulators(classes: int):
        return (torch.zeros(batch, classes, dtype=torch.int64, device=x.device),
                torch.zeros(batch, classes, dtype=torch.float64, device=x.device) if prob_sums else None)

    nan_rows = torch.zeros(batch, dtype=torch.int64, device=x.device)
    bad_softmax = torch.zeros(batch, dtype=torch.int64, device=x.device)
    b = j = 0

    def plan(batch_size: int) -> Chunk:
        b0, b1, j0, m = _next_chunk(b, j, batch, n, batch_size)
        _, first_b1, _, first_m = _next_chunk(0, 0, batch, n, batch_size)  # the common chunk shape

        def write(out):
            # Arguments were validated once above; the op is called directly so that no chunk
            # re-validates sigma (a device synchronisation per model call).
            if grid is not None:
                torch.ops.costsmooth.noisy_grid_into(sound_args[0][b0:b1], *sound_args[1:], m, seed64, stream,
                                                     index_offset + b0, sample_offset + j0, out)
            else:
                torch.ops.costsmooth.noisy_batch_into(x[b0:b1], sig[b0:b1], m, seed64, stream, index_offset + b0,
                                                      sample_offset + j0, out)

        return Chunk((b1 - b0) * m, write, m if (b1 - b0, m) == (first_b1, first_m) else None,
                     _replays(batch, n, batch_size), (b0, b1, j0, m))

    with eval_mode(model):
        while b < batch:
            chunk, logits, votes = calls.call(plan)
            b0, b1, j0, m = chunk.span
            if counts is None:
                counts, sums = accumulators((logits if logits is not None else votes[0]).shape[1])
            if votes is not None:
                counts[b0:b1] += votes[0]
                nan_rows[b0:b1] += votes[1]
            else:
                nan_rows[b0:b1] += ops.vote_count_nan(logits, m, counts[b0:b1])
                if prob_sums:
                    bad_softmax[b0:b1] += torch.ops.costsmooth.prob_sum_(logits, sums[b0:b1], m, float(temperature))
            if progress is not None:
                progress.update(chunk.rows)
            b, j = (b1, 0) if (b1 > b0 + 1 or j0 + m == n) else (b, j0 + m)
    if counts is None:  # no inputs
        counts, sums = accumulators(num_classes or 0)
    ops.raise_on_nan(nan_rows, "the vote counts", index_offset=index_offset)
    ops.raise_on_nan(bad_softmax, "the probability sums", ops.UNDEFINED_SOFTMAX, index_offset=index_offset)
    return SampleStatistics(counts=counts, prob_sums=sums)


def check_sampling_options(x: torch.Tensor, dtype: Optional[torch.dtype], channels_last: bool) -> None:
    """Refuse a noise dtype that is not a float type, and channels_last for inputs that are not images."""
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be one of float32, float64, float16, bfloat16 (or None for x's dtype), got {dtype}")
    if channels_last and x.dim() != 4:
        raise ValueError(f"channels_last needs image inputs [B, C, H, W], got x of shape {list(x.shape)}; "
                         f"drop channels_last for other inputs")


def sample_counts(model: torch.nn.Module, x: torch.Tensor, n: int, sigma, *, seed: int = 0, batch_size: int = 1000,
                  stream: int = STREAM_ESTIMATION, index_offset: int = 0, sample_offset: int = 0,
                  num_classes: Optional[int] = None, dtype: Optional[torch.dtype] = None,
                  channels_last: bool = False, autocast: Optional[torch.dtype] = None,
                  cuda_graphs: bool = False, progress=None, graph_cache: Optional[dict] = None,
                  grid: Optional[float] = None, options: Optional[SamplingOptions] = None) -> torch.Tensor:
    """int64 ``[B, C]``: how often ``model`` votes for each class on ``n`` noisy copies of each input.

    ``counts[b, c] = #{j < n : argmax model(x[b] + sigma_b * noise(seed, stream, index_offset + b,
    sample_offset + j)) = c}``; with ``grid`` (sound mode), the noisy copies are the grid points of
    exactly drawn cells. See ``sample_statistics`` for the arguments. The sampling keywords (batch_size,
    dtype, channels_last, autocast, cuda_graphs, grid) are a convenience for ``options`` (a
    ``SamplingOptions``); with ``options``, they are taken from it.
    """
    settings = dict(batch_size=batch_size, dtype=dtype, channels_last=channels_last, autocast=autocast,
                    cuda_graphs=cuda_graphs, grid=grid)
    options = options_or_settings(options, settings, "sample_counts")
    return sample_statistics(model, x, n, sigma, seed=seed, stream=stream, index_offset=index_offset,
                             sample_offset=sample_offset, num_classes=num_classes, progress=progress,
                             graph_cache=graph_cache, options=options).counts
