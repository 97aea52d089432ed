// The torch side of a CUDA device for ops_cuda.cpp: the device guard, the current stream and the
// device index, from c10/cuda, or in the CUDA emulator's build (DABDETR_CUDA_EMULATOR: CPU tensors,
// emulated kernels) their stand-ins: one emulated device, launches that complete in order.
#pragma once

#ifdef DABDETR_CUDA_EMULATOR

#include <ATen/ATen.h>

#include <cuda_runtime_api.h>

namespace dabdetr::cuda {

struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};
inline cudaStream_t current_stream() { return nullptr; }
inline int current_device() { return 0; }

}  // namespace dabdetr::cuda

#define DABDETR_CUDA_CHECK(expression)                                                      \
  do {                                                                                      \
    const cudaError_t dabdetr_error = (expression);                                         \
    TORCH_CHECK(dabdetr_error == cudaSuccess, "CUDA error: ", cudaGetErrorString(dabdetr_error)); \
  } while (0)

#else

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace dabdetr::cuda {

using DeviceGuard = c10::cuda::CUDAGuard;
inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream(); }
inline int current_device() { return c10::cuda::current_device(); }

}  // namespace dabdetr::cuda

#define DABDETR_CUDA_CHECK(expression) C10_CUDA_CHECK(expression)

#endif
