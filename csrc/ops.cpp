// Operator schemas (declared once, here) and the Python module's build_info().
// Backends register their kernels with TORCH_LIBRARY_IMPL in cpu/ and cuda/.
#include <torch/extension.h>
#include <torch/library.h>

#ifdef COSTSMOOTH_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#ifndef COSTSMOOTH_VERSION
#define COSTSMOOTH_VERSION "unknown"
#endif
#ifndef COSTSMOOTH_CUDA_ARCH_LIST
#define COSTSMOOTH_CUDA_ARCH_LIST ""
#endif

TORCH_LIBRARY(costsmooth, m) {
  // Raw Philox4x32-10 words for rows of counters (known-answer tests, CPU/CUDA bit identity).
  m.def("philox(Tensor counters, int key0, int key1) -> Tensor");
  // out[b*n + j] = x[b] + sigma[b] * noise(seed, stream, index_offset + b, sample_offset + j, .)
  m.def("noisy_batch(Tensor x, Tensor sigma, int n, int seed, int stream, int index_offset, "
        "int sample_offset, ScalarType dtype, bool channels_last) -> Tensor");
  // The same, written into a caller's buffer (reused across batches; dtype and layout from `out`).
  m.def("noisy_batch_into(Tensor x, Tensor sigma, int n, int seed, int stream, int index_offset, "
        "int sample_offset, Tensor(a!) out) -> ()");
  // Sound noise on a grid (csrc/grid.h): out[b*n + j] = (cells[b] + first_cell + table cell) * grid.
  m.def("noisy_grid_into(Tensor cells, Tensor thresholds, Tensor guide, int first_cell, float grid, int n, int seed, "
        "int stream, int index_offset, int sample_offset, Tensor(a!) out) -> ()");
  // counts[r // n, argmax(logits[r])] += 1; returns the number of NaN rows per input (not counted).
  m.def("vote_count_(Tensor logits, Tensor(a!) counts, int n) -> Tensor");
  // Rows of many inputs and samples in one call, from an int64 table [3, rows] (positions b in x, input
  // indices, sample indices): out[r] = x[b_r] + sigma[b_r] * noise(seed, stream, input_r, sample_r, .).
  m.def("noisy_rows_into(Tensor x, Tensor sigma, Tensor table, int seed, int stream, Tensor(a!) out) -> ()");
  // counts[group[r], argmax(logits[r])] += 1; returns the number of NaN rows per counts row (not counted).
  m.def("vote_rows_(Tensor logits, Tensor(a!) counts, Tensor group) -> Tensor");
  // sums[r // n] += softmax(logits[r] / temperature) in float64; returns NaN rows per input.
  m.def("prob_sum_(Tensor logits, Tensor(a!) sums, int n, float temperature) -> Tensor");
}

namespace costsmooth {
const char* cpu_noise_path();  // cpu/sampling_cpu.cpp
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["version"] = COSTSMOOTH_VERSION;
#ifdef COSTSMOOTH_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
  info["cuda_arch_list"] = COSTSMOOTH_CUDA_ARCH_LIST;
#else
  info["cuda"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_arch_list"] = "";
#endif
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  info["num_threads"] = at::get_num_threads();
  info["cpu_noise"] = costsmooth::cpu_noise_path();
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "costsmooth compiled kernels (ops are registered under torch.ops.costsmooth)";
  m.def("build_info", &build_info, "How this extension was built: version, CUDA, architectures, OpenMP.");
}
