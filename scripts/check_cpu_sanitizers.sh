#!/usr/bin/env bash
# The CPU kernels under AddressSanitizer and UBSan: the extension dabdetr._C built through CMake
# with -fsanitize=address,undefined, put beside a copy of the Python package, and the CPU op tests
# (small shapes: values, gradients, gradcheck, opcheck, bad inputs) run against it with the
# sanitizer runtimes preloaded. Any finding fails the script. Expects the project's virtual
# environment to be active.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-cpu-sanitizers}
SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
echo "== the CPU kernels with $SAN"
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDABDETR_CUDA_COMPILE_CHECK=OFF \
  -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
  -DPython_EXECUTABLE="$(command -v python)" -DCMAKE_CXX_FLAGS="$SAN" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" >"$BUILD.log" 2>&1 || { cat "$BUILD.log"; exit 1; }
cmake --build "$BUILD" -j"$(nproc)" >>"$BUILD.log" 2>&1 || { tail -30 "$BUILD.log"; exit 1; }
rm -rf "$BUILD/python" && mkdir -p "$BUILD/python"
cp -r dabdetr "$BUILD/python/"
find "$BUILD/python/dabdetr" -name '*.so' -delete
cp "$BUILD"/_C*.so "$BUILD/python/dabdetr/"
PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
# Python and torch are not instrumented: their allocations that live to the exit are not ours.
export LD_PRELOAD="$PRELOAD" ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 PYTHONPATH="$PWD/$BUILD/python" \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# The instrumented extension is the one imported (run from elsewhere: python puts its cwd first).
PACKAGE="$PWD/$BUILD/python/"
(cd / && python -c "import dabdetr._C as e; assert e.__file__.startswith('$PACKAGE'), e.__file__")
pytest -q -p no:cacheprovider -k "cpu" tests/test_attention.py tests/test_sine_embed.py tests/test_errors.py \
  tests/test_deformable_attention.py
echo "== CPU kernels: no sanitizer findings"
