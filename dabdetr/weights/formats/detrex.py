"""detrex's checkpoints (IDEA-Research/detrex; detectron2's checkpointer: {'model': state dict,
...}) of DAB-DETR and DAB-Deformable-DETR, 80 contiguous classes, read only. Their layers are
detrex's generic ones (attentions.{k}, ffns.0.layers and norms.{k} in each layer's operation
order), the backbone detectron2's ResNet (stem, res2..res5, conv{k}.norm, shortcut), and
DAB-Deformable-DETR's input projections a ChannelMapper neck (convs, then extra_convs). The heads
are registered a second time under transformer.decoder (the box heads; two-stage, the class heads
too)."""

from dabdetr.weights.formats.renames import drop_shared_box_head, rename

# detectron2's ResNet; its stage res{s} is torchvision's layer{s - 1} (the "s" offset below).
BACKBONE_RULES = [
    ("backbone.body.bn1.", "backbone.stem.conv1.norm."),
    ("backbone.body.conv1.", "backbone.stem.conv1."),
    ("backbone.body.layer{s}.{i}.downsample.1.", "backbone.res{s}.{i}.shortcut.norm."),
    ("backbone.body.layer{s}.{i}.downsample.0.", "backbone.res{s}.{i}.shortcut."),
    ("backbone.body.layer{s}.{i}.bn{k}.", "backbone.res{s}.{i}.conv{k}.norm."),
    ("backbone.body.layer{s}.{i}.conv{k}.", "backbone.res{s}.{i}.conv{k}."),
]
OFFSETS = {"s": -1}


def _feed_forward(prefix, activation):
    """FFN: layers.0 = (Linear, activation, Dropout), layers.1 = Linear."""
    rules = [(f"{prefix}.linear1.", f"{prefix}.ffns.0.layers.0.0."),
             (f"{prefix}.linear2.", f"{prefix}.ffns.0.layers.1.")]
    return rules + ([(f"{prefix}.activation.", f"{prefix}.ffns.0.layers.0.1.")] if activation else [])


def _norms(prefix, ours):
    """norms.{k}, in the layer's operation order, to our (the official) names."""
    return [(f"{prefix}.{name}.", f"{prefix}.norms.{k}.") for k, name in enumerate(ours)]


_ENC, _DEC = "transformer.encoder.layers.{i}", "transformer.decoder.layers.{i}"
_CONDITIONAL = {"qcontent_proj": "query_content_proj", "qpos_proj": "query_pos_proj", "kcontent_proj":
                "key_content_proj", "kpos_proj": "key_pos_proj", "v_proj": "value_proj"}

# DAB-DETR (projects/dab_detr): PReLU feed-forwards, conditional self- and cross-attention.
DAB_DETR_RULES = [
    (f"{_ENC}.self_attn.", f"{_ENC}.attentions.0.attn."),
    *_feed_forward(_ENC, activation=True),
    *_norms(_ENC, ("norm1", "norm2")),
    *[(f"{_DEC}.sa_{ours}.", f"{_DEC}.attentions.0.{theirs}.") for ours, theirs in _CONDITIONAL.items()],
    (f"{_DEC}.self_attn.out_proj.", f"{_DEC}.attentions.0.out_proj."),
    *[(f"{_DEC}.ca_{ours}.", f"{_DEC}.attentions.1.{theirs}.")
      for ours, theirs in {**_CONDITIONAL, "qpos_sine_proj": "query_pos_sine_proj"}.items()],
    (f"{_DEC}.cross_attn.out_proj.", f"{_DEC}.attentions.1.out_proj."),
    *_feed_forward(_DEC, activation=True),
    *_norms(_DEC, ("norm1", "norm2", "norm3")),
    ("transformer.decoder.norm.", "transformer.decoder.post_norm_layer."),
]

# DAB-Deformable-DETR (projects/dab_deformable_detr): deformable attention, ReLU feed-forwards,
# the decoder's norms in the official code's odd order (norm2 after self-attention). The extra
# levels' convolutions follow the backbone levels' ("e": offset by their count).
DEFORMABLE_RULES = [
    ("input_proj.{l}.0.", "neck.convs.{l}.conv."),
    ("input_proj.{l}.1.", "neck.convs.{l}.norm."),
    ("input_proj.{e}.0.", "neck.extra_convs.{e}.conv."),
    ("input_proj.{e}.1.", "neck.extra_convs.{e}.norm."),
    ("transformer.level_embed", "transformer.level_embeds"),
    (f"{_ENC}.self_attn.", f"{_ENC}.attentions.0."),
    *_feed_forward(_ENC, activation=False),
    *_norms(_ENC, ("norm1", "norm2")),
    (f"{_DEC}.self_attn.", f"{_DEC}.attentions.0.attn."),
    (f"{_DEC}.cross_attn.", f"{_DEC}.attentions.1."),
    *_feed_forward(_DEC, activation=False),
    *_norms(_DEC, ("norm2", "norm1", "norm3")),
]


def is_detrex(state):
    """Whether a checkpoint's 'model' state dict is detrex's (detectron2's backbone names)."""
    return any(key.startswith(("backbone.stem.", "backbone.res")) for key in state)


def is_deformable(state):
    return "transformer.level_embeds" in state


def from_detrex(state):
    """Our state dict of a detrex DAB-DETR or DAB-Deformable-DETR state dict."""
    state = drop_shared_box_head(state, "transformer.decoder.bbox_embed.", "bbox_embed.")
    state = drop_shared_box_head(state, "transformer.decoder.class_embed.", "class_embed.")
    if not is_deformable(state):
        return rename(state, BACKBONE_RULES + DAB_DETR_RULES, to_ours=True, offsets=OFFSETS)
    backbone_levels = len({key.split(".")[2] for key in state if key.startswith("neck.convs.")})
    return rename(state, BACKBONE_RULES + DEFORMABLE_RULES, to_ours=True, offsets={**OFFSETS, "e": backbone_levels})
