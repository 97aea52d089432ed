// The CUDA emulator's memory-access counters (counters.cpp): what a GPU profiler reports of a
// kernel's memory traffic, counted from every access of every emulated thread.
//
// The counting build (scripts/build_cuda_emulator.sh, COUNTERS=1) compiles the kernels with GCC's
// -fsanitize=kernel-address and a call threshold of 0, so that every load and store the compiler
// leaves in a kernel calls __asan_{load,store}{1,2,4,8,16,N}_noabort; counters.cpp defines those
// hooks (no sanitizer runtime is linked). The model:
// - A warp's request is the k-th execution of one access site (one machine instruction of the host
//   build, named by the hook's return address) by each of its active lanes within one sync
//   interval: the stretch of a lane's execution between two of its __syncthreads or warp
//   collectives. Lanes that diverge through different intervals make separate requests.
// - Global memory: each request's 32-byte sectors (distinct ones over all bytes its lanes touch),
//   its ideal sectors (the fewest its distinct bytes need as one run from where the lowest starts
//   in its sector: a coalesced request has as many) and the bytes the lanes ask for; atomics also
//   their distinct addresses. Per launch also the distinct sectors of all its global accesses: the
//   least traffic DRAM must serve, were every sector read or written once.
// - Shared memory (the launch's dynamic shared memory, and the static __shared__ variables: this
//   library's writable segment): 32 banks of 4 bytes; a request is served in phases of 32 lanes
//   (accesses of up to 4 bytes), 16 (8 bytes) or 8 (16 bytes, and ldmatrix's rows); a phase needs
//   as many wavefronts as the most distinct 4-byte words any bank holds among its bytes (lanes
//   reading the same word share it: broadcast), at least ceil(distinct words / 32): the ideal.
//   Shared atomics are counted by the same rule, although lanes adding to one word serialize.
// - Not modelled: L1 and L2 hits (sectors are the traffic the L1 asks for), the order in which a
//   GPU's compiler keeps values in registers (the host compiler decides which loads remain), and
//   the accesses of a kernel's parameters (on the launching thread's stack; constant memory on a
//   GPU), of its constants (this library's read-only segments) and of its threads' local variables
//   (a fiber's stack; registers or local memory on a GPU).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "dabdetr_cuda_emulator.h"

namespace dabdetr_cuda_emulator::counters {

enum class Access { kLoad, kStore, kAtomic };
enum class Space { kGlobal, kShared };
enum class Collective { kShfl, kLdmatrix, kMma };

// Where an access of the running thread falls: its warp, lane and sync interval, and the space.
struct Lane {
  int warp, lane;
  uint32_t interval;
};

extern bool g_active;  // between start() and take(); nothing is counted outside
inline bool active() { return g_active; }

void start();
// The records of the launches since start(), as a JSON list (one object per launch:
// docs/results/gpu_model.md), and stop.
std::string take();

// Called by the runtime (runtime.cpp) while counting.
void launch_begins(const char* kernel, dim3 grid, dim3 block, size_t dynamic_shared);
void launch_ends();
void access(const Lane& lane, Access kind, Space space, uintptr_t site, uintptr_t address, unsigned size);
void intervals_done(int warp, uint32_t before);  // every lane of `warp` is past its intervals < before
void block_ends();
void barrier(int warps);
void collective(Collective kind, uintptr_t site, const unsigned char* const* rows);  // rows: ldmatrix's 32

// Implemented by the runtime: where `address`, accessed by the running thread, falls; false when it
// is no thread's access to count (no kernel runs, or a local variable or parameter).
bool locate(uintptr_t address, Lane* lane, Space* space);

}  // namespace dabdetr_cuda_emulator::counters
