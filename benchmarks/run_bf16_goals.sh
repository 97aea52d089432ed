#!/usr/bin/env bash
# The bfloat16 goals of docs/results/bf16.md measured on this CPU, in one command, for whichever
# kind it is: an AMX Xeon (its goals are what no session could measure yet) or a CPU with AVX-512
# BF16 and no AMX. Refuses to run on a CPU with neither. Writes under $OUT (default
# benchmarks/results/bf16_goals_<date>/, -2, -3 ... where taken):
#   cpu.txt                         lscpu and kernel_info()
#   inference_*.md|json             bench_inference.py, R50 at 800x1066, batch 1, every runtime and
#                                   precision interleaved
#   forward_profile_dab_detr_r50_*  profile_forward.py: the bf16 forward by kind of op (copies' share)
#   demo_step_*.md|json             bench_demo_step.py: the demo step, both precisions interleaved
#   demo_step_profile_*.md|json     profile_demo_step.py: the float32 step by kind of op (what bf16
#                                   could gain at most)
#   goals.md                        summarize_bf16_goals.py: each goal of this CPU's kind, met or missed
#
#   bash benchmarks/run_bf16_goals.sh     (8 minutes on a 2-core AVX-512 VM, the extension built)
# Run it alone on the machine: the timings are only comparable without other load.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! grep -qw -e amx_bf16 -e avx512_bf16 /proc/cpuinfo; then
  echo "this CPU has neither amx_bf16 nor avx512_bf16: no bfloat16 goal applies to it (lscpu | grep Flags)"
  exit 1
fi
RUN_NAME=bf16_goals
. benchmarks/cpu_run.sh  # $OUT, the set-up, cpu.txt and step
step bench_inference python benchmarks/bench_inference.py --device cpu --batches 1 --repeats 5 --out-dir "$OUT"
step profile_forward python benchmarks/profile_forward.py --out-dir "$OUT"
step bench_demo_step python benchmarks/bench_demo_step.py --out-dir "$OUT"
step profile_demo_step python benchmarks/profile_demo_step.py --steps 10 --out-dir "$OUT"
python benchmarks/summarize_bf16_goals.py "$OUT" --out "$OUT/goals.md"
echo "== results in $OUT: commit them under benchmarks/results/ and fill in docs/results/bf16.md"
