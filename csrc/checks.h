// Input validation shared by the CPU and CUDA registrations. Messages name the argument, so a
// caller of torch.ops.dabdetr.* directly gets the same clear error as the Python wrappers.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace dabdetr {

// torch's Python name of a dtype ("float32"), for build_info's lists of kernel dtypes.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "float32";
    case at::kDouble: return "float64";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return c10::toString(t);
  }
}

struct AttentionSizes {
  int64_t batch, heads, num_queries, num_keys, dim_content, dim_pos, dim_value;
};

inline void check_floating_operand(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 4, name, " must have 4 dims [B, H, N, D], got shape ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " has dtype ", t.scalar_type(),
              " but q_content has dtype ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), " but q_content is on ",
              like.device());
  TORCH_CHECK(t.size(3) <= 1 || t.stride(3) == 1, name,
              " must be contiguous in its last dim (stride 1), got strides ", t.strides());
}

inline AttentionSizes check_attention_inputs(const at::Tensor& q_content,
                                             const std::optional<at::Tensor>& q_pos,
                                             const at::Tensor& k_content,
                                             const std::optional<at::Tensor>& k_pos,
                                             const at::Tensor& value,
                                             const std::optional<at::Tensor>& key_padding_mask) {
  TORCH_CHECK(at::isFloatingType(q_content.scalar_type()),
              "q_content must be a floating tensor, got ", q_content.scalar_type());
  check_floating_operand(q_content, "q_content", q_content);
  check_floating_operand(k_content, "k_content", q_content);
  check_floating_operand(value, "value", q_content);
  TORCH_CHECK(q_pos.has_value() == k_pos.has_value(),
              "q_pos and k_pos must be given together or both be None");
  AttentionSizes s{q_content.size(0), q_content.size(1), q_content.size(2), k_content.size(2),
                   q_content.size(3), 0, value.size(3)};
  auto expect = [](bool ok, const char* name, const char* what, const at::Tensor& t) {
    TORCH_CHECK(ok, name, " has shape ", t.sizes(), ", which does not match ", what);
  };
  expect(k_content.size(0) == s.batch && k_content.size(1) == s.heads, "k_content",
         "q_content in B and H", k_content);
  expect(k_content.size(3) == s.dim_content, "k_content", "q_content in the last dim (Dc)", k_content);
  expect(value.size(0) == s.batch && value.size(1) == s.heads, "value", "q_content in B and H", value);
  expect(value.size(2) == s.num_keys, "value", "k_content in Nk", value);
  if (q_pos.has_value()) {
    check_floating_operand(*q_pos, "q_pos", q_content);
    check_floating_operand(*k_pos, "k_pos", q_content);
    expect(q_pos->size(0) == s.batch && q_pos->size(1) == s.heads && q_pos->size(2) == s.num_queries,
           "q_pos", "q_content in B, H and Nq", *q_pos);
    expect(k_pos->size(0) == s.batch && k_pos->size(1) == s.heads && k_pos->size(2) == s.num_keys,
           "k_pos", "k_content in B, H and Nk", *k_pos);
    expect(k_pos->size(3) == q_pos->size(3), "k_pos", "q_pos in the last dim (Dp)", *k_pos);
    s.dim_pos = q_pos->size(3);
  }
  if (key_padding_mask.has_value()) {
    const at::Tensor& m = *key_padding_mask;
    TORCH_CHECK(m.scalar_type() == at::kBool, "key_padding_mask must be bool (True = padded), got ",
                m.scalar_type());
    TORCH_CHECK(m.device() == q_content.device(), "key_padding_mask is on ", m.device(),
                " but q_content is on ", q_content.device());
    expect(m.dim() == 2 && m.size(0) == s.batch && m.size(1) == s.num_keys, "key_padding_mask",
           "[B, Nk] of q_content and k_content", m);
  }
  return s;
}

struct SineEmbedSizes {
  int64_t num_boxes, coords;
};

