#!/usr/bin/env bash
# The project's main command. Sets everything up (virtual environment, torch, the extension),
# then trains the demo DAB-DETR on the embedded synthetic shapes, evaluates it with COCOeval and
# writes the pictures: $OUT/curves.png (losses, AP), $OUT/category_ap.png (AP of each shape),
# $OUT/detections.png (held-out images),
# $OUT/metrics.json. Uses the GPU when torch sees one. Extra arguments go to `dabdetr train`.
# DABDETR_NO_VENV=1 skips the set-up and runs with the python3 at hand, whose torch must already
# see the extension built in place (the offline GPU machine: benchmarks/run_gpu_suite.sh demo).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${DABDETR_NO_VENV:-0}" = 1 ]; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  PY=${PYTHON:-python3}
else
  bash scripts/bootstrap.sh
  . "${VENV:-.venv}/bin/activate"
  PY=python
fi
OUT=${DABDETR_OUT:-outputs/demo}
start=$(date +%s)
$PY -m dabdetr train --preset demo --output-dir "$OUT" "$@"
echo "== demo finished in $(( $(date +%s) - start )) s"
echo "== metrics:    $OUT/metrics.json"
echo "== pictures:   $OUT/curves.png  $OUT/category_ap.png  $OUT/detections.png"
echo "== the model:  $OUT/model  (dabdetr predict $OUT/model your_image.png)"
