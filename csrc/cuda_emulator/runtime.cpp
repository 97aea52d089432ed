// The CUDA emulator's execution model (dabdetr_cuda_emulator.h): launches, fibers, barriers and
// warp collectives, the emulated matrix instructions, and the runtime calls of the stand-in
// cuda_runtime_api.h.
//
// A block's threads are ucontext fibers on the launching thread, each with its own stack. The
// scheduler runs every runnable fiber in turn until it blocks (at __syncthreads or a warp
// collective) or exits; a barrier opens when every live thread of the block waits at it, a warp
// collective completes when every lane of its mask has arrived, and then the scheduler computes its
// result from what the lanes deposited. Blocks run one after another. What the hardware leaves
// undefined is an error here: a thread that exits while others wait at a barrier, a warp collective
// that a lane of its mask leaves (or meets at another collective), a block in which nothing can run
// any more.
//
// Under the sanitizers (scripts/check_cuda_emulator_sanitizers.sh): AddressSanitizer is told of
// every fiber switch (__sanitizer_start/finish_switch_fiber). ThreadSanitizer sees each CUDA thread
// as a fiber of its own, switched without synchronization, so that the only happens-before edges
// between threads are the ones CUDA gives: __syncthreads and the warp collectives (release before
// waiting, acquire after), a launch's start and end, and the end of the blocks before. This file is
// then compiled without TSan's instrumentation (DABDETR_CUDA_EMULATOR_TSAN), so the scheduler's own
// bookkeeping is not checked; ldmatrix reports its lane's row read to TSan itself.
#include "dabdetr_cuda_emulator.h"
#include "counters.h"
#include "cuda_fp16.h"
#include "cuda_runtime_api.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define DABDETR_ASAN 1
#endif
#if defined(DABDETR_CUDA_EMULATOR_TSAN)
#include <sanitizer/tsan_interface.h>
extern "C" void __tsan_read16(void* address);  // TSan's instrumentation callback for a 16-byte read
#define DABDETR_TSAN 1
#endif

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <vector>

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace dabdetr_cuda_emulator {
namespace {

constexpr int kWarpSize = 32;
constexpr size_t kStackBytes = 256 * 1024;  // the kernels keep a few KB of registers in local arrays
constexpr size_t kDefaultDynamicShared = 48 * 1024;

enum class State { kRunnable, kAtBarrier, kAtWarpOp, kExited, kFailed };
enum class WarpOpKind { kShfl, kLdmatrix, kLdmatrixTrans, kMma };

const char* op_name(WarpOpKind kind) {
  switch (kind) {
    case WarpOpKind::kShfl: return "__shfl_xor_sync";
    case WarpOpKind::kLdmatrix: return "ldmatrix.x4";
    case WarpOpKind::kLdmatrixTrans: return "ldmatrix.x4.trans";
    case WarpOpKind::kMma: return "mma.sync";
  }
  return "?";
}

// What a lane brings to a warp collective, and what it takes away.
struct WarpOp {
  WarpOpKind kind;
  unsigned mask;
  uint64_t bits;  // shfl
  int lane_mask, width;
  const unsigned char* row;  // ldmatrix
  uintptr_t site;            // ldmatrix: its call, for the counters
  MmaType type;              // mma
  uint32_t a[4], b[2];
  float c[4];
  uint64_t out_bits;
  uint32_t out_r[4];
};

struct Fiber {
  ucontext_t context;
  void* stack = nullptr;
  State state = State::kExited;
  uint3 index{};
  WarpOp op{};
  void* asan_fake_stack = nullptr;
  void* tsan_fiber = nullptr;
  unsigned generation = 0;  // of the barrier or warp collective it waits at
  uint32_t interval = 0;    // barriers and warp collectives passed: the counters' sync intervals
};

// A fiber's stack and, under TSan, its TSan fiber: made once, reused by the thread of the same
// index in every block and launch (blocks are ordered anyway: block_sync).
struct Stack {
  void* memory;
  void* tsan_fiber = nullptr;
  explicit Stack() : memory(mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)) {
    if (memory == MAP_FAILED) {
      std::perror("dabdetr cuda emulator: fiber stack");
      std::abort();
    }
#ifdef DABDETR_TSAN
    tsan_fiber = __tsan_create_fiber(0);
#endif
  }
  ~Stack() { munmap(memory, kStackBytes); }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
};

// One launch in progress on this OS thread.
struct Launch {
  const char* kernel;
  dim3 grid, block;
  const std::function<void()>* body;
  std::vector<Fiber> fibers;
  ucontext_t scheduler;
  Fiber* current = nullptr;
  int live = 0, at_barrier = 0;
  std::unique_ptr<unsigned char[]> shared;
  size_t shared_size = 0;
  std::string failure;
  // The generation of the block's barrier and of each warp's collectives (per collective_slot: the
  // lanes of one mask): the sanitizers' sync objects alternate with it, so a thread leaving a barrier
  // acquires what was released at that one, not what faster threads already released at the next.
  unsigned barrier_generation = 0;
  std::vector<unsigned> warp_generation;  // [warp][lowest lane of the mask]
  char barrier_sync[2] = {}, begin_sync = 0, end_sync = 0, block_sync = 0;
  std::vector<char> warp_sync;  // [warp][lowest lane of the mask][2]
  // The scheduler's side of the fiber switches.
  void* asan_fake_stack = nullptr;
  const void* scheduler_stack = nullptr;
  size_t scheduler_stack_size = 0;
  void* tsan_scheduler = nullptr;
};

thread_local Launch* g_launch = nullptr;
thread_local cudaError_t g_last_error = cudaSuccess;
thread_local std::string g_failure;
thread_local std::vector<std::unique_ptr<Stack>> g_stacks;  // reused from launch to launch
// The launching thread's stack, where the kernels' parameters live (launch_kernel's tuple): counted
// as no memory (counters.h).
thread_local uintptr_t g_host_stack = 0;
thread_local size_t g_host_stack_size = 0;

// This library's loaded segments: a kernel's accesses there are to its static __shared__ variables
// (__shared__ is `static` here: cuda_runtime_api.h) or to constants; global memory is the tensors'.
enum class Segment { kNone, kWritable, kReadOnly };
struct ImageRange {
  uintptr_t start, size;
  bool writable;
};

int add_image_ranges(dl_phdr_info* info, size_t, void* data) {
  auto* ranges = static_cast<std::vector<ImageRange>*>(data);
  Dl_info self{};
  if (dladdr(reinterpret_cast<void*>(&add_image_ranges), &self) == 0 ||
      reinterpret_cast<uintptr_t>(self.dli_fbase) != info->dlpi_addr)
    return 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const auto& h = info->dlpi_phdr[i];
    if (h.p_type == PT_LOAD) ranges->push_back({info->dlpi_addr + h.p_vaddr, h.p_memsz, (h.p_flags & PF_W) != 0});
  }
  return 1;
}

