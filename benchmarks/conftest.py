"""Benchmark fixtures: the device, a synchronising timer wrapper, and the report written at the end.

Run with ``./run.sh bench`` (CPU here, CUDA when present). Each benchmark checks its result once
outside the timed region; CUDA timings synchronise before the clock is read. At the end a summary
with medians and ratios against the baseline of each group (measured in the same run) is written to
``benchmarks/results/<device>-<date>.md``.
"""
import datetime
import os
import re

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform
    return f"cpu-{platform.processor() or platform.machine()}-{os.cpu_count()}cores"


def synced(fn, device):
    """fn, followed by a device synchronisation so that the timer sees the finished work."""
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def pytest_sessionfinish(session, exitstatus):
    bs = getattr(session.config, "_benchmarksession", None)
    if bs is None or not bs.benchmarks:
        return
    from report import write_report  # benchmarks/report.py
    device = "cuda" if any("cuda" in b.name for b in bs.benchmarks) else "cpu"
    name = re.sub(r"[^A-Za-z0-9]+", "-", device_name(device)).strip("-").lower()
    date = datetime.date.today().isoformat()
    path = os.path.join(os.path.dirname(__file__), "results", f"{name}-{date}.md")
    write_report(bs.benchmarks, path, device_name(device), date)
    print(f"\nbenchmark report: {path}")
