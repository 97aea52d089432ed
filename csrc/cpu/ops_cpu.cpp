// CPU registrations of the dabdetr ops: validate, allocate, split the work with
// at::parallel_for and run the kernels of the instruction set chosen at load time.
#include <algorithm>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "host_params.h"
#include "cpu/kernels.h"
#include "sine_frequencies.h"

namespace dabdetr {
namespace cpu {

std::vector<std::string> kernel_dtypes() {
  return {dtype_name(at::kFloat), dtype_name(at::kDouble), dtype_name(at::kHalf), dtype_name(at::kBFloat16)};
}

}  // namespace cpu

namespace {

void check_cpu_dtype(const at::Tensor& t, const char* op) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op,
              ": the CPU kernel supports float32, float64, float16 and bfloat16, got ", t.scalar_type(),
              " (use impl=\"reference\" for other dtypes)");
}

// float16 and bfloat16 run the float32 kernels on float32 copies, with the results rounded back
// (the attention's lse stays float32, as on CUDA): the copies are O(N D) beside the attention's
// O(Nq Nk D). The exception is the attention in bfloat16 on CPUs with AVX-512 BF16, whose dot
// products do twice the work of float32 FMAs (modulated_attention_bf16 below).
bool is_half(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }
at::Tensor to_float(const at::Tensor& t) { return t.to(at::kFloat); }
std::optional<at::Tensor> to_float(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->to(at::kFloat)) : std::nullopt;
}
template <typename... Tensors>
std::tuple<Tensors...> rounded_to(at::ScalarType dtype, const std::tuple<Tensors...>& results) {
  return std::apply([dtype](const auto&... t) { return std::tuple<Tensors...>(t.to(dtype)...); }, results);
}

// The CPU kernels take typed pointers.
template <typename T>
struct DataOf {
  T* operator()(const at::Tensor& t) const { return t.data_ptr<T>(); }
};

// The calling thread's scratch of at least `elements` Ts, kept between calls: a buffer made per
// call costs an mmap, its page faults and its zeroing each time (a few percent of a call at
// DETR's shapes). It only grows, to the largest call the thread has served.
template <typename T>
T* thread_scratch(int64_t elements) {
  thread_local std::vector<T> buffer;
  if (static_cast<int64_t>(buffer.size()) < elements) buffer.resize(elements);
  return buffer.data();
}

#if defined(__x86_64__) || defined(_M_X64)
// bfloat16 attention computed in bfloat16 dot products (Isa::kAvx512Bf16 and, its products in AMX
// tiles, Isa::kAmxBf16; attention_bf16_kernel.inc): operands read in place, the softmax statistics
// float32.
bool bf16_dot_products(const at::Tensor& t) {
  return t.scalar_type() == at::kBFloat16 && cpu::selected_isa() >= cpu::Isa::kAvx512Bf16;
}

// The bf16 attention's entry points at the selected level.
struct Bf16AttentionKernels {
  int64_t (*forward_workspace)(const cpu::AttentionBf16Params&);
  void (*forward)(const cpu::AttentionBf16Params&, int64_t, int64_t, void*);
  int64_t (*backward_workspace)(const cpu::AttentionBf16Params&);
  void (*backward)(const cpu::AttentionBf16Params&, int64_t, int64_t, void*);
};
Bf16AttentionKernels bf16_attention_kernels() {
  if (cpu::selected_isa() == cpu::Isa::kAmxBf16)
    return {cpu::amx_bf16::attention_forward_workspace, cpu::amx_bf16::attention_forward,
            cpu::amx_bf16::attention_backward_workspace, cpu::amx_bf16::attention_backward};
  return {cpu::avx512_bf16::attention_forward_workspace, cpu::avx512_bf16::attention_forward,
          cpu::avx512_bf16::attention_backward_workspace, cpu::avx512_bf16::attention_backward};
}

struct Bf16Bits {
  cpu::Bf16* operator()(const at::Tensor& t) const { return reinterpret_cast<cpu::Bf16*>(t.data_ptr<at::BFloat16>()); }
};

