// CPU kernels of the sampling engine (parallel with at::parallel_for). Mirrors cuda/sampling_cuda.cpp.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cmath>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "../grid.h"
#include "../philox.h"
#include "noise_avx2.h"

namespace costsmooth {

// The CPU noise path: "avx2" (eight Philox streams per step, SLEEF logf/sincosf) where the processor
// has AVX2 and FMA, else "scalar" (philox.h with libm). COSTSMOOTH_SCALAR_NOISE=1 forces "scalar".
namespace {

bool use_simd_noise() {
#ifdef COSTSMOOTH_CPU_AVX2
  static const bool simd = [] {
    const char* env = std::getenv("COSTSMOOTH_SCALAR_NOISE");
    return cpu_has_avx2() && !(env && env[0] == '1');
  }();
  return simd;
#else
  return false;
#endif
}

}  // namespace

const char* cpu_noise_path() { return use_simd_noise() ? "avx2" : "scalar"; }

namespace {

at::Tensor philox_cpu(const at::Tensor& counters_in, int64_t key0, int64_t key1) {
  check_philox(counters_in, key0, key1);
  const at::Tensor counters = counters_in.contiguous();
  at::Tensor out = at::empty_like(counters);
  const int64_t* cp = counters.data_ptr<int64_t>();
  int64_t* op = out.data_ptr<int64_t>();
  at::parallel_for(0, counters.size(0), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      uint32_t c[4];
      for (int k = 0; k < 4; ++k) c[k] = static_cast<uint32_t>(cp[4 * r + k]);
      philox4x32_10(c, static_cast<uint32_t>(key0), static_cast<uint32_t>(key1));
      for (int k = 0; k < 4; ++k) op[4 * r + k] = static_cast<int64_t>(c[k]);
    }
  });
  return out;
}

void noisy_batch_into_cpu(const at::Tensor& x, const at::Tensor& sigma, int64_t n, int64_t seed, int64_t stream,
                          int64_t index_offset, int64_t sample_offset, at::Tensor& out) {
  const bool channels_last = check_noisy_out(x, n, out);
  check_noisy_batch(x, sigma, n, stream, index_offset, sample_offset, out.scalar_type(), channels_last);
  const at::Tensor xc = x.contiguous();
  const at::Tensor sc = sigma.contiguous();
  const at::ScalarType dtype = out.scalar_type();
  const int64_t batch = x.size(0);
  int64_t dim = 1;
  for (int64_t d = 1; d < x.dim(); ++d) dim *= x.size(d);
  const int64_t channels = channels_last ? x.size(1) : 1;
  const int64_t spatial = channels_last ? x.size(2) * x.size(3) : dim;
  const int64_t groups_per_row = (dim + 3) / 4;
  const int64_t total = batch * n * groups_per_row;
  if (total == 0) return;
  const uint64_t useed = static_cast<uint64_t>(seed);
  const bool use_avx2 = use_simd_noise();
  const float* sig = sc.data_ptr<float>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "noisy_batch_cpu", [&] {
    using tin = scalar_t;
    const tin* xp = xc.data_ptr<tin>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "noisy_batch_cpu_out", [&] {
      using tout = scalar_t;
      tout* op = out.data_ptr<tout>();
      // Parallel over rows (b * n + j); each row's element groups in order, no divisions inside.
      const int64_t grain = std::max<int64_t>(1, 4096 / groups_per_row);
      at::parallel_for(0, batch * n, grain, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t b = row / n;
          const int64_t j = row - b * n;
          const float s = sig[b];
          const tin* xb = xp + b * dim;
          tout* orow = op + row * dim;
          const uint32_t input = static_cast<uint32_t>(index_offset + b);
          const uint32_t sample = static_cast<uint32_t>(sample_offset + j);
          auto store = [&](int64_t e, float zval) {
            int64_t dst = e;
            if (channels_last) {
              const int64_t c = e / spatial;
              dst = (e - c * spatial) * channels + c;
            }
            if constexpr (std::is_same<tout, double>::value) {
              orow[dst] = static_cast<double>(xb[e]) + static_cast<double>(s) * static_cast<double>(zval);
            } else {
              orow[dst] = static_cast<tout>(static_cast<float>(xb[e]) + s * zval);
            }
          };
          int64_t group = 0;
#ifdef COSTSMOOTH_CPU_AVX2
          if (use_avx2) {  // eight element groups (32 elements) per step
            for (; group + 8 <= groups_per_row; group += 8) {
              float z8[32];
              noise_normals_x8(useed, static_cast<uint32_t>(stream), input, sample, static_cast<uint32_t>(group), z8);
              for (int lane = 0; lane < 8; ++lane) {
                for (int k = 0; k < 4; ++k) {
                  const int64_t e = 4 * (group + lane) + k;
                  if (e < dim) store(e, z8[8 * k + lane]);
                }
              }
            }
          }
#endif
          for (; group < groups_per_row; ++group) {
            float z[4];
            noise_normals(useed, static_cast<uint32_t>(stream), input, sample, static_cast<uint32_t>(group), z);
            const int64_t e0 = 4 * group;
            const int kmax = static_cast<int>(std::min<int64_t>(4, dim - e0));
            for (int k = 0; k < kmax; ++k) store(e0 + k, z[k]);
          }
        }
      });
    });
  });
}

