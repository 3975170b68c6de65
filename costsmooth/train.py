"""Training of base classifiers for smoothing: ``train()`` and the ``costsmooth train`` command.

Deterministic on CPU for a given seed: the shuffling of each epoch comes from a generator seeded by
(seed, epoch) and the noise from the loss's counter-based ``NoiseSource``; a checkpoint is written
after every epoch (model, optimizer, scheduler, loss state), so ``resume=True`` continues to the same
weights as an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Union

import torch

from . import ops
from ._checks import check_count, check_positive_finite, check_seed, settings_or_keywords
from .args import (HelpFormatter, UsageError, add_cost_args, add_data_args, add_model_args, add_sound_args,
                   dataset_from_args, parse_cost, positive_float, positive_int, resolve_device, seed_arg)
from .calibration.act import ACTBrier, ACTECE  # noqa: F401  (registers act_brier and act_ece in LOSSES)
from .cost import CostMatrix
from .data import Dataset, channel_stats
from .data import batches as read_batches
from .data.loading import ConversionCount
from .losses import LOSSES, make_loss
from .mixup import SameClassMixup
from .progress import progress_bar
from .models import ARCHS, build_model, load_weights, read_checkpoint, save_checkpoint
from .results import fingerprint_dataset
from .runs import invalid_inputs, sound_grid
from .sampling import eval_mode

__all__ = ["train", "TrainSettings", "register_cli", "TrainingDiverged", "COHEN_RECIPE", "DEFAULT_RECIPE", "recipe_for"]

# Cohen et al.'s training recipe for CIFAR-10 and ImageNet: SGD, lr 0.1 x0.1 every 30 epochs, 90 epochs.
COHEN_RECIPE = {"epochs": 90, "lr": 0.1, "batch": 256, "optimizer": "sgd", "schedule": "step", "weight_decay": 1e-4}
# Every other dataset (the small embedded ones, .pt files, folders).
DEFAULT_RECIPE = {"epochs": 30, "lr": 0.01, "batch": 64, "optimizer": "sgd", "schedule": "cosine",
                  "weight_decay": 5e-4}


def recipe_for(dataset_spec: str) -> dict:
    """The training defaults of a dataset: ``COHEN_RECIPE`` for ``imagenet:`` and ``cifar10:``, else
    ``DEFAULT_RECIPE``."""
    return dict(COHEN_RECIPE if dataset_spec.partition(":")[0] in ("imagenet", "cifar10") else DEFAULT_RECIPE)


def _optimizer(model, lr: float, momentum: float, weight_decay: float, optimizer: str):
    if optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; choose sgd or adam")


def _scheduler(opt, schedule: str, epochs: int):
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if schedule == "step":  # Cohen et al.: x0.1 every 30 epochs (scaled to the run length)
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, epochs * 30 // 90), gamma=0.1)
    if schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    raise ValueError(f"unknown lr schedule {schedule!r}; choose cosine, step or constant")


def _schedule_at(lr: float, schedule: str, epochs: int, epoch: int) -> dict:
    """The state of the learning-rate schedule of an ``epochs``-epoch run after ``epoch`` epochs (stepped
    exactly as that run steps it), for a run resumed with more epochs than it was started with."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = _scheduler(opt, schedule, epochs)
    with warnings.catch_warnings():  # "scheduler stepped before the optimiser": no optimiser runs here
        warnings.simplefilter("ignore")
        for _ in range(epoch):
            sched.step()
    return sched.state_dict()


class TrainingDiverged(ValueError):
    """The loss or a gradient stopped being finite; the last finite checkpoint is kept."""


def _finite_record(record: dict) -> dict:
    """A log record with non-finite numbers as None, so that log.jsonl stays valid JSON (null, not NaN)."""
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}


@dataclass(frozen=True)
class TrainSettings:
    """How ``train`` trains: one object instead of fifteen keywords (see ``train`` for each one's meaning).
    The data, architecture, loss, sigma, cost matrix and output folder are ``train``'s own arguments."""
    epochs: int = 30
    lr: float = 0.01
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    seed: int = 0
    device: Union[str, torch.device] = "cpu"
    eps_warmup: int = 10
    loss_kwargs: Optional[dict] = None
    mixup: Optional[float] = None
    init: Optional[str] = None
    trust_code: bool = False
    workers: Optional[int] = None
    sound: bool = False
    grid: Optional[float] = None


