// CPU kernels compiled for AVX512 (selected at run time only on CPUs that have it). The
// target pragma comes after every system and project header, so only our kernels get it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"

#if defined(__x86_64__) || defined(_M_X64)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma,prefer-vector-width=512")
#endif

namespace dabdetr::cpu::avx512 {
constexpr int kVectorBytes = 64;
#include "cpu/kernel_bodies.inc"
}  // namespace dabdetr::cpu::avx512

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
