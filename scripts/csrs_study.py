"""CS-RS training study (docs/cs_rs.md): what the cost-sensitive gain costs in accuracy, and the trade-off.

Cases (each a dataset, a cost matrix and a noise level):
  digits_s3  digits, seedwise, seed class 3 (every other class harmful), sigma 0.25
  digits_s8  digits, seedwise, seed class 8 (the demo's case), sigma 0.25
  digits_p3  digits, pairwise 3 -> {5, 8}, sigma 0.25
  wine_p0    the embedded wine data set (3 cultivars, 13 standardised features, 124 train / 54 test),
             pairwise 0 -> {2} (class 1 lies between them: leaving 0 for 1 is harmless), sigma 0.5
  wine_p01   wine, pairwise 0 -> {1}, sigma 0.5

Training: digits_cnn, Adam lr 0.001, batch 64, 30 epochs (digits); mlp, Adam lr 0.001, batch 32, 80
epochs (wine); cosine schedule; a method with ``init=gaussian`` fine-tunes that seed's Gaussian model
for 10 (digits) or 25 (wine) epochs, or its own ``epochs``. Certification of the test split: n0 = 64,
n = 1000, alpha = 0.001, noise seed 0 (each model is certified once; each case's cost-sensitive
certificates are recomputed from the saved counts of every class).

  compare: every method on every case and seed; writes OUT/compare_<case>.json and .md (mean and
           spread over seeds of cert_acc at r = 0 and 0.25, Rob_cs at 0.25 and 0.5, and the seed
           class's own certified accuracy at r = 0).
      PYTHONPATH=. .venv/bin/python scripts/csrs_study.py compare --out csrs_study --cases wine_p0,wine_p01 \
          --seeds 0,1,2 --methods gaussian,reference,default
  sweep:   one case, a grid over two knobs of one method (e.g. lambda1 and gamma1); writes
           OUT/sweep_<case>.md (every point, the Pareto-optimal ones marked) and the plot of Rob_cs
           against certified accuracy.
      PYTHONPATH=. .venv/bin/python scripts/csrs_study.py sweep --case wine_p0 --method reference_pairwise \\
          --knob lambda1=1,3,6,12 --knob2 gamma1=2,4,16 --plot docs/cs_rs_sweep_wine.png

Methods are given by name (METHODS) or ad hoc: ``--method LABEL=LOSS,key=value,...`` (keys: the loss's
hyper-parameters, plus ``init=gaussian`` and ``epochs=E``). Re-running reuses finished trainings and
certificates.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from costsmooth import metrics  # noqa: E402
from costsmooth.cost import CostMatrix  # noqa: E402
from costsmooth.data import load_digits, load_wine  # noqa: E402
from costsmooth.models import load_model  # noqa: E402
from costsmooth.results import load_records  # noqa: E402
from costsmooth.runs import certify_dataset, recertify  # noqa: E402
from costsmooth.train import train  # noqa: E402

N0, N, ALPHA = 64, 1000, 0.001


DIGITS = dict(data="digits", arch="digits_cnn", sigma=0.25, epochs=30, fine_tune_epochs=10, lr=0.001, batch=64)
CASES = {
    "digits_s3": dict(DIGITS, cost=lambda: CostMatrix.seedwise(10, [3])),
    "digits_s8": dict(DIGITS, cost=lambda: CostMatrix.seedwise(10, [8])),
    "digits_p3": dict(DIGITS, cost=lambda: CostMatrix.pairwise(10, {3: [5, 8]})),
    "wine_p0": dict(data="wine", arch="mlp", sigma=0.5, epochs=80, fine_tune_epochs=25, lr=0.001, batch=32,
                    cost=lambda: CostMatrix.pairwise(3, {0: [2]})),
    "wine_p01": dict(data="wine", arch="mlp", sigma=0.5, epochs=80, fine_tune_epochs=25, lr=0.001, batch=32,
                     cost=lambda: CostMatrix.pairwise(3, {0: [1]})),
}
LOADERS = {"digits": load_digits, "wine": load_wine}

# name -> (loss per cost kind, loss hyper-parameters, extra settings). "{kind}" is cs_rs for a seedwise
# cost and cs_rs_pairwise for a pairwise one.
METHODS = {
    "gaussian": ("gaussian", {}, {}),
    "reference": ("{kind}_reference", {}, {}),
    "demo_reference": ("{kind}_reference", {"lambda1": 6.0, "gamma2": 2.0}, {}),
    "default": ("{kind}", {}, {"init": "gaussian"}),  # fine-tunes the Gaussian model (the case's fine_tune_epochs)
    "default_scratch": ("{kind}", {}, {}),
}


def parse_method(spec: str):
    label, _, rest = spec.partition("=")
    loss, *items = rest.split(",")
    kwargs, extra = {}, {}
    for item in items:
        k, _, v = item.partition("=")
        value = int(v) if v.lstrip("-").isdigit() else (float(v) if _is_float(v) else v)
        (extra if k in ("init", "epochs") else kwargs)[k] = value
    return label, (loss, kwargs, extra)


def _is_float(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _kind(cost: CostMatrix) -> str:
    seedwise = all(len(cost.targets(y)) == cost.num_classes - 1 for y in cost.seed_classes)
    return "cs_rs" if seedwise else "cs_rs_pairwise"


def run_one(out: str, case: str, label: str, method, seed: int, methods: dict, log=print) -> dict:
    """Train (or reuse) and certify one (case, method, seed); returns its metrics."""
    c = CASES[case]
    loss, kwargs, extra = method
    cost = c["cost"]()
    loss = loss.format(kind=_kind(cost))
    train_set, test_set = LOADERS[c["data"]]("train"), LOADERS[c["data"]]("test")
    # a Gaussian model does not depend on the cost matrix: one per data set and seed
    model_dir = os.path.join(out, "models", c["data"] if loss == "gaussian" else case, f"{label}_s{seed}")
    init = None
    if "init" in extra:
        base = extra["init"]
        run_one(out, case, base, methods[base], seed, methods, log)
        init = os.path.join(out, "models", c["data"] if methods[base][0] == "gaussian" else case, f"{base}_s{seed}",
                            "checkpoint.pt")
    t0 = time.perf_counter()
    epochs = extra.get("epochs", c["fine_tune_epochs"] if init else c["epochs"])
    ckpt = train(train_set, c["arch"], loss, c["sigma"], model_dir, cost=None if loss == "gaussian" else cost,
                 epochs=epochs, lr=c["lr"], optimizer="adam", batch_size=c["batch"], seed=seed, resume=True,
                 loss_kwargs=kwargs, progress=False, init=init)
    t1 = time.perf_counter()
    tsv = os.path.join(out, case, f"{label}_s{seed}.tsv")
    os.makedirs(os.path.dirname(tsv), exist_ok=True)
    certified = os.path.join(model_dir, "certify.tsv")
    certify_dataset(load_model(ckpt), test_set, c["sigma"], certified, n0=N0, n=N, alpha=ALPHA, batch=4096,
                    cost=None, seed=0, progress=False, meta_extra={"dataset": c["data"], "model": ckpt, "split": "test"})
    if not os.path.exists(tsv):  # the saved counts (every class's) give the case's cost-sensitive certificates
        recertify(certified, tsv, cost=cost)
    rec = load_records(tsv)
    seeds = np.isin(rec.label, cost.seed_classes)
    with open(os.path.join(model_dir, "log.jsonl")) as f:
        last = json.loads(f.readlines()[-1])
    row = {"case": case, "method": label, "seed": seed, "loss": loss, **kwargs, **extra,
           "cert_acc_0": metrics.certified_accuracy(rec, 0.0), "cert_acc_25": metrics.certified_accuracy(rec, 0.25),
           "rob_cs_25": metrics.rob_cs(rec, 0.25), "rob_cs_50": metrics.rob_cs(rec, 0.5),
           "seed_acc_0": metrics.certified_accuracy(rec, 0.0, seeds),
           "train_noisy_acc": last.get("noisy_acc"), "train_s": round(t1 - t0, 1),
           "certify_s": round(time.perf_counter() - t1, 1)}
    log(json.dumps(row))
    return row


COLUMNS = [("cert_acc_0", "cert acc r=0"), ("cert_acc_25", "cert acc r=0.25"), ("rob_cs_25", "Rob_cs r=0.25"),
           ("rob_cs_50", "Rob_cs r=0.5"), ("seed_acc_0", "seed class cert acc r=0")]


def _mean_spread(values):
    v = np.array(values, dtype=float)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"  # one seed: no spread


def compare_table(rows, cases, labels) -> str:
    lines = []
    for case in cases:
        lines += [f"\n### {case}\n", "| method | " + " | ".join(h for _, h in COLUMNS) + " |",
                  "|---|" + "---|" * len(COLUMNS)]
        for label in labels:
            mine = [r for r in rows if r["case"] == case and r["method"] == label]
            if mine:
                lines.append(f"| {label} | " + " | ".join(_mean_spread([r[k] for r in mine]) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def pareto(points, key="rob_cs_25"):
    """Indices of the points not dominated in (cert_acc_0, key) (both larger is better)."""
    keep = []
    for i, p in enumerate(points):
        if not any(q["cert_acc_0"] >= p["cert_acc_0"] and q[key] >= p[key]
                   and (q["cert_acc_0"] > p["cert_acc_0"] or q[key] > p[key]) for q in points):
            keep.append(i)
    return keep


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["compare", "sweep"])
    ap.add_argument("--out", default="csrs_study")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--case", default="wine_p0", help="sweep: the case")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--methods", default="gaussian,reference,default", help="compare: method names")
    ap.add_argument("--method", action="append", default=[],
                    help="LABEL=LOSS,key=value,... (ad hoc method; in sweep mode the method swept)")
    ap.add_argument("--knob", help="sweep: NAME=v1,v2,... (a loss hyper-parameter)")
    ap.add_argument("--knob2", help="sweep: NAME=v1,v2,... (a second hyper-parameter, or epochs/init)")
    ap.add_argument("--plot", help="sweep: PNG of Rob_cs at --radius against certified accuracy at r = 0")
    ap.add_argument("--radius", choices=["0.25", "0.5"], default="0.25", help="sweep: the radius of Rob_cs in the "
                    "Pareto front and the plot")
    args = ap.parse_args()
    torch.set_num_threads(1)
    methods = dict(METHODS)
    for spec in args.method:
        label, m = parse_method(spec)
        methods[label] = m
    seeds = [int(s) for s in args.seeds.split(",")]
    os.makedirs(args.out, exist_ok=True)
    if args.mode == "compare":
        cases = args.cases.split(",")
        labels = args.methods.split(",") + [parse_method(s)[0] for s in args.method]
        rows = [run_one(args.out, case, label, methods[label], seed, methods)
                for case in cases for label in labels for seed in seeds]
        for case in cases:  # one file per case: compare runs of other cases do not overwrite it
            with open(os.path.join(args.out, f"compare_{case}.json"), "w") as f:
                json.dump([r for r in rows if r["case"] == case], f, indent=1)
            with open(os.path.join(args.out, f"compare_{case}.md"), "w") as f:
                f.write(compare_table(rows, [case], labels))
        table = compare_table(rows, cases, labels)
        print(table)
        return
    label, (loss, kwargs, extra) = parse_method(args.method[0]) if args.method else ("reference", METHODS["reference"])
    grid1 = [(args.knob.split("=")[0], v) for v in args.knob.split("=")[1].split(",")]
    grid2 = [(args.knob2.split("=")[0], v) for v in args.knob2.split("=")[1].split(",")] if args.knob2 else [(None, None)]
    rows = []
    for k1, v1 in grid1:
        for k2, v2 in grid2:
            spec = f"{label}_{k1}{v1}" + (f"_{k2}{v2}" if k2 else "")
            items = {**kwargs, **extra, k1: v1, **({k2: v2} if k2 else {})}
            _, m = parse_method(f"{spec}={loss}," + ",".join(f"{k}={v}" for k, v in items.items()))
            methods[spec] = m
            for seed in seeds:
                rows.append(run_one(args.out, args.case, spec, m, seed, methods))
    base = [run_one(args.out, args.case, "gaussian", METHODS["gaussian"], seed, methods) for seed in seeds]
    key = {"0.25": "rob_cs_25", "0.5": "rob_cs_50"}[args.radius]
    front = set(pareto(rows, key))
    knobs = [grid1[0][0]] + ([grid2[0][0]] if grid2[0][0] else [])
    lines = [f"| {' | '.join(knobs)} | seed | " + " | ".join(h for _, h in COLUMNS) + " | Pareto |",
             "|" + "---|" * (len(knobs) + len(COLUMNS) + 2)]
    for i, r in enumerate(rows + base):
        lines.append(f"| {' | '.join(str(r.get(k, '-')) for k in knobs)} | {r['seed']} | "
                     + " | ".join(f"{r[k]:.3f}" for k, _ in COLUMNS) + f" | {'yes' if i in front else ''} |")
    with open(os.path.join(args.out, f"sweep_{args.case}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out, f"sweep_{args.case}.json"), "w") as f:
        json.dump(rows + base, f, indent=1)
    print("\n".join(lines))
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4.5))
        xs, ys = [r["cert_acc_0"] for r in rows], [r[key] for r in rows]
        ax.scatter(xs, ys, c="tab:blue", label=f"{label} ({', '.join(knobs)})")
        names = {}  # points that coincide get one label listing them all
        for r in rows:
            names.setdefault((r["cert_acc_0"], r[key]), []).append(",".join(str(r.get(k)) for k in knobs))
        for xy, labels in names.items():
            ax.annotate("; ".join(labels), xy, fontsize=7)
        fr = sorted((rows[i] for i in front), key=lambda r: r["cert_acc_0"])
        ax.plot([r["cert_acc_0"] for r in fr], [r[key] for r in fr], "k--", lw=0.8, label="Pareto front")
        ax.scatter([r["cert_acc_0"] for r in base], [r[key] for r in base], c="tab:red", marker="x",
                   label="gaussian")
        ax.set_xlabel("certified accuracy at r = 0 (all test inputs)")
        ax.set_ylabel(f"Rob_cs at r = {args.radius} (seed-class inputs)")
        ax.set_title(f"{args.case}: CS-RS trade-off")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
