"""costsmooth: fast, statistically sound randomized-smoothing certification, cost-sensitive first."""
import torch  # noqa: F401  (loads libtorch before the extension)

from . import _C, ops, reference, stats
from .certify import Certificate, certify_from_counts
from .cost import CostMatrix
from .sampling import SampleStatistics, SamplingOptions, sample_counts, sample_statistics
from .smooth import Smooth

__version__ = _C.build_info()["version"]


def build_info() -> dict:
    """How the compiled extension was built: version, cuda, cuda_version, cuda_arch_list, openmp."""
    return dict(_C.build_info())


__all__ = ["ops", "reference", "stats", "sample_counts", "sample_statistics", "SampleStatistics", "SamplingOptions",
           "Smooth", "CostMatrix", "Certificate", "certify_from_counts", "build_info"]
