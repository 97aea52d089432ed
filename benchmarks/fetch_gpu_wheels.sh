#!/usr/bin/env bash
# Downloads, here (with network), the wheels the GPU machines lack into .whl/ (git-ignored), for
# the device tool to carry to a run of benchmarks/run_gpu_suite.sh: Python 3.12, x86-64 Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pycocotools==2.0.11
ls -l .whl
