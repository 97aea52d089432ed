// Runs every CUDA kernel on the emulator without torch, for the sanitizer builds
// (scripts/check_cuda_emulator_sanitizers.sh): the attention forward and backward on both paths
// (SIMT in the four dtypes; tensor cores in bf16, fp16 and tf32, with one and with three key
// splits), the sine embedding forward and backward (plain and modulated, four dtypes) and the
// deformable attention (forward, both backwards; four dtypes), each on three shapes. Every buffer is its own heap allocation of exactly its size, as a torch tensor's
// storage would be, so AddressSanitizer sees a read or write past any of them. The attention
// outputs are also compared with a naive fp64 evaluation (the Python tests hold every output and
// gradient to the error-ratio bound; this catches a kernel gone wrong in the sanitizer builds, such
// as the deliberately broken variant of DABDETR_EMULATOR_FAULT=3). Exits non-zero if a launch
// fails or an output is off.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/launch.h"

namespace cuda = dabdetr::cuda;

namespace {

struct Buffer {
  std::unique_ptr<unsigned char[]> bytes;
  size_t size = 0;
  void* data() const { return size ? bytes.get() : nullptr; }
};

size_t element_size(cuda::Dtype dtype) {
  switch (dtype) {
    case cuda::Dtype::kFloat32: return 4;
    case cuda::Dtype::kFloat64: return 8;
    default: return 2;
  }
}

std::mt19937 generator(0);

// n random elements of dtype (uniform in [lo, hi)), exactly n * size bytes.
Buffer random_buffer(cuda::Dtype dtype, size_t n, double lo = -1, double hi = 1) {
  Buffer b{std::unique_ptr<unsigned char[]>(new unsigned char[n * element_size(dtype) + (n == 0)]),
           n * element_size(dtype)};
  std::uniform_real_distribution<double> uniform(lo, hi);
  for (size_t i = 0; i < n; ++i) {
    const double x = uniform(generator);
    switch (dtype) {
      case cuda::Dtype::kFloat32: reinterpret_cast<float*>(b.bytes.get())[i] = static_cast<float>(x); break;
      case cuda::Dtype::kFloat64: reinterpret_cast<double*>(b.bytes.get())[i] = x; break;
      case cuda::Dtype::kFloat16: reinterpret_cast<__half*>(b.bytes.get())[i] = __float2half_rn(float(x)); break;
      case cuda::Dtype::kBFloat16:
        reinterpret_cast<__nv_bfloat16*>(b.bytes.get())[i] = __float2bfloat16_rn(float(x));
        break;
    }
  }
  return b;
}

Buffer empty_buffer(size_t bytes) {
  return {std::unique_ptr<unsigned char[]>(new unsigned char[bytes + (bytes == 0)]), bytes};
}

int failures = 0;

void check(cudaError_t error, const std::string& what) {
  if (error != cudaSuccess) {
    std::fprintf(stderr, "FAILED %s: %s\n", what.c_str(), cudaGetErrorString(error));
    ++failures;
  }
}

double element(const Buffer& b, cuda::Dtype dtype, size_t i) {
  switch (dtype) {
    case cuda::Dtype::kFloat32: return reinterpret_cast<const float*>(b.bytes.get())[i];
    case cuda::Dtype::kFloat64: return reinterpret_cast<const double*>(b.bytes.get())[i];
    case cuda::Dtype::kFloat16: return __half2float(reinterpret_cast<const __half*>(b.bytes.get())[i]);
    case cuda::Dtype::kBFloat16: return __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(b.bytes.get())[i]);
  }
  return 0;
}

