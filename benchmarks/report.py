"""Markdown summary of a pytest-benchmark session: medians, throughput and ratios to each group's baseline."""
import os
import platform
from collections import defaultdict

import torch


def _median(bench) -> float:
    return bench.stats.median if hasattr(bench, "stats") and hasattr(bench.stats, "median") else bench["stats"]["median"]


def write_report(benchmarks, path: str, device: str, date: str) -> None:
    groups = defaultdict(list)
    for b in benchmarks:
        groups[b.group or b.name].append(b)
    lines = [f"# costsmooth benchmarks: {device}, {date}", "",
             f"torch {torch.__version__}, Python {platform.python_version()}, "
             f"CUDA {torch.version.cuda or '-'}; medians of pytest-benchmark rounds; ratio = baseline median / "
             f"median (higher is faster), baseline measured in the same run.", ""]
    for group, items in sorted(groups.items()):
        base = next((b for b in items if b.extra_info.get("role") == "baseline"), None)
        lines += [f"## {group}", "", "| variant | median (ms) | throughput | vs baseline | peak GPU MiB |",
                  "|---|---|---|---|---|"]
        for b in items:
            med = b.stats.median
            info = b.extra_info
            thr = ""
            if "bytes" in info:
                thr = f"{info['bytes'] / med / 1e9:.1f} GB/s"
            elif "images" in info:
                thr = f"{info['images'] / med:,.1f} images/s"
            elif "samples" in info:
                thr = f"{info['samples'] / med:,.0f} samples/s"
            ratio = f"{base.stats.median / med:.2f}x" if base is not None else "-"
            mem = f"{info['peak_mib']:.0f}" if "peak_mib" in info else "-"
            lines.append(f"| {info.get('variant', b.name)} | {med * 1e3:.3f} | {thr} | {ratio} | {mem} |")
        lines.append("")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines))
