#!/usr/bin/env bash
# Builds the release artifacts from this checkout and checks that they install and work in a
# fresh virtual environment: the sdist, then the wheel built from the unpacked sdist (what pip
# does when it installs the sdist, so a source file missing from the sdist fails the wheel's
# build here), and the wheel installed and run. The extension is compiled once.
# Expects the project's virtual environment to be active (torch, build); the fresh one gets the
# same torch version and the runtime dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
DIST=${DIST:-build-release/dist}
FRESH=${FRESH:-build-release/venv}
rm -rf "$DIST" "$FRESH"
TORCH_VERSION=$(python -c "import torch; print(torch.__version__.split('+')[0])")

echo "== the sdist, and the wheel built from it"
# Without --sdist or --wheel, build makes the sdist and then the wheel from its unpacked copy.
python -m build --no-isolation --outdir "$DIST" . >build-release.log 2>&1 || { tail -30 build-release.log; exit 1; }
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
value, locations, weights = torch.randn(1, 10, 2, 8), torch.rand(1, 3, 2, 2, 2, 2), torch.rand(1, 3, 2, 2, 2)
args = (value, torch.tensor([[2, 3], [2, 2]]), None, locations, weights)
torch.testing.assert_close(dabdetr.multi_scale_deformable_attention(*args, impl="kernel"),
                           dabdetr.multi_scale_deformable_attention(*args, impl="reference"))
print("   works:", dabdetr.__file__, "version", dabdetr.__version__, "CPU kernels", info["cpu_isa"])
PY
  )
}

echo "== install the wheel"
"$FRESH/bin/python" -m pip install -q "$DIST"/dabdetr-*.whl
smoke
