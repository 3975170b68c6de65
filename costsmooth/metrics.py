"""Metrics of certification results at a radius r, overall and class-wise: certified accuracy, Rob_std,
Rob_cs, certified worst-case cost and ACR (definitions at each function).

- certified accuracy: prediction == label and radius >= r (an abstention counts as wrong).
- Rob_std: certified accuracy over inputs of seed classes.
- Rob_cs: over seed-class inputs, the fraction whose top class is not a target and cs_radius >= r
  (cs_radius > 0: a cost-sensitive certificate was obtained).
- certified worst-case cost: over seed-class inputs, the mean of max{C[y, j] : j in Omega_y not
  certified away at r} (0 when every target is certified away). A target j is certified away at r
  when its radius R_j > 0 and R_j >= r.
- ACR: mean certified radius over correctly certified inputs (0 for the rest), over all inputs.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from .results import Records

__all__ = ["certified_accuracy", "rob_std", "rob_cs", "worst_case_cost", "acr", "summary", "spread", "classwise",
           "format_table"]


def _mean(mask: np.ndarray, where: np.ndarray) -> float:
    return float(mask[where].mean()) if where.any() else float("nan")


def _all(rec: Records) -> np.ndarray:
    return np.ones(len(rec), dtype=bool)


def _seed(rec: Records) -> np.ndarray:
    if rec.cost is None:
        return np.zeros(len(rec), dtype=bool)
    seeds = rec.cost.seed_classes
    return np.isin(rec.label, seeds)


def certified_accuracy(rec: Records, r: float, where=None) -> float:
    where = _all(rec) if where is None else where
    return _mean((rec.predict == rec.label) & (rec.radius >= r), where)


def rob_std(rec: Records, r: float) -> float:
    return certified_accuracy(rec, r, _seed(rec))


def _cs_ok(rec: Records, r: float) -> np.ndarray:
    cs = np.nan_to_num(rec.cs_radius, nan=0.0)
    return (cs > 0) & (cs >= r)


def rob_cs(rec: Records, r: float, where=None) -> float:
    where = _seed(rec) if where is None else where & _seed(rec)
    return _mean(_cs_ok(rec, r), where)


def _costs(rec: Records, r: float, reduce) -> np.ndarray:
    out = np.zeros(len(rec))
    if rec.cost is None:
        return out
    for i, (y, radii) in enumerate(zip(rec.label, rec.target_radii)):
        exposed = [rec.cost.matrix[y, j] for j in rec.cost.targets(int(y))
                   if not (radii.get(j, 0.0) > 0 and radii.get(j, 0.0) >= r)]
        out[i] = reduce(exposed) if exposed else 0.0
    return out


def worst_case_cost(rec: Records, r: float, where=None, variant: str = "max") -> float:
    """Certified worst-case cost; ``variant="sum"`` is Zhang & Evans' (ICLR 2019) summed cost."""
    if variant not in ("max", "sum"):
        raise ValueError(f"variant must be 'max' or 'sum' (Zhang & Evans), got {variant!r}")
    where = _seed(rec) if where is None else where & _seed(rec)
    return _mean(_costs(rec, r, max if variant == "max" else sum), where)


def acr(rec: Records, where=None) -> float:
    where = _all(rec) if where is None else where
    return _mean(np.where(rec.predict == rec.label, rec.radius, 0.0), where)


def summary(rec: Records, radii: Sequence[float]) -> List[Dict[str, float]]:
    """One row per radius: certified accuracy, Rob_std, Rob_cs, worst-case cost (and ACR in each row)."""
    return [{"radius": r, "cert_acc": certified_accuracy(rec, r), "rob_std": rob_std(rec, r),
             "rob_cs": rob_cs(rec, r), "wc_cost": worst_case_cost(rec, r), "acr": acr(rec)} for r in radii]


def spread(by_class, worst: str = "min") -> Dict[str, object]:
    """Spread of a per-class metric ``{class: value}`` (NaN entries ignored): the worst class and its
    value (``worst="min"`` for accuracies, ``"max"`` for errors; the first class on ties), the best
    value, the max-min gap, the population standard deviation over classes and the mean."""
    items = [(k, float(v)) for k, v in by_class.items() if not np.isnan(float(v))]
    if not items:
        return {"worst_class": None, "worst": float("nan"), "best": float("nan"), "gap": float("nan"),
                "std": float("nan"), "mean": float("nan")}
    values = np.array([v for _, v in items])
    pick, other = (np.argmin, values.max) if worst == "min" else (np.argmax, values.min)
    k = int(pick(values))
    return {"worst_class": items[k][0], "worst": float(values[k]), "best": float(other()),
            "gap": float(values.max() - values.min()), "std": float(values.std()), "mean": float(values.mean())}


def classwise(rec: Records, r: float, class_names=None) -> Dict[str, object]:
    """Per-class metrics at radius r: certified accuracy, ACR, and for seed classes Rob_cs and the
    worst-case cost (a seed class's Rob_std is its certified accuracy). ``spread`` gives, for certified
    accuracy and ACR, the worst class, its value, the max-min gap and the standard deviation over
    classes; the top-level worst_class/worst/gap/std repeat it for certified accuracy."""
    seeds = _seed_classes(rec)
    per = []
    for c in np.unique(rec.label):
        where = rec.label == c
        is_seed = c in seeds
        per.append({"class": class_names[c] if class_names else int(c), "count": int(where.sum()),
                    "cert_acc": certified_accuracy(rec, r, where), "acr": acr(rec, where),
                    "rob_cs": rob_cs(rec, r, where) if is_seed else float("nan"),
                    "wc_cost": worst_case_cost(rec, r, where) if is_seed else float("nan")})
    spreads = {}
    for key in ("cert_acc", "acr"):
        s = spread({p["class"]: p[key] for p in per}, worst="min")
        spreads[key] = {k: s[k] for k in ("worst_class", "worst", "gap", "std")}
    return {"radius": r, "classes": per, "spread": spreads, **spreads["cert_acc"]}


def _seed_classes(rec: Records):
    return set(rec.cost.seed_classes) if rec.cost is not None else set()


def _fmt(v) -> str:
    if isinstance(v, float):
        return "-" if np.isnan(v) else f"{v:.3f}"
    return str(v)


def format_table(rows: List[Dict[str, object]], columns: Sequence[str], headers: Sequence[str] = None) -> str:
    """A plain-text table (also valid Markdown)."""
    headers = list(headers or columns)
    cells = [[_fmt(row[c]) for c in columns] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths)) + " |"
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells])
