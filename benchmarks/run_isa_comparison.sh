#!/usr/bin/env bash
# The AVX2 and AVX-512 paths side by side on one AVX-512 CPU, in one command: what issue 28 still
# needs ("no slower and no worse on the AVX-512 machine"). Refuses to run on a CPU without
# AVX-512. Writes everything under $OUT (default
# benchmarks/results/isa_comparison_<date>/, -2, -3 ... where taken):
#   cpu.txt                       lscpu and kernel_info()
#   attention_*.md|json           bench_attention.py: the best kernels and "kernel avx2", same process
#   sine_embed_*.md|json          bench_sine_embed.py --cpu-isas avx2
#   avx2_reproduced/              bench_attention.py --quick with every library held to AVX2
#                                 (AVX2_ONLY below: an AVX2-only CPU reproduced), glibc's allocator
#                                 and --keep-memory: issue 28's targets on such a CPU
#   demo_step_profile_*           profile_demo_step.py, the best path, then with AVX2_ONLY
#   demo_seed42/, demo_seed2/     bash scripts/demo.sh on the best path, two seeds (25 minutes on 2 cores)
#
#   bash benchmarks/run_isa_comparison.sh [--no-demo]
# Run it alone on the machine: the timings are only comparable without other load.
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=1
for arg in "$@"; do
  case "$arg" in
    --no-demo) DEMO=0 ;;
    *) echo "unknown argument: $arg (--no-demo)"; exit 2 ;;
  esac
done
if ! grep -q avx512f /proc/cpuinfo; then
  echo "this CPU has no AVX-512: nothing to compare the AVX2 kernels with (lscpu | grep Flags)"
  exit 1
fi
RUN_NAME=isa_comparison
. benchmarks/cpu_run.sh  # $OUT, the set-up, cpu.txt and step
# Our kernels, torch's vectorized ops, the matrix products (MKL) and the convolutions (oneDNN).
AVX2_ONLY=(DABDETR_CPU_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2)
step bench_attention python benchmarks/bench_attention.py --device cpu --out-dir "$OUT"
step bench_attention_kept_memory python benchmarks/bench_attention.py --device cpu --keep-memory --quick \
  --out-dir "$OUT"
step bench_sine_embed python benchmarks/bench_sine_embed.py --device cpu --cpu-isas avx2 --out-dir "$OUT"
step attention_avx2_reproduced env "${AVX2_ONLY[@]}" python benchmarks/bench_attention.py --device cpu --quick \
  --out-dir "$OUT/avx2_reproduced"
step attention_avx2_reproduced_kept_memory env "${AVX2_ONLY[@]}" python benchmarks/bench_attention.py --device cpu \
  --quick --keep-memory --out-dir "$OUT/avx2_reproduced"
step profile_best python benchmarks/profile_demo_step.py --out-dir "$OUT"
step profile_avx2 env "${AVX2_ONLY[@]}" python benchmarks/profile_demo_step.py --out-dir "$OUT"
if [ $DEMO = 1 ]; then
  for seed in 42 2; do
    step "demo_seed$seed" env DABDETR_OUT="$OUT/demo_seed$seed" bash scripts/demo.sh --seed "$seed" --no-progress
  done
fi
echo "== results in $OUT: commit them under benchmarks/results/ and fill in docs/results/"