@dataclass
class _Training:
    """What the loop works on: the model, its optimiser and schedule, the loss and mixup, and where a
    divergence is reported from (``ckpt_path``, the first epoch of this call)."""
    dataset: Dataset
    model: torch.nn.Module
    opt: torch.optim.Optimizer
    sched: object
    objective: object
    mixer: Optional[SameClassMixup]
    loss: str
    epochs: int
    ckpt_path: str
    log_path: str
    start: int
    device: torch.device


def train(dataset: Dataset, arch: str, loss: str, sigma: float, out_dir: str, *, cost: Optional[CostMatrix] = None,
          epochs: int = 30, lr: float = 0.01, batch_size: int = 64, optimizer: str = "sgd", momentum: float = 0.9,
          weight_decay: float = 5e-4, schedule: str = "cosine", seed: int = 0, device="cpu", resume: bool = False,
          loss_kwargs: Optional[dict] = None, eps_warmup: int = 10, progress: bool = True,
          stop_after: Optional[int] = None, log=None, num_classes: Optional[int] = None,
          mixup: Optional[float] = None, init: Optional[str] = None, trust_code: bool = False,
          workers: Optional[int] = None, sound: bool = False, grid: Optional[float] = None,
          settings: Optional[TrainSettings] = None) -> str:
    """Train ``arch`` on ``dataset`` with the named loss; returns the path of the final checkpoint.

    Writes ``out_dir/checkpoint.pt`` after every epoch (Cohen et al.'s ``{"arch", "state_dict"}`` plus
    optimizer, scheduler, loss state, epoch and the run's settings) and ``out_dir/log.jsonl`` (one JSON
    line per epoch; non-finite values as null), each line with ``noisy_acc``, the base model's accuracy
    under one noise draw on a fixed random subset of at most ``NOISY_ACCURACY_INPUTS`` training inputs,
    and for each seed class c of ``cost`` ``noisy_acc_<c>``, the fraction of its inputs there predicted
    as c; a ``RuntimeWarning`` names a seed class predicted for fewer than half of them. For every loss with an ``eps`` (smoothadv, pgd,
    act_brier, act_ece), eps ramps linearly over the first ``eps_warmup`` epochs. ``stop_after``
    ends this call after that epoch (the schedule still targets ``epochs``): a run can be split into pieces, e.g. to fit time-limited job slots, and continued
    with ``resume=True``.

    ``out_dir`` holding a checkpoint is refused unless ``resume``; resuming refuses a checkpoint
    written with other settings (arch, loss, sigma, lr, schedule, cost, data, ...), naming them, except
    a larger ``epochs``: the run is extended, and from the resumed epoch on the learning rate follows
    the schedule of a run started with the new ``epochs`` (the epochs already done keep their weights). When the loss or a gradient is not finite, training stops with ``TrainingDiverged`` naming
    the epoch and step; the checkpoint of the last finished epoch is kept. ``log`` (a callable taking
    a string) receives one line per epoch. ``num_classes`` defaults to the dataset's class count (or,
    for a dataset without class names, the largest label + 1).

    ``mixup`` (alpha > 0): every batch goes through ``costsmooth.mixup.SameClassMixup(alpha, seed)``
    (inputs mixed with inputs of their own class, Zhong & Tandon 2024) before the loss, for every
    loss; its state is saved in the checkpoint and ``mixup`` is a recorded setting.

    ``init``: a checkpoint (same arch and class count) whose weights start the run (fine-tuning, e.g.
    ``--loss act_brier`` from a Gaussian-trained model); the sha256 of its file is a recorded setting,
    so a resume with another (or no) init file is refused. It may be costsmooth's or Cohen et al.'s
    checkpoint, a bare state dict or TorchScript; a ``torch.save``d whole module only with ``trust_code``
    (loading it runs code from the file). Checkpoints are read with ``torch.load(weights_only=True)``.

    Batches are read through ``data.batches``: image datasets are decoded by ``workers`` loader processes
    while the model trains, with the dataset's training augmentation (``augment``: Cohen et al.'s random
    crop and flip for CIFAR-10 and ImageNet) drawn from (seed, epoch, index). An image dataset without
    normalisation statistics (``folder:``) gets them from one streaming pass over its images.

    ``sound`` (``grid``: the input grid, default the dataset's, else 1/255): the noisy training inputs are
    the grid points sound certification gives the model (``costsmooth.sound``; ``NoiseSource.grid``), so
    the model is trained on the law of ``f o q`` that ``certify --sound`` certifies. The training inputs
    must lie on the grid (in-memory datasets are checked before training; image files as they are
    drawn), with one sigma; losses that attack their inputs (smoothadv, pgd, act_*) and ``mixup`` move
    inputs off the grid and are refused. The grid is a recorded setting.

    ``settings``: a ``TrainSettings`` holding epochs, lr, batch_size, optimizer, momentum, weight_decay,
    schedule, seed, device, eps_warmup, loss_kwargs, mixup, init, trust_code, workers, sound and grid at once
    (those keywords then stay at their defaults).
    """
    s = settings_or_keywords(settings, TrainSettings, dict(
        epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, momentum=momentum, weight_decay=weight_decay,
        schedule=schedule, seed=seed, device=device, eps_warmup=eps_warmup, loss_kwargs=loss_kwargs, mixup=mixup,
        init=init, trust_code=trust_code, workers=workers, sound=sound, grid=grid), "train")
    s = dataclasses.replace(s, epochs=check_count(s.epochs, "epochs"))
    check_seed(s.seed)
    s = dataclasses.replace(s, batch_size=check_count(s.batch_size, "batch_size"))
    # sigma: a number, or an input-dependent sigma function (costsmooth.input_dependent), recorded by its settings
    sigma_setting = sigma.describe() if hasattr(sigma, "describe") else None
    if not callable(sigma):
        sigma = check_positive_finite(sigma, "sigma")
    s = dataclasses.replace(s, lr=check_positive_finite(s.lr, "lr"))
    if s.lr > torch.finfo(torch.float32).max:
        raise ValueError(f"lr must be a positive number below {torch.finfo(torch.float32).max:.3g} (float32 weights), "
                         f"got {s.lr!r}; typical values are 1e-4 to 0.1")
    classes = _check_training_data(dataset, num_classes, cost)
    if s.sound and (callable(sigma) or s.mixup is not None):
        raise ValueError("--sound trains on the grid points of the inputs with one sigma: "
                         + ("drop the input-dependent sigma" if callable(sigma) else
                            "--mixup mixes inputs off the grid; drop one of them"))
    in_memory = getattr(dataset, "in_memory", True)  # image files are checked on the grid as they are drawn
    grid = sound_grid(dataset, list(range(len(dataset))) if in_memory else [], s.sound, s.grid)
    device = torch.device(s.device)
    ckpt_path = os.path.join(out_dir, "checkpoint.pt")
    recorded = _recorded_settings(s, arch, loss, sigma_setting or sigma, classes, cost, dataset)
    recorded["grid"] = grid
    mixer = SameClassMixup(s.mixup, s.seed) if s.mixup is not None else None  # same-class mixup (costsmooth.mixup)
    recorded["mixup"] = mixer.alpha if mixer is not None else None  # None records a run without it
    init_state, recorded["init_sha256"] = _load_init(s.init, arch, s.trust_code) if s.init is not None else (None, None)
    state, old, extended = _checkpoint_to_resume(ckpt_path, out_dir, resume, device, recorded)
    objective = make_loss(loss, sigma, cost, seed=s.seed, **(s.loss_kwargs or {}))  # checked before OUT exists
    if grid is not None:
        if not objective.accepts_grid:
            raise ValueError(f"--sound draws grid points of the training inputs, but the {loss} loss attacks them off "
                             f"the grid first; use gaussian, gaussian_r, macer, cs_rs or cs_rs_pairwise")
        objective.noise.grid = grid
    torch.manual_seed(s.seed)
    mean, std = dataset.mean, dataset.std
    if mean is None and not getattr(dataset, "in_memory", True):  # image files: one pass over the training images
        mean, std = channel_stats(dataset, workers=s.workers)
    model = build_model(arch, classes, dataset.input_shape, mean, std).to(device)
    if init_state is not None and state is None:  # its normalisation, if it carries one, replaces the dataset's
        load_weights(model, init_state, f"--init {s.init}", arch)
    os.makedirs(out_dir, exist_ok=True)  # after every check: a refused command leaves no directory
    opt = _optimizer(model, s.lr, s.momentum, s.weight_decay, s.optimizer)
    run = _Training(dataset, model, opt, _scheduler(opt, s.schedule, s.epochs), objective, mixer, loss, s.epochs,
                    ckpt_path, os.path.join(out_dir, "log.jsonl"), 0, device)
    if state is not None:
        run.start = _restore(run, state, old if extended else None, s, out_dir, log)
    target_eps = getattr(objective, "eps", None)
    seed_classes = cost.seed_classes if cost is not None else []
    watch = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(s.seed))[:NOISY_ACCURACY_INPUTS]
    if not getattr(dataset, "in_memory", True):  # image files: decoded each epoch, so fewer (memory, time)
        watch = watch[:NOISY_ACCURACY_IMAGES]
    held = {}  # seed class -> whether it was predicted for most of its inputs at the last epoch
    conversions = ConversionCount()
    last = s.epochs if stop_after is None else min(s.epochs, stop_after)
    for epoch in range(run.start, last):
        if target_eps is not None:
            objective.eps = target_eps * min(1.0, (epoch + 1) / max(s.eps_warmup, 1))
        totals, steps = _train_epoch(run, s, epoch, conversions, progress)  # batch -> loss -> step -> checks
        record = _end_epoch(run, s, epoch, totals, steps, watch, sigma, seed_classes, recorded)
        if log is not None:
            _log_epoch(log, record, run, epoch, conversions, seed_classes)
        _warn_lost_seed_classes(record, seed_classes, held, epoch + 1, last, s.epochs, loss)
    return ckpt_path


