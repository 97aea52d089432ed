"""transformers' DabDetrForObjectDetection directories: config.json and model.safetensors (or
pytorch_model.bin), with a timm or a Hugging Face ResNet backbone."""

import json
import os
import re

import torch

from dabdetr.weights.files import atomic_write, read_torch_file
from dabdetr.weights.formats.fixed_settings import require_architecture, require_fixed_settings
from dabdetr.weights.formats.native import CONFIG_FILE
from dabdetr.weights.formats.renames import drop_shared_box_head, rename
from dabdetr.weights.hub import HUB_WEIGHT_FILES

RULES = [
    ("backbone.body.", "model.backbone.conv_encoder.model._backbone."),
    ("input_proj.", "model.input_projection."),
    ("refpoint_embed.", "model.query_refpoint_embeddings."),
    ("transformer.patterns.", "model.patterns."),
    ("transformer.encoder.query_scale.", "model.encoder.query_scale."),
    ("transformer.encoder.layers.{i}.self_attn.out_proj.", "model.encoder.layers.{i}.self_attn.out_proj."),
    ("transformer.encoder.layers.{i}.linear1.", "model.encoder.layers.{i}.fc1."),
    ("transformer.encoder.layers.{i}.linear2.", "model.encoder.layers.{i}.fc2."),
    ("transformer.encoder.layers.{i}.norm1.", "model.encoder.layers.{i}.self_attn_layer_norm."),
    ("transformer.encoder.layers.{i}.norm2.", "model.encoder.layers.{i}.final_layer_norm."),
    ("transformer.encoder.layers.{i}.activation.", "model.encoder.layers.{i}.activation_fn."),
    *[(f"transformer.decoder.layers.{{i}}.sa_{ours}_proj.",
       f"model.decoder.layers.{{i}}.self_attn.self_attn_{theirs}_proj.")
      for ours, theirs in (("qcontent", "query_content"), ("qpos", "query_pos"), ("kcontent", "key_content"),
                           ("kpos", "key_pos"), ("v", "value"))],
    ("transformer.decoder.layers.{i}.self_attn.out_proj.", "model.decoder.layers.{i}.self_attn.self_attn.output_proj."),
    ("transformer.decoder.layers.{i}.norm1.", "model.decoder.layers.{i}.self_attn.self_attn_layer_norm."),
    *[(f"transformer.decoder.layers.{{i}}.ca_{ours}_proj.",
       f"model.decoder.layers.{{i}}.cross_attn.cross_attn_{theirs}_proj.")
      for ours, theirs in (("qcontent", "query_content"), ("qpos", "query_pos"), ("kcontent", "key_content"),
                           ("kpos", "key_pos"), ("v", "value"), ("qpos_sine", "query_pos_sine"))],
    ("transformer.decoder.layers.{i}.cross_attn.out_proj.",
     "model.decoder.layers.{i}.cross_attn.cross_attn.output_proj."),
    ("transformer.decoder.layers.{i}.norm2.", "model.decoder.layers.{i}.cross_attn.cross_attn_layer_norm."),
    ("transformer.decoder.layers.{i}.linear1.", "model.decoder.layers.{i}.mlp.fc1."),
    ("transformer.decoder.layers.{i}.linear2.", "model.decoder.layers.{i}.mlp.fc2."),
    ("transformer.decoder.layers.{i}.norm3.", "model.decoder.layers.{i}.mlp.final_layer_norm."),
    ("transformer.decoder.layers.{i}.activation.", "model.decoder.layers.{i}.mlp.activation_fn."),
    ("transformer.decoder.norm.", "model.decoder.layernorm."),
    ("transformer.decoder.query_scale.", "model.decoder.query_scale."),
    ("transformer.decoder.ref_point_head.", "model.decoder.ref_point_head."),
    ("transformer.decoder.ref_anchor_head.", "model.decoder.ref_anchor_head."),
    ("class_embed.", "class_embed."),
    ("bbox_embed.", "bbox_predictor."),
]

# Hugging Face's own ResNet (used by its tests and by configs without timm) counts stages and
# convolutions from 0 where torchvision counts layers and convs from 1.
RESNET_PREFIX = "model.backbone.conv_encoder.model."
RESNET_RULES = [
    ("conv1.", "embedder.embedder.convolution."),
    ("bn1.", "embedder.embedder.normalization."),
    ("layer{s}.{i}.conv{k}.", "encoder.stages.{s}.layers.{i}.layer.{k}.convolution."),
    ("layer{s}.{i}.bn{k}.", "encoder.stages.{s}.layers.{i}.layer.{k}.normalization."),
    ("layer{s}.{i}.downsample.0.", "encoder.stages.{s}.layers.{i}.shortcut.convolution."),
    ("layer{s}.{i}.downsample.1.", "encoder.stages.{s}.layers.{i}.shortcut.normalization."),
]
RESNET_OFFSETS = {"s": 1, "k": 1}  # our number = theirs + 1


