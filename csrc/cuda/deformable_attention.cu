// Multi-scale deformable attention on CUDA (the math: csrc/cpu/deformable_attention_kernel.inc).
//
// A group of G lanes serves one (b, q, h): G = 8, 16 or 32, the power of 2 that covers D up to 32;
// D up to 64 takes two channels per lane. Every lane of the group computes the sample's position
// and bilinear weights (its loads of the location and weight hit one address: a broadcast) and
// reads its channels of the corners' value rows (coalesced within the group).
//
// Forward: each lane's sums stay in registers over the L * P samples; one store per channel.
//
// Backward, default (atomics): the three sums over D of a sample (the attention weight's gradient
// and the location's two) are reduced across the group with shuffles and written by one lane, so
// they have one writer each. The value gradient receives a * bilinear * grad_out at each corner:
//   - a lane first merges the consecutive points of a query that fall in one cell, so they cost one
//     update per corner instead of one each;
//   - a block serves a tile of consecutive queries of one (b, h) and sums the value gradients of the
//     small levels (those that fit shared memory together, the coarse maps on which every query of
//     the image lands: the most contended rows) in shared memory, then adds its sums to global
//     memory with one atomic per touched element, instead of one per sample and corner;
//   - the other levels get global atomics (red.global.add) directly.
// Atomic sums are not deterministic: with torch.use_deterministic_algorithms(True) the host takes the
// deterministic backward instead: every corner of every sample becomes an entry (its value row and
// weight), the entries are sorted by row with a stable sort (ops_cuda.cpp, with torch), and one group
// per value row sums its entries in that fixed order; the other gradients come from the same pass as
// the default one, without atomics.
#include "cuda/execution.cuh"
#include "cuda/launch.h"
#include "cuda/numeric.cuh"

#include <algorithm>
#include <cstdint>

namespace dabdetr::cuda {
namespace {

constexpr int kThreads = 256;

// A sample's corners: token in value (-1 outside the level) and bilinear weight, numbered
// (x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1); cell identifies (x0, y0) within the level.
template <typename A>
struct Corners {
  int64_t token[4];
  A weight[4];
  A fx, fy;
  int64_t cell;
};

// False when no corner is inside the level (NaN positions too): the sample contributes nothing.
template <typename A>
__device__ __forceinline__ bool locate(const DeformableAttentionArgs& a, int l, A loc_x, A loc_y, Corners<A>& c) {
  const int64_t height = a.level_height[l], width = a.level_width[l];
  const A x = loc_x * A(width) - A(0.5), y = loc_y * A(height) - A(0.5);
  if (!(x >= A(-1) && x < A(width) && y >= A(-1) && y < A(height))) return false;
  const A x_floor = floor_acc(x), y_floor = floor_acc(y);
  const int64_t x0 = static_cast<int64_t>(x_floor), y0 = static_cast<int64_t>(y_floor);
  c.fx = x - x_floor;
  c.fy = y - y_floor;
  const bool left = x0 >= 0, right = x0 + 1 < width, top = y0 >= 0, bottom = y0 + 1 < height;
  const int64_t row0 = a.level_start[l] + y0 * width + x0;
  c.cell = (y0 + 1) * (width + 1) + (x0 + 1);  // distinct within the level for x0, y0 >= -1
  c.token[0] = left && top ? row0 : -1;
  c.token[1] = right && top ? row0 + 1 : -1;
  c.token[2] = left && bottom ? row0 + width : -1;
  c.token[3] = right && bottom ? row0 + width + 1 : -1;
  c.weight[0] = (A(1) - c.fx) * (A(1) - c.fy);
  c.weight[1] = c.fx * (A(1) - c.fy);
  c.weight[2] = (A(1) - c.fx) * c.fy;
  c.weight[3] = c.fx * c.fy;
  return true;
}

// A lane's place: its group's (b, q, h) and its channels lane + j * G, j < kPerLane.
template <int G>
struct Lane {
  int lane;
  unsigned mask;  // the group's lanes in the warp, for its shuffles
  __device__ Lane() : lane(threadIdx.x % G), mask((G == 32 ? 0xffffffffu : ((1u << G) - 1u)) << (threadIdx.x % 32 / G * G)) {}
};

template <int G, typename A>
__device__ __forceinline__ A group_sum(A v, unsigned mask) {
#pragma unroll
  for (int offset = G / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(mask, v, offset, G);
  return v;
}

template <typename T, int G, int kPerLane>
__global__ void __launch_bounds__(kThreads) forward_kernel(const DeformableAttentionArgs a) {
  using A = Acc<T>;
  const Lane<G> me;
  const int64_t groups = a.batch * a.num_queries * a.heads, L = a.levels, P = a.points, D = a.head_dim;
  const int64_t stride = int64_t(gridDim.x) * (kThreads / G);
  for (int64_t g = int64_t(blockIdx.x) * (kThreads / G) + threadIdx.x / G; g < groups; g += stride) {
    const int64_t b = g / (a.num_queries * a.heads), h = g % a.heads;  // g = (b * Nq + q) * H + h
    const T* value = static_cast<const T*>(a.value) + b * a.value_stride_b + h * a.value_stride_h;
    const T* loc = static_cast<const T*>(a.sampling_locations) + g * L * P * 2;
    const T* attn = static_cast<const T*>(a.attention_weights) + g * L * P;
    A acc[kPerLane] = {};
    for (int l = 0; l < L; ++l)
      for (int64_t i = l * P; i < (l + 1) * P; ++i) {
        Corners<A> c;
        if (!locate<A>(a, l, to_acc(loc[2 * i]), to_acc(loc[2 * i + 1]), c)) continue;
        const A w = to_acc(attn[i]);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.token[k] < 0) continue;
          const T* row = value + c.token[k] * a.value_stride_s;
#pragma unroll
          for (int j = 0; j < kPerLane; ++j) {
            const int64_t channel = me.lane + j * G;
            if (channel < D) acc[j] += w * c.weight[k] * to_acc(row[channel]);
          }
        }
      }
    T* out = static_cast<T*>(a.out) + g * D;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j)
      if (me.lane + j * G < D) out[me.lane + j * G] = from_acc<T>(acc[j]);
  }
}

