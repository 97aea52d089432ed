// Plain parameter blocks for the CPU kernels. No torch header: the per-ISA translation units
// (isa_*.cpp) include only this and the kernel templates, so nothing compiled there with
// AVX-512 can leak into code that runs on a CPU without it.
#pragma once

#include <cstdint>

namespace dabdetr::cpu {

// Rows of queries one forward work item owns, and keys per tile of the online softmax.
constexpr int64_t kBlockQ = 32;
constexpr int64_t kBlockK = 128;
// Score tiles are computed in column chunks of this width (two AVX-512 registers of fp32);
// packed key tiles are zero-padded to a multiple of it.
constexpr int64_t kColChunk = 32;
static_assert(kBlockK % kColChunk == 0, "key tile must be a whole number of column chunks");

// A [B, H, N, D] operand: strides in elements of the batch, head and token dims; the feature
// dim is contiguous.
template <typename T>
struct Operand {
  const T* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_n = 0;

  const T* at(int64_t b, int64_t h) const { return data + b * stride_b + h * stride_h; }
};

template <typename T>
struct AttentionParams {
  Operand<T> q_content, q_pos, k_content, k_pos, value;  // q_pos/k_pos.data null: content only
  const bool* key_padding_mask = nullptr;                 // [B, Nk], true = padded; may be null
  int64_t mask_stride_b = 0, mask_stride_n = 0;
  int64_t batch = 0, heads = 0, num_queries = 0, num_keys = 0;
  int64_t dim_content = 0, dim_pos = 0, dim_value = 0;
  T scale = 1;
  // Forward writes these; backward reads them. Contiguous [B, H, Nq, Dv] and [B, H, Nq].
  T* out = nullptr;
  T* lse = nullptr;
  // Backward only. grad_out contiguous [B, H, Nq, Dv]; grads contiguous like their inputs.
  const T* grad_out = nullptr;
  T* grad_q_content = nullptr;
  T* grad_q_pos = nullptr;
  T* grad_k_content = nullptr;
  T* grad_k_pos = nullptr;
  T* grad_value = nullptr;

  int64_t num_query_tiles() const { return (num_queries + kBlockQ - 1) / kBlockQ; }
  int64_t forward_work_items() const { return batch * heads * num_query_tiles(); }
  int64_t backward_work_items() const { return batch * heads; }

  // Scratch each thread needs, in elements of T.
  int64_t forward_workspace() const {
    return kBlockQ * kBlockK + (dim_content + dim_pos) * kBlockK + kBlockK + kBlockQ * dim_value +
           2 * kBlockQ;
  }
  int64_t backward_workspace() const {
    return 2 * kBlockQ * kBlockK + (dim_content + dim_pos + dim_value) * kBlockK + kBlockK +
           num_queries;
  }
};

template <typename T>
struct SineEmbedParams {
  const T* boxes = nullptr;  // contiguous [N, coords], coords 2 (cx, cy) or 4 (cx, cy, w, h)
  int64_t num_boxes = 0;
  int64_t coords = 4;
  int64_t num_feats = 128;
  const T* frequencies = nullptr;  // [num_feats / 2]: 2*pi / temperature^(2j / num_feats)
  const T* xy_scale = nullptr;     // contiguous [N, 2 * num_feats] or null (= 1)
  const T* ref_wh = nullptr;       // contiguous [N, 2] or null (no modulation)
  T* embed = nullptr;              // [N, coords * num_feats]; backward reads it
  T* modulated_xy = nullptr;       // [N, 2 * num_feats] or null (plain embedding)
  // Backward only.
  const T* grad_embed = nullptr;         // [N, coords * num_feats] or null (= 0)
  const T* grad_modulated_xy = nullptr;  // [N, 2 * num_feats] or null (= 0)
  T* grad_boxes = nullptr;               // [N, coords]
  T* grad_xy_scale = nullptr;            // [N, 2 * num_feats] or null
  T* grad_ref_wh = nullptr;              // [N, 2] or null
};

}  // namespace dabdetr::cpu
