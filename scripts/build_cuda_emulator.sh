#!/usr/bin/env bash
# Builds the CUDA emulator's op library into the active environment's dabdetr package
# (dabdetr/_cuda_emulated.so): every csrc/cuda/*.cu compiled by the host C++ compiler against the
# stand-in CUDA headers of csrc/cuda_emulator/include, with the emulator's runtime and the same host
# code as the CUDA build (csrc/cuda/ops_cuda.cpp). Then dabdetr.ops runs the CUDA kernels on CPU
# tensors with impl="cuda_emulated" (docs/ops.md, "The CUDA emulator").
#
#   SANITIZE=address,undefined|thread  a sanitizer build (then preload the sanitizer's runtime)
#   OUT=DIR                            objects (default build-cuda-emulator[-SANITIZE])
set -euo pipefail
cd "$(dirname "$0")/.."
SANITIZE=${SANITIZE:-}
OUT=${OUT:-build-cuda-emulator${SANITIZE:+-${SANITIZE//,/-}}}
CXX=${CXX:-g++}
JOBS=${MAX_JOBS:-$(nproc)}
read -r TORCH_DIR PACKAGE_DIR < <(python - <<'PY'
import importlib.util, os, torch  # dabdetr found, not imported: it loads the library being rebuilt
print(os.path.dirname(torch.__file__), os.path.dirname(importlib.util.find_spec("dabdetr").origin))
PY
)
TARGET=${TARGET:-$PACKAGE_DIR/_cuda_emulated${SANITIZE:+_${SANITIZE//,/_}}.so}
ABI=$(python -c 'import torch; print(int(torch._C._GLIBCXX_USE_CXX11_ABI))')
FLAGS=(-std=c++20 -fPIC -O2 -g0 -fno-strict-aliasing -Wall -Wno-unknown-pragmas
       -DDABDETR_CUDA_EMULATOR -DDABDETR_CUDA_ARCHS='"8.0;9.0"' -D_GLIBCXX_USE_CXX11_ABI="$ABI"
       -Icsrc/cuda_emulator/include -Icsrc
       -isystem "$TORCH_DIR/include" -isystem "$TORCH_DIR/include/torch/csrc/api/include")
if [ -n "$SANITIZE" ]; then
  FLAGS+=(-fsanitize="$SANITIZE" -fno-omit-frame-pointer -O1 -DDABDETR_CUDA_EMULATOR_SANITIZER)
fi
mkdir -p "$OUT"
echo "== building the CUDA emulator (${SANITIZE:-no sanitizer}) into $TARGET"
SOURCES=(csrc/cuda/*.cu csrc/cuda/ops_cuda.cpp csrc/cuda_emulator/*.cu csrc/cuda_emulator/*.cpp)
printf '%s\n' "${SOURCES[@]}" | xargs -P "$JOBS" -I{} sh -c '
  src={}; obj="$0/$(echo "$src" | tr / _).o"
  case "$src" in *.cu) lang="-x c++";; *) lang="";; esac
  '"$CXX"' $lang "$@" -c "$src" -o "$obj"' "$OUT" "${FLAGS[@]}"
"$CXX" -shared ${SANITIZE:+-fsanitize=$SANITIZE} -o "$TARGET.tmp" "$OUT"/*.o \
  -L"$TORCH_DIR/lib" -lc10 -ltorch_cpu -Wl,-rpath,"$TORCH_DIR/lib"
mv "$TARGET.tmp" "$TARGET"
echo "== built $TARGET"
