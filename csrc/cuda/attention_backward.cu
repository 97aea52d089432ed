// Flash-style modulated attention on CUDA: the backward (see attention_forward.cu).
//
// Backward, deterministic (no atomics), from the saved lse:
//   delta_i = rowsum(dO_i * O_i);
//   key pass (two threads per key): dV_j = sum_i P_ij dO_i, dK_j = sum_i dS_ij Q_i;
//   query pass (one thread per query): dQ_i = sum_j dS_ij K_j;
// with P_ij = exp(s_ij - lse_i) and dS_ij = P_ij (dO_i . V_j - delta_i) * scale recomputed in
// each pass. The recomputation costs the logits and dO.V twice but no thread ever writes memory
// another one writes.
#include "cuda/attention_common.cuh"

namespace dabdetr::cuda {
namespace {

// Shared-memory tiles of queries for the key pass: content, positional, dO, lse and delta. A
// key's two threads read the two halves of a row at once: 4-byte halves (64 bytes apart at width
// 32) fall on different banks, 8-byte ones (128 bytes) on the same, so there the second half
// starts 16 bytes further on (half(p): where part p's columns start).
template <typename A, int R, int W, bool kHasPos>
struct QueryTiles {
  static constexpr int kGap = sizeof(A) == 8 ? 16 / sizeof(A) : 0;
  __align__(16) A content[R][W + kGap];
  __align__(16) A pos[kHasPos ? R : 1][W + kGap];
  __align__(16) A grad_out[R][W + kGap];
  A lse[R];
  A delta[R];

  static __device__ __forceinline__ int half(int part) { return part * (W / 2 + kGap); }

