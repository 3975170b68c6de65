// CUDA kernels for the fused sampling engine. Torch-free: see kernels.h.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cfloat>
#include <type_traits>

#include "../grid.h"
#include "../kernels.h"
#include "../philox.h"

namespace costsmooth {
namespace {

template <typename T> __device__ __forceinline__ float load_float(const T* p) { return static_cast<float>(*p); }
template <> __device__ __forceinline__ float load_float<__half>(const __half* p) { return __half2float(*p); }
template <> __device__ __forceinline__ float load_float<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat162float(*p);
}

// A double from any input type. half and bfloat16 have no implicit conversions under torch's nvcc
// flags (-D__CUDA_NO_HALF_CONVERSIONS__, -D__CUDA_NO_BFLOAT16_CONVERSIONS__): go through float, which
// holds both exactly; float and double convert directly (no precision lost for double).
template <typename T> __device__ __forceinline__ double load_double(const T* p) { return static_cast<double>(*p); }
template <> __device__ __forceinline__ double load_double<__half>(const __half* p) {
  return static_cast<double>(__half2float(*p));
}
template <> __device__ __forceinline__ double load_double<__nv_bfloat16>(const __nv_bfloat16* p) {
  return static_cast<double>(__bfloat162float(*p));
}

template <typename T> __device__ __forceinline__ T store_cast(float v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half store_cast<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 store_cast<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__global__ void philox_kernel(PhiloxParams p) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < p.rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint32_t c[4];
    for (int k = 0; k < 4; ++k) c[k] = static_cast<uint32_t>(p.counters[4 * r + k]);
    philox4x32_10(c, p.key0, p.key1);
    for (int k = 0; k < 4; ++k) p.out[4 * r + k] = static_cast<int64_t>(c[k]);
  }
}

// One thread per (row, group of four elements): a single Philox call yields the four normals.
// Grid-stride loop over t = row * groups_per_row + group, row = b * n + j.
template <typename Tin, typename Tout>
__global__ void noisy_batch_kernel(NoisyBatchParams p) {
  const int64_t groups_per_row = (p.dim + 3) / 4;
  const int64_t total = p.batch * p.n * groups_per_row;
  const Tin* x = static_cast<const Tin*>(p.x);
  Tout* out = static_cast<Tout*>(p.out);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t group = t % groups_per_row;
    const int64_t row = t / groups_per_row;
    const int64_t b = row / p.n;
    const int64_t j = row - b * p.n;
    float z[4];
    noise_normals(p.seed, p.stream, p.index_offset + static_cast<uint32_t>(b),
                  p.sample_offset + static_cast<uint32_t>(j), static_cast<uint32_t>(group), z);
    const float s = p.sigma[b];
    const Tin* xb = x + b * p.dim;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t e = 4 * group + k;
      if (e >= p.dim) break;
      int64_t dst = row * p.dim + e;
      if (p.channels_last) {
        const int64_t c = e / p.spatial;
        dst = row * p.dim + (e - c * p.spatial) * p.channels + c;
      }
      if constexpr (std::is_same<Tout, double>::value) {
        out[dst] = load_double(xb + e) + static_cast<double>(s) * static_cast<double>(z[k]);
      } else {
        out[dst] = store_cast<Tout>(load_float(xb + e) + s * z[k]);
      }
    }
  }
}

// As noisy_batch_kernel, with each row's (position, input, sample) read from the table.
template <typename Tin, typename Tout>
__global__ void noisy_rows_kernel(NoisyRowsParams p) {
  const int64_t groups_per_row = (p.dim + 3) / 4;
  const int64_t total = p.rows * groups_per_row;
  const Tin* x = static_cast<const Tin*>(p.x);
  Tout* out = static_cast<Tout*>(p.out);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t group = t % groups_per_row;
    const int64_t row = t / groups_per_row;
    const int64_t b = p.table[row];
    float z[4];
    noise_normals(p.seed, p.stream, static_cast<uint32_t>(p.table[p.rows + row]),
                  static_cast<uint32_t>(p.table[2 * p.rows + row]), static_cast<uint32_t>(group), z);
    const float s = p.sigma[b];
    const Tin* xb = x + b * p.dim;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t e = 4 * group + k;
      if (e >= p.dim) break;
      int64_t dst = row * p.dim + e;
      if (p.channels_last) {
        const int64_t c = e / p.spatial;
        dst = row * p.dim + (e - c * p.spatial) * p.channels + c;
      }
      if constexpr (std::is_same<Tout, double>::value) {
        out[dst] = load_double(xb + e) + static_cast<double>(s) * static_cast<double>(z[k]);
      } else {
        out[dst] = store_cast<Tout>(load_float(xb + e) + s * z[k]);
      }
    }
  }
}

