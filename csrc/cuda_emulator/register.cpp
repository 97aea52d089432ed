// The dabdetr_emulated op library: the dabdetr schemas (op_schemas.h) on CPU tensors, served by the
// CUDA kernels of csrc/cuda running on the emulator (ops_cuda.cpp compiled with
// DABDETR_CUDA_EMULATOR registers them), and the CUDA kernels' limits. dabdetr.ops loads it for
// impl="cuda_emulated".
#include <vector>

#include <torch/library.h>

#include "cuda/launch.h"
#include "op_schemas.h"

namespace {

// [max head dim, max queries (and keys) per head]: what csrc/cuda/launch.h allows.
std::vector<int64_t> limits() { return {dabdetr::cuda::kMaxHeadDim, dabdetr::cuda::kMaxAttentionRows}; }

}  // namespace

TORCH_LIBRARY(dabdetr_emulated, m) {
  dabdetr::define_ops(m);
  m.def("limits() -> int[]", &limits);
}
