#!/usr/bin/env bash
# The project's main command. Sets everything up (virtual environment, torch, the extension) and
# runs the op benchmarks on this machine's CPU (and GPU, if there is one), writing tables under
# benchmarks/results/. (It will train and evaluate the demo detector once the trainer lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. "${VENV:-.venv}/bin/activate"
OUT=${DABDETR_OUT:-outputs/benchmarks}
python benchmarks/bench_attention.py --device cpu --out-dir "$OUT"
python benchmarks/bench_sine_embed.py --device cpu --out-dir "$OUT"
if python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  python benchmarks/bench_attention.py --device cuda --out-dir "$OUT"
  python benchmarks/bench_sine_embed.py --device cuda --out-dir "$OUT"
fi
echo "== results: $OUT/*.md"
