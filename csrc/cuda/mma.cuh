// Warp-level tensor-core building blocks of the attention kernels (attention_mma_*.cu): sm_80
// mma.sync with fp32 accumulators, m16n8k16 on bf16/fp16 operands (read by ldmatrix) and m16n8k8
// on tf32 operands (float32 inputs where TF32 is allowed; read element by element), and the
// shared-memory tiles they read.
//
// Fragment layouts (PTX ISA, "mma.m16n8k16" and "mma.m16n8k8"), with g = lane / 4, t = lane % 4:
//   16-bit A (16x16, row-major) 4 regs: (g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)
//   16-bit B (16x8, "col")      2 regs: (k 2t..2t+1, n g), (k 2t+8.., n g)
//   tf32 A (16x8)               4 regs: (g, t), (g+8, t), (g, t+4), (g+8, t+4)
//   tf32 B (8x8)                2 regs: (k t, n g), (k t+4, n g)
//   C (16x8, fp32)              4 floats: (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)
// Two C tiles side by side (16x16) hold exactly the values of one 16-bit A fragment, which is how
// the probabilities computed by one product feed the next one without leaving registers. For
// tf32 one C tile is one A fragment once k is renumbered: the thread's columns 2t and 2t+1 enter
// as k = t and t+4, and the B operand is read with the same renumbering (rows 2t and 2t+1).
#pragma once

#include <cstdint>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/execution.cuh"