// *address += value, atomically (in the deliberately broken variant 4 of execution.cuh, not).
template <typename A>
__device__ __forceinline__ void add_atomically(A* address, A value) {
#if DABDETR_EMULATOR_FAULT == 4
  *address += value;
#else
  atomicAdd(address, value);
#endif
}

// Where the atomic backward adds a corner's value gradient: the block's shared sums of its level, or
// global memory.
template <typename A>
struct ValueGradTarget {
  A* global;  // grad_value_accumulator at (b, h): row t at global + t * H * D
  A* shared;  // the block's shared sums of the levels in a.shared_levels, or nullptr

  __device__ __forceinline__ A* row(const DeformableAttentionArgs& a, int l, int64_t token) const {
    if (a.shared_levels >> l & 1u) return shared + a.shared_offset[l] + (token - a.level_start[l]) * a.head_dim;
    return global + token * a.heads * a.head_dim;
  }
};

// A lane's pending value-gradient coefficients of one cell: consecutive points of a query in the
// same cell add theirs here and reach memory once.
template <typename A>
struct PendingCell {
  int64_t cell = -1;
  int level = 0;
  int64_t token[4];
  A weight[4];
};

template <int G, int kPerLane, typename A>
__device__ __forceinline__ void flush(PendingCell<A>& p, const ValueGradTarget<A>& target,
                                      const DeformableAttentionArgs& a, const A (&grad)[kPerLane], int lane) {
  if (p.cell < 0) return;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (p.token[k] < 0) continue;
    A* row = target.row(a, p.level, p.token[k]);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const int64_t channel = lane + j * G;
      if (channel < a.head_dim) add_atomically(row + channel, p.weight[k] * grad[j]);
    }
  }
  p.cell = -1;
}

