// Shared by attention_forward.cu and attention_backward.cu (two translation units, so they
// compile in parallel): tiles, row helpers and the dispatch over instantiations.
#pragma once

#include "cuda/execution.cuh"
#include "cuda/launch.h"
#include "cuda/numeric.cuh"

#include <algorithm>
#include <cstdint>

namespace dabdetr::cuda {
namespace {

constexpr int kRowsPerBlock = 64;  // threads per block: queries (forward, dQ) or keys (dK/dV)
static_assert(kMaxAttentionRows == 65535LL * kRowsPerBlock, "launch.h's row limit follows the block size");

// Rows staged in shared memory per step: 32, or 16 for double at width 64 (48 KB static limit).
template <typename A, int W>
__host__ __device__ constexpr int tile_rows() { return sizeof(A) * W > 256 ? 16 : 32; }

template <typename A>
__host__ __device__ __forceinline__ A max_of(A a, A b) { return a > b ? a : b; }

template <typename T>
__device__ __forceinline__ const T* head_rows(const Operand& o, int64_t b, int64_t h) {
  return static_cast<const T*>(o.data) + b * o.stride_b + h * o.stride_h;
}

// dst[r][d] = rows[row0 + r][d] for d < W = S - kGap, zero past the last row or the operand's
// dim; with a gap, the row's second half d >= W / 2 is stored kGap elements further on.
template <typename T, int kGap = 0, typename A, int R, int S>
__device__ void load_tile(A (&dst)[R][S], const T* rows, int64_t stride_n, int64_t row0,
                          int64_t num_rows, int64_t dim) {
  constexpr int W = S - kGap;
  for (int idx = threadIdx.x; idx < R * W; idx += blockDim.x) {
    const int r = idx / W, d = idx % W;
    const int64_t row = row0 + r;
    dst[r][d < W / 2 ? d : d + kGap] = (row < num_rows && d < dim) ? to_acc(rows[row * stride_n + d]) : A(0);
  }
}

// Rows held one per thread (a query's or a key's, in registers) move to and from global memory
// through shared memory, kRows rows at a time: a warp then reads or writes consecutive elements
// of a row (coalesced), where each thread reading its own row would touch one sector per lane
// (the emulator's counters: 32 sectors per 128 bytes before). One element of padding a row keeps
// the threads' reads and writes of their own rows free of bank conflicts (row stride W + 1 words).
// A row may be split between kParts consecutive threads, part p holding columns
// [p W / kParts, (p + 1) W / kParts): thread t owns part t % kParts of row row0 + t / kParts. A
// warp's 16 rows of 4-byte halves still hit every bank once; 8-byte halves of one row share banks
// (two-way, in the backward passes' prologues and epilogues only: about 0.5 % of their float64
// wavefronts, left so for the checking dtype). Every thread of the block calls load and store.
template <typename A, int W, int kParts = 1>
struct RowStage {
  static constexpr int kRows = 16;
  static constexpr int kPartWidth = W / kParts;
  A rows[kRows][W + 1];

  // dst = the thread's part of source row row0 + threadIdx.x / kParts (zero past num_rows and dim).
  template <typename T>
  __device__ void load(A (&dst)[kPartWidth], const T* src, int64_t stride_n, int64_t row0, int64_t num_rows,
                       int64_t dim) {
    const int first = threadIdx.x % kParts * kPartWidth;
    for (int pass = 0; pass < kRowsPerBlock; pass += kRows) {
      for (int idx = threadIdx.x; idx < kRows * W; idx += blockDim.x) {
        const int r = idx / W, d = idx % W;
        const int64_t row = row0 + pass + r;
        rows[r][d] = (row < num_rows && d < dim) ? to_acc(src[row * stride_n + d]) : A(0);
      }
      __syncthreads();
      const unsigned mine = threadIdx.x / kParts - pass;
      if (mine < kRows) {
#pragma unroll
        for (int d = 0; d < kPartWidth; ++d) dst[d] = rows[mine][first + d];
      }
      __syncthreads();
    }
  }

