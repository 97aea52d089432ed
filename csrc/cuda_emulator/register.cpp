// The dabdetr_emulated op library: the dabdetr schemas (op_schemas.h) on CPU tensors, served by the
// CUDA kernels of csrc/cuda running on the emulator (ops_cuda.cpp compiled with
// DABDETR_CUDA_EMULATOR registers them). dabdetr.ops loads it for impl="cuda_emulated".
#include <torch/library.h>

#include "op_schemas.h"

TORCH_LIBRARY(dabdetr_emulated, m) { dabdetr::define_ops(m); }