// The location and weight gradients of query group g (b, q, h), and with kAtomics its value gradients.
template <typename T, int G, int kPerLane, bool kAtomics>
__device__ void backward_group(const DeformableAttentionArgs& a, int64_t g, const Lane<G>& me,
                               const ValueGradTarget<Acc<T>>& target) {
  using A = Acc<T>;
  const int64_t L = a.levels, P = a.points, D = a.head_dim;
  const int64_t b = g / (a.num_queries * a.heads), h = g % a.heads;
  const T* value = static_cast<const T*>(a.value) + b * a.value_stride_b + h * a.value_stride_h;
  const T* loc = static_cast<const T*>(a.sampling_locations) + g * L * P * 2;
  const T* attn = static_cast<const T*>(a.attention_weights) + g * L * P;
  T* grad_loc = static_cast<T*>(a.grad_sampling_locations) + g * L * P * 2;
  T* grad_attn = static_cast<T*>(a.grad_attention_weights) + g * L * P;
  A grad[kPerLane];
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const int64_t channel = me.lane + j * G;
    grad[j] = channel < D ? to_acc(static_cast<const T*>(a.grad_out)[g * D + channel]) : A(0);
  }
  [[maybe_unused]] PendingCell<A> pending;
  A kept[3] = {0, 0, 0};  // sample i's gradients of its weight, x and y, at lane i % G
  for (int l = 0; l < L; ++l) {
    for (int64_t i = l * P; i < (l + 1) * P; ++i) {
      Corners<A> c;
      A sums[3] = {0, 0, 0};  // this lane's channels of grad_a, d/dfx and d/dfy
      const A w = to_acc(attn[i]);
      const bool inside = locate<A>(a, l, to_acc(loc[2 * i]), to_acc(loc[2 * i + 1]), c);
      if (inside) {
        const A along_x[4] = {c.fy - A(1), A(1) - c.fy, -c.fy, c.fy};
        const A along_y[4] = {c.fx - A(1), -c.fx, A(1) - c.fx, c.fx};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (c.token[k] < 0) continue;
          const T* row = value + c.token[k] * a.value_stride_s;
#pragma unroll
          for (int j = 0; j < kPerLane; ++j) {
            const int64_t channel = me.lane + j * G;
            if (channel >= D) continue;
            const A product = to_acc(row[channel]) * grad[j];
            sums[0] += c.weight[k] * product;
            sums[1] += along_x[k] * product;
            sums[2] += along_y[k] * product;
          }
        }
        if constexpr (kAtomics) {
          if (pending.cell != c.cell) {
            flush<G, kPerLane>(pending, target, a, grad, me.lane);
            pending.cell = c.cell;
            pending.level = l;
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              pending.token[k] = c.token[k];
              pending.weight[k] = A(0);
            }
          }
#pragma unroll
          for (int k = 0; k < 4; ++k) pending.weight[k] += w * c.weight[k];
        }
      }
      // Every lane of the group takes the same branch above (one sample): the reductions are uniform.
#pragma unroll
      for (int s = 0; s < 3; ++s) sums[s] = group_sum<G>(sums[s], me.mask);
      // Lane i % G keeps sample i's gradients, and each run of G samples is written by its lanes
      // together: consecutive elements (coalesced), where one lane writing every sample took a
      // 32-byte sector per element (the emulator's counters).
      if (me.lane == i % G) {
        kept[0] = sums[0];
        kept[1] = w * A(a.level_width[l]) * sums[1];
        kept[2] = w * A(a.level_height[l]) * sums[2];
      }
      if (i % G == G - 1 || i == L * P - 1) {
        const int64_t sample = i - i % G + me.lane;
        if (sample <= i) {
          grad_attn[sample] = from_acc<T>(kept[0]);
          store_pair<T>(grad_loc + 2 * sample, kept[1], kept[2]);
        }
      }
    }
    if constexpr (kAtomics) flush<G, kPerLane>(pending, target, a, grad, me.lane);  // cells never span levels
  }
}

// The atomic backward: block (tile, b * H + h) serves queries [tile * tile_queries, +tile_queries).
template <typename T, int G, int kPerLane>
__global__ void __launch_bounds__(kThreads) backward_kernel(const DeformableAttentionArgs a) {
  using A = Acc<T>;
  const Lane<G> me;
  const int64_t bh = blockIdx.y, b = bh / a.heads, h = bh % a.heads, D = a.head_dim;
  const ValueGradTarget<A> target{static_cast<A*>(a.grad_value_accumulator) + (b * a.num_values * a.heads + h) * D,
                                  reinterpret_cast<A*>(dynamic_shared_memory())};
  const int64_t shared_elements = a.shared_bytes / static_cast<int64_t>(sizeof(A));
  for (int64_t e = threadIdx.x; e < shared_elements; e += kThreads) target.shared[e] = A(0);
  __syncthreads();

  const int64_t tile_end = (int64_t(blockIdx.x) + 1) * a.tile_queries;
  const int64_t q_end = tile_end < a.num_queries ? tile_end : a.num_queries;
  for (int64_t q = int64_t(blockIdx.x) * a.tile_queries + threadIdx.x / G; q < q_end; q += kThreads / G)
    backward_group<T, G, kPerLane, true>(a, (b * a.num_queries + q) * a.heads + h, me, target);

  __syncthreads();
  // The block's shared sums into global memory: one atomic per element it touched.
  for (int l = 0; l < a.levels; ++l) {
    if (!(a.shared_levels >> l & 1u)) continue;
    const int64_t elements = a.level_height[l] * a.level_width[l] * D;
    for (int64_t e = threadIdx.x; e < elements; e += kThreads) {
      const A sum = target.shared[a.shared_offset[l] + e];
      if (sum != A(0)) add_atomically(target.global + (a.level_start[l] + e / D) * a.heads * D + e % D, sum);
    }
  }
}

