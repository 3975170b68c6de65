"""The fused ops against their plain-PyTorch baselines (and, on a GPU, a device-to-device copy).

noisy_batch vs ``x.repeat_interleave(n) + sigma * torch.randn(...)``; vote_count vs
``argmax`` + ``bincount``. Sizes: 3x32x32 and 3x224x224 inputs, 10 and 1000 classes.
"""
import pytest
import torch

from costsmooth import ops, reference

from conftest import synced

# rows per call: (CPU, GPU)
NOISE_CASES = {"3x32x32": ((3, 32, 32), 512, 16384), "3x224x224": ((3, 224, 224), 32, 1024)}
VOTE_CASES = {"C=10": (10, 100_000, 4_000_000), "C=1000": (1000, 10_000, 400_000)}


def _run(benchmark, fn, device, **info):
    benchmark.extra_info.update(info)
    return benchmark.pedantic(synced(fn, device), rounds=7, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("case", NOISE_CASES)
@pytest.mark.parametrize("variant", ["costsmooth", "randn+add", "copy"])
def test_noisy_batch(benchmark, device, case, variant):
    shape, cpu_rows, gpu_rows = NOISE_CASES[case]
    n = gpu_rows if device == "cuda" else cpu_rows
    x = torch.rand(1, *shape, device=device)
    benchmark.group = f"noisy_batch {case} ({n} samples, {device})"
    out_bytes = n * x[0].numel() * 4
    if variant == "costsmooth":
        torch.testing.assert_close(ops.noisy_batch(x, 4, 0.5, seed=0), reference.noisy_batch(x, 4, 0.5, seed=0),
                                   atol=2e-5, rtol=2e-5)
        fn = lambda: ops.noisy_batch(x, n, 0.5, seed=0)
    elif variant == "randn+add":
        fn = lambda: x.repeat_interleave(n, 0) + 0.5 * torch.randn(n, *shape, device=device)
    else:
        if device != "cuda":
            pytest.skip("the copy bandwidth reference is measured on GPUs only")
        src = torch.empty(n, *shape, device=device)
        dst = torch.empty_like(src)
        fn = lambda: dst.copy_(src)  # reads and writes: report the written bytes like the others
    _run(benchmark, fn, device, variant=variant, bytes=out_bytes,
         role="baseline" if variant == "randn+add" else "")


@pytest.mark.parametrize("case", VOTE_CASES)
@pytest.mark.parametrize("variant", ["costsmooth", "argmax+bincount", "copy"])
def test_vote_count(benchmark, device, case, variant):
    classes, cpu_rows, gpu_rows = VOTE_CASES[case]
    rows = gpu_rows if device == "cuda" else cpu_rows
    n = rows // 4  # four inputs
    logits = torch.randn(rows, classes, device=device)
    benchmark.group = f"vote_count {case} ({rows} rows, {device})"
    if variant == "costsmooth":
        assert torch.equal(ops.vote_count(logits, n), reference.vote_count(logits, n)[0])
        fn = lambda: ops.vote_count(logits, n)
    elif variant == "argmax+bincount":
        owner = torch.arange(rows, device=device) // n
        fn = lambda: torch.bincount(owner * classes + logits.argmax(1), minlength=4 * classes).view(4, classes)
    else:
        if device != "cuda":
            pytest.skip("the copy bandwidth reference is measured on GPUs only")
        dst = torch.empty_like(logits)
        fn = lambda: dst.copy_(logits)
    _run(benchmark, fn, device, variant=variant, bytes=logits.numel() * 4,
         role="baseline" if variant == "argmax+bincount" else "")
