// Launcher interface between the torch-facing C++ code and the CUDA kernels.
//
// This header includes no torch or CUDA headers: the .cu files that implement it compile with a
// plain `nvcc -c`, so every kernel is at least compiled on machines whose torch has no CUDA.
// All sizes and strides are in elements, not bytes. Pointers are device pointers.
#pragma once

#include <cstdint>

namespace costsmooth {

enum class DType : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };

// out[b * n + j, e] = x[b, e] + sigma[b] * noise(seed, stream, index_offset + b, sample_offset + j, e)
struct NoisyBatchParams {
  const void* x;         // [batch, dim], contiguous, dtype x_dtype
  const float* sigma;    // [batch]
  void* out;             // [batch * n, dim] logically; layout below
  DType x_dtype;
  DType out_dtype;
  int64_t batch;
  int64_t n;             // samples per input
  int64_t dim;           // elements per input (prod of x.shape[1:])
  uint64_t seed;
  uint32_t stream;
  uint32_t index_offset;   // global index of x[0]
  uint32_t sample_offset;  // index of the first sample
  // Channels-last output of a [*, channels, H, W] input: logical element e = c * spatial + s is
  // stored at row * dim + s * channels + c. Otherwise element e is stored at row * dim + e.
  bool channels_last;
  int64_t channels;
  int64_t spatial;       // H * W
};

// Sound noise on a grid (grid.h): out[b * n + j, e] = (cells[b, e] + first_cell + c) * grid, rounded
// once from double to the output dtype (through float for float16/bfloat16), where c is the table
// cell of (seed, stream, index_offset + b, sample_offset + j, e).
struct NoisyGridParams {
  const int32_t* cells;        // [batch, dim], contiguous: the inputs' grid indices
  const uint64_t* thresholds;  // [table_cells] (grid.h's CellTable)
  const int32_t* guide;        // [2^(32 - shift) + 1]
  int32_t table_cells;
  int32_t shift;
  int64_t first_cell;          // the offset of table cell 0
  double grid;
  void* out;
  DType out_dtype;
  int64_t batch;
  int64_t n;
  int64_t dim;
  uint64_t seed;
  uint32_t stream;
  uint32_t index_offset;
  uint32_t sample_offset;
  bool channels_last;          // as in NoisyBatchParams
  int64_t channels;
  int64_t spatial;
};

// counts[r / n, argmax(logits[r])] += 1 for every row r without NaN; nan_rows[r / n] += 1 otherwise.
struct VoteCountParams {
  const void* logits;    // [rows, classes], unit stride along classes
  DType dtype;
  int64_t rows;
  int64_t classes;
  int64_t row_stride;
  int64_t n;             // rows per input
  int64_t* counts;       // [rows / n, classes], contiguous
  int64_t* nan_rows;     // [rows / n]
};

// out[r, :] = philox4x32_10(counters[r, :], key): rows of four 32-bit words held in int64.
struct PhiloxParams {
  const int64_t* counters;  // [rows, 4], contiguous
  int64_t* out;             // [rows, 4], contiguous
  int64_t rows;
  uint32_t key0;
  uint32_t key1;
};

// out[r, e] = x[table[0, r], e] + sigma[table[0, r]] * noise(seed, stream, table[1, r], table[2, r], e):
// the rows of many inputs and samples (a packed model call) in one launch.
struct NoisyRowsParams {
  const void* x;         // [batch, dim], contiguous, dtype x_dtype
  const float* sigma;    // [batch]
  const int64_t* table;  // [3, rows]: positions in x (< batch), input indices, sample indices (32-bit values)
  void* out;             // [rows, dim] logically; layout as NoisyBatchParams
  DType x_dtype;
  DType out_dtype;
  int64_t rows;
  int64_t dim;
  uint64_t seed;
  uint32_t stream;
  bool channels_last;
  int64_t channels;
  int64_t spatial;
};

// counts[group[r], argmax(logits[r])] += 1 for every row r without NaN; nan_rows[group[r]] += 1 otherwise.
struct VoteRowsParams {
  const void* logits;    // [rows, classes], unit stride along classes
  DType dtype;
  int64_t rows;
  int64_t classes;
  int64_t row_stride;
  const int64_t* group;  // [rows], values in [0, inputs)
  int64_t* counts;       // [inputs, classes], contiguous
  int64_t* nan_rows;     // [inputs]
};

// Each launcher returns the cudaError_t (as an int; 0 is cudaSuccess) read with cudaGetLastError
// right after each of its own kernel launches, stopping at the first that failed (or the error of a
// device-attribute query it needed). The caller checks it with C10_CUDA_CHECK, torch's launch check
// (C10_CUDA_KERNEL_LAUNCH_CHECK() is C10_CUDA_CHECK(cudaGetLastError()); the torch-free launcher
// makes that read itself), after checking that no error from earlier work is pending, so that an
// earlier asynchronous error is never reported as this launch's. Device attributes (the
// multiprocessor count that sizes grid-stride grids) are queried once per device and cached.
int launch_philox(const PhiloxParams& params, void* cuda_stream);
int launch_noisy_rows(const NoisyRowsParams& params, void* cuda_stream);
int launch_vote_rows(const VoteRowsParams& params, void* cuda_stream);
int launch_noisy_batch(const NoisyBatchParams& params, void* cuda_stream);
int launch_noisy_grid(const NoisyGridParams& params, void* cuda_stream);
int launch_vote_count(const VoteCountParams& params, void* cuda_stream);

}  // namespace costsmooth