  // Row row0 + threadIdx.x / kParts of dst (contiguous rows of dim elements) = the threads' parts
  // in src, for rows below num_rows.
  template <typename T>
  __device__ void store(T* dst, const A (&src)[kPartWidth], int64_t row0, int64_t num_rows, int64_t dim) {
    const int first = threadIdx.x % kParts * kPartWidth;
    for (int pass = 0; pass < kRowsPerBlock; pass += kRows) {
      const unsigned mine = threadIdx.x / kParts - pass;
      if (mine < kRows) {
#pragma unroll
        for (int d = 0; d < kPartWidth; ++d) rows[mine][first + d] = src[d];
      }
      __syncthreads();
      for (int idx = threadIdx.x; idx < kRows * W; idx += blockDim.x) {
        const int r = idx / W, d = idx % W;
        const int64_t row = row0 + pass + r;
        if (row < num_rows && d < dim) dst[row * dim + d] = from_acc<T>(rows[r][d]);
      }
      __syncthreads();
    }
  }
};

template <typename A, int W>
__device__ __forceinline__ A dot(const A (&x)[W], const A* y) {
  A sum = 0;
#pragma unroll
  for (int d = 0; d < W; ++d) sum += x[d] * y[d];
  return sum;
}

// The backward passes give each key (dK/dV) or query (dQ) two threads, each holding half of the
// row's elements (at width 32 with the positional part, a whole row a thread needed 255
// registers and spilled). Their partial dot products meet by one shuffle: pair_sum returns
// low + high in both threads (addition commutes), the order delta_kernel sums dO . V in.
constexpr int kRowParts = 2;
static_assert(kRowParts == 2, "rows split in halves: half_start, pair_sum and delta_kernel's order");

// A row's two threads read the two halves of a shared tile's row at once: 4-byte halves (64
// bytes apart at width 32) fall on different banks, 8-byte ones (128 bytes) on the same, so
// the backward's tiles put 16 bytes between the halves of 8-byte rows.
template <typename A>
__host__ __device__ constexpr int half_gap() { return sizeof(A) == 8 ? 16 / static_cast<int>(sizeof(A)) : 0; }

// Where the calling thread's half starts in such a tile row of width W.
template <typename A, int W>
__device__ __forceinline__ int half_start() { return threadIdx.x % kRowParts * (W / 2 + half_gap<A>()); }

template <typename A>
__device__ __forceinline__ A pair_sum(A partial) {
  const unsigned pair = 3u << (threadIdx.x % 32 / kRowParts * kRowParts);  // the row's two lanes
  return partial + __shfl_xor_sync(pair, partial, 1);
}

template <typename A, int W>
__device__ __forceinline__ void axpy(A (&y)[W], A alpha, const A* x) {
#pragma unroll
  for (int d = 0; d < W; ++d) y[d] += alpha * x[d];
}

__device__ __forceinline__ bool key_is_valid(const AttentionArgs& a, int64_t b, int64_t key) {
  return key < a.num_keys &&
         !(a.key_padding_mask != nullptr && a.key_padding_mask[b * a.mask_stride_b + key * a.mask_stride_n]);
}

// Shared-memory tiles of keys: content, positional (if any), values, and validity; kGap elements
// between a row's halves (half_gap, for the dQ pass).
template <typename A, int R, int W, bool kHasPos, int kGap = 0>
struct KeyTiles {
  __align__(16) A content[R][W + kGap];
  __align__(16) A pos[kHasPos ? R : 1][W + kGap];
  __align__(16) A value[R][W + kGap];
  bool valid[R];

  template <typename T>
  __device__ void load(const AttentionArgs& a, int64_t b, int64_t h, int64_t k0) {
    load_tile<T, kGap>(content, head_rows<T>(a.k_content, b, h), a.k_content.stride_n, k0, a.num_keys,
                       a.dim_content);
    if constexpr (kHasPos)
      load_tile<T, kGap>(pos, head_rows<T>(a.k_pos, b, h), a.k_pos.stride_n, k0, a.num_keys, a.dim_pos);
    load_tile<T, kGap>(value, head_rows<T>(a.value, b, h), a.value.stride_n, k0, a.num_keys, a.dim_value);
    for (int r = threadIdx.x; r < R; r += blockDim.x) valid[r] = key_is_valid(a, b, k0 + r);
  }
};

// One query's content and positional rows, in registers.
template <typename A, int W, bool kHasPos>
struct QueryRows {
  A content[W];
  A pos[kHasPos ? W : 1];

