"""Build of costsmooth and its compiled extension costsmooth._C.

The C++ CPU kernels are always built. The CUDA kernels are built when torch has CUDA and a CUDA
toolkit is found, or when FORCE_CUDA=1 (FORCE_CUDA=0 forces a CPU-only build). TORCH_CUDA_ARCH_LIST
selects the GPU architectures (default "8.0;9.0": A100 and H100/H200). The resolved configuration
is printed so that a silent CPU-only build is visible.
"""
import glob
import os
import sys

from setuptools import find_packages, setup
import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;9.0"


def resolve_cuda():
    force = os.environ.get("FORCE_CUDA")
    if force == "1":
        return True, "FORCE_CUDA=1"
    if force == "0":
        return False, "FORCE_CUDA=0"
    if torch.version.cuda is None:
        return False, "torch %s has no CUDA" % torch.__version__
    if CUDA_HOME is None:
        return False, "no CUDA toolkit found (set CUDA_HOME)"
    return True, "torch %s has CUDA %s" % (torch.__version__, torch.version.cuda)


def openmp_flags():
    if sys.platform == "darwin":  # Apple clang has no -fopenmp without extra setup
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


def extension():
    with_cuda, reason = resolve_cuda()
    omp_compile, omp_link = openmp_flags()
    sources = [os.path.join("csrc", "ops.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    define_macros = [("COSTSMOOTH_VERSION", '"%s"' % VERSION)]
    cxx_flags = ["-O3"] + omp_compile
    arch_list = ""
    if with_cuda:
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCH_LIST
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros += [("COSTSMOOTH_WITH_CUDA", None), ("COSTSMOOTH_CUDA_ARCH_LIST", '"%s"' % arch_list)]
    print("costsmooth build: version=%s cuda=%s (%s) arch_list=%s openmp=%s torch=%s"
          % (VERSION, with_cuda, reason, arch_list or "-", bool(omp_compile), torch.__version__), flush=True)
    kwargs = dict(
        name="costsmooth._C",
        sources=sources,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
        extra_link_args=omp_link,
        depends=sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)),
    )
    return CUDAExtension(**kwargs) if with_cuda else CppExtension(**kwargs)


setup(
    version=VERSION,
    packages=find_packages(include=["costsmooth", "costsmooth.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
