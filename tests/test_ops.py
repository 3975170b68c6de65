"""Each compiled op against its pure-PyTorch reference, on odd and empty sizes, layouts and dtypes."""
import pytest
import torch

from costsmooth import ops, reference
from tests.conftest import scalar_noise

# float32 normals: the kernels and the reference compute log/cos/sin with different libraries
# (glibc or CUDA vs torch's vectorised ones), which agree to a few ulp.
TOL = {torch.float32: dict(atol=2e-5, rtol=2e-5), torch.float64: dict(atol=2e-5, rtol=2e-5),
       torch.float16: dict(atol=2e-3, rtol=2e-3), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def assert_close_to_reference(x, n, sigma, dtype=None, channels_last=False, **kw):
    out = ops.noisy_batch(x, n, sigma, dtype=dtype, channels_last=channels_last, **kw)
    ref = reference.noisy_batch(x, n, sigma, dtype=dtype, channels_last=channels_last, **kw)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    if channels_last:
        assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, **TOL[out.dtype])
    return out


@pytest.mark.parametrize("dim", [1, 3, 129, 1001])
@pytest.mark.parametrize("batch,n", [(0, 3), (1, 1), (3, 5)])
def test_noisy_batch_matches_reference_odd_sizes(device, dim, batch, n):
    x = torch.rand(batch, dim, device=device)
    assert_close_to_reference(x, n, 0.37, seed=11, stream=1, index_offset=5, sample_offset=17)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.float64, torch.float16])
def test_noisy_batch_dtypes(device, in_dtype, out_dtype):
    x = torch.rand(2, 3, 5, 7, device=device).to(in_dtype)
    assert_close_to_reference(x, 4, 0.5, seed=3, dtype=out_dtype)


def test_noisy_batch_channels_last_holds_the_same_values(device):
    x = torch.rand(3, 3, 5, 6, device=device)
    out = assert_close_to_reference(x, 4, 0.25, seed=9, channels_last=True)
    plain = ops.noisy_batch(x, 4, 0.25, seed=9)
    assert torch.equal(out, plain)  # same logical values, different memory format


def test_noisy_batch_non_contiguous_input(device):
    base = torch.rand(6, 8, 9, device=device)
    x = base.transpose(1, 2)[::2]
    assert not x.is_contiguous()
    out = assert_close_to_reference(x, 3, 0.5, seed=1)
    assert torch.equal(out, ops.noisy_batch(x.contiguous(), 3, 0.5, seed=1))


def test_noisy_batch_per_input_sigma(device):
    x = torch.zeros(3, 2000, device=device)
    sigma = torch.tensor([0.1, 1.0, 3.0], device=device)
    out = assert_close_to_reference(x, 50, sigma, seed=2).view(3, -1)
    std = out.std(dim=1)
    torch.testing.assert_close(std.cpu(), sigma.cpu(), rtol=0.01, atol=0)  # 10^5 draws: std error ~0.2%


def test_noisy_batch_is_x_plus_sigma_times_unit_noise(device):
    x = torch.rand(2, 33, device=device)
    unit = ops.noisy_batch(torch.zeros_like(x), 3, 1.0, seed=4)
    scaled = ops.noisy_batch(x, 3, 0.5, seed=4)
    torch.testing.assert_close(scaled, x.repeat_interleave(3, 0) + 0.5 * unit)


@pytest.mark.parametrize("channels_last,dtype", [(False, torch.float32), (True, torch.float32),
                                                 (False, torch.bfloat16), (True, torch.float16)])