namespace dabdetr::cuda {
namespace {

// How the operands of storage type T sit in shared memory: as Bits (the raw 16 bits of bf16/fp16,
// or float32 rounded to tf32 in 32 bits), kChunk to a 16-byte copy, and rows padded by kPad
// elements. 16-bit: 16 bytes, so the 8 row addresses of one ldmatrix fall in 8 different 16-byte
// bank groups (strides of 80 or 144 bytes, never a multiple of 128). tf32: 4 words, so the
// element-wise fragment reads of a warp (rows g, or rows 2t and 2t+1, at stride W + 4 words) hit
// 32 different banks.
template <typename T>
struct MmaFormat {
  using Bits = uint16_t;
  static constexpr int kPad = 8;
};
template <>
struct MmaFormat<float> {
  using Bits = uint32_t;
  static constexpr int kPad = 4;
};
template <typename T>
using Bits = typename MmaFormat<T>::Bits;
template <typename T>
constexpr int kChunk = 16 / sizeof(Bits<T>);

template <typename T, int W>
using SmemRows = Bits<T>[W + MmaFormat<T>::kPad];  // one row of a tile

struct Accum {
  float v[4];
};

// The instructions: PTX on sm_80+, the emulator's (csrc/cuda_emulator, from the PTX ISA's fragment
// tables) in the emulated build, a trap on older GPUs.
#if defined(DABDETR_CUDA_EMULATOR)
#define DABDETR_MMA_EMULATED 1
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define DABDETR_MMA_AVAILABLE 1
#endif

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 matrices; lane l gives the row address of matrix l / 8.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#if defined(DABDETR_MMA_EMULATED)
  dabdetr_cuda_emulator::ldmatrix_x4(r, row, /*transpose=*/false);
#elif defined(DABDETR_MMA_AVAILABLE)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_address(row)));
#else
  __trap();
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#if defined(DABDETR_MMA_EMULATED)
  dabdetr_cuda_emulator::ldmatrix_x4(r, row, /*transpose=*/true);
#elif defined(DABDETR_MMA_AVAILABLE)
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
#if defined(DABDETR_MMA_EMULATED)
  const uint32_t b[2] = {b0, b1};
  dabdetr_cuda_emulator::mma(std::is_same_v<T, __half> ? dabdetr_cuda_emulator::MmaType::kFloat16
                                                        : dabdetr_cuda_emulator::MmaType::kBFloat16,
                             c.v, a, b);
#elif defined(DABDETR_MMA_AVAILABLE)
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

// c += a . b on tensor cores in tf32 (operands already rounded by tf32()).
__device__ __forceinline__ void mma_m16n8k8_tf32(Accum& c, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(DABDETR_MMA_EMULATED)
  const uint32_t b[2] = {b0, b1};
  dabdetr_cuda_emulator::mma(dabdetr_cuda_emulator::MmaType::kTf32, c.v, a, b);
#elif defined(DABDETR_MMA_AVAILABLE)
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
               "{%0, %1, %2, %3};\n"
               : "+f"(c.v[0]), "+f"(c.v[1]), "+f"(c.v[2]), "+f"(c.v[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

// x rounded to the nearest tf32 (10 mantissa bits), as torch's TF32 matmuls round their inputs.
__device__ __forceinline__ uint32_t tf32(float x) {
#if defined(DABDETR_MMA_EMULATED)
  return dabdetr_cuda_emulator::cvt_rna_tf32(x);
#elif defined(DABDETR_MMA_AVAILABLE)
  uint32_t bits;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(bits) : "f"(x));
  return bits;
#else
  __trap();
  return 0;
#endif
}

// acc[j] (16 x 8 tile j) += A[16 x K] . B[8N x K]^T, with A rows a_rows[0..15] and B rows
// b_rows[0..8N) of two shared-memory tiles (rows of L = W + kPad elements), K = 16 * k_steps.
// Both operands are row-major with K contiguous, as queries and keys are stored: the logits
// Q K^T (and dO V^T).
template <typename T, int N, int L>
__device__ __forceinline__ void mma_rows_rows(Accum (&acc)[N], const Bits<T> (*a_rows)[L], const Bits<T> (*b_rows)[L],
                                              int k_steps) {
  static_assert(N % 2 == 0, "B tiles are loaded in pairs");
  const int lane = threadIdx.x % 32;
  for (int kk = 0; kk < k_steps; ++kk) {
    if constexpr (std::is_same_v<T, float>) {
      const int g = lane / 4, t = lane % 4;
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int k = kk * 16 + half * 8 + t;
        const uint32_t a[4] = {a_rows[g][k], a_rows[g + 8][k], a_rows[g][k + 4], a_rows[g + 8][k + 4]};
#pragma unroll
        for (int j = 0; j < N; ++j) mma_m16n8k8_tf32(acc[j], a, b_rows[j * 8 + g][k], b_rows[j * 8 + g][k + 4]);
      }
    } else {
      uint32_t a[4];
      ldmatrix_x4(a, &a_rows[(DABDETR_EMULATOR_FAULT == 3 ? lane ^ 1 : lane) % 16][kk * 16 + (lane / 16) * 8]);
#pragma unroll
      for (int j = 0; j < N; j += 2) {
        uint32_t b[4];  // matrices: (n j, k lo), (n j, k hi), (n j+1, k lo), (n j+1, k hi)
        ldmatrix_x4(b, &b_rows[j * 8 + (lane / 16) * 8 + lane % 8][kk * 16 + ((lane / 8) % 2) * 8]);
        mma_m16n8k16<T>(acc[j], a, b[0], b[1]);
        mma_m16n8k16<T>(acc[j + 1], a, b[2], b[3]);
      }
    }
  }
}

// acc[j] (16 x 8 tile j of the output's columns) += P[16 x K] . B[K x 8N]: P is a 16 x K block of
// accumulators (K / 8 C tiles, rounded to T's operand format here), B is K rows of a row-major
// shared tile with N contiguous (values, dO, queries or keys), read transposed. Only the first
// n_tiles output tiles (the operand's width, rounded up to 16) are computed.
template <typename T, int N, int K, int L>
__device__ __forceinline__ void mma_accum_rows(Accum (&acc)[N], const Accum (&p)[K / 8], const Bits<T> (*b_rows)[L],
                                               int n_tiles) {
  static_assert(K % 16 == 0 && N % 2 == 0, "whole 16 x 16 steps");
  const int lane = threadIdx.x % 32;
  if constexpr (std::is_same_v<T, float>) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int kk = 0; kk < K / 8; ++kk) {
      // Column 2t of the C tile is k = t, column 2t + 1 is k = t + 4 (mma.cuh's header).
      const uint32_t a[4] = {tf32(p[kk].v[0]), tf32(p[kk].v[2]), tf32(p[kk].v[1]), tf32(p[kk].v[3])};
      const Bits<T>* even = b_rows[kk * 8 + 2 * t];
      const Bits<T>* odd = b_rows[kk * 8 + 2 * t + 1];
#pragma unroll
      for (int j = 0; j < N; ++j) {
        if (j >= n_tiles) break;
        mma_m16n8k8_tf32(acc[j], a, even[j * 8 + g], odd[j * 8 + g]);
      }
    }
  } else {
#pragma unroll
    for (int kk = 0; kk < K / 16; ++kk) {
      const uint32_t a[4] = {pack2<T>(p[2 * kk].v[0], p[2 * kk].v[1]), pack2<T>(p[2 * kk].v[2], p[2 * kk].v[3]),
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
}

template <int N>
__device__ __forceinline__ void zero(Accum (&acc)[N]) {
#pragma unroll
  for (int j = 0; j < N; ++j) acc[j] = Accum{{0.f, 0.f, 0.f, 0.f}};
}

// An element of T as the tensor cores read it: bf16/fp16 bits as they are, float32 rounded to tf32.
template <typename T>
__device__ __forceinline__ Bits<T> operand_bits(Bits<T> raw) {
  if constexpr (std::is_same_v<T, float>)
    return tf32(__uint_as_float(raw));
  else
    return raw;
}

// dst[r][0..W) = the first `dim` elements of source row row0 + r (zero past num_rows and dim), in
// T's operand format. vectorized: every row start is 16-byte aligned and dim % kChunk<T> == 0
// (operands_vectorized), so whole chunks are copied with one 16-byte load.
// A warp's 16-byte stores reach the banks 8 lanes at a time. The rows' 16-byte padding staggers
// the banks of one chunk in 8 consecutive rows (what ldmatrix reads), not those of the next row's
// start: so where a row has fewer than 8 chunks (16-bit W = 32), 8 consecutive threads take one
// chunk of 8 consecutive rows (row-major, 2 rows a phase, two-way conflicts). A warp still covers
// whole rows: its global loads are the same sectors.
template <typename T, int R, int W>
__device__ void load_rows(SmemRows<T, W>* dst, const void* base, int64_t stride_n, int64_t row0, int64_t num_rows,
                          int64_t dim, bool vectorized) {
  using B = Bits<T>;
  constexpr int kC = kChunk<T>, kChunks = W / kC, kGroupRows = kChunks < 8 ? 8 : 1;
  static_assert(R % kGroupRows == 0, "whole groups of rows");
  const B* rows = static_cast<const B*>(base);
  for (int idx = threadIdx.x; idx < R * kChunks; idx += blockDim.x) {
    const int group = idx / (kGroupRows * kChunks), within = idx % (kGroupRows * kChunks);
    const int r = group * kGroupRows + within % kGroupRows, c = (within / kGroupRows) * kC;
    const int64_t row = row0 + r;
    alignas(16) B chunk[kC] = {};
    if (row < num_rows && c < dim) {
      const B* src = rows + row * stride_n + c;
      if (vectorized) {
        *reinterpret_cast<uint4*>(chunk) = *reinterpret_cast<const uint4*>(src);
      } else {
#pragma unroll
        for (int i = 0; i < kC; ++i)
          if (c + i < dim) chunk[i] = src[i];
      }
#pragma unroll
      for (int i = 0; i < kC; ++i) chunk[i] = operand_bits<T>(chunk[i]);
    }
    *reinterpret_cast<uint4*>(&dst[r][c]) = *reinterpret_cast<const uint4*>(chunk);
  }
}

}  // namespace
}  // namespace dabdetr::cuda
