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
// The tensor-core forward (attention_mma_forward.cu) gives each block kMmaRowsPerBlock queries,
// stages keys in tiles of kMmaKeyTile, and can split a (batch, head, query block)'s keys over at
// most kMaxKeySplits blocks.
constexpr int64_t kMmaRowsPerBlock = 64;
constexpr int64_t kMmaKeyTile = 64;
constexpr int kMaxKeySplits = 16;

// The deformable attention kernels (deformable_attention.cu) serve head dims that are multiples of
// kDeformableHeadDimStep up to kDeformableMaxHeadDim (one or two channels per lane of a warp).
constexpr int64_t kDeformableMaxHeadDim = 64;
constexpr int64_t kDeformableHeadDimStep = 8;

using Operand = OperandOf<const void*>;

// Pointers are type-erased: each .cu dispatches on dtype. lse (and the backward's delta scratch)
// are in the accumulation type: float, or double for float64.
struct AttentionArgs : AttentionParamsOf<const void*, void*, double> {
  Dtype dtype = Dtype::kFloat32;
  void* delta = nullptr;  // backward scratch [B, H, Nq]
  // Tensor-core forward: keys split over num_splits blocks; with more than one, workspace holds
  // split_workspace_floats() floats (each split's output and lse).
  int num_splits = 1;
  void* workspace = nullptr;
};

// One split's region of the workspace: its output rows [B*H*Nq, Dv], then its lse [B*H*Nq], rounded
// up to 8 floats so that every region starts at a 32-byte sector (the outputs are stored in pairs,
// a tile's row of 8 floats one sector; at 16 bytes, every other split's straddled two: the
// emulator's counters).
__host__ __device__ inline int64_t split_stride_floats(const AttentionArgs& a) {
  return (a.batch * a.heads * a.num_queries * (a.dim_value + 1) + 7) / 8 * 8;
}

inline int64_t split_workspace_floats(const AttentionArgs& a) {
  return a.num_splits > 1 ? a.num_splits * split_stride_floats(a) : 0;
}

struct SineEmbedArgs : SineEmbedParamsOf<const void*, void*> {
  Dtype dtype = Dtype::kFloat32;
};

// Multi-scale deformable attention (deformable_attention.cu). The backward accumulates the value
// gradient in the accumulation type: into grad_value itself for float32 and float64, into a float32
// workspace (grad_value_accumulator) for the 16-bit types, rounded into grad_value at the end.
struct DeformableAttentionArgs : DeformableAttentionParamsOf<const void*, void*> {
  Dtype dtype = Dtype::kFloat32;
  void* grad_value_accumulator = nullptr;  // contiguous [B, S, H, D] of Acc, zeroed by the caller
  // The atomic backward's tiling (deformable_backward_tiling): queries per block, and the levels
  // whose value gradient a block sums in shared memory first (bit l; level l's [H_l W_l, D] sums start
  // shared_offset[l] elements in), shared_bytes in all.
  int64_t tile_queries = 0;
  unsigned shared_levels = 0;
  int64_t shared_offset[kMaxDeformableLevels] = {};
  int64_t shared_bytes = 0;
  // The deterministic backward (sort_entries_by_row): each corner of each sample is an entry
  // (entries_per_group = L * P * 4 per (b, q, h)); entry_rows[e] its value row (b * H + h) * S + token,
  // or B * H * S for a corner outside the level, entry_weights[e] its a * bilinear (Acc); then the
  // entries sorted by row (stable), row_starts[r] the first of row r (B * H * S + 1 of them).
  int64_t* entry_rows = nullptr;
  void* entry_weights = nullptr;
  const int64_t* sorted_entries = nullptr;
  const int64_t* row_starts = nullptr;
};

// Most shared memory one block of the atomic backward sums value gradients in (the default 48 KB a
// launch gets without an opt-in).
constexpr int64_t kDeformableSharedBytes = 48 * 1024;

// Sets shared_levels' offsets and shared_bytes (element: the accumulation type's size).
inline void set_shared_levels(DeformableAttentionArgs& a, unsigned levels, int64_t element) {
  a.shared_levels = levels;
  a.shared_bytes = 0;
  for (int64_t l = 0; l < a.levels; ++l) {
    a.shared_offset[l] = a.shared_bytes / element;
    if (levels >> l & 1u) a.shared_bytes += a.level_height[l] * a.level_width[l] * a.head_dim * element;
  }
}

cudaError_t attention_forward(const AttentionArgs& args, cudaStream_t stream);
cudaError_t attention_backward(const AttentionArgs& args, cudaStream_t stream);
// The tensor-core path on sm_80+: bfloat16, float16, and float32 as tf32 (ops_cuda.cpp chooses the path).
cudaError_t attention_forward_mma(const AttentionArgs& args, cudaStream_t stream);
cudaError_t attention_backward_mma(const AttentionArgs& args, cudaStream_t stream);
cudaError_t sine_embed_forward(const SineEmbedArgs& args, cudaStream_t stream);
cudaError_t sine_embed_backward(const SineEmbedArgs& args, cudaStream_t stream);
cudaError_t deformable_attention_forward(const DeformableAttentionArgs& args, cudaStream_t stream);
// The default backward: value gradients by atomics (nondeterministic sums), after shared-memory sums
// per block for the levels in shared_levels; the location and weight gradients have one writer each.
cudaError_t deformable_attention_backward(const DeformableAttentionArgs& args, cudaStream_t stream);
// The deterministic backward, in two steps around a stable sort of the entries by row (ops_cuda.cpp):
// the entries, then every gradient with one writer and a fixed order of summation.
cudaError_t deformable_attention_entries(const DeformableAttentionArgs& args, cudaStream_t stream);
cudaError_t deformable_attention_backward_sorted(const DeformableAttentionArgs& args, cudaStream_t stream);

}  // namespace dabdetr::cuda
