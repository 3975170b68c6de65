// CUDA registrations of the sampling ops: argument checks, device guard, current stream, and a
// call into the torch-free launchers of sampling_kernels.cu. Mirrors cpu/sampling_cpu.cpp.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../checks.h"
#include "../kernels.h"

namespace costsmooth {
namespace {

// Every launch is checked in two steps. Before the op's first CUDA work (allocations and copies
// included, whose own launch checks would otherwise report it): an error left by earlier work (an
// asynchronous kernel fault is reported by whichever CUDA call comes next) is read, cleared and
// reported as such, never as this op's launch failure.
void check_no_pending_error(const char* op) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, op, ": a CUDA error from earlier work was pending (", cudaGetErrorString(err),
              "); it was not caused by ", op, ". Run with CUDA_LAUNCH_BLOCKING=1 to find the kernel that caused it");
}

// After it: torch's launch check, C10_CUDA_CHECK, on the error the launcher read with
// cudaGetLastError right after its own launches (C10_CUDA_KERNEL_LAUNCH_CHECK() is
// C10_CUDA_CHECK(cudaGetLastError()); the torch-free launcher makes that call itself).
void check_launch(int launch_error) { C10_CUDA_CHECK(static_cast<cudaError_t>(launch_error)); }

at::Tensor philox_cuda(const at::Tensor& counters_in, int64_t key0, int64_t key1) {
  check_philox(counters_in, key0, key1);
  const c10::cuda::CUDAGuard guard(counters_in.device());
  check_no_pending_error("philox");
  const at::Tensor counters = counters_in.contiguous();
  at::Tensor out = at::empty_like(counters);
  PhiloxParams p{counters.data_ptr<int64_t>(), out.data_ptr<int64_t>(), counters.size(0),
                 static_cast<uint32_t>(key0), static_cast<uint32_t>(key1)};
  check_launch(launch_philox(p, c10::cuda::getCurrentCUDAStream().stream()));
  return out;
}

void noisy_batch_into_cuda(const at::Tensor& x, const at::Tensor& sigma, int64_t n, int64_t seed, int64_t stream,
                           int64_t index_offset, int64_t sample_offset, at::Tensor& out) {
  const bool channels_last = check_noisy_out(x, n, out);
  check_noisy_batch(x, sigma, n, stream, index_offset, sample_offset, out.scalar_type(), channels_last);
  const c10::cuda::CUDAGuard guard(x.device());
  check_no_pending_error("noisy_batch");
  const at::Tensor xc = x.contiguous();
  const at::Tensor sc = sigma.contiguous();
  const int64_t batch = x.size(0);
  int64_t dim = 1;
  for (int64_t d = 1; d < x.dim(); ++d) dim *= x.size(d);
  if (out.numel() == 0) return;
  NoisyBatchParams p{};
  p.x = xc.data_ptr();
  p.sigma = sc.data_ptr<float>();
  p.out = out.data_ptr();
  p.x_dtype = to_dtype(x.scalar_type());
  p.out_dtype = to_dtype(out.scalar_type());
  p.batch = batch;
  p.n = n;
  p.dim = dim;
  p.seed = static_cast<uint64_t>(seed);
  p.stream = static_cast<uint32_t>(stream);
  p.index_offset = static_cast<uint32_t>(index_offset);
  p.sample_offset = static_cast<uint32_t>(sample_offset);
  p.channels_last = channels_last;
  p.channels = channels_last ? x.size(1) : 1;
  p.spatial = channels_last ? x.size(2) * x.size(3) : dim;
  check_launch(launch_noisy_batch(p, c10::cuda::getCurrentCUDAStream().stream()));
}

at::Tensor noisy_batch_cuda(const at::Tensor& x, const at::Tensor& sigma, int64_t n, int64_t seed,
                           int64_t stream, int64_t index_offset, int64_t sample_offset, at::ScalarType dtype,
                           bool channels_last) {
  return noisy_batch_via(&noisy_batch_into_cuda, x, sigma, n, seed, stream, index_offset, sample_offset, dtype,
                         channels_last);
}

void noisy_grid_into_cuda(const at::Tensor& cells_in, const at::Tensor& thresholds, const at::Tensor& guide,
                          int64_t first_cell, double grid, int64_t n, int64_t seed, int64_t stream,
                          int64_t index_offset, int64_t sample_offset, at::Tensor& out) {
  int32_t shift = 0;
  const bool channels_last = check_noisy_grid(cells_in, thresholds, guide, first_cell, grid, n, stream, index_offset,
                                              sample_offset, out, &shift);
  const c10::cuda::CUDAGuard guard(cells_in.device());
  check_no_pending_error("noisy_grid");
  const at::Tensor cells = cells_in.contiguous();
  int64_t dim = 1;
  for (int64_t d = 1; d < cells.dim(); ++d) dim *= cells.size(d);
  if (out.numel() == 0) return;
  NoisyGridParams p{};
  p.cells = cells.data_ptr<int32_t>();
  p.thresholds = reinterpret_cast<const uint64_t*>(thresholds.data_ptr<int64_t>());
  p.guide = guide.data_ptr<int32_t>();
  p.table_cells = static_cast<int32_t>(thresholds.size(0));
  p.shift = shift;
  p.first_cell = first_cell;
  p.grid = grid;
  p.out = out.data_ptr();
  p.out_dtype = to_dtype(out.scalar_type());
  p.batch = cells.size(0);
  p.n = n;
  p.dim = dim;
  p.seed = static_cast<uint64_t>(seed);
  p.stream = static_cast<uint32_t>(stream);
  p.index_offset = static_cast<uint32_t>(index_offset);
  p.sample_offset = static_cast<uint32_t>(sample_offset);
  p.channels_last = channels_last;
  p.channels = channels_last ? cells.size(1) : 1;
  p.spatial = channels_last ? cells.size(2) * cells.size(3) : dim;
  check_launch(launch_noisy_grid(p, c10::cuda::getCurrentCUDAStream().stream()));
}

