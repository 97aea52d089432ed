// The attention in bfloat16 with its products in AMX tiles (amx_dot_pairs.inc), compiled for
// AMX-BF16 (selected at run time only on CPUs that have it and where the kernel grants the process
// tile data: Isa::kAmxBf16). Everything but the products is attention_bf16_kernel.inc's AVX-512
// BF16 code. The target pragma comes after every system and project header, so only our kernels
// get it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#define DABDETR_AMX_TILES 1
#if defined(__clang__)
#pragma clang attribute push(                                                                                \
    __attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma,amx-tile,amx-bf16"))), \
    apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma,amx-tile,amx-bf16,prefer-vector-width=512")
#endif

namespace dabdetr::cpu::amx_bf16 {
constexpr int kVectorBytes = 64;
#include "cpu/vec_math.inc"
#include "cpu/attention_kernel.inc"
#include "cpu/attention_bf16_kernel.inc"
}  // namespace dabdetr::cpu::amx_bf16

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
