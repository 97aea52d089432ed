"""Builds the extension dabdetr._C.

CPU kernels always build. CUDA kernels build when torch has CUDA and nvcc is found:
DABDETR_BUILD_CUDA=auto (default) | 0 | 1 (1 fails loudly when it cannot).
TORCH_CUDA_ARCH_LIST defaults to the architectures we ship ("8.0;9.0"); no GPU needs to be visible.
"""

import glob
import os
import shutil

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    raise SystemExit(
        "dabdetr builds its extension against the torch of the environment it is installed into, and that "
        "environment has no torch. Install torch first (pip install torch), then dabdetr with "
        "`pip install --no-build-isolation ...` (without that flag pip builds in an isolated environment, "
        "which has no torch either)."
    ) from None

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def _cuda_requested():
    mode = os.environ.get("DABDETR_BUILD_CUDA", "auto").strip().lower()
    if mode not in ("auto", "0", "1"):
        raise RuntimeError(f"DABDETR_BUILD_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return False
    nvcc = cpp_extension.CUDA_HOME and os.path.exists(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    have = torch.version.cuda is not None and bool(nvcc)
    if mode == "1" and not have:
        raise RuntimeError(
            "DABDETR_BUILD_CUDA=1 but CUDA kernels cannot be built: "
            f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={cpp_extension.CUDA_HOME!r} "
            f"(nvcc on PATH: {shutil.which('nvcc')!r})"
        )
    return have


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def make_extension():
    with_cuda = _cuda_requested()
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cxx_flags = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"]
    define_macros = []
    extra = {"cxx": cxx_flags}
    extension = cpp_extension.CppExtension
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        sources += _sources("csrc/cuda/*.cpp") + _sources("csrc/cuda/*.cu")
        define_macros.append(("DABDETR_WITH_CUDA", None))
        cuda_archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        define_macros.append(("DABDETR_CUDA_ARCHS", f'"{cuda_archs}"'))
        extra["nvcc"] = ["-O3", "-lineinfo"]
        extension = cpp_extension.CUDAExtension
    return extension(
        name="dabdetr._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=["-fopenmp"],
    )


setup(
    ext_modules=[make_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
