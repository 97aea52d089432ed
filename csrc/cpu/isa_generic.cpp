// CPU kernels compiled for the baseline instruction set of the build (runs on any CPU).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/kernels.h"

namespace dabdetr::cpu::generic {
constexpr int kVectorBytes = 16;
#include "cpu/kernel_bodies.inc"
}  // namespace dabdetr::cpu::generic
