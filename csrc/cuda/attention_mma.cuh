// Shared by the tensor-core attention kernels (attention_mma_forward.cu, attention_mma_backward.cu):
// block shape, shared-memory tiles, the softmax step and the dispatch over instantiations.
//
// Every block has 4 warps; each warp owns 16 rows (queries in the forward and dQ pass, keys in the
// dK/dV pass) and multiplies them against tiles of the other side staged in shared memory. The
// logit of a (query, key) pair is one reduction over the content dims and then the positional
// dims, each read from its own tile: nothing is concatenated in memory. Operand widths are padded
// with zeros to W (32 or 64) in shared memory; dims below W skip their all-zero steps.
#pragma once

#include "cuda/attention_common.cuh"
#include "cuda/mma.cuh"

#include <initializer_list>

namespace dabdetr::cuda {
namespace {

constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = 32 * kMmaWarps;
constexpr int kMmaBlockRows = 16 * kMmaWarps;  // rows a block owns
static_assert(kMmaBlockRows == kMmaRowsPerBlock, "launch.h's block rows follow the warps");
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Rows of the other side staged per step in the backward: 64, or 32 for 64-wide heads, whose three
// gradient accumulators of 64 columns hold 96 registers a thread already (ptxas: about 165 in
// all for the key pass at 32 rows); 64 rows would add 32 more for the logits and dS. A choice
// from register counts, to be measured.
template <int W>
__host__ __device__ constexpr int mma_tile_rows() { return W == 64 ? 32 : 64; }

// The kernels' tiles live in dynamic shared memory: float32 ones outgrow the 48 KiB of static
// shared memory (85 KiB for the 64-wide forward), within the 99 KiB every sm_80+ GPU grants a block.
constexpr size_t kMaxMmaSharedBytes = 99 * 1024;

template <typename Tiles>
__device__ __forceinline__ Tiles& shared_tiles() {
  return *reinterpret_cast<Tiles*>(dynamic_shared_memory());
}

// Launches kKernel with sizeof(Tiles) bytes of dynamic shared memory, first raising the kernel's
// limit where that is past the default 48 KB.
template <typename Tiles, auto kKernel, typename... Args>
cudaError_t launch_with_tiles(dim3 grid, cudaStream_t stream, Args... args) {
  static_assert(sizeof(Tiles) <= kMaxMmaSharedBytes, "tiles beyond the 99 KiB of shared memory of sm_86/sm_89");
  if constexpr (sizeof(Tiles) > 48 * 1024) {
    const cudaError_t error =
        cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(sizeof(Tiles)));
    if (error != cudaSuccess) return error;
  }
  return launch_kernel<kKernel>(grid, kMmaThreads, sizeof(Tiles), stream, args...);
}

// Key-side tiles: content, positional, values and an additive mask (0, or -inf for a padded key
// or one past Nk).
template <typename T, int W, int R, bool kHasPos>
struct MmaKeyTiles {
  __align__(16) SmemRows<T, W> content[R];
  __align__(16) SmemRows<T, W> pos[kHasPos ? R : 1];
  __align__(16) SmemRows<T, W> value[R];
  float bias[R];

  __device__ void load(const AttentionArgs& a, int64_t b, int64_t h, int64_t k0, bool vectorized) {
    load_rows<T, R, W>(content, head_rows<T>(a.k_content, b, h), a.k_content.stride_n, k0, a.num_keys,
                       a.dim_content, vectorized);
    if constexpr (kHasPos)
      load_rows<T, R, W>(pos, head_rows<T>(a.k_pos, b, h), a.k_pos.stride_n, k0, a.num_keys, a.dim_pos, vectorized);
    load_rows<T, R, W>(value, head_rows<T>(a.value, b, h), a.value.stride_n, k0, a.num_keys, a.dim_value,
                       vectorized);
    for (int r = threadIdx.x; r < R; r += blockDim.x) bias[r] = key_is_valid(a, b, k0 + r) ? 0.f : -INFINITY;
  }
};

// Query-side tiles: content, positional and (backward) dO, with per-row lse and delta in the
// log2 domain (lse2 = +inf for a row past Nq or with every key padded, so its exp2 is 0).
template <typename T, int W, int R, bool kHasPos, bool kBackward>
struct MmaQueryTiles {
  __align__(16) SmemRows<T, W> content[R];
  __align__(16) SmemRows<T, W> pos[kHasPos ? R : 1];
  __align__(16) SmemRows<T, W> grad_out[kBackward ? R : 1];
  float lse2[kBackward ? R : 1];
  float delta[kBackward ? R : 1];