at::Tensor noisy_batch_cpu(const at::Tensor& x, const at::Tensor& sigma, int64_t n, int64_t seed,
                           int64_t stream, int64_t index_offset, int64_t sample_offset, at::ScalarType dtype,
                           bool channels_last) {
  return noisy_batch_via(&noisy_batch_into_cpu, x, sigma, n, seed, stream, index_offset, sample_offset, dtype,
                         channels_last);
}

// One op call for the rows of a packed model call: each run of table rows with the same position and
// input and consecutive samples is one noisy_batch_into (parallel inside), so every row gets exactly
// the noise of (seed, stream, input, sample).
void noisy_rows_into_cpu(const at::Tensor& x, const at::Tensor& sigma, const at::Tensor& table_in, int64_t seed,
                         int64_t stream, at::Tensor& out) {
  check_noisy_rows(x, sigma, table_in, stream, out);
  const at::Tensor table = table_in.contiguous();
  const int64_t* t = table.data_ptr<int64_t>();
  const int64_t rows = table.size(1), batch = x.size(0);
  const int64_t *pos = t, *inp = t + rows, *smp = t + 2 * rows;
  for (int64_t r = 0; r < rows;) {
    const int64_t b = pos[r], input = inp[r], sample = smp[r];
    TORCH_CHECK(b >= 0 && b < batch, "noisy_rows: table row ", r, " names position ", b, " of ", batch, " inputs");
    int64_t end = r + 1;
    while (end < rows && pos[end] == b && inp[end] == input && smp[end] == sample + (end - r)) ++end;
    at::Tensor piece = out.narrow(0, r, end - r);
    noisy_batch_into_cpu(x.narrow(0, b, 1), sigma.narrow(0, b, 1), end - r, seed, stream, input, sample, piece);
    r = end;
  }
}

// The value a grid output holds: cell * grid in double, rounded once to double or float, then (for
// float16/bfloat16) to the output type: a function of the cell alone, the same on every device.
template <typename tout>
inline tout grid_value(int64_t cell, double grid) {
  const double v = static_cast<double>(cell) * grid;
  if constexpr (std::is_same<tout, double>::value) {
    return v;
  } else {
    return static_cast<tout>(static_cast<float>(v));
  }
}