// The value a grid output holds: cell * grid in double, rounded once to double or float, then (for
// float16/bfloat16) to the output type; the same function as the CPU kernel's grid_value.
template <typename Tout> __device__ __forceinline__ Tout grid_value(int64_t cell, double grid) {
  const double v = static_cast<double>(cell) * grid;
  if constexpr (std::is_same<Tout, double>::value) {
    return v;
  } else {
    return store_cast<Tout>(static_cast<float>(v));
  }
}

// Sound noise on a grid (grid.h): one thread per (row, group of four elements), as noisy_batch_kernel.
template <typename Tout>
__global__ void noisy_grid_kernel(NoisyGridParams p) {
  const int64_t groups_per_row = (p.dim + 3) / 4;
  const int64_t total = p.batch * p.n * groups_per_row;
  const CellTable table{p.thresholds, p.guide, p.table_cells, p.shift};
  Tout* out = static_cast<Tout*>(p.out);
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t group = t % groups_per_row;
    const int64_t row = t / groups_per_row;
    const int64_t b = row / p.n;
    const int64_t j = row - b * p.n;
    int32_t c[4];
    noise_cells(table, p.seed, p.stream, p.index_offset + static_cast<uint32_t>(b),
                p.sample_offset + static_cast<uint32_t>(j), static_cast<uint32_t>(group), c);
    const int32_t* xb = p.cells + b * p.dim;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const int64_t e = 4 * group + k;
      if (e >= p.dim) break;
      int64_t dst = row * p.dim + e;
      if (p.channels_last) {
        const int64_t ch = e / p.spatial;
        dst = row * p.dim + (e - ch * p.spatial) * p.channels + ch;
      }
      out[dst] = grid_value<Tout>(static_cast<int64_t>(xb[e]) + p.first_cell + c[k], p.grid);
    }
  }
}

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Acc<T>::type load_acc(const T* p) {
  return load_float(p);
}
template <> __device__ __forceinline__ double load_acc<double>(const double* p) { return *p; }

constexpr int kVoteThreads = 256;                  // 8 warps, one row per warp at a time
constexpr int kVoteRowsPerBlock = 1024;            // rows of one input handled by a block
// A block's histogram (one int32 bin per class) and its NaN-row counter share one dynamic
// shared-memory allocation of (classes + 1) * 4 bytes, within the 48 KiB a launch may use without
// opting in; the kernel has no static shared memory (CI checks nvcc's report). Up to 12,287 classes
// vote in shared memory; with more, votes go straight to global memory.
constexpr int64_t kVoteSharedBytes = 48 * 1024;
constexpr int64_t kMaxSharedClasses = kVoteSharedBytes / 4 - 1;