Segment image_segment(uintptr_t address) {
  static const std::vector<ImageRange> ranges = [] {
    std::vector<ImageRange> r;
    dl_iterate_phdr(add_image_ranges, &r);
    return r;
  }();
  for (const auto& r : ranges)
    if (address - r.start < r.size) return r.writable ? Segment::kWritable : Segment::kReadOnly;
  return Segment::kNone;
}

void launching_stack(uintptr_t* low, size_t* size) {
  if (*size != 0) return;
  pthread_attr_t attr;
  void* address = nullptr;
  if (pthread_getattr_np(pthread_self(), &attr) != 0) return;
  pthread_attr_getstack(&attr, &address, size);
  pthread_attr_destroy(&attr);
  *low = reinterpret_cast<uintptr_t>(address);
}

// Static __shared__ variables are process-wide statics: one launch at a time.
std::mutex g_launch_mutex;
std::mutex g_attribute_mutex;
std::map<const void*, int> g_max_dynamic_shared;

int linear(const uint3& i, const dim3& d) { return static_cast<int>(i.x + i.y * d.x + i.z * d.x * d.y); }

std::string where(const Launch& l, const Fiber* f) {
  std::ostringstream s;
  s << l.kernel << " block (" << blockIdx.x << ", " << blockIdx.y << ", " << blockIdx.z << ")";
  if (f != nullptr) s << " thread (" << f->index.x << ", " << f->index.y << ", " << f->index.z << ")";
  return s.str();
}

void record_failure(Launch& l, const Fiber* f, const std::string& what) {
  if (l.failure.empty()) l.failure = where(l, f) + ": " + what;
}

