"""MMDetection 3.x DAB-DETR checkpoints: {'state_dict': ...}, 80 contiguous classes, no architecture
config in the file."""

from dabdetr.weights.formats.fixed_settings import require_fixed_settings
from dabdetr.weights.formats.renames import rename

# Its inverse-sigmoid eps (docs/checkpoints.md, pitfall 1): 1e-5 in the decoder, 1e-3 in the head.
CONFIG_VALUES = {"anchor_update_eps": 1e-5, "box_head_eps": 1e-3}

RULES = [
    ("backbone.body.", "backbone."),
    ("input_proj.", "neck.convs.0.conv."),
    ("refpoint_embed.", "query_embedding."),
    ("transformer.patterns.", "patterns."),
    ("transformer.encoder.query_scale.", "encoder.query_scale."),
    ("transformer.encoder.layers.{i}.self_attn.", "encoder.layers.{i}.self_attn.attn."),
    ("transformer.encoder.layers.{i}.linear1.", "encoder.layers.{i}.ffn.layers.0.0."),
    ("transformer.encoder.layers.{i}.activation.", "encoder.layers.{i}.ffn.layers.0.1."),
    ("transformer.encoder.layers.{i}.linear2.", "encoder.layers.{i}.ffn.layers.1."),
    ("transformer.encoder.layers.{i}.norm1.", "encoder.layers.{i}.norms.0."),
    ("transformer.encoder.layers.{i}.norm2.", "encoder.layers.{i}.norms.1."),
    *[(f"transformer.decoder.layers.{{i}}.sa_{name}.", f"decoder.layers.{{i}}.self_attn.{name}.")
      for name in ("qcontent_proj", "qpos_proj", "kcontent_proj", "kpos_proj", "v_proj")],
    ("transformer.decoder.layers.{i}.self_attn.out_proj.", "decoder.layers.{i}.self_attn.out_proj."),
    *[(f"transformer.decoder.layers.{{i}}.ca_{name}.", f"decoder.layers.{{i}}.cross_attn.{name}.")
      for name in ("qcontent_proj", "qpos_proj", "kcontent_proj", "kpos_proj", "v_proj", "qpos_sine_proj")],
    ("transformer.decoder.layers.{i}.cross_attn.out_proj.", "decoder.layers.{i}.cross_attn.out_proj."),
    ("transformer.decoder.layers.{i}.linear1.", "decoder.layers.{i}.ffn.layers.0.0."),
    ("transformer.decoder.layers.{i}.activation.", "decoder.layers.{i}.ffn.layers.0.1."),
    ("transformer.decoder.layers.{i}.linear2.", "decoder.layers.{i}.ffn.layers.1."),
    *[(f"transformer.decoder.layers.{{i}}.norm{k + 1}.", f"decoder.layers.{{i}}.norms.{k}.") for k in range(3)],
    ("transformer.decoder.norm.", "decoder.post_norm."),
    ("transformer.decoder.query_scale.", "decoder.query_scale."),
    ("transformer.decoder.ref_point_head.", "decoder.ref_point_head."),
    ("transformer.decoder.ref_anchor_head.", "decoder.ref_anchor_head."),
    ("class_embed.", "bbox_head.fc_cls."),
    ("bbox_embed.", "bbox_head.fc_reg."),
]


def from_mmdetection(state):
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return rename(state, RULES, to_ours=True)


def to_mmdetection_state_dict(model):
    require_fixed_settings(model.config, "MMDetection")
    return rename(model.state_dict(), RULES, to_ours=False)
