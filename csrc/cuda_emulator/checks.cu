// Kernels that test the CUDA emulator itself, for tests/test_cuda_emulator.py (part of the emulated
// build only):
// - dabdetr_emulated::fragment_check: one warp exercising mma.cuh's matrix primitives as the
//   attention kernels call them, so the test can hold the emulated instructions to the PTX ISA (the
//   registers each lane receives from ldmatrix, plain and .trans, and the products of mma.sync,
//   against torch.matmul and fragment tables written in Python);
// - dabdetr_emulated::collective_check: sub-warp shuffles under disjoint masks that reach their
//   collectives at different times, and atomicAdd from every thread of two blocks;
// - dabdetr_emulated::misuse_check: kernels and launches that break the execution model's rules,
//   each of which the emulator must refuse with the runtime's or compute-sanitizer's error.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cuda/execution.cuh"
#include "cuda/mma.cuh"

namespace dabdetr::cuda {
namespace {

constexpr int kLanes = 32;

struct FragmentArgs {
  int type;  // 0 bf16, 1 fp16: 16 x 16 A, B^T and B; 2 tf32 via cvt.rna, 3 tf32 bits as given: 16 x 8 A, 8 x 8 B^T
  const uint16_t* a16;
  const uint16_t* bt16;  // B^T: n rows of k (as keys are stored)
  const uint16_t* b16;   // B: k rows of n (as values are stored)
  const float* a32;
  const float* bt32;
  int32_t* a_regs;   // [32][4]
  int32_t* b_regs;   // [32][4]: n tile 0 in 0..1, n tile 1 in 2..3 (16-bit); n tile 0 in 0..1 (tf32)
  int32_t* bt_regs;  // [32][4]: the same fragments read from B with ldmatrix .trans (16-bit)
  float* d;          // [32][8]: D = A B, tile 0 in 0..3, tile 1 in 4..7 (16-bit)
};

__global__ void fragment_kernel(const FragmentArgs f) {
  const int lane = threadIdx.x;
  Accum c[2] = {};
  uint32_t a[4], b[4];
  if (f.type <= 1) {
    auto* tiles = reinterpret_cast<uint16_t(*)[16][16]>(dynamic_shared_memory());  // A, B^T, B
    for (int i = lane; i < 256; i += kLanes) {
      tiles[0][i / 16][i % 16] = f.a16[i];
      tiles[1][i / 16][i % 16] = f.bt16[i];
      tiles[2][i / 16][i % 16] = f.b16[i];
    }
    __syncthreads();
    // The addresses mma_rows_rows and mma_accum_rows give (mma.cuh).
    ldmatrix_x4(a, &tiles[0][lane % 16][(lane / 16) * 8]);
    ldmatrix_x4(b, &tiles[1][(lane / 16) * 8 + lane % 8][((lane / 8) % 2) * 8]);
    uint32_t bt[4];
    ldmatrix_x4_trans(bt, &tiles[2][((lane / 8) % 2) * 8 + lane % 8][(lane / 16) * 8]);
    if (f.type == 0) {
      mma_m16n8k16<__nv_bfloat16>(c[0], a, b[0], b[1]);
      mma_m16n8k16<__nv_bfloat16>(c[1], a, b[2], b[3]);
    } else {
      mma_m16n8k16<__half>(c[0], a, b[0], b[1]);
      mma_m16n8k16<__half>(c[1], a, b[2], b[3]);
    }
    for (int i = 0; i < 4; ++i) f.bt_regs[lane * 4 + i] = static_cast<int32_t>(bt[i]);
  } else {
    // Element by element, as the kernels read tf32 fragments (mma.cuh's header).
    const int g = lane / 4, t = lane % 4;
    auto bits = [&](float x) { return f.type == 2 ? tf32(x) : __float_as_uint(x); };
    a[0] = bits(f.a32[g * 8 + t]);
    a[1] = bits(f.a32[(g + 8) * 8 + t]);
    a[2] = bits(f.a32[g * 8 + t + 4]);
    a[3] = bits(f.a32[(g + 8) * 8 + t + 4]);
    b[0] = bits(f.bt32[g * 8 + t]);
    b[1] = bits(f.bt32[g * 8 + t + 4]);
    b[2] = b[3] = 0;
    mma_m16n8k8_tf32(c[0], a, b[0], b[1]);
  }
  for (int i = 0; i < 4; ++i) {
    f.a_regs[lane * 4 + i] = static_cast<int32_t>(a[i]);
    f.b_regs[lane * 4 + i] = static_cast<int32_t>(b[i]);
    f.d[lane * 8 + i] = c[0].v[i];
    f.d[lane * 8 + 4 + i] = c[1].v[i];
  }
}

// (d [32, 8], a_regs [32, 4], b_regs [32, 4], bt_regs [32, 4]) for type 0/1 (a, bt, b: int16
// [16, 16] bit patterns) or type 2/3 (a float32 [16, 8], bt float32 [8, 8]; b unused).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fragment_check(const at::Tensor& a, const at::Tensor& bt,
                                                                          const at::Tensor& b, int64_t type) {
  TORCH_CHECK(type >= 0 && type <= 3, "fragment_check: type must be 0..3");
  const bool half = type <= 1;
  const auto dtype = half ? at::kShort : at::kFloat;
  const std::vector<int64_t> a_shape = half ? std::vector<int64_t>{16, 16} : std::vector<int64_t>{16, 8};
  const std::vector<int64_t> bt_shape = half ? std::vector<int64_t>{16, 16} : std::vector<int64_t>{8, 8};
  TORCH_CHECK(a.sizes() == a_shape && bt.sizes() == bt_shape && a.scalar_type() == dtype && bt.scalar_type() == dtype &&
                  (!half || (b.sizes() == a_shape && b.scalar_type() == dtype)),
              "fragment_check: wrong shapes or dtypes");
  const at::Tensor ac = a.contiguous(), btc = bt.contiguous(), bc = b.contiguous();
  at::Tensor d = at::zeros({kLanes, 8}, at::kFloat);
  at::Tensor a_regs = at::zeros({kLanes, 4}, at::kInt), b_regs = at::zeros({kLanes, 4}, at::kInt),
             bt_regs = at::zeros({kLanes, 4}, at::kInt);
  FragmentArgs f{static_cast<int>(type),
                 half ? reinterpret_cast<const uint16_t*>(ac.data_ptr()) : nullptr,
                 half ? reinterpret_cast<const uint16_t*>(btc.data_ptr()) : nullptr,
                 half ? reinterpret_cast<const uint16_t*>(bc.data_ptr()) : nullptr,
                 half ? nullptr : ac.data_ptr<float>(),
                 half ? nullptr : btc.data_ptr<float>(),
                 a_regs.data_ptr<int32_t>(),
                 b_regs.data_ptr<int32_t>(),
                 bt_regs.data_ptr<int32_t>(),
                 d.data_ptr<float>()};
  const cudaError_t error = launch_kernel<fragment_kernel>(1, kLanes, half ? 3 * 16 * 16 * 2 : 0, nullptr, f);
  TORCH_CHECK(error == cudaSuccess, "fragment_check: ", cudaGetErrorString(error));
  return {d, a_regs, b_regs, bt_regs};
}

// Groups of 8 lanes sum their values with shuffles of width 8 under their own mask, group g (of the
// block) g % 3 + 1 times, so the groups of a warp reach their collectives at different times; then
// every thread adds 1 to sums[0] and its index to sums[1 + index % 4] with atomicAdd.
__global__ void group_kernel(float* group_sums, float* sums) {
  const unsigned mask = 0xffu << (threadIdx.x % kLanes / 8 * 8);
  float total = 0;
  for (unsigned round = 0; round <= threadIdx.x / 8 % 3; ++round) {
    float v = static_cast<float>(threadIdx.x + round);
    for (int offset = 4; offset > 0; offset /= 2) v += __shfl_xor_sync(mask, v, offset, 8);
    total += v;
  }
  group_sums[blockIdx.x * blockDim.x + threadIdx.x] = total;
  atomicAdd(&sums[0], 1.0f);
  atomicAdd(&sums[1 + threadIdx.x % 4], static_cast<float>(threadIdx.x));
}

// (group sums [2, 64], sums [5]) of group_kernel on two blocks of 64 threads.
std::tuple<at::Tensor, at::Tensor> collective_check() {
  at::Tensor group_sums = at::zeros({2, 64}, at::kFloat), sums = at::zeros({5}, at::kFloat);
  const cudaError_t error = launch_kernel<group_kernel>(2, 64, 0, nullptr, group_sums.data_ptr<float>(),
                                                       sums.data_ptr<float>());
  TORCH_CHECK(error == cudaSuccess, "collective_check: ", cudaGetErrorString(error));
  return {group_sums, sums};
}

// Lanes 0..3 shuffle under mask 0xff while lanes 4..11 shuffle under 0xff0: lanes 4..7 are named by
// two collectives at once.
__global__ void overlapping_masks_kernel(int) {
  float x = static_cast<float>(threadIdx.x);
  if (threadIdx.x < 4) x += __shfl_xor_sync(0xffu, x, 1);
  else if (threadIdx.x < 12) x += __shfl_xor_sync(0xff0u, x, 1);
}

// Threads 0..31 of a block of 64 return early: the rest wait at a barrier they never pass.
__global__ void early_exit_kernel(int) {
  if (threadIdx.x < 32) return;
  __syncthreads();
}

// Lane 5 leaves before the warp's shuffle.
__global__ void missing_lane_kernel(int) {
  float x = static_cast<float>(threadIdx.x);
  if (threadIdx.x == 5) return;
  x += __shfl_xor_sync(0xffffffffu, x, 1);
}

// Half of warp 1 shuffles with lanes that wait at a barrier instead: nothing can run.
__global__ void split_kernel(int) {
  if (threadIdx.x >= 32 && threadIdx.x < 48) {
    float x = 1.f;
    x += __shfl_xor_sync(0xffffffffu, x, 1);
  }
  __syncthreads();
}

__global__ void empty_kernel(int) {}
__global__ void unraised_kernel(int) {}  // never gets cudaFuncSetAttribute

// The error (its text) of misuse `kind`: 0 a thread exits while others wait at a barrier, 1 a
// shuffle's lane has exited, 2 a barrier some threads never reach, 3 1025 threads a block,
// 4 a 65536-block grid's y, 5 48 KiB + 1 of dynamic shared memory without raising the limit,
// 6 the opt-in maximum + 1 (the attribute itself refused), 7 a launch that fits (empty text), 8
// shuffles under overlapping masks.
std::string misuse_check(int64_t kind) {
  const size_t optin = dabdetr_cuda_emulator::device().max_shared_optin;
  cudaError_t error = cudaSuccess;
  switch (kind) {
    case 0: error = launch_kernel<early_exit_kernel>(2, 64, 0, nullptr, 0); break;
    case 1: error = launch_kernel<missing_lane_kernel>(1, 32, 0, nullptr, 0); break;
    case 2: error = launch_kernel<split_kernel>(1, 64, 0, nullptr, 0); break;
    case 3: error = launch_kernel<empty_kernel>(1, 1025, 0, nullptr, 0); break;
    case 4: error = launch_kernel<empty_kernel>(dim3(1, 65536), 32, 0, nullptr, 0); break;
    case 5: error = launch_kernel<unraised_kernel>(1, 32, 48 * 1024 + 1, nullptr, 0); break;
    case 6:
      error = cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(optin) + 1);
      break;
    case 7:
      error = cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(optin));
      if (error == cudaSuccess) error = launch_kernel<empty_kernel>(1, 32, optin, nullptr, 0);
      break;
    case 8: error = launch_kernel<overlapping_masks_kernel>(1, 32, 0, nullptr, 0); break;
    default: TORCH_CHECK(false, "misuse_check: kind must be 0..8");
  }
  cudaGetLastError();  // cleared, as a host that handled the error would
  return error == cudaSuccess ? "" : std::string(cudaGetErrorString(error));
}

}  // namespace
}  // namespace dabdetr::cuda

TORCH_LIBRARY_FRAGMENT(DABDETR_EMULATED_LIBRARY, m) {
  m.def("fragment_check(Tensor a, Tensor bt, Tensor b, int type) -> (Tensor, Tensor, Tensor, Tensor)",
        &dabdetr::cuda::fragment_check);
  m.def("collective_check() -> (Tensor, Tensor)", &dabdetr::cuda::collective_check);
  m.def("misuse_check(int kind) -> str", &dabdetr::cuda::misuse_check);
}
