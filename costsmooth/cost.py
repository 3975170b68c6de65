"""Cost matrices for cost-sensitive robustness: ``C[y, j] > 0`` means an input of class y predicted as j is
harmful; seed classes are the rows with a positive entry, their target sets the j with ``C[y, j] > 0``.

``C[y, j] > 0`` means "an input of class y predicted as class j is harmful". Seed classes are the
rows with a non-zero entry; the target set of class y is ``Omega_y = {j : C[y, j] > 0}``.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["CostMatrix"]


class CostMatrix:
    """A validated square cost matrix: finite, non-negative, zero diagonal.

    Build one from an array, with ``CostMatrix.seedwise`` / ``CostMatrix.pairwise``, or from a file
    (``CostMatrix.from_file``: CSV, JSON or .npy).
    """

    def __init__(self, matrix, class_names: Optional[Sequence[str]] = None):
        m = np.array(matrix, dtype=np.float64)
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"cost matrix must be square (num_classes x num_classes), got shape {m.shape}")
        if m.shape[0] < 2:
            raise ValueError(f"cost matrix needs at least 2 classes, got {m.shape[0]}")
        if not np.all(np.isfinite(m)):
            bad = np.argwhere(~np.isfinite(m))[0]
            raise ValueError(f"cost matrix must be finite, got {m[tuple(bad)]} at row {bad[0]}, column {bad[1]}")
        if np.any(m < 0):
            bad = np.argwhere(m < 0)[0]
            raise ValueError(f"cost matrix must be non-negative, got {m[tuple(bad)]} at row {bad[0]}, "
                             f"column {bad[1]}")
        if np.any(np.diag(m) != 0):
            bad = int(np.flatnonzero(np.diag(m))[0])
            raise ValueError(f"cost matrix must have a zero diagonal (a correct prediction costs nothing), "
                             f"got {m[bad, bad]} at ({bad}, {bad})")
        if not np.any(m > 0):
            raise ValueError("cost matrix has no positive entry, so no class is a seed class: set C[y, j] > 0 "
                             "where predicting class j for an input of class y is harmful")
        if class_names is not None and len(class_names) != m.shape[0]:
            raise ValueError(f"{len(class_names)} class names for a {m.shape[0]}-class cost matrix")
        self.matrix = m
        self.matrix.setflags(write=False)
        self.class_names = list(class_names) if class_names is not None else None

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def seedwise(cls, num_classes: int, seed_classes: Iterable[int], **kw) -> "CostMatrix":
        """Each seed class y is harmed by every other class: ``C[y, j] = 1`` for all j != y."""
        m = np.zeros((num_classes, num_classes))
        for y in seed_classes:
            _check_class(y, num_classes, "seed class")
            m[y] = 1.0
            m[y, y] = 0.0
        return cls(m, **kw)

    @classmethod
    def pairwise(cls, num_classes: int, pairs: Mapping[int, Iterable[int]], **kw) -> "CostMatrix":
        """``C[y, j] = 1`` for each seed class y and each of its listed targets j."""
        m = np.zeros((num_classes, num_classes))
        for y, targets in pairs.items():
            _check_class(int(y), num_classes, "seed class")
            for j in targets:
                _check_class(j, num_classes, "target class")
                if int(j) == int(y):
                    raise ValueError(f"class {y} cannot be its own target (the diagonal must be zero)")
                m[int(y), j] = 1.0
        return cls(m, **kw)

    @classmethod
    def from_file(cls, path: str, num_classes: Optional[int] = None) -> "CostMatrix":
        """Read a cost matrix from CSV (rows of numbers), .npy, or JSON.

        JSON holds a matrix (list of rows) or ``{"num_classes": m, "seed_classes": [...]}`` or
        ``{"num_classes": m, "pairs": {"3": [5, 2]}}``, optionally with ``"class_names"``.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"cost matrix file not found: {path}")
        ext = os.path.splitext(path)[1].lower()
        try:
            if ext == ".npy":
                content = np.load(path, allow_pickle=False)
            elif ext == ".json":
                with open(path) as f:
                    content = json.load(f)
            else:
                content = np.loadtxt(path, delimiter=",", ndmin=2)
        except (ValueError, json.JSONDecodeError) as err:
            # numpy's advice for rows of different lengths (``usecols``) does not apply to a cost matrix.
            reason = str(err).split("; use `usecols`")[0].rstrip(".")
            raise ValueError(f"cannot read cost matrix from {path}: {reason}. Expected a square CSV of numbers, "
                             f"a .npy array, or JSON (a list of rows, or {{'num_classes', 'seed_classes'}} or "
                             f"{{'num_classes', 'pairs'}})") from err
        try:
            cost = cls.from_json(content) if ext == ".json" else cls(content)
            if num_classes is not None:
                cost.check_num_classes(num_classes)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
        return cost

    @classmethod
    def from_json(cls, obj) -> "CostMatrix":
        if isinstance(obj, list):
            return cls(obj)
        if not isinstance(obj, dict):
            raise ValueError("JSON cost matrix must be a list of rows or an object")
        names = obj.get("class_names")
        if "matrix" in obj:
            return cls(obj["matrix"], class_names=names)
        if "num_classes" not in obj:
            raise ValueError("JSON cost matrix object needs 'matrix', or 'num_classes' with 'seed_classes' or 'pairs'")
        seeds, pairs = obj.get("seed_classes"), obj.get("pairs")
        if seeds is not None and not isinstance(seeds, list):
            raise ValueError(f"JSON 'seed_classes' must be a list of class indices, e.g. [3, 5], got {seeds!r}")
        if pairs is not None and not (isinstance(pairs, dict) and all(
                isinstance(k, str) and k.strip().isdigit() and isinstance(v, list) for k, v in pairs.items())):
            raise ValueError(f"JSON 'pairs' must map each seed class to a list of its targets, e.g. "
                             f"{{\"3\": [5, 2]}}, got {pairs!r}")
        if seeds is not None:
            return cls.seedwise(int(obj["num_classes"]), seeds, class_names=names)
        if pairs is not None:
            return cls.pairwise(int(obj["num_classes"]), {int(k): v for k, v in pairs.items()}, class_names=names)
        raise ValueError("JSON cost matrix object needs 'seed_classes' or 'pairs' beside 'num_classes'")

    def to_json(self) -> Dict:
        out = {"matrix": self.matrix.tolist()}
        if self.class_names is not None:
            out["class_names"] = self.class_names
        return out

    # -- queries --------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return self.matrix.shape[0]

    @property
    def seed_classes(self) -> List[int]:
        return [int(y) for y in np.flatnonzero(self.matrix.sum(axis=1) > 0)]

    @property
    def is_binary(self) -> bool:
        return bool(np.all((self.matrix == 0) | (self.matrix == 1)))

    def targets(self, y: int) -> List[int]:
        """Omega_y: the classes j with ``C[y, j] > 0`` (empty for a non-seed class)."""
        _check_class(y, self.num_classes, "label")
        return [int(j) for j in np.flatnonzero(self.matrix[y] > 0)]

    def is_seed(self, y: int) -> bool:
        return bool(self.targets(y))

    def check_num_classes(self, num_classes: int, where: str = "the model") -> None:
        if num_classes != self.num_classes:
            raise ValueError(f"cost matrix must be {num_classes}x{num_classes} for {where} with {num_classes} "
                             f"classes, got {self.num_classes}x{self.num_classes}: give one row and one column "
                             f"per class, in class order")

    def __eq__(self, other) -> bool:
        return isinstance(other, CostMatrix) and np.array_equal(self.matrix, other.matrix)

    def __repr__(self) -> str:
        name = (lambda c: self.class_names[c]) if self.class_names else str
        parts = [f"{name(y)}->{{{','.join(name(j) for j in self.targets(y))}}}" for y in self.seed_classes]
        kind = "binary" if self.is_binary else "real-valued"
        return f"CostMatrix({self.num_classes} classes, {kind}, seeds: {'; '.join(parts)})"


def _check_class(y, num_classes: int, what: str) -> None:
    if isinstance(y, bool) or not isinstance(y, (int, np.integer)) or not 0 <= int(y) < num_classes:
        raise ValueError(f"{what} must be an integer in [0, {num_classes}), got {y!r}")
