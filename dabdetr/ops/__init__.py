"""The two fused ops of DAB-DETR: modulated attention and the anchor sine embedding.

Each runs a fused C++ (CPU) or CUDA kernel when one serves the call and the PyTorch reference
(dabdetr.ops.reference) otherwise; `impl=` chooses per call, DABDETR_DISABLE_KERNELS=1 for the
whole process.

The bottom layer: imports nothing else of dabdetr.
"""

from dabdetr.ops.attention import modulated_attention
from dabdetr.ops.extension import kernel_info
from dabdetr.ops.sine_embed import anchor_sine_embed, modulated_anchor_sine_embed

__all__ = ["modulated_attention", "anchor_sine_embed", "modulated_anchor_sine_embed", "kernel_info"]