// The happens-before edges the sanitizer sees (no-ops without TSan).
void release(void* sync) {
#ifdef DABDETR_TSAN
  __tsan_release(sync);
#else
  (void)sync;
#endif
}
void acquire(void* sync) {
#ifdef DABDETR_TSAN
  __tsan_acquire(sync);
#else
  (void)sync;
#endif
}

// The scheduler runs fiber f until it blocks or exits.
void switch_to_fiber(Launch& l, Fiber& f) {
#ifdef DABDETR_ASAN
  __sanitizer_start_switch_fiber(&l.asan_fake_stack, f.stack, kStackBytes);
#endif
#ifdef DABDETR_TSAN
  __tsan_switch_to_fiber(f.tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
  swapcontext(&l.scheduler, &f.context);
#ifdef DABDETR_ASAN
  __sanitizer_finish_switch_fiber(l.asan_fake_stack, nullptr, nullptr);
#endif
}

// The fiber side: before going back to the scheduler (exiting: for good).
void leave_fiber(Launch& l, Fiber& f, bool exiting) {
#ifdef DABDETR_ASAN
  __sanitizer_start_switch_fiber(exiting ? nullptr : &f.asan_fake_stack, l.scheduler_stack, l.scheduler_stack_size);
#else
  (void)f;
  (void)exiting;
#endif
#ifdef DABDETR_TSAN
  __tsan_switch_to_fiber(l.tsan_scheduler, __tsan_switch_to_fiber_no_sync);
#else
  (void)l;
#endif
}
void enter_fiber(Launch& l, Fiber& f, bool starting) {
#ifdef DABDETR_ASAN
  __sanitizer_finish_switch_fiber(starting ? nullptr : f.asan_fake_stack, &l.scheduler_stack,
                                  &l.scheduler_stack_size);
#else
  (void)l;
  (void)f;
  (void)starting;
#endif
}

void fiber_main() {
  Launch& l = *g_launch;
  Fiber& f = *l.current;
  enter_fiber(l, f, true);
  acquire(&l.begin_sync);
  acquire(&l.block_sync);
  (*l.body)();
  f.state = State::kExited;
  release(&l.block_sync);
  release(&l.end_sync);
  leave_fiber(l, f, true);
  // returning resumes uc_link: the scheduler
}

void set_builtins(const Fiber& f) { threadIdx = f.index; }

// Blocks the running fiber until the scheduler resumes it.
void yield(State state) {
  Launch& l = *g_launch;
  Fiber* f = l.current;
  f->state = state;
  leave_fiber(l, *f, false);
  swapcontext(&f->context, &l.scheduler);
  enter_fiber(l, *f, false);
  set_builtins(*f);
}

int lanes_in_block(const Launch& l, int warp) {
  const int threads = static_cast<int>(l.block.x * l.block.y * l.block.z);
  return std::min(kWarpSize, threads - warp * kWarpSize);
}

// ---- the emulated matrix instructions: fragment maps of the PTX ISA ---------------------------
// groupID = laneid >> 2, threadID_in_group = laneid % 4 ("Matrix Fragments for mma.m16n8k16" and
// "mma.m16n8k8" with .tf32); element i of a fragment sits at (row, col) of its matrix.

struct RowCol {
  int row, col;
};

// m16n8k16, .f16/.bf16 A (16 x 16, 8 elements in 4 registers of two).
RowCol a16_element(int lane, int i) {
  const int group = lane >> 2, thread = lane % 4;
  const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
  const int col = thread * 2 + (i & 1) + (i >= 4 ? 8 : 0);
  return {row, col};
}
// m16n8k16, .f16/.bf16 B (16 x 8, 4 elements in 2 registers).
RowCol b16_element(int lane, int i) {
  const int group = lane >> 2, thread = lane % 4;
  return {thread * 2 + (i & 1) + (i >= 2 ? 8 : 0), group};
}
// m16n8k8, .tf32 A (16 x 8, 4 registers) and B (8 x 8, 2 registers).
RowCol a_tf32_element(int lane, int i) {
  const int group = lane >> 2, thread = lane % 4;
  return {(i == 0 || i == 2) ? group : group + 8, (i < 2) ? thread : thread + 4};
}
RowCol b_tf32_element(int lane, int i) {
  const int group = lane >> 2, thread = lane % 4;
  return {i == 0 ? thread : thread + 4, group};
}
// C and D of both shapes (16 x 8 .f32, 4 elements).
RowCol c_element(int lane, int i) {
  const int group = lane >> 2, thread = lane % 4;
  return {i < 2 ? group : group + 8, thread * 2 + (i & 1)};
}

float half_bits_to_float(uint16_t bits, MmaType type) {
  if (type == MmaType::kFloat16) return __half2float(__half{bits});
  const uint32_t wide = uint32_t(bits) << 16;
  return bit_cast_to<float>(&wide);
}

// tf32 operands as the tensor cores read them: the low 13 mantissa bits ignored.
float tf32_bits_to_float(uint32_t bits) {
  const uint32_t kept = bits & 0xffffe000u;
  return bit_cast_to<float>(&kept);
}

void run_mma(Fiber* lanes[kWarpSize]) {
  const MmaType type = lanes[0]->op.type;
  const int k_dim = type == MmaType::kTf32 ? 8 : 16;
  float A[16][16] = {}, B[16][8] = {}, C[16][8] = {};
  for (int lane = 0; lane < kWarpSize; ++lane) {
    const WarpOp& op = lanes[lane]->op;
    if (type == MmaType::kTf32) {
      for (int i = 0; i < 4; ++i) {
        const RowCol e = a_tf32_element(lane, i);
        A[e.row][e.col] = tf32_bits_to_float(op.a[i]);
      }
      for (int i = 0; i < 2; ++i) {
        const RowCol e = b_tf32_element(lane, i);
        B[e.row][e.col] = tf32_bits_to_float(op.b[i]);
      }
    } else {
      for (int i = 0; i < 8; ++i) {
        const RowCol e = a16_element(lane, i);
        A[e.row][e.col] = half_bits_to_float(static_cast<uint16_t>(op.a[i / 2] >> (16 * (i % 2))), type);
      }
      for (int i = 0; i < 4; ++i) {
        const RowCol e = b16_element(lane, i);
        B[e.row][e.col] = half_bits_to_float(static_cast<uint16_t>(op.b[i / 2] >> (16 * (i % 2))), type);
      }
    }
    for (int i = 0; i < 4; ++i) {
      const RowCol e = c_element(lane, i);
      C[e.row][e.col] = op.c[i];
    }
  }
  // Products exact and summed in double, rounded once: the hardware's own fp32 accumulation order
  // is not specified (only a GPU shows it).
  float D[16][8];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double sum = C[i][j];
      for (int k = 0; k < k_dim; ++k) sum += double(A[i][k]) * double(B[k][j]);
      D[i][j] = static_cast<float>(sum);
    }
  for (int lane = 0; lane < kWarpSize; ++lane)
    for (int i = 0; i < 4; ++i) {
      const RowCol e = c_element(lane, i);
      std::memcpy(&lanes[lane]->op.out_r[i], &D[e.row][e.col], 4);
    }
}