  // The block's queries q0 .. q0 + 63, one a thread (all threads call it).
  template <typename T>
  __device__ void load(RowStage<A, W>& stage, const AttentionArgs& a, int64_t b, int64_t h, int64_t q0) {
    stage.load(content, head_rows<T>(a.q_content, b, h), a.q_content.stride_n, q0, a.num_queries, a.dim_content);
    if constexpr (kHasPos)
      stage.load(pos, head_rows<T>(a.q_pos, b, h), a.q_pos.stride_n, q0, a.num_queries, a.dim_pos);
  }
  template <int R>
  __device__ __forceinline__ A logit(const KeyTiles<A, R, W, kHasPos>& keys, int j) const {
    A s = dot(content, keys.content[j]);
    if constexpr (kHasPos) s += dot(pos, keys.pos[j]);
    return s;
  }
};

// The head width an instantiation is compiled for: 32, or 64 (the widest of Dc, Dp, Dv).
__host__ __device__ inline int head_width(const AttentionArgs& a) {
  return max_of(a.dim_content, max_of(a.dim_pos, a.dim_value)) <= 32 ? 32 : 64;
}

// The backward's delta_i = rowsum(dO_i * O_i), in the accumulation type, in the order the backward
// passes sum dO_i . V_j (one lane per row sums each half of the head width in order, then adds
// the halves, as pair_sum does): where a row's only valid key gives O_i = V_j, delta_i equals
// dO_i . V_j exactly and that key's dK is exactly zero, as the reference's (a warp-parallel sum,
// tried 2026-12-06, broke this by one rounding). So that the loads are coalesced all the same,
// each warp stages its 32 rows through shared memory 16 columns at a time (a load request reads
// 16 consecutive columns of two rows), and each lane continues its own row's sums over the
// staged columns.
constexpr int kDeltaWarps = 4;   // a block: 128 threads, 32 rows a warp
constexpr int kDeltaCols = 16;   // columns a step stages: both half widths (16, 32) are whole steps

// Where column c of staged row r lives: no padding, the column swizzled by the row, so that both
// the staging (lanes 0-15 one row, 16-31 the next) and the summing (lane i row i, all the same
// column) hit every bank once: 4-byte rows r and r + 1 share a swizzle and fill the two halves of
// the banks; 8-byte accesses go in half-warp phases, one row each when staging, and need a
// swizzle per row when summing.
template <typename A>
__device__ __forceinline__ int delta_column(int r, int c) {
  return c ^ ((sizeof(A) == 8 ? r : r >> 1) & 15);
}

template <typename T>
__global__ void delta_kernel(const AttentionArgs a) {
  using A = Acc<T>;
  constexpr int kRows = kDeltaWarps * 32, kCols = kDeltaCols;
  __shared__ A staged[kDeltaWarps][2][32][kCols];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  A(&grad_out_rows)[32][kCols] = staged[warp][0];
  A(&out_rows)[32][kCols] = staged[warp][1];
  const int64_t rows = a.batch * a.heads * a.num_queries, dim = a.dim_value;
  const int half = head_width(a) / 2;
  const T* grad_out = static_cast<const T*>(a.grad_out);
  const T* out = static_cast<const T*>(a.out);
  // Every thread of the block runs the same iterations (the barriers need them all).
  for (int64_t block_row0 = int64_t(blockIdx.x) * kRows; block_row0 < rows;
       block_row0 += int64_t(gridDim.x) * kRows) {
    const int64_t row0 = block_row0 + warp * 32;
    const int64_t left = rows - row0;  // negative for the block's warps past the last row
    const int count = left <= 0 ? 0 : left < 32 ? static_cast<int>(left) : 32;
    A low = 0, sum = 0;  // low: the first half's sum, once the steps pass it (a half is whole steps)
    for (int64_t d0 = 0; d0 < dim; d0 += kCols) {
      if (d0 == half) {
        low = sum;
        sum = 0;
      }
      const int cols = dim - d0 < kCols ? static_cast<int>(dim - d0) : kCols;
      for (int idx = lane; idx < 32 * kCols; idx += 32) {
        const int r = idx / kCols, c = idx % kCols;
        if (r < count && c < cols) {
          const int64_t at = (row0 + r) * dim + d0 + c;
          grad_out_rows[r][delta_column<A>(r, c)] = to_acc(grad_out[at]);
          out_rows[r][delta_column<A>(r, c)] = to_acc(out[at]);
        }
      }
      __syncthreads();
      if (lane < count) {
        for (int c = 0; c < cols; ++c) {
          const int at = delta_column<A>(lane, c);
          sum += grad_out_rows[lane][at] * out_rows[lane][at];
        }
      }
      __syncthreads();
    }
    if (lane < count) static_cast<A*>(a.delta)[row0 + lane] = low + sum;
  }
}

template <typename T>
cudaError_t launch_delta(const AttentionArgs& a, cudaStream_t stream) {
  const int64_t rows = a.batch * a.heads * a.num_queries;
  constexpr int kThreads = kDeltaWarps * 32;
  return launch_kernel<delta_kernel<T>>(static_cast<unsigned>(std::min<int64_t>(ceil_div(rows, kThreads), 65535)),
                                        kThreads, 0, stream, a);
}

// Picks the instantiation: head width 32 or 64 (the widest of Dc, Dp, Dv), with or without the
// positional part, and the storage type: any of the four, or with kTensorCore (the tensor-core
// kernels) bf16, fp16 and float32 (as tf32), float64 never instantiated.
template <template <typename, int, bool> class Launch, bool kTensorCore = false>
cudaError_t dispatch(const AttentionArgs& a, cudaStream_t stream) {
  if (max_of(a.dim_content, max_of(a.dim_pos, a.dim_value)) > kMaxHeadDim) return cudaErrorInvalidValue;
  const bool has_pos = a.q_pos.data != nullptr;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    if (head_width(a) == 32)
      return has_pos ? Launch<T, 32, true>::run(a, stream) : Launch<T, 32, false>::run(a, stream);
    return has_pos ? Launch<T, 64, true>::run(a, stream) : Launch<T, 64, false>::run(a, stream);
  };
  if constexpr (kTensorCore) {
    switch (a.dtype) {
      case Dtype::kBFloat16: return run(__nv_bfloat16{});
      case Dtype::kFloat16: return run(__half{});
      case Dtype::kFloat32: return run(float{});
      default: return cudaErrorInvalidValue;
    }
  } else {
    return dispatch_dtype(a.dtype, run);
  }
}

// The host binding checks these limits with a clear message first; this keeps the launch safe.
bool grid_fits(const AttentionArgs& a, int64_t rows) {
  return a.batch * a.heads <= INT32_MAX && rows <= kMaxAttentionRows;
}

}  // namespace
}  // namespace dabdetr::cuda
