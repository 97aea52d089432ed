// Warp-level tensor-core building blocks of the attention kernels (attention_mma_*.cu): the
// sm_80 mma.sync m16n8k16 with fp32 accumulators on bf16/fp16 operands, ldmatrix loads from
// shared memory, and the 16-bit shared-memory tiles they read.
//
// Fragment layouts (PTX ISA, "mma.m16n8k16"), with g = lane / 4 and t = lane % 4:
//   A (16x16, row-major) 4 regs: (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)
//   B (16x8, "col")      2 regs: (k 2t..2t+1, n g), (k 2t+8.., n g)
//   C (16x8, fp32)       4 floats: (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)
// Two C tiles side by side (16x16) hold exactly the values of one A fragment, which is how the
// probabilities computed by one product feed the next one without leaving registers.
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace dabdetr::cuda {
namespace {

// Shared-memory rows are padded by 8 elements (16 bytes), so the 8 row addresses of one ldmatrix
// fall in 8 different 16-byte bank groups: strides of 80 or 144 bytes, never a multiple of 128.
constexpr int kRowPad = 8;

template <int W>
using SmemRows16 = uint16_t[W + kRowPad];  // one row of a 16-bit tile (raw bits of T)

struct Accum {
  float v[4];
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define DABDETR_MMA_AVAILABLE 1
#endif

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 matrices; lane l gives the row address of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#ifdef DABDETR_MMA_AVAILABLE
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
#else
  __trap();
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#ifdef DABDETR_MMA_AVAILABLE
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
#else
  __trap();
#endif
}

// c += a . b on tensor cores, T = __nv_bfloat16 or __half.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(Accum& c, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#ifdef DABDETR_MMA_AVAILABLE
#define DABDETR_MMA_SYNC(PTX_TYPE)                                                                          \
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32." PTX_TYPE "." PTX_TYPE                                \
               ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"                     \
               : "+f"(c.v[0]), "+f"(c.v[1]), "+f"(c.v[2]), "+f"(c.v[3])                                      \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1))
  if constexpr (std::is_same_v<T, __half>)
    DABDETR_MMA_SYNC("f16");
  else
    DABDETR_MMA_SYNC("bf16");
#undef DABDETR_MMA_SYNC
#else
  __trap();
#endif
}

// Two floats rounded to T in one register: lo in the low half (the lower column).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 pair = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&pair);
  } else {
    const __nv_bfloat162 pair = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&pair);
  }
}

// acc[j] (16 x 8 tile j) += A[16 x K] . B[8N x K]^T, with A rows a_rows[0..15] and B rows
// b_rows[0..8N) of two shared-memory tiles (rows of L = W + kRowPad elements), K = 16 * k_steps from column col0. Both operands are
// row-major with K contiguous, as queries and keys are stored: the logits Q K^T (and dO V^T).
template <typename T, int N, int L>
__device__ __forceinline__ void mma_rows_rows(Accum (&acc)[N], const uint16_t (*a_rows)[L],
                                              const uint16_t (*b_rows)[L], int k_steps) {
  static_assert(N % 2 == 0, "B tiles are loaded in pairs");
  const int lane = threadIdx.x % 32;
  for (int kk = 0; kk < k_steps; ++kk) {
    uint32_t a[4];
    ldmatrix_x4(a, &a_rows[lane % 16][kk * 16 + (lane / 16) * 8]);
#pragma unroll
    for (int j = 0; j < N; j += 2) {
      uint32_t b[4];  // matrices: (n j, k lo), (n j, k hi), (n j+1, k lo), (n j+1, k hi)
      ldmatrix_x4(b, &b_rows[j * 8 + (lane / 16) * 8 + lane % 8][kk * 16 + ((lane / 8) % 2) * 8]);
      mma_m16n8k16<T>(acc[j], a, b[0], b[1]);
      mma_m16n8k16<T>(acc[j + 1], a, b[2], b[3]);
    }
  }
}

// acc[j] (16 x 8 tile j of the output's columns) += P[16 x K] . B[K x 8N]: P is a 16 x K block of
// accumulators (K / 8 C tiles, rounded to T here), B is K rows of a row-major shared tile with N
// contiguous (values, dO, queries or keys), read transposed by ldmatrix.trans. Only the first
// n_tiles output tiles (the operand's width, rounded up to 16) are computed.
template <typename T, int N, int K, int L>
__device__ __forceinline__ void mma_accum_rows(Accum (&acc)[N], const Accum (&p)[K / 8],
                                               const uint16_t (*b_rows)[L], int n_tiles) {
  static_assert(K % 16 == 0 && N % 2 == 0, "whole 16 x 16 steps");
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < K / 16; ++kk) {
    const uint32_t a[4] = {pack2<T>(p[2 * kk].v[0], p[2 * kk].v[1]),
                           pack2<T>(p[2 * kk].v[2], p[2 * kk].v[3]),
                           pack2<T>(p[2 * kk + 1].v[0], p[2 * kk + 1].v[1]),
                           pack2<T>(p[2 * kk + 1].v[2], p[2 * kk + 1].v[3])};
#pragma unroll
    for (int j = 0; j < N; j += 2) {
      if (j >= n_tiles) break;
      uint32_t b[4];  // matrices: (k lo, n j), (k hi, n j), (k lo, n j+1), (k hi, n j+1)
      ldmatrix_x4_trans(b, &b_rows[kk * 16 + ((lane / 8) % 2) * 8 + lane % 8][j * 8 + (lane / 16) * 8]);
      mma_m16n8k16<T>(acc[j], a, b[0], b[1]);
      mma_m16n8k16<T>(acc[j + 1], a, b[2], b[3]);
    }
  }
}

template <int N>
__device__ __forceinline__ void zero(Accum (&acc)[N]) {
#pragma unroll
  for (int j = 0; j < N; ++j) acc[j] = Accum{{0.f, 0.f, 0.f, 0.f}};
}

// dst[r][0..W) = the first `dim` elements of source row row0 + r (zero past num_rows and dim).
// vectorized: every row start is 16-byte aligned and dim % 8 == 0 (checked by the launcher), so
// whole 8-element chunks are copied with one 16-byte load.
template <int R, int W>
__device__ void load_rows16(SmemRows16<W>* dst, const void* base, int64_t stride_n, int64_t row0,
                            int64_t num_rows, int64_t dim, bool vectorized) {
  const uint16_t* rows = static_cast<const uint16_t*>(base);
  constexpr int kChunks = W / 8;
  for (int idx = threadIdx.x; idx < R * kChunks; idx += blockDim.x) {
    const int r = idx / kChunks, c = (idx % kChunks) * 8;
    const int64_t row = row0 + r;
    uint4 chunk = make_uint4(0, 0, 0, 0);
    if (row < num_rows && c < dim) {
      const uint16_t* src = rows + row * stride_n + c;
      if (vectorized) {
        chunk = *reinterpret_cast<const uint4*>(src);
      } else {
        uint16_t e[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) e[i] = c + i < dim ? src[i] : uint16_t(0);
        chunk = make_uint4(e[0] | (uint32_t(e[1]) << 16), e[2] | (uint32_t(e[3]) << 16),
                           e[4] | (uint32_t(e[5]) << 16), e[6] | (uint32_t(e[7]) << 16));
      }
    }
    *reinterpret_cast<uint4*>(&dst[r][c]) = chunk;
  }
}

}  // namespace
}  // namespace dabdetr::cuda
