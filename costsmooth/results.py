"""Certification result files: the TSV in Cohen et al.'s format, its metadata and its saved counts.

``OUTFILE`` (TSV): ``idx label predict radius correct time`` first, exactly as Cohen et al.'s
certify.py, then ``cs_radius`` (empty for inputs of non-seed classes or without a cost matrix),
``top_class``, ``top_is_target``, ``pA_lower``, ``target_radii`` (``j:r`` pairs joined by ``;``),
``sigma0`` last (the per-input noise level of input-dependent smoothing, exact ``repr``; empty otherwise).
``OUTFILE.meta.json``: the settings (sigma, n0, n, alpha, seed, cost matrix, dataset, model).
``OUTFILE.counts.jsonl``: one line per input with its selection and estimation counts, so
certificates can be recomputed at another alpha or cost matrix (``costsmooth recertify``).

Writes are append-only, one flushed line per input; a line cut short by a kill is dropped when the
file is reopened, so a re-run resumes without losing or duplicating rows. Radii and bounds are
written exactly (``repr``), so a value read back is never larger than the one computed.

Which model and data a file holds: ``fingerprint_model`` and ``fingerprint_dataset`` go to the metadata,
``check_certified_inputs`` refuses to resume on changed data, ``select_indices`` picks the inputs of a run.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import warnings
from typing import Dict, List, Optional

import numpy as np
import torch
from filelock import FileLock, Timeout

from .certify import Certificate
from .cost import CostMatrix
from .data.base import tensor_digest
from .sequential import SequentialResult

__all__ = ["COLUMNS", "ResultWriter", "ResultFileError", "read_tsv", "read_tsv_checked", "read_meta", "read_counts",
           "settings_mismatch", "format_row", "Records", "load_records", "SEQUENTIAL_COLUMNS", "SequentialWriter",
           "format_sequential_row", "write_atomic", "fingerprint_model", "fingerprint_dataset", "check_certified_inputs",
           "select_indices", "join_devices"]

COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "cs_radius", "top_class", "top_is_target",
           "pA_lower", "target_radii", "sigma0"]


# Settings that do not change any certificate: a resumed run may differ in these. Everything else in
# the metadata (model and dataset fingerprints, sigma, n0, n, alpha, seed, precision, cost, ...) must
# match, since noise is keyed by dataset index and which indices are certified changes nothing.
# ``devices`` lists every device that certified rows of the run (type, name, noise kernel): the normals
# of different kernels agree to within ops.NORMALS_TOLERANCE, not bit for bit (see the README).
RESUMABLE_KEYS = {"version", "skip", "max", "model", "dataset", "shard", "num_inputs", "sample_split", "devices",
                  # how inputs are made (size, channels): the data fingerprint covers it
                  "data_format",
                  # provenance of merged and recertified files: resuming or merging them again is allowed
                  "merged_from", "recertified_from", "missing_indices",
                  # where a .pt file's split inputs sit in the file (provenance; the data's fingerprint decides)
                  "idx_counts", "file_rows"}


class ResultFileError(ValueError):
    """A result file is malformed or belongs to another run; the message names the file and line."""


def read_meta(tsv_path: str) -> dict:
    """The run's settings from ``OUTFILE.meta.json`` ({} when the file does not exist)."""
    path = tsv_path + ".meta.json"
    if not os.path.isfile(path):
        return {}
    try:
        with open(path) as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultFileError(f"{path} is not valid JSON ({err}); it is truncated or corrupt: restore it, or "
                              f"delete {tsv_path} and its .meta.json/.counts.jsonl to start over") from None
    if not isinstance(meta, dict):
        raise ResultFileError(f"{path} must hold a JSON object of run settings")
    return meta


