"""Scale-out: one certification run across processes, GPUs and machines.

Noise is keyed by (seed, stream, dataset index, sample index), so splitting a run changes nothing in
its certificates:

- **Input sharding**: shard i of k certifies every k-th selected input from the i-th. Under torchrun
  each rank writes its own resumable part ``OUTFILE.part{i}-of-{k}`` and rank 0 merges the parts into
  OUTFILE; without torch.distributed (SLURM arrays, several machines with a shared disk) run
  ``certify --shard i/k`` per job and ``costsmooth merge OUTFILE PART...`` at the end.
- **Sample splitting** (``--split-samples``, torchrun only): every rank draws its own range of sample
  indices of each input (selection and estimation draws alike) and the int64 counts are summed with
  an all-reduce, which is exact; rank 0 writes OUTFILE. For very large n on few inputs.

Both give TSV rows (all but the time column) and counts files identical to one process. torchrun
starts the processes (``torchrun --nproc-per-node K -m costsmooth certify ...``); the backend is NCCL
when CUDA is available (each rank on its local GPU), else gloo.

**Fail fast** (``FailFast``): an error on any rank (a non-finite input, out of memory, an unreadable
file, anything raised) is written to the rendezvous store under the rank's number, and every other
rank polls the store twice a second and exits at once, wherever it is waiting (a collective, the
process group's timeout is days). The failing rank prints one line, ``error: rank R of K: CAUSE``;
the others stop silently. Every finished row is on disk (rows are appended and synced one by one), so
running the same command again resumes.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
import threading
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from filelock import FileLock

from ._checks import error_line
from .args import HelpFormatter
from .results import (join_devices, read_counts, read_meta, read_tsv_checked, select_indices, settings_mismatch,
                      write_atomic)
from .runs import certify_dataset

__all__ = ["SampleSplit", "init_from_env", "part_path", "certify_distributed", "merge_parts", "parse_shard",
           "FailFast", "RankError"]

POLL_SECONDS = 0.5  # how often each rank looks for another rank's failure


class RankError(RuntimeError):
    """An error on one rank of a distributed run; the message names the rank and the cause in one line."""


class FailFast:
    """Stop every rank within about ``poll`` seconds when one rank fails.

    ``with FailFast(rank, world):`` around a rank's work. An exception inside is recorded in the
    rendezvous store (``MASTER_ADDR:MASTER_PORT``, the TCPStore that torchrun's agent or rank 0 serves)
    as ``rank R of K: CAUSE`` and re-raised as ``RankError`` with that message. A thread on every rank
    polls the store and, when another rank has failed, ends its process at once (``os._exit(2)``):
    what it was waiting for will never come. Finished rows are already synced to disk. When the store
    cannot be reached the thread stops watching (the launcher then ends the ranks).
    """

    KEY = "costsmooth/failed"

    def __init__(self, rank: int, world: int, poll: float = POLL_SECONDS):
        import torch.distributed as dist  # optional: only under torchrun

        self.rank, self.world, self.poll = rank, world, poll
        self._stop = threading.Event()
        self._report_store = self._watch_store = None
        host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if not (host and port):  # a process group started otherwise (file://, tcp:// init_method): no store to share
            warnings.warn("MASTER_ADDR/MASTER_PORT are not set: a failure on one rank will not stop the others "
                          "(start the processes with torchrun)")
            return
        timeout = datetime.timedelta(seconds=30)
        try:  # one client connection per use: the watcher thread and the reporting thread never share one
            self._report_store = dist.TCPStore(host, int(port), is_master=False, timeout=timeout,
                                               wait_for_workers=False)
            self._watch_store = dist.TCPStore(host, int(port), is_master=False, timeout=timeout,
                                              wait_for_workers=False)
        except (RuntimeError, ValueError) as err:
            warnings.warn(f"cannot reach the rendezvous store at {host}:{port} ({error_line(err)}): a failure on one "
                          f"rank will not stop the others")
            self._report_store = self._watch_store = None
        self._thread = threading.Thread(target=self._watch, name="costsmooth-fail-fast", daemon=True)

    def __enter__(self):
        if self._watch_store is not None:
            self._thread.start()
        return self

    def __exit__(self, kind, err, tb):
        if err is None or isinstance(err, RankError):  # done, or already reported by an inner FailFast
            self._stop.set()
            return False
        message = f"rank {self.rank} of {self.world}: {error_line(err)}"
        if isinstance(err, KeyboardInterrupt):
            message = f"rank {self.rank} of {self.world}: interrupted"
        first = message
        try:  # the first failure wins: the store keeps it and returns it
            if self._report_store is not None:
                first = self._report_store.compare_set(self.KEY, "", message).decode(errors="replace")
        except Exception:  # noqa: BLE001  (the store is gone: the launcher stops the ranks)
            pass
        self._stop.set()
        if first != message and not isinstance(err, KeyboardInterrupt):
            # Another rank failed first and said so (its record precedes its exit, so this rank's error,
            # e.g. a collective's "connection closed by peer", is a consequence): end quietly, as _watch does.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)
        if isinstance(err, KeyboardInterrupt):
            return False
        raise RankError(message) from err

    def _watch(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                if not self._watch_store.check([self.KEY]):
                    continue
                message = self._watch_store.get(self.KEY).decode(errors="replace")
            except Exception:  # noqa: BLE001  (store unreachable: stop watching)
                return
            if self._stop.is_set() or message.startswith(f"rank {self.rank} of "):
                return
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(2)  # another rank failed (it printed the message); nothing this rank waits for will come


def parse_shard(text: str) -> Tuple[int, int]:
    """``"i/k"`` -> (i, k) with 0 <= i < k."""
    try:
        i, k = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be I/K (e.g. 0/4: the first of four parts), got {text!r}") from None
    if not 0 <= i < k:
        raise ValueError(f"--shard {text}: need 0 <= I < K (parts are numbered from 0)")
    return i, k


def part_path(outfile: str, rank: int, world: int) -> str:
    """Where rank ``rank`` of ``world`` writes its part of OUTFILE."""
    return f"{outfile}.part{rank}-of-{world}"


class SampleSplit:
    """Each process draws samples ``[n*rank/world, n*(rank+1)/world)`` of every input; counts are summed
    across processes with an exact int64 all-reduce (``torch.distributed``, already initialised)."""

    def __init__(self, rank: int, world: int, comm_device: torch.device):
        self.rank, self.world, self.comm_device = rank, world, torch.device(comm_device)

    def piece(self, n: int) -> Tuple[int, int]:
        """(first sample index, number of samples) of this process for ``n`` samples per input."""
        start = n * self.rank // self.world
        return start, n * (self.rank + 1) // self.world - start

    def reduce(self, counts: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist  # optional: only under torchrun
        total = counts.to(self.comm_device, dtype=torch.int64).contiguous()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return total

    def broadcast(self, obj):
        import torch.distributed as dist  # optional: only under torchrun
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.comm_device if self.comm_device.type == "cuda" else None)
        return box[0]


def init_from_env() -> Optional[dict]:
    """Initialise torch.distributed from torchrun's environment (WORLD_SIZE > 1); None otherwise.

    Returns {"rank", "world", "local_rank", "device"}: NCCL and the local GPU when CUDA is available,
    else gloo on the CPU. The timeout is long: ranks wait for each other only at the end of a run.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    import torch.distributed as dist  # optional: only under torchrun
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(days=7))
    return {"rank": dist.get_rank(), "world": dist.get_world_size(), "local_rank": local_rank, "device": device}