// Grid: (ceil(n / kVoteRowsPerBlock), number of inputs). Each warp takes the argmax of one row
// (ties to the lowest index, as torch.argmax; a NaN anywhere marks the row as not a vote), lane 0
// adds it to a block histogram of int32 bins in shared memory (exact integer atomics), and the
// block finally adds its non-zero bins to the int64 counts in global memory. With more classes
// than fit in shared memory, votes go straight to global memory.
template <typename T, bool kShared>
__global__ void vote_count_kernel(VoteCountParams p) {
  using acc_t = typename Acc<T>::type;
  extern __shared__ int shared[];  // shared[0]: NaN rows of the block; shared[1 + c]: bin of class c
  int* const shared_nan = shared;
  int* const shared_bins = shared + 1;
  const int64_t b = blockIdx.y;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kVoteRowsPerBlock;
  const int64_t last = min(first + kVoteRowsPerBlock, p.n);
  if (kShared) {
    for (int64_t c = threadIdx.x; c < p.classes; c += blockDim.x) shared_bins[c] = 0;
  }
  if (threadIdx.x == 0) *shared_nan = 0;
  __syncthreads();

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const T* logits = static_cast<const T*>(p.logits);
  for (int64_t j = first + warp; j < last; j += kVoteThreads / 32) {
    const T* row = logits + (b * p.n + j) * p.row_stride;
    acc_t best = -INFINITY;
    int64_t best_idx = -1;
    bool has_nan = false;
    for (int64_t c = lane; c < p.classes; c += 32) {
      const acc_t v = load_acc(row + c);
      if (v != v) has_nan = true;
      else if (best_idx < 0 || v > best) { best = v; best_idx = c; }
    }
    // Warp reduction: larger value wins, equal values go to the lower index; -1 means "none".
    for (int offset = 16; offset > 0; offset >>= 1) {
      const acc_t other = __shfl_down_sync(0xffffffffu, best, offset);
      const int64_t other_idx = __shfl_down_sync(0xffffffffu, best_idx, offset);
      if (other_idx >= 0 &&
          (best_idx < 0 || other > best || (other == best && other_idx < best_idx))) {
        best = other;
        best_idx = other_idx;
      }
    }
    has_nan = __any_sync(0xffffffffu, has_nan);
    if (lane == 0) {
      if (has_nan) atomicAdd(shared_nan, 1);
      else if (kShared) atomicAdd(&shared_bins[best_idx], 1);
      else atomicAdd(reinterpret_cast<unsigned long long*>(p.counts + b * p.classes + best_idx), 1ull);
    }
  }
  __syncthreads();
  if (kShared) {
    for (int64_t c = threadIdx.x; c < p.classes; c += blockDim.x) {
      const int v = shared_bins[c];
      if (v) atomicAdd(reinterpret_cast<unsigned long long*>(p.counts + b * p.classes + c),
                       static_cast<unsigned long long>(v));
    }
  }
  if (threadIdx.x == 0 && *shared_nan) {
    atomicAdd(reinterpret_cast<unsigned long long*>(p.nan_rows + b),
              static_cast<unsigned long long>(*shared_nan));
  }
}

// One warp per row (grid-stride over rows): argmax with ties to the lowest index, a NaN anywhere makes
// the row not a vote; lane 0 adds the vote to its group's int64 counts (exact integer atomics).
template <typename T>
__global__ void vote_rows_kernel(VoteRowsParams p) {
  using acc_t = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  const T* logits = static_cast<const T*>(p.logits);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); r < p.rows;
       r += warps) {
    const T* row = logits + r * p.row_stride;
    acc_t best = -INFINITY;
    int64_t best_idx = -1;
    bool has_nan = false;
    for (int64_t c = lane; c < p.classes; c += 32) {
      const acc_t v = load_acc(row + c);
      if (v != v) has_nan = true;
      else if (best_idx < 0 || v > best) { best = v; best_idx = c; }
    }
    for (int offset = 16; offset > 0; offset >>= 1) {
      const acc_t other = __shfl_down_sync(0xffffffffu, best, offset);
      const int64_t other_idx = __shfl_down_sync(0xffffffffu, best_idx, offset);
      if (other_idx >= 0 && (best_idx < 0 || other > best || (other == best && other_idx < best_idx))) {
        best = other;
        best_idx = other_idx;
      }
    }
    has_nan = __any_sync(0xffffffffu, has_nan);
    if (lane == 0) {
      const int64_t g = p.group[r];
      if (has_nan) atomicAdd(reinterpret_cast<unsigned long long*>(p.nan_rows + g), 1ull);
      else atomicAdd(reinterpret_cast<unsigned long long*>(p.counts + g * p.classes + best_idx), 1ull);
    }
  }
}

constexpr int kMaxDevices = 64;
std::atomic<int> cached_sms[kMaxDevices];  // multiprocessors per device; 0 until first asked