// The deterministic backward's first step: the entries (value row and weight of every corner).
template <typename T>
__global__ void __launch_bounds__(kThreads) entries_kernel(const DeformableAttentionArgs a) {
  using A = Acc<T>;
  const int64_t samples = a.batch * a.num_queries * a.heads * a.levels * a.points;
  const int64_t outside = a.batch * a.heads * a.num_values;
  const T* loc = static_cast<const T*>(a.sampling_locations);
  const T* attn = static_cast<const T*>(a.attention_weights);
  const bool paired = aligned_pairs<T>(loc);  // a sample's x and y in one load
  for (int64_t s = int64_t(blockIdx.x) * kThreads + threadIdx.x; s < samples; s += int64_t(gridDim.x) * kThreads) {
    const int l = static_cast<int>(s / a.points % a.levels);
    const int64_t g = s / (a.levels * a.points);  // (b * Nq + q) * H + h
    const int64_t b = g / (a.num_queries * a.heads), h = g % a.heads;
    Corners<A> c;
    A x, y;
    load_two(loc + 2 * s, paired, x, y);
    const bool inside = locate<A>(a, l, x, y, c);
    const A w = to_acc(attn[s]);
    // A thread's 4 entries are consecutive: each of these stores strides 4 entries across the warp
    // (twice to 4x the sectors its bytes need, the emulator's counters). Writing them coalesced would
    // take a transposition across lanes by shuffles; this is the opt-in deterministic path.
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const bool used = inside && c.token[k] >= 0;
      a.entry_rows[4 * s + k] = used ? (b * a.heads + h) * a.num_values + c.token[k] : outside;
      static_cast<A*>(a.entry_weights)[4 * s + k] = used ? w * c.weight[k] : A(0);
    }
  }
}

// The deterministic backward's value gradient: value row r = (b * H + h) * S + t sums its sorted
// entries in order, one group per row; entry e belongs to query group e / (4 L P).
template <typename T, int G, int kPerLane>
__global__ void __launch_bounds__(kThreads) value_grad_sorted_kernel(const DeformableAttentionArgs a) {
  using A = Acc<T>;
  const Lane<G> me;
  const int64_t rows = a.batch * a.heads * a.num_values, D = a.head_dim;
  const int64_t entries_per_group = 4 * a.levels * a.points;
  const A* weights = static_cast<const A*>(a.entry_weights);
  const T* grad_out = static_cast<const T*>(a.grad_out);
  const int64_t stride = int64_t(gridDim.x) * (kThreads / G);
  for (int64_t r = int64_t(blockIdx.x) * (kThreads / G) + threadIdx.x / G; r < rows; r += stride) {
    A sum[kPerLane] = {};
    for (int64_t e = a.row_starts[r]; e < a.row_starts[r + 1]; ++e) {
      const int64_t entry = a.sorted_entries[e], g = entry / entries_per_group;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        const int64_t channel = me.lane + j * G;
        if (channel < D) sum[j] += weights[entry] * to_acc(grad_out[g * D + channel]);
      }
    }
    const int64_t bh = r / a.num_values, t = r % a.num_values, b = bh / a.heads, h = bh % a.heads;
    T* row = static_cast<T*>(a.grad_value) + ((b * a.num_values + t) * a.heads + h) * D;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j)
      if (me.lane + j * G < D) row[me.lane + j * G] = from_acc<T>(sum[j]);
  }
}

// The deterministic backward's location and weight gradients: backward_group without atomics.
template <typename T, int G, int kPerLane>
__global__ void __launch_bounds__(kThreads) sample_grad_kernel(const DeformableAttentionArgs a) {
  const Lane<G> me;
  const int64_t groups = a.batch * a.num_queries * a.heads;
  const ValueGradTarget<Acc<T>> unused{nullptr, nullptr};
  const int64_t stride = int64_t(gridDim.x) * (kThreads / G);
  for (int64_t g = int64_t(blockIdx.x) * (kThreads / G) + threadIdx.x / G; g < groups; g += stride)
    backward_group<T, G, kPerLane, false>(a, g, me, unused);
}

