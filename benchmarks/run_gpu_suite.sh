#!/usr/bin/env bash
# The GPU run, in one command (for the device tool's machines: torch with CUDA, nvcc, pytest and
# ninja installed, no network): builds the extension from source with its CUDA kernels, runs the
# whole test suite (CUDA tests included) and both benchmarks on the GPU, writes everything under
# $OUT (default benchmarks/results) and prints a summary.
#
#   bash benchmarks/run_gpu_suite.sh            # TORCH_CUDA_ARCH_LIST defaults to this GPU's arch
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" DABDETR_BUILD_CUDA=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
PY=${PYTHON:-python3}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
  export TORCH_CUDA_ARCH_LIST
fi
status=0

echo "== environment" | tee "$OUT/gpu_suite.log"
$PY - <<'PY' 2>&1 | tee -a "$OUT/gpu_suite.log"
import datetime, torch
print("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"))
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name())
PY
nvcc --version | tail -1 | tee -a "$OUT/gpu_suite.log"

echo "== build (archs $TORCH_CUDA_ARCH_LIST)" | tee -a "$OUT/gpu_suite.log"
start=$(date +%s)
if ! $PY setup.py build_ext --inplace >"$OUT/gpu_build.log" 2>&1; then
  tail -40 "$OUT/gpu_build.log"; echo "BUILD FAILED"; exit 1
fi
echo "built in $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu_suite.log"
$PY -c "import dabdetr, sys; i = dabdetr.ops.kernel_info(); print(i); sys.exit(0 if i['cuda'] else 'no CUDA kernels')" \
  2>&1 | tee -a "$OUT/gpu_suite.log" || exit 1

echo "== tests" | tee -a "$OUT/gpu_suite.log"
$PY -m pytest -q -p no:cacheprovider tests --junitxml="$OUT/gpu_tests.xml" >"$OUT/gpu_tests.log" 2>&1 || status=1
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/gpu_tests.log" | tail -30 | tee -a "$OUT/gpu_suite.log"

echo "== benchmarks" | tee -a "$OUT/gpu_suite.log"
$PY benchmarks/bench_attention.py --device cuda --out-dir "$OUT" >"$OUT/gpu_bench_attention.log" 2>&1 || status=1
$PY benchmarks/bench_sine_embed.py --device cuda --out-dir "$OUT" >"$OUT/gpu_bench_sine.log" 2>&1 || status=1
$PY benchmarks/bench_model.py --device cuda --out-dir "$OUT" >"$OUT/gpu_bench_model.log" 2>&1 || status=1
tail -4 "$OUT/gpu_bench_attention.log" "$OUT/gpu_bench_sine.log" "$OUT/gpu_bench_model.log"

echo "== summary" | tee -a "$OUT/gpu_suite.log"
$PY benchmarks/summarize_targets.py "$OUT" 2>&1 | tee -a "$OUT/gpu_suite.log" || status=1
exit $status
