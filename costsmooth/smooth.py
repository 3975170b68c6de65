"""``Smooth``: a smoothed classifier with Cohen et al.'s interface plus cost-sensitive certificates.

Drop-in for ``core.Smooth`` of locuslab/smoothing: ``predict(x, n, alpha, batch_size)`` and
``certify(x, n0, n, alpha, batch_size)`` take one input without a batch dimension and return the
same values (-1 = abstain). Sampling runs on the fused engine (``costsmooth.sample_counts``).

Noise identity, one rule for every method: the noise of an input is a function of (seed, index).
Pass the input's index (``index=`` of predict/certify/certify_cost_sensitive/certify_at, ``indices=``
of certify_batch/certify_batch_at; e.g. its dataset index, in [0, 2^31)) and a call is reproducible:
the same input, index and seed give the same result, whatever else is certified with it (certify runs
over datasets do this). Without an index, every call takes fresh indices from the Smooth's counter (at
2^31 and above, one per input): each call draws fresh noise, as in Cohen et al.'s code, and a new Smooth
with the same seed replays the same sequence of calls. Selection (stream 0) and estimation (stream 1)
draws are independent.
"""
from __future__ import annotations

import dataclasses
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import sound as sound_mode
from . import stats
from ._checks import check_alpha, check_count, check_float_tensor, check_positive_finite
from .certify import ABSTAIN, Certificate, certify_from_counts, check_labels
from .cost import CostMatrix
from .input_dependent_certify import certificates_from_counts, check_sigma_fn
from .packing import sample_until
from .sampling import (STREAM_ESTIMATION, STREAM_SELECTION, SampleStatistics, SamplingOptions, check_batch_size,
                       eval_mode, options_or_settings, sample_statistics)
from .sequential import (DEFAULT_FIRST, DEFAULT_GROWTH, Boundary, RadiusEstimate, RadiusTest, SequentialResult,
                         SequentialTest)

__all__ = ["Smooth"]

_FRESH_INDEX_BASE = 2**31  # indices of single-input calls; dataset indices stay below


def _option_attribute(name: str, doc: str, check=None) -> property:
    """A ``Smooth`` attribute that reads the field ``name`` of its ``options`` and, when set, replaces it (checked
    by ``check``), so that code setting ``smooth.batch_size = ...`` keeps working."""
    def get(self):
        return getattr(self.options, name)

    def put(self, value):
        self.options = dataclasses.replace(self.options, **{name: check(value) if check else value})

    return property(get, put, doc=doc)


