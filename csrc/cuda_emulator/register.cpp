// The dabdetr_emulated op library: the dabdetr schemas (op_schemas.h) on CPU tensors, served by the
// CUDA kernels of csrc/cuda running on the emulator (ops_cuda.cpp compiled with
// DABDETR_CUDA_EMULATOR registers them), and the CUDA kernels' limits. dabdetr.ops loads it for
// impl="cuda_emulated". The counting build registers the same as dabdetr_emulated_counted, with
// counters_start and counters_take (counters.h; dabdetr.ops.emulated_counters).
#include <string>
#include <vector>

#include <torch/library.h>

#include "counters.h"
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

// TORCH_LIBRARY pastes its namespace unexpanded: through this, the macro's value.
#define DABDETR_TORCH_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)

DABDETR_TORCH_LIBRARY(DABDETR_EMULATED_LIBRARY, m) {
  dabdetr::define_ops(m);
  m.def("limits() -> int[]", &limits);
#ifdef DABDETR_CUDA_EMULATOR_COUNTERS
  m.def("counters_start() -> ()", &dabdetr_cuda_emulator::counters::start);
  m.def("counters_take() -> str", &dabdetr_cuda_emulator::counters::take);
#endif
}
