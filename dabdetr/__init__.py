"""dabdetr: DAB-DETR with fused kernels for its modulated attention and anchor sine embedding."""

from dabdetr import ops
from dabdetr.models import DABDETR, DABDETRConfig, build_model, post_process, preset
from dabdetr.pretrained import from_pretrained, save_pretrained

__version__ = "0.1.0"

__all__ = ["ops", "DABDETR", "DABDETRConfig", "build_model", "preset", "post_process", "from_pretrained",
           "save_pretrained", "__version__"]