def certify_distributed(model, dataset, sigma: float, outfile: str, *, split_samples: bool = False,
                        ctx: Optional[dict] = None, **kwargs):
    """``runs.certify_dataset`` across the processes of an initialised process group (``init_from_env``).

    Input sharding (default): each rank certifies its shard into ``part_path(outfile, rank, world)``
    (resumable as any run), then rank 0 merges the parts into ``outfile``. ``split_samples``: each
    input's samples are split across ranks and rank 0 writes ``outfile``. Returns what
    ``certify_dataset`` returns; with ``return_stats`` the stats describe the whole run (for input
    sharding: inputs certified now and samples drawn summed over the ranks' shards, ``outfile`` named).
    An error on any rank stops every rank within a second (``FailFast``) and is raised there as
    ``RankError`` naming the rank.
    """
    ctx = ctx or init_from_env()
    if ctx is None:
        raise ValueError("certify_distributed needs several processes: start it with torchrun --nproc-per-node K")
    with FailFast(ctx["rank"], ctx["world"]):
        return _certify_ranks(model, dataset, sigma, outfile, split_samples, ctx, kwargs)


def _certify_ranks(model, dataset, sigma: float, outfile: str, split_samples: bool, ctx: dict, kwargs: dict):
    import torch.distributed as dist  # optional: only under torchrun


    rank, world = ctx["rank"], ctx["world"]
    meta_extra = dict(kwargs.pop("meta_extra", None) or {})
    if split_samples:
        split = SampleSplit(rank, world, ctx["device"] if ctx["device"].type == "cuda" else torch.device("cpu"))
        meta_extra["sample_split"] = world
        result = certify_dataset(model, dataset, sigma, outfile, sample_split=split, meta_extra=meta_extra, **kwargs)
        dist.barrier()
        return result
    if os.path.exists(outfile) and not read_meta(outfile).get("merged_from"):  # checked before any sampling
        raise ValueError(f"{outfile} exists and was not written by a torchrun run (merged from per-rank parts); "
                         f"choose another OUTFILE, or resume it with the command that wrote it")
    result = certify_dataset(model, dataset, sigma, part_path(outfile, rank, world), shard=(rank, world),
                             meta_extra=meta_extra, **kwargs)
    if isinstance(result, dict):  # return_stats: the whole run's, summed over the ranks' shards
        shards = [None] * world
        dist.all_gather_object(shards, result)
        result = dict(result, outfile=outfile, certified_now=sum(r["certified_now"] for r in shards),
                      samples=sum(r["samples"] for r in shards), invalid=sorted(i for r in shards for i in r["invalid"]),
                      selected=sum(r["selected"] for r in shards))
    dist.barrier()
    if rank == 0:
        merge_parts(outfile, [part_path(outfile, r, world) for r in range(world)], replace=True)
    dist.barrier()
    return result


