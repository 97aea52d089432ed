// Anchor sine embedding on CUDA.
//
// Forward: one thread per (box, coordinate block, feature pair j): one precise sincos of
// u * f_j, written as a (sin, cos) pair with one store; for the xy blocks of the modulated
// variant, the scaled and modulated pair too.
// Backward: one warp per box; lanes stride over feature pairs, reading the saved embedding
// (d sin / du = f cos, d cos / du = -f sin), and reduce with shuffles; lane 0 writes the box's
// gradient, so every output element has exactly one writer.
#include "cuda/execution.cuh"
#include "cuda/launch.h"
#include "cuda/numeric.cuh"

#include <algorithm>
#include <cstdint>

namespace dabdetr::cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned kFullMask = 0xffffffffu;

// Embedding block c (0: cy, 1: cx, 2: w, 3: h) holds box coordinate block_coord(c).
__device__ __forceinline__ int64_t block_coord(int64_t block) { return block < 2 ? 1 - block : block; }

// ref_h / h for block 0 (y), ref_w / w for block 1 (x); 1 without ref_wh.
template <typename T>
__device__ __forceinline__ Acc<T> xy_modulation(const SineEmbedArgs& a, const T* box, int64_t index, int64_t block) {
  if (a.ref_wh == nullptr) return Acc<T>(1);
  const T* ref = static_cast<const T*>(a.ref_wh) + index * 2;
  return block == 0 ? to_acc(ref[1]) / to_acc(box[3]) : to_acc(ref[0]) / to_acc(box[2]);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(const SineEmbedArgs a) {
  using A = Acc<T>;
  const int64_t n = a.num_feats, half = n / 2;
  const int64_t total = a.num_boxes * a.coords * half;
  const A* freq = static_cast<const A*>(a.frequencies);
  const T* scale = static_cast<const T*>(a.xy_scale);
  const bool paired = aligned_pairs<T>(scale);  // each thread's two scales in one load (backward_kernel)
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = idx % half, block = (idx / half) % a.coords, index = idx / half / a.coords;
    const T* box = static_cast<const T*>(a.boxes) + index * a.coords;
    A s, c;
    sincos_acc(to_acc(box[block_coord(block)]) * freq[j], &s, &c);
    const int64_t k = block * n + 2 * j;
    store_pair<T>(static_cast<T*>(a.embed) + index * a.coords * n + k, s, c);
    if (a.modulated_xy == nullptr || block >= 2) continue;
    const A mod = xy_modulation(a, box, index, block);
    A s0 = 1, s1 = 1;
    if (scale != nullptr) load_two(scale + index * 2 * n + k, paired, s0, s1);
    store_pair<T>(static_cast<T*>(a.modulated_xy) + index * 2 * n + k, s * s0 * mod, c * s1 * mod);
  }
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_kernel(const SineEmbedArgs a) {
  using A = Acc<T>;
  const int64_t n = a.num_feats, half = n / 2;
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / 32;
  const A* freq = static_cast<const A*>(a.frequencies);
  const T* scale = static_cast<const T*>(a.xy_scale);
  const T* ref_wh = static_cast<const T*>(a.ref_wh);
  T* grad_scale = static_cast<T*>(a.grad_xy_scale);
  // Each lane reads its (sin, cos) pair with one two-element load where the tensors allow it: two
  // element loads at stride 2 took twice the sectors a warp's request needs (the emulator's counters).
  const bool paired = aligned_pairs<T>(a.embed) && aligned_pairs<T>(a.grad_embed) &&
                      aligned_pairs<T>(a.grad_modulated_xy) && aligned_pairs<T>(a.xy_scale);
  for (int64_t index = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32; index < a.num_boxes; index += warps) {
    const T* box = static_cast<const T*>(a.boxes) + index * a.coords;
    const T* e = static_cast<const T*>(a.embed) + index * a.coords * n;
    const T* ge = a.grad_embed != nullptr ? static_cast<const T*>(a.grad_embed) + index * a.coords * n : nullptr;
    const T* gm = a.grad_modulated_xy != nullptr ? static_cast<const T*>(a.grad_modulated_xy) + index * 2 * n : nullptr;
    A grad_box[4] = {0, 0, 0, 0}, grad_ref[2] = {0, 0};
    for (int64_t block = 0; block < a.coords; ++block) {
      const bool modulated = gm != nullptr && block < 2;
      const A mod = modulated ? xy_modulation(a, box, index, block) : A(1);
      A grad_u = 0, grad_mod = 0;
      for (int64_t j = lane; j < half; j += 32) {
        const int64_t k = block * n + 2 * j;
        A e0, e1, g0 = 0, g1 = 0;
        load_two(e + k, paired, e0, e1);
        if (ge != nullptr) load_two(ge + k, paired, g0, g1);
        if (modulated) {
          A s0 = 1, s1 = 1, gm0, gm1;
          if (scale != nullptr) load_two(scale + index * 2 * n + k, paired, s0, s1);
          load_two(gm + k, paired, gm0, gm1);
          g0 += gm0 * mod * s0;
          g1 += gm1 * mod * s1;
          grad_mod += gm0 * e0 * s0 + gm1 * e1 * s1;
          if (grad_scale != nullptr) store_pair<T>(grad_scale + index * 2 * n + k, gm0 * mod * e0, gm1 * mod * e1);
        }
        grad_u += freq[j] * (g0 * e1 - g1 * e0);
      }
      grad_box[block_coord(block)] += warp_sum(grad_u);
      if (modulated && ref_wh != nullptr) {
        grad_mod = warp_sum(grad_mod);
        // block 0 is scaled by ref_h / h (box coord 3), block 1 by ref_w / w (box coord 2)
        const int64_t size_coord = block == 0 ? 3 : 2, ref_coord = block == 0 ? 1 : 0;
        const A size = to_acc(box[size_coord]);
        grad_ref[ref_coord] = grad_mod / size;
        grad_box[size_coord] -= grad_mod * to_acc(ref_wh[index * 2 + ref_coord]) / (size * size);
      }
    }
    // Every lane holds the sums (butterfly reductions): lane c writes coordinate c, one request for
    // the box where lane 0 writing each took a sector per element.
    A mine_box = 0, mine_ref = 0;
#pragma unroll
    for (int c = 0; c < 4; ++c)
      if (lane == c) mine_box = grad_box[c];
#pragma unroll
    for (int c = 0; c < 2; ++c)
      if (lane == c) mine_ref = grad_ref[c];
    if (lane < a.coords) static_cast<T*>(a.grad_boxes)[index * a.coords + lane] = from_acc<T>(mine_box);
    if (lane < 2 && gm != nullptr && ref_wh != nullptr && a.grad_ref_wh != nullptr)
      static_cast<T*>(a.grad_ref_wh)[index * 2 + lane] = from_acc<T>(mine_ref);
  }
}

unsigned blocks_for(int64_t work_items) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(work_items, kThreads), 1 << 20)));
}

}  // namespace

cudaError_t sine_embed_forward(const SineEmbedArgs& a, cudaStream_t stream) {
  const int64_t total = a.num_boxes * a.coords * (a.num_feats / 2);
  if (total == 0) return cudaSuccess;
  return dispatch_dtype(a.dtype, [&](auto tag) {
    return launch_kernel<forward_kernel<decltype(tag)>>(blocks_for(total), kThreads, 0, stream, a);
  });
}

cudaError_t sine_embed_backward(const SineEmbedArgs& a, cudaStream_t stream) {
  if (a.num_boxes == 0) return cudaSuccess;
  return dispatch_dtype(a.dtype, [&](auto tag) {
    return launch_kernel<backward_kernel<decltype(tag)>>(blocks_for(a.num_boxes * 32), kThreads, 0, stream, a);
  });
}

}  // namespace dabdetr::cuda
