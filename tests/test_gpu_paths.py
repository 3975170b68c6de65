"""Frozen noise values (the reproducibility promise), and the GPU cases that run the first time a GPU
is visible: half-precision inputs and outputs, the multi-block vote path, the global-atomic path for
many classes and its shared-memory boundary (also run on the CPU), a non-default stream, CPU-vs-CUDA
noise values, autocast, batch_size="auto" sized from device memory, certify's bf16/channels-last
defaults."""
import warnings

import numpy as np
import pytest
import torch

from costsmooth import ops, reference, sample_counts

from .conftest import cuda_only

# Noise for x = 0 (so the values are the unit normals), seed 20261124, stream 1, inputs 7 and 8,
# samples 3 and 4, six elements each, in float64 output. Frozen: a change of the Philox counter
# layout, of Box-Muller or of the stream/index mapping changes them, and with them every
# certificate that users reproduce from a seed. The kernel and the reference must both match.
GOLDEN = [-0.7043657302856445, -1.477515459060669, -0.7788588404655457, 0.4203437566757202, 0.10429011285305023,
          0.4513363838195801, -0.7913781404495239, 1.5576837062835693, 0.7781506776809692, -0.1696224957704544,
          -2.271268844604492, 0.09479676932096481, -1.9929137229919434, 0.050637226551771164, 1.0966275930404663,
          -1.3180817365646362, 1.6395736932754517, 0.9549729824066162, 1.1537257432937622, 0.3404723107814789,
          -1.0871291160583496, -0.5925644040107727, -0.8838202953338623, -0.6236244440078735]
GOLDEN_ARGS = dict(seed=20261124, stream=1, index_offset=7, sample_offset=3)
TOL = ops.NORMALS_TOLERANCE  # the stated bound on the difference of the normals between kernels


def test_golden_noise_values_of_the_kernel(device):
    x = torch.zeros(2, 6, dtype=torch.float64, device=device)
    out = ops.noisy_batch(x, 2, 1.0, **GOLDEN_ARGS).reshape(-1).cpu()
    torch.testing.assert_close(out, torch.tensor(GOLDEN, dtype=torch.float64), atol=TOL, rtol=TOL)


def test_golden_noise_values_of_the_reference():
    x = torch.zeros(2, 6, dtype=torch.float64)
    out = reference.noisy_batch(x, 2, 1.0, **GOLDEN_ARGS).reshape(-1)
    torch.testing.assert_close(out, torch.tensor(GOLDEN, dtype=torch.float64), atol=TOL, rtol=TOL)


