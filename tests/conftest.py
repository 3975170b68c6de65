import pytest
import torch

import costsmooth

HAS_CUDA = torch.cuda.is_available() and costsmooth.build_info()["cuda"]
CUDA_REASON = ("no CUDA device" if not torch.cuda.is_available()
               else "costsmooth was built without CUDA (rebuild with FORCE_CUDA=1)")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason=CUDA_REASON))]
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason=CUDA_REASON)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param
