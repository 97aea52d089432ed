// CUDA registrations of the dabdetr ops: validate, allocate, fill the torch-free launch structs
// of launch.h and launch on torch's current stream of the inputs' device. The CUDA emulator's build
// (DABDETR_CUDA_EMULATOR) compiles this same file to register the dabdetr_emulated ops for CPU
// tensors: the path, the key splits and the workspace are chosen by this one host code either way.
#ifndef DABDETR_CUDA_EMULATOR
#include <pybind11/pybind11.h>
#endif

#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>

#include "checks.h"
#include "host_params.h"
#include "cuda/launch.h"
#include "cuda/torch_device.h"
#include "sine_frequencies.h"

namespace dabdetr {
namespace cuda {

// The attention kernels' paths, chosen per call by attention_path() below: "simt" (any dtype,
// fp32 FMAs), "tensor_core" (attention_mma_*.cu on sm_80+: bf16/fp16, and float32 as tf32 where
// torch allows TF32 matmuls), or "auto" (the tensor-core path wherever it serves).
// DABDETR_ATTENTION_PATH overrides the default. The default stays "simt" until the tensor-core
// kernels have passed their tests on a GPU (they have not run on one yet).
constexpr const char* kDefaultAttentionPath = "simt";

namespace {

// The architectures the kernels were compiled for ("8.0", "9.0a", ...: TORCH_CUDA_ARCH_LIST).
std::vector<std::string> cuda_archs() {
  std::vector<std::string> archs;
  const std::string list = DABDETR_CUDA_ARCHS;
  for (size_t start = 0; start < list.size();) {
    size_t end = list.find_first_of("; ", start);
    if (end == std::string::npos) end = list.size();
    if (end > start) archs.push_back(list.substr(start, end - start));
    start = end + 1;
  }
  return archs;
}

}  // namespace

#ifndef DABDETR_CUDA_EMULATOR
pybind11::dict cuda_build_info() {
  pybind11::dict info;
  pybind11::list archs;
  for (const auto& arch : cuda_archs()) archs.append(arch);
  info["cuda_archs"] = archs;
  info["cuda_max_head_dim"] = kMaxHeadDim;
  pybind11::list dtypes;
  for (const auto t : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) dtypes.append(dtype_name(t));  // dtype_of's
  info["cuda_dtypes"] = dtypes;
  info["cuda_max_attention_rows"] = kMaxAttentionRows;
  pybind11::list paths;
  paths.append("simt");
  paths.append("tensor_core");
  info["cuda_attention_paths"] = paths;
  info["cuda_attention_default_path"] = kDefaultAttentionPath;
  pybind11::list tensor_core_dtypes;  // float32 only where TF32 is allowed (attention_path)
  for (const auto t : {at::kHalf, at::kBFloat16, at::kFloat}) tensor_core_dtypes.append(dtype_name(t));
  info["cuda_tensor_core_dtypes"] = tensor_core_dtypes;
  info["cuda_deformable_max_head_dim"] = kDeformableMaxHeadDim;
  info["cuda_deformable_head_dim_step"] = kDeformableHeadDimStep;
  info["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string(CUDART_VERSION % 1000 / 10);
  return info;
}
#endif

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

// The CUDA kernels take type-erased pointers (each .cu dispatches on dtype).
void* data_of(const at::Tensor& t) { return t.data_ptr(); }

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
    error = cudaStreamSynchronize(current_stream());
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

enum class AttentionPath { kSimt, kTensorCore };

// An attribute of the current device (cudaDevAttrComputeCapabilityMajor, ...MultiProcessorCount).
int device_attribute(cudaDeviceAttr attribute) {
  int value = 0;
  DABDETR_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, current_device()));
  return value;
}

// float32 takes the tensor cores (in tf32: 10 mantissa bits) only where torch's own float32
// matmuls do: torch.backends.cuda.matmul.allow_tf32 = True or set_float32_matmul_precision("high"
// or "medium"). Otherwise float32 stays exact.
bool tf32_allowed() { return at::globalContext().allowTF32CuBLAS(); }

AttentionPath attention_path(const AttentionArgs& a, const char* op) {
  const char* env = std::getenv("DABDETR_ATTENTION_PATH");
  const std::string choice = env != nullptr && *env != '\0' ? env : kDefaultAttentionPath;
  TORCH_CHECK(choice == "simt" || choice == "tensor_core" || choice == "auto", op,
              ": DABDETR_ATTENTION_PATH must be simt, tensor_core or auto, got '", choice, "'");
  if (choice == "simt") return AttentionPath::kSimt;
  // Compiled for an sm_80+ architecture: the kernels built for older ones hold a trap instead.
  static const bool built = [] {
    const auto archs = cuda_archs();
    return std::any_of(archs.begin(), archs.end(), [](const std::string& arch) { return std::atoi(arch.c_str()) >= 8; });
  }();
  const int major = device_attribute(cudaDevAttrComputeCapabilityMajor);
  const bool half = a.dtype == Dtype::kFloat16 || a.dtype == Dtype::kBFloat16;
  const bool tf32 = a.dtype == Dtype::kFloat32 && tf32_allowed();
  const bool served = (half || tf32) && major >= 8 && built;
  const char* dtype = half ? "a 16-bit dtype"
                      : a.dtype == Dtype::kFloat64 ? "float64"
                      : tf32 ? "float32 with TF32 allowed"
                             : "float32 with TF32 not allowed";
  TORCH_CHECK(served || choice == "auto", op, ": DABDETR_ATTENTION_PATH=tensor_core serves float16 and bfloat16, ",
              "and float32 where torch allows TF32 (torch.backends.cuda.matmul.allow_tf32 = True), on sm_80 or newer ",
              "with the extension built for it, got ", dtype, " on sm_", major,
              device_attribute(cudaDevAttrComputeCapabilityMinor), " (built for ", DABDETR_CUDA_ARCHS, ")");
  return served ? AttentionPath::kTensorCore : AttentionPath::kSimt;
}

// Splits of the keys for the tensor-core forward. A (batch, head, 64-query) block per SM keeps
// a small problem (batch 1-2 at DAB-DETR's 8 heads x 300 queries: 40-80 blocks for 132 SMs)
// from filling an H100, so its keys are split over several blocks until the grid reaches about
// two blocks per SM, each split keeping at least 4 key tiles (256 keys) so the combine pass stays
// small beside it. A first choice from the shapes, not yet measured: DABDETR_ATTENTION_SPLITS=n
// forces n for the benchmark that will tune it.
int key_splits(const AttentionArgs& a) {
  if (const char* env = std::getenv("DABDETR_ATTENTION_SPLITS"); env != nullptr && *env != '\0') {
    const int forced = std::atoi(env);
    TORCH_CHECK(forced >= 1 && forced <= kMaxKeySplits, "DABDETR_ATTENTION_SPLITS must be 1..", kMaxKeySplits,
                ", got '", env, "'");
    return forced;
  }
  const int64_t blocks = a.batch * a.heads * ((a.num_queries + kMmaRowsPerBlock - 1) / kMmaRowsPerBlock);
  const int64_t target = 2 * int64_t(device_attribute(cudaDevAttrMultiProcessorCount));
  if (blocks >= target) return 1;
  const int64_t by_keys = (a.num_keys + kMmaKeyTile - 1) / kMmaKeyTile / 4;
  const int64_t by_grid = (target + blocks - 1) / blocks;
  return static_cast<int>(std::clamp<int64_t>(std::min(by_keys, by_grid), 1, kMaxKeySplits));
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
  set_attention_inputs(a, s, q_content, q_pos, k_content, k_pos, value, key_padding_mask, data_of);
  a.scale = scale;
  return a;
}

std::tuple<at::Tensor, at::Tensor> modulated_attention_cuda(
    const at::Tensor& q_content, const std::optional<at::Tensor>& q_pos, const at::Tensor& k_content,
    const std::optional<at::Tensor>& k_pos, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, double scale) {
  const AttentionSizes s = check_attention_inputs(q_content, q_pos, k_content, k_pos, value, key_padding_mask);
  const DeviceGuard guard(q_content.device());
  AttentionArgs a = attention_args(s, q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale,
                                   "modulated_attention");
  at::Tensor out = at::empty({s.batch, s.heads, s.num_queries, s.dim_value}, q_content.options());
  at::Tensor lse = at::empty({s.batch, s.heads, s.num_queries}, q_content.options().dtype(acc_dtype(q_content)));
  a.out = out.data_ptr();
  a.lse = lse.data_ptr();
  const cudaStream_t stream = current_stream();
  if (attention_path(a, "modulated_attention") == AttentionPath::kSimt) {
    check_launch(attention_forward(a, stream), "modulated_attention");
    return {out, lse};
  }
  a.num_splits = a.dim_value > 0 ? key_splits(a) : 1;  // the combine step runs per output element
  at::Tensor workspace;
  if (a.num_splits > 1) {
    workspace = at::empty({split_workspace_floats(a)}, q_content.options().dtype(at::kFloat));
    a.workspace = workspace.data_ptr();
  }
  check_launch(attention_forward_mma(a, stream), "modulated_attention");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> modulated_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& q_content, const std::optional<at::Tensor>& q_pos,
    const at::Tensor& k_content, const std::optional<at::Tensor>& k_pos, const at::Tensor& value,
    const std::optional<at::Tensor>& key_padding_mask, const at::Tensor& out, const at::Tensor& lse, double scale) {
  const AttentionSizes s = check_attention_inputs(q_content, q_pos, k_content, k_pos, value, key_padding_mask);
  const DeviceGuard guard(q_content.device());
  AttentionArgs a = attention_args(s, q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale,
                                   "modulated_attention_backward");
  check_attention_backward_inputs(s, q_content, grad_out, out, lse, acc_dtype(q_content));
  const at::Tensor grad_out_c = grad_out.contiguous(), out_c = out.contiguous(), lse_c = lse.contiguous();
  at::Tensor delta = at::empty({s.batch, s.heads, s.num_queries}, q_content.options().dtype(acc_dtype(q_content)));
  AttentionGrads grads(s, q_content.options(), q_pos.has_value());
  a.out = out_c.data_ptr();
  a.lse = lse_c.data_ptr();
  a.grad_out = grad_out_c.data_ptr();
  a.delta = delta.data_ptr();
  grads.set(a, data_of);
  const bool tensor_cores = attention_path(a, "modulated_attention_backward") == AttentionPath::kTensorCore;
  check_launch((tensor_cores ? attention_backward_mma : attention_backward)(a, current_stream()),
               "modulated_attention_backward");
  return grads.tuple();
}

std::tuple<at::Tensor, at::Tensor> sine_embed_forward_cuda(const at::Tensor& boxes_in,
                                                           const std::optional<at::Tensor>& xy_scale_in,
                                                           const std::optional<at::Tensor>& ref_wh_in,
                                                           int64_t num_feats, double temperature, bool modulated) {
  const SineEmbedSizes s = check_sine_embed_inputs(boxes_in, xy_scale_in, ref_wh_in, num_feats);
  const DeviceGuard guard(boxes_in.device());
  const at::Tensor boxes = boxes_in.contiguous();
  const auto xy_scale = contiguous(xy_scale_in), ref_wh = contiguous(ref_wh_in);
  const at::Tensor frequencies = sine_frequencies(num_feats, temperature, boxes.options().dtype(acc_dtype(boxes)));
  const char* op = modulated ? "modulated_anchor_sine_embed" : "anchor_sine_embed";
  SineEmbedArgs a;
  a.dtype = dtype_of(boxes, op);
  set_sine_embed_inputs(a, s, num_feats, boxes, xy_scale, ref_wh, frequencies, data_of);
  SineEmbedOutputs outputs(boxes, s, num_feats, modulated);
  outputs.set(a, modulated, data_of);
  check_launch(sine_embed_forward(a, current_stream()), op);
  return {outputs.embed, outputs.modulated_xy};
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
  const DeviceGuard guard(boxes_in.device());
  check_sine_embed_backward_inputs(boxes_in, s, num_feats, embed, grad_embed, grad_modulated_xy);
  const at::Tensor boxes = boxes_in.contiguous(), embed_c = embed.contiguous();
  const auto xy_scale = contiguous(xy_scale_in), ref_wh = contiguous(ref_wh_in);
  const auto grad_e = contiguous(grad_embed), grad_m = contiguous(grad_modulated_xy);
  const at::Tensor frequencies = sine_frequencies(num_feats, temperature, boxes.options().dtype(acc_dtype(boxes)));
  SineEmbedArgs a;
  a.dtype = dtype_of(boxes, "anchor_sine_embed_backward");
  set_sine_embed_inputs(a, s, num_feats, boxes, xy_scale, ref_wh, frequencies, data_of);
  SineEmbedGrads grads(boxes, num_feats, xy_scale.has_value(), ref_wh.has_value());
  grads.set(a, embed_c, grad_e, grad_m, data_of);
  check_launch(sine_embed_backward(a, current_stream()), "anchor_sine_embed_backward");
  return grads.tuple();
}

// The deformable attention's launch arguments: inputs (sampling_locations and attention_weights
// contiguous), after the kernels' limits.
DeformableAttentionArgs deformable_args(const DeformableAttentionSizes& s, const at::Tensor& value,
                                        const at::Tensor& locations, const at::Tensor& weights, const char* op) {
  check_deformable_levels_served(s, op);
  TORCH_CHECK(s.head_dim > 0 && s.head_dim <= kDeformableMaxHeadDim && s.head_dim % kDeformableHeadDimStep == 0, op,
              ": the CUDA kernels serve head dims ", kDeformableHeadDimStep, " to ", kDeformableMaxHeadDim,
              " in steps of ", kDeformableHeadDimStep, ", got D=", s.head_dim, " (use impl=\"reference\")");
  TORCH_CHECK(s.batch * s.heads <= 65535, op, ": batch * heads = ", s.batch * s.heads,
              " exceeds the CUDA grid's y dimension (65535)");
  DeformableAttentionArgs a;
  a.dtype = dtype_of(value, op);
  set_deformable_attention_inputs(a, s, value, locations, weights, data_of);
  return a;
}

// The atomic backward's tiling: blocks serve tiles of consecutive queries of one (b, h), as long as
// the grid still has about two blocks per SM (64 queries, halved down to a warp's groups); the
// smallest levels whose value gradients fit kDeformableSharedBytes together are summed in shared
// memory per block, where the tile makes at least a quarter as many corner updates to the level as
// it has cells (else zeroing and flushing the sums would cost more than they save). A first choice
// from the shapes, not yet measured on a GPU.
void deformable_backward_tiling(DeformableAttentionArgs& a) {
  const int64_t groups_per_block = 256 / std::min<int64_t>(32, std::max<int64_t>(8, a.head_dim));
  const int64_t target = 2 * int64_t(device_attribute(cudaDevAttrMultiProcessorCount));
  a.tile_queries = 64;
  while (a.tile_queries > groups_per_block &&
         (a.num_queries + a.tile_queries - 1) / a.tile_queries * a.batch * a.heads < target)
    a.tile_queries /= 2;
  const int64_t element = a.dtype == Dtype::kFloat64 ? 8 : 4;
  std::vector<int64_t> order(a.levels);
  for (int64_t l = 0; l < a.levels; ++l) order[l] = l;
  std::sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
    return a.level_height[x] * a.level_width[x] < a.level_height[y] * a.level_width[y];
  });
  unsigned levels = 0;
  int64_t bytes = 0;
  for (const int64_t l : order) {
    const int64_t cells = a.level_height[l] * a.level_width[l];
    if (bytes + cells * a.head_dim * element > kDeformableSharedBytes || cells > 4 * 4 * a.tile_queries * a.points)
      break;
    levels |= 1u << l;
    bytes += cells * a.head_dim * element;
  }
  set_shared_levels(a, levels, element);
}