@cuda_only
@pytest.mark.parametrize("in_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cuda_noise_equals_cpu_noise_for_every_dtype(in_dtype, out_dtype):
    x = torch.rand(3, 3, 7, 5).to(in_dtype)
    cpu = ops.noisy_batch(x, 5, 0.3, seed=4, dtype=out_dtype)
    gpu = ops.noisy_batch(x.cuda(), 5, 0.3, seed=4, dtype=out_dtype).cpu()
    tol = {torch.float16: 2e-3, torch.bfloat16: 2e-2}.get(out_dtype, 2e-5)
    torch.testing.assert_close(gpu.double(), cpu.double(), atol=tol, rtol=tol)


@cuda_only
@pytest.mark.parametrize("rows", [1023, 1024, 1025, 4097])
def test_cuda_vote_count_with_more_than_one_block_of_rows(rows):
    logits = torch.randn(2 * rows, 10, device="cuda")
    counts = torch.zeros(2, 10, dtype=torch.int64, device="cuda")
    ops.vote_count(logits, rows, counts)
    expected = torch.stack([torch.bincount(logits[b * rows:(b + 1) * rows].argmax(1).cpu(), minlength=10)
                            for b in range(2)])
    assert torch.equal(counts.cpu(), expected)


# The CUDA kernel keeps a block's class histogram and its NaN-row counter in (classes + 1) int32 of
# dynamic shared memory, within the 48 KiB a launch may use without opting in: up to 12,287 classes
# vote in shared memory, from 12,288 on in global memory (csrc/kernels.h, kVoteMaxSharedClasses).
# The CPU kernel has no such limit; it runs the same class counts, so both paths meet one oracle.
@pytest.mark.parametrize("classes", [12286, 12287, 12288, 12289, 20000])
def test_vote_count_around_the_shared_memory_limit(device, classes):
    torch.manual_seed(classes)
    logits = torch.randn(300, classes, device=device)
    logits[7, 5] = float("nan")  # one NaN row of input 0: counted apart, never as a vote
    counts = torch.zeros(3, classes, dtype=torch.int64, device=device)
    nan_rows = ops.vote_count_nan(logits, 100, counts)
    expected, expected_nan = reference.vote_count(logits.cpu(), 100)
    assert torch.equal(counts.cpu(), expected)
    assert nan_rows.tolist() == expected_nan.tolist() == [1, 0, 0]


@cuda_only
def test_cuda_ops_on_a_non_default_stream():
    x = torch.rand(4, 3, 8, 8, device="cuda")
    expected = ops.noisy_batch(x, 50, 0.5, seed=1)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        out = ops.noisy_batch(x, 50, 0.5, seed=1)
        logits = out.flatten(1)[:, :10]
        counts = torch.zeros(4, 10, dtype=torch.int64, device="cuda")
        ops.vote_count(logits, 50, counts)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    assert torch.equal(out, expected)
    ref = torch.stack([torch.bincount(expected.flatten(1)[b * 50:(b + 1) * 50, :10].argmax(1), minlength=10)
                       for b in range(4)])
    assert torch.equal(counts, ref)


@cuda_only
def test_cuda_counts_under_autocast_equal_counts_of_the_half_precision_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5)).cuda()
    x = torch.rand(3, 3, 4, 4, device="cuda")
    amp = sample_counts(model, x, 500, 0.5, seed=2, autocast=torch.bfloat16)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        noisy = ops.noisy_batch(x, 500, 0.5, seed=2, stream=1)
        votes = model(noisy).argmax(1).view(3, 500)
    manual = torch.stack([torch.bincount(v, minlength=5) for v in votes])
    assert torch.equal(amp, manual)


@cuda_only
def test_cuda_graphs_are_captured_once_and_reused_across_calls(monkeypatch):
    from costsmooth import Smooth, sampling

    built = []
    real = sampling._GraphedVotes

    def counting(*args, **kwargs):
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "_GraphedVotes", counting)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5)).cuda()
    x = torch.randn(3, 12, device="cuda")
    eager = Smooth(model, 5, 0.5, batch_size=256, seed=1)
    graphed = Smooth(model, 5, 0.5, batch_size=256, seed=1, cuda_graphs=True)
    for _ in range(2):  # the second call replays the graph captured by the first
        a = eager.certify_batch(x, n0=100, n=4096)
        b = graphed.certify_batch(x, n0=100, n=4096)
        assert [c.counts.tolist() for c in a] == [c.counts.tolist() for c in b]
    assert len(built) == 1 and len(graphed._graphs) == 1