inline SineEmbedSizes check_sine_embed_inputs(const at::Tensor& boxes,
                                              const std::optional<at::Tensor>& xy_scale,
                                              const std::optional<at::Tensor>& ref_wh,
                                              int64_t num_feats) {
  TORCH_CHECK(at::isFloatingType(boxes.scalar_type()), "boxes must be a floating tensor, got ",
              boxes.scalar_type());
  TORCH_CHECK(boxes.dim() >= 1 && (boxes.size(-1) == 2 || boxes.size(-1) == 4),
              "boxes must have shape [..., 4] (cx, cy, w, h) or [..., 2] (cx, cy), got ", boxes.sizes());
  TORCH_CHECK(num_feats > 0 && num_feats % 2 == 0, "num_feats must be positive and even, got ",
              num_feats);
  const auto leading = boxes.sizes().slice(0, boxes.dim() - 1);
  auto check_companion = [&](const at::Tensor& t, const char* name, int64_t last) {
    TORCH_CHECK(t.scalar_type() == boxes.scalar_type(), name, " has dtype ", t.scalar_type(),
                " but boxes has dtype ", boxes.scalar_type());
    TORCH_CHECK(t.device() == boxes.device(), name, " is on ", t.device(), " but boxes is on ",
                boxes.device());
    TORCH_CHECK(t.dim() == boxes.dim() && t.sizes().slice(0, t.dim() - 1) == leading &&
                    t.size(-1) == last,
                name, " must have shape [..., ", last, "] with the leading dims of boxes ",
                boxes.sizes(), ", got ", t.sizes());
  };
  if (xy_scale.has_value()) check_companion(*xy_scale, "xy_scale", 2 * num_feats);
  if (ref_wh.has_value()) {
    TORCH_CHECK(boxes.size(-1) == 4, "ref_wh needs boxes with w and h ([..., 4]), got boxes ",
                boxes.sizes());
    check_companion(*ref_wh, "ref_wh", 2);
  }
  return {boxes.numel() / boxes.size(-1), boxes.size(-1)};
}

// The sizes of a multi-scale deformable attention call, and its levels read from spatial_shapes.
struct DeformableAttentionSizes {
  int64_t batch, num_values, heads, head_dim, num_queries, levels, points;
  std::vector<int64_t> heights, widths, starts;
};

// spatial_shapes and level_start_index hold sizes, read on the host: they may be on the CPU or on the
// device of value (there, reading them waits for the device).
inline std::vector<int64_t> read_index_tensor(const at::Tensor& t, const char* name, const at::Tensor& value) {
  TORCH_CHECK(!at::isFloatingType(t.scalar_type()) && !at::isComplexType(t.scalar_type()) &&
                  t.scalar_type() != at::kBool,
              name, " must hold integers (int64), got ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu() || t.device() == value.device(), name, " is on ", t.device(),
              " but value is on ", value.device(), " (it may be on the CPU or on value's device)");
  const at::Tensor host = t.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(host.data_ptr<int64_t>(), host.data_ptr<int64_t>() + host.numel());
}

// Whether value may be float16 or bfloat16 where sampling_locations and attention_weights are
// float32 (the CPU kernels' mixed precision); elsewhere all three share one dtype.
constexpr bool kFloat32With16BitValues = true;

inline DeformableAttentionSizes check_deformable_attention_inputs(const at::Tensor& value,
                                                                  const at::Tensor& spatial_shapes,
                                                                  const std::optional<at::Tensor>& level_start_index,
                                                                  const at::Tensor& sampling_locations,
                                                                  const at::Tensor& attention_weights,
                                                                  bool float32_with_16bit_values = false) {
  TORCH_CHECK(at::isFloatingType(value.scalar_type()), "value must be a floating tensor, got ", value.scalar_type());
  TORCH_CHECK(value.dim() == 4, "value must have 4 dims [B, S, H, D], got shape ", value.sizes());
  TORCH_CHECK(value.size(3) <= 1 || value.stride(3) == 1,
              "value must be contiguous in its last dim (stride 1), got strides ", value.strides());
  for (const auto& [t, name] : {std::pair<const at::Tensor&, const char*>{sampling_locations, "sampling_locations"},
                                {attention_weights, "attention_weights"}}) {
    const bool mixed = float32_with_16bit_values && t.scalar_type() == at::kFloat &&
                       (value.scalar_type() == at::kHalf || value.scalar_type() == at::kBFloat16);
    TORCH_CHECK(t.scalar_type() == value.scalar_type() || mixed, name, " has dtype ", t.scalar_type(),
                " but value has dtype ", value.scalar_type(),
                float32_with_16bit_values ? " (16-bit values may go with float32 locations and weights)" : "");
    TORCH_CHECK(t.device() == value.device(), name, " is on ", t.device(), " but value is on ", value.device());
  }
  TORCH_CHECK(attention_weights.scalar_type() == sampling_locations.scalar_type(), "attention_weights has dtype ",
              attention_weights.scalar_type(), " but sampling_locations has dtype ", sampling_locations.scalar_type());
  TORCH_CHECK(sampling_locations.dim() == 6 && sampling_locations.size(5) == 2,
              "sampling_locations must have shape [B, Nq, H, L, P, 2], got ", sampling_locations.sizes());
  DeformableAttentionSizes s{value.size(0), value.size(1), value.size(2), value.size(3),
                             sampling_locations.size(1), sampling_locations.size(3), sampling_locations.size(4),
                             {}, {}, {}};
  TORCH_CHECK(sampling_locations.size(0) == s.batch && sampling_locations.size(2) == s.heads,
              "sampling_locations has shape ", sampling_locations.sizes(), ", whose B and H do not match value ",
              value.sizes());
  TORCH_CHECK(s.levels >= 1 && s.points >= 1, "sampling_locations must have at least one level and one point, got ",
              sampling_locations.sizes());
  TORCH_CHECK(attention_weights.sizes() == sampling_locations.sizes().slice(0, 5), "attention_weights must have shape ",
              sampling_locations.sizes().slice(0, 5), " [B, Nq, H, L, P] of sampling_locations, got ",
              attention_weights.sizes());
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(0) == s.levels && spatial_shapes.size(1) == 2,
              "spatial_shapes must have shape [L, 2] = [", s.levels, ", 2] (the levels of sampling_locations), got ",
              spatial_shapes.sizes());
  const std::vector<int64_t> shapes = read_index_tensor(spatial_shapes, "spatial_shapes", value);
  int64_t total = 0;
  for (int64_t l = 0; l < s.levels; ++l) {
    const int64_t h = shapes[2 * l], w = shapes[2 * l + 1];
    TORCH_CHECK(h >= 1 && w >= 1, "spatial_shapes: level ", l, " has size ", h, " x ", w,
                "; every level needs a height and width of at least 1");
    s.heights.push_back(h);
    s.widths.push_back(w);
    s.starts.push_back(total);
    total += h * w;
  }
  TORCH_CHECK(total == s.num_values, "spatial_shapes: the levels hold ", total, " tokens (sum of H * W) but value has S = ",
              s.num_values);
  if (level_start_index.has_value()) {
    TORCH_CHECK(level_start_index->dim() == 1 && level_start_index->size(0) == s.levels,
                "level_start_index must have shape [L] = [", s.levels, "], got ", level_start_index->sizes());
    const std::vector<int64_t> starts = read_index_tensor(*level_start_index, "level_start_index", value);
    TORCH_CHECK(starts == s.starts, "level_start_index is ", at::IntArrayRef(starts),
                " but the levels of spatial_shapes start at ", at::IntArrayRef(s.starts));
  }
  return s;
}