// ldmatrix .m8n8 .x4 .b16 (PTX ISA, "ldmatrix"): lanes 8i..8i+7 give the addresses of rows 0..7 of
// matrix i; lane l receives in register i the 32 bits holding row l / 4, columns 2 (l % 4) and
// 2 (l % 4) + 1 of matrix i, or with .trans the elements (2 (l % 4), l / 4) and (2 (l % 4) + 1, l / 4).
bool run_ldmatrix(Launch& l, Fiber* lanes[kWarpSize], bool transpose) {
  uint16_t m[4][8][8];
  for (int lane = 0; lane < kWarpSize; ++lane) {
    const unsigned char* row = lanes[lane]->op.row;
    const unsigned char* base = l.shared.get();
    if (base == nullptr || row < base || row + 16 > base + l.shared_size) {
      record_failure(l, lanes[lane], std::string(op_name(lanes[lane]->op.kind)) +
                                         ": a row address outside the block's shared memory");
      return false;
    }
    if (reinterpret_cast<uintptr_t>(row) % 16 != 0) {
      record_failure(l, lanes[lane], std::string(op_name(lanes[lane]->op.kind)) + ": a row address not 16-byte aligned");
      return false;
    }
    std::memcpy(m[lane / 8][lane % 8], row, 16);
  }
  for (int lane = 0; lane < kWarpSize; ++lane)
    for (int i = 0; i < 4; ++i) {
      const int r = lane / 4, c = 2 * (lane % 4);
      const uint16_t lo = transpose ? m[i][c][r] : m[i][r][c];
      const uint16_t hi = transpose ? m[i][c + 1][r] : m[i][r][c + 1];
      lanes[lane]->op.out_r[i] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
  return true;
}

int lowest_lane(unsigned mask) { return mask == 0 ? 0 : __builtin_ctz(mask); }

void count_collective(Fiber* lanes[kWarpSize], WarpOpKind kind) {
  switch (kind) {
    case WarpOpKind::kShfl: counters::collective(counters::Collective::kShfl, 0, nullptr); break;
    case WarpOpKind::kMma: counters::collective(counters::Collective::kMma, 0, nullptr); break;
    case WarpOpKind::kLdmatrix:
    case WarpOpKind::kLdmatrixTrans: {
      const unsigned char* rows[kWarpSize];
      for (int lane = 0; lane < kWarpSize; ++lane) rows[lane] = lanes[lane]->op.row;
      counters::collective(counters::Collective::kLdmatrix, lanes[0]->op.site, rows);
      break;
    }
  }
}

// Tells the counters which sync intervals every lane of warp `warp` has left.
void count_progress(const Launch& l, int warp) {
  uint32_t oldest = UINT32_MAX;
  for (int lane = 0; lane < lanes_in_block(l, warp); ++lane) {
    const Fiber& f = l.fibers[warp * kWarpSize + lane];
    if (f.state != State::kExited) oldest = std::min(oldest, f.interval);
  }
  counters::intervals_done(warp, oldest);
}

// The collectives' bookkeeping slot of the lanes of `mask` in warp `warp`: lanes with disjoint masks
// (shuffles of width 8 among groups of 8 lanes, say) run collectives of their own.
int collective_slot(int warp, unsigned mask) { return warp * kWarpSize + lowest_lane(mask); }

// Completes the collective of the lanes of warp `warp` that wait with `first`'s mask, if every lane
// of the mask has arrived; *done says whether it completed; false on a failure.
bool try_collective(Launch& l, int warp, Fiber* (&lanes)[kWarpSize], int count, const Fiber* first, bool* done) {
  *done = false;
  const unsigned mask = first->op.kind == WarpOpKind::kShfl ? first->op.mask : 0xffffffffu;
  for (int lane = 0; lane < kWarpSize; ++lane) {
    if (!(mask >> lane & 1u)) continue;
    if (lane >= count) {
      record_failure(l, first, std::string(op_name(first->op.kind)) + ": the mask names lane " + std::to_string(lane) +
                                   ", which this block does not have");
      return false;
    }
    const Fiber* f = lanes[lane];
    if (f->state == State::kExited) {
      record_failure(l, first, std::string(op_name(first->op.kind)) + ": lane " + std::to_string(lane) +
                                   " of the mask has exited");
      return false;
    }
    if (f->state != State::kAtWarpOp) return true;  // not there yet
    if (f->op.kind != first->op.kind || f->op.mask != first->op.mask ||
        (f->op.kind == WarpOpKind::kMma && f->op.type != first->op.type)) {
      record_failure(l, f, std::string("lanes of warp ") + std::to_string(warp) + " meet at different collectives: " +
                               op_name(f->op.kind) + " and " + op_name(first->op.kind) + " (or other masks or types)");
      return false;
    }
  }
  switch (first->op.kind) {
    case WarpOpKind::kShfl:
      for (int lane = 0; lane < kWarpSize; ++lane) {
        if (!(mask >> lane & 1u)) continue;
        const WarpOp& op = lanes[lane]->op;
        const int source = lane ^ op.lane_mask;
        const int segment_end = (lane / op.width + 1) * op.width;
        if (source >= segment_end) {
          lanes[lane]->op.out_bits = op.bits;
        } else if (!(mask >> source & 1u)) {
          record_failure(l, lanes[lane], "__shfl_xor_sync: reads lane " + std::to_string(source) +
                                             ", which is not in the mask");
          return false;
        } else {
          lanes[lane]->op.out_bits = lanes[source]->op.bits;
        }
      }
      break;
    case WarpOpKind::kLdmatrix:
    case WarpOpKind::kLdmatrixTrans:
      if (!run_ldmatrix(l, lanes, first->op.kind == WarpOpKind::kLdmatrixTrans)) return false;
      break;
    case WarpOpKind::kMma:
      run_mma(lanes);
      break;
  }
  if (counters::active()) count_collective(lanes, first->op.kind);
  for (int lane = 0; lane < kWarpSize; ++lane)
    if (mask >> lane & 1u) lanes[lane]->state = State::kRunnable;
  ++l.warp_generation[collective_slot(warp, mask)];
  *done = true;
  return true;
}

// Completes every collective of warp `warp` whose lanes have all arrived; false on a failure.
bool try_warp_op(Launch& l, int warp) {
  const int count = lanes_in_block(l, warp);
  Fiber* lanes[kWarpSize] = {};
  for (int lane = 0; lane < count; ++lane) lanes[lane] = &l.fibers[warp * kWarpSize + lane];
  for (int lane = 0; lane < count; ++lane) {
    if (lanes[lane]->state != State::kAtWarpOp) continue;
    bool done = false;
    if (!try_collective(l, warp, lanes, count, lanes[lane], &done)) return false;
  }
  return true;
}

// What the scheduler does after fiber f stopped running; false on a failure.
bool after_run(Launch& l, Fiber& f) {
  if (counters::active()) count_progress(l, linear(f.index, l.block) / kWarpSize);
  switch (f.state) {
    case State::kFailed:
      return false;
    case State::kExited: {
      --l.live;
      if (l.at_barrier > 0) {
        record_failure(l, &f, "exited while " + std::to_string(l.at_barrier) +
                                  " threads of its block wait at __syncthreads (barrier divergence)");
        return false;
      }
      return try_warp_op(l, linear(f.index, l.block) / kWarpSize);
    }
    case State::kAtBarrier:
      if (l.live < static_cast<int>(l.fibers.size())) {
        record_failure(l, &f, "waits at __syncthreads, which " + std::to_string(l.fibers.size() - l.live) +
                                  " threads of its block have exited without reaching (barrier divergence)");
        return false;
      }
      if (++l.at_barrier == l.live) {
        if (counters::active()) counters::barrier((l.live + kWarpSize - 1) / kWarpSize);
        for (auto& g : l.fibers)
          if (g.state == State::kAtBarrier) g.state = State::kRunnable;
        l.at_barrier = 0;
        ++l.barrier_generation;
      }
      return true;
    case State::kAtWarpOp:
      return try_warp_op(l, linear(f.index, l.block) / kWarpSize);
    case State::kRunnable:
      return true;
  }
  return true;
}

// Why no thread of the block can run: each waiting thread and what it waits at.
std::string deadlock_report(const Launch& l) {
  std::ostringstream s;
  s << "no thread can run any more (a barrier or warp collective some threads never reach): " << l.at_barrier
    << " threads wait at __syncthreads, and at warp collectives:";
  int shown = 0;
  for (const auto& f : l.fibers) {
    if (f.state != State::kAtWarpOp) continue;
    if (shown++ == 6) {
      s << " ...";
      break;
    }
    s << " thread (" << f.index.x << ", " << f.index.y << ", " << f.index.z << ") at " << op_name(f.op.kind) << ";";
  }
  return s.str();
}

bool run_block(Launch& l) {
  const int threads = static_cast<int>(l.fibers.size());
  for (int t = 0; t < threads; ++t) {
    Fiber& f = l.fibers[t];
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &l.scheduler;
    makecontext(&f.context, fiber_main, 0);
    f.state = State::kRunnable;
    f.interval = 0;
  }
  l.live = threads;
  l.at_barrier = 0;
  acquire(&l.block_sync);  // the blocks before, which used the same shared memory
  if (l.shared) std::memset(l.shared.get(), 0xff, l.shared_size);  // uninitialized: NaN floats, -1 integers
  release(&l.block_sync);  // the fill, before the block's threads
  while (l.live > 0) {
    bool ran = false;
    for (auto& f : l.fibers) {
      if (f.state != State::kRunnable) continue;
      ran = true;
      l.current = &f;
      set_builtins(f);
      switch_to_fiber(l, f);
      l.current = nullptr;
      if (!after_run(l, f)) return false;
    }
    if (!ran && l.live > 0) {
      record_failure(l, nullptr, deadlock_report(l));
      return false;
    }
  }
  if (counters::active()) counters::block_ends();
  return true;
}

cudaError_t fail_launch(cudaError_t error) {
  g_last_error = error;
  return error;
}

int max_dynamic_shared(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_attribute_mutex);
  const auto found = g_max_dynamic_shared.find(kernel);
  return found == g_max_dynamic_shared.end() ? static_cast<int>(kDefaultDynamicShared) : found->second;
}

}  // namespace

