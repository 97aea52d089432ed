"""The official checkpoints (IDEA-Research/DAB-DETR): {'model': state dict, 'args': Namespace}, of
DAB-DETR and of DAB-Deformable-DETR. Names are ours but for the backbone prefix; the decoder
registers the box heads a second time (transformer.decoder.bbox_embed: the one of DAB-DETR, the
per-layer ones of DAB-Deformable-DETR)."""

import argparse

from dabdetr.weights.formats.fixed_settings import require_fixed_settings
from dabdetr.weights.formats.renames import drop_shared_box_head, rename

RULES = [("backbone.body.", "backbone.0.body.")]
DEFORMABLE_KEY = "transformer.level_embed"  # a DAB-Deformable-DETR checkpoint's, not DAB-DETR's


def from_official(state):
    state = drop_shared_box_head(state, "transformer.decoder.bbox_embed.", "bbox_embed.")
    return rename(state, RULES, to_ours=True)


def to_official_state_dict(model):
    """The model's weights under the official names (a checkpoint's 'model'); official_args gives its 'args'."""
    require_fixed_settings(model.config, "official")
    config = model.config
    if config.architecture == "dab_deformable_detr":
        if config.two_stage:
            raise ValueError("the official code's two-stage path does not run: write a two-stage DAB-Deformable-DETR "
                             "in our format")
        if config.input_proj_kernel_size != 1:
            kernel = config.input_proj_kernel_size
            raise ValueError(f"the official code's input projections are 1x1 convolutions; this model's are "
                             f"{kernel}x{kernel}: write it in our format")
    state = rename(model.state_dict(), RULES, to_ours=False)
    state.update({"transformer.decoder." + k: v for k, v in model.state_dict().items() if k.startswith("bbox_embed.")})
    return state


# The official command line's arguments that set what the weights cannot tell: theirs -> ours.
ARGS = {"dilation": "dilation", "pe_temperatureH": "pe_temperature_h", "pe_temperatureW": "pe_temperature_w",
        "random_refpoints_xy": "random_refpoints_xy", "nheads": "num_heads", "dropout": "dropout",
        "num_select": "num_select"}
# DAB-Deformable-DETR's. Its code ignores the temperatures (Deformable DETR's encoding at 10000) and
# num_select (its post-processing keeps 100): those come from the preset's settings, not args.
DEFORMABLE_ARGS = {"dilation": "dilation", "random_refpoints_xy": "random_refpoints_xy", "nheads": "num_heads",
                   "dropout": "dropout", "num_feature_levels": "num_feature_levels", "enc_n_points": "encoder_points",
                   "dec_n_points": "decoder_points", "two_stage": "two_stage", "num_queries": "num_queries"}


def config_from_args(args, deformable=False):
    """ModelConfig fields from an official checkpoint's 'args' (a Namespace, a dict or None)."""
    if args is None:
        return {}
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    names = DEFORMABLE_ARGS if deformable else ARGS
    return {ours: args[theirs] for theirs, ours in names.items() if theirs in args}


def official_args(config):
    """The 'args' an official checkpoint of a model with this config carries (config_from_args
    reads them; the official code builds the model from them)."""
    if config.architecture == "dab_deformable_detr":
        sizes = {"modelname": "dab_deformable_detr", "backbone": config.backbone, "hidden_dim": config.hidden_dim,
                 "dim_feedforward": config.ffn_dim, "enc_layers": config.num_encoder_layers,
                 "dec_layers": config.num_decoder_layers, "num_patterns": config.num_patterns,
                 "transformer_activation": "relu"}
        read = {theirs: getattr(config, ours) for theirs, ours in DEFORMABLE_ARGS.items()}
        return argparse.Namespace(**sizes, **read)
    return argparse.Namespace(**{theirs: getattr(config, ours) for theirs, ours in ARGS.items()})
