#!/usr/bin/env bash
# The project's test command: a fresh virtual environment, the extension built from source with
# setup.py and with CMake (+ where nvcc exists, the CUDA compile check and the whole extension
# compiled and linked against a CUDA build of torch), ruff, the import layers, the release
# artifacts (sdist and wheel, each installed into a fresh environment), the CUDA emulator, the
# CUDA kernels (emulated) and the CPU kernels under the sanitizers, then the test suite (the CUDA
# kernels' tests on the emulator; on a GPU too, where there is one). Each step prints its time.
set -euo pipefail
cd "$(dirname "$0")/.."
step() {  # runs a step and says how long it took: where CI's time goes
  local start=$SECONDS
  "$@"
  echo "== step took $((SECONDS - start)) s: $*"
}
step env CLEAR="${CLEAR:-1}" bash scripts/bootstrap.sh
. "${VENV:-.venv}/bin/activate"
echo "== ruff"
step ruff check .
step lint-imports  # the import layers of pyproject.toml: an import that runs upward fails here
if command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; then
  # The binding check compiles every kernel for sm_80 and sm_90 with the CMake check's flags: once.
  step env DABDETR_CUDA_COMPILE_CHECK=OFF bash scripts/check_cmake_build.sh
  step bash scripts/check_cuda_binding.sh  # the whole extension with CUDA, against the registry's CUDA torch
else
  step bash scripts/check_cmake_build.sh
fi
step bash scripts/check_release.sh
step bash scripts/build_cuda_emulator.sh  # the CUDA kernels' tests run on it (impl="cuda_emulated")
step env COUNTERS=1 bash scripts/build_cuda_emulator.sh  # its counting build (dabdetr.ops.emulated_counters)
step bash scripts/check_cuda_emulator_sanitizers.sh  # the CUDA kernels under ASan + UBSan and TSan
step bash scripts/check_cpu_sanitizers.sh  # the CPU kernels under ASan + UBSan
# Last, so that its summary (with its own time) closes the output; the slowest tests before it
# say where the suite's time goes. Two pytest workers, each file on one of them (its module
# fixtures built once): much of the suite runs on one core (export tracing, the emulator, Python),
# so on 2 cores two workers took 16.2 minutes where one took 23.1 (docs/testing.md).
DABDETR_REQUIRE_CUDA_EMULATOR=1 python -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile --durations=15 tests "$@"