bool counters::locate(uintptr_t address, Lane* lane, Space* space) {
  const Launch* l = g_launch;
  if (l == nullptr || l->current == nullptr) return false;
  const Fiber& f = *l->current;
  if (address - reinterpret_cast<uintptr_t>(f.stack) < kStackBytes || address - g_host_stack < g_host_stack_size)
    return false;
  const auto dynamic = reinterpret_cast<uintptr_t>(l->shared.get());
  if (address - dynamic < l->shared_size) {
    *space = Space::kShared;
  } else {
    switch (image_segment(address)) {
      case Segment::kWritable: *space = Space::kShared; break;  // a static __shared__ variable
      case Segment::kReadOnly: return false;                    // a constant: constant memory or an immediate
      case Segment::kNone: *space = Space::kGlobal; break;
    }
  }
  const int thread = linear(f.index, l->block);
  *lane = Lane{thread / kWarpSize, thread % kWarpSize, f.interval};
  return true;
}

Device device() {
  const char* name = std::getenv("DABDETR_EMULATED_GPU");
  if (name != nullptr && std::string(name) == "sm_80") return {8, 0, 108, 163 * 1024};
  return {9, 0, 132, 227 * 1024};
}

const std::string& failure_message() { return g_failure; }
void set_last_error(cudaError_t error) { g_last_error = error; }
cudaError_t peek_last_error() { return g_last_error; }
cudaError_t take_last_error() {
  const cudaError_t error = g_last_error;
  g_last_error = cudaSuccess;
  return error;
}

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || static_cast<size_t>(bytes) > device().max_shared_optin) return fail_launch(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(g_attribute_mutex);
  g_max_dynamic_shared[kernel] = bytes;
  return cudaSuccess;
}

