"""``costsmooth demo``: train Gaussian, Gaussian-R, MACER and CS-RS on an embedded dataset, certify the
test set with the standard and the cost-sensitive certificate, and compare (certified accuracy, Rob_std,
Rob_cs, worst-case cost, ACR: see ``costsmooth.metrics``)."""
from __future__ import annotations

import os
import time

from .args import HelpFormatter, resolve_device
from .cost import CostMatrix
from .data import load_dataset
from .models import load_model
from .analysis import analyze
from .runs import certify_dataset
from .train import train

__all__ = ["run_demo", "register_cli", "DEMO_SETTINGS", "readme_table"]

# Per dataset: architecture, noise level, cost matrix, training and certification settings.
# digits: seed class 8 (the class Gaussian training certifies worst, at sigma 0.25 and 0.5), every
# other class a target. breast_cancer: malignant (0) -> benign (1) is the harmful error.
# CS-RS fine-tunes the Gaussian model for FINE_TUNE_EPOCHS epochs with the cs_rs defaults (gamma1 = 16,
# gamma2 = 4, lambda1 = 6): it keeps the Gaussian model's accuracy where training from scratch (with the
# seed term from the first step) gives some of it away (docs/cs_rs.md).
DEMO_SETTINGS = {
    "digits": dict(arch="digits_cnn", sigma=0.25, cost=lambda: CostMatrix.seedwise(10, [8]), epochs=30,
                   quick_epochs=5, optimizer="adam", lr=0.001, batch=64, n0=64, n=2000, quick_n=256, alpha=0.001,
                   radii=[0.0, 0.125, 0.25, 0.375, 0.5], classwise_radius=0.25),
    "breast_cancer": dict(arch="mlp", sigma=0.25, cost=lambda: CostMatrix.pairwise(2, {0: [1]}), epochs=60,
                          quick_epochs=10, optimizer="adam", lr=0.001, batch=32, n0=64, n=2000, quick_n=256,
                          alpha=0.001, radii=[0.0, 0.125, 0.25, 0.375, 0.5], classwise_radius=0.25),
}
FINE_TUNE_EPOCHS = 10
# (name, loss, loss hyper-parameters, the method whose checkpoint starts the run or None)
METHODS = [("gaussian", "gaussian", {}, None), ("gaussian_r", "gaussian_r", {}, None), ("macer", "macer", {}, None),
           ("cs_rs", "cs_rs", {}, "gaussian")]
METHOD_NAMES = {"gaussian": "Gaussian", "gaussian_r": "Gaussian-R", "macer": "MACER", "cs_rs": "CS-RS"}
# The README's tables: digits, radii 0, 0.25, 0.375 with every metric; breast_cancer, one row per method.
README_RADII = {"digits": [0.0, 0.25, 0.375], "breast_cancer": [0.0, 0.25, 0.375, 0.5]}


def readme_table(rows: list, dataset: str) -> str:
    """The demo's summary rows (``run_demo``'s return) as the README's Markdown table."""
    def value(name, radius, key):
        row = next(r for r in rows if r["file"] == name and abs(r["radius"] - radius) < 1e-12)
        return f"{row[key]:.3f}"

    names = [m[0] for m in METHODS]
    radii = README_RADII[dataset]
    if dataset == "digits":
        out = ["| method | radius | cert_acc | Rob_std | Rob_cs | worst-case cost | ACR |", "|---|---|---|---|---|---|---|"]
        for name in names:
            for r in radii:
                acr = f" {value(name, r, 'acr')} |" if r == radii[0] else " |"  # the ACR once per method
                out.append(f"| {METHOD_NAMES[name]} | {r:g} | " + " | ".join(
                    value(name, r, k) for k in ("cert_acc", "rob_std", "rob_cs", "wc_cost")) + f" |{acr}")
        return "\n".join(out)
    out = ["| method | cert_acc r=0 | " + " | ".join(f"Rob_cs r={r:g}" for r in radii) + " |",
           "|---" * (len(radii) + 2) + "|"]
    for name in names:
        out.append(f"| {METHOD_NAMES[name]} | {value(name, 0.0, 'cert_acc')} | "
                   + " | ".join(value(name, r, "rob_cs") for r in radii) + " |")
    return "\n".join(out)


