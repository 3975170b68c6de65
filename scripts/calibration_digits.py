"""Certified calibration on digits (docs/calibration.md): attacks on a Gaussian-trained model, ACT
fine-tuning against its starting model, and certified-ECE solver times against N.

    PYTHONPATH=. .venv/bin/python scripts/calibration_digits.py [--out calibration_out] [--quick]

Trains (or reuses) digits_cnn with Gaussian augmentation at sigma 0.25, fine-tunes it with act_brier,
act_ece and (as a control) plain Gaussian augmentation for the same epochs, certifies the 540 test
images (n0 = 64, n = 2000, alpha = 0.001 per input, Hoeffding interval) and prints the tables. One thread.
The tables use per-input intervals (``joint=False``), as in docs/calibration.md: as dataset-level bounds
over the 540 inputs their CBS and CECE hold at 1 - 540 * alpha; the library's default is 1 - alpha jointly.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from costsmooth import calibration as cal
from costsmooth.data import load_digits
from costsmooth.losses import NoiseSource
from costsmooth.models import load_model
from costsmooth.train import train

SIGMA = 0.25
EPS = [0.0, 0.125, 0.25, 0.5]


def _train_all(out: str, epochs: int, tune_epochs: int):
    data = load_digits("train")
    common = dict(optimizer="adam", batch_size=64, seed=0, progress=False)
    paths = {"gaussian": os.path.join(out, "gaussian", "checkpoint.pt")}
    if not os.path.isfile(paths["gaussian"]):
        train(data, "digits_cnn", "gaussian", SIGMA, os.path.dirname(paths["gaussian"]), epochs=epochs, lr=1e-3,
              **common)
    tune = {"gaussian (fine-tuned)": ("gaussian", {}),
            "act_brier": ("act_brier", {"eps": 0.25, "steps": 4, "m": 4, "lam": 1.0}),
            "act_ece": ("act_ece", {"eps": 0.25, "steps": 4, "m": 4, "lam": 1.0})}
    for name, (loss, kwargs) in tune.items():
        folder = os.path.join(out, name.split()[0] + ("_ft" if "fine" in name else ""))
        paths[name] = os.path.join(folder, "checkpoint.pt")
        if not os.path.isfile(paths[name]):
            t0 = time.perf_counter()
            train(data, "digits_cnn", loss, SIGMA, folder, epochs=tune_epochs, lr=2e-4, init=paths["gaussian"],
                  loss_kwargs=kwargs, **common)
            print(f"fine-tuned {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    return paths


def _tables(paths, test, n0: int, n: int):
    out = {}
    for name, path in paths.items():
        model = load_model(path)
        t0 = time.perf_counter()
        conf, *_ = cal.sample_confidences(model, test.inputs, test.labels, SIGMA, n0=n0, n=n, alpha=0.001, seed=0, joint=False)
        rows = cal.calibration_table(conf, EPS)
        out[name] = {"conf": conf, "rows": rows, "seconds": time.perf_counter() - t0}
        print(f"\n{name} ({time.perf_counter() - t0:.0f} s)\n{cal.format_table(rows)}", flush=True)
    return out


def _attacks(path, test, n: int):
    """ECE of the base model and of the smoothed model, clean and under (eta, omega)-ACE, at fixed predictions."""
    model = load_model(path)
    x, y = test.inputs, test.labels
    rows = []
    with torch.no_grad():
        p = model(x).softmax(1)
    pred = p.argmax(1)
    correct = (pred == y).numpy()
    clean = p.max(1).values.numpy()
    rows.append({"model": "base", "attack": "none", "eps": 0.0, "inputs": len(y), "ece": cal.expected_calibration_error(clean, correct),
                 "brier": cal.brier_score(clean, correct), "mean_conf": float(clean.mean())})
    for norm, eps in (("l2", 0.25), ("l2", 0.5), ("linf", 0.05)):
        for eta in ("ece", "down", "up"):
            adv = cal.ace_attack(model, x, y, eps=eps, eta=eta, norm=norm, steps=20)
            with torch.no_grad():
                pa = model(adv).softmax(1)
            assert torch.equal(pa.argmax(1), pred)
            z = pa.gather(1, pred[:, None]).squeeze(1).numpy()
            rows.append({"model": "base", "attack": f"ACE eta={eta} {norm}", "eps": eps, "inputs": len(y),
                         "ece": cal.expected_calibration_error(z, correct), "brier": cal.brier_score(z, correct),
                         "mean_conf": float(z.mean())})
    # smoothed: attack with 32 fixed noise draws per input, evaluate with the engine (fresh noise, n samples)
    noise = NoiseSource(seed=123).noise(x, 32, SIGMA)
    conf0, *_ = cal.sample_confidences(model, x, y, SIGMA, n0=64, n=n, alpha=0.001, seed=0, joint=False)
    ok0 = conf0.prediction != -1
    rows.append({"model": "smoothed", "attack": "none", "eps": 0.0, "inputs": int(ok0.sum()),
                 "ece": cal.expected_calibration_error(conf0.confidence[ok0], conf0.correct[ok0]),
                 "brier": cal.brier_score(conf0.confidence[ok0], conf0.correct[ok0]),
                 "mean_conf": float(conf0.confidence[ok0].mean())})
    for eps in (0.25, 0.5):
        for eta in ("ece", "down"):
            adv = torch.cat([cal.ace_attack(model, x[i:i + 60], y[i:i + 60], eps=eps, eta=eta, steps=10,
                                            noise=noise[i * 32:(i + 60) * 32]) for i in range(0, len(y), 60)])
            conf1, *_ = cal.sample_confidences(model, adv, y, SIGMA, n0=64, n=n, alpha=0.001, seed=0, joint=False)
            same = ok0 & (conf1.prediction == conf0.prediction)  # prediction held fixed (engine, both points)
            rows.append({"model": "smoothed", "attack": f"ACE eta={eta} l2", "eps": eps, "inputs": int(same.sum()),
                         "ece": cal.expected_calibration_error(conf1.confidence[same], conf1.correct[same]),
                         "ece_clean_same": cal.expected_calibration_error(conf0.confidence[same], conf0.correct[same]),
                         "brier": cal.brier_score(conf1.confidence[same], conf1.correct[same]),
                         "mean_conf": float(conf1.confidence[same].mean())})
    for r in rows:
        extra = f"  (clean on the same inputs {r['ece_clean_same']:.4f})" if "ece_clean_same" in r else ""
        print(f"{r['model']:9s} {r['attack']:22s} eps={r['eps']:<5g} inputs={r['inputs']:3d} ECE={r['ece']:.4f} "
              f"Brier={r['brier']:.4f} mean conf={r['mean_conf']:.4f}{extra}", flush=True)
    return rows


def paper_milp(lo, up, c, n_bins: int = 10, time_limit: float = 300.0):
    """CECE by the MILP as the paper writes it (for comparison): bin assignments a[n, m], w[n, m] = a z in
    [a lo_nm, a up_nm], |S_m| by a sign binary b_m with big-M 2 N_m. Returns (value, optimal)."""
    import scipy.sparse as sp
    from scipy.optimize import Bounds, LinearConstraint, milp

    p = cal.bounds._Problem(lo, up, c, n_bins)
    n_idx, m_idx = np.nonzero(p.allowed)
    K, M, N = n_idx.size, p.M, p.N
    big = 2.0 * np.maximum(np.bincount(m_idx, minlength=M), 1)
    # variables: a [K], w [K], b [M], t [M]
    A = sp.lil_matrix((N + 2 * K + 2 * M, 2 * K + 2 * M))
    lb, ub = [], []
    for k in range(K):
        A[n_idx[k], k] = 1
    lb += [1] * N
    ub += [1] * N
    for k in range(K):  # w - lo a >= 0, w - up a <= 0
        A[N + k, K + k], A[N + k, k] = 1, -p.lo_nm[n_idx[k], m_idx[k]]
        A[N + K + k, K + k], A[N + K + k, k] = 1, -p.up_nm[n_idx[k], m_idx[k]]
    lb += [0] * K + [-np.inf] * K
    ub += [np.inf] * K + [0] * K
    r = N + 2 * K
    for m in range(M):  # t - s - big (1 - b) <= 0 and t + s - big b <= 0, s = sum (c a - w)
        ks = np.nonzero(m_idx == m)[0]
        for k in ks:
            A[r + m, k], A[r + m, K + k] = -p.c[n_idx[k]], 1
            A[r + M + m, k], A[r + M + m, K + k] = p.c[n_idx[k]], -1
        A[r + m, 2 * K + M + m], A[r + m, 2 * K + m] = 1, big[m]
        A[r + M + m, 2 * K + M + m], A[r + M + m, 2 * K + m] = 1, -big[m]
    lb += [-np.inf] * (2 * M)
    ub += list(big) + [0] * M
    cost = np.concatenate([np.zeros(2 * K + M), -np.ones(M) / N])
    integrality = np.concatenate([np.ones(K), np.zeros(K), np.ones(M), np.zeros(M)])
    upper = np.concatenate([np.ones(K), np.ones(K), np.ones(M), np.full(M, np.inf)])
    res = milp(cost, constraints=LinearConstraint(A.tocsr(), lb, ub), integrality=integrality,
               bounds=Bounds(np.zeros(2 * K + 2 * M), upper), options={"mip_rel_gap": 0.0, "time_limit": time_limit})
    return (-res.fun if res.x is not None else float("nan")), res.status == 0


def _timing(conf):
    """Solver seconds against N on boxes of the Gaussian model at eps = 0.25 (resampled with replacement)."""
    mask, lo, up, c, _ = conf.box(0.25)
    rng = np.random.default_rng(0)
    rows = []
    for n in (10, 50, 100, 200, 500, 1000, 2000):
        k = rng.integers(0, lo.size, n)
        row = {"N": n}
        t0 = time.perf_counter()
        row["paper_milp_value"], row["paper_milp_optimal"] = paper_milp(lo[k], up[k], c[k])
        row["paper_milp"] = time.perf_counter() - t0
        for method in ("milp", "signs", "admm"):
            t0 = time.perf_counter()
            res = cal.certified_ece(lo[k], up[k], c[k], method=method, time_limit=300)
            row[method] = time.perf_counter() - t0
            row[method + "_value"] = res.value
            row[method + "_exact"] = res.exact
        rows.append(row)
        print(f"N={n:5d}  milp {row['milp']:.3f} s ({row['milp_value']:.4f})  signs {row['signs']:.3f} s "
              f"({row['signs_value']:.4f})  admm {row['admm']:.3f} s ({row['admm_value']:.4f}, lower)  paper-form "
              f"milp {row['paper_milp']:.3f} s ({row['paper_milp_value']:.4f}, "
              f"{'optimal' if row['paper_milp_optimal'] else 'stopped'})", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="calibration_out")
    ap.add_argument("--quick", action="store_true", help="3 + 1 epochs, n = 256 (smoke test)")
    ap.add_argument("--plot", default="docs/calibration_digits.png")
    ap.add_argument("--timing-only", action="store_true", help="only the solver times (reuses trained models)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    epochs, tune, n = (3, 1, 256) if args.quick else (30, 10, 2000)
    out = os.path.join(args.out, "quick") if args.quick else args.out
    paths = _train_all(out, epochs, tune)
    test = load_digits("test")
    if args.timing_only:
        conf, *_ = cal.sample_confidences(load_model(paths["gaussian"]), test.inputs, test.labels, SIGMA, n0=64, n=n,
                                          alpha=0.001, seed=0, joint=False)
        _timing(conf)
        return
    print("\n== attacks on the Gaussian-trained model ==", flush=True)
    attacks = _attacks(paths["gaussian"], test, n)
    print("\n== certified calibration (n0=64, n=%d, alpha=0.001 per input, Hoeffding) ==" % n, flush=True)
    tables = _tables(paths, test, 64, n)
    print("\n== certified-ECE solvers against N (boxes of the Gaussian model at eps=0.25) ==", flush=True)
    timing = _timing(tables["gaussian"]["conf"])
    rows = []
    for name, t in tables.items():
        for r in t["rows"]:
            rows.append({"model": name, **{k: v for k, v in r.items() if not k.startswith("_")}})
    with open(os.path.join(out, "calibration_digits.json"), "w") as f:
        json.dump({"attacks": attacks, "tables": rows, "timing": timing, "n": n, "epochs": epochs, "tune_epochs": tune},
                  f, indent=1)
    if not args.quick:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from costsmooth.calibration.report import _reliability
        names = ["gaussian", "act_brier"]
        fig, axes = plt.subplots(1, 4, figsize=(12.8, 3.4))
        for k, name in enumerate(names):
            rows_m = tables[name]["rows"]
            z, c, z_hat = rows_m[0]["_worst"]
            _reliability(axes[2 * k], z_hat, c, 10, f"{name}: clean, ECE {rows_m[0]['ece']:.3f}")
            r = next(r for r in rows_m if r["eps"] == 0.25)
            _reliability(axes[2 * k + 1], r["_worst"][0], r["_worst"][1], 10,
                         f"{name}: certified worst case eps=0.25\nCECE {r['cece']:.3f} (exact)")
        axes[0].set_ylabel("accuracy")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
