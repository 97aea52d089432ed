// Host-side interface of the CUDA kernels. Torch-free: the kernels (*.cu) see raw pointers,
// element strides and a stream, so each .cu compiles with bare nvcc (the CI compile check);
// ops_cuda.cpp fills these structs from tensors and launches on torch's current stream.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

namespace dabdetr::cuda {

enum class Dtype { kFloat32, kFloat64, kFloat16, kBFloat16 };

// The kernels are instantiated for head widths 32 and 64: Dc, Dp and Dv up to this are served.
constexpr int64_t kMaxHeadDim = 64;
// Queries (and keys) of one (batch, head) are spread over the grid's y dimension, at most 65535
// blocks of kRowsPerBlock (attention_common.cuh) rows each.
constexpr int64_t kMaxAttentionRows = 65535LL * 64;

// A [B, H, N, D] operand: element strides of the batch, head and token dims; D is contiguous.
struct Operand {
  const void* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_n = 0;
};

struct AttentionArgs {
  Dtype dtype = Dtype::kFloat32;
  Operand q_content, q_pos, k_content, k_pos, value;  // q_pos/k_pos.data null: content only
  const bool* key_padding_mask = nullptr;              // [B, Nk], true = padded; may be null
  int64_t mask_stride_b = 0, mask_stride_n = 0;
  int64_t batch = 0, heads = 0, num_queries = 0, num_keys = 0;
  int64_t dim_content = 0, dim_pos = 0, dim_value = 0;
  double scale = 1.0;
  // Forward writes, backward reads: out contiguous [B, H, Nq, Dv] (dtype), lse contiguous
  // [B, H, Nq] in the accumulation type (float, or double for fp64).
  void* out = nullptr;
  void* lse = nullptr;
  // Backward only: grad_out contiguous like out; delta scratch [B, H, Nq] (accumulation type);
  // gradients contiguous [B, H, N, D] (dtype).
  const void* grad_out = nullptr;
  void* delta = nullptr;
  void* grad_q_content = nullptr;
  void* grad_q_pos = nullptr;
  void* grad_k_content = nullptr;
  void* grad_k_pos = nullptr;
  void* grad_value = nullptr;
};

struct SineEmbedArgs {
  Dtype dtype = Dtype::kFloat32;
  const void* boxes = nullptr;        // contiguous [N, coords]
  int64_t num_boxes = 0, coords = 4, num_feats = 128;
  const void* frequencies = nullptr;  // [num_feats / 2] in the accumulation type
  const void* xy_scale = nullptr;     // contiguous [N, 2 * num_feats] or null
  const void* ref_wh = nullptr;       // contiguous [N, 2] or null
  void* embed = nullptr;              // [N, coords * num_feats]; freshly allocated (aligned)
  void* modulated_xy = nullptr;       // [N, 2 * num_feats] or null; freshly allocated
  // Backward only.
  const void* grad_embed = nullptr;
  const void* grad_modulated_xy = nullptr;
  void* grad_boxes = nullptr;
  void* grad_xy_scale = nullptr;
  void* grad_ref_wh = nullptr;
};

cudaError_t attention_forward(const AttentionArgs& args, cudaStream_t stream);
cudaError_t attention_backward(const AttentionArgs& args, cudaStream_t stream);
cudaError_t sine_embed_forward(const SineEmbedArgs& args, cudaStream_t stream);
cudaError_t sine_embed_backward(const SineEmbedArgs& args, cudaStream_t stream);

}  // namespace dabdetr::cuda
