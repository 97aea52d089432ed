#!/usr/bin/env bash
# Builds the CUDA emulator's op library into the active environment's dabdetr package
# (dabdetr/_cuda_emulated.so): every csrc/cuda/*.cu compiled by the host C++ compiler against the
# stand-in CUDA headers of csrc/cuda_emulator/include, with the emulator's runtime and the same host
# code as the CUDA build (csrc/cuda/ops_cuda.cpp). Then dabdetr.ops runs the CUDA kernels on CPU
# tensors with impl="cuda_emulated" (docs/ops.md, "The CUDA emulator").
#
#   COUNTERS=1                         the counting build instead (_cuda_emulated_counted.so, op library
#                                      dabdetr_emulated_counted): every load and store of the kernels
#                                      counted (csrc/cuda_emulator/counters.h, docs/results/gpu_model.md)
#   SANITIZE=address,undefined|thread  a sanitizer build (then preload the sanitizer's runtime)
#   OUT=DIR                            objects (default build-cuda-emulator[-counted|-SANITIZE])
#
# A library newer than every file under csrc/ and this script, built with the same compiler, flags
# and torch, is kept (the GPU suite's dry run in CI would rebuild what CI just built).
set -euo pipefail
cd "$(dirname "$0")/.."
SANITIZE=${SANITIZE:-}
COUNTERS=${COUNTERS:-}
VARIANT=${COUNTERS:+counted}
VARIANT=${VARIANT:-${SANITIZE//,/_}}
OUT=${OUT:-build-cuda-emulator${VARIANT:+-${VARIANT//_/-}}}
CXX=${CXX:-g++}
JOBS=${MAX_JOBS:-$(nproc)}
read -r TORCH_DIR PACKAGE_DIR TORCH_VERSION < <(python - <<'PY'
import importlib.util, os, torch  # dabdetr found, not imported: it loads the library being rebuilt
print(os.path.dirname(torch.__file__), os.path.dirname(importlib.util.find_spec("dabdetr").origin), torch.__version__)
PY
)
TARGET=${TARGET:-$PACKAGE_DIR/_cuda_emulated${VARIANT:+_$VARIANT}.so}
ABI=$(python -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
FLAGS=(-std=c++20 -fPIC -O2 -g0 -fno-strict-aliasing -Wall -Wno-unknown-pragmas
       -DDABDETR_CUDA_EMULATOR -DDABDETR_CUDA_ARCHS='"8.0;9.0"' -D_GLIBCXX_USE_CXX11_ABI="$ABI"
       -Icsrc/cuda_emulator/include -Icsrc
       -isystem "$TORCH_DIR/include" -isystem "$TORCH_DIR/include/torch/csrc/api/include")
KERNEL_FLAGS=()  # for the kernels (*.cu) only
if [ -n "$SANITIZE" ]; then
  FLAGS+=(-fsanitize="$SANITIZE" -fno-omit-frame-pointer -O1 -DDABDETR_CUDA_EMULATOR_SANITIZER)
fi
if [ -n "$COUNTERS" ]; then
  # Every load and store of a kernel calls counters.cpp's hooks, one access of the source one call:
  # no vectorized, merged, split (SRA) or libc-copied accesses; no tail calls, which would hide the
  # site of a kernel's last atomicAdd. -g: sites as file:line.
  FLAGS+=(-g -DDABDETR_CUDA_EMULATOR_COUNTERS -fno-tree-vectorize -fno-tree-slp-vectorize -fno-tree-sra
          -fno-store-merging -fno-tree-loop-distribute-patterns -fno-optimize-sibling-calls)
  KERNEL_FLAGS=(-fsanitize=kernel-address --param asan-instrumentation-with-call-threshold=0
                --param asan-stack=0 --param asan-globals=0)
fi
mkdir -p "$OUT"
STAMP="$OUT/built-with"
BUILT_WITH="$TARGET $CXX ${FLAGS[*]} ${KERNEL_FLAGS[*]} $TORCH_VERSION"
if [ -f "$TARGET" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$BUILT_WITH" ] \
    && [ -z "$(find csrc scripts/build_cuda_emulator.sh -newer "$TARGET" -print -quit)" ]; then
  echo "== the CUDA emulator (${VARIANT:-plain}) at $TARGET is up to date"
  exit 0
fi
echo "== building the CUDA emulator (${VARIANT:-plain}) into $TARGET"
SOURCES=(csrc/cuda/*.cu csrc/cuda/ops_cuda.cpp csrc/cuda_emulator/*.cu csrc/cuda_emulator/*.cpp)
printf '%s\n' "${SOURCES[@]}" | xargs -P "$JOBS" -I{} sh -c '
  src={}; obj="$0/$(echo "$src" | tr / _).o"
  case "$src" in *.cu) extra="-x c++ $1";; *) extra="";; esac
  shift
  '"$CXX"' $extra "$@" -c "$src" -o "$obj"' "$OUT" "${KERNEL_FLAGS[*]}" "${FLAGS[@]}"
"$CXX" -shared ${SANITIZE:+-fsanitize=$SANITIZE} -o "$TARGET.tmp" "$OUT"/*.o \
  -L"$TORCH_DIR/lib" -lc10 -ltorch_cpu -Wl,-rpath,"$TORCH_DIR/lib"
mv "$TARGET.tmp" "$TARGET"
echo "$BUILT_WITH" >"$STAMP"
echo "== built $TARGET"