// The calling thread's scratch of `bytes`, 64-byte aligned.
void* aligned_scratch(int64_t bytes) {
  const auto address = reinterpret_cast<uintptr_t>(thread_scratch<char>(bytes + 64));
  return reinterpret_cast<void*>((address + 63) & ~uintptr_t(63));
}

std::tuple<at::Tensor, at::Tensor> modulated_attention_bf16(
    const AttentionSizes& s, const at::Tensor& q_content, const std::optional<at::Tensor>& q_pos,
    const at::Tensor& k_content, const std::optional<at::Tensor>& k_pos, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, double scale) {
  at::Tensor out = at::empty({s.batch, s.heads, s.num_queries, s.dim_value}, q_content.options());
  at::Tensor lse = at::empty({s.batch, s.heads, s.num_queries}, q_content.options().dtype(at::kFloat));
  cpu::AttentionBf16Params p;
  set_attention_inputs(p, s, q_content, q_pos, k_content, k_pos, value, key_padding_mask, Bf16Bits());
  p.scale = static_cast<float>(scale);
  p.out = Bf16Bits()(out);
  p.lse = lse.data_ptr<float>();
  const Bf16AttentionKernels kernels = bf16_attention_kernels();
  const int64_t workspace = kernels.forward_workspace(p);
  at::parallel_for(0, p.forward_work_items(), 1, [&](int64_t begin, int64_t end) {
    kernels.forward(p, begin, end, aligned_scratch(workspace));
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> modulated_attention_backward_bf16(
    const AttentionSizes& s, const at::Tensor& grad_out, const at::Tensor& q_content,
    const std::optional<at::Tensor>& q_pos, const at::Tensor& k_content, const std::optional<at::Tensor>& k_pos,
    const at::Tensor& value, const std::optional<at::Tensor>& key_padding_mask, const at::Tensor& out,
    const at::Tensor& lse, double scale) {
  const at::Tensor grad_out_c = grad_out.contiguous(), out_c = out.contiguous(), lse_c = lse.contiguous();
  AttentionGrads grads(s, q_content.options(), q_pos.has_value());
  cpu::AttentionBf16Params p;
  set_attention_inputs(p, s, q_content, q_pos, k_content, k_pos, value, key_padding_mask, Bf16Bits());
  p.scale = static_cast<float>(scale);
  p.out = Bf16Bits()(out_c);
  p.lse = lse_c.data_ptr<float>();
  p.grad_out = Bf16Bits()(grad_out_c);
  grads.set(p, Bf16Bits());
  const Bf16AttentionKernels kernels = bf16_attention_kernels();
  const int64_t workspace = kernels.backward_workspace(p);
  at::parallel_for(0, p.backward_work_items(), 1, [&](int64_t begin, int64_t end) {
    kernels.backward(p, begin, end, aligned_scratch(workspace));
  });
  return grads.tuple();
}
#endif

std::tuple<at::Tensor, at::Tensor> modulated_attention_cpu(
    const at::Tensor& q_content, const std::optional<at::Tensor>& q_pos, const at::Tensor& k_content,
    const std::optional<at::Tensor>& k_pos, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, double scale) {
  const AttentionSizes s = check_attention_inputs(q_content, q_pos, k_content, k_pos, value, key_padding_mask);
#if defined(__x86_64__) || defined(_M_X64)
  if (bf16_dot_products(q_content))
    return modulated_attention_bf16(s, q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale);
#endif
  if (is_half(q_content)) {
    auto [out, lse] = modulated_attention_cpu(to_float(q_content), to_float(q_pos), to_float(k_content),
                                              to_float(k_pos), to_float(value), key_padding_mask, scale);
    return {out.to(q_content.scalar_type()), lse};
  }
  check_cpu_dtype(q_content, "modulated_attention");
  at::Tensor out = at::empty({s.batch, s.heads, s.num_queries, s.dim_value}, q_content.options());
  at::Tensor lse = at::empty({s.batch, s.heads, s.num_queries}, q_content.options());
  AT_DISPATCH_FLOATING_TYPES(q_content.scalar_type(), "modulated_attention_cpu", [&] {
    cpu::AttentionParams<scalar_t> p;
    set_attention_inputs(p, s, q_content, q_pos, k_content, k_pos, value, key_padding_mask, DataOf<scalar_t>());
    p.scale = static_cast<scalar_t>(scale);
    p.out = out.data_ptr<scalar_t>();
    p.lse = lse.data_ptr<scalar_t>();
    const auto& kernel = cpu::kernels<scalar_t>().attention_forward;
    at::parallel_for(0, p.forward_work_items(), 1, [&](int64_t begin, int64_t end) {
      kernel(p, begin, end, thread_scratch<scalar_t>(p.forward_workspace()));
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
  if (is_half(q_content)) {
    check_attention_backward_inputs(s, q_content, grad_out, out, lse, at::kFloat);
#if defined(__x86_64__) || defined(_M_X64)
    if (bf16_dot_products(q_content))
      return modulated_attention_backward_bf16(s, grad_out, q_content, q_pos, k_content, k_pos, value,
                                               key_padding_mask, out, lse, scale);
#endif
    return rounded_to(q_content.scalar_type(),
                      modulated_attention_backward_cpu(to_float(grad_out), to_float(q_content), to_float(q_pos),
                                                       to_float(k_content), to_float(k_pos), to_float(value),
                                                       key_padding_mask, to_float(out), lse, scale));
  }
  check_cpu_dtype(q_content, "modulated_attention_backward");
  check_attention_backward_inputs(s, q_content, grad_out, out, lse, q_content.scalar_type());
  const at::Tensor grad_out_c = grad_out.contiguous(), out_c = out.contiguous(), lse_c = lse.contiguous();
  AttentionGrads grads(s, q_content.options(), q_pos.has_value());
  AT_DISPATCH_FLOATING_TYPES(q_content.scalar_type(), "modulated_attention_backward_cpu", [&] {
    cpu::AttentionParams<scalar_t> p;
    set_attention_inputs(p, s, q_content, q_pos, k_content, k_pos, value, key_padding_mask, DataOf<scalar_t>());
    p.scale = static_cast<scalar_t>(scale);
    p.out = out_c.data_ptr<scalar_t>();
    p.lse = lse_c.data_ptr<scalar_t>();
    p.grad_out = grad_out_c.data_ptr<scalar_t>();
    grads.set(p, DataOf<scalar_t>());
    const auto& kernel = cpu::kernels<scalar_t>().attention_backward;
    at::parallel_for(0, p.backward_work_items(), 1, [&](int64_t begin, int64_t end) {
      kernel(p, begin, end, thread_scratch<scalar_t>(p.backward_workspace()));
    });
  });
  return grads.tuple();
}

// Grain of the sine-embedding loops, in boxes (a box is 4 * num_feats outputs).
constexpr int64_t kBoxesPerTask = 64;

std::tuple<at::Tensor, at::Tensor> sine_embed_forward(const at::Tensor& boxes_in,
                                                      const std::optional<at::Tensor>& xy_scale_in,
                                                      const std::optional<at::Tensor>& ref_wh_in,
                                                      int64_t num_feats, double temperature, bool modulated) {
  const SineEmbedSizes s = check_sine_embed_inputs(boxes_in, xy_scale_in, ref_wh_in, num_feats);
  if (is_half(boxes_in))
    return rounded_to(boxes_in.scalar_type(), sine_embed_forward(to_float(boxes_in), to_float(xy_scale_in),
                                                                 to_float(ref_wh_in), num_feats, temperature,
                                                                 modulated));
  check_cpu_dtype(boxes_in, "anchor_sine_embed");
  const at::Tensor boxes = boxes_in.contiguous();
  const auto xy_scale = contiguous(xy_scale_in), ref_wh = contiguous(ref_wh_in);
  const at::Tensor frequencies = sine_frequencies(num_feats, temperature, boxes.options());
  SineEmbedOutputs outputs(boxes, s, num_feats, modulated);
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "anchor_sine_embed_cpu", [&] {
    cpu::SineEmbedParams<scalar_t> p;
    set_sine_embed_inputs(p, s, num_feats, boxes, xy_scale, ref_wh, frequencies, DataOf<scalar_t>());
    outputs.set(p, modulated, DataOf<scalar_t>());
    const auto& kernel = cpu::kernels<scalar_t>().sine_embed_forward;
    at::parallel_for(0, s.num_boxes, kBoxesPerTask, [&](int64_t begin, int64_t end) { kernel(p, begin, end); });
  });
  return {outputs.embed, outputs.modulated_xy};
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
  check_sine_embed_backward_inputs(boxes_in, s, num_feats, embed, grad_embed, grad_modulated_xy);
  if (is_half(boxes_in))
    return rounded_to(boxes_in.scalar_type(),
                      anchor_sine_embed_backward_cpu(to_float(grad_embed), to_float(grad_modulated_xy),
                                                     to_float(embed), to_float(boxes_in), to_float(xy_scale_in),
                                                     to_float(ref_wh_in), num_feats, temperature));
  check_cpu_dtype(boxes_in, "anchor_sine_embed_backward");
  const at::Tensor boxes = boxes_in.contiguous(), embed_c = embed.contiguous();
  const auto xy_scale = contiguous(xy_scale_in), ref_wh = contiguous(ref_wh_in);
  const auto grad_e = contiguous(grad_embed), grad_m = contiguous(grad_modulated_xy);
  const at::Tensor frequencies = sine_frequencies(num_feats, temperature, boxes.options());
  SineEmbedGrads grads(boxes, num_feats, xy_scale.has_value(), ref_wh.has_value());
  AT_DISPATCH_FLOATING_TYPES(boxes.scalar_type(), "anchor_sine_embed_backward_cpu", [&] {
    cpu::SineEmbedParams<scalar_t> p;
    set_sine_embed_inputs(p, s, num_feats, boxes, xy_scale, ref_wh, frequencies, DataOf<scalar_t>());
    grads.set(p, embed_c, grad_e, grad_m, DataOf<scalar_t>());
    const auto& kernel = cpu::kernels<scalar_t>().sine_embed_backward;
    at::parallel_for(0, s.num_boxes, kBoxesPerTask, [&](int64_t begin, int64_t end) { kernel(p, begin, end); });
  });
  return grads.tuple();
}

// Grain of the deformable attention forward, in query rows (each H * L * P samples).
constexpr int64_t kQueriesPerTask = 16;

// Any tensor's data as whichever pointer its parameter block holds (the dtypes checked before).
struct DataAs {
  struct Pointer {
    void* data;
    template <typename T>
    operator T*() const {
      return static_cast<T*>(data);
    }
  };
  Pointer operator()(const at::Tensor& t) const { return {t.data_ptr()}; }
};

// The forward kernel over every query row into out, its values of element type V, the rest T.
template <typename T, typename V, typename Kernel>
void deformable_attention_forward(const DeformableAttentionSizes& s, const at::Tensor& value,
                                  const at::Tensor& locations, const at::Tensor& weights, at::Tensor& out,
                                  Kernel kernel) {
  cpu::DeformableAttentionParams<T, V> p;
  set_deformable_attention_inputs(p, s, value, locations, weights, DataAs());
  p.out = out.data_ptr<T>();
  at::parallel_for(0, s.batch * s.num_queries, kQueriesPerTask, [&](int64_t begin, int64_t end) {
    kernel(p, begin, end, thread_scratch<T>(p.workspace()));
  });
}

// value may be 16-bit with float32 locations and weights (autocast's deformable attention): bfloat16
// values are read as they are, widened in the kernel, and the result is float32.
at::Tensor multi_scale_deformable_attention_cpu(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                const std::optional<at::Tensor>& level_start_index,
                                                const at::Tensor& sampling_locations,
                                                const at::Tensor& attention_weights) {
  const DeformableAttentionSizes s = check_deformable_attention_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights, kFloat32With16BitValues);
  const bool float32_with_16bit_values = value.scalar_type() != sampling_locations.scalar_type();
  const bool bf16_values = float32_with_16bit_values && value.scalar_type() == at::kBFloat16;
  if (is_half(value) && !bf16_values) {
    at::Tensor out = multi_scale_deformable_attention_cpu(to_float(value), spatial_shapes, level_start_index,
                                                          to_float(sampling_locations), to_float(attention_weights));
    return float32_with_16bit_values ? out : out.to(value.scalar_type());
  }
  if (!bf16_values) check_cpu_dtype(value, "multi_scale_deformable_attention");
  check_deformable_levels_served(s, "multi_scale_deformable_attention");
  const at::Tensor locations = sampling_locations.contiguous(), weights = attention_weights.contiguous();
  at::Tensor out = at::empty({s.batch, s.num_queries, s.heads * s.head_dim}, locations.options());
  if (bf16_values) {
    deformable_attention_forward<float, cpu::Bf16>(s, value, locations, weights, out,
                                                   cpu::kernels<float>().deformable_attention_forward_bf16_values);
    return out;
  }
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "multi_scale_deformable_attention_cpu", [&] {
    deformable_attention_forward<scalar_t, scalar_t>(s, value, locations, weights, out,
                                                     cpu::kernels<scalar_t>().deformable_attention_forward);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> multi_scale_deformable_attention_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const std::optional<at::Tensor>& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const DeformableAttentionSizes s = check_deformable_attention_inputs(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights, kFloat32With16BitValues);
  check_deformable_attention_backward_inputs(s, value, sampling_locations, grad_out);
  if (value.scalar_type() != sampling_locations.scalar_type()) {  // 16-bit values: grad_value rounded to them
    auto [grad_value, grad_locations, grad_weights] = multi_scale_deformable_attention_backward_cpu(
        grad_out, to_float(value), spatial_shapes, level_start_index, sampling_locations, attention_weights);
    return {grad_value.to(value.scalar_type()), grad_locations, grad_weights};
  }
  if (is_half(value))
    return rounded_to(value.scalar_type(), multi_scale_deformable_attention_backward_cpu(
                                               to_float(grad_out), to_float(value), spatial_shapes, level_start_index,
                                               to_float(sampling_locations), to_float(attention_weights)));
  check_cpu_dtype(value, "multi_scale_deformable_attention_backward");
  check_deformable_levels_served(s, "multi_scale_deformable_attention_backward");
  const at::Tensor grad_out_c = grad_out.contiguous();
  const at::Tensor locations = sampling_locations.contiguous(), weights = attention_weights.contiguous();
  DeformableAttentionGrads grads(value, locations, weights);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "multi_scale_deformable_attention_backward_cpu", [&] {
    cpu::DeformableAttentionParams<scalar_t> p;
    set_deformable_attention_inputs(p, s, value, locations, weights, DataOf<scalar_t>());
    p.grad_out = grad_out_c.data_ptr<scalar_t>();
    p.grad_value = grads.value.data_ptr<scalar_t>();
    p.grad_sampling_locations = grads.sampling_locations.data_ptr<scalar_t>();
    p.grad_attention_weights = grads.attention_weights.data_ptr<scalar_t>();
    const auto& kernel = cpu::kernels<scalar_t>().deformable_attention_backward;
    // A work item owns grad_value[b, :, h, :] for a block of heads and sums into it in the order of
    // the queries, then the heads: no races, and every element gets its terms in the same order
    // whatever the blocks, so the result does not depend on the thread count. The blocks are as
    // large as leave every thread an item (neighbouring heads read neighbouring memory).
    const int64_t threads = at::get_num_threads();
    p.heads_per_item = std::max<int64_t>(1, s.heads * s.batch / std::max<int64_t>(threads, 1));
    p.heads_per_item = std::min(p.heads_per_item, s.heads);
    at::parallel_for(0, p.backward_work_items(), 1, [&](int64_t begin, int64_t end) {
      kernel(p, begin, end, thread_scratch<scalar_t>(p.workspace()));
    });
  });
  return grads.tuple();
}

}  // namespace

TORCH_LIBRARY_IMPL(dabdetr, CPU, m) {
  m.impl("modulated_attention", &modulated_attention_cpu);
  m.impl("modulated_attention_backward", &modulated_attention_backward_cpu);
  m.impl("anchor_sine_embed", &anchor_sine_embed_cpu);
  m.impl("modulated_anchor_sine_embed", &modulated_anchor_sine_embed_cpu);
  m.impl("anchor_sine_embed_backward", &anchor_sine_embed_backward_cpu);
  m.impl("multi_scale_deformable_attention", &multi_scale_deformable_attention_cpu);
  m.impl("multi_scale_deformable_attention_backward", &multi_scale_deformable_attention_backward_cpu);
}

}  // namespace dabdetr
