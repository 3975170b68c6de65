"""Training of base classifiers for smoothing: ``train()`` and the ``costsmooth train`` command.

Deterministic on CPU for a given seed: the shuffling of each epoch comes from a generator seeded by
(seed, epoch) and the noise from the loss's counter-based ``NoiseSource``; a checkpoint is written
after every epoch (model, optimizer, scheduler, loss state), so ``resume=True`` continues to the same
weights as an uninterrupted run.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from .cost import CostMatrix
from .data import Dataset
from .losses import make_loss
from .models import build_model, save_checkpoint

__all__ = ["train", "register_cli"]


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


def train(dataset: Dataset, arch: str, loss: str, sigma: float, out_dir: str, *, cost: Optional[CostMatrix] = None,
          epochs: int = 30, lr: float = 0.01, batch_size: int = 64, optimizer: str = "sgd", momentum: float = 0.9,
          weight_decay: float = 5e-4, schedule: str = "cosine", seed: int = 0, device="cpu", resume: bool = False,
          loss_kwargs: Optional[dict] = None, eps_warmup: int = 10, progress: bool = True,
          stop_after: Optional[int] = None) -> str:
    """Train ``arch`` on ``dataset`` with the named loss; returns the path of the final checkpoint.

    Writes ``out_dir/checkpoint.pt`` after every epoch (Cohen et al.'s ``{"arch", "state_dict"}`` plus
    optimizer, scheduler, loss state and epoch) and ``out_dir/log.jsonl`` (one line per epoch).
    For SmoothAdv, eps ramps linearly over the first ``eps_warmup`` epochs. ``stop_after`` ends this
    call after that epoch (the schedule still targets ``epochs``): a run can be split into pieces,
    e.g. to fit time-limited job slots, and continued with ``resume=True``.
    """
    from tqdm import tqdm

    if cost is not None:
        cost.check_num_classes(dataset.num_classes, f"the dataset {dataset.name}")
    if dataset.labels.numel() and (int(dataset.labels.min()) < 0 or int(dataset.labels.max()) >= dataset.num_classes):
        raise ValueError(f"labels of {dataset.name} must lie in [0, {dataset.num_classes})")
    device = torch.device(device)
    os.makedirs(out_dir, exist_ok=True)
    ckpt_path = os.path.join(out_dir, "checkpoint.pt")
    torch.manual_seed(seed)
    model = build_model(arch, dataset.num_classes, dataset.input_shape, dataset.mean, dataset.std).to(device)
    objective = make_loss(loss, sigma, cost, seed=seed, **(loss_kwargs or {}))
    opt = _optimizer(model, lr, momentum, weight_decay, optimizer)
    sched = _scheduler(opt, schedule, epochs)
    start = 0
    if resume and os.path.isfile(ckpt_path):
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        if state.get("arch") != arch or state.get("loss") != loss:
            raise ValueError(f"{ckpt_path} is a {state.get('arch')}/{state.get('loss')} run, not {arch}/{loss}; "
                             f"use another --out")
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        objective.load_state_dict(state["loss_state"])
        start = state["epoch"]
    target_eps = getattr(objective, "eps", None)
    x_all, y_all = dataset.inputs, dataset.labels
    log_path = os.path.join(out_dir, "log.jsonl")
    last = epochs if stop_after is None else min(epochs, stop_after)
    for epoch in range(start, last):
        if target_eps is not None:
            objective.eps = target_eps * min(1.0, (epoch + 1) / max(eps_warmup, 1))
        model.train()
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        totals, batches = {}, 0
        bar = tqdm(range(0, len(order), batch_size), desc=f"{loss} epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not progress, dynamic_ncols=True)
        for b0 in bar:
            idx = order[b0:b0 + batch_size]
            value, diag = objective(model, x_all[idx].to(device), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            diag["loss"] = float(value.detach())
            for k, v in diag.items():
                totals[k] = totals.get(k, 0.0) + v
            batches += 1
        sched.step()
        record = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], **{k: v / max(batches, 1) for k, v in totals.items()}}
        save_checkpoint(ckpt_path, model, arch, dataset.num_classes, dataset.input_shape, optimizer=opt.state_dict(),
                        scheduler=sched.state_dict(), loss_state=objective.state_dict(), epoch=epoch + 1, loss=loss,
                        sigma=sigma.describe() if hasattr(sigma, "describe") else sigma,  # sigma function: settings
                        seed=seed, cost=cost.to_json() if cost is not None else None)
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
    return ckpt_path


def register_cli(sub) -> None:
    from .args import add_cost_args, parse_cost, resolve_device
    from .data import load_dataset
    from .losses import LOSSES
    from .models import ARCHS

    p = sub.add_parser("train", help="train a base classifier for randomized smoothing")
    p.add_argument("dataset", help="digits, breast_cancer, cifar10:ROOT, mnist:ROOT, ham10000:ROOT, folder:ROOT or .pt")
    p.add_argument("arch", help=f"one of {', '.join(sorted(ARCHS))}")
    p.add_argument("out", help="output directory (checkpoint.pt, log.jsonl)")
    p.add_argument("--loss", default="gaussian", help=f"one of {', '.join(LOSSES)}")
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--schedule", default="cosine", choices=["cosine", "step", "constant"])
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--loss-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="loss hyper-parameter, e.g. k=16, gamma=8, lam=12, eps=0.5 (repeatable)")
    add_cost_args(p)

    def run(args):
        dataset = load_dataset(args.dataset, split="train")
        kwargs = {}
        for item in args.loss_arg:
            key, _, value = item.partition("=")
            kwargs[key] = int(value) if value.lstrip("-").isdigit() else float(value)
        path = train(dataset, args.arch, args.loss, args.sigma, args.out, cost=parse_cost(args, dataset.num_classes),
                     epochs=args.epochs, lr=args.lr, batch_size=args.batch, optimizer=args.optimizer,
                     weight_decay=args.weight_decay, schedule=args.schedule, seed=args.seed,
                     device=resolve_device(args.device), resume=args.resume, loss_kwargs=kwargs)
        print(f"wrote {path}")

    p.set_defaults(func=run)
