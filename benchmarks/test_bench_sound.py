"""Sound-mode noise (exact grid cells, ``ops.noisy_batch(..., grid=1/255)``) against the standard
Gaussian noise path (the baseline, measured in the same run) on 8-bit images: the sound path should
stay within 1.2x of the standard one (ratio >= 0.83 in the report)."""
import pytest
import torch

from costsmooth import ops, reference

from conftest import synced

# rows per call: (CPU, GPU)
CASES = {"3x32x32": ((3, 32, 32), 512, 16384), "3x224x224": ((3, 224, 224), 32, 1024)}


@pytest.mark.parametrize("sigma", [0.25, 1.0])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("variant", ["gaussian", "sound"])
def test_sound_noise(benchmark, device, case, sigma, variant):
    shape, cpu_rows, gpu_rows = CASES[case]
    n = gpu_rows if device == "cuda" else cpu_rows
    x = torch.randint(0, 256, (1, *shape), generator=torch.Generator().manual_seed(0)).float().div(255).to(device)
    out = torch.empty(n, *shape, device=device)
    benchmark.group = f"sound noise {case} sigma={sigma} ({n} samples, {device})"
    grid = 1 / 255 if variant == "sound" else None
    if grid is not None:
        assert torch.equal(ops.noisy_batch(x, 4, sigma, seed=0, grid=grid).cpu(),
                           reference.noisy_grid(x.cpu(), 4, sigma, grid, seed=0))
    fn = lambda: ops.noisy_batch(x, n, sigma, seed=0, grid=grid, out=out)
    benchmark.extra_info.update(variant=variant, bytes=n * x[0].numel() * 4,
                                role="baseline" if variant == "gaussian" else "")
    benchmark.pedantic(synced(fn, device), rounds=15, iterations=1, warmup_rounds=2)
