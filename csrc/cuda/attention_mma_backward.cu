// Tensor-core modulated attention, backward (the forward and the layout: attention_mma_forward.cu,
// attention_mma.cuh). The same two deterministic passes as the SIMT backward, from the saved lse,
// with every product on tensor cores:
//   key pass (a warp per 16 keys):     S^T = K Q^T, dP^T = V dO^T, P^T = exp2(S^T - lse),
//                                      dS^T = P^T (dP^T - delta) scale,
//                                      dV += P^T dO, dKc += dS^T Qc, dKp += dS^T Qp;
//   query pass (a warp per 16 queries): the same S, P, dP, dS, then dQc += dS Kc, dQp += dS Kp.
// Each pass recomputes the logits, and every gradient row is summed by the one warp that owns it:
// no atomics, so the result is deterministic (bit-identical from run to run) at the price of the
// logits and dO V^T computed twice.
#include "cuda/attention_mma.cuh"

namespace dabdetr::cuda {
namespace {

// The products both passes recompute, for a warp's 16 rows against a tile's columns (one side
// queries, the other keys; the operands of the value side are dO for queries and V for keys):
// logits = rows_content . cols_content^T + rows_pos . cols_pos^T and dP = rows_value . cols_value^T
// (dO V^T, or its transpose V dO^T in the key pass).
template <typename T, bool kHasPos, int N, int L>
__device__ __forceinline__ void logits_and_grad_probs(Accum (&logits)[N], Accum (&grad_probs)[N],
                                                      const Bits<T> (*rows_content)[L], const Bits<T> (*rows_pos)[L],
                                                      const Bits<T> (*rows_value)[L], const Bits<T> (*cols_content)[L],
                                                      const Bits<T> (*cols_pos)[L], const Bits<T> (*cols_value)[L],
                                                      const MmaWidths& width) {
  zero(logits);
  zero(grad_probs);
  mma_rows_rows<T>(logits, rows_content, cols_content, width.steps_content);
  if constexpr (kHasPos) mma_rows_rows<T>(logits, rows_pos, cols_pos, width.steps_pos);
  mma_rows_rows<T>(grad_probs, rows_value, cols_value, width.steps_value);
}

template <typename T, int W, bool kHasPos>
struct KeyGradTiles {
  MmaKeyTiles<T, W, kMmaBlockRows, kHasPos> keys;  // this block's keys, resident
  MmaQueryTiles<T, W, mma_tile_rows<W>(), kHasPos, true> queries;
};

template <typename T, int W, bool kHasPos>
struct QueryGradTiles {
  MmaQueryTiles<T, W, kMmaBlockRows, kHasPos, true> queries;  // this block's queries, resident
  MmaKeyTiles<T, W, mma_tile_rows<W>(), kHasPos> keys;
};

template <typename T, int W, bool kHasPos>
__global__ void __launch_bounds__(kMmaThreads) mma_key_grad_kernel(const AttentionArgs a, bool vectorized) {
  constexpr int BQ = mma_tile_rows<W>();
  auto& [keys, queries] = shared_tiles<KeyGradTiles<T, W, kHasPos>>();
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t k0 = int64_t(blockIdx.y) * kMmaBlockRows;
  const int warp = threadIdx.x / 32;
  const MmaWidths width(a);
  const float scale = static_cast<float>(a.scale), scale_log2 = scale * kLog2e;

  keys.load(a, b, h, k0, vectorized);
  Accum grad_content[W / 8], grad_pos[kHasPos ? W / 8 : 2], grad_value[W / 8];
  zero(grad_content);
  zero(grad_pos);
  zero(grad_value);
  for (int64_t q0 = 0; q0 < a.num_queries; q0 += BQ) {
    __syncthreads();
    queries.load(a, b, h, q0, vectorized);
    __syncthreads();
    Accum p[BQ / 8], ds[BQ / 8];  // rows: this warp's keys; columns: the tile's queries
    logits_and_grad_probs<T, kHasPos>(p, ds, keys.content + 16 * warp, keys.pos + 16 * warp, keys.value + 16 * warp,
                                      queries.content, queries.pos, queries.grad_out, width);
#pragma unroll
    for (int j = 0; j < BQ / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int q = j * 8 + frag_col() + e % 2;
        p[j].v[e] = exp2f(p[j].v[e] * scale_log2 - queries.lse2[q]);
        ds[j].v[e] = p[j].v[e] * (ds[j].v[e] - queries.delta[q]) * scale;
      }
    mma_accum_rows<T, W / 8, BQ>(grad_value, p, queries.grad_out, width.tiles_value);
    mma_accum_rows<T, W / 8, BQ>(grad_content, ds, queries.content, width.tiles_content);
    if constexpr (kHasPos) mma_accum_rows<T, W / 8, BQ>(grad_pos, ds, queries.pos, width.tiles_pos);
  }

  // Padded keys get zero gradients (their accumulators may hold inf: their logits were never
  // normalized by the forward).
  const int local = 16 * warp + frag_row();
  const float keep[2] = {keys.bias[local] == 0.f ? 1.f : 0.f, keys.bias[local + 8] == 0.f ? 1.f : 0.f};
  const int64_t row0 = k0 + 16 * warp, offset = bh * a.num_keys;
  store_rows(static_cast<T*>(a.grad_k_content) + offset * a.dim_content, grad_content, row0, a.num_keys,
             a.dim_content, keep);
  if constexpr (kHasPos)
    store_rows(static_cast<T*>(a.grad_k_pos) + offset * a.dim_pos, grad_pos, row0, a.num_keys, a.dim_pos, keep);
  store_rows(static_cast<T*>(a.grad_value) + offset * a.dim_value, grad_value, row0, a.num_keys, a.dim_value, keep);
}

template <typename T, int W, bool kHasPos>
__global__ void __launch_bounds__(kMmaThreads) mma_query_grad_kernel(const AttentionArgs a, bool vectorized) {
  constexpr int BN = mma_tile_rows<W>();
  auto& [queries, keys] = shared_tiles<QueryGradTiles<T, W, kHasPos>>();
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t q0 = int64_t(blockIdx.y) * kMmaBlockRows;
  const int warp = threadIdx.x / 32;
  const MmaWidths width(a);
  const float scale = static_cast<float>(a.scale), scale_log2 = scale * kLog2e;

  queries.load(a, b, h, q0, vectorized);
  __syncthreads();
  const int local = 16 * warp + frag_row();
  const float lse2[2] = {queries.lse2[local], queries.lse2[local + 8]};
  const float delta[2] = {queries.delta[local], queries.delta[local + 8]};
  Accum grad_content[W / 8], grad_pos[kHasPos ? W / 8 : 2];
  zero(grad_content);
  zero(grad_pos);
  for (int64_t k0 = 0; k0 < a.num_keys; k0 += BN) {
    __syncthreads();
    keys.load(a, b, h, k0, vectorized);
    __syncthreads();
    Accum p[BN / 8], ds[BN / 8];  // rows: this warp's queries; columns: the tile's keys
    logits_and_grad_probs<T, kHasPos>(p, ds, queries.content + 16 * warp, queries.pos + 16 * warp,
                                      queries.grad_out + 16 * warp, keys.content, keys.pos, keys.value, width);
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int k = j * 8 + frag_col() + e % 2;
        p[j].v[e] = exp2f(p[j].v[e] * scale_log2 + keys.bias[k] - lse2[e / 2]);
        ds[j].v[e] = p[j].v[e] * (ds[j].v[e] - delta[e / 2]) * scale;
      }
    mma_accum_rows<T, W / 8, BN>(grad_content, ds, keys.content, width.tiles_content);
    if constexpr (kHasPos) mma_accum_rows<T, W / 8, BN>(grad_pos, ds, keys.pos, width.tiles_pos);
  }

