"""Philox4x32-10: known answers (SPEC 1.1), the pure-PyTorch reference against the kernels, CPU vs CUDA."""
import torch

from costsmooth import ops, reference

from .conftest import cuda_only

KNOWN_ANSWERS = [  # (counter, key, output): Salmon et al. / Random123 known-answer vectors
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def test_philox_known_answers_kernel(device):
    for counter, key, expected in KNOWN_ANSWERS:
        out = ops.philox(torch.tensor([counter], dtype=torch.int64, device=device), key)
        assert out.cpu().tolist() == [list(expected)]


def test_philox_known_answers_reference():
    for counter, key, expected in KNOWN_ANSWERS:
        assert reference.philox4x32_10(torch.tensor(counter), key).tolist() == list(expected)


def test_philox_kernel_equals_reference_on_random_counters(device):
    g = torch.Generator().manual_seed(0)
    counters = torch.randint(0, 2**32, (4099, 4), generator=g, dtype=torch.int64)
    key = (0x12345678, 0x9ABCDEF0)
    expected = reference.philox4x32_10(counters, key)
    assert torch.equal(ops.philox(counters.to(device), key).cpu(), expected)


@cuda_only
def test_noise_words_bit_identical_cpu_cuda():
    g = torch.Generator().manual_seed(1)
    counters = torch.randint(0, 2**32, (100003, 4), generator=g, dtype=torch.int64)
    assert torch.equal(ops.philox(counters, (7, 11)), ops.philox(counters.cuda(), (7, 11)).cpu())
