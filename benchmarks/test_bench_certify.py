"""End-to-end certification throughput (samples/s) of one input, against Cohen et al.'s loop.

Models with random weights on synthetic inputs (throughput does not depend on the data): a CIFAR
ResNet-110 on 3x32x32, a ResNet-50 on 3x224x224 and a 30-feature MLP (the breast-cancer demo's model,
n = 100000), where noise and vote are a visible share of the time. Variants: Cohen et al.'s loop at batch 400
(``costsmooth.reference.cohen_sample_counts``, the baseline), costsmooth's ``sample_counts`` at the
same batch (fp32; bf16 autocast + channels-last; and with CUDA graphs on a GPU), and the model's pure forward pass at that batch
on a fixed input in the same precision and memory format (the ceiling). Peak GPU memory is recorded on CUDA.
"""
import pytest
import torch

import costsmooth
from costsmooth import reference
from costsmooth.models import build_model

from conftest import synced

# arch, input shape, batch, samples on (CPU, GPU)
MODELS = {"cifar_resnet110": ("cifar_resnet110", (3, 32, 32), 400, 400, 100_000),
          "resnet50": ("resnet50", (3, 224, 224), 400, 32, 10_000),
          # the embedded demo's case: a small tabular model, where noise and vote are not negligible
          "mlp30": ("mlp", (30,), 1000, 100_000, 100_000)}
VARIANTS = ["cohen_loop", "costsmooth", "forward_only", "costsmooth_bf16_cl", "costsmooth_bf16_cl_graphs",
            "forward_only_bf16_cl"]


def _classes(name: str) -> int:
    return 10 if "cifar" in name else 2 if name == "mlp30" else 1000


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name, device, channels_last=False):
        key = (name, device, channels_last)
        if key not in cache:
            arch, shape, *_ = MODELS[name]
            torch.manual_seed(0)
            model = build_model(arch, _classes(name), shape).to(device).eval()
            cache[key] = model.to(memory_format=torch.channels_last) if channels_last else model
        return cache[key]
    return get


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_certification_throughput(benchmark, device, models, name, variant):
    arch, shape, batch, cpu_n, gpu_n = MODELS[name]
    n = gpu_n if device == "cuda" else cpu_n
    if device == "cpu":
        batch = min(batch, {"resnet50": 32, "mlp30": 1000}.get(name, 400))
    if variant.endswith("_graphs") and device != "cuda":
        pytest.skip("CUDA graphs need a GPU")
    if "_cl" in variant and len(shape) != 3:
        pytest.skip("channels-last needs image inputs")
    reduced = "_bf16_cl" in variant
    model = models(name, device, channels_last=reduced)
    classes = _classes(name)
    x = torch.rand(*shape, device=device)
    benchmark.group = f"certify {name} n={n} batch={batch} ({device})"
    if variant == "cohen_loop":
        fn = lambda: reference.cohen_sample_counts(model, x, n, 0.5, classes, batch_size=batch)
    elif variant == "costsmooth":
        fn = lambda: costsmooth.sample_counts(model, x[None], n, 0.5, batch_size=batch).cpu()
    elif variant.startswith("costsmooth_bf16_cl"):
        graphs = variant.endswith("_graphs")
        fn = lambda: costsmooth.sample_counts(model, x[None], n, 0.5, batch_size=batch, channels_last=True,
                                              autocast=torch.bfloat16, cuda_graphs=graphs).cpu()
    else:  # the model alone on a fixed batch, in the same precision and memory format
        xb = x.expand(batch, *shape).contiguous(memory_format=torch.channels_last if reduced else
                                                torch.contiguous_format)
        amp = torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=reduced)

        def fn():
            with torch.inference_mode(), amp:
                for _ in range(-(-n // batch)):
                    out = model(xb)
            return out
    counts = fn()
    if not variant.startswith("forward_only"):
        assert int(counts.sum()) == n
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.extra_info.update(variant=variant, samples=n, role="baseline" if variant == "cohen_loop" else "")
    benchmark.pedantic(synced(fn, device), rounds=3, iterations=1, warmup_rounds=0)
    if device == "cuda":
        benchmark.extra_info["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
