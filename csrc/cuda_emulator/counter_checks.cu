// Kernels that exist only to prove the emulator's counters exact (tests/test_emulated_counters.py):
// each makes one access pattern whose requests, sectors, wavefronts and atomics are known by hand.
// dabdetr_emulated::counter_check(name) launches one of them on buffers of its own (64-byte aligned:
// the CPU allocator's alignment), inside dabdetr.ops.emulated_counters() on the counting build.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <functional>
#include <map>
#include <string>

#include "cuda/execution.cuh"

namespace dabdetr::cuda {
namespace {

// One warp: lane i loads in[i] and stores it to out[i] (4 sectors each).
__global__ void coalesced_float_kernel(const float* in, float* out) { out[threadIdx.x] = in[threadIdx.x]; }

// One warp: lane i loads the 16 bytes in4[i] (512 bytes: 16 sectors).
__global__ void vector_load_kernel(const uint4* in, unsigned* out) {
  const uint4 v = in[threadIdx.x];
  out[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// One warp: lane i loads in[stride * i] (stride 2: 8 sectors; 32: 32 sectors).
template <int kStride>
__global__ void strided_float_kernel(const float* in, float* out) {
  out[threadIdx.x] = in[kStride * threadIdx.x];
}

// One warp: lane i stores word stride * i of shared memory, then loads it back (stride 2: both
// 2-way conflicts, 2 wavefronts; stride 32: all in bank 0, 32 wavefronts).
template <int kStride>
__global__ void strided_shared_kernel(float* out) {
  auto* s = reinterpret_cast<float*>(dynamic_shared_memory());
  s[kStride * threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[kStride * threadIdx.x];
}

// One warp: each lane stores its word, then every lane loads word 0 (a broadcast: 1 wavefront).
__global__ void broadcast_kernel(float* out) {
  auto* s = reinterpret_cast<float*>(dynamic_shared_memory());
  s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = s[0];
}

// One warp, 8-byte accesses (two phases of 16 lanes): lane i stores float2 i (each half-warp 128
// contiguous bytes: 2 wavefronts, ideal), then loads float2 2i (a half-warp's words 4i, 4i + 1:
// banks 0, 4, .. 28 twice each, 2 wavefronts per phase where the 32 words need 1: 4 against 2).
__global__ void shared_8_byte_kernel(float* out) {
  auto* s = reinterpret_cast<float2*>(dynamic_shared_memory());
  const float2 stored{1.f, static_cast<float>(threadIdx.x)};
  s[threadIdx.x] = stored;
  __syncthreads();
  const float2 v = s[2 * threadIdx.x];
  out[threadIdx.x] = v.x + v.y;
}

// One warp: every lane adds to sums[0] (1 address), then lane i to sums[1 + i] (32 addresses, 5
// sectors: floats 1..32 of a 64-byte-aligned buffer straddle sectors 0..4).
__global__ void atomic_kernel(float* sums) {
  atomicAdd(&sums[0], 1.f);
  atomicAdd(&sums[1 + threadIdx.x], 1.f);
}

// One warp, lanes 0..15 active: 64 bytes, 2 sectors per request.
__global__ void half_warp_kernel(const float* in, float* out) {
  if (threadIdx.x < 16) out[threadIdx.x] = in[threadIdx.x];
}

// One warp: the load site runs 3 times per lane in one interval: 3 requests of 4 sectors.
__global__ void loop_kernel(const float* in, float* out, int rounds) {
  float sum = 0;
  for (int k = 0; k < rounds; ++k) sum += in[k * 32 + threadIdx.x];
  out[threadIdx.x] = sum;
}

// Two warps: a static __shared__ array written and read across a barrier (2 barrier instructions,
// one per warp; each warp's store and load 1 wavefront; the stride-33 padding is conflict free).
__global__ void static_shared_kernel(float* out) {
  __shared__ float s[64 * 33];
  const unsigned t = threadIdx.x;
  s[33 * t] = static_cast<float>(t);
  __syncthreads();
  out[t] = s[33 * (63 - t)];
}

// Launches the kernel `name` on buffers of its own.
void counter_check(const std::string& name) {
  const at::Tensor in = at::arange(32 * 32 * 4, at::kFloat), out = at::zeros({128}, at::kFloat);
  const auto* in_f = in.data_ptr<float>();
  auto* out_f = out.data_ptr<float>();
  const std::map<std::string, std::function<cudaError_t()>> kernels = {
      {"coalesced_float", [&] { return launch_kernel<coalesced_float_kernel>(1, 32, 0, nullptr, in_f, out_f); }},
      {"vector_load",
       [&] {
         return launch_kernel<vector_load_kernel>(1, 32, 0, nullptr, reinterpret_cast<const uint4*>(in_f),
                                                  reinterpret_cast<unsigned*>(out_f));
       }},
      {"stride_2_float", [&] { return launch_kernel<strided_float_kernel<2>>(1, 32, 0, nullptr, in_f, out_f); }},
      {"stride_32_float", [&] { return launch_kernel<strided_float_kernel<32>>(1, 32, 0, nullptr, in_f, out_f); }},
      {"shared_stride_2", [&] { return launch_kernel<strided_shared_kernel<2>>(1, 32, 32 * 32 * 4, nullptr, out_f); }},
      {"shared_stride_32",
       [&] { return launch_kernel<strided_shared_kernel<32>>(1, 32, 32 * 32 * 4, nullptr, out_f); }},
      {"shared_broadcast", [&] { return launch_kernel<broadcast_kernel>(1, 32, 32 * 4, nullptr, out_f); }},
      {"shared_8_byte", [&] { return launch_kernel<shared_8_byte_kernel>(1, 32, 64 * 8, nullptr, out_f); }},
      {"atomics", [&] { return launch_kernel<atomic_kernel>(1, 32, 0, nullptr, out_f); }},
      {"half_warp", [&] { return launch_kernel<half_warp_kernel>(1, 32, 0, nullptr, in_f, out_f); }},
      {"loop", [&] { return launch_kernel<loop_kernel>(1, 32, 0, nullptr, in_f, out_f, 3); }},
      {"static_shared", [&] { return launch_kernel<static_shared_kernel>(1, 64, 0, nullptr, out_f); }},
  };
  const auto found = kernels.find(name);
  TORCH_CHECK(found != kernels.end(), "counter_check: no test kernel named ", name);
  const cudaError_t error = found->second();
  TORCH_CHECK(error == cudaSuccess, "counter_check: ", cudaGetErrorString(error));
}

}  // namespace
}  // namespace dabdetr::cuda

TORCH_LIBRARY_FRAGMENT(DABDETR_EMULATED_LIBRARY, m) {
  m.def("counter_check(str name) -> ()", &dabdetr::cuda::counter_check);
}
