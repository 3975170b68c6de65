"""Scale-out gives the same certificates as one process: --shard parts joined by merge, torchrun with
input sharding and with sample splitting (gloo on CPU), and a killed rank resumed without loss."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from costsmooth.cli import main
from costsmooth.distributed import SampleSplit, merge_parts
from costsmooth.results import read_meta, read_tsv

from .test_cli import ROOT, certify_args, files, rows_without_time  # noqa: F401  (fixture)

COST = ["--seed-classes", "0", "--targets", "2"]


def counts_text(path):
    return open(str(path) + ".counts.jsonl").read()


def torchrun(files, nproc, out, *extra, timeout=240):
    torchrun_bin = os.path.join(os.path.dirname(sys.executable), "torchrun")
    launcher = [torchrun_bin] if os.path.exists(torchrun_bin) else [sys.executable, "-m", "torch.distributed.run"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = launcher + ["--nproc-per-node", str(nproc), "--master-port", str(29500 + os.getpid() % 1000), "-m",
                      "costsmooth"] + certify_args(files, out, "--quiet", "--device", "cpu", *COST, *extra)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def single(files):
    out = files / "one.tsv"
    assert main(certify_args(files, out, "--quiet", *COST)) == 0
    return out


def test_sample_split_pieces_cover_every_sample_once():
    for n in (1, 2, 7, 100, 100001):
        for world in (1, 2, 3, 5):
            pieces = [SampleSplit(r, world, torch.device("cpu")).piece(n) for r in range(world)]
            assert sum(m for _, m in pieces) == n
            assert all(pieces[r][0] + pieces[r][1] == pieces[r + 1][0] for r in range(world - 1))


def test_shard_parts_merged_equal_one_run(files, single, capsys):
    parts = []
    for i in range(3):
        part = files / f"p{i}.tsv"
        assert main(certify_args(files, part, "--quiet", "--shard", f"{i}/3", *COST)) == 0
        parts.append(str(part))
    assert [int(r["idx"]) for r in read_tsv(parts[1])] == list(range(1, 40, 3))
    merged = files / "merged.tsv"
    assert main(["merge", str(merged)] + parts) == 0
    assert rows_without_time(merged) == rows_without_time(single)
    assert counts_text(merged) == counts_text(single)
    assert read_meta(str(merged))["shard"] is None
    # a merged file resumes as one run (nothing left to do), and an extended part updates its metadata
    assert main(certify_args(files, merged, "--quiet", *COST)) == 0
    assert rows_without_time(merged) == rows_without_time(single)
    assert main(certify_args(files, parts[0], "--quiet", "--shard", "0/3", "--max", "50", *COST)) == 0
    assert read_meta(parts[0])["max"] == 50


def test_merge_refuses_mismatched_parts_and_reports_missing_ones(files, capsys):
    a, b = files / "a.tsv", files / "b.tsv"
    assert main(certify_args(files, a, "--quiet", "--shard", "0/2")) == 0
    assert main(certify_args(files, b, "--quiet", "--shard", "1/2", "--alpha", "0.01")) == 0
    capsys.readouterr()
    assert main(["merge", str(files / "m.tsv"), str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "other settings than" in err and "(alpha)" in err
    assert main(["merge", str(files / "m.tsv"), str(a)]) == 2
    assert "20 selected indices are in no part" in capsys.readouterr().err
    assert main(["merge", str(files / "m.tsv"), str(a), "--allow-missing"]) == 0
    assert read_meta(str(files / "m.tsv"))["missing_indices"] == list(range(1, 40, 2))
    with pytest.warns(UserWarning, match="in several parts with identical rows"):
        merge_parts(str(files / "m2.tsv"), [str(a), str(a)], allow_missing=True)


@pytest.mark.parametrize("nproc", [1, 2, 3])
def test_torchrun_input_sharding_equals_one_process(files, single, nproc):
    out = files / f"t{nproc}.tsv"
    res = torchrun(files, nproc, out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert rows_without_time(out) == rows_without_time(single)
    assert counts_text(out) == counts_text(single)


@pytest.mark.parametrize("nproc", [2, 3])  # one process has nothing to split (refused without torchrun ranks)
def test_torchrun_sample_splitting_equals_one_process(files, single, nproc):
    out = files / "s.tsv"
    res = torchrun(files, nproc, out, "--split-samples")
    assert res.returncode == 0, res.stderr[-3000:]
    assert rows_without_time(out) == rows_without_time(single)
    assert counts_text(out) == counts_text(single)


def _pids_of_rank(rank: int, marker: str):
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
            environ = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if marker in cmdline and f"RANK={rank}" in environ and "-m\0costsmooth" in cmdline:
            pids.append(int(pid))
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank's process through /proc")
def test_killing_one_rank_and_rerunning_loses_and_duplicates_nothing(files, single):
    out = files / "k.tsv"
    torchrun_bin = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    slow = certify_args(files, out, "--quiet", "--device", "cpu", *COST, "--batch", "500")
    cmd = [torchrun_bin, "--nproc-per-node", "2", "--master-port", str(30500 + os.getpid() % 1000), "-m",
           "costsmooth"] + slow
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    part1 = files / "k.tsv.part1-of-2"
    deadline = time.time() + 120
    while time.time() < deadline and not (part1.exists() and len(read_tsv(str(part1))) >= 2):
        time.sleep(0.02)
    victims = _pids_of_rank(1, str(out))
    assert victims, "rank 1 not found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert len(read_tsv(str(part1))) < 20  # rank 1 was stopped before finishing its shard
    res = torchrun(files, 2, out, "--batch", "500")
    assert res.returncode == 0, res.stderr[-3000:]
    assert rows_without_time(out) == rows_without_time(single)
    assert counts_text(out) == counts_text(single)


FAIL_FAST_SCRIPT = """
import sys, time
from costsmooth.distributed import FailFast, RankError, init_from_env
ctx = init_from_env()
try:
    with FailFast(ctx["rank"], ctx["world"], poll=0.2):
        if ctx["rank"] == 1:
            raise MemoryError("CUDA out of memory (simulated)")
        time.sleep(600)  # rank 0: long work that nothing else would interrupt
