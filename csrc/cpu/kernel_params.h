// Parameter blocks of the CPU kernels (op_params.h, typed) and their tiling. No torch header: the per-ISA translation units
// (isa_*.cpp) include only this and the kernel templates, so nothing compiled there with
// AVX-512 can leak into code that runs on a CPU without it.
#pragma once

#include <cstdint>

#include "op_params.h"

namespace dabdetr::cpu {

// Rows of queries one forward work item owns, and keys per tile of the online softmax. The
// bfloat16 kernel's query block is two AMX tiles of 16 rows (a partial tile goes through a
// zero-padded copy).
constexpr int64_t kBlockQ = 24;
constexpr int64_t kBlockQBf16 = 32;
constexpr int64_t kBlockK = 128;
// Score tiles are computed in column chunks of this width (two AVX-512 registers of fp32);
// packed key tiles are zero-padded to a multiple of it.
constexpr int64_t kColChunk = 32;
static_assert(kBlockK % kColChunk == 0, "key tile must be a whole number of column chunks");

template <typename T>
using Operand = OperandOf<const T*>;

// The attention's work items: the forward's are (batch, head, tile of BlockQ queries), the
// backward's (batch, head).
template <typename Base, int64_t BlockQ>
struct AttentionTiling : Base {
  int64_t num_query_tiles() const { return (this->num_queries + BlockQ - 1) / BlockQ; }
  int64_t forward_work_items() const { return this->batch * this->heads * num_query_tiles(); }
  int64_t backward_work_items() const { return this->batch * this->heads; }

  // The keys rounded up to whole tiles: the row length of packed key tiles and of dK^T, dV^T.
  int64_t padded_keys() const { return (this->num_keys + kBlockK - 1) / kBlockK * kBlockK; }
};

template <typename T>
struct AttentionParams : AttentionTiling<AttentionParamsOf<const T*, T*, T>, kBlockQ> {
  // Scratch each thread needs, in elements of T. Both passes gather the keys that are not
  // padded of one (batch, head) and run only those: the forward packs all its key tiles and
  // value rows once for the query tiles it runs; the backward accumulates the
  // keys' gradients in that order and scatters them at the end.
  int64_t forward_workspace() const {
    return kBlockQ * kBlockK + (this->dim_content + this->dim_pos) * this->padded_keys() +
           this->num_keys * this->dim_value + kBlockQ * this->dim_value + 2 * kBlockQ;
  }
  int64_t backward_workspace() const {
    const int64_t key_dims = this->dim_content + this->dim_pos;
    return 2 * kBlockQ * kBlockK + (2 * key_dims + this->dim_value) * kBlockK + this->num_queries +
           this->num_keys * (key_dims + this->dim_value);
  }
};

// bfloat16 values as their bit patterns: the per-ISA units see no torch type.
using Bf16 = uint16_t;

// The attention in bfloat16 dot products (attention_bf16_kernel.inc): operands and results
// bfloat16, the scale and the softmax statistics (lse) float32. Its scratch, in bytes, is sized
// by the kernel's unit.
using AttentionBf16Params = AttentionTiling<AttentionParamsOf<const Bf16*, Bf16*, float, float*>, kBlockQBf16>;

template <typename T>
using SineEmbedParams = SineEmbedParamsOf<const T*, T*>;

// A deformable attention sample's four bilinear corners (deformable_attention_kernel.inc): the
// token of each corner in value (-1 outside the level), its bilinear weight, and the position
// (fx, fy) within the cell; inside is false when no corner is inside the level.
template <typename T>
struct BilinearCorners {
  int64_t token[4];
  T weight[4];
  T fx, fy;
  bool inside;
};

// V: value's element type, T's or Bf16 (bfloat16 values, summed in T).
template <typename T, typename V = T>
struct DeformableAttentionParams : DeformableAttentionParamsOf<const T*, T*, const V*> {
  // The backward's work items: a batch entry's block of heads_per_item heads each.
  int64_t heads_per_item = 1;

  int64_t samples_per_group() const { return this->levels * this->points; }  // per (b, q, h)
  int64_t backward_work_items() const {
    return this->batch * ((this->heads + heads_per_item - 1) / heads_per_item);
  }

  // Scratch each thread needs, in elements of T: the corners of two query groups' samples (one
  // being summed while the next one's rows are prefetched), then a row of D (for head dims that
  // take no register layout).
  int64_t workspace() const {
    const int64_t corner_bytes = 2 * samples_per_group() * static_cast<int64_t>(sizeof(BilinearCorners<T>));
    return (corner_bytes + static_cast<int64_t>(sizeof(T)) - 1) / static_cast<int64_t>(sizeof(T)) + this->head_dim;
  }
};

}  // namespace dabdetr::cpu
