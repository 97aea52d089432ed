"""dabdetr: DAB-DETR with fused kernels for its modulated attention and anchor sine embedding."""

from dabdetr import ops

__version__ = "0.1.0"

__all__ = ["ops", "__version__"]
