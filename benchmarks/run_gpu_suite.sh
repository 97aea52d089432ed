#!/usr/bin/env bash
# The GPU run in one command, for the device tool's machines (torch with CUDA, nvcc, pytest and
# ninja installed, no network). Every phase writes its log under $OUT as it goes, so a run cut off
# at its time limit still returns what it did. Each phase has a time limit well inside the device
# tool's 10 minutes a call: `build tests` fits one call, `build bench model` another, `build tensor_core`
# a third, `build inference demo` a fourth, `build counters` a fifth.
#
#   bash benchmarks/run_gpu_suite.sh [--dry-run] [PHASE ...]
#
# Phases, in the order given (default: build tests bench):
#   build   setup.py build_ext --inplace with the CUDA kernels (MAX_JOBS = cores); stops the run at
#           the first compiler error, printing it. Every other phase needs it (same machine).
#   tests   the CUDA tests first (they stop the run if they fail), then the CPU tests of the ops, the
#           model, the losses and the data under that machine's torch.
#   tensor_core  the tensor-core attention kernels (not yet the default path): diagnose_attention.py
#           in bf16 and tf32 (where their outputs and gradients differ from fp64, by fragment residue),
#           their CUDA tests, bench_attention in bf16/fp16 with them and each forced key-split count
#           and in float32/tf32 at the target shape, and bench_model
#           at batch 8 with them (attention's share of the step), under $OUT/tensor_core. A phase of
#           its own, so a fault there cannot cost the other results.
#   bench   bench_attention, bench_sine_embed, bench_deformable_attention (JSON + markdown under $OUT),
#           then the targets.
#   model   bench_model: dab_detr_r50 at 800x1066, batch 2 and 8, fp32 and bf16 autocast.
#   inference  bench_inference: dab_detr_r50 at 800x1066, batch 1 and 8: eager (fp32, bf16 autocast),
#           torch.compile, ONNX Runtime (its CUDA provider where installed), Hugging Face.
#   demo    scripts/demo.sh on the GPU; metrics and pictures under $OUT/demo.
#   counters  Nsight Compute (where ncu is installed) on every kernel of scripts/profile_cuda_emulated.py's
#           calls, beside the CUDA emulator's counts of the same calls (its counting build, made here):
#           $OUT/counters/ncu_vs_emulator.md (scripts/compare_ncu_counts.py; docs/results/gpu_model.md).
# --dry-run checks the script on a machine without a GPU: CPU build (into $OUT/build), each phase's pytest command
# collecting its tests (paths and -k expressions; CI's own pytest run executes them, the emulated
# CUDA ones included), every benchmark at a tiny size on the CPU, and the demo for one short epoch.
#
# pycocotools is not on the GPU machines: `bash benchmarks/fetch_gpu_wheels.sh` here puts its
# wheel in .whl/, which the device tool carries (carry: [".whl"]); this script installs it.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
PHASES=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    build|tests|tensor_core|bench|model|inference|demo|counters) PHASES+=("$arg") ;;
    *) echo "unknown argument: $arg (phases: build tests tensor_core bench model inference demo counters;" \
            "--dry-run)"; exit 2 ;;
  esac
