// The execution model of the CUDA emulator (runtime.cpp): what the stand-in CUDA headers and the
// emulated bodies of mma.cuh's PTX wrappers call. Kernels compiled with the host compiler run here
// on the CPU: a block's threads are fibers switched only at __syncthreads and at warp-collective
// operations, blocks run one after another, and every misuse the hardware leaves undefined
// (a barrier some threads never reach, a warp collective with a lane missing, a launch past the
// device's limits) is an error naming the kernel, block and thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

struct uint3 {
  unsigned int x, y, z;
};

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr operator uint3() const { return {x, y, z}; }
};

// The built-in variables: set by the scheduler before it switches to a fiber.
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

enum cudaError_t : int {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};

// The op library an emulated build registers: dabdetr_emulated, or for the counting build
// (counters.h) dabdetr_emulated_counted, which can be loaded beside it.
#ifdef DABDETR_CUDA_EMULATOR_COUNTERS
#define DABDETR_EMULATED_LIBRARY dabdetr_emulated_counted
#else
#define DABDETR_EMULATED_LIBRARY dabdetr_emulated
#endif

namespace dabdetr_cuda_emulator {

// The emulated GPU: compute capability, SMs, and the opt-in limit of dynamic shared memory.
struct Device {
  int major, minor, multiprocessors;
  size_t max_shared_optin;
};
// DABDETR_EMULATED_GPU=sm_90 (the default: an H100, 132 SMs, 227 KiB) or sm_80 (an A100, 108 SMs,
// 163 KiB), read at every call.
Device device();

// Runs body once per thread of every block of a grid (kernel: the kernel's name, for messages; id:
// its address, for cudaFuncSetAttribute). Returns the launch's error; a failure inside the kernel
// returns cudaErrorLaunchFailure, with the message failure_message() gives.
cudaError_t launch(const char* kernel, const void* id, dim3 grid, dim3 block, size_t dynamic_shared,
                   const std::function<void()>& body);
const std::string& failure_message();
void set_last_error(cudaError_t error);
cudaError_t take_last_error();
cudaError_t peek_last_error();
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);

// A failure of the running thread: recorded with the kernel, block and thread, then the launch stops.
[[noreturn]] void fail(const std::string& what);

// This block's dynamic shared memory (exactly the launch's size; nullptr when it asked for none).
unsigned char* dynamic_shared_memory();
size_t dynamic_shared_size();

void syncthreads();
uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask, int width);

// The warp-level matrix instructions, emulated from the PTX ISA's fragment tables (runtime.cpp).
enum class MmaType { kBFloat16, kFloat16, kTf32 };
void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool transpose);
void mma(MmaType type, float (&c)[4], const uint32_t* a, const uint32_t* b);  // m16n8k16 (16-bit), m16n8k8 (tf32)
uint32_t cvt_rna_tf32(float x);

template <typename T>
T bit_cast_to(const void* p) {
  T value;
  std::memcpy(&value, p, sizeof(T));
  return value;
}

// The name of the kernel kKernel, from this function's signature.
inline std::string template_argument(const std::string& signature, const std::string& parameter) {
  const auto start = signature.find(parameter + " = ");
  if (start == std::string::npos) return signature;
  const auto end = signature.find_first_of(";]", start);
  return signature.substr(start + parameter.size() + 3, end - start - parameter.size() - 3);
}

template <auto kKernel>
const char* kernel_name() {
  static const std::string name = template_argument(__PRETTY_FUNCTION__, "kKernel");
  return name.c_str();
}

template <auto kKernel, typename... Params, typename... Args>
cudaError_t launch_kernel(void (*)(Params...), dim3 grid, dim3 block, size_t dynamic_shared, Args&&... args) {
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  return launch(kernel_name<kKernel>(), reinterpret_cast<const void*>(kKernel), grid, block, dynamic_shared,
                [&] { std::apply(kKernel, params); });
}

}  // namespace dabdetr_cuda_emulator