// The 16-bit types' value gradient, summed in float32, rounded once.
template <typename T>
__global__ void __launch_bounds__(kThreads) round_value_grad_kernel(const DeformableAttentionArgs a) {
  const int64_t n = a.batch * a.num_values * a.heads * a.head_dim;
  const float* sums = static_cast<const float*>(a.grad_value_accumulator);
  for (int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x; e < n; e += int64_t(gridDim.x) * kThreads)
    static_cast<T*>(a.grad_value)[e] = from_acc<T>(sums[e]);
}

unsigned blocks_for(int64_t threads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(threads, kThreads), 1 << 20)));
}

// Calls fn(T{}, std::integral_constant<int, G>, std::integral_constant<int, kPerLane>) for the
// dtype and head dim (a multiple of 8 up to 64: launch.h).
template <typename Fn>
cudaError_t dispatch(const DeformableAttentionArgs& a, Fn&& fn) {
  return dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (a.head_dim <= 8) return fn(T{}, std::integral_constant<int, 8>(), std::integral_constant<int, 1>());
    if (a.head_dim <= 16) return fn(T{}, std::integral_constant<int, 16>(), std::integral_constant<int, 1>());
    if (a.head_dim <= 32) return fn(T{}, std::integral_constant<int, 32>(), std::integral_constant<int, 1>());
    return fn(T{}, std::integral_constant<int, 32>(), std::integral_constant<int, 2>());
  });
}

}  // namespace

cudaError_t deformable_attention_forward(const DeformableAttentionArgs& a, cudaStream_t stream) {
  const int64_t groups = a.batch * a.num_queries * a.heads;
  if (groups == 0 || a.head_dim == 0) return cudaSuccess;
  return dispatch(a, [&](auto tag, auto group, auto per_lane) {
    constexpr int G = decltype(group)::value;
    return launch_kernel<forward_kernel<decltype(tag), G, decltype(per_lane)::value>>(blocks_for(groups * G), kThreads,
                                                                                        0, stream, a);
  });
}

cudaError_t deformable_attention_backward(const DeformableAttentionArgs& a, cudaStream_t stream) {
  const int64_t n = a.batch * a.num_queries * a.heads;
  if (n == 0 || a.head_dim == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>(ceil_div(a.num_queries, a.tile_queries)), static_cast<unsigned>(a.batch * a.heads));
  cudaError_t error = dispatch(a, [&](auto tag, auto group, auto per_lane) {
    return launch_kernel<backward_kernel<decltype(tag), decltype(group)::value, decltype(per_lane)::value>>(
        grid, kThreads, static_cast<size_t>(a.shared_bytes), stream, a);
  });
  if (error != cudaSuccess || a.grad_value == a.grad_value_accumulator) return error;
  return dispatch_dtype(a.dtype, [&](auto tag) {
    return launch_kernel<round_value_grad_kernel<decltype(tag)>>(
        blocks_for(a.batch * a.num_values * a.heads * a.head_dim), kThreads, 0, stream, a);
  });
}

cudaError_t deformable_attention_entries(const DeformableAttentionArgs& a, cudaStream_t stream) {
  const int64_t samples = a.batch * a.num_queries * a.heads * a.levels * a.points;
  if (samples == 0) return cudaSuccess;
  return dispatch_dtype(a.dtype, [&](auto tag) {
    return launch_kernel<entries_kernel<decltype(tag)>>(blocks_for(samples), kThreads, 0, stream, a);
  });
}

cudaError_t deformable_attention_backward_sorted(const DeformableAttentionArgs& a, cudaStream_t stream) {
  if (a.head_dim == 0) return cudaSuccess;
  const int64_t rows = a.batch * a.heads * a.num_values, groups = a.batch * a.num_queries * a.heads;
  return dispatch(a, [&](auto tag, auto group, auto per_lane) {
    using T = decltype(tag);
    constexpr int G = decltype(group)::value, kPerLane = decltype(per_lane)::value;
    cudaError_t error = cudaSuccess;
    if (rows > 0) error = launch_kernel<value_grad_sorted_kernel<T, G, kPerLane>>(blocks_for(rows * G), kThreads, 0,
                                                                                  stream, a);
    if (error == cudaSuccess && groups > 0)
      error = launch_kernel<sample_grad_kernel<T, G, kPerLane>>(blocks_for(groups * G), kThreads, 0, stream, a);
    return error;
  });
}

}  // namespace dabdetr::cuda
