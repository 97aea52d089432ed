#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "cpu/kernels.h"

namespace dabdetr::cpu {
namespace {

// Whether the CPU has AMX-BF16 and the kernel grants this process AMX's tile data: Linux asks
// each process to request it (arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA) before its
// first tile instruction, which would otherwise kill it with SIGILL.
bool amx_bf16_usable() {
#if defined(__x86_64__) && defined(__linux__)
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amx_bf16 = edx & (1u << 22), amx_tile = edx & (1u << 24);
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return amx_bf16 && amx_tile && syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

Isa detect_isa() {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw")) {
    if (!__builtin_cpu_supports("avx512bf16")) return Isa::kAvx512;
    return amx_bf16_usable() ? Isa::kAmxBf16 : Isa::kAvx512Bf16;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

Isa cap_by_environment(Isa detected) {
  const char* requested = std::getenv("DABDETR_CPU_ISA");
  if (requested == nullptr || *requested == '\0') return detected;
  Isa cap = detected;
  if (std::strcmp(requested, "generic") == 0) cap = Isa::kGeneric;
  if (std::strcmp(requested, "avx2") == 0) cap = Isa::kAvx2;
  if (std::strcmp(requested, "avx512") == 0) cap = Isa::kAvx512;
  if (std::strcmp(requested, "avx512_bf16") == 0) cap = Isa::kAvx512Bf16;
  if (std::strcmp(requested, "amx_bf16") == 0) cap = Isa::kAmxBf16;
  return static_cast<int>(cap) < static_cast<int>(detected) ? cap : detected;
}

template <typename T>
KernelTable<T> table_for(Isa isa) {
  switch (isa) {
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::kAmxBf16:
    case Isa::kAvx512Bf16:
    case Isa::kAvx512:
      return {avx512::attention_forward<T>, avx512::attention_backward<T>,
              avx512::sine_embed_forward<T>, avx512::sine_embed_backward<T>,
              avx512::deformable_attention_forward<T, T>, avx512::deformable_attention_backward<T>,
              avx512::deformable_attention_forward<T, Bf16>};
    case Isa::kAvx2:
      return {avx2::attention_forward<T>, avx2::attention_backward<T>,
              avx2::sine_embed_forward<T>, avx2::sine_embed_backward<T>,
              avx2::deformable_attention_forward<T, T>, avx2::deformable_attention_backward<T>,
              avx2::deformable_attention_forward<T, Bf16>};
#endif
    default:
      return {generic::attention_forward<T>, generic::attention_backward<T>,
              generic::sine_embed_forward<T>, generic::sine_embed_backward<T>,
              generic::deformable_attention_forward<T, T>, generic::deformable_attention_backward<T>,
              generic::deformable_attention_forward<T, Bf16>};
  }
}

}  // namespace

Isa selected_isa() {
  static const Isa detected = detect_isa();
  return cap_by_environment(detected);
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAmxBf16: return "amx_bf16";
    case Isa::kAvx512Bf16: return "avx512_bf16";
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

template <typename T>
const KernelTable<T>& kernels() {
  // Indexed by Isa.
  static const KernelTable<T> tables[] = {table_for<T>(Isa::kGeneric), table_for<T>(Isa::kAvx2),
                                          table_for<T>(Isa::kAvx512), table_for<T>(Isa::kAvx512Bf16),
                                          table_for<T>(Isa::kAmxBf16)};
  return tables[static_cast<int>(selected_isa())];
}

template const KernelTable<float>& kernels<float>();
template const KernelTable<double>& kernels<double>();

}  // namespace dabdetr::cpu
