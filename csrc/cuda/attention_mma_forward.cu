// Tensor-core modulated attention, forward: bf16/fp16 (or tf32) operands, fp32 accumulators and
// softmax statistics (the layout and helpers are attention_mma.cuh's).
//
// Grid: batch*heads x query blocks of 64 x key splits. Each warp keeps its 16 queries' output
// accumulators and running max / sum in registers and walks the key tiles of its split: the
// logits S = Qc Kc^T + Qp Kp^T (two products into one accumulator), the online-softmax step in
// the log2 domain, then O += P V with P rounded to the input type straight from the accumulators.
// With one split it writes out and lse (natural log; -inf and a zero row where every key is
// padded). With several (num_splits > 1: small problems, see ops_cuda.cpp) each split writes its
// normalized output and lse to the fp32 workspace and combine_kernel merges them.
#include "cuda/attention_mma.cuh"

namespace dabdetr::cuda {
namespace {

static_assert(kMmaKeyTile == 64, "the forward stages 64 keys per step");

// One online-softmax step over a 16 x BN tile of logits s (scaled to the log2 domain here): updates
// the running max and sum of the thread's two rows, rescales the output accumulators, and leaves
// exp2(s - max) in s.
template <int N, int M>
__device__ __forceinline__ void softmax_step(Accum (&s)[N], const float* bias, float scale_log2,
                                             float (&row_max)[2], float (&row_sum)[2], Accum (&out)[M]) {
  float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j].v[e] = s[j].v[e] * scale_log2 + bias[j * 8 + frag_col() + e % 2 + (DABDETR_EMULATOR_FAULT == 2)];
      tile_max[e / 2] = fmaxf(tile_max[e / 2], s[j].v[e]);
    }
  float base[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const float new_max = fmaxf(row_max[r], quad_max(tile_max[r]));
    base[r] = new_max == -INFINITY ? 0.f : new_max;  // every key so far padded: exp2 gives 0s
    const float correction = exp2f(row_max[r] - base[r]);
    row_max[r] = new_max;
    row_sum[r] *= correction;
#pragma unroll
    for (int j = 0; j < M; ++j) {
      out[j].v[2 * r] *= correction;
      out[j].v[2 * r + 1] *= correction;
    }
  }
#pragma unroll
  for (int j = 0; j < N; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      s[j].v[e] = exp2f(s[j].v[e] - base[e / 2]);
      row_sum[e / 2] += s[j].v[e];  // this thread's columns; the quad's are summed at the end
    }
}

template <typename T, int W, bool kHasPos>
struct ForwardTiles {
  MmaQueryTiles<T, W, kMmaBlockRows, kHasPos, false> queries;
  MmaKeyTiles<T, W, kMmaKeyTile, kHasPos> keys;
};