except RankError as err:
    print(f"error: {err}", file=sys.stderr, flush=True)
    time.sleep(60)  # the failing rank stays alive: only the fail-fast protocol can stop rank 0
"""


def test_a_failure_on_one_rank_stops_the_others_within_seconds(tmp_path):
    # Two ranks launched directly (as a SLURM step would: no torchrun agent to kill the others), gloo.
    # Rank 1 fails and stays alive; rank 0 sleeps for 600 s. Rank 0 must exit within 15 s of the start
    # of the failure (polls every 0.2 s; the rest is process start-up on a loaded machine).
    port = 31500 + os.getpid() % 1000
    base = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port))
    procs = [subprocess.Popen([sys.executable, "-c", FAIL_FAST_SCRIPT], env=dict(base, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (procs[1].poll() is None and _stderr_line(procs[1])):
            time.sleep(0.05)
        failed_at = time.time()
        assert procs[0].wait(timeout=15) == 2  # stopped by rank 1's failure
        assert time.time() - failed_at < 15
        assert procs[1].poll() is None  # rank 1 is still alive: rank 0 did not stop because its peer left
        assert procs[1]._line == "error: rank 1 of 2: CUDA out of memory (simulated)"
        assert procs[0].stderr.read().strip() == ""  # one message in all: the failing rank's
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def _stderr_line(proc):
    """Non-blocking: the first line rank 1 wrote to stderr, once it is there."""
    import select
    if getattr(proc, "_line", None):
        return proc._line
    if select.select([proc.stderr], [], [], 0)[0]:
        proc._line = proc.stderr.readline().strip()
    return getattr(proc, "_line", None)


def test_torchrun_nan_input_on_one_rank_one_message_and_resume(files, single):
    # Input 21 is NaN: rank 1 of 2 owns it (odd indices). One line names the rank and the cause; the
    # finished rows are kept, and the same command with --skip-invalid resumes and completes the run.
    data = torch.load(files / "data.pt")
    data["inputs"][21, 2] = float("nan")
    torch.save(data, files / "nan.pt")
    out = files / "n.tsv"
    args = ["certify", str(files / "nan.pt"), str(files / "model.pt"), "0.5", str(out), "--N0", "50", "--N", "2000",
            "--alpha", "0.001", "--batch", "4000", "--quiet", "--device", "cpu", *COST]
    torchrun_bin = os.path.join(os.path.dirname(sys.executable), "torchrun")
    launcher = [torchrun_bin] if os.path.exists(torchrun_bin) else [sys.executable, "-m", "torch.distributed.run"]
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    cmd = launcher + ["--nproc-per-node", "2", "--master-port", str(32500 + os.getpid() % 1000), "-m", "costsmooth"]
    res = subprocess.run(cmd + args, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode != 0
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: rank 1 of 2: input 21 of nan.pt contains NaN values; clean the data, or pass "
                      "--skip-invalid to record such inputs as not certified and go on"]
    assert "[rank0]" not in res.stderr and "Connection closed" not in res.stderr  # rank 0 stopped quietly
    res = subprocess.run(cmd + args + ["--skip-invalid"], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = rows_without_time(out)
    assert [r for r in rows if r["idx"] != "21"] == [r for r in rows_without_time(single) if r["idx"] != "21"]
    assert next(r for r in rows if r["idx"] == "21")["predict"] == "-1"