  __device__ void load(const AttentionArgs& a, int64_t b, int64_t h, int64_t q0, bool vectorized) {
    load_rows<T, R, W>(content, head_rows<T>(a.q_content, b, h), a.q_content.stride_n, q0, a.num_queries,
                       a.dim_content, vectorized);
    if constexpr (kHasPos)
      load_rows<T, R, W>(pos, head_rows<T>(a.q_pos, b, h), a.q_pos.stride_n, q0, a.num_queries, a.dim_pos,
                         vectorized);
    if constexpr (kBackward) {
      const int64_t bh = b * a.heads + h;
      load_rows<T, R, W>(grad_out, static_cast<const T*>(a.grad_out) + bh * a.num_queries * a.dim_value,
                         a.dim_value, q0, a.num_queries, a.dim_value, vectorized);
      for (int r = threadIdx.x; r < R; r += blockDim.x) {
        const int64_t q = q0 + r;
        const float lse = q < a.num_queries ? static_cast<const float*>(a.lse)[bh * a.num_queries + q] : -INFINITY;
        lse2[r] = lse == -INFINITY ? INFINITY : lse * kLog2e;
        delta[r] = q < a.num_queries ? static_cast<const float*>(a.delta)[bh * a.num_queries + q] : 0.f;
      }
    }
  }
};

// 16-byte loads serve every operand when each row starts 16-byte aligned: aligned base pointers,
// strides and dims in multiples of the chunk (8 16-bit or 4 float32 elements). Otherwise the
// tiles are filled element by element.
template <typename T>
bool operands_vectorized(const AttentionArgs& a) {
  auto aligned = [](const void* data, std::initializer_list<int64_t> counts) {
    return reinterpret_cast<uintptr_t>(data) % 16 == 0 &&
           std::all_of(counts.begin(), counts.end(), [](int64_t n) { return n % kChunk<T> == 0; });
  };
  auto fits = [&](const Operand& o, int64_t dim) {
    return o.data == nullptr || aligned(o.data, {o.stride_b, o.stride_h, o.stride_n, dim});
  };
  // dO is contiguous [B, H, Nq, Dv] (backward only), but may start anywhere in its storage.
  const bool grad_out_fits = a.grad_out == nullptr || aligned(a.grad_out, {a.dim_value});
  return fits(a.q_content, a.dim_content) && fits(a.k_content, a.dim_content) && fits(a.q_pos, a.dim_pos) &&
         fits(a.k_pos, a.dim_pos) && fits(a.value, a.dim_value) && grad_out_fits;
}

// The head's product widths: k-steps of 16 over each operand, and 8-wide output tiles (even).
struct MmaWidths {
  int steps_content, steps_pos, steps_value, tiles_content, tiles_pos, tiles_value;

  __device__ explicit MmaWidths(const AttentionArgs& a)
      : steps_content(static_cast<int>(ceil_div(a.dim_content, 16))),
        steps_pos(static_cast<int>(ceil_div(a.dim_pos, 16))),
        steps_value(static_cast<int>(ceil_div(a.dim_value, 16))),
        tiles_content(2 * steps_content),
        tiles_pos(2 * steps_pos),
        tiles_value(2 * steps_value) {}
};

// C-tile coordinates of this thread: rows g and g + 8 of its warp's 16, columns 2t and 2t + 1
// of each 8-wide tile.
__device__ __forceinline__ int frag_row() { return (threadIdx.x % 32) / 4; }
__device__ __forceinline__ int frag_col() { return 2 * (threadIdx.x % 4); }

// Max (or sum) over the 4 threads that share a row of a C tile.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

// Element (i, j) of a row pair stored with one 2-element store where the dim allows it.
template <typename T>
__device__ __forceinline__ void store_two(T* row, int col, int64_t dim, float x, float y) {
  if (col + 1 < dim && dim % 2 == 0) {
    store_pair<T>(row + col, x, y);
  } else {
    if (col < dim) row[col] = from_acc<T>(x);
    if (col + 1 < dim) row[col + 1] = from_acc<T>(y);
  }
}

// Rows [row0, row0 + 16) of a warp's accumulators to a contiguous [rows, dim] output (rows past
// num_rows skipped), each value times row_scale[0] (rows g) or row_scale[1] (rows g + 8). A scale
// of 0 writes zeros whatever the accumulator holds (a padded key's may be inf).
// 16-bit T with dim % 4 == 0: a thread's pair is 4 bytes, so a tile's 4 threads of a row fill half
// a sector (8 sectors per 128 bytes a warp's store, the emulator's counters found). Threads t and
// t ^ 1 swap pairs so that each stores 4 consecutive elements: even ones of tile j, odd ones of
// tile j + 1; a row's two tiles are then one whole 32-byte sector (4 per 128 bytes).
template <typename T, int N>
__device__ void store_rows(T* out, const Accum (&acc)[N], int64_t row0, int64_t num_rows, int64_t dim,
                           const float (&row_scale)[2]) {
  static_assert(N % 2 == 0, "tiles in pairs");
  if constexpr (sizeof(T) == 2) {
    if (dim % 4 == 0) {
      const bool odd = threadIdx.x % 2;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int64_t row = row0 + frag_row() + 8 * half;
        const float scale = row_scale[half];
        auto scaled = [&](int j, int i) { return scale == 0.f ? 0.f : acc[j].v[2 * half + i] * scale; };
#pragma unroll
        for (int j = 0; j < N; j += 2) {
          const int mine = odd ? j + 1 : j, theirs = odd ? j : j + 1;
          const uint32_t kept = pack2<T>(scaled(mine, 0), scaled(mine, 1));
          const uint32_t got = __shfl_xor_sync(0xffffffffu, pack2<T>(scaled(theirs, 0), scaled(theirs, 1)), 1);
          const int col = mine * 8 + frag_col() - (odd ? 2 : 0);
          const uint64_t four = odd ? (uint64_t(kept) << 32 | got) : (uint64_t(got) << 32 | kept);
          if (row < num_rows && col < dim) *reinterpret_cast<uint64_t*>(out + row * dim + col) = four;
        }
      }
      return;
    }
  }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int64_t row = row0 + frag_row() + 8 * half;
    if (row >= num_rows) continue;
    const float scale = row_scale[half];
#pragma unroll
    for (int j = 0; j < N; ++j)
      store_two(out + row * dim, j * 8 + frag_col(), dim, scale == 0.f ? 0.f : acc[j].v[2 * half] * scale,
                scale == 0.f ? 0.f : acc[j].v[2 * half + 1] * scale);
  }
}

}  // namespace
}  // namespace dabdetr::cuda
