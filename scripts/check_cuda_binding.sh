#!/usr/bin/env bash
# Compiles and links the whole extension with its CUDA kernels on a machine without a GPU or a
# CUDA torch: against the headers and libraries of the registry's CUDA build of torch (the same
# version as the active environment's torch), with nvcc's CUDA headers and runtime. It catches
# what the bare-nvcc check of csrc/cuda/*.cu cannot: errors in the torch binding
# (csrc/cuda/ops_cuda.cpp, csrc/bindings.cpp with DABDETR_WITH_CUDA) and symbols that no library
# provides (the link uses --no-undefined).
#
# The wheel (~0.5 GB) is cached outside the repository ($DABDETR_CUDA_TORCH_CACHE, default
# ~/.cache/dabdetr-cuda-torch) and never installed: only its include/ and lib/ are unpacked.
# Expects the project's virtual environment to be active and nvcc on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${DABDETR_CUDA_TORCH_CACHE:-$HOME/.cache/dabdetr-cuda-torch}
OUT=${OUT:-build-cuda-binding}
ARCHS=${ARCHS:-80 90}  # the architectures we ship, as the CMake compile check builds them
JOBS=${MAX_JOBS:-$(nproc)}
# The CUDA toolkit: $CUDA_HOME, the one nvcc belongs to, or /usr/local/cuda (nvcc may be a wrapper).
for candidate in "${CUDA_HOME:-}" "$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /)")")")" /usr/local/cuda; do
  if [ -n "$candidate" ] && [ -f "$candidate/include/cuda_runtime_api.h" ] && [ -x "$candidate/bin/nvcc" ]; then
    CUDA_HOME=$candidate
    break
  fi
done
[ -f "${CUDA_HOME:-}/include/cuda_runtime_api.h" ] || { echo "no CUDA toolkit found (set CUDA_HOME)"; exit 1; }
NVCC="$CUDA_HOME/bin/nvcc"
read -r TORCH_VERSION PYTAG PY_INCLUDE PY_LIBDIR PY_LIB < <(python - <<'PY'
import sys, sysconfig, torch
print(torch.__version__.split("+")[0], f"cp{sys.version_info[0]}{sys.version_info[1]}", sysconfig.get_paths()["include"],
      sysconfig.get_config_var("LIBDIR"), f"python{sys.version_info[0]}.{sys.version_info[1]}")
PY
)

mkdir -p "$CACHE"
WHEEL=$(ls "$CACHE"/torch-"$TORCH_VERSION"-"$PYTAG"-*.whl 2>/dev/null | grep -v '+cpu' | head -1 || true)
if [ -z "$WHEEL" ]; then
  echo "== downloading the CUDA build of torch $TORCH_VERSION into $CACHE"
  # --isolated: the registry itself, not this machine's local (CPU) wheels.
  python -m pip download -q --isolated --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    "torch==$TORCH_VERSION" -d "$CACHE"
  WHEEL=$(ls "$CACHE"/torch-"$TORCH_VERSION"-"$PYTAG"-*.whl | grep -v '+cpu' | head -1)
fi
TORCH="$CACHE/unpacked-$(basename "$WHEEL" .whl)/torch"
if [ ! -d "$TORCH/include" ]; then
  echo "== unpacking include/ and lib/ of $(basename "$WHEEL")"
  unzip -q -o "$WHEEL" 'torch/include/*' 'torch/lib/*' 'torch/version.py' -d "$(dirname "$TORCH")"
fi
TORCH_CUDA=$(sed -n "s/^cuda: .*= '\(.*\)'$/\1/p; s/^cuda = '\(.*\)'$/\1/p" "$TORCH/version.py" | head -1)
[ -n "$TORCH_CUDA" ] || { echo "$WHEEL is not a CUDA build of torch"; exit 1; }
echo "== torch $TORCH_VERSION built for CUDA $TORCH_CUDA; nvcc: $("$NVCC" --version | tail -1)"

rm -rf "$OUT" && mkdir -p "$OUT"
ARCH_LIST=$(for a in $ARCHS; do printf '%s.%s;' "${a:0:1}" "${a:1}"; done)
GENCODE=()
for a in $ARCHS; do GENCODE+=(-gencode "arch=compute_$a,code=sm_$a"); done
DEFINES=(-DDABDETR_WITH_CUDA "-DDABDETR_CUDA_ARCHS=\"${ARCH_LIST%;}\"" -DTORCH_EXTENSION_NAME=_C
         -DTORCH_API_INCLUDE_EXTENSION_H -D_GLIBCXX_USE_CXX11_ABI=1)
INCLUDES=(-Icsrc -I"$TORCH/include" -I"$TORCH/include/torch/csrc/api/include" -I"$CUDA_HOME/include" -I"$PY_INCLUDE")
compile_cxx() {
  g++ -std=c++20 -O1 -fPIC -fopenmp -fno-math-errno -fno-trapping-math "${DEFINES[@]}" "${INCLUDES[@]}" \
    -c "$1" -o "$OUT/$(echo "$1" | tr / _).o"
}
compile_cu() {
  # The CMake compile check's flags: with this check, CI needs no other nvcc run (scripts/test.sh).
  "$NVCC" -std=c++20 -O3 -Werror=all-warnings "${GENCODE[@]}" -Xcompiler -fPIC "${DEFINES[@]}" "${INCLUDES[@]}" \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ -D__CUDA_NO_BFLOAT16_CONVERSIONS__ \
    -D__CUDA_NO_HALF2_OPERATORS__ -c "$1" -o "$OUT/$(echo "$1" | tr / _).o"
}
start=$(date +%s)
echo "== compiling with $JOBS jobs"
status=0
for source in csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cpp csrc/cuda/*.cu; do
  case "$source" in *.cu) compile_cu "$source" & ;; *) compile_cxx "$source" & ;; esac
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || status=1; done
done
while [ "$(jobs -rp | wc -l)" -gt 0 ]; do wait -n || status=1; done
[ $status = 0 ] || { echo "COMPILE FAILED"; exit 1; }
echo "   compiled in $(( $(date +%s) - start )) s"

echo "== linking with --no-undefined"
g++ -shared -o "$OUT/_C.so" "$OUT"/*.o -Wl,--no-undefined -fopenmp \
  -L"$TORCH/lib" -lc10 -lc10_cuda -ltorch -ltorch_cpu -ltorch_cuda -ltorch_python \
  -L"$CUDA_HOME/lib64" -lcudart -L"$PY_LIBDIR" -l"$PY_LIB" -Wl,-rpath-link,"$TORCH/lib" 2>"$OUT/link.log" \
  || { grep -v "warning:" "$OUT/link.log" | head -30; echo "LINK FAILED"; exit 1; }
echo "   $OUT/_C.so: $(du -h "$OUT/_C.so" | cut -f1); kernels: $(nm -DC "$OUT/_C.so" | grep -c 'dabdetr::cuda::attention_forward\|dabdetr::cuda::sine_embed_forward') CUDA entry points defined"
echo "== CUDA binding compiled and linked against torch $TORCH_VERSION+cu$TORCH_CUDA"
