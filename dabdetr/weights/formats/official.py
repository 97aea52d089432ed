"""The official DAB-DETR checkpoint (IDEA-Research/DAB-DETR): {'model': state dict, 'args': Namespace}.
Names are ours but for the backbone prefix; its decoder registers the box head a second time."""

import argparse

from dabdetr.weights.formats.fixed_settings import require_fixed_settings
from dabdetr.weights.formats.renames import drop_shared_box_head, rename

RULES = [("backbone.body.", "backbone.0.body.")]


def from_official(state):
    state = drop_shared_box_head(state, "transformer.decoder.bbox_embed.", "bbox_embed.")
    return rename(state, RULES, to_ours=True)


def to_official_state_dict(model):
    """The model's weights under the official names (a checkpoint's 'model'); official_args gives its 'args'."""
    require_fixed_settings(model.config, "official")
    state = rename(model.state_dict(), RULES, to_ours=False)
    state.update({"transformer.decoder." + k: v for k, v in model.state_dict().items() if k.startswith("bbox_embed.")})
    return state


# The official command line's arguments that set what the weights cannot tell: theirs -> ours.
ARGS = {"dilation": "dilation", "pe_temperatureH": "pe_temperature_h", "pe_temperatureW": "pe_temperature_w",
        "random_refpoints_xy": "random_refpoints_xy", "nheads": "num_heads", "dropout": "dropout",
        "num_select": "num_select"}


def config_from_args(args):
    """ModelConfig fields from an official checkpoint's 'args' (a Namespace, a dict or None)."""
    if args is None:
        return {}
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    return {ours: args[theirs] for theirs, ours in ARGS.items() if theirs in args}


def official_args(config):
    """The 'args' an official checkpoint of a model with this config carries (config_from_args reads them)."""
    return argparse.Namespace(**{theirs: getattr(config, ours) for theirs, ours in ARGS.items()})
