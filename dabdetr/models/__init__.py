"""The models of the DAB-DETR family: their config and presets (config), the ResNet backbone, the
sine position encoding, DAB-DETR's encoder/decoder (transformer), denoising queries and detector
with its post-processing (detector), and DAB-Deformable-DETR's (deformable_transformer,
deformable_detector).

May import: dabdetr.ops, dabdetr.box_ops. Never data, weights (loading and saving code),
training, evaluation, deployment or the CLI.
"""

from dabdetr.models.config import PRESETS, DABDETRConfig, preset
from dabdetr.models.deformable_detector import DABDeformableDETR
from dabdetr.models.detector import DABDETR, post_process

__all__ = ["DABDETR", "DABDeformableDETR", "DABDETRConfig", "MODEL_CLASSES", "PRESETS", "preset", "post_process",
           "build_model"]

# The model class of each config.architecture.
MODEL_CLASSES = {"dab_detr": DABDETR, "dab_deformable_detr": DABDeformableDETR}


def build_model(config_or_preset="dab_detr_r50", **overrides):
    """The model (DABDETR or DABDeformableDETR, by config.architecture) of a DABDETRConfig or a
    preset name, with config-field overrides."""
    if isinstance(config_or_preset, DABDETRConfig):
        config = config_or_preset.replace(**overrides)
    else:
        config = preset(config_or_preset, **overrides)
    return MODEL_CLASSES[config.architecture](config)