class Smooth:
    """A smoothed classifier g(x) = argmax_c P(f(x + N(0, sigma^2 I)) = c).

    Args:
        model: base classifier mapping ``[B, *shape]`` to logits ``[B, num_classes]``.
        num_classes: number of classes (checked against the model's output width).
        sigma: noise level (one for all inputs), or an input-dependent sigma function mapping inputs
            ``[B, *shape]`` to ``[B]`` levels with a declared ``semi_elasticity`` r (e.g.
            ``costsmooth.input_dependent.KNNSigma``); its certificates come from the sound bound of
            ``costsmooth.input_dependent`` (never Cohen's formula at a per-input sigma).
        batch_size: rows per model call, or "auto" (see ``sample_statistics``); seed: 64-bit noise
            seed; device: where to run (default: the model's parameters' device, else cpu).
        dtype, channels_last: dtype and memory format of the noisy inputs given to the model.
        autocast: run the model under torch.autocast with this dtype (a reduced-precision run
            certifies the reduced-precision model). cuda_graphs: replay the model and the vote as a
            CUDA graph (CUDA only; see ``sample_statistics``).
        sample_split: a ``costsmooth.distributed.SampleSplit``: each process draws its own range of
            sample indices of every input and the counts are summed across processes (exact int64),
            so the certificates equal those of one process drawing all samples.
        sound: sound floating-point mode (Voracek and Hein; ``costsmooth.sound``): inputs lie on a grid
            of step ``grid`` (default 1/255, 8-bit images), the model sees the grid point of the cell of
            x + delta, and the cells are drawn exactly from the Gaussian's law; the certificate then
            holds for the real input whatever the model does with floating point. Inputs off the grid
            are refused. Needs a constant sigma.
        options: a ``costsmooth.sampling.SamplingOptions`` holding batch_size, device, dtype, channels_last,
            autocast, cuda_graphs and sound mode's grid at once (then those keywords stay at their defaults);
            ``self.options`` holds them resolved (device, batch size, noise dtype, grid), and the attributes of
            the same names read it.

    Every certificate pays the noise charge of its draw (``noise_charge``): the probability by which
    the drawn noise law may differ from the Gaussian, subtracted from every lower bound and added to
    every upper bound.
    """

    ABSTAIN = ABSTAIN

    def __init__(self, model: torch.nn.Module, num_classes: int, sigma, *, batch_size: int = 1000,
                 seed: int = 0, device=None, dtype: Optional[torch.dtype] = None, channels_last: bool = False,
                 autocast: Optional[torch.dtype] = None, cuda_graphs: bool = False, sample_split=None,
                 prob_sums: bool = False, sound: bool = False, grid: Optional[float] = None,
                 options: Optional[SamplingOptions] = None):
        self.model = model
        self.num_classes = check_count(num_classes, "num_classes", 2)
        # Input-dependent sigma (costsmooth.input_dependent): a callable with a declared semi-elasticity.
        self.semi_elasticity = None
        if callable(sigma):
            self.semi_elasticity = check_sigma_fn(sigma)
            self.sigma = sigma
        else:
            self.sigma = check_positive_finite(sigma, "sigma")
        if grid is not None and not sound:
            raise ValueError("grid is the input grid of sound mode: pass sound=True with it")
        settings = dict(batch_size=batch_size, device=device, dtype=dtype, channels_last=channels_last,
                        autocast=autocast, cuda_graphs=cuda_graphs, grid=grid)
        if options is not None and sound:
            raise TypeError("Smooth() takes sound mode either in options (its grid) or as sound=True, not both")
        options = options_or_settings(options, settings, "Smooth")
        sound = sound or options.sound
        if sound and callable(sigma):
            raise ValueError("sound mode draws with one noise level: it cannot be combined with an input-dependent "
                             "sigma")
        # sound mode: the step of the input grid (costsmooth.sound); None on the standard path
        grid = (sound_mode.parse_grid(options.grid) if options.grid is not None else sound_mode.DEFAULT_GRID) \
            if sound else None
        if sound:
            sound_mode.cell_table(self.sigma, grid)  # the sampler's table, built once (and checked) here
        self.seed = seed
        device = options.device
        if device is None:
            params = list(model.parameters()) if isinstance(model, torch.nn.Module) else []
            device = params[0].device if params else "cpu"
        batch_size = check_batch_size(options.batch_size)  # "auto": each sampling call sizes itself (ModelCalls)
        # Noisy inputs are written in the model's parameter dtype unless ``dtype`` says otherwise, so
        # x.double() with a float32 model (or x.float() with a float64 one) just works.
        params = [p for p in model.parameters() if p.is_floating_point()] if isinstance(model, torch.nn.Module) else []
        dtype = options.dtype if options.dtype is not None else (params[0].dtype if params else None)
        # the settings of every sampling call, resolved: device, batch size, noise dtype and grid
        self.options = dataclasses.replace(options, device=torch.device(device), batch_size=batch_size, dtype=dtype,
                                           grid=grid)
        self.sample_split = sample_split
        # prob_sums: certificates also carry the float64 softmax sums [C] of the estimation draw
        # (certified calibration, costsmooth.calibration); not with sample_split (the sums are not all-reduced).
        if prob_sums and sample_split is not None:
            raise ValueError("prob_sums cannot be combined with a sample split; shard the inputs instead")
        self.prob_sums = bool(prob_sums)
        self._graphs = {}  # captured CUDA graphs, reused across calls (see sample_statistics)
        self._calls = 0

    # -- sampling settings: attributes that read (and, set, replace) the fields of ``options`` -----------
    device = _option_attribute("device", "Where the model runs and the noise is drawn.", torch.device)
    batch_size = _option_attribute("batch_size", "Rows per model call, or \"auto\".", check_batch_size)
    dtype = _option_attribute("dtype", "The dtype of the noisy inputs given to the model.")
    channels_last = _option_attribute("channels_last", "Whether the noisy inputs are channels-last.")
    autocast = _option_attribute("autocast", "The dtype the model runs under torch.autocast, or None.")
    cuda_graphs = _option_attribute("cuda_graphs", "Whether model -> vote is replayed as a CUDA graph.")
    grid = _option_attribute("grid", "Sound mode's input grid (``costsmooth.sound``); None on the standard path.")

    # -- sampling -------------------------------------------------------------------------------
    def _indices(self, count: int, given=None) -> List[int]:
        """The given indices (checked: one per input, in [0, 2^31)), else ``count`` fresh ones from the counter."""
        if given is None:
            first = _FRESH_INDEX_BASE + self._calls
            self._calls += count
            return list(range(first, first + count))
        return self._dataset_indices(given, count)

    def _sigma_of(self, x: torch.Tensor):
        """The noise level of each input: the number, or the sigma function's float64 ``[B]``."""
        return self.sigma(x) if callable(self.sigma) else self.sigma

    def _statistics(self, x: torch.Tensor, n: int, stream: int, index_offset: int, batch_size: Optional[int],
                    progress=None, sigma=None, prob_sums: bool = False) -> SampleStatistics:
        """Counts (and with ``prob_sums`` the float64 softmax sums) of one draw, on the CPU. A draw with
        softmax sums runs without CUDA graphs; a sample split (never with prob_sums) sums the counts."""
        sigma = self._sigma_of(x) if sigma is None else sigma
        offset, m = (0, n) if self.sample_split is None else self.sample_split.piece(n)
        if m == 0:
            drawn = SampleStatistics(torch.zeros(x.shape[0], self.num_classes, dtype=torch.int64, device=x.device))
        else:
            options = dataclasses.replace(self.options, batch_size=batch_size or self.batch_size,
                                          cuda_graphs=self.cuda_graphs and not prob_sums)
            drawn = sample_statistics(self.model, x, m, sigma, seed=self.seed, stream=stream, index_offset=index_offset,
                                      sample_offset=offset, num_classes=self.num_classes, prob_sums=prob_sums,
                                      progress=progress, graph_cache=self._graphs, options=options)
        counts = drawn.counts if self.sample_split is None else self.sample_split.reduce(drawn.counts)
        return SampleStatistics(counts.cpu(), None if drawn.prob_sums is None else drawn.prob_sums.cpu())

    def _counts(self, x: torch.Tensor, n: int, stream: int, index_offset: int, batch_size: Optional[int],
                progress=None, sigma=None) -> torch.Tensor:
        return self._statistics(x, n, stream, index_offset, batch_size, progress, sigma).counts

    @property
    def sound(self) -> bool:
        """Sound floating-point mode (inputs on the grid ``self.grid``)."""
        return self.grid is not None

    def noise_charge(self, dim: int) -> float:
        """The noise charge of one sample of inputs with ``dim`` elements (``costsmooth.sound``):
        Box-Muller's truncation on the standard path, the cell table's rounding and tails in sound mode."""
        return sound_mode.noise_charge(dim, self.sigma if not callable(self.sigma) else None, self.grid)

    def _single(self, x) -> torch.Tensor:
        """One input without a batch dimension, as a batch of one. An ``x[:1]``-style batch of one is
        refused: the model takes ``x`` itself as a batch, but not ``x`` with a batch dimension added (a
        model that flattens its input takes both, and certifies both alike: same elements, same noise)."""
        check_float_tensor(x, "x")
        x = x.to(self.device)
        if x.dim() >= 2 and x.shape[0] == 1 and self._takes_batch(x) and not self._takes_batch(x.unsqueeze(0)):
            raise ValueError(f"x of shape {list(x.shape)} is a batch of one input; predict/certify take one input "
                             f"without the batch dimension: pass x[0] (or use certify_batch for batches)")
        return x.unsqueeze(0)

    def _takes_batch(self, x: torch.Tensor) -> bool:
        """Whether the model maps ``x`` (a batch) to logits [len(x), num_classes]."""
        try:
            with eval_mode(self.model) as model:
                out = model(x if self.dtype is None else x.to(self.dtype))
        except (RuntimeError, ValueError, TypeError, IndexError):
            return False
        return isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[0] == x.shape[0] \
            and out.shape[1] == self.num_classes

    # -- Cohen et al.'s interface -----------------------------------------------------------------
    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: Optional[int] = None, *,
                index: Optional[int] = None) -> int:
        """PREDICT: the smoothed class of one input (no batch dimension), or -1 (abstain).

        Guarantee: the returned class differs from g(x) with probability at most alpha (the test's level
        pays the draw's noise charge: ``stats.predict_level``). ``index``: the input's noise identity
        (see the module docstring; default: fresh noise per call).
        """
        check_count(n, "n")
        alpha = check_alpha(alpha)
        x = self._single(x)
        counts = self._counts(x, n, STREAM_ESTIMATION, self._indices(1, None if index is None else [index])[0],
                              batch_size)
        return stats.predict_from_counts(counts[0].numpy(), alpha, self.noise_charge(x.shape[1:].numel()))

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: Optional[int] = None, *,
                index: Optional[int] = None) -> Tuple[int, float]:
        """CERTIFY: (prediction, L2 radius) for one input, prediction -1 and radius 0.0 on abstention.

        Guarantee: with probability >= 1 - alpha, g(x + delta) = prediction for all ||delta|| < radius.
        ``index``: the input's noise identity, e.g. its dataset index in [0, 2^31): the same x, index and
        seed give the same result. Without it each call draws fresh noise (a fresh index per call).
        """
        cert = self._certify_one(x, None, None, n0, n, alpha, batch_size, index)
        return cert.prediction, cert.radius

    def certify_cost_sensitive(self, x: torch.Tensor, label: int, cost: CostMatrix, n0: int, n: int, alpha: float,
                               batch_size: Optional[int] = None, *, index: Optional[int] = None) -> Certificate:
        """The standard and the cost-sensitive certificate of one input of known label.

        ``cs_radius`` is the smallest over the label's target classes T of the per-target radii
        sigma/2 * (Phi^-1(pA_lower) - Phi^-1(min(pT_upper, 1 - pA_lower))) (0 when the top class is a target). Guarantee: with probability
        >= 1 - alpha, g(x + delta) is not in the label's target set for all ||delta|| < cs_radius; alpha/2
        goes to the lower bound on p_A and alpha/(2K) to each of the K targets' upper bounds.
        ``index``: as for ``certify``.
        """
        if not isinstance(cost, CostMatrix):
            raise TypeError(f"cost must be a costsmooth.CostMatrix, got {type(cost).__name__}")
        return self._certify_one(x, label, cost, n0, n, alpha, batch_size, index)

    def _certify_one(self, x, label, cost, n0, n, alpha, batch_size, index=None) -> Certificate:
        x = self._single(x)
        return self._certify(x, None if label is None else [label], cost, n0, n, alpha,
                             self._indices(1, None if index is None else [index]), batch_size)[0]

    # -- sequential certification at a radius (costsmooth.sequential) ------------------------------
    def certify_at(self, x: torch.Tensor, radius: float, alpha: float, *, max_n: int, cost: Optional[CostMatrix] = None,
                   label: Optional[int] = None, n0: int = 100, batch_size: Optional[int] = None,
                   index: Optional[int] = None, **options) -> SequentialResult:
        """Sequential test of "certified at L2 ``radius``" for one input (no batch dimension).

        Returns a ``costsmooth.sequential.SequentialResult`` (``decision`` "certified", "not_certified" or
        "undecided" at ``max_n``; ``samples``; ``prediction``). Each decision errs with probability <= alpha
        (anytime-valid boundary; see ``costsmooth.sequential``). ``index``: as for ``certify``.
        """
        return self._certify_at(self._single(x), radius, alpha, max_n=max_n, labels=None if label is None else [label],
                                cost=cost, n0=n0, indices=self._indices(1, None if index is None else [index]),
                                batch_size=batch_size, **options)[0]

    def certify_batch_at(self, X: torch.Tensor, radius: float, alpha: float = 0.001, *, max_n: int = 100000,
                         labels: Optional[Sequence[int]] = None, cost: Optional[CostMatrix] = None, n0: int = 100,
                         indices: Optional[Sequence[int]] = None, batch_size: Optional[int] = None,
                         slots: Optional[int] = None, first: int = DEFAULT_FIRST, growth: float = DEFAULT_GROWTH,
                         progress=None) -> List[SequentialResult]:
        """Sequential test of "certified at L2 radius ``radius``" for each input of ``X[B, *shape]``.

        Per input: cA from ``n0`` selection samples (stream 0), then estimation samples (stream 1) drawn
        up to the checkpoints of ``Boundary.geometric(alpha, max_n, first, growth)`` until the decision
        is made (``costsmooth.sequential`` for the boundary, its validity and the alpha split), packed
        into shared model calls of ``batch_size`` rows (``costsmooth.packing``; ``slots`` caps the
        inputs in flight). With ``cost`` and ``labels``, inputs whose label is a seed class are tested
        for the cost-sensitive condition ``R_cs >= radius`` instead; the others for the standard one.

        Guarantee: for each input, P(decision "certified" while the smoothed classifier is not robust at
        ``radius``) <= alpha, and P("not_certified" while it is) <= alpha; the samples used and the
        decisions do not depend on ``batch_size`` or ``slots`` (noise keyed by (seed, stream, index,
        sample)). ``indices`` are noise identities (dataset indices; default: fresh ones), as in ``certify_batch``.
        """
        check_float_tensor(X, "X")
        indices = self._indices(X.shape[0] if X.dim() else 0, indices)
        return self._certify_at(X, radius, alpha, max_n=max_n, labels=labels, cost=cost, n0=n0, indices=indices,
                                batch_size=batch_size, slots=slots, first=first, growth=growth, progress=progress)

    def estimate_radius_batch(self, X: torch.Tensor, tolerance: float, alpha: float = 0.001, *, max_n: int = 100000,
                              labels: Optional[Sequence[int]] = None, n0: int = 100,
                              indices: Optional[Sequence[int]] = None, batch_size: Optional[int] = None,
                              slots: Optional[int] = None, first: int = DEFAULT_FIRST, growth: float = DEFAULT_GROWTH,
                              progress=None) -> List[RadiusEstimate]:
        """Adaptive-n standard certificates: each input stops when its certified radius is within
        ``tolerance`` of what sampling up to ``max_n`` could reach (``costsmooth.sequential.RadiusTest``).

        Guarantee: with probability >= 1 - alpha, g(x + delta) = prediction for ||delta|| < radius.
        """
        tolerance = check_positive_finite(tolerance, "tolerance")
        check_float_tensor(X, "X")
        indices = self._indices(X.shape[0] if X.dim() else 0, indices)
        X, labels, boundary, batch_size, selection, tops = self._sequential_start(X, indices, labels, alpha, max_n, n0,
                                                                                  batch_size, slots, first, growth)
        test = RadiusTest(boundary, tolerance, self.sigma, tops, labels, self.noise_charge(X.shape[1:].numel()))
        return test.results(self._sample_until(X, indices, boundary, test.check, batch_size, slots, progress))

    def _certify_at(self, X, radius, alpha, *, max_n, labels, cost, n0, indices, batch_size=None, slots=None,
                    first=DEFAULT_FIRST, growth=DEFAULT_GROWTH, progress=None) -> List[SequentialResult]:
        if cost is not None and not isinstance(cost, CostMatrix):
            raise TypeError(f"cost must be a costsmooth.CostMatrix, got {type(cost).__name__}")
        if cost is not None:
            cost.check_num_classes(self.num_classes)
        X, labels, boundary, batch_size, selection, tops = self._sequential_start(X, indices, labels, alpha, max_n, n0,
                                                                                  batch_size, slots, first, growth)
        test = SequentialTest(boundary, radius, self.sigma, tops, labels, cost, self.noise_charge(X.shape[1:].numel()))
        t0 = time.perf_counter()
        counts = self._sample_until(X, indices, boundary, test.check, batch_size, slots, progress)
        return test.results(counts, selection, t0)

    def _sequential_start(self, X, indices, labels, alpha, max_n, n0, batch_size, slots, first, growth):
        """Checked arguments and the selection draw: (X on the device, labels, boundary, batch_size, selection
        counts, cA per input)."""
        if callable(self.sigma):
            raise ValueError("sequential certification needs a constant sigma; input-dependent sigma "
                             "(costsmooth.input_dependent) is certified with Smooth.certify_batch")
        if self.sample_split is not None:
            raise ValueError("sequential certification runs in one process; drop sample_split (each input stops "
                             "at its own sample count)")
        if X.dim() < 1:
            raise ValueError("X must have a batch dimension [B, *shape]; add one with x.unsqueeze(0)")
        if slots is not None:
            check_count(slots, "slots")
        if labels is not None:
            labels = check_labels(labels, X.shape[0], self.num_classes)
        boundary = Boundary.geometric(check_alpha(alpha), check_count(max_n, "max_n"), first, growth)
        n0 = check_count(n0, "n0")
        X = X.to(self.device)
        if X.numel() and not bool(torch.isfinite(X).all()):
            raise ValueError("X contains NaN or infinite values; certificates of such inputs are meaningless, clean "
                             "the data first")
        batch_size = check_batch_size(batch_size) if batch_size is not None else self.batch_size
        parts = [self._counts(X[a:b], n0, STREAM_SELECTION, indices[a], batch_size)
                 for a, b in _consecutive_runs(indices)]
        selection = torch.cat(parts).numpy() if parts else np.zeros((0, self.num_classes), dtype=np.int64)
        tops = selection.argmax(axis=1) if selection.size else np.zeros(0, dtype=np.int64)
        return X, labels, boundary, batch_size, selection, tops

    def _sample_until(self, X, indices, boundary, check, batch_size, slots, progress) -> np.ndarray:
        options = dataclasses.replace(self.options, batch_size=batch_size)  # sound mode's grid included
        return sample_until(self.model, X, self.sigma, indices, boundary.checkpoints, check,
                            num_classes=self.num_classes, seed=self.seed, stream=STREAM_ESTIMATION, slots=slots,
                            graph_cache=self._graphs, progress=progress, options=options)

    # -- batches --------------------------------------------------------------------------------
    def certify_batch(self, X: torch.Tensor, labels: Optional[Sequence[int]] = None, cost: Optional[CostMatrix] = None,
                      *, n0: int = 100, n: int = 100000, alpha: float = 0.001,
                      indices: Optional[Sequence[int]] = None, batch_size: Optional[int] = None,
                      progress=None) -> List[Certificate]:
        """Certificates for many inputs ``X[B, *shape]``, sharing model calls across inputs.

        ``indices`` are the inputs' noise identities, e.g. their dataset indices in [0, 2^31): input i's
        noise depends only on (seed, indices[i]), so results do not depend on batching or on which inputs
        are certified together, and the same call gives the same certificates. Without ``indices`` each
        call takes B fresh indices from the counter (fresh noise per call, as ``certify``). Labels
        (optional) enable ``correct`` and, with ``cost``, the cost-sensitive radius.
        """
        check_float_tensor(X, "X")
        if X.dim() < 2:
            raise ValueError(f"X must be a batch [B, *shape] of inputs, got shape {list(X.shape)}; for one input "
                             f"use certify, or X[None]")
        if labels is not None and len(labels) != X.shape[0]:
            raise ValueError(f"{X.shape[0]} inputs need as many labels, got {len(labels)}")
        indices = self._indices(X.shape[0], indices)
        return self._certify(X.to(self.device), labels, cost, n0, n, alpha, indices, batch_size, progress)

    @staticmethod
    def _dataset_indices(indices, batch: int, labels=None) -> List[int]:
        """Dataset indices (default 0..B-1) as ints, one per input (and label), in [0, 2^31)."""
        indices = list(range(batch)) if indices is None else [int(i) for i in indices]
        if len(indices) != batch or (labels is not None and len(labels) != batch):
            raise ValueError(f"{batch} inputs need as many indices and labels, got {len(indices)} indices"
                             f"{'' if labels is None else f' and {len(labels)} labels'}")
        if indices and (min(indices) < 0 or max(indices) >= _FRESH_INDEX_BASE):
            raise ValueError(f"dataset indices must lie in [0, 2^31), got {min(indices)}..{max(indices)}")
        return indices

    def _certify(self, X, labels, cost, n0, n, alpha, indices, batch_size, progress=None) -> List[Certificate]:
        n0, n = check_count(n0, "n0"), check_count(n, "n")
        alpha = check_alpha(alpha)
        if cost is not None:
            cost.check_num_classes(self.num_classes)
        if labels is not None:
            labels = check_labels(labels, X.shape[0], self.num_classes)
        sigma = self._sigma_of(X)  # once per input: the noise and the certificate use the same value
        per_input = isinstance(sigma, torch.Tensor)
        selection, estimation, sums = [], [], []
        for start, stop in _consecutive_runs(indices):
            xs = X[start:stop]
            sig = sigma[start:stop] if per_input else sigma
            selection.append(self._counts(xs, n0, STREAM_SELECTION, indices[start], batch_size, sigma=sig))
            est = self._statistics(xs, n, STREAM_ESTIMATION, indices[start], batch_size, progress, sig,
                                   prob_sums=self.prob_sums)  # softmax sums for costsmooth.calibration
            estimation.append(est.counts)
            if self.prob_sums:
                sums.append(est.prob_sums)
        charge = self.noise_charge(X.shape[1:].numel())
        if callable(self.sigma):
            certs = certificates_from_counts(torch.cat(selection).numpy(), torch.cat(estimation).numpy(), alpha,
                                             sigma, self.semi_elasticity, X.shape[1:].numel(), labels, cost,
                                             charge=charge)
        else:
            certs = certify_from_counts(torch.cat(selection).numpy(), torch.cat(estimation).numpy(), alpha, self.sigma,
                                        labels, cost, charge=charge)
        for cert, row in zip(certs, torch.cat(sums).numpy() if sums else ()):
            cert.prob_sums = row
        return certs


def _consecutive_runs(indices: Sequence[int]):
    """(start, stop) positions of maximal runs of consecutive indices (each run shares model calls)."""
    start = 0
    for k in range(1, len(indices) + 1):
        if k == len(indices) or indices[k] != indices[k - 1] + 1:
            yield start, k
            start = k