def _check_training_data(dataset: Dataset, num_classes: Optional[int], cost: Optional[CostMatrix]) -> int:
    """The class count (``num_classes``, else the dataset's, else the largest label + 1), with the data checked:
    not empty, labels in range, finite inputs (the same check as certify's), the cost matrix's size."""
    if len(dataset) == 0:
        raise ValueError(f"the dataset {dataset.name} is empty: there is nothing to train on")
    classes = check_count(num_classes or dataset.num_classes or int(dataset.labels.max()) + 1, "num_classes", 2)
    if cost is not None:
        cost.check_num_classes(classes, f"the dataset {dataset.name}")
    if int(dataset.labels.min()) < 0 or int(dataset.labels.max()) >= classes:
        raise ValueError(f"labels of {dataset.name} must lie in [0, {classes}), got {int(dataset.labels.min())}.."
                         f"{int(dataset.labels.max())}")
    invalid = invalid_inputs(dataset, list(range(len(dataset))))
    if invalid:  # the same check as certify's, before any file is written
        i, what = invalid[0]
        raise ValueError(f"{dataset.describe_input(i)} contains {what} values"
                         f"{f' (and {len(invalid) - 1} more inputs)' if len(invalid) > 1 else ''}; clean the data "
                         f"before training")
    return classes