void noisy_grid_into_cpu(const at::Tensor& cells_in, const at::Tensor& thresholds, const at::Tensor& guide,
                         int64_t first_cell, double grid, int64_t n, int64_t seed, int64_t stream,
                         int64_t index_offset, int64_t sample_offset, at::Tensor& out) {
  int32_t shift = 0;
  const bool channels_last = check_noisy_grid(cells_in, thresholds, guide, first_cell, grid, n, stream, index_offset,
                                              sample_offset, out, &shift);
  const at::Tensor cells = cells_in.contiguous();
  const int64_t batch = cells.size(0);
  int64_t dim = 1;
  for (int64_t d = 1; d < cells.dim(); ++d) dim *= cells.size(d);
  const int64_t channels = channels_last ? cells.size(1) : 1;
  const int64_t spatial = channels_last ? cells.size(2) * cells.size(3) : dim;
  const int64_t groups_per_row = (dim + 3) / 4;
  if (batch * n * groups_per_row == 0) return;
  const CellTable table{reinterpret_cast<const uint64_t*>(thresholds.data_ptr<int64_t>()), guide.data_ptr<int32_t>(),
                        static_cast<int32_t>(thresholds.size(0)), shift};
  const uint64_t useed = static_cast<uint64_t>(seed);
  const bool use_avx2 = use_simd_noise();
  const int32_t* cp = cells.data_ptr<int32_t>();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "noisy_grid_cpu", [&] {
    using tout = scalar_t;
    tout* op = out.data_ptr<tout>();
    const int64_t grain = std::max<int64_t>(1, 4096 / groups_per_row);
    at::parallel_for(0, batch * n, grain, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t b = row / n;
        const int64_t j = row - b * n;
        const int32_t* xb = cp + b * dim;
        tout* orow = op + row * dim;
        const uint32_t input = static_cast<uint32_t>(index_offset + b);
        const uint32_t sample = static_cast<uint32_t>(sample_offset + j);
        auto store = [&](int64_t e, int32_t c) {
          int64_t dst = e;
          if (channels_last) {
            const int64_t ch = e / spatial;
            dst = (e - ch * spatial) * channels + ch;
          }
          orow[dst] = grid_value<tout>(static_cast<int64_t>(xb[e]) + first_cell + c, grid);
        };
        int64_t group = 0;
#ifdef COSTSMOOTH_CPU_AVX2
        if (use_avx2) {  // eight element groups (32 elements) per step
          for (; group + 8 <= groups_per_row; group += 8) {
            int32_t c8[32];
            noise_cells_x8(table, useed, static_cast<uint32_t>(stream), input, sample, static_cast<uint32_t>(group),
                           c8);
            for (int lane = 0; lane < 8; ++lane) {
              for (int k = 0; k < 4; ++k) {
                const int64_t e = 4 * (group + lane) + k;
                if (e < dim) store(e, c8[8 * k + lane]);
              }
            }
          }
        }
#endif
        for (; group < groups_per_row; ++group) {
          int32_t c[4];
          noise_cells(table, useed, static_cast<uint32_t>(stream), input, sample, static_cast<uint32_t>(group), c);
          const int64_t e0 = 4 * group;
          const int kmax = static_cast<int>(std::min<int64_t>(4, dim - e0));
          for (int k = 0; k < kmax; ++k) store(e0 + k, c[k]);
        }
      }
    });
  });
}

// Argmax of one row in its own precision (ties to the lowest index, as torch.argmax); -1 if any NaN.
template <typename scalar_t>
int64_t row_vote(const scalar_t* row, int64_t classes) {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t best_idx = -1;
  acc_t best = 0;
  for (int64_t c = 0; c < classes; ++c) {
    const acc_t v = static_cast<acc_t>(row[c]);
    if (std::isnan(v)) return -1;
    if (best_idx < 0 || v > best) {
      best = v;
      best_idx = c;
    }
  }
  return best_idx;
}

at::Tensor vote_count_cpu(const at::Tensor& logits_in, at::Tensor& counts, int64_t n) {
  const int64_t batch = check_votes("vote_count", logits_in, counts, n, at::kLong);
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  at::Tensor nan_rows = at::zeros({batch}, counts.options());
  const int64_t rows = logits.size(0), classes = logits.size(1), row_stride = logits.stride(0);
  if (rows == 0 || classes == 0) return nan_rows;
  std::vector<int64_t> votes(rows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "vote_count_cpu", [&] {
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) votes[r] = row_vote(lp + r * row_stride, classes);
    });
  });
  // Serial integer histogram: exact, and cheap next to the argmax pass.
  int64_t* cp = counts.data_ptr<int64_t>();
  int64_t* np = nan_rows.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t b = r / n;
    if (votes[r] < 0) ++np[b];
    else ++cp[b * classes + votes[r]];
  }
  return nan_rows;
}