  template <typename T>
  __device__ void load(const AttentionArgs& a, int64_t b, int64_t h, int64_t q0) {
    const int64_t bh = b * a.heads + h;
    load_tile<T, kGap>(content, head_rows<T>(a.q_content, b, h), a.q_content.stride_n, q0, a.num_queries,
                       a.dim_content);
    if constexpr (kHasPos)
      load_tile<T, kGap>(pos, head_rows<T>(a.q_pos, b, h), a.q_pos.stride_n, q0, a.num_queries, a.dim_pos);
    load_tile<T, kGap>(grad_out, static_cast<const T*>(a.grad_out) + bh * a.num_queries * a.dim_value,
                       a.dim_value, q0, a.num_queries, a.dim_value);
    for (int r = threadIdx.x; r < R; r += blockDim.x) {
      const int64_t q = q0 + r;
      lse[r] = q < a.num_queries ? static_cast<const A*>(a.lse)[bh * a.num_queries + q] : neg_inf<A>();
      delta[r] = q < a.num_queries ? static_cast<const A*>(a.delta)[bh * a.num_queries + q] : A(0);
    }
  }
};

// Threads per key in the key pass. Each holds half of its key's rows and of their gradients, and
// the halves' partial dot products meet by one shuffle each: a whole key a thread (6 W values
// in registers) needed 255 registers and spilled 44 bytes on sm_90 at W = 32. The shuffled sum
// of dO . V is halves_dot()'s order, so delta_kernel's delta still cancels it exactly.
constexpr int kKeyParts = 2;
static_assert(kKeyParts == 2, "QueryTiles::half and halves_dot split a row in two");

template <typename T, int W, bool kHasPos>
__global__ void __launch_bounds__(kRowsPerBlock * kKeyParts) key_grad_kernel(const AttentionArgs a) {
  using A = Acc<T>;
  constexpr int R = tile_rows<A, W>(), H = W / kKeyParts;
  __shared__ QueryTiles<A, R, W, kHasPos> queries;
  __shared__ RowStage<A, W, kKeyParts> stage;
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t k0 = int64_t(blockIdx.y) * kRowsPerBlock, key = k0 + threadIdx.x / kKeyParts;
  const int part = threadIdx.x % kKeyParts;  // the thread's columns: part H .. part H + H - 1
  const int at = QueryTiles<A, R, W, kHasPos>::half(part);  // where they start in a query tile's row
  const unsigned pair = ((1u << kKeyParts) - 1) << (threadIdx.x % 32 / kKeyParts * kKeyParts);  // its key's lanes
  const bool active = key_is_valid(a, b, key);  // padded keys get zero gradients
  const A scale = static_cast<A>(a.scale);

  A k_content[H], k_pos[kHasPos ? H : 1], value[H];
  A grad_content[H], grad_pos[kHasPos ? H : 1], grad_value[H];
  stage.load(k_content, head_rows<T>(a.k_content, b, h), a.k_content.stride_n, k0, a.num_keys, a.dim_content);
  if constexpr (kHasPos) stage.load(k_pos, head_rows<T>(a.k_pos, b, h), a.k_pos.stride_n, k0, a.num_keys, a.dim_pos);
  stage.load(value, head_rows<T>(a.value, b, h), a.value.stride_n, k0, a.num_keys, a.dim_value);
#pragma unroll
  for (int d = 0; d < H; ++d) {
    grad_content[d] = 0;
    grad_value[d] = 0;
    if constexpr (kHasPos) grad_pos[d] = 0;
  }

  for (int64_t q0 = 0; q0 < a.num_queries; q0 += R) {
    __syncthreads();
    queries.template load<T>(a, b, h, q0);
    __syncthreads();
    if (!active) continue;  // both threads of a key alike, so the shuffles' pairs stay whole
#pragma unroll 2
    for (int i = 0; i < R; ++i) {
      if (queries.lse[i] == neg_inf<A>()) continue;  // past the last query, or all keys padded
      A logit = dot(k_content, queries.content[i] + at);
      if constexpr (kHasPos) logit += dot(k_pos, queries.pos[i] + at);
      logit += __shfl_xor_sync(pair, logit, 1);
      const A p = exp_acc(logit * scale - queries.lse[i]);
      A dp = dot(value, queries.grad_out[i] + at);
      dp += __shfl_xor_sync(pair, dp, 1);  // low + high in either lane: halves_dot()'s sum
      const A ds = p * (dp - queries.delta[i]) * scale;
      axpy(grad_value, p, queries.grad_out[i] + at);
      axpy(grad_content, ds, queries.content[i] + at);
      if constexpr (kHasPos) axpy(grad_pos, ds, queries.pos[i] + at);
    }
  }
  const int64_t rows = bh * a.num_keys;
  stage.store(static_cast<T*>(a.grad_k_content) + rows * a.dim_content, grad_content, k0, a.num_keys, a.dim_content);
  if constexpr (kHasPos)
    stage.store(static_cast<T*>(a.grad_k_pos) + rows * a.dim_pos, grad_pos, k0, a.num_keys, a.dim_pos);
  stage.store(static_cast<T*>(a.grad_value) + rows * a.dim_value, grad_value, k0, a.num_keys, a.dim_value);
}

template <typename T, int W, bool kHasPos>
__global__ void __launch_bounds__(kRowsPerBlock) query_grad_kernel(const AttentionArgs a) {
  using A = Acc<T>;
  constexpr int R = tile_rows<A, W>();
  __shared__ KeyTiles<A, R, W, kHasPos> keys;
  __shared__ RowStage<A, W> stage;
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t q0 = int64_t(blockIdx.y) * kRowsPerBlock, q = q0 + threadIdx.x;
  const A scale = static_cast<A>(a.scale);
  const A lse = q < a.num_queries ? static_cast<const A*>(a.lse)[bh * a.num_queries + q] : neg_inf<A>();
  const bool active = lse != neg_inf<A>();
  const A delta = active ? static_cast<const A*>(a.delta)[bh * a.num_queries + q] : A(0);

  QueryRows<A, W, kHasPos> query;
  A grad_out[W], grad_content[W], grad_pos[kHasPos ? W : 1];
  query.template load<T>(stage, a, b, h, q0);
  stage.load(grad_out, static_cast<const T*>(a.grad_out) + bh * a.num_queries * a.dim_value, a.dim_value, q0,
             a.num_queries, a.dim_value);
#pragma unroll
  for (int d = 0; d < W; ++d) {
    grad_content[d] = 0;
    if constexpr (kHasPos) grad_pos[d] = 0;
  }

  for (int64_t k0 = 0; k0 < a.num_keys; k0 += R) {
    __syncthreads();
    keys.template load<T>(a, b, h, k0);
    __syncthreads();
    if (!active) continue;
#pragma unroll 2
    for (int j = 0; j < R; ++j) {
      if (!keys.valid[j]) continue;
      const A p = exp_acc(query.logit(keys, j) * scale - lse);
      const A ds = p * (halves_dot(grad_out, keys.value[j]) - delta) * scale;
      axpy(grad_content, ds, keys.content[j]);
      if constexpr (kHasPos) axpy(grad_pos, ds, keys.pos[j]);
    }
  }
  const int64_t rows = bh * a.num_queries;
  stage.store(static_cast<T*>(a.grad_q_content) + rows * a.dim_content, grad_content, q0, a.num_queries,
              a.dim_content);
  if constexpr (kHasPos)
    stage.store(static_cast<T*>(a.grad_q_pos) + rows * a.dim_pos, grad_pos, q0, a.num_queries, a.dim_pos);
}

template <typename T, int W, bool kHasPos>
struct LaunchBackward {
  static cudaError_t run(const AttentionArgs& a, cudaStream_t stream) {
    cudaError_t error = launch_delta<T>(a, stream);
    if (error == cudaSuccess && a.num_keys > 0) {
      const dim3 key_grid(a.batch * a.heads, ceil_div(a.num_keys, kRowsPerBlock));
      error = launch_kernel<key_grad_kernel<T, W, kHasPos>>(key_grid, kRowsPerBlock * kKeyParts, 0, stream, a);
    }
    if (error != cudaSuccess) return error;
    const dim3 query_grid(a.batch * a.heads, ceil_div(a.num_queries, kRowsPerBlock));
    return launch_kernel<query_grad_kernel<T, W, kHasPos>>(query_grid, kRowsPerBlock, 0, stream, a);
  }
};

}  // namespace

cudaError_t attention_backward(const AttentionArgs& a, cudaStream_t stream) {
  if (a.batch * a.heads == 0 || a.num_queries == 0) return cudaSuccess;
  if (!grid_fits(a, a.num_queries) || !grid_fits(a, a.num_keys)) return cudaErrorInvalidConfiguration;
  return dispatch<LaunchBackward>(a, stream);
}

}  // namespace dabdetr::cuda