def _recorded_settings(s: TrainSettings, arch: str, loss: str, sigma, classes: int, cost, dataset) -> dict:
    """The settings a checkpoint records; resuming with other values is refused (a larger ``epochs`` extends)."""
    return {"arch": arch, "loss": loss, "sigma": sigma, "lr": s.lr, "epochs": s.epochs, "batch_size": s.batch_size,
            "optimizer": s.optimizer, "momentum": s.momentum, "weight_decay": s.weight_decay, "schedule": s.schedule,
            "seed": s.seed, "eps_warmup": s.eps_warmup, "loss_kwargs": dict(sorted((s.loss_kwargs or {}).items())),
            "num_classes": classes, "cost": cost.to_json() if cost is not None else None,
            "data_sha256": fingerprint_dataset(dataset)}


def _checkpoint_to_resume(ckpt_path: str, out_dir: str, resume: bool, device, recorded: dict):
    """(the checkpoint's contents, its recorded settings, whether the run is extended to more epochs) when
    ``out_dir`` holds a run to resume, else (None, None, False); refuses a run that is not to be resumed, a file
    that is no checkpoint, and other settings (naming them) than a larger ``epochs``."""
    if not os.path.isfile(ckpt_path):
        return None, None, False
    if not resume:
        raise ValueError(f"{out_dir} already holds a training run ({ckpt_path}); pass --resume to continue it "
                         f"or choose another output directory")
    state = read_checkpoint(ckpt_path, device, what="training checkpoint")
    if not isinstance(state, dict) or "state_dict" not in state:
        raise ValueError(f"{ckpt_path} is not a checkpoint written by costsmooth train; choose another output "
                         f"directory")
    old = state.get("settings") or {"arch": state.get("arch"), "loss": state.get("loss")}
    changed = sorted(k for k in old if old.get(k) != recorded.get(k))
    extended = changed == ["epochs"] and isinstance(old.get("epochs"), int) and old["epochs"] < recorded["epochs"]
    if changed and not extended:
        details = "; ".join(f"{k}: {old.get(k)!r} in the checkpoint, {recorded.get(k)!r} now" if k != "data_sha256"
                            else "the training data differ" for k in changed)
        raise ValueError(f"{ckpt_path} was written with other settings ({details}); resume with the same "
                         f"settings or choose another output directory")
    return state, old, extended


