#!/usr/bin/env bash
# The project's test command: a fresh virtual environment, the extension built from source with
# setup.py and with CMake (+ the CUDA compile check where nvcc exists), ruff, the release
# artifacts (sdist and wheel, each installed into a fresh environment), then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
CLEAR=${CLEAR:-1} bash scripts/bootstrap.sh
. "${VENV:-.venv}/bin/activate"
echo "== ruff"
ruff check .
bash scripts/check_cmake_build.sh
bash scripts/check_release.sh
python -m pytest -q tests "$@"
