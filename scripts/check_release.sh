#!/usr/bin/env bash
# Builds the release artifacts from this checkout and checks that each installs and works in a
# fresh virtual environment: the sdist (python -m build --sdist), installed from source with
# --no-build-isolation, and the wheel (python -m build --wheel). A source file missing from the
# sdist makes its install fail here. Expects the project's virtual environment to be active
# (torch, build); the fresh one gets the same torch version and the runtime dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
DIST=${DIST:-build-release/dist}
FRESH=${FRESH:-build-release/venv}
rm -rf "$DIST" "$FRESH"
TORCH_VERSION=$(python -c "import torch; print(torch.__version__.split('+')[0])")

echo "== sdist and wheel"
python -m build --sdist --no-isolation --outdir "$DIST" . >build-release.log 2>&1 || { tail -30 build-release.log; exit 1; }
python -m build --wheel --no-isolation --outdir "$DIST" . >>build-release.log 2>&1 || { tail -30 build-release.log; exit 1; }
ls -l "$DIST"

echo "== a fresh environment with torch==$TORCH_VERSION"
python -m venv "$FRESH"
"$FRESH/bin/python" -m pip install -q "torch==$TORCH_VERSION" "setuptools>=77" wheel ninja

smoke() {
  (cd /tmp && "$OLDPWD/$FRESH/bin/python" - <<'PY'
import torch
import dabdetr
from dabdetr.ops import modulated_attention

info = dabdetr.ops.kernel_info()
assert info["extension_loaded"] and info["cpu"], info
q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
kernel = modulated_attention(q, q, k, k, v, impl="kernel")
torch.testing.assert_close(kernel, modulated_attention(q, q, k, k, v, impl="reference"))
print("   works:", dabdetr.__file__, "version", dabdetr.__version__, "CPU kernels", info["cpu_isa"])
PY
  )
}

echo "== install the sdist (compiles the extension from its sources)"
"$FRESH/bin/python" -m pip install -q --no-build-isolation "$DIST"/dabdetr-*.tar.gz
smoke
"$FRESH/bin/python" -m pip uninstall -q -y dabdetr
echo "== install the wheel"
"$FRESH/bin/python" -m pip install -q "$DIST"/dabdetr-*.whl
smoke