def run_demo(dataset: str = "digits", out: str = "demo_out", quick: bool = False, seed: int = 0, device="cpu",
             progress: bool = True) -> list:
    """Train, certify and compare; returns the summary rows. Resumable: finished pieces are reused.

    A quick run writes under ``out/quick`` so that it never mixes with the full run's results.
    """
    if dataset not in DEMO_SETTINGS:
        raise ValueError(f"unknown demo dataset {dataset!r}; choose one of {', '.join(DEMO_SETTINGS)}")
    s = DEMO_SETTINGS[dataset]
    if quick:  # a quick run's short schedule must never be resumed into the full one (and vice versa)
        out = os.path.join(out, "quick")
    cost = s["cost"]()
    train_set, test_set = load_dataset(dataset, "train"), load_dataset(dataset, "test")
    epochs = s["quick_epochs"] if quick else s["epochs"]
    n = s["quick_n"] if quick else s["n"]
    print(f"costsmooth demo on {dataset}: {len(train_set)} train / {len(test_set)} test inputs, sigma={s['sigma']}, "
          f"{cost}, epochs={epochs}, n0={s['n0']}, n={n}, alpha={s['alpha']}, seed={seed}", flush=True)
    paths = []
    for name, loss, kwargs, init in METHODS:
        t0 = time.perf_counter()
        run_dir = os.path.join(out, name)
        ckpt = train(train_set, s["arch"], loss, s["sigma"], run_dir, cost=cost,
                     epochs=epochs if init is None else min(epochs, FINE_TUNE_EPOCHS), lr=s["lr"],
                     optimizer=s["optimizer"], batch_size=s["batch"], seed=seed, device=device, resume=True,
                     loss_kwargs=kwargs, progress=progress,
                     init=None if init is None else os.path.join(out, init, "checkpoint.pt"))
        tsv = os.path.join(out, f"{name}.tsv")
        certify_dataset(load_model(ckpt), test_set, s["sigma"], tsv, n0=s["n0"], n=n, alpha=s["alpha"],
                        batch=max(4096, n), cost=cost, seed=seed, device=device, progress=progress,
                        meta_extra={"dataset": dataset, "model": ckpt, "split": "test"})
        print(f"  {name}: trained and certified in {time.perf_counter() - t0:.0f} s -> {tsv}", flush=True)
        paths.append(tsv)
    print()
    rows = analyze(paths, s["radii"], classwise_radius=s["classwise_radius"], plot=os.path.join(out, "curves.png"))
    print(f"\nThe README's table (./run.sh demo{' --quick' if quick else ''}"
          f"{'' if dataset == 'digits' else ' --dataset ' + dataset}):\n{readme_table(rows, dataset)}")
    return rows


def register_cli(sub) -> None:
    p = sub.add_parser("demo", help="train and certify four methods on an embedded dataset and compare them",
                       formatter_class=HelpFormatter,
                       description="Train Gaussian, Gaussian-R, MACER and CS-RS models on an embedded dataset, certify "
                                   "the test set with the standard and the cost-sensitive certificate, and compare.")
    p.add_argument("--dataset", default="digits", choices=sorted(DEMO_SETTINGS),
                   help="embedded dataset (digits: seed class 8; breast_cancer: malignant -> benign is harmful)")
    p.add_argument("--out", default="demo_out", help="output directory (re-running reuses finished results)")
    p.add_argument("--quick", action="store_true",
                   help="about a minute: 5 epochs and 256 samples, written under OUT/quick (a smoke test: MACER "
                        "and CS-RS have not converged after 5 epochs)")
    p.add_argument("--seed", type=int, default=0, help="seed of training and noise")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")

    def run(args):
        run_demo(args.dataset, args.out, args.quick, args.seed, resolve_device(args.device))

    p.set_defaults(func=run)
