// Host-side interface of the CUDA kernels. Torch-free: the kernels (*.cu) see raw pointers,
// element strides and a stream, so each .cu compiles with bare nvcc (the CI compile check);
// ops_cuda.cpp fills these structs from tensors and launches on torch's current stream.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "op_params.h"

namespace dabdetr::cuda {

enum class Dtype { kFloat32, kFloat64, kFloat16, kBFloat16 };

// The kernels are instantiated for head widths 32 and 64: Dc, Dp and Dv up to this are served.
constexpr int64_t kMaxHeadDim = 64;
// Queries (and keys) of one (batch, head) are spread over the grid's y dimension, at most 65535
// blocks of kRowsPerBlock (attention_common.cuh) rows each.
constexpr int64_t kMaxAttentionRows = 65535LL * 64;

using Operand = OperandOf<const void*>;

// Pointers are type-erased: each .cu dispatches on dtype. lse (and the backward's delta scratch)
// are in the accumulation type: float, or double for float64.
struct AttentionArgs : AttentionParamsOf<const void*, void*, double> {
  Dtype dtype = Dtype::kFloat32;
  void* delta = nullptr;  // backward scratch [B, H, Nq]
};

struct SineEmbedArgs : SineEmbedParamsOf<const void*, void*> {
  Dtype dtype = Dtype::kFloat32;
};

cudaError_t attention_forward(const AttentionArgs& args, cudaStream_t stream);
cudaError_t attention_backward(const AttentionArgs& args, cudaStream_t stream);
cudaError_t sine_embed_forward(const SineEmbedArgs& args, cudaStream_t stream);
cudaError_t sine_embed_backward(const SineEmbedArgs& args, cudaStream_t stream);

}  // namespace dabdetr::cuda