// The largest |out - naive fp64 attention| of contiguous inputs, over every (b, h, query, dim).
double attention_error(const cuda::AttentionArgs& a, const Buffer& qc, const Buffer& qp, const Buffer& kc,
                       const Buffer& kp, const Buffer& v, const Buffer& mask, const Buffer& out) {
  double worst = 0;
  std::vector<double> logits(a.num_keys);
  for (int64_t b = 0; b < a.batch; ++b)
    for (int64_t h = 0; h < a.heads; ++h)
      for (int64_t q = 0; q < a.num_queries; ++q) {
        const int64_t bh = b * a.heads + h;
        double top = -1e300;
        bool any = false;
        for (int64_t k = 0; k < a.num_keys; ++k) {
          if (mask.size && mask.bytes[b * a.num_keys + k]) continue;
          double s = 0;
          for (int64_t d = 0; d < a.dim_content; ++d)
            s += element(qc, a.dtype, (bh * a.num_queries + q) * a.dim_content + d) *
                 element(kc, a.dtype, (bh * a.num_keys + k) * a.dim_content + d);
          for (int64_t d = 0; d < a.dim_pos; ++d)
            s += element(qp, a.dtype, (bh * a.num_queries + q) * a.dim_pos + d) *
                 element(kp, a.dtype, (bh * a.num_keys + k) * a.dim_pos + d);
          logits[k] = s * a.scale;
          top = std::max(top, logits[k]);
          any = true;
        }
        for (int64_t d = 0; d < a.dim_value; ++d) {
          double num = 0, den = 0;
          for (int64_t k = 0; any && k < a.num_keys; ++k) {
            if (mask.size && mask.bytes[b * a.num_keys + k]) continue;
            const double p = std::exp(logits[k] - top);
            den += p;
            num += p * element(v, a.dtype, (bh * a.num_keys + k) * a.dim_value + d);
          }
          const double expected = any ? num / den : 0.0;
          worst = std::max(worst, std::abs(element(out, a.dtype, (bh * a.num_queries + q) * a.dim_value + d) - expected));
        }
      }
  return worst;
}

// Far above each mode's own error on these inputs (|out| < 1), far below a wrong result's.
double tolerance(cuda::Dtype dtype, bool tensor_cores) {
  switch (dtype) {
    case cuda::Dtype::kFloat64: return 1e-9;
    case cuda::Dtype::kFloat32: return tensor_cores ? 5e-3 : 1e-5;  // tf32 on tensor cores
    case cuda::Dtype::kFloat16: return 5e-3;
    case cuda::Dtype::kBFloat16: return 3e-2;
  }
  return 0;
}

struct AttentionShape {
  int64_t B, H, Nq, Nk, Dc, Dp, Dv;
  bool mask;
};

