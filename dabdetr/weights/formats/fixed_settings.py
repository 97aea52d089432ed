"""What the official code, MMDetection and Hugging Face fix in their code instead of reading it
from a config or checkpoint: a model that differs there cannot be written in their formats
without computing something else once loaded."""

ANCHOR_TEMPERATURE = 10000.0  # the anchors' sine embedding (docs/checkpoints.md, pitfall 3)
# DAB-Deformable-DETR's position encoding (Deformable DETR's), whatever its args say.
DEFORMABLE_PE_TEMPERATURE = 10000.0


# The formats that hold DAB-Deformable-DETR: the official one (Hugging Face and MMDetection have
# no such model).
DEFORMABLE_FORMATS = ("official",)


def require_architecture(config, format_name):
    """Raises ValueError where format_name has no model of config's architecture."""
    if config.architecture == "dab_deformable_detr" and format_name not in DEFORMABLE_FORMATS:
        raise ValueError(f"the {format_name} format has no DAB-Deformable-DETR: write it in ours or the official one")


def require_fixed_settings(config, format_name):
    """Raises ValueError, naming the setting, where config differs from what format_name fixes."""
    require_architecture(config, format_name)
    if config.anchor_temperature != ANCHOR_TEMPERATURE:
        raise ValueError(f"the {format_name} format fixes the anchors' temperature at {ANCHOR_TEMPERATURE:g}; this "
                         f"model uses anchor_temperature={config.anchor_temperature} (e.g. the demo preset's 20)")
    temperatures = (config.pe_temperature_h, config.pe_temperature_w)
    if config.architecture == "dab_deformable_detr" and temperatures != (DEFORMABLE_PE_TEMPERATURE,) * 2:
        raise ValueError(f"the {format_name} format fixes DAB-Deformable-DETR's position encoding at temperature "
                         f"{DEFORMABLE_PE_TEMPERATURE:g}; this model uses {temperatures}")
