// Flash-style modulated attention on CUDA: the backward (see attention_forward.cu).
//
// Backward, deterministic (no atomics), from the saved lse:
//   delta_i = rowsum(dO_i * O_i);
//   key pass (two threads per key): dV_j = sum_i P_ij dO_i, dK_j = sum_i dS_ij Q_i;
//   query pass (two threads per query): dQ_i = sum_j dS_ij K_j;
// with P_ij = exp(s_ij - lse_i) and dS_ij = P_ij (dO_i . V_j - delta_i) * scale recomputed in
// each pass. The recomputation costs the logits and dO.V twice but no thread ever writes memory
// another one writes.
#include "cuda/attention_common.cuh"

namespace dabdetr::cuda {
namespace {

// Shared-memory tiles of queries for the key pass: content, positional, dO, lse and delta, with
// half_gap() between a row's halves.
template <typename A, int R, int W, bool kHasPos>
struct QueryTiles {
  static constexpr int kGap = half_gap<A>();
  __align__(16) A content[R][W + kGap];
  __align__(16) A pos[kHasPos ? R : 1][W + kGap];
  __align__(16) A grad_out[R][W + kGap];
  A lse[R];
  A delta[R];

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

// Two threads per key (kRowParts), each with half of the key's rows and gradients.
template <typename T, int W, bool kHasPos>
__global__ void __launch_bounds__(kRowsPerBlock * kRowParts) key_grad_kernel(const AttentionArgs a) {
  using A = Acc<T>;
  constexpr int R = tile_rows<A, W>(), H = W / kRowParts;
  __shared__ QueryTiles<A, R, W, kHasPos> queries;
  __shared__ RowStage<A, W, kRowParts> stage;
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t k0 = int64_t(blockIdx.y) * kRowsPerBlock, key = k0 + threadIdx.x / kRowParts;
  const int at = half_start<A, W>();  // the thread's half of a query tile's row
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
    if (!active) continue;  // both threads of a key alike: the shuffles' pairs stay whole
#pragma unroll 2
    for (int i = 0; i < R; ++i) {
      if (queries.lse[i] == neg_inf<A>()) continue;  // past the last query, or all keys padded
      A logit = dot(k_content, queries.content[i] + at);
      if constexpr (kHasPos) logit += dot(k_pos, queries.pos[i] + at);
      const A p = exp_acc(pair_sum(logit) * scale - queries.lse[i]);
      const A ds = p * (pair_sum(dot(value, queries.grad_out[i] + at)) - queries.delta[i]) * scale;
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

// Two threads per query (kRowParts), each with half of the query's rows and gradients.
template <typename T, int W, bool kHasPos>
__global__ void __launch_bounds__(kRowsPerBlock * kRowParts) query_grad_kernel(const AttentionArgs a) {
  using A = Acc<T>;
  constexpr int R = tile_rows<A, W>(), H = W / kRowParts;
  __shared__ KeyTiles<A, R, W, kHasPos, half_gap<A>()> keys;
  __shared__ RowStage<A, W, kRowParts> stage;
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t q0 = int64_t(blockIdx.y) * kRowsPerBlock, q = q0 + threadIdx.x / kRowParts;
  const int at = half_start<A, W>();  // the thread's half of a key tile's row
  const A scale = static_cast<A>(a.scale);
  const A lse = q < a.num_queries ? static_cast<const A*>(a.lse)[bh * a.num_queries + q] : neg_inf<A>();
  const bool active = lse != neg_inf<A>();  // both threads of a query alike
  const A delta = active ? static_cast<const A*>(a.delta)[bh * a.num_queries + q] : A(0);

  A content[H], pos[kHasPos ? H : 1], grad_out[H], grad_content[H], grad_pos[kHasPos ? H : 1];
  stage.load(content, head_rows<T>(a.q_content, b, h), a.q_content.stride_n, q0, a.num_queries, a.dim_content);
  if constexpr (kHasPos) stage.load(pos, head_rows<T>(a.q_pos, b, h), a.q_pos.stride_n, q0, a.num_queries, a.dim_pos);
  stage.load(grad_out, static_cast<const T*>(a.grad_out) + bh * a.num_queries * a.dim_value, a.dim_value, q0,
             a.num_queries, a.dim_value);
#pragma unroll
  for (int d = 0; d < H; ++d) {
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
      A logit = dot(content, keys.content[j] + at);
      if constexpr (kHasPos) logit += dot(pos, keys.pos[j] + at);
      const A p = exp_acc(pair_sum(logit) * scale - lse);
      const A ds = p * (pair_sum(dot(grad_out, keys.value[j] + at)) - delta) * scale;
      axpy(grad_content, ds, keys.content[j] + at);
      if constexpr (kHasPos) axpy(grad_pos, ds, keys.pos[j] + at);
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
      error = launch_kernel<key_grad_kernel<T, W, kHasPos>>(key_grid, kRowsPerBlock * kRowParts, 0, stream, a);
    }
    if (error != cudaSuccess) return error;
    const dim3 query_grid(a.batch * a.heads, ceil_div(a.num_queries, kRowsPerBlock));
    return launch_kernel<query_grad_kernel<T, W, kHasPos>>(query_grid, kRowsPerBlock * kRowParts, 0, stream, a);
  }
};

}  // namespace

cudaError_t attention_backward(const AttentionArgs& a, cudaStream_t stream) {
  if (a.batch * a.heads == 0 || a.num_queries == 0) return cudaSuccess;
  if (!grid_fits(a, a.num_queries) || !grid_fits(a, a.num_keys)) return cudaErrorInvalidConfiguration;
  return dispatch<LaunchBackward>(a, stream);
}

}  // namespace dabdetr::cuda