void run_attention(const AttentionShape& s, cuda::Dtype dtype, bool tensor_cores, int splits, const std::string& name) {
  const size_t acc = dtype == cuda::Dtype::kFloat64 ? 8 : 4;
  auto operand = [&](int64_t n, int64_t d) { return random_buffer(dtype, s.B * s.H * n * d); };
  Buffer qc = operand(s.Nq, s.Dc), qp = operand(s.Nq, s.Dp), kc = operand(s.Nk, s.Dc), kp = operand(s.Nk, s.Dp),
         v = operand(s.Nk, s.Dv);
  Buffer mask = empty_buffer(s.mask ? s.B * s.Nk : 0);
  for (size_t i = 0; i < mask.size; ++i) mask.bytes[i] = (i % 4 == 1) || (i / s.Nk == 1);  // batch 1 fully padded
  cuda::AttentionArgs a;
  a.dtype = dtype;
  auto set = [&](cuda::Operand& o, const Buffer& b, int64_t n, int64_t d) {
    o.data = b.data();
    o.stride_b = s.H * n * d;
    o.stride_h = n * d;
    o.stride_n = d;
  };
  set(a.q_content, qc, s.Nq, s.Dc);
  set(a.k_content, kc, s.Nk, s.Dc);
  set(a.value, v, s.Nk, s.Dv);
  if (s.Dp) {
    set(a.q_pos, qp, s.Nq, s.Dp);
    set(a.k_pos, kp, s.Nk, s.Dp);
  }
  if (s.mask) {
    a.key_padding_mask = reinterpret_cast<const bool*>(mask.data());
    a.mask_stride_b = s.Nk;
    a.mask_stride_n = 1;
  }
  a.batch = s.B;
  a.heads = s.H;
  a.num_queries = s.Nq;
  a.num_keys = s.Nk;
  a.dim_content = s.Dc;
  a.dim_pos = s.Dp;
  a.dim_value = s.Dv;
  a.scale = 0.2;
  Buffer out = empty_buffer(s.B * s.H * s.Nq * s.Dv * element_size(dtype)), lse = empty_buffer(s.B * s.H * s.Nq * acc);
  a.out = out.data();
  a.lse = lse.data();
  a.num_splits = splits;
  Buffer workspace = empty_buffer(cuda::split_workspace_floats(a) * 4);
  a.workspace = workspace.data();
  check(tensor_cores ? cuda::attention_forward_mma(a, nullptr) : cuda::attention_forward(a, nullptr),
        name + " forward");
  const double error = attention_error(a, qc, qp, kc, kp, v, mask, out);
  if (!(error <= tolerance(dtype, tensor_cores))) {
    std::fprintf(stderr, "WRONG %s forward: max error %.3g (tolerance %.1g)\n", name.c_str(), error,
                 tolerance(dtype, tensor_cores));
    ++failures;
  }
  Buffer grad_out = random_buffer(dtype, s.B * s.H * s.Nq * s.Dv), delta = empty_buffer(s.B * s.H * s.Nq * acc);
  auto grad = [&](int64_t n, int64_t d) { return empty_buffer(s.B * s.H * n * d * element_size(dtype)); };
  Buffer gqc = grad(s.Nq, s.Dc), gqp = grad(s.Nq, s.Dp), gkc = grad(s.Nk, s.Dc), gkp = grad(s.Nk, s.Dp),
         gv = grad(s.Nk, s.Dv);
  a.grad_out = grad_out.data();
  a.delta = delta.data();
  a.grad_q_content = gqc.data();
  a.grad_q_pos = gqp.data();
  a.grad_k_content = gkc.data();
  a.grad_k_pos = gkp.data();
  a.grad_value = gv.data();
  check(tensor_cores ? cuda::attention_backward_mma(a, nullptr) : cuda::attention_backward(a, nullptr),
        name + " backward");
}

void run_sine(int64_t boxes, int64_t coords, int64_t feats, bool modulated, cuda::Dtype dtype, const std::string& name) {
  Buffer box = random_buffer(dtype, boxes * coords, 0.05, 0.95);
  Buffer xy_scale = random_buffer(dtype, modulated ? boxes * 2 * feats : 0);
  Buffer ref_wh = random_buffer(dtype, modulated && coords == 4 ? boxes * 2 : 0, 0.05, 0.95);
  const bool wide = dtype == cuda::Dtype::kFloat64;
  Buffer frequencies = random_buffer(wide ? cuda::Dtype::kFloat64 : cuda::Dtype::kFloat32, feats / 2, 0.001, 6.3);
  cuda::SineEmbedArgs a;
  a.dtype = dtype;
  a.boxes = box.data();
  a.num_boxes = boxes;
  a.coords = coords;
  a.num_feats = feats;
  a.frequencies = frequencies.data();
  a.xy_scale = xy_scale.data();
  a.ref_wh = ref_wh.data();
  Buffer embed = empty_buffer(boxes * coords * feats * element_size(dtype));
  Buffer modulated_xy = empty_buffer(modulated ? boxes * 2 * feats * element_size(dtype) : 0);
  a.embed = embed.data();
  a.modulated_xy = modulated_xy.data();
  check(cuda::sine_embed_forward(a, nullptr), name + " forward");
  Buffer grad_embed = random_buffer(dtype, boxes * coords * feats);
  Buffer grad_xy = random_buffer(dtype, modulated ? boxes * 2 * feats : 0);
  Buffer grad_boxes = empty_buffer(boxes * coords * element_size(dtype));
  Buffer grad_scale = empty_buffer(xy_scale.size), grad_ref = empty_buffer(ref_wh.size);
  a.grad_embed = grad_embed.data();
  a.grad_modulated_xy = grad_xy.data();
  a.grad_boxes = grad_boxes.data();
  a.grad_xy_scale = grad_scale.data();
  a.grad_ref_wh = grad_ref.data();
  check(cuda::sine_embed_backward(a, nullptr), name + " backward");
}

