// Flash-style modulated attention on CUDA. SIMT kernels with fp32 accumulation (fp64 for
// float64); the 16-bit types are converted on load.
//
// Forward (grid: batch*heads x query blocks): one thread per query keeps its content and
// positional query, running max / sum and output accumulator in registers; the block walks the
// keys in shared-memory tiles, and each key's logit is q_content.k_content + q_pos.k_pos, summed
// into one score without concatenating anything. Writes out and lse = max + log(sum) (-inf for a
// query whose keys are all padded, which then gets zeros). The backward is attention_backward.cu.
#include "cuda/attention_common.cuh"

namespace dabdetr::cuda {
namespace {

template <typename T, int W, bool kHasPos>
__global__ void __launch_bounds__(kRowsPerBlock) forward_kernel(const AttentionArgs a) {
  using A = Acc<T>;
  constexpr int R = tile_rows<A, W>();
  __shared__ KeyTiles<A, R, W, kHasPos> keys;
  __shared__ RowStage<A, W> stage;
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t q0 = int64_t(blockIdx.y) * kRowsPerBlock, q = q0 + threadIdx.x;
  const bool active = q < a.num_queries;
  const A scale = static_cast<A>(a.scale);

  QueryRows<A, W, kHasPos> query;
  query.template load<T>(stage, a, b, h, q0);
  A acc[W];
#pragma unroll
  for (int d = 0; d < W; ++d) acc[d] = 0;
  A row_max = neg_inf<A>(), row_sum = 0;

  for (int64_t k0 = 0; k0 < a.num_keys; k0 += R) {
    __syncthreads();
    keys.template load<T>(a, b, h, k0);
#if DABDETR_EMULATOR_FAULT != 1
    __syncthreads();
#endif
    if (!active) continue;
    A s[R];
    A tile_max = neg_inf<A>();
#pragma unroll
    for (int j = 0; j < R; ++j) {
      s[j] = keys.valid[j] ? query.logit(keys, j) * scale : neg_inf<A>();
      tile_max = max_of(tile_max, s[j]);
    }
    const A new_max = max_of(row_max, tile_max);
    if (new_max == neg_inf<A>()) continue;  // every key so far is padded
    const A correction = exp_acc(row_max - new_max);
    row_sum *= correction;
#pragma unroll
    for (int d = 0; d < W; ++d) acc[d] *= correction;
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const A p = exp_acc(s[j] - new_max);
      row_sum += p;
      axpy(acc, p, keys.value[j]);
    }
    row_max = new_max;
  }
  const A inv = row_sum > A(0) ? A(1) / row_sum : A(0);
#pragma unroll
  for (int d = 0; d < W; ++d) acc[d] *= inv;
  stage.store(static_cast<T*>(a.out) + bh * a.num_queries * a.dim_value, acc, q0, a.num_queries, a.dim_value);
  if (active)
    static_cast<A*>(a.lse)[bh * a.num_queries + q] = row_sum > A(0) ? row_max + log_acc(row_sum) : neg_inf<A>();
}

template <typename T, int W, bool kHasPos>
struct LaunchForward {
  static cudaError_t run(const AttentionArgs& a, cudaStream_t stream) {
    const dim3 grid(a.batch * a.heads, ceil_div(a.num_queries, kRowsPerBlock));
    return launch_kernel<forward_kernel<T, W, kHasPos>>(grid, kRowsPerBlock, 0, stream, a);
  }
};

}  // namespace

cudaError_t attention_forward(const AttentionArgs& a, cudaStream_t stream) {
  if (a.batch * a.heads == 0 || a.num_queries == 0) return cudaSuccess;
  if (!grid_fits(a, a.num_queries)) return cudaErrorInvalidConfiguration;
  return dispatch<LaunchForward>(a, stream);
}

}  // namespace dabdetr::cuda
