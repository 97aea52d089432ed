"""The DAB-DETR model: config and presets, backbone, encoder/decoder, detector."""

from dabdetr.models.config import PRESETS, DABDETRConfig, preset
from dabdetr.models.detector import DABDETR, post_process

__all__ = ["DABDETR", "DABDETRConfig", "PRESETS", "preset", "post_process", "build_model"]


def build_model(config_or_preset="dab_detr_r50", **overrides):
    """DABDETR from a DABDETRConfig or a preset name, with config-field overrides."""
    if isinstance(config_or_preset, DABDETRConfig):
        return DABDETR(config_or_preset.replace(**overrides))
    return DABDETR(preset(config_or_preset, **overrides))