cudaError_t launch(const char* kernel, const void* id, dim3 grid, dim3 block, size_t dynamic_shared,
                   const std::function<void()>& body) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 ||
      grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535)
    return fail_launch(cudaErrorInvalidConfiguration);
  if (dynamic_shared > static_cast<size_t>(max_dynamic_shared(id)) || dynamic_shared > device().max_shared_optin)
    return fail_launch(cudaErrorInvalidValue);

  std::lock_guard<std::mutex> lock(g_launch_mutex);
  Launch l;
  l.kernel = kernel;
  l.grid = grid;
  l.block = block;
  l.body = &body;
  l.fibers.resize(threads);
  while (g_stacks.size() < threads) g_stacks.push_back(std::make_unique<Stack>());
  for (unsigned t = 0; t < threads; ++t) {
    l.fibers[t].stack = g_stacks[t]->memory;
    l.fibers[t].tsan_fiber = g_stacks[t]->tsan_fiber;
    l.fibers[t].index = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
  }
  if (dynamic_shared > 0) {
    l.shared.reset(new unsigned char[dynamic_shared]);  // exactly the launch's size: the sanitizers see past it
    l.shared_size = dynamic_shared;
  }
  l.warp_generation.assign((threads + kWarpSize - 1) / kWarpSize * kWarpSize, 0);
  l.warp_sync.assign(l.warp_generation.size() * 2, 0);