def _rows_by_index(path: str):
    rows, problems = read_tsv_checked(path)
    if problems:
        n, why = problems[0]
        raise ValueError(f"{path}, line {n}: {why}; re-run the part's certify command to repair it before merging")
    return rows


def merge_parts(outfile: str, parts: Sequence[str], *, allow_missing: bool = False, replace: bool = False) -> dict:
    """Join certification parts (``certify --shard i/k`` or torchrun parts) into ``outfile``.

    Refuses parts written with different settings (anything that changes a certificate, and the
    selection ``skip``/``max``), an index whose rows differ between parts, and, unless
    ``allow_missing``, selected indices that no part holds. Indices held by several parts with the
    same row are kept once and reported. ``outfile`` (TSV, counts, metadata) is sorted by index.
    An existing ``outfile`` is refused unless ``replace`` and it was itself written by a merge.
    Returns {"rows", "missing", "duplicated"}.
    """

    if not parts:
        raise ValueError("merge needs at least one part")
    metas = []
    for part in parts:
        meta = read_meta(part)
        if not meta:
            raise ValueError(f"{part}.meta.json not found: {part} is not a costsmooth certify output")
        metas.append(meta)
    first = metas[0]
    for part, meta in zip(parts[1:], metas[1:]):
        changed = settings_mismatch(first, meta) + [k for k in ("skip", "max", "num_inputs")
                                                     if first.get(k) != meta.get(k)]
        if changed:
            raise ValueError(f"{part} was written with other settings than {parts[0]} ({', '.join(sorted(changed))}); "
                             f"parts of one run must share them")
    if os.path.exists(outfile) and not (replace and read_meta(outfile).get("merged_from")):
        raise ValueError(f"{outfile} exists; choose a new output file (or delete it to merge again)")
    rows: Dict[int, dict] = {}
    counts: Dict[int, dict] = {}
    duplicated: List[int] = []
    for part in parts:
        part_counts = read_counts(part)
        for row in _rows_by_index(part):
            i = int(row["idx"])
            if i not in part_counts:
                raise ValueError(f"{part}: index {i} has no saved counts; re-run the part's certify command first")
            if i in rows:
                same = {k: v for k, v in row.items() if k != "time"} == {k: v for k, v in rows[i].items() if k != "time"}
                if not same or part_counts[i] != counts[i]:
                    raise ValueError(f"index {i} has different certificates in two parts ({part}); the parts do not "
                                     f"belong to one run")
                duplicated.append(i)
                continue
            rows[i], counts[i] = row, part_counts[i]
    expected = select_indices(first["num_inputs"], first["skip"], first["max"]) if first.get("num_inputs") else []
    missing = sorted(set(expected) - set(rows))
    if missing and not allow_missing:
        raise ValueError(f"{len(missing)} selected indices are in no part (e.g. {missing[:10]}); finish those parts "
                         f"(re-run their certify commands), or pass --allow-missing")
    if duplicated:
        warnings.warn(f"{len(duplicated)} indices were in several parts with identical rows (e.g. "
                      f"{sorted(duplicated)[:10]}); kept once")
    with open(parts[0]) as f:
        header = f.readline().rstrip("\n").split("\t")
    meta = dict(first, shard=None, merged_from=[os.path.abspath(p) for p in parts],
                **({"devices": join_devices(*(m["devices"] for m in metas if "devices" in m))}
                   if any("devices" in m for m in metas) else {}),
                **({"missing_indices": missing} if missing else {}))
    with FileLock(outfile + ".lock", timeout=0):
        write_atomic(outfile + ".meta.json", json.dumps(meta, indent=1))
        write_atomic(outfile + ".counts.jsonl", "".join(json.dumps(counts[i]) + "\n" for i in sorted(rows)))
        write_atomic(outfile, "\t".join(header) + "\n"
                      + "".join("\t".join(rows[i].get(c, "") for c in header) + "\n" for i in sorted(rows)))
        try:
            os.remove(outfile + ".lock")
        except OSError:
            pass
    return {"rows": len(rows), "missing": missing, "duplicated": sorted(duplicated)}


def register_cli(sub) -> None:
    p = sub.add_parser("merge", help="join certification parts (certify --shard i/k) into one result file",
                       formatter_class=HelpFormatter,
                       description="Join the parts of one certification run (certify --shard I/K, e.g. the jobs of "
                                   "a SLURM array) into OUT: TSV, counts and metadata, sorted by index. Parts with "
                                   "different settings are refused; missing and duplicated indices are reported.")
    p.add_argument("out", help="merged output TSV (must not exist)")
    p.add_argument("parts", nargs="+", help="the parts' TSVs")
    p.add_argument("--allow-missing", action="store_true",
                   help="merge even when some selected indices are in no part (listed in the metadata)")

    def run(args):
        info = merge_parts(args.out, args.parts, allow_missing=args.allow_missing)
        extra = f"; missing {len(info['missing'])} indices" if info["missing"] else ""
        print(f"wrote {args.out}: {info['rows']} rows from {len(args.parts)} parts{extra}")

    p.set_defaults(func=run)
