// CPU registrations of the dabdetr ops: validate, allocate, split the work with
// at::parallel_for and run the kernels of the instruction set chosen at load time.
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu/kernels.h"
#include "sine_frequencies.h"

namespace dabdetr {
namespace {

void check_cpu_dtype(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": the CPU kernel supports float32 and float64, got ", t.scalar_type(),
              " (use impl=\"reference\" for other dtypes)");
}

template <typename T>
cpu::Operand<T> operand(const std::optional<at::Tensor>& t) {
  cpu::Operand<T> o;
  if (t.has_value()) {
    o.data = t->data_ptr<T>();
    o.stride_b = t->stride(0);
    o.stride_h = t->stride(1);
    o.stride_n = t->stride(2);
  }
  return o;
}

template <typename T>
cpu::AttentionParams<T> attention_params(const AttentionSizes& s, const at::Tensor& q_content,
                                         const std::optional<at::Tensor>& q_pos,
                                         const at::Tensor& k_content,
                                         const std::optional<at::Tensor>& k_pos,
                                         const at::Tensor& value,
                                         const std::optional<at::Tensor>& key_padding_mask, double scale) {
  cpu::AttentionParams<T> p;
  p.q_content = operand<T>(q_content);
  p.q_pos = operand<T>(q_pos);
  p.k_content = operand<T>(k_content);
  p.k_pos = operand<T>(k_pos);
  p.value = operand<T>(value);
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
  p.scale = static_cast<T>(scale);
  return p;
}

std::tuple<at::Tensor, at::Tensor> modulated_attention_cpu(
    const at::Tensor& q_content, const std::optional<at::Tensor>& q_pos, const at::Tensor& k_content,
    const std::optional<at::Tensor>& k_pos, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, double scale) {
  const AttentionSizes s = check_attention_inputs(q_content, q_pos, k_content, k_pos, value, key_padding_mask);
  check_cpu_dtype(q_content, "modulated_attention");
  at::Tensor out = at::empty({s.batch, s.heads, s.num_queries, s.dim_value}, q_content.options());
  at::Tensor lse = at::empty({s.batch, s.heads, s.num_queries}, q_content.options());
  AT_DISPATCH_FLOATING_TYPES(q_content.scalar_type(), "modulated_attention_cpu", [&] {
    auto p = attention_params<scalar_t>(s, q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale);
    p.out = out.data_ptr<scalar_t>();
    p.lse = lse.data_ptr<scalar_t>();
    const auto& kernel = cpu::kernels<scalar_t>().attention_forward;
    at::parallel_for(0, p.forward_work_items(), 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> workspace(p.forward_workspace());
      kernel(p, begin, end, workspace.data());
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> modulated_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& q_content, const std::optional<at::Tensor>& q_pos,
    const at::Tensor& k_content, const std::optional<at::Tensor>& k_pos, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, const at::Tensor& out, const at::Tensor& lse,
    double scale) {
  const AttentionSizes s = check_attention_inputs(q_content, q_pos, k_content, k_pos, value, key_padding_mask);
  check_cpu_dtype(q_content, "modulated_attention_backward");
  check_attention_backward_inputs(s, q_content, grad_out, out, lse, q_content.scalar_type());
  const at::Tensor grad_out_c = grad_out.contiguous(), out_c = out.contiguous(), lse_c = lse.contiguous();
  const auto options = q_content.options();
  at::Tensor grad_q_content = at::empty({s.batch, s.heads, s.num_queries, s.dim_content}, options);
  at::Tensor grad_k_content = at::empty({s.batch, s.heads, s.num_keys, s.dim_content}, options);
  at::Tensor grad_value = at::empty({s.batch, s.heads, s.num_keys, s.dim_value}, options);
  const bool with_pos = q_pos.has_value();
  at::Tensor grad_q_pos = with_pos ? at::empty({s.batch, s.heads, s.num_queries, s.dim_pos}, options) : at::empty({0}, options);
  at::Tensor grad_k_pos = with_pos ? at::empty({s.batch, s.heads, s.num_keys, s.dim_pos}, options) : at::empty({0}, options);
  AT_DISPATCH_FLOATING_TYPES(q_content.scalar_type(), "modulated_attention_backward_cpu", [&] {
    auto p = attention_params<scalar_t>(s, q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale);
    p.out = out_c.data_ptr<scalar_t>();
    p.lse = lse_c.data_ptr<scalar_t>();
    p.grad_out = grad_out_c.data_ptr<scalar_t>();
    p.grad_q_content = grad_q_content.data_ptr<scalar_t>();
    p.grad_k_content = grad_k_content.data_ptr<scalar_t>();
    p.grad_value = grad_value.data_ptr<scalar_t>();
    if (with_pos) {
      p.grad_q_pos = grad_q_pos.data_ptr<scalar_t>();
      p.grad_k_pos = grad_k_pos.data_ptr<scalar_t>();
    }
    const auto& kernel = cpu::kernels<scalar_t>().attention_backward;
    at::parallel_for(0, p.backward_work_items(), 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> workspace(p.backward_workspace());
      kernel(p, begin, end, workspace.data());
    });
  });
  return {grad_q_content, grad_q_pos, grad_k_content, grad_k_pos, grad_value};
}

// Grain of the sine-embedding loops, in boxes (a box is 4 * num_feats outputs).
constexpr int64_t kBoxesPerTask = 64;

template <typename T>
cpu::SineEmbedParams<T> sine_params(const at::Tensor& boxes, const std::optional<at::Tensor>& xy_scale,
                                    const std::optional<at::Tensor>& ref_wh, const SineEmbedSizes& s,
                                    int64_t num_feats, const at::Tensor& frequencies) {
  cpu::SineEmbedParams<T> p;
  p.boxes = boxes.data_ptr<T>();
  p.num_boxes = s.num_boxes;
  p.coords = s.coords;
  p.num_feats = num_feats;
  p.frequencies = frequencies.data_ptr<T>();
  p.xy_scale = xy_scale.has_value() ? xy_scale->data_ptr<T>() : nullptr;
  p.ref_wh = ref_wh.has_value() ? ref_wh->data_ptr<T>() : nullptr;
  return p;
}

std::tuple<at::Tensor, at::Tensor> sine_embed_forward(const at::Tensor& boxes_in,
                                                      const std::optional<at::Tensor>& xy_scale_in,
                                                      const std::optional<at::Tensor>& ref_wh_in,
                                                      int64_t num_feats, double temperature, bool modulated) {
  const SineEmbedSizes s = check_sine_embed_inputs(boxes_in, xy_scale_in, ref_wh_in, num_feats);
  check_cpu_dtype(boxes_in, "anchor_sine_embed");
  const at::Tensor boxes = boxes_in.contiguous();
  const auto xy_scale = contiguous(xy_scale_in), ref_wh = contiguous(ref_wh_in);
  const at::Tensor frequencies = sine_frequencies(num_feats, temperature, boxes.options());
  at::Tensor embed = at::empty(with_last_dim(boxes, s.coords * num_feats), boxes.options());
  at::Tensor modulated_xy = modulated ? at::empty(with_last_dim(boxes, 2 * num_feats), boxes.options())
                                      : at::empty({0}, boxes.options());
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "anchor_sine_embed_cpu", [&] {
    auto p = sine_params<scalar_t>(boxes, xy_scale, ref_wh, s, num_feats, frequencies);
    p.embed = embed.data_ptr<scalar_t>();
    p.modulated_xy = modulated ? modulated_xy.data_ptr<scalar_t>() : nullptr;
    const auto& kernel = cpu::kernels<scalar_t>().sine_embed_forward;
    at::parallel_for(0, s.num_boxes, kBoxesPerTask, [&](int64_t begin, int64_t end) { kernel(p, begin, end); });
  });
  return {embed, modulated_xy};
}

at::Tensor anchor_sine_embed_cpu(const at::Tensor& boxes, int64_t num_feats, double temperature) {
  return std::get<0>(sine_embed_forward(boxes, std::nullopt, std::nullopt, num_feats, temperature, false));
}

std::tuple<at::Tensor, at::Tensor> modulated_anchor_sine_embed_cpu(const at::Tensor& boxes,
                                                                   const std::optional<at::Tensor>& xy_scale,
                                                                   const std::optional<at::Tensor>& ref_wh,
                                                                   int64_t num_feats, double temperature) {
  return sine_embed_forward(boxes, xy_scale, ref_wh, num_feats, temperature, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> anchor_sine_embed_backward_cpu(
    const std::optional<at::Tensor>& grad_embed, const std::optional<at::Tensor>& grad_modulated_xy,
    const at::Tensor& embed, const at::Tensor& boxes_in, const std::optional<at::Tensor>& xy_scale_in,
    const std::optional<at::Tensor>& ref_wh_in, int64_t num_feats, double temperature) {
  const SineEmbedSizes s = check_sine_embed_inputs(boxes_in, xy_scale_in, ref_wh_in, num_feats);
  check_cpu_dtype(boxes_in, "anchor_sine_embed_backward");
  check_sine_embed_backward_inputs(boxes_in, s, num_feats, embed, grad_embed, grad_modulated_xy);
  const auto xy_shape = with_last_dim(boxes_in, 2 * num_feats);
  const at::Tensor boxes = boxes_in.contiguous(), embed_c = embed.contiguous();
  const auto xy_scale = contiguous(xy_scale_in), ref_wh = contiguous(ref_wh_in);
  const auto grad_e = contiguous(grad_embed), grad_m = contiguous(grad_modulated_xy);
  const at::Tensor frequencies = sine_frequencies(num_feats, temperature, boxes.options());
  at::Tensor grad_boxes = at::empty(boxes.sizes(), boxes.options());
  at::Tensor grad_xy_scale = xy_scale.has_value() ? at::zeros(xy_shape, boxes.options()) : at::empty({0}, boxes.options());
  at::Tensor grad_ref_wh = ref_wh.has_value() ? at::zeros(with_last_dim(boxes, 2), boxes.options())
                                              : at::empty({0}, boxes.options());
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "anchor_sine_embed_backward_cpu", [&] {
    auto p = sine_params<scalar_t>(boxes, xy_scale, ref_wh, s, num_feats, frequencies);
    p.embed = embed_c.data_ptr<scalar_t>();
    p.grad_embed = grad_e.has_value() ? grad_e->data_ptr<scalar_t>() : nullptr;
    p.grad_modulated_xy = grad_m.has_value() ? grad_m->data_ptr<scalar_t>() : nullptr;
    p.grad_boxes = grad_boxes.data_ptr<scalar_t>();
    p.grad_xy_scale = xy_scale.has_value() ? grad_xy_scale.data_ptr<scalar_t>() : nullptr;
    p.grad_ref_wh = ref_wh.has_value() ? grad_ref_wh.data_ptr<scalar_t>() : nullptr;
    const auto& kernel = cpu::kernels<scalar_t>().sine_embed_backward;
    at::parallel_for(0, s.num_boxes, kBoxesPerTask, [&](int64_t begin, int64_t end) { kernel(p, begin, end); });
  });
  return {grad_boxes, grad_xy_scale, grad_ref_wh};
}

}  // namespace

TORCH_LIBRARY_IMPL(dabdetr, CPU, m) {
  m.impl("modulated_attention", &modulated_attention_cpu);
  m.impl("modulated_attention_backward", &modulated_attention_backward_cpu);
  m.impl("anchor_sine_embed", &anchor_sine_embed_cpu);
  m.impl("modulated_anchor_sine_embed", &modulated_anchor_sine_embed_cpu);
  m.impl("anchor_sine_embed_backward", &anchor_sine_embed_backward_cpu);
}

}  // namespace dabdetr