def _row_problem(parts: List[str], header: List[str]) -> Optional[str]:
    """Why a TSV line is not a complete row (None when it is)."""
    if len(parts) != len(header):
        return f"{len(parts)} fields instead of {len(header)}"
    row = dict(zip(header, parts))
    try:
        int(row["idx"])
        for key in ("radius", "cs_radius", "pA_lower"):
            if row.get(key):
                float(row[key])
        int(row["predict"])
        if row.get("label"):
            int(row["label"])
        _parse_radii(row.get("target_radii", ""))
    except ValueError as err:
        return f"a field is not a number ({err})"
    return None


def read_tsv_checked(path: str):
    """(rows, problems): complete rows of a certification TSV as dicts of strings, and one
    ``(line number, reason)`` per line that is not a complete row (a torn or garbled line)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"certification file not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    lines = text.split("\n")
    if not lines or not lines[0].startswith("idx\t"):
        raise ResultFileError(f"{path} is not a certification TSV (its header must start with 'idx')")
    header = lines[0].split("\t")
    rows, problems = [], []
    last = len(lines) - 1  # the text after the final newline ('' for a complete file)
    for number, line in enumerate(lines[1:], start=2):
        if line == "" and number - 1 == last:
            continue
        if number - 1 == last:
            problems.append((number, "last line cut short (no newline)"))
            continue
        problem = _row_problem(line.split("\t"), header)
        if problem:
            problems.append((number, problem))
        else:
            rows.append(dict(zip(header, line.split("\t"))))
    return rows, problems


def read_tsv(path: str) -> List[Dict[str, str]]:
    """Complete rows of a certification TSV as dicts of strings; malformed lines are left out
    (``read_tsv_checked`` reports them)."""
    return read_tsv_checked(path)[0]


def read_counts(tsv_path: str, num_classes: Optional[int] = None) -> Dict[int, dict]:
    """Saved counts by dataset index: {idx: {"label", "selection", "estimation"}} (last line wins).

    A line cut short at the end of the file (a kill mid-write) is ignored; any other malformed line
    (or, given ``num_classes``, a record with another number of classes) raises ``ResultFileError``
    naming the file and its line number.
    """
    path = tsv_path + ".counts.jsonl"
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no saved counts for {tsv_path} (expected {path})")
    out = {}
    with open(path) as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, start=1):
        if number == len(lines):  # text after the last newline: '' or a torn line
            break
        try:
            rec = json.loads(line)
            idx = int(rec["idx"])
            sel, est = rec["selection"], rec["estimation"]
            if not (isinstance(sel, list) and isinstance(est, list) and len(sel) == len(est) and sel
                    and all(isinstance(v, int) and v >= 0 for v in sel + est)):
                raise ValueError("selection and estimation must be equal-length lists of non-negative integers")
            if num_classes and len(est) != num_classes:
                raise ValueError(f"{len(est)} classes, but the run has {num_classes}: the file mixes runs")
        except (ValueError, KeyError, TypeError) as err:
            raise ResultFileError(f"{path}, line {number}: not a counts record ({err}); fix or delete that line "
                                  f"(certify recomputes the input's row when its counts are missing)") from None
        out[idx] = rec
    return out


def _exact(value: float) -> str:
    """A float as the shortest text that reads back as exactly the same number (never rounded up)."""
    return repr(float(value))


def format_row(idx: int, cert: Certificate, seconds: float) -> str:
    """One TSV line. Radii and bounds are written exactly (``repr``): reading a file back never gives a
    larger radius or a looser bound than was computed."""
    cs = "" if cert.cs_radius is None else _exact(cert.cs_radius)
    radii = ";".join(f"{j}:{_exact(r)}" for j, r in cert.target_radii.items())
    label = "" if cert.label is None else str(cert.label)
    correct = "" if cert.label is None else str(int(bool(cert.correct)))
    fields = [str(idx), label, str(cert.prediction), _exact(cert.radius), correct, f"{seconds:.4f}", cs,
              str(cert.top_class), str(int(cert.top_is_target)), _exact(cert.pA_lower), radii,
              "" if cert.sigma0 is None else _exact(cert.sigma0)]  # sigma0: input-dependent smoothing only
    return "\t".join(fields) + "\n"


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` all or nothing: a synced temporary file beside it, then renamed over it."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def join_devices(*lists) -> List[dict]:
    """The devices of several metadata ``devices`` lists, each once, in order of first appearance."""
    out = []
    for devices in lists:
        out.extend(d for d in devices if d not in out)
    return out


def settings_mismatch(old: dict, new: dict) -> List[str]:
    """Names of the settings that differ between two runs' metadata and change certificates."""
    keys = (set(old) | set(new)) - RESUMABLE_KEYS
    return sorted(k for k in keys if old.get(k) != new.get(k))


