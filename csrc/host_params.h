// What the CPU and CUDA registrations share between validation and launch: filling the
// parameter blocks of op_params.h from tensors, and allocating the ops' outputs and gradients.
// data_of(tensor) gives a backend's pointer: typed (t.data_ptr<T>()) on the CPU, void* on CUDA.
#pragma once

#include <optional>
#include <tuple>

#include <ATen/ATen.h>

#include "checks.h"
#include "op_params.h"

namespace dabdetr {

template <typename Params, typename DataOf>
void set_attention_inputs(Params& p, const AttentionSizes& s, const at::Tensor& q_content,
                          const std::optional<at::Tensor>& q_pos, const at::Tensor& k_content,
                          const std::optional<at::Tensor>& k_pos, const at::Tensor& value,
                          const std::optional<at::Tensor>& key_padding_mask, DataOf data_of) {
  auto operand = [&](auto& o, const std::optional<at::Tensor>& t) {
    if (!t.has_value()) return;
    o.data = data_of(*t);
    o.stride_b = t->stride(0);
    o.stride_h = t->stride(1);
    o.stride_n = t->stride(2);
  };
  operand(p.q_content, q_content);
  operand(p.q_pos, q_pos);
  operand(p.k_content, k_content);
  operand(p.k_pos, k_pos);
  operand(p.value, value);
  if (key_padding_mask.has_value()) {
    p.key_padding_mask = key_padding_mask->data_ptr<bool>();
    p.mask_stride_b = key_padding_mask->stride(0);
    p.mask_stride_n = key_padding_mask->stride(1);
  }
  p.batch = s.batch;
  p.heads = s.heads;
  p.num_queries = s.num_queries;
  p.num_keys = s.num_keys;
  p.dim_content = s.dim_content;
  p.dim_pos = s.dim_pos;
  p.dim_value = s.dim_value;
}

// The five gradients of the attention backward (the positional ones empty without q_pos/k_pos).
struct AttentionGrads {
  bool with_pos;
  at::Tensor q_content, q_pos, k_content, k_pos, value;

  AttentionGrads(const AttentionSizes& s, const at::TensorOptions& options, bool with_pos_)
      : with_pos(with_pos_),
        q_content(at::empty({s.batch, s.heads, s.num_queries, s.dim_content}, options)),
        q_pos(with_pos_ ? at::empty({s.batch, s.heads, s.num_queries, s.dim_pos}, options) : at::empty({0}, options)),
        k_content(at::empty({s.batch, s.heads, s.num_keys, s.dim_content}, options)),
        k_pos(with_pos_ ? at::empty({s.batch, s.heads, s.num_keys, s.dim_pos}, options) : at::empty({0}, options)),
        value(at::empty({s.batch, s.heads, s.num_keys, s.dim_value}, options)) {
    if (s.num_queries == 0) {  // no query: nothing flows back to the keys and values
      k_content.zero_();
      k_pos.zero_();
      value.zero_();
    }
  }

  template <typename Params, typename DataOf>
  void set(Params& p, DataOf data_of) {
    p.grad_q_content = data_of(q_content);
    p.grad_k_content = data_of(k_content);
    p.grad_value = data_of(value);
    if (with_pos) {
      p.grad_q_pos = data_of(q_pos);
      p.grad_k_pos = data_of(k_pos);
    }
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const {
    return {q_content, q_pos, k_content, k_pos, value};
  }
};

template <typename Params, typename DataOf>
void set_sine_embed_inputs(Params& p, const SineEmbedSizes& s, int64_t num_feats, const at::Tensor& boxes,
                           const std::optional<at::Tensor>& xy_scale, const std::optional<at::Tensor>& ref_wh,
                           const at::Tensor& frequencies, DataOf data_of) {
  p.boxes = data_of(boxes);
  p.num_boxes = s.num_boxes;
  p.coords = s.coords;
  p.num_feats = num_feats;
  p.frequencies = data_of(frequencies);
  p.xy_scale = xy_scale.has_value() ? data_of(*xy_scale) : nullptr;
  p.ref_wh = ref_wh.has_value() ? data_of(*ref_wh) : nullptr;
}

// The outputs of the sine embedding: embed [..., coords * n] and modulated_xy [..., 2n] (empty
// for the plain embedding).
struct SineEmbedOutputs {
  at::Tensor embed, modulated_xy;

