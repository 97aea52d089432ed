#!/usr/bin/env bash
# Sets up the virtual environment $VENV (default .venv; CLEAR=1 recreates it from scratch):
# the pinned CPU torch unless the environment already has one, then dabdetr built from source
# with its extension. Fails if the extension did not build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
TORCH_SPEC=${DABDETR_TORCH_SPEC:-torch==2.13.0}

if [ "${CLEAR:-0}" = 1 ] || [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV"
  python3 -m venv --clear "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q ninja numpy build wheel "setuptools>=77" ruff import-linter
if ! python -c "import torch" 2>/dev/null; then
  echo "== installing $TORCH_SPEC"
  python -m pip install -q "$TORCH_SPEC"
fi
echo "== building dabdetr (torch $(python -c 'import torch; print(torch.__version__)'))"
python -m pip install -q --no-build-isolation -e ".[test,tensorboard,export]"
python - <<'PY'
import sys
import dabdetr

info = dabdetr.ops.kernel_info()
print("== kernels:", info)
if not info["extension_loaded"]:
    sys.exit(f"dabdetr._C did not build or load: {info['unavailable_reason']}")
PY