def acquire_run_lock(path: str):
    """Hold ``path.lock`` (filelock), one writer per result file, or refuse naming the file."""
    lock = FileLock(path + ".lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ResultFileError(f"another costsmooth run is writing {path}; wait for it or choose another "
                              f"OUTFILE") from None
    return lock


def release_run_lock(lock) -> None:
    """Remove the lock file while it is still held (so no other run holds it), then release it."""
    if lock.is_locked:
        try:
            os.remove(lock.lock_file)
        except OSError:
            pass
        lock.release()


def append_record(path: str, counts: dict, row: str) -> None:
    """Append one input's counts record to ``path.counts.jsonl``, then its TSV ``row`` to ``path``, each
    synced to disk: a row in the TSV always has its counts saved."""
    for target, line in ((path + ".counts.jsonl", json.dumps(counts) + "\n"), (path, row)):
        with open(target, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def begin_run(path: str, meta: dict, columns: List[str]) -> bool:
    """Start a result file or check that it may be resumed; True when a new run was started.

    A new run writes ``path.meta.json`` and the header ``columns`` (and drops counts left by an
    earlier run whose TSV was deleted). An existing run is refused, naming each difference, unless
    its certificate-changing settings equal ``meta`` (``settings_mismatch``) and it is of the same kind
    (fixed-n or sequential); its metadata is then updated to describe the latest selection.
    """
    meta_path = path + ".meta.json"
    if not os.path.isfile(path):
        write_atomic(meta_path, json.dumps(meta, indent=1))
        write_atomic(path, "\t".join(columns) + "\n")
        if os.path.exists(path + ".counts.jsonl"):
            os.remove(path + ".counts.jsonl")
        return True
    old = read_meta(path)
    if not old:
        raise ResultFileError(f"{path} exists but {meta_path} does not: it was not written by costsmooth certify, "
                              f"or its metadata was deleted; choose another OUTFILE")
    if bool(old.get("sequential")) != bool(meta.get("sequential")):
        kind = "a sequential (certify --sequential)" if old.get("sequential") else "a fixed-n"
        raise ResultFileError(f"{path} exists from {kind} certification run; choose another OUTFILE")
    changed = settings_mismatch(old, meta)
    if changed:
        details = "; ".join(describe_difference(k, old.get(k), meta.get(k), "in the file") for k in changed)
        raise ResultFileError(f"{path} exists from a run with different settings ({details}); use another "
                              f"OUTFILE or delete it to start over")
    if "devices" in meta:  # every device that certified rows, the earlier ones first
        meta["devices"] = join_devices(old.get("devices", []), meta["devices"])
    if old != meta:  # an extended selection (skip, max, ...): the metadata describes the latest run
        write_atomic(meta_path, json.dumps(meta, indent=1))
    return False


class ResultWriter:
    """Appends certificates to OUTFILE and OUTFILE.counts.jsonl; resumes an existing run.

    Opening an existing run checks that it used the same settings (``meta``, except
    ``RESUMABLE_KEYS``), else refuses naming them. Rows that are garbled or whose counts are missing
    are dropped (with a warning) so they are certified again; ``close`` leaves the TSV sorted by index.
    One writer per OUTFILE: ``OUTFILE.lock`` is held (filelock) while the writer is open.
    """

    def __init__(self, path: str, meta: dict):
        self.path = path
        self.meta_path = path + ".meta.json"
        self.counts_path = path + ".counts.jsonl"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # One writer per OUTFILE: a second concurrent run would interleave rows.
        self._lock = acquire_run_lock(path)
        try:
            self.done = self._open(meta)
            with open(path) as f:
                self._width = len(f.readline().rstrip("\n").split("\t"))
        except BaseException:
            self.close()
            raise

    def _open(self, meta: dict) -> set:
        if begin_run(self.path, meta, COLUMNS):
            return set()
        rows, problems = read_tsv_checked(self.path)
        counts = read_counts(self.path, meta.get("num_classes")) if os.path.isfile(self.counts_path) else {}
        keep = [r for r in rows if int(r["idx"]) in counts]
        lost = sorted({int(r["idx"]) for r in rows} - set(counts))
        if problems or lost or len({r["idx"] for r in keep}) != len(keep):
            if problems:
                lines = ", ".join(str(n) for n, _ in problems[:5])
                warnings.warn(f"{self.path}: dropped {len(problems)} malformed line(s) (line {lines}: "
                              f"{problems[0][1]}); those inputs are certified again")
            if lost:
                warnings.warn(f"{self.path}: {len(lost)} row(s) have no saved counts in {self.counts_path} "
                              f"(indices {lost[:5]}{' ...' if len(lost) > 5 else ''}); those inputs are certified again")
            by_idx = {int(r["idx"]): r for r in keep}  # a duplicated index keeps its last row
            self._rewrite_rows([by_idx[i] for i in sorted(by_idx)])
            keep = list(by_idx.values())
        _truncate_torn_tail(self.counts_path)
        return {int(r["idx"]) for r in keep}

    def _rewrite_rows(self, rows: List[Dict[str, str]]) -> None:
        with open(self.path) as f:
            header = f.readline()
        cols = header.rstrip("\n").split("\t")
        write_atomic(self.path, header + "".join("\t".join(r[c] for c in cols) + "\n" for r in rows))

    def write(self, idx: int, cert: Certificate, seconds: float, invalid: Optional[str] = None,
              input: Optional[dict] = None) -> None:
        """Append one input's counts, then its row. ``invalid`` (e.g. "NaN") marks an input that was
        not sampled (zero counts) and is recorded as not certified. ``input`` (its file and sha256) is
        kept in the counts record, so that a resumed run can check the certified inputs are unchanged."""
        # Counts first: a row in the TSV always has its counts saved.
        rec = {"idx": idx, "label": cert.label, "selection": cert.selection_counts.tolist(),
               "estimation": cert.counts.tolist()}
        if invalid:
            rec["invalid"] = invalid
        if input:
            rec["input"] = input
        if cert.sigma0 is not None:  # input-dependent sigma: the noise level of this input
            rec["sigma0"] = cert.sigma0
        if cert.prob_sums is not None:  # certify --prob-sums: the estimation draw's softmax sums, exact repr
            rec["prob_sums"] = [float(v) for v in cert.prob_sums]
        row = format_row(idx, cert, seconds)
        if self._width < len(COLUMNS):  # a file started before the last columns existed keeps its width
            row = "\t".join(row.rstrip("\n").split("\t")[:self._width]) + "\n"
        append_record(self.path, rec, row)
        self.done.add(idx)

    def sort(self) -> None:
        """Rewrite the TSV in index order when rows were appended out of order (a run was extended)."""
        rows = read_tsv(self.path)
        order = [int(r["idx"]) for r in rows]
        if order != sorted(order):
            self._rewrite_rows(sorted(rows, key=lambda r: int(r["idx"])))

    def close(self) -> None:
        """Leave the TSV sorted by index and release the OUTFILE lock (its file is removed)."""
        if self._lock.is_locked:
            try:
                if getattr(self, "done", None) is not None and os.path.isfile(self.path):
                    self.sort()
            finally:
                release_run_lock(self._lock)


SEQUENTIAL_COLUMNS = ["idx", "label", "predict", "radius", "correct", "time", "cs_radius", "top_class",
                      "top_is_target", "pA_lower", "decision", "samples", "radius_tested", "target_radii"]


def format_sequential_row(idx: int, res: SequentialResult) -> str:
    """One line of a sequential run's TSV: ``radius`` is the standard radius at the stop, ``cs_radius`` and
    ``target_radii`` (``j:r`` pairs joined by ``;``) those of a cost-sensitive test (empty otherwise)."""
    label = "" if res.label is None else str(res.label)
    correct = "" if res.label is None else str(int(bool(res.correct)))
    cs = _exact(res.certified_radius) if res.test == "cost_sensitive" else ""
    radii = ";".join(f"{j}:{_exact(r)}" for j, r in res.target_radii.items())
    fields = [str(idx), label, str(res.prediction), _exact(res.standard_radius), correct, f"{res.seconds:.4f}", cs,
              str(res.top_class), str(int(res.top_is_target)), _exact(res.pA_lower), res.decision, str(res.samples),
              _exact(res.radius), radii]
    return "\t".join(fields) + "\n"


class SequentialWriter:
    """Appends rows of ``SEQUENTIAL_COLUMNS`` to OUTFILE (and counts to OUTFILE.counts.jsonl); resumes.

    OUTFILE.meta.json records the settings; reopening with other settings is refused (as
    ``ResultWriter``). ``OUTFILE.lock`` (filelock) is held while open. A torn last line is dropped on
    reopening, so the input is certified again. A file started before ``target_radii`` existed keeps
    its columns.
    """

    def __init__(self, path: str, meta: dict):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock = acquire_run_lock(path)
        try:
            self._width = len(SEQUENTIAL_COLUMNS)
            if begin_run(path, meta, SEQUENTIAL_COLUMNS):
                self.done = set()
                return
            with open(path) as f:
                text = f.read()
            lines = text.split("\n")
            header = lines[0].split("\t")
            if header != SEQUENTIAL_COLUMNS[:len(header)] or len(header) < SEQUENTIAL_COLUMNS.index("radius_tested") + 1:
                raise ResultFileError(f"{path} does not have the columns of a sequential run; choose another OUTFILE")
            self._width = len(header)
            good = [ln for ln in lines[1:-1] if len(ln.split("\t")) == self._width]
            if len(good) != len(lines) - 2 or lines[-1] != "":
                write_atomic(path, lines[0] + "\n" + "".join(ln + "\n" for ln in good))
            self.done = {int(ln.split("\t")[0]) for ln in good}
        except BaseException:
            self.close()
            raise

    def write(self, idx: int, res: SequentialResult) -> None:
        rec = {"idx": idx, "label": res.label, "selection": res.selection_counts.tolist(),
               "estimation": res.counts.tolist(), "decision": res.decision}
        row = format_sequential_row(idx, res)
        if self._width < len(SEQUENTIAL_COLUMNS):
            row = "\t".join(row.rstrip("\n").split("\t")[:self._width]) + "\n"
        append_record(self.path, rec, row)
        self.done.add(idx)

    def close(self) -> None:
        release_run_lock(self._lock)


def _short(value, limit: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe_difference(key: str, old, new, where: str) -> str:
    """``key: OLD {where}, NEW now``, short; for a cost matrix the entries that differ (row, column),
    for other long values the parts that differ, never two identical shortened texts."""
    matrices = [v.get("matrix") if isinstance(v, dict) else None for v in (old, new)]
    if key == "cost" and all(m is not None for m in matrices):
        a, b = (np.asarray(m, dtype=np.float64) for m in matrices)
        if a.shape != b.shape:
            return f"cost: a {a.shape[0]}x{a.shape[0]} matrix {where}, {b.shape[0]}x{b.shape[0]} now"
        diff = np.argwhere(a != b)
        if len(diff):
            entries = ", ".join(f"[{i},{j}] {a[i, j]:g} {where}, {b[i, j]:g} now" for i, j in diff[:4].tolist())
            return f"cost matrix entries (row, column) differ: {entries}{f' and {len(diff) - 4} more' if len(diff) > 4 else ''}"
    if key == "cost" and (old is None) != (new is None):
        return f"cost: {'none' if old is None else 'a cost matrix'} {where}, {'none' if new is None else 'a cost matrix'} now"
    short_old, short_new = _short(old), _short(new)
    if short_old == short_new and isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return f"{key}: differs in {', '.join(keys)} ({'; '.join(describe_difference(k, old.get(k), new.get(k), where) for k in keys[:3])})"
    if short_old == short_new:
        a, b = json.dumps(old), json.dumps(new)
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        short_old, short_new = "..." + a[max(0, at - 10):at + 20] + "...", "..." + b[max(0, at - 10):at + 20] + "..."
    return f"{key}: {short_old} {where}, {short_new} now"


def _truncate_torn_tail(path: str) -> None:
    """Drop a last line that a kill cut short (no trailing newline)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)


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


def load_records(path: str, cost: Optional[CostMatrix] = None, rows=None) -> Records:
    """A TSV with its cost matrix (from ``cost`` or the run's metadata); ``rows`` if already read."""
    rows = read_tsv(path) if rows is None else rows
    if any(not r["label"] for r in rows):
        raise ValueError(f"{path} has rows without labels; metrics need labelled inputs")
    if cost is None:
        meta_cost = read_meta(path).get("cost")
        cost = CostMatrix.from_json(meta_cost) if meta_cost else None
    return Records(rows, cost, name=os.path.splitext(os.path.basename(path))[0])


# ----------------------------------------------------------------------------------------------
# Which model, data and inputs a result file holds
# ----------------------------------------------------------------------------------------------
def fingerprint_model(model) -> str:
    """sha256 of what a model computes: for every submodule its class (module, name and, when Python can
    read it, the source of its ``forward``), its plain Python attributes (numbers, strings, flags ...),
    TorchScript code, and every parameter and buffer (names, dtypes, shapes, values).

    Recorded in a run's metadata so that a resumed run refuses to mix certificates of two models,
    wherever the model file lives -- also two models with equal weights that differ in a Python
    attribute (a temperature, a sign) or in their TorchScript code.
    """
    h = hashlib.sha256(type(model).__name__.encode())
    modules = model.named_modules() if isinstance(model, torch.nn.Module) else []
    for name, module in modules:
        cls = type(module)
        h.update(f"module {name}: {cls.__module__}.{cls.__qualname__}".encode())
        code = getattr(module, "code", None) if isinstance(module, torch.jit.ScriptModule) else None
        if isinstance(code, str):
            h.update(code.encode())
        else:
            try:
                h.update(inspect.getsource(cls.forward).encode())
            except (OSError, TypeError):
                pass
        for key, value in sorted(vars(module).items()):
            plain = value is None or isinstance(value, (bool, int, float, str, tuple, list))
            if plain and key != "training" and not key.startswith("_"):
                h.update(f"{key}={value!r}".encode())
    state = model.state_dict() if hasattr(model, "state_dict") else {}
    for name, tensor in state.items():
        if not torch.is_tensor(tensor):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def fingerprint_dataset(dataset) -> str:
    """Which data were certified: ``dataset.fingerprint()`` -- for in-memory datasets the sha256 of the
    inputs and labels (dtypes, shapes, values); for image files the sha256 of the file list (relative
    paths, byte sizes, labels), class names and transform, which costs a listing, not a read of every
    image (each certified row records its own file's sha256, ``check_certified_inputs``)."""
    if hasattr(dataset, "fingerprint"):
        return dataset.fingerprint()
    return tensor_digest(dataset.inputs, dataset.labels)


def _changed_inputs(outfile: str, dataset, limit: int = 3) -> List[str]:
    """What differs between the inputs certified in ``outfile`` (the file and sha256 in each counts record)
    and the same indices of ``dataset`` now; reads only the certified inputs."""
    if not os.path.isfile(outfile + ".counts.jsonl"):
        return []
    changed = []
    for idx, rec in sorted(read_counts(outfile).items()):
        was = rec.get("input")
        if not isinstance(was, dict) or "sha256" not in was:  # a row written before inputs were recorded
            continue
        if idx >= len(dataset):
            changed.append(f"input {idx} ({was.get('file', 'certified')}) is gone: the dataset has {len(dataset)} inputs")
        elif was.get("file") is not None and was["file"] != dataset.input_name(idx):
            changed.append(f"input {idx} was {was['file']} and is now {dataset.input_name(idx)} (files added or "
                           f"removed)")
        elif dataset.input_digest(idx) != was["sha256"]:
            name = dataset.input_name(idx)
            changed.append(f"{name if name == f'input {idx}' else f'{name} (input {idx})'} was replaced: its contents "
                           f"differ from the certified one")
        if len(changed) >= limit:
            break
    return changed


def check_certified_inputs(outfile: str, dataset, fingerprint: str) -> None:
    """Refuse to resume ``outfile`` on changed data, saying what changed: renamed, added or removed
    classes; a certified input whose file was replaced or moved (its recorded sha256 or name differs);
    else any other change of the file list (``fingerprint`` differs from the run's ``data_sha256``).
    Costs a read of the inputs certified so far, not of the dataset."""
    if not os.path.isfile(outfile):
        return
    old = read_meta(outfile)
    if not old:
        return  # not a costsmooth run: ResultWriter refuses it
    fix = f"restore the data, or use another OUTFILE (or delete {outfile} to start over)"
    was = old.get("class_names")
    if was is not None and was != dataset.class_names:
        gone = [c for c in was if c not in dataset.class_names]
        new = [c for c in dataset.class_names if c not in was]
        what = (f"class(es) {', '.join(gone[:5])} gone and {', '.join(new[:5]) or 'none'} new" if gone or new
                else "the classes are in another order")
        raise ResultFileError(f"{outfile} was certified on other data: {what}; {fix}")
    changed = _changed_inputs(outfile, dataset)
    if changed:
        raise ResultFileError(f"{outfile} was certified on other data: {'; '.join(changed)}; {fix}")
    if old.get("data_sha256") not in (None, fingerprint):
        raise ResultFileError(f"{outfile} was certified on other data: the inputs of {dataset.name} changed (for image "
                              f"files: files added, removed or resized, or another image size or resize policy), "
                              f"though no certified input did; {fix}")


def select_indices(size: int, skip: int, max_index: int) -> List[int]:
    """Dataset indices ``i`` with ``i % skip == 0`` and ``i < max_index`` (all when max_index < 0), as in
    Cohen et al.'s certify.py; refuses settings that select nothing."""
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 1:
        raise ValueError(f"--skip must be an integer >= 1 (1 certifies every input), got {skip!r}")
    if isinstance(max_index, bool) or not isinstance(max_index, int) or max_index == 0 or max_index < -1:
        raise ValueError(f"--max must be a positive dataset index to stop before (or -1 for all), got {max_index!r}")
    if size == 0:
        raise ValueError("the dataset is empty: there is nothing to certify")
    stop = size if max_index < 0 else min(max_index, size)
    if 0 < max_index <= skip and skip > 1:
        warnings.warn(f"--skip {skip} with --max {max_index} selects only input 0; --max is a dataset index to stop "
                      f"before, not a number of inputs")
    return list(range(0, stop, skip))
