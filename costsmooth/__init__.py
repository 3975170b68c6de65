"""costsmooth: fast, statistically sound randomized-smoothing certification, cost-sensitive first."""
from . import _C, ops, reference
from .sampling import SampleStatistics, sample_counts, sample_statistics

__version__ = _C.build_info()["version"]


def build_info() -> dict:
    """How the compiled extension was built: version, cuda, cuda_version, cuda_arch_list, openmp."""
    return dict(_C.build_info())


__all__ = ["ops", "reference", "sample_counts", "sample_statistics", "SampleStatistics", "build_info"]