def test_noisy_batch_into_a_reused_buffer(device, channels_last, dtype):
    x = torch.rand(2, 3, 5, 7, device=device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    buffer = torch.full((20, 3, 5, 7), float("nan"), device=device, dtype=dtype).contiguous(memory_format=fmt)
    out = ops.noisy_batch(x, 4, 0.3, seed=8, index_offset=3, out=buffer[:8])
    assert out.data_ptr() == buffer.data_ptr()
    assert torch.equal(buffer[:8], ops.noisy_batch(x, 4, 0.3, seed=8, index_offset=3, dtype=dtype,
                                                   channels_last=channels_last))
    assert torch.isnan(buffer[8:].float()).all()  # rows past the slice untouched


def test_noisy_batch_into_rejects_bad_buffers():
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"out must be a float tensor of shape \[8, 3, 4, 4\]"):
        ops.noisy_batch(x, 4, 0.5, seed=0, out=torch.empty(9, 3, 4, 4))
    with pytest.raises(ValueError, match="contiguous or channels-last"):
        ops.noisy_batch(x, 4, 0.5, seed=0, out=torch.empty(8, 4, 4, 3).permute(0, 3, 2, 1))


def vote_reference(logits, n, counts=None):
    counts, nan_rows = reference.vote_count(logits, n, counts)
    assert int(nan_rows.sum()) == 0
    return counts


@pytest.mark.parametrize("classes", [1, 3, 129, 1001])
@pytest.mark.parametrize("batch,n", [(0, 2), (1, 1), (3, 7), (2, 1001)])
def test_vote_count_matches_reference(device, classes, batch, n):
    logits = torch.randn(batch * n, classes, device=device)
    assert torch.equal(ops.vote_count(logits, n), vote_reference(logits, n))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_vote_count_dtypes_and_ties_go_to_lowest_class(device, dtype):
    logits = torch.randn(300, 10, device=device).to(dtype)
    logits[::3, 4] = logits[::3, 7] = 100  # exact ties between classes 4 and 7 on every third row
    counts = ops.vote_count(logits, 100)
    assert torch.equal(counts, vote_reference(logits, 100))
    tied = ops.vote_count(logits[::3], 100)
    assert tied[:, 7].sum() == 0 and tied[:, 4].sum() == 100


def test_vote_count_non_contiguous_and_accumulating(device):
    wide = torch.randn(40, 25, device=device)
    logits = wide[:, ::2]  # row stride 25, column stride 2
    counts = torch.ones(4, 13, dtype=torch.int64, device=device)
    ops.vote_count(logits, 10, counts)
    assert torch.equal(counts, vote_reference(logits.contiguous(), 10) + 1)
    t = torch.randn(13, 40, device=device).t()  # column-major
    assert torch.equal(ops.vote_count(t, 10), vote_reference(t.contiguous(), 10))


def test_vote_count_more_inputs_than_one_cuda_grid_holds(device):
    logits = torch.randn(70001, 3, device=device)  # n = 1: 70001 inputs (> 65535, the grid's y limit)
    assert torch.equal(ops.vote_count(logits, 1), vote_reference(logits, 1))


def test_vote_count_nan_rows_are_not_votes(device):
    logits = torch.randn(20, 5, device=device)
    logits[3, 2] = float("nan")
    logits[15, 0] = float("nan")
    counts = torch.zeros(2, 5, dtype=torch.int64, device=device)
    with pytest.raises(ops.NaNLogitsError, match="2 rows of logits contain NaN"):
        ops.vote_count(logits, 10, counts)
    assert counts.sum(dim=1).tolist() == [9, 9]  # the valid rows were counted, the NaN rows were not
    expected, nan_rows = reference.vote_count(logits, 10)
    assert torch.equal(counts, expected) and nan_rows.tolist() == [1, 1]


@pytest.mark.parametrize("classes", [1, 3, 129])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_prob_sum_matches_reference(device, classes, dtype):
    logits = (3 * torch.randn(5 * 7, classes, device=device)).to(dtype)
    for temperature in (1.0, 0.5):
        expected, _ = reference.prob_sum(logits, 7, temperature=temperature)
        torch.testing.assert_close(ops.prob_sum(logits, 7, temperature=temperature), expected,
                                   atol=1e-12, rtol=1e-12)
    assert ops.prob_sum(logits, 7).sum(1).cpu().tolist() == pytest.approx([7.0] * 5)