// The shape of `t` with its last dim replaced by `last`.
inline std::vector<int64_t> with_last_dim(const at::Tensor& t, int64_t last) {
  std::vector<int64_t> shape(t.sizes().begin(), t.sizes().end());
  shape.back() = last;
  return shape;
}

inline std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

inline void check_like(const at::Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType dtype,
                       const at::Device& device) {
  TORCH_CHECK(t.sizes() == shape && t.scalar_type() == dtype && t.device() == device, name, " must be ", dtype,
              " ", shape, " on ", device, ", got ", t.scalar_type(), " ", t.sizes(), " on ", t.device());
}

// The incoming gradient and saved results of the attention backward; lse is kept in lse_dtype.
inline void check_attention_backward_inputs(const AttentionSizes& s, const at::Tensor& q_content,
                                            const at::Tensor& grad_out, const at::Tensor& out,
                                            const at::Tensor& lse, at::ScalarType lse_dtype) {
  const std::vector<int64_t> out_shape{s.batch, s.heads, s.num_queries, s.dim_value};
  check_like(grad_out, "grad_out", out_shape, q_content.scalar_type(), q_content.device());
  check_like(out, "out", out_shape, q_content.scalar_type(), q_content.device());
  check_like(lse, "lse", at::IntArrayRef(out_shape).slice(0, 3), lse_dtype, q_content.device());
}

// The saved embedding and incoming gradients of the sine-embedding backward.
inline void check_sine_embed_backward_inputs(const at::Tensor& boxes, const SineEmbedSizes& s, int64_t num_feats,
                                             const at::Tensor& embed, const std::optional<at::Tensor>& grad_embed,
                                             const std::optional<at::Tensor>& grad_modulated_xy) {
  const auto embed_shape = with_last_dim(boxes, s.coords * num_feats);
  check_like(embed, "embed", embed_shape, boxes.scalar_type(), boxes.device());
  if (grad_embed.has_value()) check_like(*grad_embed, "grad_embed", embed_shape, boxes.scalar_type(), boxes.device());
  if (grad_modulated_xy.has_value())
    check_like(*grad_modulated_xy, "grad_modulated_xy", with_last_dim(boxes, 2 * num_feats), boxes.scalar_type(),
               boxes.device());
}

// The incoming gradient of the deformable attention backward: [B, Nq, H * D] like its output, in
// the locations' dtype (value's, or float32 where value is 16-bit and they are float32).
inline void check_deformable_attention_backward_inputs(const DeformableAttentionSizes& s, const at::Tensor& value,
                                                       const at::Tensor& sampling_locations,
                                                       const at::Tensor& grad_out) {
  check_like(grad_out, "grad_out", {s.batch, s.num_queries, s.heads * s.head_dim}, sampling_locations.scalar_type(),
             value.device());
}

}  // namespace dabdetr
