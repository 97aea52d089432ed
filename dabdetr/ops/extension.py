"""Loading of the compiled extension dabdetr._C (and of the CUDA emulator's op library, where it
was built) and the choice, per call, of kernel or reference.

The package works without the extension: every op then runs its PyTorch reference, and one
warning says why (extension missing, or DABDETR_DISABLE_KERNELS=1). impl="cuda_emulated" runs
the CUDA kernels on CPU tensors in the CUDA emulator (scripts/build_cuda_emulator.sh builds it
into the package as _cuda_emulated.so; docs/ops.md, "The CUDA emulator"). Its counting build
(_cuda_emulated_counted.so, op library dabdetr_emulated_counted) serves those calls inside
dabdetr.ops.emulated_counters() (docs/results/gpu_model.md).
"""

import os
import warnings

import torch

DISABLE_ENV = "DABDETR_DISABLE_KERNELS"
IMPLS = ("auto", "reference", "kernel", "cuda_emulated")
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMULATOR_LIBRARY = os.path.join(_PACKAGE_DIR, "_cuda_emulated.so")
COUNTED_EMULATOR_LIBRARY = os.path.join(_PACKAGE_DIR, "_cuda_emulated_counted.so")


def _load():
    setting = os.environ.get(DISABLE_ENV, "")
    if setting not in ("", "0"):
        return None, f"disabled by {DISABLE_ENV}={setting}"
    try:
        from dabdetr import _C
    except ImportError as error:
        return None, f"the extension dabdetr._C could not be imported ({error})"
    return _C, None


def _load_emulator(path=EMULATOR_LIBRARY, library="dabdetr_emulated", build="bash scripts/build_cuda_emulator.sh"):
    """The CUDA kernels' limits (csrc/cuda/launch.h) if the CUDA emulator's op library at `path`
    (`library`) is loaded, else None."""
    if not os.path.exists(path):
        return None
    try:
        torch.ops.load_library(path)
        limits = getattr(torch.ops, library).limits()
    except (OSError, RuntimeError, AttributeError) as error:
        warnings.warn(f"dabdetr: the CUDA emulator at {path} does not load ({error}); rebuild it with {build}",
                      RuntimeWarning, stacklevel=2)
        return None
    names = ("cuda_max_head_dim", "cuda_max_attention_rows", "deformable_max_levels", "cuda_deformable_max_head_dim",
             "cuda_deformable_head_dim_step")
    return dict(zip(names, limits))


_C, _UNAVAILABLE = _load()
BUILD_INFO = _C.build_info() if _C is not None else {}
_PLAIN_LIMITS = _load_emulator()
_COUNTED_LIMITS = _load_emulator(COUNTED_EMULATOR_LIBRARY, "dabdetr_emulated_counted",
                                 "COUNTERS=1 bash scripts/build_cuda_emulator.sh")
_EMULATOR = _PLAIN_LIMITS is not None
COUNTED_EMULATOR = _COUNTED_LIMITS is not None  # on its own too: the GPU suite builds only this one
# The emulated kernels have the CUDA kernels' limits (both builds: the same kernels).
EMULATOR_LIMITS = _PLAIN_LIMITS or _COUNTED_LIMITS
_emulated_library = "dabdetr_emulated"  # what impl="cuda_emulated" calls
# The dtypes each backend's kernels serve, as the extension reports them.
_KERNEL_DTYPES = {device: tuple(getattr(torch, name) for name in BUILD_INFO.get(f"{device}_dtypes", ()))
                  for device in ("cpu", "cuda")}
if _C is None:
    warnings.warn(
        f"dabdetr: fused kernels unavailable, {_UNAVAILABLE}; all ops use the PyTorch reference",
        RuntimeWarning,
        stacklevel=2,
    )


def _no_kernel_reason(device, dtype):
    if _C is None:
        return _UNAVAILABLE
    if device.type == "cuda" and not BUILD_INFO.get("cuda"):
        return "dabdetr._C was built without CUDA kernels"
    if dtype not in _KERNEL_DTYPES.get(device.type, ()):
        return f"no kernel for {dtype} on {device.type}"
    return None


