#!/usr/bin/env bash
# The CUDA kernels on the emulator under the sanitizers, without torch: csrc/cuda/*.cu, the
# emulator's runtime and csrc/cuda_emulator/sanitizer_driver.cpp (every kernel, both attention
# paths, every dtype, three shapes each) built and run twice:
#   AddressSanitizer + UBSan: out-of-bounds global and shared memory (dynamic shared memory is
#     allocated at exactly its launch size, static __shared__ variables get redzones), undefined
#     behaviour;
#   ThreadSanitizer: each CUDA thread a fiber, __syncthreads and the warp collectives the only
#     happens-before edges, so a missing barrier is a reported race (runtime.cpp's comment).
# Any finding fails the script. Objects go to $OUT (default build-cuda-emulator-sanitizers).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build-cuda-emulator-sanitizers}
CXX=${CXX:-g++}
JOBS=${MAX_JOBS:-$(nproc)}
BASE=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fno-strict-aliasing -Wall -Wno-unknown-pragmas
      -DDABDETR_CUDA_EMULATOR -Icsrc/cuda_emulator/include -Icsrc ${DABDETR_SANITIZER_FLAGS:-})
KERNELS=(csrc/cuda/*.cu)

compile() {  # compile DIR "FLAGS" SOURCE...: objects into DIR, in parallel
  local dir=$1 flags=$2
  shift 2
  mkdir -p "$dir"
  printf '%s\n' "$@" | xargs -P "$JOBS" -I{} sh -c '
    src={}; obj="$0/$(echo "$src" | tr / _).o"
    case "$src" in *.cu) lang="-x c++";; *) lang="";; esac
    '"$CXX"' $lang "$@" -c "$src" -o "$obj"' "$dir" "${BASE[@]}" $flags
}

echo "== AddressSanitizer + UBSan"
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined"
compile "$OUT/asan" "$SAN" "${KERNELS[@]}" csrc/cuda_emulator/runtime.cpp csrc/cuda_emulator/sanitizer_driver.cpp
"$CXX" $SAN -o "$OUT/asan/driver" "$OUT"/asan/*.o
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 "$OUT/asan/driver"

echo "== ThreadSanitizer"
# The emulator's bookkeeping is not instrumented (it tells TSan of the switches and edges itself).
compile "$OUT/tsan" "-fsanitize=thread" "${KERNELS[@]}" csrc/cuda_emulator/sanitizer_driver.cpp
compile "$OUT/tsan-runtime" "-DDABDETR_CUDA_EMULATOR_TSAN" csrc/cuda_emulator/runtime.cpp
"$CXX" -fsanitize=thread -o "$OUT/tsan/driver" "$OUT"/tsan/*.o "$OUT"/tsan-runtime/*.o
TSAN_OPTIONS=halt_on_error=1:exitcode=66 "$OUT/tsan/driver"
echo "== sanitizers: no findings"
