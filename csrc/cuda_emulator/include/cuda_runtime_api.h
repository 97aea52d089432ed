// Stand-in for the CUDA runtime header when the kernels are compiled by the host compiler for the
// emulator (DABDETR_CUDA_EMULATOR): the language's qualifiers, built-in variables and vector
// types, the device functions the kernels call, and the few runtime calls of the host code.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "dabdetr_cuda_emulator.h"

#define CUDART_VERSION 13000

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// A block's threads are fibers of one OS thread and blocks run one after another, so a function's
// static variable is what all threads of the running block share. Not thread_local: the sanitizers
// check static storage (with redzones), and launches are serialized (runtime.cpp).
#define __shared__ static

struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};

typedef struct CUstream_st* cudaStream_t;

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
enum cudaDeviceAttr {
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

inline void __syncthreads() { dabdetr_cuda_emulator::syncthreads(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable_v<T>, "a register value");
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = dabdetr_cuda_emulator::shfl_xor(mask, bits, lane_mask, width);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// atomicAdd on a float or double in global or shared memory, as a compare-and-swap loop on its bits:
// a relaxed atomic read-modify-write to the sanitizers too, so ThreadSanitizer reports a plain add
// where an atomic belongs (two CUDA threads updating one element with no barrier between them) as a
// race, and two atomics as none. Returns the old value, as CUDA's does.
template <typename T, typename Bits>
inline T emulated_atomic_add(T* address, T value) {
  static_assert(sizeof(T) == sizeof(Bits), "the value's bits");
  Bits* bits = reinterpret_cast<Bits*>(address);
  Bits expected = __atomic_load_n(bits, __ATOMIC_RELAXED);
  for (;;) {
    T old;
    std::memcpy(&old, &expected, sizeof old);
    const T sum = old + value;
    Bits desired;
    std::memcpy(&desired, &sum, sizeof desired);
    if (__atomic_compare_exchange_n(bits, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return old;
  }
}
#ifdef DABDETR_CUDA_EMULATOR_COUNTERS
// The counting build (csrc/cuda_emulator/counters.h): the add runs in the uninstrumented counters,
// which count it as an atomic at this call's site, so it must be inlined into the kernel.
namespace dabdetr_cuda_emulator {
float counted_atomic_add(float* address, float value);
double counted_atomic_add(double* address, double value);
}  // namespace dabdetr_cuda_emulator
[[gnu::always_inline]] inline float atomicAdd(float* address, float value) {
  return dabdetr_cuda_emulator::counted_atomic_add(address, value);
}
[[gnu::always_inline]] inline double atomicAdd(double* address, double value) {
  return dabdetr_cuda_emulator::counted_atomic_add(address, value);
}
#else
inline float atomicAdd(float* address, float value) { return emulated_atomic_add<float, uint32_t>(address, value); }
inline double atomicAdd(double* address, double value) { return emulated_atomic_add<double, uint64_t>(address, value); }
#endif

[[noreturn]] inline void __trap() { dabdetr_cuda_emulator::fail("__trap()"); }

inline float __uint_as_float(unsigned int x) { return dabdetr_cuda_emulator::bit_cast_to<float>(&x); }
inline unsigned int __float_as_uint(float x) { return dabdetr_cuda_emulator::bit_cast_to<unsigned int>(&x); }

// The offset of a pointer in the block's dynamic shared memory (all the shared memory the
// emulated PTX instructions may address); a pointer outside it fails the kernel.
inline size_t __cvta_generic_to_shared(const void* p) {
  const auto* base = dabdetr_cuda_emulator::dynamic_shared_memory();
  const auto* q = static_cast<const unsigned char*>(p);
  if (base == nullptr || q < base || q >= base + dabdetr_cuda_emulator::dynamic_shared_size())
    dabdetr_cuda_emulator::fail("__cvta_generic_to_shared: the address is not in the block's shared memory");
  return static_cast<size_t>(q - base);
}

inline cudaError_t cudaGetLastError() { return dabdetr_cuda_emulator::take_last_error(); }
inline cudaError_t cudaPeekAtLastError() { return dabdetr_cuda_emulator::peek_last_error(); }
const char* cudaGetErrorString(cudaError_t error);
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }  // launches are synchronous
cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device);

template <typename Kernel>
cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute attribute, int value) {
  if (attribute != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return dabdetr_cuda_emulator::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}
