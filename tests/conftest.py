import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import costsmooth

# CUDA tests are skipped only when no GPU is visible. A GPU with an extension built without CUDA is
# an error, not a skip: those tests then fail, so a CPU-only build can never pass as GPU-tested.
GPU_VISIBLE = torch.cuda.is_available()
HAS_CUDA = GPU_VISIBLE and costsmooth.build_info()["cuda"]
CUDA_REASON = "no CUDA device"

_skip_without_gpu = pytest.mark.skipif(not GPU_VISIBLE, reason=CUDA_REASON)
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, _skip_without_gpu])]


def cuda_only(test):
    """Mark a test as needing the CUDA build (skipped without a GPU, failed with a CPU-only build)."""
    return pytest.mark.cuda(_skip_without_gpu(test))


def _require_cuda_build(item):
    if GPU_VISIBLE and not HAS_CUDA and item.get_closest_marker("cuda"):
        pytest.fail("a GPU is visible but costsmooth was built without CUDA: rebuild with a CUDA torch "
                    "(or FORCE_CUDA=1) so that the CUDA kernels are tested")


def pytest_runtest_setup(item):
    _require_cuda_build(item)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def scalar_noise(tmp_path, x: torch.Tensor, n: int, sigma: float, **kwargs):
    """``ops.noisy_batch(x, n, sigma, **kwargs)`` in a fresh process with the scalar CPU noise kernels
    (``COSTSMOOTH_SCALAR_NOISE=1``): returns (the build's CPU noise path there, the noisy batch)."""
    torch.save(x, tmp_path / "x.pt")
    script = (f"import sys, torch, costsmooth; x = torch.load(sys.argv[1]); torch.save((costsmooth.build_info()"
              f"['cpu_noise'], costsmooth.ops.noisy_batch(x, {n!r}, {sigma!r}, **{kwargs!r})), sys.argv[2])")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, COSTSMOOTH_SCALAR_NOISE="1", PYTHONPATH=root)
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "x.pt"), str(tmp_path / "out.pt")], env=env,
                   check=True)
    return torch.load(tmp_path / "out.pt")


def write_cifar10(root):
    """A tiny CIFAR-10 python-pickle tree under ``root``: five training batches and a test batch of four
    random 32x32 images each, labelled 0, 1, 2, 9."""
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(os.path.join(root, name), "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 9]}, f)
