#!/usr/bin/env bash
# The project's main command. Sets everything up (virtual environment, torch, the extension),
# then trains the demo DAB-DETR on the embedded synthetic shapes, evaluates it with COCOeval and
# writes the pictures: $OUT/curves.png (losses, AP), $OUT/detections.png (held-out images),
# $OUT/metrics.json. Uses the GPU when torch sees one. Extra arguments go to `dabdetr train`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. "${VENV:-.venv}/bin/activate"
OUT=${DABDETR_OUT:-outputs/demo}
start=$(date +%s)
dabdetr train --preset demo --output-dir "$OUT" "$@"
echo "== demo finished in $(( $(date +%s) - start )) s"
echo "== metrics:    $OUT/metrics.json"
echo "== pictures:   $OUT/curves.png  $OUT/detections.png"
echo "== the model:  $OUT/model  (dabdetr predict $OUT/model your_image.png)"
