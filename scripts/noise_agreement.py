"""How closely the noise kernels' normals agree: CPU AVX2 (SLEEF), CPU scalar (libm), the pure-PyTorch
reference and, when a GPU is visible, CUDA.

Every kernel computes the same Philox words (tested bit for bit); the normals are Box-Muller
transforms of them, whose log, sqrt and sincos differ in the last bits between libraries. This
prints the largest absolute and relative differences of the normals over about two million draws,
against the AVX2 kernel, the share of normals that are bit-identical, and the tolerance the tests
hold every kernel to (``ops.NORMALS_TOLERANCE``).

    OMP_NUM_THREADS=1 ./run.sh python scripts/noise_agreement.py [--elements 2000000]

The scalar kernel runs in a subprocess with COSTSMOOTH_SCALAR_NOISE=1 (the kernel is chosen once per
process).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import torch

import costsmooth
from costsmooth import ops, reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = dict(seed=20261206, stream=1, index_offset=3, sample_offset=11)


def normals(elements: int, device="cpu", kernel=ops.noisy_batch) -> torch.Tensor:
    """About ``elements`` unit normals (x = 0, sigma = 1) in float64: 16 inputs x 64 samples x dim."""
    dim = max(1, elements // (16 * 64))
    x = torch.zeros(16, dim, dtype=torch.float64, device=device)
    return kernel(x, 64, 1.0, **ARGS).reshape(-1).cpu()


def scalar_normals(elements: int) -> torch.Tensor:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "z.pt")
        code = ("import sys, torch, costsmooth; from scripts.noise_agreement import normals; "
                "assert costsmooth.build_info()['cpu_noise'] == 'scalar'; "
                "torch.save(normals(int(sys.argv[1])), sys.argv[2])")
        path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, COSTSMOOTH_SCALAR_NOISE="1", PYTHONPATH=path)
        subprocess.run([sys.executable, "-c", code, str(elements), out], env=env, check=True, cwd=ROOT)
        return torch.load(out, weights_only=True)


def compare(name: str, z: torch.Tensor, base: torch.Tensor) -> None:
    diff = (z - base).abs()
    rel = diff / base.abs().clamp_min(1e-300)
    print(f"{name:<22} max |dz| {diff.max().item():.3g}   max |dz|/|z| {rel.max().item():.3g}   "
          f"bit-identical {(diff == 0).double().mean().item():.1%}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--elements", type=int, default=2_000_000, help="normals compared")
    args = parser.parse_args()
    info = costsmooth.build_info()
    if info["cpu_noise"] != "avx2":
        sys.exit("this CPU or build has no AVX2 noise kernel: nothing to compare the scalar kernel against")
    base = normals(args.elements)
    print(f"{base.numel():,} normals; baseline: the AVX2 kernel (torch {torch.__version__}, "
          f"{ops.describe_device('cpu')['name']}); the tests' tolerance: {ops.NORMALS_TOLERANCE:g}")
    compare("CPU scalar (libm)", scalar_normals(args.elements), base)
    compare("reference (PyTorch)", normals(args.elements, kernel=reference.noisy_batch), base)
    if torch.cuda.is_available() and info["cuda"]:
        compare(f"CUDA ({torch.cuda.get_device_name()})", normals(args.elements, "cuda"), base)


if __name__ == "__main__":
    main()