struct DeformableShape {
  int64_t B, Nq, H, D, P;
  std::vector<std::pair<int64_t, int64_t>> levels;  // (H_l, W_l)
};

// The largest |out - naive fp64 deformable attention| (corners outside a level count as zero).
double deformable_error(const cuda::DeformableAttentionArgs& a, const Buffer& value, const Buffer& loc,
                        const Buffer& weights, const Buffer& out) {
  double worst = 0;
  std::vector<double> sum(a.head_dim);
  for (int64_t g = 0; g < a.batch * a.num_queries * a.heads; ++g) {
    const int64_t b = g / (a.num_queries * a.heads), h = g % a.heads;
    std::fill(sum.begin(), sum.end(), 0.0);
    for (int64_t l = 0; l < a.levels; ++l)
      for (int64_t p = 0; p < a.points; ++p) {
        const int64_t i = (g * a.levels + l) * a.points + p;
        const double x = element(loc, a.dtype, 2 * i) * a.level_width[l] - 0.5;
        const double y = element(loc, a.dtype, 2 * i + 1) * a.level_height[l] - 0.5;
        const double w = element(weights, a.dtype, i);
        for (int64_t row = 0; row < a.level_height[l]; ++row)
          for (int64_t col = 0; col < a.level_width[l]; ++col) {
            const double tent = std::max(0.0, 1 - std::abs(x - col)) * std::max(0.0, 1 - std::abs(y - row));
            if (tent == 0) continue;
            const int64_t token = a.level_start[l] + row * a.level_width[l] + col;
            for (int64_t d = 0; d < a.head_dim; ++d)
              sum[d] += w * tent * element(value, a.dtype, ((b * a.num_values + token) * a.heads + h) * a.head_dim + d);
          }
      }
    for (int64_t d = 0; d < a.head_dim; ++d)
      worst = std::max(worst, std::abs(element(out, a.dtype, g * a.head_dim + d) - sum[d]));
  }
  return worst;
}

