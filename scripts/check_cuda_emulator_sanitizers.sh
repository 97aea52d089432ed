#!/usr/bin/env bash
# The CUDA kernels on the emulator under the sanitizers, without torch: csrc/cuda/*.cu, the
# emulator's runtime and csrc/cuda_emulator/sanitizer_driver.cpp (every kernel, both attention
# paths, every dtype, three shapes each) built and run twice:
#   AddressSanitizer + UBSan: out-of-bounds global and shared memory (dynamic shared memory is
#     allocated at exactly its launch size, static __shared__ variables get redzones), undefined
#     behaviour;
#   ThreadSanitizer: each CUDA thread a fiber, __syncthreads and the warp collectives the only
#     happens-before edges, so a missing barrier is a reported race (runtime.cpp's comment).
# Any finding fails the script. Then the proof that each check can fail: the kernels' deliberately
# broken variants (DABDETR_EMULATOR_FAULT, csrc/cuda/execution.cuh) must be caught, a dropped
# __syncthreads by TSan, a read past a shared tile by ASan, permuted fragment lanes by the parity
# check, a plain += where the deformable attention's backward needs an atomic by TSan (in global and
# in shared memory). Objects go to $OUT (default build-cuda-emulator-sanitizers).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-build-cuda-emulator-sanitizers}
CXX=${CXX:-g++}
JOBS=${MAX_JOBS:-$(nproc)}
BASE=(-std=c++20 -O1 -g -fno-omit-frame-pointer -fno-strict-aliasing -Wall -Wno-unknown-pragmas
      -DDABDETR_CUDA_EMULATOR -Icsrc/cuda_emulator/include -Icsrc ${DABDETR_SANITIZER_FLAGS:-})
KERNELS=(csrc/cuda/*.cu)
RUNTIME=(csrc/cuda_emulator/runtime.cpp csrc/cuda_emulator/counters.cpp)

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
compile "$OUT/asan" "$SAN" "${KERNELS[@]}" "${RUNTIME[@]}" csrc/cuda_emulator/sanitizer_driver.cpp
"$CXX" $SAN -o "$OUT/asan/driver" "$OUT"/asan/*.o
ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 "$OUT/asan/driver"

echo "== ThreadSanitizer"
# The emulator's bookkeeping is not instrumented (it tells TSan of the switches and edges itself).
compile "$OUT/tsan" "-fsanitize=thread" "${KERNELS[@]}" csrc/cuda_emulator/sanitizer_driver.cpp
compile "$OUT/tsan-runtime" "-DDABDETR_CUDA_EMULATOR_TSAN" "${RUNTIME[@]}"
"$CXX" -fsanitize=thread -o "$OUT/tsan/driver" "$OUT"/tsan/*.o "$OUT"/tsan-runtime/*.o
TSAN_OPTIONS=halt_on_error=1:exitcode=66 "$OUT/tsan/driver"
echo "== sanitizers: no findings"

# expect_caught FAULT BUILD SOURCE FILTER PATTERN: SOURCE rebuilt with the fault into BUILD's driver,
# run on the kernel runs FILTER selects, must fail with PATTERN in its output.
expect_caught() {
  local fault=$1 build=$2 source=$3 filter=$4 pattern=$5 flags dir="$OUT/fault$1" object
  flags=$([ "$build" = asan ] && echo "$SAN" || echo "-fsanitize=thread")
  object=$(echo "$source" | tr / _).o
  compile "$dir" "$flags -DDABDETR_EMULATOR_FAULT=$fault" "$source"
  local objects=("$OUT/$build"/*.o)
  [ "$build" = tsan ] && objects+=("$OUT"/tsan-runtime/*.o)
  "$CXX" $flags -o "$dir/driver" "$dir/$object" $(printf '%s\n' "${objects[@]}" | grep -v "/$object$")
  local log status=0
  log=$(ASAN_OPTIONS=halt_on_error=1 TSAN_OPTIONS=halt_on_error=1:exitcode=66 "$dir/driver" "$filter" 2>&1) || status=$?
  if [ "$status" = 0 ] || ! grep -q "$pattern" <<<"$log"; then
    echo "$log" | tail -20
    echo "FAILED: fault $fault ($source) was not caught (exit $status, expected '$pattern')"
    exit 1
  fi
  echo "== fault $fault caught: $(grep -m1 "$pattern" <<<"$log")"
}
expect_caught 1 tsan csrc/cuda/attention_forward.cu "attention simt float32 B2" "ThreadSanitizer: data race"
expect_caught 2 asan csrc/cuda/attention_mma_forward.cu "attention tensor_core bfloat16 splits 1 B2" \
  "AddressSanitizer: heap-buffer-overflow"
expect_caught 3 asan csrc/cuda/attention_mma_forward.cu "attention tensor_core" "WRONG attention tensor_core"
expect_caught 4 tsan csrc/cuda/deformable_attention.cu "deformable float32 D32 global" "ThreadSanitizer: data race"
expect_caught 4 tsan csrc/cuda/deformable_attention.cu "deformable float32 D32 shared" "ThreadSanitizer: data race"