  const float keep[2] = {1.f, 1.f};  // rows with every key padded have p = 0, so zero gradients
  const int64_t row0 = q0 + 16 * warp, offset = bh * a.num_queries;
  store_rows(static_cast<T*>(a.grad_q_content) + offset * a.dim_content, grad_content, row0, a.num_queries,
             a.dim_content, keep);
  if constexpr (kHasPos)
    store_rows(static_cast<T*>(a.grad_q_pos) + offset * a.dim_pos, grad_pos, row0, a.num_queries, a.dim_pos, keep);
}

template <typename T, int W, bool kHasPos>
struct LaunchMmaBackward {
  static cudaError_t run(const AttentionArgs& a, cudaStream_t stream) {
    const bool vectorized = operands_vectorized<T>(a);
    cudaError_t error = launch_delta<T>(a, stream);
    if (error == cudaSuccess && a.num_keys > 0) {
      const dim3 key_grid(a.batch * a.heads, ceil_div(a.num_keys, kMmaBlockRows));
      error = launch_with_tiles<KeyGradTiles<T, W, kHasPos>, mma_key_grad_kernel<T, W, kHasPos>>(key_grid, stream, a,
                                                                                                 vectorized);
    }
    if (error != cudaSuccess) return error;
    const dim3 query_grid(a.batch * a.heads, ceil_div(a.num_queries, kMmaBlockRows));
    return launch_with_tiles<QueryGradTiles<T, W, kHasPos>, mma_query_grad_kernel<T, W, kHasPos>>(query_grid, stream,
                                                                                                   a, vectorized);
  }
};

}  // namespace

cudaError_t attention_backward_mma(const AttentionArgs& a, cudaStream_t stream) {
  if (a.batch * a.heads == 0 || a.num_queries == 0) return cudaSuccess;
  if (!grid_fits(a, a.num_queries) || !grid_fits(a, a.num_keys)) return cudaErrorInvalidConfiguration;
  return dispatch<LaunchMmaBackward, true>(a, stream);
}

}  // namespace dabdetr::cuda
