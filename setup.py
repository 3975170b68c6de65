"""Build of costsmooth and its compiled extension costsmooth._C.

The C++ CPU kernels are always built. The CUDA kernels are built when torch has CUDA and a CUDA
toolkit is found, or when FORCE_CUDA=1 (FORCE_CUDA=0 forces a CPU-only build).

GPU architectures: TORCH_CUDA_ARCH_LIST when set; else the visible GPUs' architectures; else a
portable list for the toolkit's CUDA version that ends in +PTX, so that newer GPUs JIT-compile the
PTX (see ``default_arch_list``). The resolved configuration is printed, so a silent CPU-only build
is visible, and ``build_info()`` reports the architecture list.

Install with the torch that is already there: ``pip install --no-build-isolation .`` (build isolation
would fetch and build against another torch from the index, or fail offline).

``python setup.py --nvcc-commands BUILD_DIR`` prints, one per line, the nvcc commands that torch's
BuildExtension itself composes for the .cu files of a CUDA build of this extension, and exits. They
are captured, not re-derived: BuildExtension runs as in a real build until it has written its ninja
build file (every flag composed: torch's COMMON_NVCC_FLAGS, -fPIC, this project's flags, -std, the
-gencode flags of the architecture list, defines, includes), compiling stops there, and the .cu
commands are read back from that file with ``ninja -t commands``. CI runs exactly those commands, so
a kernel that breaks the real build cannot pass CI. On a torch without CUDA (FORCE_CUDA=1 is set for
the capture) torch leaves its CUDA_HOME unset: the capture sets it with torch's own search (CUDA_HOME,
else the nvcc on PATH), and BuildExtension then omits only nvcc's dependency-file flags (``-MD -MF``),
which change no compiled code.
"""
import glob
import os
import re
import subprocess
import sys

from setuptools import find_packages, setup
import torch
from torch.utils import cpp_extension
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))
NVCC_EXTRA = ["-O3", "--expt-relaxed-constexpr"]


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


def toolkit_version():
    """(major, minor) of the nvcc in CUDA_HOME (or on PATH), else of torch's CUDA, else None."""
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else "nvcc"
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
        match = re.search(r"release (\d+)\.(\d+)", out)
        if match:
            return int(match.group(1)), int(match.group(2))
    except (OSError, subprocess.CalledProcessError):
        pass
    if torch.version.cuda:
        major, minor = torch.version.cuda.split(".")[:2]
        return int(major), int(minor)
    return None


def default_arch_list(version):
    """Turing to Hopper, plus Blackwell (10.0, 12.0) where the toolkit supports it; the last entry
    carries +PTX so that any newer GPU can JIT-compile the kernels. CUDA 13 dropped Volta and older."""
    arches = ["7.5", "8.0", "8.6", "8.9", "9.0"]
    if version is not None and version < (13, 0):
        arches = ["7.0"] + arches
    if version is not None and version >= (12, 8):
        arches += ["10.0", "12.0"]
    arches[-1] += "+PTX"
    return ";".join(arches)


def resolve_arch_list():
    """(arch list, where it came from): TORCH_CUDA_ARCH_LIST, the visible GPUs, or the default."""
    env = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if env:
        return env, "TORCH_CUDA_ARCH_LIST"
    if torch.version.cuda is not None and torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join("%d.%d" % c for c in caps), "visible GPUs"
    return default_arch_list(toolkit_version()), "default (no GPU visible)"


def openmp_flags():
    if sys.platform == "darwin":  # Apple clang has no -fopenmp without extra setup
        return [], []
    return ["-fopenmp"], ["-fopenmp"]


def define_macros(with_cuda, arch_list):
    macros = [("COSTSMOOTH_VERSION", '"%s"' % VERSION)]
    if with_cuda:
        macros += [("COSTSMOOTH_WITH_CUDA", None), ("COSTSMOOTH_CUDA_ARCH_LIST", '"%s"' % arch_list)]
    return macros


def extension():
    with_cuda, reason = resolve_cuda()
    omp_compile, omp_link = openmp_flags()
    sources = [os.path.join("csrc", "ops.cpp")] + sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx_flags = ["-O3"] + omp_compile
    arch_list, arch_source = "", ""
    if with_cuda:
        arch_list, arch_source = resolve_arch_list()
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    print("costsmooth build: version=%s cuda=%s (%s) arch_list=%s%s openmp=%s torch=%s"
          % (VERSION, with_cuda, reason, arch_list or "-", " (%s)" % arch_source if arch_source else "",
             bool(omp_compile), torch.__version__), flush=True)
    kwargs = dict(
        name="costsmooth._C",
        sources=sources,
        define_macros=define_macros(with_cuda, arch_list),
        extra_compile_args={"cxx": cxx_flags, "nvcc": list(NVCC_EXTRA)},
        extra_link_args=omp_link,
        depends=sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)),
    )
    return CUDAExtension(**kwargs) if with_cuda else CppExtension(**kwargs)


SETUP = dict(
    version=VERSION,
    packages=find_packages(include=["costsmooth", "costsmooth.*"]),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)


class _BuildFileWritten(Exception):
    """Raised in place of running ninja: BuildExtension has written its build file."""


def nvcc_commands(build_dir):
    """The nvcc command lines BuildExtension runs for this extension's .cu files, captured from its
    own ninja build file (see the module docstring); ``build_dir`` receives the build file."""
    def stop_before_compiling(build_directory, verbose, error_prefix):
        raise _BuildFileWritten(build_directory)

    os.environ["FORCE_CUDA"] = "1"
    if cpp_extension.CUDA_HOME is None:  # a torch without CUDA leaves it unset: find it as a CUDA torch does
        cpp_extension.CUDA_HOME = cpp_extension._find_cuda_home()
    cpp_extension._run_ninja_build = stop_before_compiling
    build_temp = os.path.abspath(build_dir)
    try:
        setup(ext_modules=[extension()], script_args=["-q", "build_ext", "--build-temp", build_temp,
                                                      "--build-lib", build_temp], **SETUP)
    except _BuildFileWritten as written:
        ninja_dir = written.args[0]
    else:
        sys.exit("costsmooth: BuildExtension compiled nothing with ninja; is ninja installed?")
    targets = subprocess.run(["ninja", "-C", ninja_dir, "-t", "targets", "rule", "cuda_compile"],
                             capture_output=True, text=True, check=True).stdout.split()
    if not targets:
        sys.exit("costsmooth: BuildExtension's build file compiles no .cu file")
    return [subprocess.run(["ninja", "-C", ninja_dir, "-t", "commands", "-s", target], capture_output=True,
                           text=True, check=True).stdout.strip() for target in targets]


if "pip-build-env" in (torch.__file__ or ""):
    sys.exit("costsmooth: pip's build isolation imported its own torch (%s), which the extension would link "
             "against instead of yours; install with: pip install --no-build-isolation ." % torch.__file__)

if "--nvcc-commands" in sys.argv:
    where = sys.argv.index("--nvcc-commands") + 1
    if where >= len(sys.argv):
        sys.exit("usage: python setup.py --nvcc-commands BUILD_DIR")
    print("\n".join(nvcc_commands(sys.argv[where])))
    sys.exit(0)

setup(ext_modules=[extension()], **SETUP)