#ifdef DABDETR_TSAN
  l.tsan_scheduler = __tsan_get_current_fiber();
#endif
  release(&l.begin_sync);  // what the host wrote before the launch
  Launch* outer = g_launch;
  g_launch = &l;
  blockDim = block;
  gridDim = grid;
  if (counters::active()) {
    launching_stack(&g_host_stack, &g_host_stack_size);
    counters::launch_begins(kernel, grid, block, dynamic_shared);
  }
  bool ok = true;
  for (unsigned z = 0; ok && z < grid.z; ++z)
    for (unsigned y = 0; ok && y < grid.y; ++y)
      for (unsigned x = 0; ok && x < grid.x; ++x) {
        blockIdx = {x, y, z};
        ok = run_block(l);
      }
  g_launch = outer;
  if (counters::active()) counters::launch_ends();
  acquire(&l.end_sync);  // what the kernel wrote, for the host
  if (!ok) {
    g_failure = "unspecified launch failure: " + l.failure;
    return fail_launch(cudaErrorLaunchFailure);
  }
  return cudaSuccess;
}

void fail(const std::string& what) {
  Launch* l = g_launch;
  if (l == nullptr || l->current == nullptr) {
    std::fprintf(stderr, "dabdetr cuda emulator: %s outside a kernel\n", what.c_str());
    std::abort();
  }
  record_failure(*l, l->current, what);
  yield(State::kFailed);
  std::abort();  // a failed fiber is never resumed
}

