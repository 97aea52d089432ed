// CUDA registrations of the dabdetr ops: validate, allocate, fill the torch-free launch structs
// of launch.h and launch on torch's current stream of the inputs' device.
#include <pybind11/pybind11.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <string>

#include "checks.h"
#include "cuda/launch.h"
#include "sine_frequencies.h"

namespace dabdetr {
namespace cuda {

pybind11::dict cuda_build_info() {
  pybind11::dict info;
  pybind11::list archs;
  std::string list = DABDETR_CUDA_ARCHS;
  for (size_t start = 0; start < list.size();) {
    size_t end = list.find_first_of("; ", start);
    if (end == std::string::npos) end = list.size();
    if (end > start) archs.append(list.substr(start, end - start));
    start = end + 1;
  }
  info["cuda_archs"] = archs;
  info["cuda_max_head_dim"] = kMaxHeadDim;
  info["cuda_max_attention_rows"] = kMaxAttentionRows;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
  return info;
}

namespace {

Dtype dtype_of(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return Dtype::kFloat32;
    case at::kDouble: return Dtype::kFloat64;
    case at::kHalf: return Dtype::kFloat16;
    case at::kBFloat16: return Dtype::kBFloat16;
    default: TORCH_CHECK(false, op, ": the CUDA kernels support float32, float64, float16 and bfloat16, got ", t.scalar_type());
  }
}

// Accumulation (and lse) dtype: float32, or float64 for float64 inputs.
at::ScalarType acc_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

Operand operand(const std::optional<at::Tensor>& t) {
  Operand o;
  if (t.has_value()) {
    o.data = t->data_ptr();
    o.stride_b = t->stride(0);
    o.stride_h = t->stride(1);
    o.stride_n = t->stride(2);
  }
  return o;
}

// With DABDETR_CUDA_SYNC=1 every op synchronizes its stream after its kernels, so a fault inside a
// kernel is reported by the op that launched it (not by whatever synchronizes next).
bool sync_after_launch() {
  static const bool enabled = [] {
    const char* value = std::getenv("DABDETR_CUDA_SYNC");
    return value != nullptr && std::string(value) != "" && std::string(value) != "0";
  }();
  return enabled;
}

// Turns a launch's status (and, in sync mode, the kernels' completion) into an error naming the op.
void check_launch(cudaError_t error, const char* op) {
  TORCH_CHECK(error == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(error));
  if (sync_after_launch()) {
    error = cudaStreamSynchronize(c10::cuda::getCurrentCUDAStream());
    TORCH_CHECK(error == cudaSuccess, op, ": CUDA kernel failed: ", cudaGetErrorString(error));
  }
}

// The grid's y dimension (at most 65535 blocks) covers the queries and keys of one (batch, head).
void check_grid(const AttentionSizes& s, const char* op) {
  TORCH_CHECK(s.num_queries <= kMaxAttentionRows && s.num_keys <= kMaxAttentionRows, op,
              ": the CUDA kernel serves at most ", kMaxAttentionRows, " queries and keys per head, got Nq=",
              s.num_queries, " Nk=", s.num_keys, " (use impl=\"reference\")");
  TORCH_CHECK(s.batch * s.heads <= INT32_MAX, op, ": batch * heads = ", s.batch * s.heads,
              " exceeds the CUDA grid (at most ", INT32_MAX, ")");
}

AttentionArgs attention_args(const AttentionSizes& s, const at::Tensor& q_content, const std::optional<at::Tensor>& q_pos,
                             const at::Tensor& k_content, const std::optional<at::Tensor>& k_pos, const at::Tensor& value,
                             const std::optional<at::Tensor>& key_padding_mask, double scale, const char* op) {
  check_grid(s, op);
  TORCH_CHECK(std::max({s.dim_content, s.dim_pos, s.dim_value}) <= kMaxHeadDim, op,
              ": the CUDA kernel supports head dims up to ", kMaxHeadDim, ", got Dc=", s.dim_content,
              " Dp=", s.dim_pos, " Dv=", s.dim_value, " (use impl=\"reference\")");
  AttentionArgs a;
  a.dtype = dtype_of(q_content, op);
  a.q_content = operand(q_content);
  a.q_pos = operand(q_pos);
  a.k_content = operand(k_content);
  a.k_pos = operand(k_pos);
  a.value = operand(value);
  if (key_padding_mask.has_value()) {
    a.key_padding_mask = key_padding_mask->data_ptr<bool>();
    a.mask_stride_b = key_padding_mask->stride(0);
    a.mask_stride_n = key_padding_mask->stride(1);
  }
  a.batch = s.batch;
  a.heads = s.heads;
  a.num_queries = s.num_queries;
  a.num_keys = s.num_keys;
  a.dim_content = s.dim_content;
  a.dim_pos = s.dim_pos;
  a.dim_value = s.dim_value;
  a.scale = scale;
  return a;
}

std::tuple<at::Tensor, at::Tensor> modulated_attention_cuda(
    const at::Tensor& q_content, const std::optional<at::Tensor>& q_pos, const at::Tensor& k_content,
    const std::optional<at::Tensor>& k_pos, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, double scale) {
  const AttentionSizes s = check_attention_inputs(q_content, q_pos, k_content, k_pos, value, key_padding_mask);
  const c10::cuda::CUDAGuard guard(q_content.device());
  AttentionArgs a = attention_args(s, q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale,
                                   "modulated_attention");
  at::Tensor out = at::empty({s.batch, s.heads, s.num_queries, s.dim_value}, q_content.options());
  at::Tensor lse = at::empty({s.batch, s.heads, s.num_queries}, q_content.options().dtype(acc_dtype(q_content)));
  a.out = out.data_ptr();
  a.lse = lse.data_ptr();
  check_launch(attention_forward(a, c10::cuda::getCurrentCUDAStream()), "modulated_attention");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> modulated_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q_content, const std::optional<at::Tensor>& q_pos,
    const at::Tensor& k_content, const std::optional<at::Tensor>& k_pos, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, const at::Tensor& out, const at::Tensor& lse, double scale) {
  const AttentionSizes s = check_attention_inputs(q_content, q_pos, k_content, k_pos, value, key_padding_mask);
  const c10::cuda::CUDAGuard guard(q_content.device());
  AttentionArgs a = attention_args(s, q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale,
                                   "modulated_attention_backward");
  check_attention_backward_inputs(s, q_content, grad_out, out, lse, acc_dtype(q_content));
  const at::Tensor grad_out_c = grad_out.contiguous(), out_c = out.contiguous(), lse_c = lse.contiguous();
  const auto options = q_content.options();
  at::Tensor delta = at::empty({s.batch, s.heads, s.num_queries}, options.dtype(acc_dtype(q_content)));
  at::Tensor grad_q_content = at::empty({s.batch, s.heads, s.num_queries, s.dim_content}, options);
  at::Tensor grad_k_content = at::empty({s.batch, s.heads, s.num_keys, s.dim_content}, options);
  at::Tensor grad_value = at::empty({s.batch, s.heads, s.num_keys, s.dim_value}, options);
  const bool with_pos = q_pos.has_value();
  at::Tensor grad_q_pos = with_pos ? at::empty({s.batch, s.heads, s.num_queries, s.dim_pos}, options) : at::empty({0}, options);
  at::Tensor grad_k_pos = with_pos ? at::empty({s.batch, s.heads, s.num_keys, s.dim_pos}, options) : at::empty({0}, options);
  if (s.num_queries == 0) {  // no query: nothing flows back to the keys and values
    grad_k_content.zero_();
    grad_k_pos.zero_();
    grad_value.zero_();
  }
  a.out = out_c.data_ptr();
  a.lse = lse_c.data_ptr();
  a.grad_out = grad_out_c.data_ptr();
  a.delta = delta.data_ptr();
  a.grad_q_content = grad_q_content.data_ptr();
  a.grad_k_content = grad_k_content.data_ptr();
  a.grad_value = grad_value.data_ptr();
  a.grad_q_pos = with_pos ? grad_q_pos.data_ptr() : nullptr;
  a.grad_k_pos = with_pos ? grad_k_pos.data_ptr() : nullptr;
  check_launch(attention_backward(a, c10::cuda::getCurrentCUDAStream()), "modulated_attention_backward");
  return {grad_q_content, grad_q_pos, grad_k_content, grad_k_pos, grad_value};
}

SineEmbedArgs sine_args(const at::Tensor& boxes, const std::optional<at::Tensor>& xy_scale,
                        const std::optional<at::Tensor>& ref_wh, const SineEmbedSizes& s, int64_t num_feats,
                        const at::Tensor& frequencies, const char* op) {
  SineEmbedArgs a;
  a.dtype = dtype_of(boxes, op);
  a.boxes = boxes.data_ptr();
  a.num_boxes = s.num_boxes;
  a.coords = s.coords;
  a.num_feats = num_feats;
  a.frequencies = frequencies.data_ptr();
  a.xy_scale = xy_scale.has_value() ? xy_scale->data_ptr() : nullptr;
  a.ref_wh = ref_wh.has_value() ? ref_wh->data_ptr() : nullptr;
  return a;
}

std::tuple<at::Tensor, at::Tensor> sine_embed_forward_cuda(const at::Tensor& boxes_in,
                                                           const std::optional<at::Tensor>& xy_scale_in,
                                                           const std::optional<at::Tensor>& ref_wh_in,
                                                           int64_t num_feats, double temperature, bool modulated) {
  const SineEmbedSizes s = check_sine_embed_inputs(boxes_in, xy_scale_in, ref_wh_in, num_feats);
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.contiguous();
  const auto xy_scale = contiguous(xy_scale_in), ref_wh = contiguous(ref_wh_in);
  const at::Tensor frequencies = sine_frequencies(num_feats, temperature, boxes.options().dtype(acc_dtype(boxes)));
  const char* op = modulated ? "modulated_anchor_sine_embed" : "anchor_sine_embed";
  SineEmbedArgs a = sine_args(boxes, xy_scale, ref_wh, s, num_feats, frequencies, op);
  at::Tensor embed = at::empty(with_last_dim(boxes, s.coords * num_feats), boxes.options());
  at::Tensor modulated_xy = modulated ? at::empty(with_last_dim(boxes, 2 * num_feats), boxes.options())
                                      : at::empty({0}, boxes.options());
  a.embed = embed.data_ptr();
  a.modulated_xy = modulated ? modulated_xy.data_ptr() : nullptr;
  check_launch(sine_embed_forward(a, c10::cuda::getCurrentCUDAStream()), op);
  return {embed, modulated_xy};
}

at::Tensor anchor_sine_embed_cuda(const at::Tensor& boxes, int64_t num_feats, double temperature) {
  return std::get<0>(sine_embed_forward_cuda(boxes, std::nullopt, std::nullopt, num_feats, temperature, false));
}

std::tuple<at::Tensor, at::Tensor> modulated_anchor_sine_embed_cuda(const at::Tensor& boxes,
                                                                    const std::optional<at::Tensor>& xy_scale,
                                                                    const std::optional<at::Tensor>& ref_wh,
                                                                    int64_t num_feats, double temperature) {
  return sine_embed_forward_cuda(boxes, xy_scale, ref_wh, num_feats, temperature, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> anchor_sine_embed_backward_cuda(
    const std::optional<at::Tensor>& grad_embed, const std::optional<at::Tensor>& grad_modulated_xy,
    const at::Tensor& embed, const at::Tensor& boxes_in, const std::optional<at::Tensor>& xy_scale_in,
    const std::optional<at::Tensor>& ref_wh_in, int64_t num_feats, double temperature) {
  const SineEmbedSizes s = check_sine_embed_inputs(boxes_in, xy_scale_in, ref_wh_in, num_feats);
  const c10::cuda::CUDAGuard guard(boxes_in.device());
  check_sine_embed_backward_inputs(boxes_in, s, num_feats, embed, grad_embed, grad_modulated_xy);
  const auto xy_shape = with_last_dim(boxes_in, 2 * num_feats);
  const at::Tensor boxes = boxes_in.contiguous(), embed_c = embed.contiguous();
  const auto xy_scale = contiguous(xy_scale_in), ref_wh = contiguous(ref_wh_in);
  const auto grad_e = contiguous(grad_embed), grad_m = contiguous(grad_modulated_xy);
  const at::Tensor frequencies = sine_frequencies(num_feats, temperature, boxes.options().dtype(acc_dtype(boxes)));
  SineEmbedArgs a = sine_args(boxes, xy_scale, ref_wh, s, num_feats, frequencies, "anchor_sine_embed_backward");
  at::Tensor grad_boxes = at::empty(boxes.sizes(), boxes.options());
  at::Tensor grad_xy_scale = xy_scale.has_value() ? at::zeros(xy_shape, boxes.options()) : at::empty({0}, boxes.options());
  at::Tensor grad_ref_wh = ref_wh.has_value() ? at::zeros(with_last_dim(boxes, 2), boxes.options()) : at::empty({0}, boxes.options());
  a.embed = embed_c.data_ptr();
  a.grad_embed = grad_e.has_value() ? grad_e->data_ptr() : nullptr;
  a.grad_modulated_xy = grad_m.has_value() ? grad_m->data_ptr() : nullptr;
  a.grad_boxes = grad_boxes.data_ptr();
  a.grad_xy_scale = xy_scale.has_value() ? grad_xy_scale.data_ptr() : nullptr;
  a.grad_ref_wh = ref_wh.has_value() ? grad_ref_wh.data_ptr() : nullptr;
  check_launch(sine_embed_backward(a, c10::cuda::getCurrentCUDAStream()), "anchor_sine_embed_backward");
  return {grad_boxes, grad_xy_scale, grad_ref_wh};
}

}  // namespace

TORCH_LIBRARY_IMPL(dabdetr, CUDA, m) {
  m.impl("modulated_attention", &modulated_attention_cuda);
  m.impl("modulated_attention_backward", &modulated_attention_backward_cuda);
  m.impl("anchor_sine_embed", &anchor_sine_embed_cuda);
  m.impl("modulated_anchor_sine_embed", &modulated_anchor_sine_embed_cuda);
  m.impl("anchor_sine_embed_backward", &anchor_sine_embed_backward_cuda);
}

}  // namespace cuda
}  // namespace dabdetr