def _restore(run: _Training, state: dict, extended_from: Optional[dict], s: TrainSettings, out_dir: str, log) -> int:
    """Load a checkpoint into the run (model, optimiser, schedule, loss and mixup states); returns its epoch. A run
    extended to more epochs (``extended_from``: the checkpoint's settings) gets the schedule of a run planned for
    them from the start, at the resumed epoch."""
    run.model.load_state_dict(state["state_dict"])
    run.opt.load_state_dict(state["optimizer"])
    if extended_from is not None:
        run.sched.load_state_dict(_schedule_at(s.lr, s.schedule, s.epochs, state["epoch"]))
        for group in run.opt.param_groups:
            group["lr"] = run.sched.get_last_lr()[0]
        if log is not None:
            log(f"extending {out_dir} from {extended_from['epochs']} to {s.epochs} epochs: the learning-rate schedule is "
                f"recomputed for {s.epochs} epochs from epoch {state['epoch'] + 1} on")
    else:
        run.sched.load_state_dict(state["scheduler"])
    run.objective.load_state_dict(state["loss_state"])
    if run.mixer is not None:
        if "mixup_state" not in state:
            raise ValueError(f"{run.ckpt_path} was written without --mixup; resume without it or choose another "
                             f"output directory")
        run.mixer.load_state_dict(state["mixup_state"])
    return state["epoch"]


def _train_epoch(run: _Training, s: TrainSettings, epoch: int, conversions: ConversionCount, progress: bool):
    """One epoch: for each batch (shuffled by (seed, epoch)), the loss, the optimiser step and the checks that stop
    a diverging run; returns (the sums of the loss's diagnostics, the number of steps)."""
    run.model.train()
    order = torch.randperm(len(run.dataset), generator=torch.Generator().manual_seed(s.seed * 100003 + epoch))
    totals, steps = {}, 0
    groups = [order[b0:b0 + s.batch_size].tolist() for b0 in range(0, len(order), s.batch_size)]
    bar = progress_bar(read_batches(run.dataset, groups, workers=s.workers, device=run.device, seed=s.seed,
                                    epoch=epoch, digests=False),
                       total=len(groups), desc=f"{run.loss} epoch {epoch + 1}/{run.epochs}", leave=False,
                       disable=not progress, dynamic_ncols=True)
    for step, batch in enumerate(bar, start=1):
        conversions.add(batch.infos)
        xb, yb = batch.inputs.to(run.device, non_blocking=True), batch.labels.to(run.device, non_blocking=True)
        if run.mixer is not None:
            xb, yb = run.mixer(xb, yb)
        value, diag = run.objective(run.model, xb, yb)
        _step(run, value, epoch, step)
        diag["loss"] = float(value.detach())
        for k, v in diag.items():
            totals[k] = totals.get(k, 0.0) + v
        steps += 1
    return totals, steps


def _step(run: _Training, value: torch.Tensor, epoch: int, step: int) -> None:
    """Backward and optimiser step, stopping the run (``TrainingDiverged``) when the loss, a gradient or, after the
    step, a parameter is not finite."""
    where = (epoch, run.epochs, step, run.ckpt_path, run.start)
    run.opt.zero_grad(set_to_none=True)
    if not bool(torch.isfinite(value.detach())):
        _diverged(f"the {run.loss} loss is {float(value.detach())}", *where)
    value.backward()
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    if grads and not bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))):
        _diverged(f"a gradient of the {run.loss} loss is not finite", *where)
    run.opt.step()
    if not bool(torch.stack([torch.isfinite(p).all() for p in run.model.parameters()]).all()):  # one sync
        _diverged("a parameter is not finite after the optimiser step", *where)


