// Argument checks shared by the CPU and CUDA registrations of every op. The Python wrappers in
// costsmooth/ops.py check the same things first with friendlier messages; these keep a direct
// torch.ops call from reading out of bounds.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <vector>

#include "kernels.h"

namespace costsmooth {

inline DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "costsmooth: unsupported dtype ", t, "; use float32, float64, float16 or bfloat16");
  }
}

inline void check_philox(const at::Tensor& counters, int64_t key0, int64_t key1) {
  TORCH_CHECK(counters.dim() == 2 && counters.size(1) == 4 && counters.scalar_type() == at::kLong,
              "philox: counters must be int64 [rows, 4], got ", counters.scalar_type(), " ", counters.sizes());
  constexpr int64_t kU32 = std::numeric_limits<uint32_t>::max();
  TORCH_CHECK(key0 >= 0 && key0 <= kU32 && key1 >= 0 && key1 <= kU32, "philox: key words must fit in 32 bits");
}

inline void check_noisy_batch(const at::Tensor& x, const at::Tensor& sigma, int64_t n, int64_t stream,
                              int64_t index_offset, int64_t sample_offset, at::ScalarType dtype,
                              bool channels_last) {
  TORCH_CHECK(x.dim() >= 1, "noisy_batch: x must have a batch dimension, got a 0-d tensor");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "noisy_batch: x must be a float tensor, got ", x.scalar_type());
  to_dtype(x.scalar_type());
  to_dtype(dtype);
  TORCH_CHECK(n >= 1, "noisy_batch: n must be >= 1, got ", n);
  TORCH_CHECK(sigma.dim() == 1 && sigma.size(0) == x.size(0),
              "noisy_batch: sigma must have shape [", x.size(0), "], got ", sigma.sizes());
  TORCH_CHECK(sigma.scalar_type() == at::kFloat, "noisy_batch: sigma must be float32, got ", sigma.scalar_type());
  TORCH_CHECK(sigma.device() == x.device(), "noisy_batch: sigma is on ", sigma.device(), " but x is on ", x.device());
  constexpr int64_t kU32 = std::numeric_limits<uint32_t>::max();
  TORCH_CHECK(stream >= 0 && stream <= kU32, "noisy_batch: stream must fit in 32 bits, got ", stream);
  TORCH_CHECK(index_offset >= 0 && index_offset + x.size(0) - 1 <= kU32,
              "noisy_batch: input indices must lie in [0, 2^32), got offset ", index_offset);
  TORCH_CHECK(sample_offset >= 0 && sample_offset + n - 1 <= kU32,
              "noisy_batch: sample indices must lie in [0, 2^32), got offset ", sample_offset);
  TORCH_CHECK(!channels_last || x.dim() == 4,
              "noisy_batch: channels_last needs 4-d inputs [B, C, H, W], got ", x.dim(), "-d");
}

// The sample and stream indices of a noise op: each must fit the 32-bit counter words.
inline void check_noise_indices(const char* op, int64_t batch, int64_t n, int64_t stream, int64_t index_offset,
                                int64_t sample_offset) {
  TORCH_CHECK(n >= 1, op, ": n must be >= 1, got ", n);
  constexpr int64_t kU32 = std::numeric_limits<uint32_t>::max();
  TORCH_CHECK(stream >= 0 && stream <= kU32, op, ": stream must fit in 32 bits, got ", stream);
  TORCH_CHECK(index_offset >= 0 && index_offset + batch - 1 <= kU32, op,
              ": input indices must lie in [0, 2^32), got offset ", index_offset);
  TORCH_CHECK(sample_offset >= 0 && sample_offset + n - 1 <= kU32, op,
              ": sample indices must lie in [0, 2^32), got offset ", sample_offset);
}

// The output of noisy_batch: [B * n, *x.shape[1:]] in dtype, contiguous or channels-last.
inline at::Tensor noisy_batch_empty(const at::Tensor& x, int64_t n, at::ScalarType dtype, bool channels_last) {
  std::vector<int64_t> sizes(x.sizes().begin(), x.sizes().end());
  sizes[0] = x.size(0) * n;
  return at::empty(sizes, x.options().dtype(dtype).memory_format(
                              channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous));
}

// A backend's noisy_batch_into kernel: (x, sigma, n, seed, stream, index_offset, sample_offset, out).
using NoisyBatchInto = void (*)(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, int64_t, int64_t,
                                at::Tensor&);

