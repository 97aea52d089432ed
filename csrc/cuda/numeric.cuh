// Element types of the CUDA kernels: storage type T, accumulation type Acc<T> (float for the
// 16-bit types and float32, double for float64), conversions, and precise math in Acc.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>

#include "cuda/launch.h"

namespace dabdetr::cuda {

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using Acc = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_acc(Acc<T> x) { return static_cast<T>(x); }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Precise (not the --use_fast_math intrinsics): the kernels are compared against the reference.
__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }
__device__ __forceinline__ float floor_acc(float x) { return floorf(x); }
__device__ __forceinline__ double floor_acc(double x) { return floor(x); }
__device__ __forceinline__ void sincos_acc(float x, float* s, float* c) { sincosf(x, s, c); }
__device__ __forceinline__ void sincos_acc(double x, double* s, double* c) { sincos(x, s, c); }

template <typename A> __device__ __forceinline__ A neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -INFINITY; }
template <> __device__ __forceinline__ double neg_inf<double>() { return -static_cast<double>(INFINITY); }

// Two adjacent elements written with one store (outputs are freshly allocated, so aligned).
template <typename T> struct PairOf;
template <> struct PairOf<float> { using type = float2; };
template <> struct PairOf<double> { using type = double2; };
template <> struct PairOf<__half> { using type = __half2; };
template <> struct PairOf<__nv_bfloat16> { using type = __nv_bfloat162; };

template <typename T>
__device__ __forceinline__ void store_pair(T* dst, Acc<T> a, Acc<T> b) {
  typename PairOf<T>::type pair;
  T* lanes = reinterpret_cast<T*>(&pair);
  lanes[0] = from_acc<T>(a);
  lanes[1] = from_acc<T>(b);
  *reinterpret_cast<typename PairOf<T>::type*>(dst) = pair;
}

// Whether every pair of elements (2i, 2i + 1) of p can be read with one access (nullptr: vacuously).
template <typename T>
__host__ __device__ __forceinline__ bool aligned_pairs(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % (2 * sizeof(T)) == 0;
}

// x = p[0], y = p[1]: with one two-element load where `paired` (p aligned to the pair).
template <typename T>
__device__ __forceinline__ void load_two(const T* p, bool paired, Acc<T>& x, Acc<T>& y) {
  if (paired) {
    const typename PairOf<T>::type pair = *reinterpret_cast<const typename PairOf<T>::type*>(p);
    const T* lanes = reinterpret_cast<const T*>(&pair);
    x = to_acc(lanes[0]);
    y = to_acc(lanes[1]);
  } else {
    x = to_acc(p[0]);
    y = to_acc(p[1]);
  }
}

// Calls fn(T{}) with T the storage type of `dtype`.
template <typename Fn>
cudaError_t dispatch_dtype(Dtype dtype, Fn&& fn) {
  switch (dtype) {
    case Dtype::kFloat32: return fn(float{});
    case Dtype::kFloat64: return fn(double{});
    case Dtype::kFloat16: return fn(__half{});
    case Dtype::kBFloat16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace dabdetr::cuda