def kernel_ops(impl, op_name, device, dtype, unsupported=None):
    """The op library whose kernel runs `op_name` for tensors on `device` of `dtype`
    (torch.ops.dabdetr or, with impl="cuda_emulated", torch.ops.dabdetr_emulated), or None for
    the reference.

    impl "reference" never runs a kernel, "auto" does when one exists, "kernel" must (or raises),
    "cuda_emulated" runs the emulated CUDA kernel (CPU tensors; raises when it cannot).
    `unsupported(cuda)`: why the kernel cannot serve this particular call, or None; cuda says
    whether the CUDA kernels' limits apply.
    """
    if impl not in IMPLS:
        raise ValueError(f"{op_name}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return None
    if impl == "cuda_emulated":
        counting = _emulated_library == "dabdetr_emulated_counted"  # only inside emulated_counters()
        reason = (None if (COUNTED_EMULATOR if counting else _EMULATOR)
                  else "the CUDA emulator is not built (bash scripts/build_cuda_emulator.sh)")
        if reason is None and device.type != "cpu":
            reason = f"the emulated CUDA kernels run on CPU tensors, got {device.type} ones"
        reason = reason or (unsupported(True) if unsupported else None)
        if reason is not None:
            raise RuntimeError(f"{op_name}: impl='cuda_emulated' but {reason}")
        return getattr(torch.ops, _emulated_library)
    reason = _no_kernel_reason(device, dtype) or (unsupported(device.type == "cuda") if unsupported else None)
    if reason is None:
        return torch.ops.dabdetr
    if impl == "kernel":
        raise RuntimeError(f"{op_name}: impl='kernel' but {reason}")
    return None


def count_emulated_calls(on):
    """Routes impl="cuda_emulated" calls to the counting build (on) or back to the plain one;
    dabdetr.ops.emulated_counters() is the way to use it. Counting does not nest."""
    global _emulated_library
    if on and _emulated_library == "dabdetr_emulated_counted":
        raise RuntimeError("emulated_counters: already counting (the blocks do not nest)")
    _emulated_library = "dabdetr_emulated_counted" if on else "dabdetr_emulated"


def op_libraries():
    """The op libraries loaded ("dabdetr", "dabdetr_emulated", "dabdetr_emulated_counted"): each
    gets the same fake and autograd registrations."""
    loaded = (("dabdetr", _C is not None), ("dabdetr_emulated", _EMULATOR),
              ("dabdetr_emulated_counted", COUNTED_EMULATOR))
    return [name for name, present in loaded if present]


def last_dim_contiguous(t):
    """t, or a copy of it whose last dim is contiguous: the kernels read feature rows in place, so
    views straight from a Linear (view + transpose) pass as they are; only a tensor whose features
    are themselves strided is copied."""
    if t is None or t.shape[-1] <= 1 or t.stride(-1) == 1:
        return t
    return t.contiguous()


def check_floating_tensors(op_name, named):
    """Each of named ({name: tensor}, the first the one the others are compared with) is a floating
    Tensor of the first's dtype and device; the error names the op and the argument."""
    first_name, first = next(iter(named.items()))
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op_name}: {name} must be a Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{op_name}: {name} must be a floating tensor, got {t.dtype}")
        if t.dtype != first.dtype:
            raise TypeError(f"{op_name}: {name} has dtype {t.dtype} but {first_name} has {first.dtype}")
        if t.device != first.device:
            raise ValueError(f"{op_name}: {name} is on {t.device} but {first_name} is on {first.device}")


def no_double_backward(op_name):
    """Autograd formula for a kernel's backward op: first derivatives only."""

    def backward(ctx, *grads):
        raise RuntimeError(
            f"double backward through the fused {op_name} kernel is not supported; "
            "use impl='reference' where second derivatives are needed"
        )

    return backward


# The CPU kernels' instruction-set levels, lowest first (csrc/cpu/kernels.h's Isa):
# DABDETR_CPU_ISA names one to cap the level at; avx512_bf16 and amx_bf16 differ from avx512 only
# in the attention of bfloat16 inputs (bf16 dot products; their products in AMX tiles).
CPU_ISA_LEVELS = ("generic", "avx2", "avx512", "avx512_bf16", "amx_bf16")


def kernel_info():
    """What the extension provides: a dict with keys

    extension_loaded (bool), unavailable_reason (str or None), cpu (bool: CPU kernels),
    cpu_isa (instruction set the CPU kernels run with now, one of CPU_ISA_LEVELS: "generic",
    "avx2", "avx512", "avx512_bf16" (the attention of bfloat16 inputs in bf16 dot products) or
    "amx_bf16" (those products in AMX tiles): the best this CPU has, capped by DABDETR_CPU_ISA,
    which is read on every call), cpu_dtypes and cuda_dtypes (the dtypes
    their kernels serve, e.g. "float32"), cuda (bool: CUDA kernels), cuda_archs (list of str),
    cuda_version (str or None), cuda_max_head_dim and cuda_max_attention_rows (the CUDA
    kernels' limits, with CUDA only), cuda_attention_paths (["simt", "tensor_core"]),
    cuda_attention_default_path (the one used unless DABDETR_ATTENTION_PATH says otherwise) and
    cuda_tensor_core_dtypes (the tensor-core path's: float32 only where TF32 is allowed; with CUDA
    only), deformable_max_levels (the deformable attention kernels' most levels),
    cuda_deformable_max_head_dim and cuda_deformable_head_dim_step (the head dims its CUDA kernels
    serve: multiples of the step up to the max; with CUDA only), cuda_emulated (bool: the CUDA
    emulator's ops are loaded, impl="cuda_emulated"), cuda_emulated_counted (bool: its counting
    build is loaded too, for emulated_counters()),
    torch_version (torch the extension was built against), runtime_torch_version.
    """
    info = {
        "extension_loaded": _C is not None,
        "unavailable_reason": _UNAVAILABLE,
        "cpu": False,
        "cpu_isa": None,
        "cpu_dtypes": [],
        "cuda_dtypes": [],
        "cuda": False,
        "cuda_archs": [],
        "cuda_version": None,
        "torch_version": None,
    }
    info.update(BUILD_INFO)
    if _C is not None:
        info["cpu_isa"] = _C.cpu_isa()
    info["cuda_emulated"] = _EMULATOR
    info["cuda_emulated_counted"] = COUNTED_EMULATOR
    info["runtime_torch_version"] = torch.__version__
    return info
