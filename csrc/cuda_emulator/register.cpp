// The dabdetr_emulated op library: the dabdetr schemas (op_schemas.h) on CPU tensors, served by the
// CUDA kernels of csrc/cuda running on the emulator (ops_cuda.cpp compiled with
// DABDETR_CUDA_EMULATOR registers them), and the CUDA kernels' limits. dabdetr.ops loads it for
// impl="cuda_emulated".
#include <vector>

#include <torch/library.h>

#include "cuda/launch.h"
#include "op_schemas.h"

namespace {

// [max head dim, max queries (and keys) per head, most deformable levels, deformable max head dim,
// deformable head dim step]: what csrc/cuda/launch.h and csrc/op_params.h allow
// (dabdetr/ops/extension.py names them).
std::vector<int64_t> limits() {
  return {dabdetr::cuda::kMaxHeadDim, dabdetr::cuda::kMaxAttentionRows, dabdetr::kMaxDeformableLevels,
          dabdetr::cuda::kDeformableMaxHeadDim, dabdetr::cuda::kDeformableHeadDimStep};
}

}  // namespace

TORCH_LIBRARY(dabdetr_emulated, m) {
  dabdetr::define_ops(m);
  m.def("limits() -> int[]", &limits);
}