def _end_epoch(run: _Training, s: TrainSettings, epoch: int, totals: dict, steps: int, watch: torch.Tensor, sigma,
               seed_classes, recorded: dict) -> dict:
    """The end of an epoch: the schedule's step, the check of the model's logits, the epoch's log record (with the
    accuracy under noise on the watched inputs), the checkpoint and the line of log.jsonl; returns the record."""
    run.sched.step()
    check = run.dataset.take(range(min(s.batch_size, len(run.dataset))))[0]
    if not _finite_outputs(run.model, check.to(run.device)):  # finite weights can still overflow
        _diverged("the model's logits are not finite after the epoch", epoch, run.epochs, steps, run.ckpt_path,
                  run.start)
    record = {"epoch": epoch + 1, "lr": run.opt.param_groups[0]["lr"],
              **{k: v / max(steps, 1) for k, v in totals.items()}}
    record.update(noisy_accuracy(run.model, *run.dataset.take(watch.tolist()), sigma, seed_classes, seed=s.seed * 100003 + epoch,
                                 batch_size=max(s.batch_size, 256), device=run.device, grid=recorded["grid"]))
    save_checkpoint(run.ckpt_path, run.model, recorded["arch"], recorded["num_classes"], run.dataset.input_shape,
                    optimizer=run.opt.state_dict(), scheduler=run.sched.state_dict(),
                    loss_state=run.objective.state_dict(), epoch=epoch + 1, loss=run.loss, sigma=recorded["sigma"],
                    seed=s.seed, cost=recorded["cost"], settings=recorded,
                    **({"mixup_state": run.mixer.state_dict()} if run.mixer is not None else {}))
    with open(run.log_path, "a") as f:
        f.write(json.dumps(_finite_record(record), allow_nan=False) + "\n")
    return record


def _log_epoch(log, record: dict, run: _Training, epoch: int, conversions: ConversionCount, seed_classes) -> None:
    """The epoch's line for ``log`` (after the first epoch of this call, the images' conversions once before it)."""
    report = conversions.report(run.dataset.name, run.dataset.input_shape[-1])
    if epoch == run.start and report:
        log(report)
    log(f"epoch {epoch + 1}/{run.epochs}  loss {record.get('loss', float('nan')):.4f}  "
        + "".join(f"{k} {record[k]:.4g}  " for k in ("acc", "ce") if k in record)
        + f"noisy acc {record['noisy_acc']:.3f}  "
        + "".join(f"class {c} {record[f'noisy_acc_{c}']:.3f}  " for c in seed_classes if f"noisy_acc_{c}" in record)
        + f"lr {record['lr']:.3g}")


NOISY_ACCURACY_INPUTS = 4096  # training inputs (a fixed random subset) of the per-epoch accuracy under noise
NOISY_ACCURACY_IMAGES = 256  # the same for image files, decoded each epoch (256 ImageNet inputs: 154 MB)


def noisy_accuracy(model, x: torch.Tensor, y: torch.Tensor, sigma, seed_classes: Sequence[int] = (), *,
                   seed: int = 0, batch_size: int = 256, device="cpu", grid: Optional[float] = None) -> Dict[str, float]:
    """Accuracy of the base model on one Gaussian draw ``x + N(0, sigma^2)`` per input (eval mode, no grad).

    ``x`` ``[N, *shape]``, ``y`` ``[N]``; ``sigma`` a number or an input-dependent sigma function
    (``[B, *shape] -> [B]``); the noise comes from a generator seeded with ``seed``, apart from the
    training noise. ``grid`` (sound mode): the model is given the grid points of one sound draw
    (``ops.noisy_batch(..., grid=grid)``, keyed by ``seed`` and each input's position) instead. Returns ``{"noisy_acc": ...}`` over all inputs and ``{"noisy_acc_<c>": ...}`` for each
    seed class c with inputs in ``x``: the fraction of class-c inputs predicted as c.
    """
    gen = torch.Generator().manual_seed(seed)
    preds = []
    with eval_mode(model), torch.no_grad():
        for b0 in range(0, len(y), batch_size):
            xb = x[b0:b0 + batch_size].to(device)
            s = sigma(xb) if callable(sigma) else sigma
            if isinstance(s, torch.Tensor):  # a sigma function's float64 levels, in the inputs' dtype
                s = s.view(-1, *([1] * (xb.dim() - 1))).to(xb.dtype)
            if grid is not None:
                drawn = ops.noisy_batch(xb, 1, s, seed=seed % 2**63, index_offset=b0, grid=grid)
                preds.append(model(drawn).argmax(1).cpu())
                continue
            noise = torch.randn(xb.shape, generator=gen, dtype=torch.float32).to(device=device, dtype=xb.dtype)
            preds.append(model(xb + s * noise).argmax(1).cpu())
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)
    correct = pred == y.cpu()
    out = {"noisy_acc": float(correct.float().mean()) if len(y) else float("nan")}
    for c in seed_classes:
        mine = y.cpu() == c
        if mine.any():
            out[f"noisy_acc_{c}"] = float(correct[mine].float().mean())
    return out


