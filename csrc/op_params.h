// Parameter blocks of the kernels, shared by the CPU and CUDA backends. Torch-free: the per-ISA
// CPU units and the .cu files include it without any torch header. Templated on the pointer
// types: the CPU kernels see typed pointers (const T*, T*), the CUDA kernels type-erased ones
// (const void*, void*) and a dtype, since their translation units dispatch on it themselves.
#pragma once

#include <cstdint>

namespace dabdetr {

// A [B, H, N, D] operand: element strides of the batch, head and token dims; D is contiguous.
template <typename ConstPtr>
struct OperandOf {
  ConstPtr data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_n = 0;

  ConstPtr at(int64_t b, int64_t h) const { return data + b * stride_b + h * stride_h; }  // typed pointers only
};

// LsePtr: where the softmax statistics go (Ptr, but float32 for bfloat16 operands on the CPU).
template <typename ConstPtr, typename Ptr, typename Scale, typename LsePtr = Ptr>
struct AttentionParamsOf {
  OperandOf<ConstPtr> q_content, q_pos, k_content, k_pos, value;  // q_pos/k_pos.data null: content only
  const bool* key_padding_mask = nullptr;                           // [B, Nk], true = padded; may be null
  int64_t mask_stride_b = 0, mask_stride_n = 0;
  int64_t batch = 0, heads = 0, num_queries = 0, num_keys = 0;
  int64_t dim_content = 0, dim_pos = 0, dim_value = 0;
  Scale scale = 1;
  // Forward writes, backward reads: out contiguous [B, H, Nq, Dv], lse contiguous [B, H, Nq].
  Ptr out = nullptr;
  LsePtr lse = nullptr;
  // Backward only: grad_out contiguous like out; gradients contiguous [B, H, N, D].
  ConstPtr grad_out = nullptr;
  Ptr grad_q_content = nullptr;
  Ptr grad_q_pos = nullptr;
  Ptr grad_k_content = nullptr;
  Ptr grad_k_pos = nullptr;
  Ptr grad_value = nullptr;
};

template <typename ConstPtr, typename Ptr>
struct SineEmbedParamsOf {
  ConstPtr boxes = nullptr;  // contiguous [N, coords], coords 2 (cx, cy) or 4 (cx, cy, w, h)
  int64_t num_boxes = 0, coords = 4, num_feats = 128;
  ConstPtr frequencies = nullptr;  // [num_feats / 2]: 2*pi / temperature^(2j / num_feats), accumulation type
  ConstPtr xy_scale = nullptr;     // contiguous [N, 2 * num_feats] or null (= 1)
  ConstPtr ref_wh = nullptr;       // contiguous [N, 2] or null (no modulation)
  Ptr embed = nullptr;             // [N, coords * num_feats], freshly allocated; backward reads it
  Ptr modulated_xy = nullptr;      // [N, 2 * num_feats] or null (plain embedding)
  // Backward only.
  ConstPtr grad_embed = nullptr;         // [N, coords * num_feats] or null (= 0)
  ConstPtr grad_modulated_xy = nullptr;  // [N, 2 * num_feats] or null (= 0)
  Ptr grad_boxes = nullptr;              // [N, coords]
  Ptr grad_xy_scale = nullptr;           // [N, 2 * num_feats] or null
  Ptr grad_ref_wh = nullptr;             // [N, 2] or null
};

// Levels of a multi-scale deformable attention call, at most kMaxDeformableLevels (their sizes
// travel by value in the parameter block, so a CUDA launch needs no device copy of them).
constexpr int kMaxDeformableLevels = 16;

// ValuePtr: value's element type where it differs from the rest (the CPU's bfloat16 values with
// float32 locations and weights).
template <typename ConstPtr, typename Ptr, typename ValuePtr = ConstPtr>
struct DeformableAttentionParamsOf {
  // value [B, S, H, D]: element strides of the batch, token and head dims; D is contiguous.
  ValuePtr value = nullptr;
  int64_t value_stride_b = 0, value_stride_s = 0, value_stride_h = 0;
  int64_t batch = 0, num_values = 0, heads = 0, head_dim = 0, num_queries = 0, levels = 0, points = 0;
  // Level l: height, width and first token in value (row-major, tokens start .. start + H W - 1).
  int64_t level_height[kMaxDeformableLevels] = {}, level_width[kMaxDeformableLevels] = {},
          level_start[kMaxDeformableLevels] = {};
  ConstPtr sampling_locations = nullptr;  // contiguous [B, Nq, H, L, P, 2]: (x, y) in [0, 1] of each level
  ConstPtr attention_weights = nullptr;   // contiguous [B, Nq, H, L, P]
  Ptr out = nullptr;                      // contiguous [B, Nq, H, D]
  // Backward only: grad_out like out; gradients contiguous like their inputs.
  ConstPtr grad_out = nullptr;
  Ptr grad_value = nullptr;
  Ptr grad_sampling_locations = nullptr;
  Ptr grad_attention_weights = nullptr;

  int64_t samples_per_query() const { return heads * levels * points; }
};

}  // namespace dabdetr
