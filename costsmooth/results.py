"""Certification result files: the TSV in Cohen et al.'s format, its metadata and its saved counts.

``OUTFILE`` (TSV): ``idx label predict radius correct time`` first, exactly as Cohen et al.'s
certify.py, then ``cs_radius`` (empty for inputs of non-seed classes or without a cost matrix),
``top_class``, ``top_is_target``, ``pA_lower``, ``target_radii`` (``j:r`` pairs joined by ``;``),
``sigma0`` last (the per-input noise level of input-dependent smoothing, exact ``repr``; empty otherwise).
``OUTFILE.meta.json``: the settings (sigma, n0, n, alpha, seed, cost matrix, dataset, model).
``OUTFILE.counts.jsonl``: one line per input with its selection and estimation counts, so
certificates can be recomputed at another alpha or cost matrix (``costsmooth recertify``).

Writes are append-only, one flushed line per input; a line cut short by a kill is dropped when the
file is reopened, so a re-run resumes without losing or duplicating rows.
"""
from __future__ import annotations

import fcntl
import json
import os
from typing import Dict, List, Optional

import numpy as np

from .certify import Certificate
from .cost import CostMatrix

__all__ = ["COLUMNS", "ResultWriter", "read_tsv", "read_meta", "read_counts", "Records", "load_records"]

COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "cs_radius", "top_class", "top_is_target",
           "pA_lower", "target_radii", "sigma0"]


def _repair_tail(path: str) -> None:
    """Drop a last line that a kill cut short (no trailing newline)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)


def read_meta(tsv_path: str) -> dict:
    path = tsv_path + ".meta.json"
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def read_tsv(path: str) -> List[Dict[str, str]]:
    """Rows of a certification TSV as dicts of strings (complete lines only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"certification file not found: {path}")
    with open(path) as f:
        lines = f.read().split("\n")
    if not lines or not lines[0].startswith("idx\t"):
        raise ValueError(f"{path} is not a certification TSV (its header must start with 'idx')")
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        parts = line.split("\t")
        if len(parts) == len(header):
            rows.append(dict(zip(header, parts)))
    return rows


def read_counts(tsv_path: str) -> Dict[int, dict]:
    """Saved counts by dataset index: {idx: {"label", "selection", "estimation"}} (last line wins)."""
    path = tsv_path + ".counts.jsonl"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved counts for {tsv_path} (expected {path})")
    out = {}
    with open(path) as f:
        for line in f:
            if line.endswith("\n"):
                rec = json.loads(line)
                out[int(rec["idx"])] = rec
    return out


def format_row(idx: int, cert: Certificate, seconds: float) -> str:
    cs = "" if cert.cs_radius is None else f"{cert.cs_radius:.6g}"
    radii = ";".join(f"{j}:{r:.6g}" for j, r in cert.target_radii.items())
    label = "" if cert.label is None else str(cert.label)
    correct = "" if cert.label is None else str(int(bool(cert.correct)))
    fields = [str(idx), label, str(cert.prediction), f"{cert.radius:.6g}", correct, f"{seconds:.4f}", cs,
              str(cert.top_class), str(int(cert.top_is_target)), f"{cert.pA_lower:.8g}", radii,
              "" if cert.sigma0 is None else repr(float(cert.sigma0))]  # sigma0: exact round trip
    return "\t".join(fields) + "\n"


class ResultWriter:
    """Appends certificates to OUTFILE and OUTFILE.counts.jsonl; resumes an existing run.

    Opening checks that an existing run used the same settings (``meta``), else refuses.
    """

    def __init__(self, path: str, meta: dict):
        self.path = path
        self.meta_path = path + ".meta.json"
        self.counts_path = path + ".counts.jsonl"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # One writer per OUTFILE: a second concurrent run would interleave rows.
        self._lock = open(path + ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise ValueError(f"another costsmooth run is writing {path}; wait for it or choose another OUTFILE")
        if os.path.isfile(path):
            old = read_meta(path)
            changed = {k for k in meta if k not in ("version",) and old.get(k) != meta[k]}
            if changed:
                raise ValueError(f"{path} exists from a run with different settings ({', '.join(sorted(changed))}); "
                                 f"use another OUTFILE or delete it to start over")
            _repair_tail(path)
            _repair_tail(self.counts_path)
        else:
            tmp = self.meta_path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(meta, f, indent=1)
            os.replace(tmp, self.meta_path)
            with open(path, "w") as f:
                f.write("\t".join(COLUMNS) + "\n")
        self.done = {int(r["idx"]) for r in read_tsv(path)}
        # A run started before the sigma0 column existed keeps its header: rows are written with its width.
        with open(path) as f:
            self._width = len(f.readline().rstrip("\n").split("\t"))

    def write(self, idx: int, cert: Certificate, seconds: float) -> None:
        # Counts first: a row in the TSV always has its counts saved.
        rec = {"idx": idx, "label": cert.label, "selection": cert.selection_counts.tolist(),
               "estimation": cert.counts.tolist()}
        if cert.sigma0 is not None:  # input-dependent sigma: the noise level of this input
            rec["sigma0"] = cert.sigma0
        row = format_row(idx, cert, seconds)
        if self._width < len(COLUMNS):
            row = "\t".join(row.rstrip("\n").split("\t")[:self._width]) + "\n"
        for path, line in ((self.counts_path, json.dumps(rec) + "\n"), (self.path, row)):
            with open(path, "a") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        self.done.add(idx)

    def close(self) -> None:
        """Release the OUTFILE lock (also released when the process ends)."""
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()


class Records:
    """Columns of a certification TSV as arrays, for the metrics of ``costsmooth.metrics``."""

    def __init__(self, rows: List[Dict[str, str]], cost: Optional[CostMatrix], name: str = ""):
        self.name = name
        self.cost = cost
        self.idx = np.array([int(r["idx"]) for r in rows], dtype=np.int64)
        self.label = np.array([int(r["label"]) for r in rows], dtype=np.int64)
        self.predict = np.array([int(r["predict"]) for r in rows], dtype=np.int64)
        self.radius = np.array([float(r["radius"]) for r in rows])
        self.top_class = np.array([int(r.get("top_class") or r["predict"]) for r in rows], dtype=np.int64)
        self.cs_radius = np.array([float(r["cs_radius"]) if r.get("cs_radius") else np.nan for r in rows])
        self.target_radii = [_parse_radii(r.get("target_radii", "")) for r in rows]

    def __len__(self):
        return self.idx.size


def _parse_radii(text: str) -> Dict[int, float]:
    out = {}
    for part in filter(None, (text or "").split(";")):
        j, r = part.split(":")
        out[int(j)] = float(r)
    return out


def load_records(path: str, cost: Optional[CostMatrix] = None) -> Records:
    """A TSV with its cost matrix (from ``cost`` or the run's metadata)."""
    rows = read_tsv(path)
    if any(not r["label"] for r in rows):
        raise ValueError(f"{path} has rows without labels; metrics need labelled inputs")
    if cost is None:
        meta_cost = read_meta(path).get("cost")
        cost = CostMatrix.from_json(meta_cost) if meta_cost else None
    return Records(rows, cost, name=os.path.splitext(os.path.basename(path))[0])