// noisy_batch as "check, allocate, then fill with the backend's noisy_batch_into".
inline at::Tensor noisy_batch_via(NoisyBatchInto into, const at::Tensor& x, const at::Tensor& sigma, int64_t n,
                                  int64_t seed, int64_t stream, int64_t index_offset, int64_t sample_offset,
                                  at::ScalarType dtype, bool channels_last) {
  check_noisy_batch(x, sigma, n, stream, index_offset, sample_offset, dtype, channels_last);
  at::Tensor out = noisy_batch_empty(x, n, dtype, channels_last);
  into(x, sigma, n, seed, stream, index_offset, sample_offset, out);
  return out;
}

// Checks a caller's output buffer for noisy_batch_into; returns whether it is channels-last.
inline bool check_noisy_out(const at::Tensor& x, int64_t n, const at::Tensor& out) {
  TORCH_CHECK(out.dim() == x.dim() && out.size(0) == x.size(0) * n &&
                  out.sizes().slice(1).equals(x.sizes().slice(1)),
              "noisy_batch_into: out must have shape [B * n, *x.shape[1:]], got ", out.sizes());
  to_dtype(out.scalar_type());
  TORCH_CHECK(out.device() == x.device(), "noisy_batch_into: out is on ", out.device(), " but x is on ", x.device());
  if (out.is_contiguous()) return false;
  TORCH_CHECK(out.dim() == 4 && out.is_contiguous(at::MemoryFormat::ChannelsLast),
              "noisy_batch_into: out must be contiguous or channels-last");
  return true;
}

inline int64_t check_votes(const char* op, const at::Tensor& logits, const at::Tensor& acc, int64_t n,
                           at::ScalarType acc_dtype) {
  TORCH_CHECK(logits.dim() == 2, op, ": logits must be 2-d [rows, classes], got ", logits.dim(), "-d");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), op, ": logits must be float, got ", logits.scalar_type());
  to_dtype(logits.scalar_type());
  TORCH_CHECK(n >= 1, op, ": n must be >= 1, got ", n);
  TORCH_CHECK(acc.dim() == 2 && acc.size(1) == logits.size(1) && acc.size(0) * n == logits.size(0), op,
              ": accumulator must have shape [rows / n, classes] = [", logits.size(0) / n, ", ", logits.size(1),
              "], got ", acc.sizes());
  TORCH_CHECK(acc.scalar_type() == acc_dtype, op, ": accumulator must be ", acc_dtype, ", got ", acc.scalar_type());
  TORCH_CHECK(acc.is_contiguous(), op, ": accumulator must be contiguous");
  TORCH_CHECK(acc.device() == logits.device(), op, ": accumulator is on ", acc.device(), " but logits on ",
              logits.device());
  return acc.size(0);
}

// Checks of noisy_rows_into: the table is int64 [3, rows] on x's device, out has its rows. The values
// (positions, 32-bit indices) are checked where the table is read (on the CPU) or by the caller.
inline bool check_noisy_rows(const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& table, int64_t stream,
                             const at::Tensor& out) {
  TORCH_CHECK(table.dim() == 2 && table.size(0) == 3 && table.scalar_type() == at::kLong,
              "noisy_rows: table must be int64 [3, rows] (positions in x, input indices, sample indices), got ",
              table.scalar_type(), " ", table.sizes());
  TORCH_CHECK(table.device() == x.device(), "noisy_rows: table is on ", table.device(), " but x is on ", x.device());
  check_noisy_batch(x, sigma, 1, stream, 0, 0, out.scalar_type(), false);
  TORCH_CHECK(out.dim() == x.dim() && out.size(0) == table.size(1) && out.sizes().slice(1).equals(x.sizes().slice(1)),
              "noisy_rows: out must have shape [rows, *x.shape[1:]], got ", out.sizes());
  TORCH_CHECK(out.device() == x.device(), "noisy_rows: out is on ", out.device(), " but x is on ", x.device());
  if (out.is_contiguous()) return false;
  TORCH_CHECK(out.dim() == 4 && out.is_contiguous(at::MemoryFormat::ChannelsLast),
              "noisy_rows: out must be contiguous or channels-last");
  return true;
}