def _warn_lost_seed_classes(record: dict, seed_classes, held: dict, epoch: int, last: int, epochs: int,
                            loss: str) -> None:
    """A RuntimeWarning when a seed class stops being predicted for most of its inputs (noisy_acc_<c> < 0.5):
    at the epoch where it drops (after having been above) and, if it is still below, at the run's last epoch."""
    lost = []
    for c in seed_classes:
        value = record.get(f"noisy_acc_{c}")
        if value is None:
            continue
        if value < 0.5 and (held.get(c) or epoch == last):
            lost.append((c, value))
        held[c] = value >= 0.5
    if lost:
        warnings.warn(f"epoch {epoch}/{epochs}: seed class " + ", ".join(f"{c} is predicted for {v:.0%}" for c, v in lost)
                      + f" of its training inputs under noise (all classes: {record['noisy_acc']:.0%}); the {loss} "
                      f"objective is giving the seed class away: fine-tune a Gaussian model (--init), lower "
                      f"--loss-arg lambda1, or use a label-anchored cs_rs loss", RuntimeWarning, stacklevel=3)


def _finite_outputs(model, x: torch.Tensor) -> bool:
    """Whether the model's logits on ``x`` are finite (``sampling.eval_mode``: its mode is restored)."""
    with eval_mode(model):
        return bool(torch.isfinite(model(x)).all())


def _load_init(path: str, arch: str, trust_code: bool = False):
    """(state_dict, sha256 of the file) of the checkpoint that starts a fine-tuning run."""
    ckpt = read_checkpoint(path, "cpu", trust_code=trust_code, what="--init")
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if isinstance(ckpt, torch.nn.Module):  # TorchScript, or a trusted pickled module
        ckpt = {"state_dict": ckpt.state_dict()}
    elif isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        ckpt = {"state_dict": ckpt}  # a bare state dict
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise ValueError(f"--init {path} is not a checkpoint {{'arch', 'state_dict'}} (e.g. OUT/checkpoint.pt of "
                         f"costsmooth train) or a state dict")
    if ckpt.get("arch") not in (None, arch):
        raise ValueError(f"--init {path} holds a {ckpt['arch']} model, not {arch}; fine-tune the same architecture")
    return ckpt["state_dict"], digest


def _diverged(what: str, epoch: int, epochs: int, step: int, ckpt_path: str, start: int):
    kept = (f"the checkpoint of epoch {epoch} ({ckpt_path}) is kept" if epoch > 0
            else "no epoch finished, so no checkpoint was written")
    raise TrainingDiverged(f"training stopped: {what} at epoch {epoch + 1}/{epochs}, step {step}; {kept}. "
                           f"Lower --lr, or change the loss's hyper-parameters (--loss-arg)")