unsigned char* dynamic_shared_memory() { return g_launch != nullptr ? g_launch->shared.get() : nullptr; }
size_t dynamic_shared_size() { return g_launch != nullptr ? g_launch->shared_size : 0; }

void syncthreads() {
  if (g_launch == nullptr || g_launch->current == nullptr) fail("__syncthreads");
  Launch& l = *g_launch;
  const unsigned generation = l.barrier_generation;
  ++l.current->interval;
  release(&l.barrier_sync[generation & 1]);
  yield(State::kAtBarrier);
  acquire(&l.barrier_sync[generation & 1]);
}

namespace {

WarpOp& arrive(WarpOpKind kind) {
  if (g_launch == nullptr || g_launch->current == nullptr) fail(op_name(kind));
  WarpOp& op = g_launch->current->op;
  op = WarpOp{};
  op.kind = kind;
  op.mask = 0xffffffffu;
  return op;
}

// Waits until the collective of the lanes of `mask` completes, ordering it with the other lanes'
// sides of it.
void wait_for_warp(unsigned mask) {
  Launch& l = *g_launch;
  const int slot = collective_slot(linear(threadIdx, blockDim) / kWarpSize, mask);
  const unsigned generation = l.warp_generation[slot];
  char* sync = &l.warp_sync[slot * 2 + (generation & 1)];
  ++l.current->interval;
  release(sync);
  yield(State::kAtWarpOp);
  acquire(sync);
}

}  // namespace

uint64_t shfl_xor(unsigned mask, uint64_t bits, int lane_mask, int width) {
  if (width <= 0 || width > kWarpSize || (width & (width - 1)) != 0) fail("__shfl_xor_sync: width must be a power of 2 up to 32");
  WarpOp& op = arrive(WarpOpKind::kShfl);
  op.mask = mask;
  op.bits = bits;
  op.lane_mask = lane_mask & (kWarpSize - 1);
  op.width = width;
  const int lane = linear(threadIdx, blockDim) % kWarpSize;
  if (!(mask >> lane & 1u)) fail("__shfl_xor_sync: the calling lane is not in its mask");
  wait_for_warp(mask);
  return g_launch->current->op.out_bits;
}

void ldmatrix_x4(uint32_t (&r)[4], const void* row, bool transpose) {
  WarpOp& op = arrive(transpose ? WarpOpKind::kLdmatrixTrans : WarpOpKind::kLdmatrix);
  op.row = static_cast<const unsigned char*>(row);
  op.site = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
#ifdef DABDETR_TSAN
  __tsan_read16(const_cast<void*>(row));  // this lane's row, read by the scheduler on its behalf
#endif
  wait_for_warp(0xffffffffu);
  std::memcpy(r, g_launch->current->op.out_r, sizeof(r));
}

void mma(MmaType type, float (&c)[4], const uint32_t* a, const uint32_t* b) {
  WarpOp& op = arrive(WarpOpKind::kMma);
  op.type = type;
  std::memcpy(op.a, a, sizeof(op.a));
  std::memcpy(op.b, b, sizeof(op.b));
  std::memcpy(op.c, c, sizeof(op.c));
  wait_for_warp(0xffffffffu);
  std::memcpy(c, g_launch->current->op.out_r, sizeof(c));
}

uint32_t cvt_rna_tf32(float x) {
  uint32_t bits = bit_cast_to<uint32_t>(&x);
  if ((bits & 0x7f800000u) == 0x7f800000u) return (bits & 0x007fffffu) ? 0x7fffffffu : bits;  // NaN, inf
  return (bits + 0x1000u) & 0xffffe000u;  // nearest, ties away from zero (on the magnitude)
}

}  // namespace dabdetr_cuda_emulator

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return dabdetr_cuda_emulator::failure_message().c_str();
  }
  return "unknown error";
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attribute, int device) {
  if (device != 0 || value == nullptr) return cudaErrorInvalidValue;
  const auto d = dabdetr_cuda_emulator::device();
  switch (attribute) {
    case cudaDevAttrMultiProcessorCount: *value = d.multiprocessors; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = d.major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = d.minor; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(d.max_shared_optin); return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}