def test_prob_sum_non_contiguous_logits(device):
    logits = torch.randn(7, 12, device=device, dtype=torch.float64).t()  # [12, 7], column-major
    expected, _ = reference.prob_sum(logits.contiguous(), 4)
    torch.testing.assert_close(ops.prob_sum(logits, 4), expected, atol=1e-12, rtol=1e-12)


def test_prob_sum_nan_rows_reported(device):
    logits = torch.randn(6, 4, device=device, dtype=torch.float64)
    logits[1, 1] = float("nan")
    sums = torch.zeros(2, 4, dtype=torch.float64, device=device)
    with pytest.raises(ops.NaNLogitsError):
        ops.prob_sum(logits, 3, sums)
    assert sums.sum(1).cpu().tolist() == pytest.approx([2.0, 3.0])


def test_opcheck_every_op(device):
    x = torch.rand(3, 2, 5, 4, device=device)
    sigma = torch.full((3,), 0.5, device=device)
    torch.library.opcheck(torch.ops.costsmooth.noisy_batch, (x, sigma, 4, 7, 1, 2, 3, torch.float32, False))
    torch.library.opcheck(torch.ops.costsmooth.noisy_batch, (x, sigma, 2, 7, 1, 0, 0, torch.float16, True))
    torch.library.opcheck(torch.ops.costsmooth.noisy_batch_into,
                          (x, sigma, 2, 7, 1, 0, 0, torch.empty(6, 2, 5, 4, device=device)))
    logits = torch.randn(12, 5, device=device)
    torch.library.opcheck(torch.ops.costsmooth.vote_count_,
                          (logits, torch.zeros(3, 5, dtype=torch.int64, device=device), 4))
    torch.library.opcheck(torch.ops.costsmooth.prob_sum_,
                          (logits, torch.zeros(3, 5, dtype=torch.float64, device=device), 4, 1.0))
    torch.library.opcheck(torch.ops.costsmooth.philox,
                          (torch.randint(0, 2**32, (8, 4), dtype=torch.int64, device=device), 1, 2))


def test_noisy_batch_under_torch_compile():
    def f(x):
        return ops.noisy_batch(x, 3, 0.5, seed=5) * 2

    x = torch.rand(2, 7)
    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), f(x))


def test_cpu_simd_and_scalar_noise_paths_agree(tmp_path):
    import costsmooth
    x = torch.rand(3, 2, 11, 13)  # 286 elements: full eight-group steps and a scalar remainder
    path, scalar = scalar_noise(tmp_path, x, 5, 0.5, seed=9)
    assert path == "scalar"
    here = ops.noisy_batch(x, 5, 0.5, seed=9)
    tol = ops.NORMALS_TOLERANCE  # the stated cross-kernel bound (log/sincos from SLEEF vs libm: ulps)
    torch.testing.assert_close(here, scalar, atol=tol, rtol=tol)
    assert costsmooth.build_info()["cpu_noise"] in ("avx2", "scalar")


def _row_table(device):
    # rows of three inputs at positions 2, 0, 2, 1: runs of consecutive samples, a gap, a repeated input
    positions = [2, 2, 2, 0, 0, 2, 1, 1, 1, 1]
    inputs = [70, 70, 70, 5, 5, 70, 2**32 - 1, 2**32 - 1, 2**32 - 1, 2**32 - 1]
    samples = [0, 1, 2, 40, 41, 9, 3, 4, 5, 6]
    return torch.tensor([positions, inputs, samples], dtype=torch.int64, device=device)


@pytest.mark.parametrize("channels_last,dtype", [(False, torch.float32), (True, torch.float32),
                                                 (False, torch.float64), (False, torch.float16)])
