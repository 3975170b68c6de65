"""Certification runs over datasets: what the certify and recertify commands do, callable from Python
(the demo uses them too). Result files, fingerprints and the selection of inputs are in
``costsmooth.results``; the tables and curves of ``analyze`` in ``costsmooth.analysis`` (both re-exported
here)."""
from __future__ import annotations

import collections
import dataclasses
import math
import os
import time
import warnings
from typing import List, Optional, Tuple

import numpy as np
import torch

from . import __version__, metrics
from . import sound as sound_mode
from ._checks import check_alpha, check_count, check_positive_finite, check_seed
from .analysis import analyze, json_safe, plot_curves
from .certify import ABSTAIN, Certificate, certify_from_counts
from .cost import CostMatrix
from .data import batches
from .data.loading import ConversionCount
from .ops import describe_device
from .progress import progress_bar
from .results import (ResultWriter, SequentialWriter, check_certified_inputs, fingerprint_dataset, fingerprint_model,
                      load_records, read_counts, read_meta, read_tsv_checked, select_indices)
from .sampling import SamplingOptions, eval_mode, options_or_settings, resolve_batch_size
from .sequential import DEFAULT_FINAL_SHARE, DEFAULT_FIRST, DEFAULT_GROWTH, Boundary
from .smooth import Smooth

__all__ = ["certify_dataset", "certify_dataset_at", "summarize_sequential", "recertify", "analyze", "plot_curves",
           "fingerprint_model", "fingerprint_dataset", "select_indices", "probe_num_classes", "invalid_inputs",
           "check_certified_inputs", "json_safe", "sound_grid", "run_options", "check_run_options", "run_identity",
           "prepare_model"]