def register_cli(sub) -> None:
    p = sub.add_parser("train", help="train a base classifier for randomized smoothing", formatter_class=HelpFormatter,
                       description="Train a base classifier under Gaussian noise (or a smoothing-aware loss). Writes "
                                   "OUT/checkpoint.pt after every epoch and OUT/log.jsonl; --resume continues.")
    p.add_argument("dataset", help="digits, breast_cancer, wine, imagenet:ROOT, cifar10:ROOT, mnist:ROOT, "
                                   "ham10000:ROOT, folder:ROOT or a .pt file (its train split)")
    p.add_argument("arch", help=f"architecture: one of {', '.join(sorted(ARCHS))}")
    p.add_argument("out", help="output directory (checkpoint.pt, log.jsonl)")
    p.add_argument("--loss", default="gaussian", choices=list(LOSSES), help="training objective")
    p.add_argument("--sigma", type=positive_float, default=0.25, help="training noise level")
    cohen = ", ".join(f"{k} {v}" for k, v in COHEN_RECIPE.items())
    p.epilog = (f"Defaults: imagenet: and cifar10: datasets train with Cohen et al.'s recipe ({cohen}; step: x0.1 every "
                f"30 epochs of 90) and their augmentation (random resized crop 224 or random crop 32 with padding "
                f"4, and horizontal flips); other datasets with "
                + ", ".join(f"{k} {v}" for k, v in DEFAULT_RECIPE.items()) + ".")
    p.add_argument("--epochs", type=positive_int, help="number of epochs (default: see below)")
    p.add_argument("--lr", type=positive_float, help="learning rate (default: see below)")
    p.add_argument("--batch", type=positive_int, help="inputs per optimisation step (default: see below)")
    p.add_argument("--optimizer", choices=["sgd", "adam"], help="optimiser (sgd with momentum 0.9; default sgd)")
    p.add_argument("--schedule", choices=["cosine", "step", "constant"],
                   help="learning-rate schedule (step: x0.1 every third of the run; default: see below)")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay (default: see below)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of initialisation, shuffling and noise")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--num-classes", type=positive_int,
                   help="model outputs (default: the dataset's classes; for a .pt file without class_names, the "
                        "largest label + 1)")
    p.add_argument("--split", default="train", choices=["train", "all"],
                   help="the part of DATASET to train on ('all' for folder:/.pt datasets without a split)")
    p.add_argument("--resume", action="store_true", help="continue the run in OUT (same settings required, except a larger --epochs: "
                        "the run is extended and the learning-rate schedule recomputed for the new length)")
    p.add_argument("--init", metavar="CHECKPOINT",
                   help="start from this checkpoint's weights (fine-tuning); its sha256 is recorded and checked on "
                        "--resume")
    p.add_argument("--mixup", type=positive_float, metavar="ALPHA",
                   help="same-class mixup before the loss (Zhong & Tandon 2024): each input mixed with one of its own "
                        "class in the batch, weight ~ Beta(ALPHA, ALPHA); works with every loss")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    p.add_argument("--loss-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="loss hyper-parameter, e.g. k=16, gamma=8, lam=12, eps=0.5, norm=linf (repeatable)")
    add_cost_args(p)
    add_model_args(p, arch=False, normalize=False)  # --trust-model-code (a --init file that is a pickled module)
    add_data_args(p)  # --workers --image-size --resize
    add_sound_args(p, "the model learns the law sound certification gives it")  # --sound --grid H

    def run(args):
        kwargs = {}
        for item in args.loss_arg:
            key, sep, value = item.partition("=")
            if not sep or not key or not value:
                raise UsageError(f"--loss-arg {item!r}: expected KEY=VALUE, e.g. lam=12 or norm=linf")
            try:
                kwargs[key] = int(value) if value.lstrip("-").isdigit() else float(value)
            except ValueError:
                kwargs[key] = value  # a name, e.g. norm=linf
        device = resolve_device(args.device)
        dataset = dataset_from_args(args)
        classes = args.num_classes or dataset.num_classes or int(dataset.labels.max()) + 1
        recipe = recipe_for(args.dataset)
        recipe.update({k: v for k, v in (("epochs", args.epochs), ("lr", args.lr), ("batch", args.batch),
                                         ("optimizer", args.optimizer), ("schedule", args.schedule),
                                         ("weight_decay", args.weight_decay)) if v is not None})
        path = train(dataset, args.arch, args.loss, args.sigma, args.out, cost=parse_cost(args, classes),
                     epochs=recipe["epochs"], lr=recipe["lr"], batch_size=recipe["batch"],
                     optimizer=recipe["optimizer"], weight_decay=recipe["weight_decay"], schedule=recipe["schedule"],
                     seed=args.seed, device=device, resume=args.resume, loss_kwargs=kwargs, progress=not args.quiet,
                     log=None if args.quiet else print, num_classes=classes, mixup=args.mixup, init=args.init,
                     trust_code=args.trust_model_code, workers=args.workers, sound=args.sound, grid=args.grid)
        print(f"wrote {path}")

    p.set_defaults(func=run)