  SineEmbedOutputs(const at::Tensor& boxes, const SineEmbedSizes& s, int64_t num_feats, bool modulated)
      : embed(at::empty(with_last_dim(boxes, s.coords * num_feats), boxes.options())),
        modulated_xy(modulated ? at::empty(with_last_dim(boxes, 2 * num_feats), boxes.options())
                               : at::empty({0}, boxes.options())) {}

  template <typename Params, typename DataOf>
  void set(Params& p, bool modulated, DataOf data_of) {
    p.embed = data_of(embed);
    p.modulated_xy = modulated ? data_of(modulated_xy) : nullptr;
  }
};

// The gradients of the sine-embedding backward: boxes, and xy_scale / ref_wh (zeros where given,
// empty where not), with the saved embedding and incoming gradients read from.
struct SineEmbedGrads {
  bool with_xy_scale, with_ref_wh;
  at::Tensor boxes, xy_scale, ref_wh;

  SineEmbedGrads(const at::Tensor& boxes_in, int64_t num_feats, bool with_xy_scale_, bool with_ref_wh_)
      : with_xy_scale(with_xy_scale_),
        with_ref_wh(with_ref_wh_),
        boxes(at::empty(boxes_in.sizes(), boxes_in.options())),
        xy_scale(with_xy_scale_ ? at::zeros(with_last_dim(boxes_in, 2 * num_feats), boxes_in.options())
                                : at::empty({0}, boxes_in.options())),
        ref_wh(with_ref_wh_ ? at::zeros(with_last_dim(boxes_in, 2), boxes_in.options())
                            : at::empty({0}, boxes_in.options())) {}

  template <typename Params, typename DataOf>
  void set(Params& p, const at::Tensor& embed, const std::optional<at::Tensor>& grad_embed,
           const std::optional<at::Tensor>& grad_modulated_xy, DataOf data_of) {
    p.embed = data_of(embed);
    p.grad_embed = grad_embed.has_value() ? data_of(*grad_embed) : nullptr;
    p.grad_modulated_xy = grad_modulated_xy.has_value() ? data_of(*grad_modulated_xy) : nullptr;
    p.grad_boxes = data_of(boxes);
    p.grad_xy_scale = with_xy_scale ? data_of(xy_scale) : nullptr;
    p.grad_ref_wh = with_ref_wh ? data_of(ref_wh) : nullptr;
  }

  std::tuple<at::Tensor, at::Tensor, at::Tensor> tuple() const { return {boxes, xy_scale, ref_wh}; }
};

// The kernels' parameter block holds at most kMaxDeformableLevels levels.
inline void check_deformable_levels_served(const DeformableAttentionSizes& s, const char* op) {
  TORCH_CHECK(s.levels <= kMaxDeformableLevels, op, ": the kernels serve at most ", kMaxDeformableLevels,
              " levels, got ", s.levels, " (use impl=\"reference\")");
}

// The inputs of the deformable attention (value read in place, the other two contiguous) and its
// sizes (check_deformable_levels_served first).
template <typename Params, typename DataOf>
void set_deformable_attention_inputs(Params& p, const DeformableAttentionSizes& s, const at::Tensor& value,
                                     const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
                                     DataOf data_of) {
  p.value = data_of(value);
  p.value_stride_b = value.stride(0);
  p.value_stride_s = value.stride(1);
  p.value_stride_h = value.stride(2);
  p.batch = s.batch;
  p.num_values = s.num_values;
  p.heads = s.heads;
  p.head_dim = s.head_dim;
  p.num_queries = s.num_queries;
  p.levels = s.levels;
  p.points = s.points;
  for (int64_t l = 0; l < s.levels; ++l) {
    p.level_height[l] = s.heights[l];
    p.level_width[l] = s.widths[l];
    p.level_start[l] = s.starts[l];
  }
  p.sampling_locations = data_of(sampling_locations);
  p.attention_weights = data_of(attention_weights);
}

// The gradients of the deformable attention backward, in the inputs' dtype and layout (contiguous).
struct DeformableAttentionGrads {
  at::Tensor value, sampling_locations, attention_weights;

  DeformableAttentionGrads(const at::Tensor& value_in, const at::Tensor& sampling_locations_in,
                           const at::Tensor& attention_weights_in)
      : value(at::zeros(value_in.sizes(), value_in.options())),
        sampling_locations(at::empty(sampling_locations_in.sizes(), sampling_locations_in.options())),
        attention_weights(at::empty(attention_weights_in.sizes(), attention_weights_in.options())) {}

  std::tuple<at::Tensor, at::Tensor, at::Tensor> tuple() const { return {value, sampling_locations, attention_weights}; }
};

}  // namespace dabdetr
