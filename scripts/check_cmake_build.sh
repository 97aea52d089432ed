#!/usr/bin/env bash
# Builds the extension through CMake (find_package(Torch)) and checks that it works; configuring
# also compiles every csrc/cuda/*.cu with bare nvcc for sm_80/sm_90 where nvcc is installed
# (DABDETR_CUDA_COMPILE_CHECK=OFF skips that: scripts/test.sh does, where check_cuda_binding.sh
# compiles the same kernels for the same architectures).
# Expects the project's virtual environment to be active.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${CMAKE_BUILD_DIR:-build-cmake}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DDABDETR_CUDA_COMPILE_CHECK="${DABDETR_CUDA_COMPILE_CHECK:-ON}" \
  -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
  -DPython_EXECUTABLE="$(command -v python)" >"$BUILD.log" 2>&1 || { cat "$BUILD.log"; exit 1; }
grep "dabdetr:" "$BUILD.log" || true
cmake --build "$BUILD" -j"$(nproc)"
python scripts/check_cmake_extension.py "$BUILD"
