"""Loading and saving DAB-DETR checkpoints: ours, Hugging Face, official, MMDetection.

Our parameter names follow the official implementation (docs/checkpoints.md), so each
foreign format is a table of renames (docs/checkpoints.md) applied to whole dotted components, in either
direction. Configs are read from the checkpoint where it carries one and inferred from tensor
shapes otherwise; what weights cannot tell (DC5 dilation, temperatures of an MMDetection
checkpoint) comes from the caller's overrides.
"""

import argparse
import json
import os
import re

import torch

from dabdetr.checkpoint import TRAIN_CHECKPOINT_FORMAT, atomic_write, read_torch_file
from dabdetr.models import DABDETR, DABDETRConfig

SOURCES = ("auto", "dabdetr", "dabdetr-train", "huggingface", "official", "mmdetection")
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.pt"
FORMAT_TAG = "dabdetr"


# --- renames: (our name, their name) templates; {i} and {j} match a number ------------------

_OFFICIAL_RULES = [("backbone.body.", "backbone.0.body.")]

_HF_RULES = [
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
_HF_RESNET_PREFIX = "model.backbone.conv_encoder.model."
_HF_RESNET_RULES = [
    ("conv1.", "embedder.embedder.convolution."),
    ("bn1.", "embedder.embedder.normalization."),
    ("layer{s}.{i}.conv{k}.", "encoder.stages.{s}.layers.{i}.layer.{k}.convolution."),
    ("layer{s}.{i}.bn{k}.", "encoder.stages.{s}.layers.{i}.layer.{k}.normalization."),
    ("layer{s}.{i}.downsample.0.", "encoder.stages.{s}.layers.{i}.shortcut.convolution."),
    ("layer{s}.{i}.downsample.1.", "encoder.stages.{s}.layers.{i}.shortcut.normalization."),
]
_HF_RESNET_OFFSETS = {"s": 1, "k": 1}  # our number = theirs + 1

_MMDET_RULES = [
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

_PLACEHOLDER = re.compile(r"\{(\w)\}")


def _prefix_pattern(template):
    """'a.{i}.b{k}.' -> a regex matching that prefix, one named group per placeholder."""
    parts = _PLACEHOLDER.split(template)  # literal, name, literal, name, ...
    pattern = "".join(re.escape(p) if n % 2 == 0 else rf"(?P<{p}>\d+)" for n, p in enumerate(parts))
    return re.compile("^" + pattern)


def _rename(state, rules, to_ours, offsets=None):
    """Rename each key by the first rule whose source side matches a prefix of it (unmatched
    keys pass unchanged). offsets: {placeholder: n} where our number = theirs + n."""
    offsets = offsets or {}
    sign = 1 if to_ours else -1
    out = {}
    for key, tensor in state.items():
        for ours, theirs in rules:
            source, target = (theirs, ours) if to_ours else (ours, theirs)
            m = _prefix_pattern(source).match(key)
            if m:
                values = {name: int(v) + sign * offsets.get(name, 0) for name, v in m.groupdict().items()}
                key = _PLACEHOLDER.sub(lambda p, values=values: str(values[p.group(1)]), target) + key[m.end():]
                break
        out[key] = tensor
    return out


# --- formats -> ours --------------------------------------------------------------------------

def _drop_shared_box_head(state, decoder_prefix, head_prefix):
    """The decoder's copy of the box head: checked equal to the head, then dropped (ours shares one)."""
    out = {}
    for key, tensor in state.items():
        if key.startswith(decoder_prefix):
            head_key = head_prefix + key[len(decoder_prefix):]
            if head_key in state and not torch.equal(state[head_key], tensor):
                raise ValueError(f"{key} differs from {head_key}: a decoder box head separate from the prediction "
                                 "head (bbox_embed_diff_each_layer) is not supported")
            continue
        out[key] = tensor
    return out


def _from_official(state):
    state = _drop_shared_box_head(state, "transformer.decoder.bbox_embed.", "bbox_embed.")
    return _rename(state, _OFFICIAL_RULES, to_ours=True)


def _from_mmdetection(state):
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    return _rename(state, _MMDET_RULES, to_ours=True)


def _from_huggingface(state):
    state = _drop_shared_box_head(state, "model.decoder.bbox_embed.", "bbox_predictor.")
    rest, hf_resnet, qkv = {}, {}, {}
    for key, tensor in state.items():
        encoder_proj = re.match(r"^model\.encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$", key)
        if key.endswith("num_batches_tracked"):
            continue
        if encoder_proj:
            layer, part, kind = encoder_proj.groups()
            qkv.setdefault((layer, kind), {})[part] = tensor
        elif key.startswith(_HF_RESNET_PREFIX) and not key.startswith(_HF_RESNET_PREFIX + "_backbone."):
            hf_resnet[key[len(_HF_RESNET_PREFIX):]] = tensor
        else:
            rest[key] = tensor
    for (layer, kind), parts in qkv.items():  # ours packs them, rows q | k | v
        if set(parts) != set("qkv"):
            raise ValueError(f"encoder layer {layer}: self_attn has {sorted(parts)} {kind}s, expected q, k and v")
        rest[f"transformer.encoder.layers.{layer}.self_attn.in_proj_{kind}"] = torch.cat([parts[p] for p in "qkv"])
    backbone = _rename(hf_resnet, _HF_RESNET_RULES, to_ours=True, offsets=_HF_RESNET_OFFSETS)
    rest.update({"backbone.body." + k: v for k, v in backbone.items()})
    return _rename(rest, _HF_RULES, to_ours=True)


# --- ours -> formats (for exports, and the tests' checkpoints in foreign formats) --------------

def to_official_state_dict(model):
    state = _rename(model.state_dict(), _OFFICIAL_RULES, to_ours=False)
    state.update({"transformer.decoder." + k: v for k, v in model.state_dict().items() if k.startswith("bbox_embed.")})
    return state


def to_mmdetection_state_dict(model):
    return _rename(model.state_dict(), _MMDET_RULES, to_ours=False)


def to_huggingface_state_dict(model, hf_resnet_backbone=False):
    """Hugging Face keys; the backbone under timm's (= torchvision's) names, or Hugging Face's
    own ResNet names with hf_resnet_backbone=True."""
    state = {}
    for key, tensor in model.state_dict().items():
        m = re.match(r"^transformer\.encoder\.layers\.(\d+)\.self_attn\.in_proj_(weight|bias)$", key)
        if m:
            for part, chunk in zip("qkv", tensor.chunk(3)):
                state[f"model.encoder.layers.{m.group(1)}.self_attn.{part}_proj.{m.group(2)}"] = chunk
        elif hf_resnet_backbone and key.startswith("backbone.body."):
            renamed = _rename({key[len("backbone.body."):]: tensor}, _HF_RESNET_RULES, to_ours=False,
                              offsets=_HF_RESNET_OFFSETS)
            state.update({_HF_RESNET_PREFIX + k: v for k, v in renamed.items()})
        else:
            state.update(_rename({key: tensor}, _HF_RULES, to_ours=False))
    state.update({"model.decoder.bbox_embed." + k[len("bbox_embed."):]: v
                  for k, v in model.state_dict().items() if k.startswith("bbox_embed.")})
    return state


_RESNET_LAYOUTS = {  # Hugging Face ResNetConfig fields of our backbones
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
    backbone = {"model_type": "resnet", "embedding_size": 64, **_RESNET_LAYOUTS[config.backbone],
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


# --- configs ---------------------------------------------------------------------------------

def _infer_config(state, **known):
    """Architecture fields that tensor shapes determine (our key names)."""
    def count(prefix):  # distinct indices right after prefix "a.b.c."
        return len({k.split(".")[3] for k in state if k.startswith(prefix)})

    layer3_blocks = count("backbone.body.layer3.")
    has_conv3 = any(k.startswith("backbone.body.layer1.0.conv3.") for k in state)
    backbone = {(6, True): "resnet50", (23, True): "resnet101", (2, False): "resnet18", (6, False): "resnet34"}.get(
        (layer3_blocks, has_conv3))
    if backbone is None:
        raise ValueError(f"cannot tell the ResNet depth from the checkpoint (layer3 has {layer3_blocks} blocks)")
    values = {
        "backbone": backbone,
        "hidden_dim": state["input_proj.weight"].shape[0],
        "ffn_dim": state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        "num_encoder_layers": count("transformer.encoder.layers."),
        "num_decoder_layers": count("transformer.decoder.layers."),
        "num_queries": state["refpoint_embed.weight"].shape[0],
        "num_patterns": state["transformer.patterns.weight"].shape[0] if "transformer.patterns.weight" in state else 0,
        "keep_query_pos": "transformer.decoder.layers.1.ca_qpos_proj.weight" in state,
        "num_classes": state["class_embed.weight"].shape[0],
    }
    values.update(known)
    return values


def _config_from_official_args(args):
    if args is None:
        return {}
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    fields = {"dilation": "dilation", "pe_temperatureH": "pe_temperature_h", "pe_temperatureW": "pe_temperature_w",
              "random_refpoints_xy": "random_refpoints_xy", "nheads": "num_heads", "dropout": "dropout",
              "num_select": "num_select"}
    return {ours: args[theirs] for theirs, ours in fields.items() if theirs in args}


def _config_from_huggingface(hf):
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


# --- loading ---------------------------------------------------------------------------------

def _torch_load(path):
    """torch.load(weights_only=True), also for official checkpoints that pickle their argparse args."""
    def load(path):
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)

    return read_torch_file(path, load)


def _detect(path):
    """(source, checkpoint): the format of path, and for a single file its loaded content (so it
    is read once)."""
    if os.path.isdir(path):
        config_path = os.path.join(path, CONFIG_FILE)
        if not os.path.exists(config_path):
            raise ValueError(f"{path}: a checkpoint directory needs {CONFIG_FILE}")
        with open(config_path) as f:
            config = json.load(f)
        if config.get("format") == FORMAT_TAG:
            return "dabdetr", None
        if config.get("model_type") == "dab-detr":
            return "huggingface", None
        raise ValueError(f"{config_path}: neither a dabdetr config nor a Hugging Face DAB-DETR config "
                         f"(model_type={config.get('model_type')!r})")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = _torch_load(path)
    if isinstance(checkpoint, dict) and checkpoint.get("format") == TRAIN_CHECKPOINT_FORMAT:
        return "dabdetr-train", checkpoint
    if isinstance(checkpoint, dict) and "model" in checkpoint:
        return "official", checkpoint
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        return "mmdetection", checkpoint
    keys = list(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise ValueError(f"{path}: not a DAB-DETR checkpoint this library knows (top-level keys: {keys}); "
                     "expected an official ('model'), MMDetection ('state_dict'), Hugging Face or dabdetr one")


def _read_huggingface_weights(directory):
    safetensors_path = os.path.join(directory, "model.safetensors")
    if os.path.exists(safetensors_path):
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise ImportError(f"{safetensors_path} needs the safetensors package (pip install safetensors)") from error
        return load_file(safetensors_path)
    bin_path = os.path.join(directory, "pytorch_model.bin")
    if os.path.exists(bin_path):
        return _torch_load(bin_path)
    raise FileNotFoundError(f"{directory}: no model.safetensors or pytorch_model.bin")


def _class_names(stored):
    """{label: name} from the string-keyed dict our files store (json keys are strings)."""
    return {int(label): name for label, name in (stored or {}).items()}


def _load_source(path, source, checkpoint=None):
    """(our state dict, config values, metadata) of a checkpoint; checkpoint: the file's content
    if already read. metadata: see load_pretrained."""
    no_metadata = {"class_names": {}, "train_config": None}
    if source == "dabdetr":
        with open(os.path.join(path, CONFIG_FILE)) as f:
            config = json.load(f)
        metadata = {**no_metadata, "class_names": _class_names(config.get("class_names"))}
        return _torch_load(os.path.join(path, WEIGHTS_FILE)), config["config"], metadata
    if source == "huggingface":
        with open(os.path.join(path, CONFIG_FILE)) as f:
            hf = json.load(f)
        state = _from_huggingface(_read_huggingface_weights(path))
        return state, _infer_config(state, **_config_from_huggingface(hf)), no_metadata
    if checkpoint is None:
        checkpoint = _torch_load(path)
    if source == "dabdetr-train":
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != TRAIN_CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: source='dabdetr-train' expects a checkpoint written by `dabdetr train`")
        metadata = {"class_names": _class_names(checkpoint.get("class_names")),
                    "train_config": checkpoint["train_config"]}
        return checkpoint["model"], checkpoint["model_config"], metadata
    key = "model" if source == "official" else "state_dict"
    if not isinstance(checkpoint, dict) or key not in checkpoint:
        raise ValueError(f"{path}: source={source!r} expects a checkpoint with a {key!r} key; this one has none")
    if source == "official":
        state = _from_official(checkpoint["model"])
        return state, _infer_config(state, **_config_from_official_args(checkpoint.get("args"))), no_metadata
    state = _from_mmdetection(checkpoint["state_dict"])
    return state, _infer_config(state, anchor_update_eps=1e-5, box_head_eps=1e-3), no_metadata


def _load_state(model, state, path):
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        def listing(keys):
            return f"{len(keys)}: {keys[:20]}{' ...' if len(keys) > 20 else ''}"

        raise ValueError(f"{path}: checkpoint does not match the model; missing keys {listing(result.missing_keys)}; "
                         f"unexpected keys {listing(result.unexpected_keys)}")


def from_pretrained(path, source="auto", **overrides):
    """A ready model (eval mode) from a checkpoint.

    path: a dabdetr directory (save_pretrained), a training checkpoint of `dabdetr train`
    (checkpoint.pt, best.pt), a Hugging Face DabDetr directory (config.json +
    model.safetensors or pytorch_model.bin), an official DAB-DETR .pth ('model' key) or an
    MMDetection .pth ('state_dict' key, 80-class head).
    source: "auto" (detected) or one of "dabdetr", "dabdetr-train", "huggingface", "official",
    "mmdetection".
    overrides: DABDETRConfig fields, e.g. dilation=True for a DC5 checkpoint that carries no
    config, or ops_impl="reference".
    """
    return load_pretrained(path, source, **overrides)[0]


def load_pretrained(path, source="auto", **overrides):
    """(model, metadata): from_pretrained's model, with the checkpoint read once, and what it
    says besides the weights: metadata["class_names"] {label: name} (stored by dabdetr; {}
    otherwise) and metadata["train_config"] (a TrainConfig dict for training checkpoints, else None).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    checkpoint = None
    if source == "auto":
        source, checkpoint = _detect(path)
    state, values, metadata = _load_source(path, source, checkpoint)
    model = DABDETR(DABDETRConfig.from_dict({**values, **overrides}))
    try:
        _load_state(model, state, path)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{path}: checkpoint does not fit the model config: {error}") from error
    return model.eval(), metadata


def save_pretrained(model, directory, class_names=None):
    """Writes config.json and model.pt (each atomically: a temporary file, then a rename).
    class_names: optional {label: name}, kept in config.json for `dabdetr predict`."""
    os.makedirs(directory, exist_ok=True)
    atomic_write(os.path.join(directory, WEIGHTS_FILE), lambda f: torch.save(model.state_dict(), f), binary=True)
    config = {"format": FORMAT_TAG, "config": model.config.to_dict()}
    if class_names:
        config["class_names"] = {str(label): name for label, name in class_names.items()}
    atomic_write(os.path.join(directory, CONFIG_FILE), lambda f: json.dump(config, f, indent=1))