// Forward, the atomic backward (with the given levels summed in shared memory first) and the
// deterministic backward (its entries sorted here as ops_cuda.cpp sorts them with torch); the
// forward against the naive evaluation, the two backwards' value gradients against each other.
void run_deformable(const DeformableShape& s, cuda::Dtype dtype, unsigned shared_levels, const std::string& name) {
  cuda::DeformableAttentionArgs a;
  a.dtype = dtype;
  a.batch = s.B;
  a.num_queries = s.Nq;
  a.heads = s.H;
  a.head_dim = s.D;
  a.points = s.P;
  a.levels = static_cast<int64_t>(s.levels.size());
  for (size_t l = 0; l < s.levels.size(); ++l) {
    a.level_height[l] = s.levels[l].first;
    a.level_width[l] = s.levels[l].second;
    a.level_start[l] = a.num_values;
    a.num_values += s.levels[l].first * s.levels[l].second;
  }
  const int64_t S = a.num_values, samples = s.B * s.Nq * s.H * a.levels * s.P;
  const size_t size = element_size(dtype), acc = dtype == cuda::Dtype::kFloat64 ? 8 : 4;
  Buffer value = random_buffer(dtype, s.B * S * s.H * s.D), loc = random_buffer(dtype, samples * 2, -0.2, 1.2);
  Buffer weights = random_buffer(dtype, samples, 0, 1);
  a.value = value.data();
  a.value_stride_b = S * s.H * s.D;
  a.value_stride_s = s.H * s.D;
  a.value_stride_h = s.D;
  a.sampling_locations = loc.data();
  a.attention_weights = weights.data();
  Buffer out = empty_buffer(s.B * s.Nq * s.H * s.D * size);
  a.out = out.data();
  check(cuda::deformable_attention_forward(a, nullptr), name + " forward");
  const double error = deformable_error(a, value, loc, weights, out);
  const double tolerance_forward = tolerance(dtype, false) * a.levels * s.P;  // |out| up to L P
  if (!(error <= tolerance_forward)) {
    std::fprintf(stderr, "WRONG %s forward: max error %.3g (tolerance %.1g)\n", name.c_str(), error, tolerance_forward);
    ++failures;
  }

  Buffer grad_out = random_buffer(dtype, s.B * s.Nq * s.H * s.D);
  a.grad_out = grad_out.data();
  const int64_t value_elements = s.B * S * s.H * s.D;
  Buffer grad_value = empty_buffer(value_elements * size), sums = empty_buffer(value_elements * acc);
  std::memset(sums.bytes.get(), 0, sums.size);
  Buffer grad_loc = empty_buffer(samples * 2 * size), grad_weights = empty_buffer(samples * size);
  a.grad_value = grad_value.data();
  a.grad_value_accumulator = acc == size ? grad_value.data() : sums.data();
  if (acc == size) std::memset(grad_value.bytes.get(), 0, grad_value.size);
  a.grad_sampling_locations = grad_loc.data();
  a.grad_attention_weights = grad_weights.data();
  a.tile_queries = 16;
  cuda::set_shared_levels(a, shared_levels, static_cast<int64_t>(acc));
  check(cuda::deformable_attention_backward(a, nullptr), name + " backward");

  // The deterministic backward, into buffers of its own.
  Buffer rows = empty_buffer(samples * 4 * 8), entry_weights = empty_buffer(samples * 4 * acc);
  a.entry_rows = reinterpret_cast<int64_t*>(rows.data());
  a.entry_weights = entry_weights.data();
  check(cuda::deformable_attention_entries(a, nullptr), name + " entries");
  std::vector<int64_t> order(samples * 4), starts(s.B * s.H * S + 1);
  for (size_t e = 0; e < order.size(); ++e) order[e] = static_cast<int64_t>(e);
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return a.entry_rows[x] < a.entry_rows[y]; });
  for (int64_t r = 0, e = 0; r <= s.B * s.H * S; ++r) {
    while (e < static_cast<int64_t>(order.size()) && a.entry_rows[order[e]] < r) ++e;
    starts[r] = e;
  }
  a.sorted_entries = order.data();
  a.row_starts = starts.data();
  Buffer sorted_grad_value = empty_buffer(value_elements * size);
  Buffer sorted_grad_loc = empty_buffer(samples * 2 * size), sorted_grad_weights = empty_buffer(samples * size);
  a.grad_value = sorted_grad_value.data();
  a.grad_sampling_locations = sorted_grad_loc.data();
  a.grad_attention_weights = sorted_grad_weights.data();
  check(cuda::deformable_attention_backward_sorted(a, nullptr), name + " deterministic backward");
  double worst = 0, largest = 1;
  for (int64_t e = 0; e < value_elements; ++e) {
    worst = std::max(worst, std::abs(element(grad_value, dtype, e) - element(sorted_grad_value, dtype, e)));
    largest = std::max(largest, std::abs(element(sorted_grad_value, dtype, e)));
  }
  const double tolerance_backward = 4 * tolerance(dtype, false) * largest;  // two orders of summation
  if (!(worst <= tolerance_backward)) {
    std::fprintf(stderr, "WRONG %s backward: the atomic and deterministic value gradients differ by %.3g\n",
                 name.c_str(), worst);
    ++failures;
  }
}