template <typename T, int W, bool kHasPos>
__global__ void __launch_bounds__(kMmaThreads) mma_forward_kernel(const AttentionArgs a, bool vectorized) {
  constexpr int BN = kMmaKeyTile;
  auto& [queries, keys] = shared_tiles<ForwardTiles<T, W, kHasPos>>();
  const int64_t bh = blockIdx.x, b = bh / a.heads, h = bh % a.heads;
  const int64_t q0 = int64_t(blockIdx.y) * kMmaBlockRows;
  const int warp = threadIdx.x / 32;
  const int64_t tiles = ceil_div(a.num_keys, BN), per_split = ceil_div(tiles, a.num_splits);
  const int64_t tile_begin = blockIdx.z * per_split;
  const int64_t tile_end = tile_begin + per_split < tiles ? tile_begin + per_split : tiles;
  const MmaWidths width(a);
  const float scale_log2 = static_cast<float>(a.scale) * kLog2e;

  queries.load(a, b, h, q0, vectorized);
  Accum out[W / 8];
  zero(out);
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  for (int64_t tile = tile_begin; tile < tile_end; ++tile) {
    __syncthreads();
    keys.load(a, b, h, tile * BN, vectorized);
    __syncthreads();
    Accum s[BN / 8];
    zero(s);
    mma_rows_rows<T>(s, queries.content + 16 * warp, keys.content, width.steps_content);
    if constexpr (kHasPos) mma_rows_rows<T>(s, queries.pos + 16 * warp, keys.pos, width.steps_pos);
    softmax_step(s, keys.bias, scale_log2, row_max, row_sum, out);
    mma_accum_rows<T, W / 8, BN>(out, s, keys.value, width.tiles_value);
  }

  float inv_sum[2], lse[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    row_sum[r] = quad_sum(row_sum[r]);
    inv_sum[r] = row_sum[r] > 0.f ? 1.f / row_sum[r] : 0.f;
    lse[r] = row_sum[r] > 0.f ? (row_max[r] + log2f(row_sum[r])) * kLn2 : -INFINITY;
  }
  const int64_t row0 = q0 + 16 * warp, rows = a.batch * a.heads * a.num_queries;
  float* lse_out = static_cast<float*>(a.lse);
  if (a.num_splits > 1) {  // split s: its output rows, then its lse (combine_kernel's layout)
    float* partial = static_cast<float*>(a.workspace) + blockIdx.z * split_stride_floats(a);
    store_rows(partial + bh * a.num_queries * a.dim_value, out, row0, a.num_queries, a.dim_value, inv_sum);
    lse_out = partial + rows * a.dim_value;
  } else {
    store_rows(static_cast<T*>(a.out) + bh * a.num_queries * a.dim_value, out, row0, a.num_queries, a.dim_value,
               inv_sum);
  }
  if (threadIdx.x % 4 != 0) return;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t q = row0 + frag_row() + 8 * r;
    if (q < a.num_queries) lse_out[bh * a.num_queries + q] = lse[r];
  }
}

// out and lse from the splits' normalized outputs o_s and lse_s: weights exp(lse_s - max lse).
template <typename T>
__global__ void combine_kernel(const AttentionArgs a) {
  const int64_t rows = a.batch * a.heads * a.num_queries, stride = split_stride_floats(a);
  const float* workspace = static_cast<const float*>(a.workspace);
  const float* lse_of = workspace + rows * a.dim_value;  // split s: lse_of[s * stride + row]
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < rows * a.dim_value;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = idx / a.dim_value;
    float top = -INFINITY;
    for (int s = 0; s < a.num_splits; ++s) top = fmaxf(top, lse_of[s * stride + row]);
    float weight_sum = 0.f, value = 0.f;
    if (top != -INFINITY) {
      for (int s = 0; s < a.num_splits; ++s) {
        const float w = expf(lse_of[s * stride + row] - top);
        weight_sum += w;
        value += w * workspace[s * stride + idx];
      }
      value /= weight_sum;
    }
    static_cast<T*>(a.out)[idx] = from_acc<T>(value);
    if (idx % a.dim_value == 0) static_cast<float*>(a.lse)[row] = top == -INFINITY ? top : top + logf(weight_sum);
  }
}

template <typename T, int W, bool kHasPos>
struct LaunchMmaForward {
  static cudaError_t run(const AttentionArgs& a, cudaStream_t stream) {
    const dim3 grid(a.batch * a.heads, ceil_div(a.num_queries, kMmaBlockRows), a.num_splits);
    const cudaError_t error = launch_with_tiles<ForwardTiles<T, W, kHasPos>, mma_forward_kernel<T, W, kHasPos>>(
        grid, stream, a, operands_vectorized<T>(a));
    if (error != cudaSuccess || a.num_splits == 1) return error;
    const int64_t elements = a.batch * a.heads * a.num_queries * a.dim_value;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(elements, 256), 65535));
    return launch_kernel<combine_kernel<T>>(blocks, 256, 0, stream, a);
  }
};

}  // namespace

cudaError_t attention_forward_mma(const AttentionArgs& a, cudaStream_t stream) {
  if (a.batch * a.heads == 0 || a.num_queries == 0) return cudaSuccess;
  if (!grid_fits(a, a.num_queries) || a.num_splits < 1 || a.num_splits > kMaxKeySplits ||
      (a.num_splits > 1 && a.workspace == nullptr))
    return cudaErrorInvalidConfiguration;
  return dispatch<LaunchMmaForward, true>(a, stream);
}

}  // namespace dabdetr::cuda