def test_noisy_rows_write_the_rows_noisy_batch_writes(device, channels_last, dtype):
    x = torch.rand(3, 2, 3, 5, device=device)
    sigma = torch.tensor([0.3, 0.5, 0.7], device=device)
    table = _row_table(device)
    out = ops.noisy_rows(x, sigma, table, seed=9, stream=1, dtype=dtype, channels_last=channels_last)
    assert out.shape == (10, 2, 3, 5) and out.dtype == dtype
    for r, (b, i, j) in enumerate(table.t().tolist()):  # bit-identical to noisy_batch's row (same noise words)
        row = ops.noisy_batch(x[b:b + 1], 1, sigma[b:b + 1], seed=9, stream=1, index_offset=i, sample_offset=j,
                              dtype=dtype)
        assert torch.equal(out[r], row[0]), r
    ref = reference.noisy_rows(x, sigma, table, seed=9, stream=1, dtype=dtype)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    empty = ops.noisy_rows(x, 0.5, table[:, :0], seed=9)
    assert empty.shape == (0, 2, 3, 5)


def test_noisy_rows_refuse_bad_tables():
    x = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r"table must be an int64 tensor \[3, rows\]"):
        ops.noisy_rows(x, 0.5, torch.zeros(10, 3, dtype=torch.int64), seed=0)
    with pytest.raises(ValueError, match=r"table positions must lie in \[0, 3\)"):
        ops.noisy_rows(x, 0.5, torch.tensor([[3], [0], [0]]), seed=0)
    with pytest.raises(ValueError, match=r"input and sample indices must lie in \[0, 2\^32\)"):
        ops.noisy_rows(x, 0.5, torch.tensor([[0], [2**32], [0]]), seed=0)
    with pytest.raises(RuntimeError, match="names position 5"):  # the op itself never reads out of bounds
        torch.ops.costsmooth.noisy_rows_into(x, torch.full((3,), 0.5), torch.tensor([[5], [0], [0]]), 0, 0,
                                             torch.empty(1, 4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_vote_rows_match_reference_with_nan_rows_and_ties(device, dtype):
    torch.manual_seed(3)
    logits = torch.randn(300, 7, device=device).round().to(dtype)  # rounding makes ties common
    logits[[5, 77, 200]] = float("nan")
    group = torch.randint(0, 4, (300,), device=device)
    counts = torch.randint(0, 5, (4, 7), device=device)
    expected = counts.clone()
    nan_rows = ops.vote_rows(logits, group, counts)
    expected_nan = reference.vote_rows(logits, group, expected)
    assert torch.equal(counts, expected) and torch.equal(nan_rows, expected_nan)
    assert int(nan_rows.sum()) == 3
    # the same votes as vote_count when each input's rows are consecutive
    by_input = torch.zeros(3, 7, dtype=torch.int64, device=device)
    ops.vote_rows(logits[:297], torch.arange(3, device=device).repeat_interleave(99), by_input)
    ref, _ = reference.vote_count(logits[:297], 99)
    assert torch.equal(by_input, ref)


def test_vote_rows_refuse_bad_groups():
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"group values must lie in \[0, 2\)"):
        ops.vote_rows(logits, torch.tensor([0, 1, 2, 0]), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"group must be an int64 tensor \[4\]"):
        ops.vote_rows(logits, torch.tensor([0, 1]), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="is not a row of counts"):
        torch.ops.costsmooth.vote_rows_(logits, torch.zeros(2, 3, dtype=torch.int64), torch.tensor([0, 1, 2, 0]))


def test_opcheck_row_table_ops(device):
    x = torch.rand(3, 2, 5, 4, device=device)
    sigma = torch.full((3,), 0.5, device=device)
    table = _row_table(device)
    torch.library.opcheck(torch.ops.costsmooth.noisy_rows_into,
                          (x, sigma, table, 7, 1, torch.empty(10, 2, 5, 4, device=device)))
    torch.library.opcheck(torch.ops.costsmooth.vote_rows_,
                          (torch.randn(10, 5, device=device), torch.zeros(3, 5, dtype=torch.int64, device=device),
                           table[0].contiguous()))
