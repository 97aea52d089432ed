// Entry points of the CPU kernels, one set per instruction-set level (isa_*.cpp), and the
// runtime choice between them. Each entry point processes work items [begin, end); scratch, where
// taken, is the calling thread's (ops_cpu.cpp sizes it).
#pragma once

#include "cpu/kernel_params.h"

namespace dabdetr::cpu {

#define DABDETR_DECLARE_CPU_KERNELS(isa)                                                     \
  namespace isa {                                                                           \
  template <typename T>                                                                     \
  void attention_forward(const AttentionParams<T>& p, int64_t begin, int64_t end, T* ws);   \
  template <typename T>                                                                     \
  void attention_backward(const AttentionParams<T>& p, int64_t begin, int64_t end, T* ws);  \
  template <typename T>                                                                     \
  void sine_embed_forward(const SineEmbedParams<T>& p, int64_t begin, int64_t end);         \
  template <typename T>                                                                     \
  void sine_embed_backward(const SineEmbedParams<T>& p, int64_t begin, int64_t end);        \
  template <typename T, typename V>                                                         \
  void deformable_attention_forward(const DeformableAttentionParams<T, V>& p, int64_t begin, \
                                    int64_t end, T* scratch);                               \
  template <typename T>                                                                     \
  void deformable_attention_backward(const DeformableAttentionParams<T>& p, int64_t begin,  \
                                     int64_t end, T* scratch);                              \
  }

DABDETR_DECLARE_CPU_KERNELS(generic)
DABDETR_DECLARE_CPU_KERNELS(avx2)
DABDETR_DECLARE_CPU_KERNELS(avx512)
#undef DABDETR_DECLARE_CPU_KERNELS

// The attention in bfloat16 dot products, for CPUs with AVX-512 BF16 (isa_avx512_bf16.cpp;
// x86-64 builds only). The workspaces are each thread's scratch in bytes.
// The same with the products in AMX tiles, for CPUs with AMX-BF16 (isa_amx_bf16.cpp).
#define DABDETR_DECLARE_BF16_ATTENTION(isa)                                                        \
  namespace isa {                                                                                 \
  int64_t attention_forward_workspace(const AttentionBf16Params& p);                              \
  void attention_forward(const AttentionBf16Params& p, int64_t begin, int64_t end, void* ws);     \
  int64_t attention_backward_workspace(const AttentionBf16Params& p);                             \
  void attention_backward(const AttentionBf16Params& p, int64_t begin, int64_t end, void* ws);    \
  }
DABDETR_DECLARE_BF16_ATTENTION(avx512_bf16)
DABDETR_DECLARE_BF16_ATTENTION(amx_bf16)
#undef DABDETR_DECLARE_BF16_ATTENTION

// kAvx512Bf16 runs the kAvx512 kernels and, for bfloat16 inputs, the attention above (every
// other op and level computes 16-bit inputs in float32); kAmxBf16 likewise, with the attention's
// products in AMX tiles.
enum class Isa { kGeneric, kAvx2, kAvx512, kAvx512Bf16, kAmxBf16 };
// The best level this CPU supports and this build contains (kAmxBf16 where the kernel also grants
// the process AMX's tile data), lowered by the environment variable
// DABDETR_CPU_ISA=generic|avx2|avx512|avx512_bf16|amx_bf16. The CPU is probed once; the variable is read on
// every call (a getenv beside milliseconds of work), so the tests exercise every level on one
// machine and the benchmarks time the levels side by side in one process.
Isa selected_isa();
const char* isa_name(Isa isa);

template <typename T>
struct KernelTable {
  void (*attention_forward)(const AttentionParams<T>&, int64_t, int64_t, T*);
  void (*attention_backward)(const AttentionParams<T>&, int64_t, int64_t, T*);
  void (*sine_embed_forward)(const SineEmbedParams<T>&, int64_t, int64_t);
  void (*sine_embed_backward)(const SineEmbedParams<T>&, int64_t, int64_t);
  void (*deformable_attention_forward)(const DeformableAttentionParams<T>&, int64_t, int64_t, T*);
  void (*deformable_attention_backward)(const DeformableAttentionParams<T>&, int64_t, int64_t, T*);
  // The forward of bfloat16 values (locations, weights and the sums in T).
  void (*deformable_attention_forward_bf16_values)(const DeformableAttentionParams<T, Bf16>&, int64_t, int64_t, T*);
};

template <typename T>
const KernelTable<T>& kernels();

}  // namespace dabdetr::cpu