def from_huggingface(state):
    state = drop_shared_box_head(state, "model.decoder.bbox_embed.", "bbox_predictor.")
    rest, hf_resnet, qkv = {}, {}, {}
    for key, tensor in state.items():
        encoder_proj = re.match(r"^model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key)
        if key.endswith("num_batches_tracked"):
            continue
        if encoder_proj:
            layer, part, kind = encoder_proj.groups()
            qkv.setdefault((layer, kind), {})[part] = tensor
        elif key.startswith(RESNET_PREFIX) and not key.startswith(RESNET_PREFIX + "_backbone."):
            hf_resnet[key[len(RESNET_PREFIX):]] = tensor
        else:
            rest[key] = tensor
    for (layer, kind), parts in qkv.items():  # ours packs them, rows q | k | v
        if set(parts) != set("qkv"):
            raise ValueError(f"encoder layer {layer}: self_attn has {sorted(parts)} {kind}s, expected q, k and v")
        rest[f"transformer.encoder.layers.{layer}.self_attn.in_proj_{kind}"] = torch.cat([parts[p] for p in "qkv"])
    backbone = rename(hf_resnet, RESNET_RULES, to_ours=True, offsets=RESNET_OFFSETS)
    rest.update({"backbone.body." + k: v for k, v in backbone.items()})
    return rename(rest, RULES, to_ours=True)


def to_huggingface_state_dict(model, hf_resnet_backbone=False):
    """Hugging Face keys; the backbone under timm's (= torchvision's) names, or Hugging Face's
    own ResNet names with hf_resnet_backbone=True."""
    require_architecture(model.config, "Hugging Face")
    state = {}
    for key, tensor in model.state_dict().items():
        m = re.match(r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$", key)
        if m:
            for part, chunk in zip("qkv", tensor.chunk(3)):
                state[f"model.encoder.layers.{m.group(1)}.self_attn.{part}_proj.{m.group(2)}"] = chunk
        elif hf_resnet_backbone and key.startswith("backbone.body."):
            renamed = rename({key[len("backbone.body."):]: tensor}, RESNET_RULES, to_ours=False,
                              offsets=RESNET_OFFSETS)
            state.update({RESNET_PREFIX + k: v for k, v in renamed.items()})
        else:
            state.update(rename({key: tensor}, RULES, to_ours=False))
    state.update({"model.decoder.bbox_embed." + k[len("bbox_embed."):]: v
                  for k, v in model.state_dict().items() if k.startswith("bbox_embed.")})
    return state


RESNET_LAYOUTS = {  # Hugging Face ResNetConfig fields of our backbones
    "resnet18": {"layer_type": "basic", "depths": [2, 2, 2, 2], "hidden_sizes": [64, 128, 256, 512]},
    "resnet34": {"layer_type": "basic", "depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 256, 512]},
    "resnet50": {"layer_type": "bottleneck", "depths": [3, 4, 6, 3], "hidden_sizes": [256, 512, 1024, 2048]},
    "resnet101": {"layer_type": "bottleneck", "depths": [3, 4, 23, 3], "hidden_sizes": [256, 512, 1024, 2048]},
}


def to_huggingface_config(model, class_names=None, timm_backbone=False):
    """The config.json of transformers' DabDetrForObjectDetection for model.

    timm_backbone=False: Hugging Face's own ResNet (loads without timm; what
    to_huggingface_state_dict(hf_resnet_backbone=True) names); True: the hub checkpoints' timm
    ResNet, which DC5 (dilation) needs there."""
    config = model.config
    if config.dilation and not timm_backbone:
        raise ValueError("Hugging Face supports a dilated (DC5) backbone only through timm: use timm_backbone=True")
    require_fixed_settings(config, "Hugging Face")
    temperatures = (config.pe_temperature_h, config.pe_temperature_w)
    if not all(float(t).is_integer() for t in temperatures):
        raise ValueError(f"Hugging Face's config takes integer feature-map temperatures; this model has {temperatures}")
    names = {label: (class_names or {}).get(label, f"LABEL_{label}") for label in range(config.num_classes)}
    hf = {
        "model_type": "dab-detr", "architectures": ["DabDetrForObjectDetection"],
        "hidden_size": config.hidden_dim, "encoder_attention_heads": config.num_heads,
        "decoder_attention_heads": config.num_heads, "encoder_ffn_dim": config.ffn_dim,
        "decoder_ffn_dim": config.ffn_dim, "encoder_layers": config.num_encoder_layers,
        "decoder_layers": config.num_decoder_layers, "num_queries": config.num_queries,
        "num_patterns": config.num_patterns, "random_refpoints_xy": config.random_refpoints_xy,
        "keep_query_pos": config.keep_query_pos, "dilation": config.dilation,
        "temperature_height": int(temperatures[0]), "temperature_width": int(temperatures[1]),
        "dropout": config.dropout, "activation_function": "prelu", "use_pretrained_backbone": False,
        "id2label": {str(label): name for label, name in names.items()},
        "label2id": {name: label for label, name in names.items()},
    }
    if timm_backbone:
        if config.backbone_stage != 4:
            raise ValueError("the timm backbone of Hugging Face reads C5; this model reads "
                             f"C{config.backbone_stage + 1}")
        return {**hf, "use_timm_backbone": True, "backbone": config.backbone, "backbone_config": None}
    backbone = {"model_type": "resnet", "embedding_size": 64, **RESNET_LAYOUTS[config.backbone],
                "out_features": [f"stage{config.backbone_stage}"]}
    return {**hf, "use_timm_backbone": False, "backbone": None, "backbone_config": backbone}


def save_huggingface(model, directory, class_names=None, timm_backbone=False):
    """Writes a transformers DabDetrForObjectDetection directory: config.json and
    model.safetensors (atomically). Inference differs from this model's where its inverse_sigmoid
    eps are not Hugging Face's 1e-5 (official checkpoints use 1e-3; docs/checkpoints.md, pitfall 1),
    and denoising weights (label_embed) are left out: transformers has no denoising."""
    try:
        from safetensors.torch import save as safetensors_bytes
    except ImportError as error:
        raise ImportError("writing the Hugging Face format needs the safetensors package") from error
    hf_config = to_huggingface_config(model, class_names, timm_backbone)
    state = to_huggingface_state_dict(model, hf_resnet_backbone=not timm_backbone)
    # Clones: safetensors refuses tensors sharing memory (the q/k/v chunks, the decoder's box head).
    state = {k: v.detach().clone() for k, v in state.items()
             if not k.startswith("label_embed.") and not k.endswith("num_batches_tracked")}
    os.makedirs(directory, exist_ok=True)
    weights = os.path.join(directory, "model.safetensors")
    atomic_write(weights, lambda f: f.write(safetensors_bytes(state)), binary=True)
    atomic_write(os.path.join(directory, CONFIG_FILE), lambda f: json.dump(hf_config, f, indent=1))


def config_from_huggingface(hf):
    out_features = (hf.get("backbone_config") or {}).get("out_features") or ["stage4"]
    values = {
        "backbone_stage": int(out_features[-1][len("stage"):]),  # Hugging Face's stageN is torchvision's layerN
        "hidden_dim": hf.get("hidden_size", 256), "num_heads": hf.get("encoder_attention_heads", 8),
        "ffn_dim": hf.get("encoder_ffn_dim", 2048), "num_encoder_layers": hf.get("encoder_layers", 6),
        "num_decoder_layers": hf.get("decoder_layers", 6), "num_queries": hf.get("num_queries", 300),
        "num_patterns": hf.get("num_patterns", 0), "random_refpoints_xy": hf.get("random_refpoints_xy", False),
        "keep_query_pos": hf.get("keep_query_pos", False), "dilation": hf.get("dilation", False),
        "pe_temperature_h": float(hf.get("temperature_height", 20)),
        "pe_temperature_w": float(hf.get("temperature_width", 20)),
        "dropout": hf.get("dropout", 0.0), "anchor_update_eps": 1e-5, "box_head_eps": 1e-5,
        "num_classes": hf.get("num_labels") or len(hf.get("id2label") or {}) or 2,
    }
    if hf.get("activation_function", "prelu") != "prelu":
        raise ValueError(f"unsupported Hugging Face activation_function {hf['activation_function']!r} "
                         "(DAB-DETR uses prelu)")
    return values


def class_names_from_huggingface(hf):
    """{label: name} of a config's id2label, without transformers' placeholder names (LABEL_n)."""
    return {int(label): name for label, name in (hf.get("id2label") or {}).items() if name != f"LABEL_{label}"}


def read_weights(directory):
    """The tensors of a model directory: its model.safetensors, else its pytorch_model.bin."""
    for name in HUB_WEIGHT_FILES:
        if os.path.exists(os.path.join(directory, name)):
            return read_weights_file(os.path.join(directory, name))
    raise FileNotFoundError(f"{directory}: no {' or '.join(HUB_WEIGHT_FILES)}")


def read_weights_file(path):
    """The tensors of a .safetensors file, or of a torch file (torch.load(weights_only=True))."""
    if not path.endswith(".safetensors"):
        return read_torch_file(path)
    try:
        from safetensors.torch import load_file
    except ImportError as error:
        raise ImportError(f"{path} needs the safetensors package (pip install safetensors)") from error
    return load_file(path)
