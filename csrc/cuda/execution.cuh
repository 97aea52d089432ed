// Where nvcc and the CUDA emulator (csrc/cuda_emulator, DABDETR_CUDA_EMULATOR) part: every kernel
// launch and the dynamic shared memory go through these two helpers; mma.cuh's PTX wrappers are
// the only other place. Everything else in csrc/cuda is one source for both.
#pragma once

#include <cstddef>
#include <utility>

#include <cuda_runtime_api.h>

#ifdef DABDETR_CUDA_EMULATOR
#include "dabdetr_cuda_emulator.h"
#endif

// The deliberately broken variants that prove the emulator's checks can fail, built only by
// scripts/check_cuda_emulator_sanitizers.sh: 1 drops a __syncthreads of the SIMT forward (TSan
// reports the race), 2 reads one row past the tensor-core forward's last shared tile (ASan reports
// it), 3 permutes the lanes of the tensor-core products' A fragments (the results are wrong), 4 adds
// the deformable attention's value gradients with a plain += instead of atomicAdd (TSan reports the
// race). 0: none.
#ifndef DABDETR_EMULATOR_FAULT
#define DABDETR_EMULATOR_FAULT 0
#endif
namespace dabdetr::cuda {

// kernel<<<grid, block, dynamic_shared, stream>>>(args...), then the launch's error.
template <auto kKernel, typename... Args>
cudaError_t launch_kernel(dim3 grid, dim3 block, size_t dynamic_shared, cudaStream_t stream, Args&&... args) {
#ifdef DABDETR_CUDA_EMULATOR
  (void)stream;  // emulated launches run to completion, in order
  return dabdetr_cuda_emulator::launch_kernel<kKernel>(kKernel, grid, block, dynamic_shared,
                                                        std::forward<Args>(args)...);
#else
  kKernel<<<grid, block, dynamic_shared, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
#endif
}

// The block's dynamic shared memory (16-byte aligned).
__device__ __forceinline__ unsigned char* dynamic_shared_memory() {
#ifdef DABDETR_CUDA_EMULATOR
  return dabdetr_cuda_emulator::dynamic_shared_memory();
#else
  extern __shared__ __align__(16) unsigned char dynamic_shared[];
  return dynamic_shared;
#endif
}

}  // namespace dabdetr::cuda