inline void check_vote_rows(const at::Tensor& logits, const at::Tensor& counts, const at::Tensor& group) {
  TORCH_CHECK(logits.dim() == 2, "vote_rows: logits must be 2-d [rows, classes], got ", logits.dim(), "-d");
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()), "vote_rows: logits must be float, got ", logits.scalar_type());
  to_dtype(logits.scalar_type());
  TORCH_CHECK(counts.dim() == 2 && counts.size(1) == logits.size(1) && counts.scalar_type() == at::kLong &&
                  counts.is_contiguous(),
              "vote_rows: counts must be contiguous int64 [inputs, ", logits.size(1), "], got ", counts.sizes());
  TORCH_CHECK(group.dim() == 1 && group.size(0) == logits.size(0) && group.scalar_type() == at::kLong,
              "vote_rows: group must be int64 [", logits.size(0), "] (the counts row of each logits row)");
  TORCH_CHECK(counts.device() == logits.device() && group.device() == logits.device(),
              "vote_rows: logits, counts and group must be on one device");
}

// The arguments of noisy_grid_into (grid.h); returns whether `out` is channels-last. On the CPU the
// table itself is checked too (sorted thresholds, guide entries inside the table), so that a direct
// call with a malformed table cannot read out of bounds.
inline bool check_noisy_grid(const at::Tensor& cells, const at::Tensor& thresholds, const at::Tensor& guide,
                             int64_t first_cell, double grid, int64_t n, int64_t stream, int64_t index_offset,
                             int64_t sample_offset, const at::Tensor& out, int32_t* shift) {
  TORCH_CHECK(cells.dim() >= 1 && cells.scalar_type() == at::kInt,
              "noisy_grid: cells must be an int32 tensor [B, *shape], got ", cells.scalar_type(), " ", cells.sizes());
  TORCH_CHECK(thresholds.dim() == 1 && thresholds.size(0) >= 1 && thresholds.scalar_type() == at::kLong &&
                  thresholds.is_contiguous(),
              "noisy_grid: thresholds must be a contiguous int64 [cells] tensor");
  TORCH_CHECK(thresholds.size(0) < (int64_t{1} << 30), "noisy_grid: the table has too many cells");
  const int64_t buckets = guide.dim() == 1 ? guide.size(0) - 1 : 0;
  TORCH_CHECK(guide.scalar_type() == at::kInt && guide.is_contiguous() && buckets >= 1 && buckets <= (int64_t{1} << 31) &&
                  (buckets & (buckets - 1)) == 0,
              "noisy_grid: guide must be a contiguous int32 [2^k + 1] tensor, got ", guide.sizes());
  TORCH_CHECK(thresholds.device() == cells.device() && guide.device() == cells.device(),
              "noisy_grid: the table must be on the device of the cells (", cells.device(), ")");
  TORCH_CHECK(std::isfinite(grid) && grid > 0, "noisy_grid: grid must be a positive step, got ", grid);
  TORCH_CHECK(first_cell > -(int64_t{1} << 31) && first_cell < (int64_t{1} << 31),
              "noisy_grid: first_cell must fit in 32 bits, got ", first_cell);
  check_noise_indices("noisy_grid", cells.size(0), n, stream, index_offset, sample_offset);
  const bool channels_last = check_noisy_out(cells, n, out);
  int64_t dim = 1;
  for (int64_t d = 1; d < cells.dim(); ++d) dim *= cells.size(d);
  TORCH_CHECK((dim + 3) / 4 <= int64_t{0x7fffffff}, "noisy_grid: inputs must have fewer than 2^33 elements");
  int32_t bits = 0;
  while ((int64_t{1} << bits) < buckets) ++bits;
  *shift = 32 - bits;
  if (cells.device().is_cpu()) {
    const int64_t table_cells = thresholds.size(0);
    const uint64_t* t = reinterpret_cast<const uint64_t*>(thresholds.data_ptr<int64_t>());
    const int32_t* g = guide.data_ptr<int32_t>();
    TORCH_CHECK(t[table_cells - 1] == ~uint64_t{0}, "noisy_grid: the last threshold must be 2^64 - 1");
    for (int64_t c = 1; c < table_cells; ++c) TORCH_CHECK(t[c - 1] <= t[c], "noisy_grid: thresholds must be sorted");
    for (int64_t b = 0; b <= buckets; ++b) {
      const int64_t v = g[b] & 0x7fffffff;
      TORCH_CHECK(v < table_cells && (b == 0 || v >= (g[b - 1] & 0x7fffffff)),
                  "noisy_grid: guide entries must be sorted cells of the table");
    }
  }
  return channels_last;
}

}  // namespace costsmooth
