"""What the official code, MMDetection and Hugging Face fix in their code instead of reading it
from a config or checkpoint: a model that differs there cannot be written in their formats
without computing something else once loaded."""

ANCHOR_TEMPERATURE = 10000.0  # the anchors' sine embedding (docs/checkpoints.md, pitfall 3)


def require_fixed_settings(config, format_name):
    """Raises ValueError, naming the setting, where config differs from what format_name fixes."""
    if config.anchor_temperature != ANCHOR_TEMPERATURE:
        raise ValueError(f"the {format_name} format fixes the anchors' temperature at {ANCHOR_TEMPERATURE:g}; this "
                         f"model uses anchor_temperature={config.anchor_temperature} (e.g. the demo preset's 20)")