at::Tensor vote_count_cuda(const at::Tensor& logits_in, at::Tensor& counts, int64_t n) {
  const int64_t batch = check_votes("vote_count", logits_in, counts, n, at::kLong);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  check_no_pending_error("vote_count");
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  at::Tensor nan_rows = at::zeros({batch}, counts.options());
  if (logits.size(0) == 0 || logits.size(1) == 0) return nan_rows;
  VoteCountParams p{};
  p.logits = logits.data_ptr();
  p.dtype = to_dtype(logits.scalar_type());
  p.rows = logits.size(0);
  p.classes = logits.size(1);
  p.row_stride = logits.stride(0);
  p.n = n;
  p.counts = counts.data_ptr<int64_t>();
  p.nan_rows = nan_rows.data_ptr<int64_t>();
  check_launch(launch_vote_count(p, c10::cuda::getCurrentCUDAStream().stream()));
  return nan_rows;
}

void noisy_rows_into_cuda(const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& table_in, int64_t seed,
                          int64_t stream, at::Tensor& out) {
  const bool channels_last = check_noisy_rows(x, sigma, table_in, stream, out);
  const c10::cuda::CUDAGuard guard(x.device());
  check_no_pending_error("noisy_rows");
  if (out.numel() == 0) return;
  const at::Tensor xc = x.contiguous();
  const at::Tensor sc = sigma.contiguous();
  const at::Tensor table = table_in.contiguous();
  int64_t dim = 1;
  for (int64_t d = 1; d < x.dim(); ++d) dim *= x.size(d);
  NoisyRowsParams p{};
  p.x = xc.data_ptr();
  p.sigma = sc.data_ptr<float>();
  p.table = table.data_ptr<int64_t>();
  p.out = out.data_ptr();
  p.x_dtype = to_dtype(x.scalar_type());
  p.out_dtype = to_dtype(out.scalar_type());
  p.rows = table.size(1);
  p.dim = dim;
  p.seed = static_cast<uint64_t>(seed);
  p.stream = static_cast<uint32_t>(stream);
  p.channels_last = channels_last;
  p.channels = channels_last ? x.size(1) : 1;
  p.spatial = channels_last ? x.size(2) * x.size(3) : dim;
  check_launch(launch_noisy_rows(p, c10::cuda::getCurrentCUDAStream().stream()));
}

at::Tensor vote_rows_cuda(const at::Tensor& logits_in, at::Tensor& counts, const at::Tensor& group_in) {
  check_vote_rows(logits_in, counts, group_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  check_no_pending_error("vote_rows");
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  const at::Tensor group = group_in.contiguous();
  at::Tensor nan_rows = at::zeros({counts.size(0)}, counts.options());
  if (logits.size(0) == 0 || logits.size(1) == 0) return nan_rows;
  VoteRowsParams p{};
  p.logits = logits.data_ptr();
  p.dtype = to_dtype(logits.scalar_type());
  p.rows = logits.size(0);
  p.classes = logits.size(1);
  p.row_stride = logits.stride(0);
  p.group = group.data_ptr<int64_t>();
  p.counts = counts.data_ptr<int64_t>();
  p.nan_rows = nan_rows.data_ptr<int64_t>();
  check_launch(launch_vote_rows(p, c10::cuda::getCurrentCUDAStream().stream()));
  return nan_rows;
}

// A reduction over rows in float64: composed of ATen's own CUDA kernels (deterministic sums, no
// float atomics); a custom kernel would not beat them here.
at::Tensor prob_sum_cuda(const at::Tensor& logits, at::Tensor& sums, int64_t n, double temperature) {
  const int64_t batch = check_votes("prob_sum", logits, sums, n, at::kDouble);
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature), "prob_sum: temperature must be > 0, got ", temperature);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t classes = logits.size(1);
  if (logits.size(0) == 0 || classes == 0) return at::zeros({batch}, sums.options().dtype(at::kLong));
  const at::Tensor z = logits.to(at::kDouble).div(temperature);
  const at::Tensor row_max = std::get<0>(z.max(1, true));
  const at::Tensor bad = z.isnan().any(1).logical_or(row_max.squeeze(1).isinf());  // softmax undefined
  const at::Tensor probs = at::softmax(z, 1).masked_fill(bad.unsqueeze(1), 0.0);
  sums.add_(probs.reshape({batch, n, classes}).sum(1));
  return bad.reshape({batch, n}).sum(1).to(at::kLong);
}

}  // namespace

TORCH_LIBRARY_IMPL(costsmooth, CUDA, m) {
  m.impl("philox", &philox_cuda);
  m.impl("noisy_batch", &noisy_batch_cuda);
  m.impl("noisy_batch_into", &noisy_batch_into_cuda);
  m.impl("noisy_grid_into", &noisy_grid_into_cuda);
  m.impl("vote_count_", &vote_count_cuda);
  m.impl("prob_sum_", &prob_sum_cuda);
  m.impl("noisy_rows_into", &noisy_rows_into_cuda);
  m.impl("vote_rows_", &vote_rows_cuda);
}

}  // namespace costsmooth
