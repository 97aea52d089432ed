#!/usr/bin/env bash
# The project's test command: a fresh virtual environment, the extension built from source with
# setup.py and with CMake (+ where nvcc exists, the CUDA compile check and the whole extension
# compiled and linked against a CUDA build of torch), ruff, the release
# artifacts (sdist and wheel, each installed into a fresh environment), the CUDA emulator, then
# the test suite (the CUDA kernels' tests on the emulator; on a GPU too, where there is one).
set -euo pipefail
cd "$(dirname "$0")/.."
CLEAR=${CLEAR:-1} bash scripts/bootstrap.sh
. "${VENV:-.venv}/bin/activate"
echo "== ruff"
ruff check .
bash scripts/check_cmake_build.sh
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  bash scripts/check_cuda_binding.sh  # the whole extension with CUDA, against the registry's CUDA torch
fi
bash scripts/check_release.sh
bash scripts/build_cuda_emulator.sh  # the CUDA kernels' tests run on it (impl="cuda_emulated")
bash scripts/check_cuda_emulator_sanitizers.sh  # the CUDA kernels under ASan + UBSan and TSan
DABDETR_REQUIRE_CUDA_EMULATOR=1 python -m pytest -q tests "$@"
