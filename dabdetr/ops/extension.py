"""Loading of the compiled extension dabdetr._C and the choice, per call, of kernel or reference.

The package works without the extension: every op then runs its PyTorch reference, and one
warning says why (extension missing, or DABDETR_DISABLE_KERNELS=1).
"""

import os
import warnings

import torch

DISABLE_ENV = "DABDETR_DISABLE_KERNELS"
IMPLS = ("auto", "reference", "kernel")



def _load():
    setting = os.environ.get(DISABLE_ENV, "")
    if setting not in ("", "0"):
        return None, f"disabled by {DISABLE_ENV}={setting}"
    try:
        from dabdetr import _C
    except ImportError as error:
        return None, f"the extension dabdetr._C could not be imported ({error})"
    return _C, None


_C, _UNAVAILABLE = _load()
BUILD_INFO = _C.build_info() if _C is not None else {}
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


def use_kernel(impl, op_name, device, dtype, unsupported=None):
    """Whether `op_name` runs its fused kernel for tensors on `device` of `dtype`.

    impl "reference" never does, "auto" does when a kernel exists, "kernel" must (or raises).
    `unsupported`: why the kernel cannot serve this particular call (None: it can).
    """
    if impl not in IMPLS:
        raise ValueError(f"{op_name}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "reference":
        return False
    reason = _no_kernel_reason(device, dtype) or unsupported
    if reason is None:
        return True
    if impl == "kernel":
        raise RuntimeError(f"{op_name}: impl='kernel' but {reason}")
    return False


def no_double_backward(op_name):
    """Autograd formula for a kernel's backward op: first derivatives only."""

    def backward(ctx, *grads):
        raise RuntimeError(
            f"double backward through the fused {op_name} kernel is not supported; "
            "use impl='reference' where second derivatives are needed"
        )

    return backward


def kernels_loaded():
    return _C is not None


def kernel_info():
    """What the extension provides: a dict with keys

    extension_loaded (bool), unavailable_reason (str or None), cpu (bool: CPU kernels),
    cpu_isa (instruction set the CPU kernels run with), cpu_dtypes and cuda_dtypes (the dtypes
    their kernels serve, e.g. "float32"), cuda (bool: CUDA kernels), cuda_archs (list of str),
    cuda_version (str or None), cuda_max_head_dim and cuda_max_attention_rows (the CUDA
    kernels' limits, with CUDA only), cuda_attention_paths (["simt", "tensor_core"]),
    cuda_attention_default_path (the one used unless DABDETR_ATTENTION_PATH says otherwise) and
    cuda_tensor_core_dtypes (the tensor-core path's: float32 only where TF32 is allowed; with CUDA
    only), torch_version (torch the extension was built against), runtime_torch_version.
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
    info["runtime_torch_version"] = torch.__version__
    return info