const char* dtype_name(cuda::Dtype dtype) {
  switch (dtype) {
    case cuda::Dtype::kFloat32: return "float32";
    case cuda::Dtype::kFloat64: return "float64";
    case cuda::Dtype::kFloat16: return "float16";
    case cuda::Dtype::kBFloat16: return "bfloat16";
  }
  return "?";
}

}  // namespace

// argv[1], if given: run only the kernel runs whose name contains it.
int main(int argc, char** argv) {
  const std::string only = argc > 1 ? argv[1] : "";
  auto wanted = [&](const std::string& name) { return name.find(only) != std::string::npos; };
  // Odd sizes (tails of every tile), a padded batch, content-only, widths 32 and 64.
  const AttentionShape shapes[] = {
      {2, 2, 37, 70, 16, 24, 20, true},
      {1, 3, 65, 130, 32, 32, 32, false},
      {3, 1, 17, 45, 64, 0, 48, true},
  };
  const cuda::Dtype dtypes[] = {cuda::Dtype::kFloat32, cuda::Dtype::kFloat64, cuda::Dtype::kFloat16,
                                cuda::Dtype::kBFloat16};
  int runs = 0;
  for (const auto& shape : shapes) {
    const std::string size = "B" + std::to_string(shape.B) + " Nq" + std::to_string(shape.Nq) + " Nk" +
                             std::to_string(shape.Nk) + " D" + std::to_string(shape.Dc);
    for (const auto dtype : dtypes) {
      const std::string simt = std::string("attention simt ") + dtype_name(dtype) + " " + size;
      if (wanted(simt)) {
        run_attention(shape, dtype, false, 1, simt);
        ++runs;
      }
      if (dtype == cuda::Dtype::kFloat64) continue;  // float32 on tensor cores is tf32
      for (const int splits : {1, 3}) {
        const std::string name = std::string("attention tensor_core ") + dtype_name(dtype) + " splits " +
                                 std::to_string(splits) + " " + size;
        if (!wanted(name)) continue;
        run_attention(shape, dtype, true, splits, name);
        ++runs;
      }
    }
  }
  const int64_t sine_shapes[][3] = {{7, 4, 16}, {300, 4, 128}, {11, 2, 20}};  // boxes, coords, features
  for (const auto& s : sine_shapes)
    for (const auto dtype : dtypes)
      for (const bool modulated : {false, true}) {
        const std::string name = std::string("sine ") + (modulated ? "modulated " : "plain ") + dtype_name(dtype) +
                                 " " + std::to_string(s[0]) + "x" + std::to_string(s[1]);
        if (!wanted(name)) continue;
        run_sine(s[0], s[1], s[2], modulated, dtype, name);
        ++runs;
      }
  // Small levels and many queries, so that samples collide on value rows within a block (a race
  // where an atomic is missing); the value gradients summed in global memory, or in shared memory
  // first; D 8, 32 and 64.
  const DeformableShape deformable_shapes[] = {
      {2, 37, 2, 32, 4, {{2, 3}, {1, 2}}},
      {1, 20, 3, 8, 2, {{7, 5}, {3, 1}, {1, 4}}},
      {1, 9, 1, 64, 3, {{4, 4}, {2, 2}}},
  };
  for (const auto& shape : deformable_shapes)
    for (const auto dtype : dtypes)
      for (const unsigned shared_levels : {0u, (1u << shape.levels.size()) - 1}) {  // none or all in shared
        const std::string name = std::string("deformable ") + dtype_name(dtype) + " D" + std::to_string(shape.D) +
                                 (shared_levels ? " shared" : " global");
        if (!wanted(name)) continue;
        run_deformable(shape, dtype, shared_levels, name);
        ++runs;
      }
  std::printf("%d kernel runs, %d failed\n", runs, failures);
  return failures == 0 ? 0 : 1;
}