at::Tensor multi_scale_deformable_attention_cuda(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                                 const std::optional<at::Tensor>& level_start_index,
                                                 const at::Tensor& sampling_locations,
                                                 const at::Tensor& attention_weights) {
  const char* op = "multi_scale_deformable_attention";
  const DeformableAttentionSizes s = check_deformable_attention_inputs(value, spatial_shapes, level_start_index,
                                                                       sampling_locations, attention_weights);
  const DeviceGuard guard(value.device());
  const at::Tensor locations = sampling_locations.contiguous(), weights = attention_weights.contiguous();
  DeformableAttentionArgs a = deformable_args(s, value, locations, weights, op);
  at::Tensor out = at::empty({s.batch, s.num_queries, s.heads * s.head_dim}, value.options());
  a.out = out.data_ptr();
  check_launch(deformable_attention_forward(a, current_stream()), op);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> multi_scale_deformable_attention_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& value, const at::Tensor& spatial_shapes,
    const std::optional<at::Tensor>& level_start_index, const at::Tensor& sampling_locations,
    const at::Tensor& attention_weights) {
  const char* op = "multi_scale_deformable_attention_backward";
  const DeformableAttentionSizes s = check_deformable_attention_inputs(value, spatial_shapes, level_start_index,
                                                                       sampling_locations, attention_weights);
  check_deformable_attention_backward_inputs(s, value, sampling_locations, grad_out);
  const DeviceGuard guard(value.device());
  const at::Tensor locations = sampling_locations.contiguous(), weights = attention_weights.contiguous();
  const at::Tensor grad_out_c = grad_out.contiguous();
  DeformableAttentionArgs a = deformable_args(s, value, locations, weights, op);
  a.grad_out = grad_out_c.data_ptr();
  const at::Tensor grad_locations = at::empty(locations.sizes(), locations.options());
  const at::Tensor grad_weights = at::empty(weights.sizes(), weights.options());
  a.grad_sampling_locations = grad_locations.data_ptr();
  a.grad_attention_weights = grad_weights.data_ptr();
  const at::TensorOptions acc_options = value.options().dtype(acc_dtype(value));
  const cudaStream_t stream = current_stream();
  if (at::globalContext().deterministicAlgorithms()) {
    // Every gradient element has one writer, which sums in a fixed order: the entries sorted by row.
    const at::Tensor grad_value = at::empty(value.sizes(), value.options().memory_format(at::MemoryFormat::Contiguous));
    a.grad_value = grad_value.data_ptr();
    const int64_t entries = s.batch * s.num_queries * s.heads * s.levels * s.points * 4;
    const at::Tensor rows = at::empty({entries}, value.options().dtype(at::kLong));
    const at::Tensor entry_weights = at::empty({entries}, acc_options);
    a.entry_rows = rows.data_ptr<int64_t>();
    a.entry_weights = entry_weights.data_ptr();
    check_launch(deformable_attention_entries(a, stream), op);
    const auto [sorted_rows, order] = at::sort(rows, /*stable=*/std::optional<bool>(true), /*dim=*/0);
    const at::Tensor row_starts =
        at::searchsorted(sorted_rows, at::arange(s.batch * s.heads * s.num_values + 1, rows.options()));
    a.sorted_entries = order.data_ptr<int64_t>();
    a.row_starts = row_starts.data_ptr<int64_t>();
    check_launch(deformable_attention_backward_sorted(a, stream), op);
    return {grad_value, grad_locations, grad_weights};
  }
  const at::Tensor grad_value = at::zeros(value.sizes(), value.options().memory_format(at::MemoryFormat::Contiguous));
  const at::Tensor sums = acc_dtype(value) == value.scalar_type() ? grad_value : at::zeros(value.sizes(), acc_options);
  a.grad_value = grad_value.data_ptr();
  a.grad_value_accumulator = sums.data_ptr();
  deformable_backward_tiling(a);
  check_launch(deformable_attention_backward(a, stream), op);
  return {grad_value, grad_locations, grad_weights};
}

}  // namespace

#ifdef DABDETR_CUDA_EMULATOR
TORCH_LIBRARY_IMPL(DABDETR_EMULATED_LIBRARY, CPU, m) {
#else
TORCH_LIBRARY_IMPL(dabdetr, CUDA, m) {
#endif
  m.impl("modulated_attention", &modulated_attention_cuda);
  m.impl("modulated_attention_backward", &modulated_attention_backward_cuda);
  m.impl("anchor_sine_embed", &anchor_sine_embed_cuda);
  m.impl("modulated_anchor_sine_embed", &modulated_anchor_sine_embed_cuda);
  m.impl("anchor_sine_embed_backward", &anchor_sine_embed_backward_cuda);
  m.impl("multi_scale_deformable_attention", &multi_scale_deformable_attention_cuda);
  m.impl("multi_scale_deformable_attention_backward", &multi_scale_deformable_attention_backward_cuda);
}

}  // namespace cuda
}  // namespace dabdetr