at::Tensor vote_rows_cpu(const at::Tensor& logits_in, at::Tensor& counts, const at::Tensor& group_in) {
  check_vote_rows(logits_in, counts, group_in);
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  const at::Tensor group = group_in.contiguous();
  const int64_t inputs = counts.size(0);
  at::Tensor nan_rows = at::zeros({inputs}, counts.options());
  const int64_t rows = logits.size(0), classes = logits.size(1), row_stride = logits.stride(0);
  if (rows == 0 || classes == 0) return nan_rows;
  const int64_t* gp = group.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(gp[r] >= 0 && gp[r] < inputs, "vote_rows: group[", r, "] = ", gp[r], " is not a row of counts [",
                inputs, ", ", classes, "]");
  }
  std::vector<int64_t> votes(rows);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "vote_rows_cpu", [&] {
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    at::parallel_for(0, rows, 256, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) votes[r] = row_vote(lp + r * row_stride, classes);
    });
  });
  int64_t* cp = counts.data_ptr<int64_t>();
  int64_t* np = nan_rows.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    if (votes[r] < 0) ++np[gp[r]];
    else ++cp[gp[r] * classes + votes[r]];
  }
  return nan_rows;
}

at::Tensor prob_sum_cpu(const at::Tensor& logits_in, at::Tensor& sums, int64_t n, double temperature) {
  const int64_t batch = check_votes("prob_sum", logits_in, sums, n, at::kDouble);
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature), "prob_sum: temperature must be > 0, got ", temperature);
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  at::Tensor nan_rows = at::zeros({batch}, sums.options().dtype(at::kLong));
  const int64_t classes = logits.size(1), row_stride = logits.stride(0);
  if (logits.size(0) == 0 || classes == 0) return nan_rows;
  const double inv_t = 1.0 / temperature;
  double* sp = sums.data_ptr<double>();
  int64_t* np = nan_rows.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "prob_sum_cpu", [&] {
    const scalar_t* lp = logits.data_ptr<scalar_t>();
    // One input per task: each input's sums are written by one thread, in row order (deterministic).
    at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> acc(classes);
      for (int64_t b = begin; b < end; ++b) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = 0; j < n; ++j) {
          const scalar_t* row = lp + (b * n + j) * row_stride;
          double mx = -INFINITY;
          bool has_nan = false;
          for (int64_t c = 0; c < classes; ++c) {
            const double v = static_cast<double>(row[c]);
            if (std::isnan(v)) has_nan = true;
            else if (v > mx) mx = v;
          }
          if (has_nan || !std::isfinite(mx)) {  // softmax undefined: reported, not summed
            ++np[b];
            continue;
          }
          double denom = 0.0;
          for (int64_t c = 0; c < classes; ++c) denom += std::exp((static_cast<double>(row[c]) - mx) * inv_t);
          for (int64_t c = 0; c < classes; ++c) acc[c] += std::exp((static_cast<double>(row[c]) - mx) * inv_t) / denom;
        }
        for (int64_t c = 0; c < classes; ++c) sp[b * classes + c] += acc[c];
      }
    });
  });
  return nan_rows;
}

}  // namespace

TORCH_LIBRARY_IMPL(costsmooth, CPU, m) {
  m.impl("philox", &philox_cpu);
  m.impl("noisy_batch", &noisy_batch_cpu);
  m.impl("noisy_batch_into", &noisy_batch_into_cpu);
  m.impl("noisy_grid_into", &noisy_grid_into_cpu);
  m.impl("vote_count_", &vote_count_cpu);
  m.impl("prob_sum_", &prob_sum_cpu);
  m.impl("noisy_rows_into", &noisy_rows_into_cpu);
  m.impl("vote_rows_", &vote_rows_cpu);
}

}  // namespace costsmooth