// The current device's multiprocessor count, queried once per device and cached. An error of a
// query is returned (and cleared), never left for a later launch check to find.
cudaError_t multiprocessors(int* sms) {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return cudaGetLastError();
  const bool cached = device >= 0 && device < kMaxDevices;
  if (cached) {
    *sms = cached_sms[device].load(std::memory_order_relaxed);
    if (*sms > 0) return cudaSuccess;
  }
  if (cudaDeviceGetAttribute(sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return cudaGetLastError();
  if (cached) cached_sms[device].store(*sms, std::memory_order_relaxed);
  return cudaSuccess;
}

// A grid-stride grid: enough blocks for the work, at most 32 per multiprocessor.
cudaError_t grid_for(int64_t work, int threads, int* grid) {
  int sms = 0;
  const cudaError_t err = multiprocessors(&sms);
  if (err != cudaSuccess) return err;
  const int64_t wanted = (work + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(sms > 0 ? sms : 80) * 32;
  *grid = static_cast<int>(wanted < 1 ? 1 : (wanted < cap ? wanted : cap));
  return cudaSuccess;
}

template <typename Tin>
void noisy_batch_dispatch_out(const NoisyBatchParams& p, cudaStream_t stream, int grid, int threads) {
  switch (p.out_dtype) {
    case DType::kFloat32: noisy_batch_kernel<Tin, float><<<grid, threads, 0, stream>>>(p); break;
    case DType::kFloat64: noisy_batch_kernel<Tin, double><<<grid, threads, 0, stream>>>(p); break;
    case DType::kFloat16: noisy_batch_kernel<Tin, __half><<<grid, threads, 0, stream>>>(p); break;
    case DType::kBFloat16: noisy_batch_kernel<Tin, __nv_bfloat16><<<grid, threads, 0, stream>>>(p); break;
  }
}

constexpr int64_t kMaxGridY = 65535;  // inputs per launch (gridDim.y limit)

template <typename T>
cudaError_t vote_count_dispatch(const VoteCountParams& all, cudaStream_t stream) {
  const int64_t inputs = all.rows / all.n;
  for (int64_t b0 = 0; b0 < inputs; b0 += kMaxGridY) {
    VoteCountParams p = all;  // inputs b0 .. b0 + nb - 1
    const int64_t nb = inputs - b0 < kMaxGridY ? inputs - b0 : kMaxGridY;
    p.logits = static_cast<const T*>(all.logits) + b0 * all.n * all.row_stride;
    p.rows = nb * all.n;
    p.counts = all.counts + b0 * all.classes;
    p.nan_rows = all.nan_rows + b0;
    const dim3 grid(static_cast<unsigned>((p.n + kVoteRowsPerBlock - 1) / kVoteRowsPerBlock), static_cast<unsigned>(nb));
    if (p.classes <= kMaxSharedClasses) {
      const size_t shared = static_cast<size_t>(p.classes + 1) * sizeof(int);
      vote_count_kernel<T, true><<<grid, kVoteThreads, shared, stream>>>(p);
    } else {
      vote_count_kernel<T, false><<<grid, kVoteThreads, sizeof(int), stream>>>(p);
    }
    const cudaError_t err = cudaGetLastError();  // this launch's error, before the next one
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

int launch_philox(const PhiloxParams& p, void* cuda_stream) {
  if (p.rows == 0) return cudaSuccess;
  int grid = 0;
  const cudaError_t err = grid_for(p.rows, 256, &grid);
  if (err != cudaSuccess) return err;
  philox_kernel<<<grid, 256, 0, static_cast<cudaStream_t>(cuda_stream)>>>(p);
  return cudaGetLastError();
}

int launch_noisy_batch(const NoisyBatchParams& p, void* cuda_stream) {
  const int64_t groups = p.batch * p.n * ((p.dim + 3) / 4);
  if (groups == 0) return cudaSuccess;
  const int threads = 256;
  int grid = 0;
  const cudaError_t err = grid_for(groups, threads, &grid);
  if (err != cudaSuccess) return err;
  cudaStream_t stream = static_cast<cudaStream_t>(cuda_stream);
  switch (p.x_dtype) {
    case DType::kFloat32: noisy_batch_dispatch_out<float>(p, stream, grid, threads); break;
    case DType::kFloat64: noisy_batch_dispatch_out<double>(p, stream, grid, threads); break;
    case DType::kFloat16: noisy_batch_dispatch_out<__half>(p, stream, grid, threads); break;
    case DType::kBFloat16: noisy_batch_dispatch_out<__nv_bfloat16>(p, stream, grid, threads); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

int launch_noisy_grid(const NoisyGridParams& p, void* cuda_stream) {
  const int64_t groups = p.batch * p.n * ((p.dim + 3) / 4);
  if (groups == 0) return cudaSuccess;
  const int threads = 256;
  int grid = 0;
  const cudaError_t err = grid_for(groups, threads, &grid);
  if (err != cudaSuccess) return err;
  cudaStream_t stream = static_cast<cudaStream_t>(cuda_stream);
  switch (p.out_dtype) {
    case DType::kFloat32: noisy_grid_kernel<float><<<grid, threads, 0, stream>>>(p); break;
    case DType::kFloat64: noisy_grid_kernel<double><<<grid, threads, 0, stream>>>(p); break;
    case DType::kFloat16: noisy_grid_kernel<__half><<<grid, threads, 0, stream>>>(p); break;
    case DType::kBFloat16: noisy_grid_kernel<__nv_bfloat16><<<grid, threads, 0, stream>>>(p); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

int launch_vote_count(const VoteCountParams& p, void* cuda_stream) {
  if (p.rows == 0 || p.classes == 0) return cudaSuccess;
  cudaStream_t stream = static_cast<cudaStream_t>(cuda_stream);
  switch (p.dtype) {
    case DType::kFloat32: return vote_count_dispatch<float>(p, stream);
    case DType::kFloat64: return vote_count_dispatch<double>(p, stream);
    case DType::kFloat16: return vote_count_dispatch<__half>(p, stream);
    case DType::kBFloat16: return vote_count_dispatch<__nv_bfloat16>(p, stream);
  }
  return cudaErrorInvalidValue;
}

template <typename Tin>
void noisy_rows_dispatch_out(const NoisyRowsParams& p, cudaStream_t stream, int grid, int threads) {
  switch (p.out_dtype) {
    case DType::kFloat32: noisy_rows_kernel<Tin, float><<<grid, threads, 0, stream>>>(p); break;
    case DType::kFloat64: noisy_rows_kernel<Tin, double><<<grid, threads, 0, stream>>>(p); break;
    case DType::kFloat16: noisy_rows_kernel<Tin, __half><<<grid, threads, 0, stream>>>(p); break;
    case DType::kBFloat16: noisy_rows_kernel<Tin, __nv_bfloat16><<<grid, threads, 0, stream>>>(p); break;
  }
}

int launch_noisy_rows(const NoisyRowsParams& p, void* cuda_stream) {
  const int64_t groups = p.rows * ((p.dim + 3) / 4);
  if (groups == 0) return cudaSuccess;
  const int threads = 256;
  int grid = 0;
  const cudaError_t err = grid_for(groups, threads, &grid);
  if (err != cudaSuccess) return err;
  cudaStream_t stream = static_cast<cudaStream_t>(cuda_stream);
  switch (p.x_dtype) {
    case DType::kFloat32: noisy_rows_dispatch_out<float>(p, stream, grid, threads); break;
    case DType::kFloat64: noisy_rows_dispatch_out<double>(p, stream, grid, threads); break;
    case DType::kFloat16: noisy_rows_dispatch_out<__half>(p, stream, grid, threads); break;
    case DType::kBFloat16: noisy_rows_dispatch_out<__nv_bfloat16>(p, stream, grid, threads); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

int launch_vote_rows(const VoteRowsParams& p, void* cuda_stream) {
  if (p.rows == 0 || p.classes == 0) return cudaSuccess;
  cudaStream_t stream = static_cast<cudaStream_t>(cuda_stream);
  const int threads = 256;  // 8 rows per block at a time
  int grid = 0;
  const cudaError_t err = grid_for(p.rows, threads / 32, &grid);
  if (err != cudaSuccess) return err;
  switch (p.dtype) {
    case DType::kFloat32: vote_rows_kernel<float><<<grid, threads, 0, stream>>>(p); break;
    case DType::kFloat64: vote_rows_kernel<double><<<grid, threads, 0, stream>>>(p); break;
    case DType::kFloat16: vote_rows_kernel<__half><<<grid, threads, 0, stream>>>(p); break;
    case DType::kBFloat16: vote_rows_kernel<__nv_bfloat16><<<grid, threads, 0, stream>>>(p); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace costsmooth