def certify_dataset(model, dataset, sigma: float, outfile: str, *, n0: int = 100, n: int = 100000,
                    alpha: float = 0.001, batch: int = 1000, skip: int = 1, max_index: int = -1,
                    cost: Optional[CostMatrix] = None, seed: int = 0, device=None, meta_extra=None,
                    progress: bool = True, autocast: Optional[torch.dtype] = None, channels_last: bool = False,
                    cuda_graphs: bool = False, skip_invalid: bool = False, return_stats: bool = False,
                    shard: Optional[Tuple[int, int]] = None, sample_split=None, prob_sums: bool = False,
                    workers: Optional[int] = None, sound: bool = False, grid: Optional[float] = None,
                    options: Optional[SamplingOptions] = None):
    """Certify ``dataset`` (a ``costsmooth.data.Dataset``) into ``outfile``, resuming a previous run.

    Inputs are dataset indices ``i`` with ``i % skip == 0`` and ``i < max_index`` (when >= 0), as in
    Cohen et al.'s certify.py. Each input's noise depends on (seed, i) only, so a run can be resumed
    or extended (another skip/max) and keeps the rows it has. autocast, channels_last and
    cuda_graphs are passed to ``Smooth`` (the precision is recorded in the metadata).

    Every argument is checked before any file is created. The metadata records fingerprints of the
    model's weights and of the dataset; resuming with another model, dataset or setting that changes
    certificates is refused (``results.RESUMABLE_KEYS`` lists the settings that may change).

    An input with NaN or infinite values stops the run with an error naming its index, unless
    ``skip_invalid``: then its row records "not certified" (predict -1, radius 0) and the run goes on.
    Returns ``outfile``, or with ``return_stats`` a dict (inputs certified now, samples drawn, invalid
    indices). Progress is shown in samples (with samples/s and the time left).
    ``sigma`` may be an input-dependent sigma function (``costsmooth.input_dependent.KNNSigma``): its
    ``describe()`` goes to the metadata and each row records its sigma0.
    ``prob_sums``: also save each input's float64 softmax sums of the estimation draw in the counts file
    (``costsmooth calibration --from``, certified calibration); recorded in the metadata.

    Inputs are read through ``data.batches``: image datasets are decoded by ``workers`` loader
    processes (default ``data.default_workers()``) while the model runs, never all at once. Each row's
    counts record names its input (file, sha256); resuming refuses data whose certified inputs changed
    (``check_certified_inputs``).
    ``sound``: sound floating-point mode (``costsmooth.sound``) on the input grid ``grid`` (default: the
    dataset's ``grid``, else 1/255); inputs off the grid are refused before any file is created.
    The metadata records the noise ("gaussian" or "sound"), the grid and the noise charge every bound
    paid (``recertify`` pays the same).
    ``options``: a ``costsmooth.sampling.SamplingOptions`` in place of batch, device, autocast, channels_last,
    cuda_graphs, sound and grid (its ``grid`` turns sound mode on; those keywords then stay at their defaults).
    """
    if not callable(sigma):
        sigma = check_positive_finite(sigma, "sigma")
    n0, n, alpha = check_count(n0, "n0"), check_count(n, "n"), check_alpha(alpha)
    check_seed(seed)
    options, sound = run_options(options, "certify_dataset", batch=batch, device=device, autocast=autocast,
                                 channels_last=channels_last, cuda_graphs=cuda_graphs, sound=sound, grid=grid)
    device, grid = options.device, options.grid
    batch_rows = resolve_batch_size(options.batch_size, device)
    check_run_options(options, dataset)
    indices = select_indices(len(dataset), skip, max_index)
    if shard is not None:
        part, parts = shard
        if not (isinstance(part, int) and isinstance(parts, int) and 0 <= part < parts):
            raise ValueError(f"--shard must be I/K with 0 <= I < K, got {part}/{parts}")
        indices = indices[part::parts]
    model = model.to(device)
    num_classes = probe_num_classes(model, dataset, device)
    if cost is not None:
        cost.check_num_classes(num_classes)
    if sound and callable(sigma):
        raise ValueError("--sound draws with one noise level: it cannot be combined with --sigma-fn")
    grid = sound_grid(dataset, indices, sound, grid)
    # On a GPU, a reduced-precision run writes the noisy inputs in that precision directly (the model's first
    # layer would round them to it anyway): half the bytes written and read.
    noise_dtype = options.autocast if (options.autocast is not None and device.type == "cuda") else None
    options = dataclasses.replace(options, grid=grid, dtype=options.dtype or noise_dtype)
    meta = {"sigma": sigma.describe() if callable(sigma) else sigma,  # input-dependent sigma: its settings
            "n0": n0, "n": n, "alpha": alpha, "seed": seed, "skip": skip, "max": max_index,
            "num_classes": num_classes, "cost": cost.to_json() if cost is not None else None,
            **run_identity(model, dataset, options), "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
            **_file_rows_meta(dataset), "noise": "sound" if sound else "gaussian", "grid": options.grid,
            "charge": sound_mode.noise_charge(math.prod(dataset.input_shape), None if callable(sigma) else sigma,
                                              options.grid),
            **({"prob_sums": True} if prob_sums else {}), **(meta_extra or {})}
    invalid = invalid_inputs(dataset, indices)
    if invalid and not skip_invalid:
        i, what = invalid[0]
        raise ValueError(f"{dataset.describe_input(i)} contains {what} values"
                         f"{f' (and {len(invalid) - 1} more inputs)' if len(invalid) > 1 else ''}; clean the data, or "
                         f"pass --skip-invalid to record such inputs as not certified and go on")
    invalid = dict(invalid)
    writes = sample_split is None or sample_split.rank == 0
    if writes:
        check_certified_inputs(outfile, dataset, meta["data_sha256"])
    writer = ResultWriter(outfile, meta) if writes else None
    try:
        todo = [i for i in indices if i not in writer.done] if writes else None
        if sample_split is not None:  # every process samples the same inputs; rank 0 knows which
            todo = sample_split.broadcast(todo)
        smooth = Smooth(prepare_model(model, options), num_classes, sigma, seed=seed, sample_split=sample_split,
                        prob_sums=prob_sums, options=options)
        bar = progress_bar(total=len(todo) * (n0 + n), unit="sample", unit_scale=True, disable=not (progress and writes),
                           desc=os.path.basename(outfile), dynamic_ncols=True)
        bar.set_postfix_str(f"inputs {len(indices) - len(todo)}/{len(indices)}", refresh=False)
        for i in [i for i in todo if i in invalid]:
            if writes:
                writer.write(i, _not_certified(num_classes, int(dataset.labels[i]), cost), 0.0, invalid=invalid[i])
            bar.update(n0 + n)
        todo = [i for i in todo if i not in invalid]
        chunk = max(1, batch_rows // max(n, 1))
        done_now, conversions = _certify_inputs(smooth, dataset, [todo[s:s + chunk] for s in range(0, len(todo), chunk)],
                                                writer, bar, dict(cost=cost, n0=n0, n=n, alpha=alpha), workers,
                                                f"inputs {{}}/{len(indices)}", len(indices) - len(todo))
        bar.close()
    finally:
        if writer is not None:
            writer.close()
    if return_stats:
        return {"outfile": outfile, "certified_now": done_now, "samples": done_now * (n0 + n), "invalid": sorted(invalid),
                "selected": len(indices), "conversions": conversions.report(dataset.name, dataset.input_shape[-1])}
    return outfile


def run_options(options: Optional[SamplingOptions], caller: str, *, batch, device, autocast, channels_last,
                cuda_graphs, sound: bool, grid) -> Tuple[SamplingOptions, bool]:
    """(the run's ``SamplingOptions`` with its device resolved (default cpu), sound mode): ``options``, or the run's
    keywords (``batch`` is the batch size; ``grid`` stays None for sound mode on the dataset's grid)."""
    if options is not None and sound:
        raise TypeError(f"{caller}() takes sound mode either in options (its grid) or as sound=True, not both")
    settings = dict(batch_size=batch, device=device, autocast=autocast, channels_last=channels_last,
                    cuda_graphs=cuda_graphs, grid=grid)
    sound = sound or (options is not None and options.sound)
    options = options_or_settings(options, settings, caller)
    device = torch.device(options.device) if options.device is not None else torch.device("cpu")
    return dataclasses.replace(options, device=device), sound


def check_run_options(options: SamplingOptions, dataset) -> None:
    """Refuse CUDA graphs off a CUDA device and channels-last for inputs that are not images, in the command
    line's words."""
    if options.cuda_graphs and options.device.type != "cuda":
        raise ValueError("--cuda-graphs needs a CUDA device (--device cuda); drop it on the CPU")
    if options.channels_last and len(dataset.input_shape) != 3:
        raise ValueError(f"--channels-last needs image inputs [N, C, H, W]; {dataset.name} has inputs of shape "
                         f"{list(dataset.input_shape)}")


def run_identity(model, dataset, options: SamplingOptions) -> dict:
    """The metadata a certify run records of what it certified and how: classes, version, precision, model and
    data fingerprints, data format, dataset size and the device that certifies rows (``ops.describe_device``)."""
    return {"class_names": dataset.class_names, "version": __version__,
            "precision": str(options.autocast).replace("torch.", "") if options.autocast is not None else "float32",
            "model_sha256": fingerprint_model(model), "data_sha256": fingerprint_dataset(dataset),
            "data_format": dataset.describe() if hasattr(dataset, "describe") else None,
            "num_inputs": len(dataset), "devices": [describe_device(options.device)]}


def prepare_model(model, options: SamplingOptions):
    """The model in the memory format of ``options``; on a GPU, cuDNN autotuning on (the chunk shapes are fixed,
    so autotuned convolutions pay off)."""
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if options.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model


def _certify_inputs(smooth: Smooth, dataset, groups, writer, bar, settings: dict, workers, postfix: str,
                    done_before: int):
    """Certify the groups of dataset indices (one ``certify_batch`` each, the next group loading meanwhile) and
    write their rows; returns (inputs certified, ``ConversionCount`` of the images read)."""
    done_now, conversions = 0, ConversionCount()
    for batch in batches(dataset, groups, workers=workers, device=smooth.device):
        ids = batch.indices
        conversions.add(batch.infos)
        t0 = time.perf_counter()
        certs = smooth.certify_batch(batch.inputs, batch.labels.tolist(), settings["cost"], n0=settings["n0"],
                                     n=settings["n"], alpha=settings["alpha"], indices=ids, progress=bar)
        seconds = (time.perf_counter() - t0) / len(ids)
        if writer is not None:
            for i, cert, info in zip(ids, certs, batch.infos):
                writer.write(i, cert, seconds, input={"file": dataset.input_name(i), "sha256": info["sha256"]}
                             if not getattr(dataset, "in_memory", True) else {"sha256": info["sha256"]})
        done_now += len(ids)
        bar.update(len(ids) * settings["n0"])  # the estimation samples were counted as they were drawn
        bar.set_postfix_str(postfix.format(done_before + done_now), refresh=False)
    return done_now, conversions


def _file_rows_meta(dataset) -> dict:
    """For a split of a .pt file: what ``idx`` counts and each idx's row in the file."""
    rows = dataset.extra.get("file_rows") if isinstance(getattr(dataset, "extra", None), dict) else None
    if rows is None:
        return {}
    return {"idx_counts": f"inputs of the {dataset.extra.get('split')} split of {dataset.name}; file_rows[idx] is the "
                          f"row in the file", "file_rows": list(rows)}


def sound_grid(dataset, indices, sound: bool, grid: Optional[float]) -> Optional[float]:
    """The input grid of a run: None on the standard path (a ``grid`` without ``sound`` is refused), else
    ``grid`` or the dataset's (else 1/255), with every selected input checked to lie on it."""
    if grid is not None and not sound:
        raise ValueError("--grid is the input grid of --sound: add --sound")
    if not sound:
        return None
    grid = sound_mode.parse_grid(grid) if grid is not None else (getattr(dataset, "grid", None)
                                                                  or sound_mode.DEFAULT_GRID)
    _check_on_grid(dataset, indices, grid)
    return grid


def _check_on_grid(dataset, indices, grid: float, chunk: int = 256) -> None:
    """Refuse a selection with an input off the grid, naming its dataset index and the element."""
    for start in range(0, len(indices), chunk):
        ids = indices[start:start + chunk]
        try:
            sound_mode.grid_cells(dataset.take(ids)[0], grid)
            continue
        except ValueError:
            pass
        for i in ids:  # the chunk holds an input off the grid: find the first
            try:
                sound_mode.grid_cells(dataset.take([i])[0], grid)
            except ValueError as err:
                message = str(err).replace("input element [0, ", "element [")
                raise ValueError(f"input {i} of {dataset.name}: {message}") from None


def invalid_inputs(dataset, indices) -> List:
    """(index, "NaN"/"infinite") for each of the inputs ``indices`` of ``dataset`` with non-finite values.
    Images decoded from files are always finite (integers / 255): only in-memory inputs are checked."""
    if not getattr(dataset, "in_memory", True):
        return []
    x = dataset.inputs[indices].flatten(1) if indices else dataset.inputs[:0]
    bad = ~torch.isfinite(x).all(dim=1)
    out = []
    for k in bad.nonzero().flatten().tolist():
        out.append((indices[k], "NaN" if bool(torch.isnan(x[k]).any()) else "infinite"))
    return out


def _not_certified(num_classes: int, label: int, cost):
    """The certificate recorded for an invalid input: abstain, radius 0, nothing cost-sensitive."""
    zeros = np.zeros(num_classes, dtype=np.int64)
    cert = Certificate(prediction=ABSTAIN, radius=0.0, top_class=ABSTAIN, pA_lower=0.0, counts=zeros,
                       selection_counts=zeros, label=label)
    if cost is not None and cost.is_seed(label):
        cert.cs_radius = 0.0
        cert.target_radii = {j: 0.0 for j in cost.targets(label)}
    return cert


def summarize_run(outfile: str, stats: dict, seconds: float, radii=(0.0, 0.25, 0.5)) -> str:
    """A few lines for the end of a certify run: inputs, certified accuracy at the first radii,
    abstentions, time and samples/s."""
    rec = load_records(outfile)
    abstain = int((rec.predict == -1).sum())
    parts = [f"wrote {outfile}: {len(rec)} inputs ({stats['certified_now']} certified now"
             + (f", {len(stats['invalid'])} invalid recorded as not certified" if stats["invalid"] else "") + ")"]
    if len(rec):
        parts.append("certified accuracy " + ", ".join(f"{metrics.certified_accuracy(rec, r):.3f} at r={r:g}"
                                                       for r in radii)
                     + f"; abstained on {abstain} ({abstain / len(rec):.1%})")
    rate = stats["samples"] / seconds if seconds > 0 else float("nan")
    parts.append(f"{seconds:.1f} s, {stats['samples']:,} samples ({rate:,.0f} samples/s)")
    if stats.get("conversions"):
        parts.append(stats["conversions"])
    return "\n".join(parts)


def certify_dataset_at(model, dataset, sigma: float, outfile: str, radius: float, *, n0: int = 100,
                       max_n: int = 100000, alpha: float = 0.001, batch: int = 1000, skip: int = 1,
                       max_index: int = -1, cost: Optional[CostMatrix] = None, seed: int = 0, device=None,
                       meta_extra=None, progress: bool = True, first: int = DEFAULT_FIRST,
                       growth: float = DEFAULT_GROWTH, chunk: int = 64, autocast: Optional[torch.dtype] = None,
                       channels_last: bool = False, workers: Optional[int] = None, sound: bool = False,
                       grid: Optional[float] = None, options: Optional[SamplingOptions] = None) -> dict:
    """``certify --sequential``: test every selected input of ``dataset`` at ``radius`` into ``outfile``.

    Inputs as in ``certify_dataset`` (``i % skip == 0``, ``i < max_index``); rows are written as
    inputs of each chunk of ``chunk`` inputs finish; re-running resumes. Returns a summary dict
    (inputs, decisions, estimation samples used, the fixed-n total ``max_n * inputs``, and what
    ``analyze`` counts at the radius: ``accurate``, correct with a standard radius >= r; ``cs_certified``
    of ``seed_inputs``, seed-class inputs certified by the cost-sensitive test).
    ``sound``, ``grid``: sound floating-point mode, as in ``certify_dataset`` (recorded in the metadata
    with the noise charge every decision paid). ``options``: a ``costsmooth.sampling.SamplingOptions`` in place
    of batch, device, autocast, channels_last, sound and grid.
    """
    sigma = check_positive_finite(sigma, "sigma")
    radius = float(radius)
    if not math.isfinite(radius) or radius < 0:
        raise ValueError(f"--radius must be a finite number >= 0, got {radius!r}")
    alpha, n0, max_n = check_alpha(alpha), check_count(n0, "n0"), check_count(max_n, "max_n")
    boundary = Boundary.geometric(alpha, max_n, first, growth)
    options, sound = run_options(options, "certify_dataset_at", batch=batch, device=device, autocast=autocast,
                                 channels_last=channels_last, cuda_graphs=False, sound=sound, grid=grid)
    device = options.device
    indices = select_indices(len(dataset), skip, max_index)
    model = model.to(device)
    num_classes = probe_num_classes(model, dataset, device)
    if cost is not None:
        cost.check_num_classes(num_classes)
    if invalid_inputs(dataset, indices):
        raise ValueError(f"{dataset.name} has NaN or infinite values in the selected inputs; clean the data first")
    grid = sound_grid(dataset, indices, sound, options.grid)
    options = dataclasses.replace(options, grid=grid)
    meta = {"sigma": sigma, "n0": n0, "max_n": max_n, "alpha": alpha, "seed": seed, "skip": skip, "max": max_index,
            "radius": radius, "sequential": {"boundary": "clopper_pearson_geometric_grid", "first": first,
                                             "growth": growth, "final_share": DEFAULT_FINAL_SHARE,
                                             **boundary.describe()},  # checkpoints and their levels
            "num_classes": num_classes, "cost": cost.to_json() if cost is not None else None,
            "class_names": dataset.class_names, "version": __version__, "model_sha256": fingerprint_model(model),
            "data_sha256": fingerprint_dataset(dataset), "num_inputs": len(dataset),
            "precision": str(options.autocast).replace("torch.", "") if options.autocast is not None else "float32",
            "noise": "sound" if sound else "gaussian", "grid": grid,
            "charge": sound_mode.noise_charge(math.prod(dataset.input_shape), sigma, grid),
            "devices": [describe_device(options.device)], **(meta_extra or {})}
    check_run_options(options, dataset)
    writer = SequentialWriter(outfile, meta)
    if options.channels_last:
        model = model.to(memory_format=torch.channels_last)
    smooth = Smooth(model, num_classes, sigma, seed=seed, options=options)
    summary = collections.Counter()
    seeds = set(cost.seed_classes) if cost is not None else set()
    try:
        todo = [i for i in indices if i not in writer.done]
        bar = progress_bar(total=len(todo), unit="input", disable=not progress, desc=os.path.basename(outfile),
                   dynamic_ncols=True)
        for batch in batches(dataset, [todo[s:s + chunk] for s in range(0, len(todo), chunk)], workers=workers,
                             device=device, digests=False):  # image datasets: the next chunk loads meanwhile
            ids = batch.indices
            results = smooth.certify_batch_at(batch.inputs, radius, alpha, max_n=max_n,
                                              labels=batch.labels.tolist(), cost=cost, n0=n0, indices=ids,
                                              first=first, growth=growth)
            for i, res in zip(ids, results):
                writer.write(i, res)
                summary[res.decision] += 1
                summary["samples"] += res.samples
                summary["certified_correct"] += int(res.certified and bool(res.correct))
                # what analyze counts: certified accuracy (standard radius >= r), Rob_cs (cost-sensitive test)
                summary["accurate"] += int(bool(res.correct) and res.standard_radius >= radius)
                summary["seed"] += int(res.label in seeds)
                summary["cs_certified"] += int(res.test == "cost_sensitive" and res.certified)
            bar.update(len(ids))
        bar.close()
    finally:
        writer.close()
    return {"outfile": outfile, "inputs_now": len(todo), "selected": len(indices), "samples": summary["samples"],
            "fixed_n_samples": max_n * len(todo), "certified": summary["certified"],
            "not_certified": summary["not_certified"], "undecided": summary["undecided"],
            "certified_correct": summary["certified_correct"], "accurate": summary["accurate"],
            "seed_inputs": summary["seed"], "cs_certified": summary["cs_certified"]}


def summarize_sequential(out: dict, radius: float, max_n: int, seconds: float) -> str:
    """The lines printed after ``certify --sequential``: decisions, and the counts ``analyze`` gives at the
    radius (a seed-class input certified only by the cost-sensitive test is not standard-certified)."""
    n = out["inputs_now"]
    lines = [f"wrote {out['outfile']}: {n} inputs tested now at radius {radius:g} ({out['certified']} certified, "
             f"{out['not_certified']} not certified, {out['undecided']} undecided)"]
    if n:
        cs = (f"; cost-sensitive test: {out['cs_certified']} of {out['seed_inputs']} seed-class inputs certified"
              if out["seed_inputs"] else "")
        lines.append(f"certified accuracy at r={radius:g}: {out['accurate']} of {n} inputs correct with a standard "
                     f"radius >= {radius:g} ({out['accurate'] / n:.3f}){cs}")
    if out["samples"]:
        lines.append(f"{out['samples']:,} estimation samples ({out['fixed_n_samples'] / out['samples']:.1f}x fewer than "
                     f"{out['fixed_n_samples']:,} at fixed n = {max_n}); {seconds:.1f} s")
    else:
        lines.append(f"no estimation samples drawn now (every selected input was already decided); {seconds:.1f} s")
    return "\n".join(lines)


def probe_num_classes(model, dataset, device) -> int:
    """The model's output width on one input of ``dataset``, checked against the dataset's classes."""
    if len(dataset) == 0:
        raise ValueError(f"the dataset {dataset.name} is empty: there is nothing to certify")
    x = dataset.take([0])[0].to(device)
    try:
        with eval_mode(model):
            out = model(x)
    except RuntimeError as err:
        raise ValueError(f"the model cannot take {dataset.name}'s inputs of shape {list(dataset.input_shape)} "
                         f"({str(err).splitlines()[0]}); use a model trained on this dataset") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits [batch, num_classes]; on one input it returned {shape}")
    if not torch.is_floating_point(out):
        raise ValueError(f"the model returned {out.dtype} values; it must return float logits [batch, num_classes], "
                         f"not class indices")
    num_classes = int(out.shape[1])
    if num_classes < 2:
        raise ValueError(f"the model returns {num_classes} logit per input; a classifier needs at least 2")
    if dataset.num_classes and num_classes != dataset.num_classes:
        raise ValueError(f"the model has {num_classes} outputs but the dataset {dataset.name} has "
                         f"{dataset.num_classes} classes")
    return num_classes


def recertify(tsv: str, outfile: str, alpha: Optional[float] = None, cost: Optional[CostMatrix] = None,
              keep_cost: bool = True, available_only: bool = False) -> str:
    """Recompute certificates from the counts saved beside ``tsv`` at another alpha and/or cost matrix.

    Every row of ``tsv`` needs its saved counts; if some are missing this refuses, naming them, unless
    ``available_only`` (then only the rows with counts are written, and the metadata says so).
    """
    if os.path.exists(outfile):
        raise ValueError(f"{outfile} exists; choose a new output file")
    if alpha is not None:
        alpha = check_alpha(alpha)
    meta = read_meta(tsv)
    if not meta:
        raise ValueError(f"{tsv}.meta.json not found: recertify needs a run written by costsmooth certify")
    if meta.get("sequential"):  # counts of a test that chose when to stop: fixed-n bounds would not be valid
        raise ValueError(f"{tsv} is a sequential run (certify --sequential): its counts stopped when the sequential "
                         f"test decided, so fixed-n bounds on them would overstate the radius; re-run certify "
                         f"--sequential with the new alpha or cost instead")
    if isinstance(meta.get("sigma"), dict):  # input-dependent sigma (costsmooth.input_dependent)
        raise ValueError(f"{tsv} was certified with an input-dependent sigma ({meta['sigma'].get('fn')}); recertify "
                         f"supports constant-sigma runs only: re-run costsmooth certify with the new settings")
    counts = read_counts(tsv, meta.get("num_classes"))
    rows, problems = read_tsv_checked(tsv)
    times = {int(r["idx"]): float(r["time"]) for r in rows}
    if problems:  # the counts are the source of the certificates: garbled rows are recomputed, not dropped
        warnings.warn(f"{tsv}: {len(problems)} malformed line(s) (line {', '.join(str(k) for k, _ in problems[:5])}); "
                      f"their inputs are recertified from the saved counts")
    num_classes = meta.get("num_classes")
    missing = sorted(set(times) - set(counts))
    if missing and not available_only:
        raise ValueError(f"{len(missing)} of {len(times)} rows of {tsv} have no saved counts (indices "
                         f"{missing[:10]}{' ...' if len(missing) > 10 else ''}); re-run certify on {tsv} to restore "
                         f"them, or pass --available-only to recertify the {len(times) - len(missing)} rows that have")
    if cost is None and keep_cost and meta.get("cost"):
        cost = CostMatrix.from_json(meta["cost"])
    if cost is not None and num_classes:
        cost.check_num_classes(num_classes)
    alpha = meta["alpha"] if alpha is None else alpha
    ids = sorted(counts)  # every input whose counts were saved, also when its TSV row was garbled or not written
    times = {i: times.get(i, 0.0) for i in ids}
    new_meta = dict(meta, alpha=alpha, cost=cost.to_json() if cost is not None else None, recertified_from=tsv)
    if missing:
        new_meta["missing_indices"] = missing
    writer = ResultWriter(outfile, new_meta)
    try:
        for i in [i for i in ids if counts[i].get("invalid")]:  # inputs that were never sampled
            writer.write(i, _not_certified(num_classes, counts[i]["label"], cost), times[i],
                         invalid=counts[i]["invalid"])
        ids = [i for i in ids if not counts[i].get("invalid")]
        if ids:
            labels = [counts[i]["label"] for i in ids]
            certs = certify_from_counts(np.array([counts[i]["selection"] for i in ids]),
                                        np.array([counts[i]["estimation"] for i in ids]), alpha, meta["sigma"],
                                        None if any(y is None for y in labels) else labels, cost,
                                        charge=meta.get("charge", 0.0))
            for i, cert in zip(ids, certs):
                if "prob_sums" in counts[i]:  # certify --prob-sums: keep the saved sums (costsmooth.calibration)
                    cert.prob_sums = np.array(counts[i]["prob_sums"], dtype=np.float64)
                writer.write(i, cert, times[i])
    finally:
        writer.close()
    return outfile