@cuda_only
def test_cuda_auto_batch_size_is_measured_from_device_memory(monkeypatch):
    from costsmooth import Smooth, sampling

    monkeypatch.setattr(sampling, "_FITTING_BATCH", {})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Flatten(),
                                torch.nn.Linear(16 * 224 * 224, 10)).cuda()  # about 4 MB per row in fp32
    x = torch.rand(2, 3, 224, 224, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the measured size must fit: no out-of-memory halving
        auto = sample_counts(model, x, 4096, 0.25, seed=1, batch_size="auto")
    (size,) = sampling._FITTING_BATCH.values()
    free, _ = torch.cuda.mem_get_info()
    assert sampling.AUTO_PROBE_ROWS[1] < size < sampling.AUTO_BATCH_MAX
    assert size * 3 * 224 * 224 * 4 < free  # the noise buffer alone of a call fits beside the model
    assert torch.equal(auto, sample_counts(model, x, 4096, 0.25, seed=1, batch_size=512))
    # the sequential scheduler's packed calls use the same measured size, not a constant
    smooth = Smooth(model, 10, 0.25, batch_size="auto", seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        packed = smooth.certify_batch_at(x, 0.1, 0.01, max_n=4096, n0=64)
    fixed = Smooth(model, 10, 0.25, batch_size=512, seed=1).certify_batch_at(x, 0.1, 0.01, max_n=4096, n0=64)
    for a, b in zip(packed, fixed):
        assert (a.decision, a.samples) == (b.decision, b.samples) and np.array_equal(a.counts, b.counts)


@cuda_only
def test_cuda_certify_defaults_to_bf16_and_channels_last(tmp_path, capsys):
    from costsmooth.args import resolve_formats
    from costsmooth.cli import main
    from costsmooth.data import load_dataset
    from costsmooth.results import read_meta

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5))
    torch.save({"inputs": torch.rand(6, 3, 8, 8), "labels": torch.arange(6) % 5, "split": ["test"] * 6},
               tmp_path / "data.pt")
    dataset = load_dataset(str(tmp_path / "data.pt"))
    formats = resolve_formats(None, None, model.cuda(), dataset, "cuda")
    assert (formats.autocast, formats.channels_last) == (torch.bfloat16, True)
    assert "bf16 by default on cuda" in formats.summary()
    exact = resolve_formats("fp32", False, model, dataset, "cuda")
    assert (exact.autocast, exact.channels_last, exact.chosen) == (None, False, [])  # the exact model, as asked
    torch.jit.script(model.cpu()).save(str(tmp_path / "model.pt"))
    out = tmp_path / "out.tsv"
    assert main(["certify", str(tmp_path / "data.pt"), str(tmp_path / "model.pt"), "0.25", str(out), "--N0", "50",
                 "--N", "1000", "--device", "cuda", "--quiet"]) == 0
    assert read_meta(str(out))["precision"] == "bfloat16"
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(
        "model run in bf16 autocast, channels-last (bf16 by default on cuda; channels-last on by default on cuda)")


def _cudart():
    """The CUDA runtime library this process loaded for torch (ctypes), to leave an error pending."""
    import ctypes

    paths = [line.split()[-1] for line in open("/proc/self/maps") if "libcudart" in line]
    if not paths:
        pytest.skip("torch's CUDA runtime is linked statically: no error can be left pending from Python")
    return ctypes.CDLL(paths[0])


@cuda_only
def test_cuda_an_earlier_error_is_not_reported_as_the_ops_launch_failure():
    x = torch.zeros(2, 6, device="cuda")
    cudart = _cudart()
    assert cudart.cudaSetDevice(10**6) != 0  # an invalid device ordinal: left pending as the last error
    with pytest.raises(RuntimeError, match="noisy_batch: a CUDA error from earlier work was pending .*not caused by "
                                           "noisy_batch"):
        ops.noisy_batch(x, 4, 0.5, seed=1)
    out = ops.noisy_batch(x, 4, 0.5, seed=1)  # the earlier error was read and cleared: the op works again
    torch.testing.assert_close(out.cpu(), ops.noisy_batch(x.cpu(), 4, 0.5, seed=1), atol=TOL, rtol=0)
    assert cudart.cudaSetDevice(10**6) != 0
    with pytest.raises(RuntimeError, match="vote_count: a CUDA error from earlier work was pending"):
        ops.vote_count(torch.randn(8, 3, device="cuda"), 4, torch.zeros(2, 3, dtype=torch.int64, device="cuda"))


@cuda_only
def test_cuda_normals_agree_with_the_cpu_kernels_within_the_stated_tolerance():
    x = torch.zeros(16, 65536, dtype=torch.float64)  # x = 0, sigma = 1: the unit normals, 4 million of them
    cpu = ops.noisy_batch(x, 4, 1.0, seed=20261206, stream=1)
    gpu = ops.noisy_batch(x.cuda(), 4, 1.0, seed=20261206, stream=1).cpu()
    assert float((gpu - cpu).abs().max()) <= ops.NORMALS_TOLERANCE
