// Stand-in for cuda_fp16.h in the emulated build: __half as its 16 bits, with the
// round-to-nearest-even conversions of the real header (no implicit conversions or operators: the
// kernels are compiled with __CUDA_NO_HALF_CONVERSIONS__ and __CUDA_NO_HALF_OPERATORS__ too).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

struct alignas(2) __half {
  unsigned short __x;
};
struct alignas(4) __half2 {
  __half x, y;
};

inline __half __float2half_rn(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const unsigned short sign = static_cast<unsigned short>((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  unsigned short h;
  if (x >= 0x7f800000u) {
    h = x > 0x7f800000u ? 0x7e00 : 0x7c00;  // NaN (quiet), inf
  } else if (x >= 0x477ff000u) {  // 65520 and above round to inf
    h = 0x7c00;
  } else if (x >= 0x38800000u) {  // normal: rebias the exponent, round the 13 dropped bits to even
    uint32_t rebased = (x - 0x38000000u) >> 13;
    const uint32_t dropped = x & 0x1fffu;
    if (dropped > 0x1000u || (dropped == 0x1000u && (rebased & 1u))) ++rebased;
    h = static_cast<unsigned short>(rebased);
  } else if (x > 0x33000000u) {  // subnormal: in units of 2^-24
    const uint32_t exponent = x >> 23, mantissa = (x & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - exponent;
    uint32_t value = mantissa >> shift;
    const uint32_t dropped = mantissa & ((1u << shift) - 1), halfway = 1u << (shift - 1);
    if (dropped > halfway || (dropped == halfway && (value & 1u))) ++value;
    h = static_cast<unsigned short>(value);
  } else {
    h = 0;  // at most half of the smallest subnormal: rounds to zero
  }
  return __half{static_cast<unsigned short>(sign | h)};
}

inline float __half2float(__half h) {
  const uint32_t sign = (uint32_t(h.__x) & 0x8000u) << 16, exponent = (h.__x >> 10) & 0x1fu, mantissa = h.__x & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -magnitude : magnitude;
  } else {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline __half2 __floats2half2_rn(float lo, float hi) { return __half2{__float2half_rn(lo), __float2half_rn(hi)}; }
