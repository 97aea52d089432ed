"""The precision a model runs in (amp): float32, or autocast to bfloat16 / float16, the same
for training, evaluation and eager prediction; and a warning where a CPU would run it far slower."""

import functools
import logging
from contextlib import nullcontext

import torch

logger = logging.getLogger(__name__)

AMP_MODES = ("off", "bf16", "fp16")  # the model's precision: float32, or autocast to bfloat16 / float16
# amp -> (the dtype, what a CPU needs for oneDNN to compute its convolutions in it)
CPU_16_BIT = {"bf16": ("bfloat16", "AVX-512 or AMX"), "fp16": ("float16", "AVX-512 FP16 or AMX-FP16")}


def check_amp(amp):
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")


def autocast_context(device, amp):
    """torch.autocast to bfloat16 / float16 on device's type for amp "bf16" / "fp16"; nothing for
    "off". On a CPU without 16-bit convolutions it warns (once per mode) that the model will run
    far slower than in float32."""
    check_amp(amp)
    if amp != "off" and device.type == "cpu":
        warn_if_cpu_lacks_16_bit(amp)
    return traced_autocast(device, amp)


def traced_autocast(device, amp):
    """autocast_context without the check and the warning: what a traced graph (torch.compile,
    torch.export) runs in, with nothing for Dynamo to break its graph on."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def cpu_has_16_bit_convolutions(amp):
    """Whether oneDNN computes this CPU's convolutions in amp's dtype; True where torch cannot tell."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        return bool(getattr(torch.ops.mkldnn, f"_is_mkldnn_{amp}_supported")())
    except (AttributeError, RuntimeError):  # private helpers: a torch without them says nothing
        return True


@functools.cache
def warn_if_cpu_lacks_16_bit(amp):
    if not cpu_has_16_bit_convolutions(amp):
        # Measured: a demo training step 3.8 s in bf16 against 0.27 in float32 with oneDNN held
        # to AVX2, 4.2 s in fp16 on an AVX-512 CPU without FP16 (docs/results/training.md).
        dtype, needs = CPU_16_BIT[amp]
        logger.warning("amp=%s on a CPU without %s convolutions (oneDNN needs %s): the model runs about 14x slower "
                       "than in float32; use amp=off on this machine", amp, dtype, needs)