done
[ ${#PHASES[@]} -eq 0 ] && PHASES=(build tests bench)

OUT=${OUT:-benchmarks/results/gpu_run}
mkdir -p "$OUT"
LOG="$OUT/gpu_suite.log"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ $DRY_RUN = 1 ]; then
  DEVICE=cpu
  export DABDETR_BUILD_CUDA=0 CUDA_VISIBLE_DEVICES=""
else
  DEVICE=cuda
  export DABDETR_BUILD_CUDA=1
fi
status=0
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
[ $DRY_RUN = 1 ] && PYTEST+=(--collect-only)  # exits 5 where an expression selects no test

say() { echo "$*" | tee -a "$LOG"; }
# run NAME TIMEOUT_S CMD...: the command's output goes to $OUT/NAME.log; a failure is recorded.
run() {
  local name=$1 limit=$2
  shift 2
  local start=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  say "   $name: exit $rc in $(( $(date +%s) - start )) s"
  [ $rc -eq 0 ] || { tail -25 "$OUT/$name.log"; status=1; }
  return $rc
}

if [ $DRY_RUN = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
$PY -c "import pycocotools" 2>/dev/null || say "note: pycocotools missing; the tests that need it skip (run benchmarks/fetch_gpu_wheels.sh and carry .whl)"

say "== environment (dry run: $DRY_RUN)"
$PY - <<'PY' 2>&1 | tee -a "$LOG"
import datetime, torch
print("date", datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"))
name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", name)
PY
command -v nvcc >/dev/null && nvcc --version | tail -1 | tee -a "$LOG"

phase_build() {
  if [ $DRY_RUN = 0 ] && [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    export TORCH_CUDA_ARCH_LIST
  fi
  say "== build (CUDA: $DABDETR_BUILD_CUDA, archs ${TORCH_CUDA_ARCH_LIST:-none}, $MAX_JOBS jobs)"
  # The dry run builds beside the package, not into it: in CI another pytest worker imports it meanwhile.
  local where=(--inplace)
  [ $DRY_RUN = 1 ] && where=(--build-lib "$OUT/build/lib" --build-temp "$OUT/build/temp")
  if ! run build 420 $PY setup.py build_ext "${where[@]}"; then
    say "BUILD FAILED; first errors:"
    grep -m 20 -E "error|Error" "$OUT/build.log" | tee -a "$LOG"
    exit 1
  fi
  $PY -c "import dabdetr, sys; i = dabdetr.ops.kernel_info(); print(i); sys.exit(0 if i['cuda'] or '$DEVICE' == 'cpu' else 'no CUDA kernels')" \
    2>&1 | tee -a "$LOG" || exit 1
}

phase_tests() {
  say "== CUDA tests (the tensor-core kernels: phase tensor_core)"
  run tests_cuda 360 "${PYTEST[@]}" tests/test_cuda.py tests/test_attention.py \
    tests/test_sine_embed.py tests/test_deformable_attention.py -k "cuda and not tensor_core" -rs \
    --junitxml="$OUT/tests_cuda.xml"
  grep -E "passed|failed|^(FAILED|ERROR)" "$OUT/tests_cuda.log" | tail -30 | tee -a "$LOG"
  [ $status = 0 ] || { say "CUDA tests failed: stopping before the rest"; exit 1; }
  say "== the CPU tests of the ops, the model, the losses and the data"
  # Not the whole suite: it takes 13-15 minutes on 2 cores (these files 45 s), more than a phase's
  # limit; CI runs it all.
  run tests_all 300 "${PYTEST[@]}" tests/test_attention.py tests/test_sine_embed.py tests/test_deformable_attention.py \
    tests/test_model.py tests/test_dispatch.py tests/test_losses.py tests/test_data.py -k "not cuda" -rs \
    --junitxml="$OUT/tests_all.xml"
  grep -E "passed|failed|^(FAILED|ERROR)" "$OUT/tests_all.log" | tail -30 | tee -a "$LOG"
}

phase_tensor_core() {
  say "== tensor-core attention: tests, then benchmark with every key-split count ($DEVICE)"
  mkdir -p "$OUT/tensor_core"
  local dtypes=(bfloat16 tf32)
  [ $DRY_RUN = 1 ] && dtypes=(float32)
  for dtype in "${dtypes[@]}"; do
    run "diagnose_tensor_core_$dtype" 60 env DABDETR_ATTENTION_PATH=tensor_core $PY benchmarks/diagnose_attention.py \
      --device "$DEVICE" --dtype "$dtype"
    grep -E "BAD|worst|bad fraction|tolerance|Error" "$OUT/diagnose_tensor_core_$dtype.log" | head -40 | tee -a "$LOG"
  done
  run tests_tensor_core 200 "${PYTEST[@]}" tests/test_cuda.py -k "tensor_core" -rs \
    --junitxml="$OUT/tensor_core/tests.xml"
  grep -E "passed|failed|^(FAILED|ERROR)" "$OUT/tests_tensor_core.log" | tail -30 | tee -a "$LOG"
  local args=(--dtypes bfloat16,float16 --tensor-cores --sweep-splits --repeats 20)
  [ $DRY_RUN = 1 ] && args=(--quick --repeats 2)
  run bench_tensor_core 200 $PY benchmarks/bench_attention.py --device "$DEVICE" --out-dir "$OUT/tensor_core" "${args[@]}"
  tail -3 "$OUT/bench_tensor_core.log"
  # float32 with TF32 allowed, against float32's SDPA (its target), at the target shape only.
  args=(--dtypes float32,tf32 --tensor-cores --quick --repeats 20)
  [ $DRY_RUN = 1 ] && args=(--dtypes float32 --quick --repeats 2)
  run bench_tensor_core_tf32 100 $PY benchmarks/bench_attention.py --device "$DEVICE" --out-dir "$OUT/tensor_core/tf32" \
    "${args[@]}"
  tail -3 "$OUT/bench_tensor_core_tf32.log"
  local model=(--tensor-cores --batches 8)
  [ $DRY_RUN = 1 ] && model=(--preset demo --size 96x128 --batches 1 --repeats 1)
  run bench_model_tensor_core 150 $PY benchmarks/bench_model.py --device "$DEVICE" --out-dir "$OUT/tensor_core" "${model[@]}"
  tail -12 "$OUT/bench_model_tensor_core.log" | tee -a "$LOG"
  $PY benchmarks/summarize_targets.py "$OUT/tensor_core" 2>&1 | tee -a "$LOG"
}

phase_bench() {
  say "== op benchmarks ($DEVICE)"
  local quick=()
  [ $DRY_RUN = 1 ] && quick=(--quick --repeats 2)
  run bench_attention 300 $PY benchmarks/bench_attention.py --device "$DEVICE" --out-dir "$OUT" "${quick[@]}"
  tail -3 "$OUT/bench_attention.log"
  local sine=(--dtypes float32,bfloat16)
  [ $DRY_RUN = 1 ] && sine=(--dtypes float32 --repeats 2)  # the CPU kernels are fp32/fp64
  run bench_sine_embed 120 $PY benchmarks/bench_sine_embed.py --device "$DEVICE" --out-dir "$OUT" "${sine[@]}"
  tail -3 "$OUT/bench_sine_embed.log"
  local deformable=(--dtypes float32,bfloat16)
  [ $DRY_RUN = 1 ] && deformable=(--quick --repeats 2 --no-memory)
  run bench_deformable_attention 200 $PY benchmarks/bench_deformable_attention.py --device "$DEVICE" --out-dir "$OUT" \
    "${deformable[@]}"
  tail -3 "$OUT/bench_deformable_attention.log"
  $PY benchmarks/summarize_targets.py "$OUT" 2>&1 | tee -a "$LOG"
}

phase_model() {
  say "== model benchmark ($DEVICE)"
  local small=()
  [ $DRY_RUN = 1 ] && small=(--preset demo --size 96x128 --batches 1 --repeats 1)
  run bench_model 400 $PY benchmarks/bench_model.py --device "$DEVICE" --out-dir "$OUT" "${small[@]}"
  tail -12 "$OUT/bench_model.log" | tee -a "$LOG"
}

phase_inference() {
  say "== inference benchmark ($DEVICE)"
  # The AOTInductor export is compiled for the CPU: not a CUDA row.
  local args=(--runtimes "eager reference,eager kernel,torch.compile,onnxruntime,huggingface")
  [ $DRY_RUN = 1 ] && args=(--runtimes "eager reference,eager kernel,onnxruntime" --preset demo --size 96x128
                            --batches 1 --repeats 1)
  run bench_inference 420 $PY benchmarks/bench_inference.py --device "$DEVICE" --out-dir "$OUT" "${args[@]}"
  tail -14 "$OUT/bench_inference.log" | tee -a "$LOG"
}

phase_demo() {
  say "== demo ($DEVICE)"
  local short=()
  [ $DRY_RUN = 1 ] && short=(--set epochs=1 --set synthetic_train_images=16 --set synthetic_val_images=8)
  DABDETR_NO_VENV=1 DABDETR_OUT="$OUT/demo" run demo 540 bash scripts/demo.sh "${short[@]}"
  tail -5 "$OUT/demo.log" | tee -a "$LOG"
}

phase_counters() {
  say "== counters: the emulator's and Nsight Compute's ($DEVICE)"
  mkdir -p "$OUT/counters"
  local small=()
  [ $DRY_RUN = 1 ] && small=(--small)
  run counters_emulator_build 300 env COUNTERS=1 bash scripts/build_cuda_emulator.sh || return
  run counters_emulated 300 $PY scripts/profile_cuda_emulated.py "${small[@]}" --json "$OUT/counters/emulated.json" \
    --markdown "$OUT/counters/emulated.md" || return
  if [ $DRY_RUN = 1 ] || ! command -v ncu >/dev/null; then
    say "   ncu: not run (dry run, or no ncu on this machine)"
    return
  fi
  # ncu's CSV goes to stdout, the script's progress to stderr: both in the log, which the comparison reads.
  run counters_ncu 420 ncu --csv --page raw --print-kernel-base demangled --target-processes all \
    --metrics "$($PY scripts/compare_ncu_counts.py --metrics)" \
    $PY scripts/profile_cuda_emulated.py --target cuda --json "$OUT/counters/cuda_calls.json" || return
  run counters_compare 60 $PY scripts/compare_ncu_counts.py --ncu "$OUT/counters_ncu.log" \
    --emulated "$OUT/counters/emulated.json" --markdown "$OUT/counters/ncu_vs_emulator.md"
}

for phase in "${PHASES[@]}"; do "phase_$phase"; done
say "== done: status $status"
exit $status
