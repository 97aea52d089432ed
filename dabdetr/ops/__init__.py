"""The fused ops: DAB-DETR's modulated attention and anchor sine embedding, and Deformable DETR's
multi-scale deformable attention.

Each runs a fused C++ (CPU) or CUDA kernel when one serves the call and the PyTorch reference
(dabdetr.ops.reference) otherwise; `impl=` chooses per call, DABDETR_DISABLE_KERNELS=1 for the
whole process.

The bottom layer: imports nothing else of dabdetr.
"""

from dabdetr.ops.attention import modulated_attention
from dabdetr.ops.deformable_attention import multi_scale_deformable_attention
from dabdetr.ops.emulated_counters import emulated_counters
from dabdetr.ops.extension import CPU_ISA_LEVELS, kernel_info
from dabdetr.ops.sine_embed import anchor_sine_embed, modulated_anchor_sine_embed

__all__ = [
    "modulated_attention",
    "anchor_sine_embed",
    "modulated_anchor_sine_embed",
    "multi_scale_deformable_attention",
    "kernel_info",
    "CPU_ISA_LEVELS",
    "emulated_counters",
]
