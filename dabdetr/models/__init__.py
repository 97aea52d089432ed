"""The DAB-DETR model: its config and presets (config), the ResNet backbone, the sine position
encoding, the encoder/decoder (transformer), denoising queries, and the detector with its
post-processing.

May import: dabdetr.ops, dabdetr.box_ops. Never data, weights (loading and saving code),
training, evaluation, deployment or the CLI.
"""

from dabdetr.models.config import PRESETS, DABDETRConfig, preset
from dabdetr.models.detector import DABDETR, post_process

__all__ = ["DABDETR", "DABDETRConfig", "PRESETS", "preset", "post_process", "build_model"]


def build_model(config_or_preset="dab_detr_r50", **overrides):
    """DABDETR from a DABDETRConfig or a preset name, with config-field overrides."""
    if isinstance(config_or_preset, DABDETRConfig):
        return DABDETR(config_or_preset.replace(**overrides))
    return DABDETR(preset(config_or_preset, **overrides))
