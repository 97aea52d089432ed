"""Loading DAB-DETR checkpoints of every format this library knows (dabdetr.weights.formats: ours,
Hugging Face, official, MMDetection, detrex) from wherever they are (a path, a published model's name in
dabdetr.weights.zoo, a Hugging Face hub id, a URL: dabdetr.weights.hub): detection of the format, the config
(read where the checkpoint carries one, inferred from tensor shapes otherwise; what weights
cannot tell, such as DC5 dilation, comes from the caller's overrides), and the model.
"""

import argparse
import difflib
import json
import os

import torch

from dabdetr.models import PRESETS, DABDETRConfig, build_model
from dabdetr.weights import hub, zoo
from dabdetr.weights.files import read_torch_file
from dabdetr.weights.formats import detrex, huggingface, mmdetection, native, official
from dabdetr.weights.formats.huggingface import save_huggingface, to_huggingface_config, to_huggingface_state_dict
from dabdetr.weights.formats.mmdetection import to_mmdetection_state_dict
from dabdetr.weights.formats.native import TRAIN_CHECKPOINT_FORMAT, save_pretrained
from dabdetr.weights.formats.official import official_args, to_official_state_dict

SOURCES = ("auto", "dabdetr", "dabdetr-train", "huggingface", "official", "mmdetection", "detrex")
__all__ = ["SOURCES", "from_pretrained", "load_pretrained", "official_args", "save_pretrained", "save_huggingface",
           "to_huggingface_config", "to_huggingface_state_dict", "to_mmdetection_state_dict", "to_official_state_dict"]


def _count(state, prefix):
    """Distinct indices right after prefix "a.b.c." among the state's keys."""
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def _transformer_sizes(state, input_proj_key):
    """hidden_dim, ffn_dim and the layer counts, from the shapes and keys both models share."""
    return {
        "hidden_dim": state[input_proj_key].shape[0],
        "ffn_dim": state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        "num_encoder_layers": _count(state, "transformer.encoder.layers."),
        "num_decoder_layers": _count(state, "transformer.decoder.layers."),
    }


def _infer_config(state, described, **known):
    """Architecture fields that tensor shapes determine (our key names); described: what the
    checkpoint is ("model.pth, an official checkpoint"), for the error when it holds no DAB-DETR."""
    def not_dab_detr(what):
        some_keys = ", ".join(list(state)[:5]) or "none"
        return ValueError(f"{described}, but its weights are not a DAB-DETR model's: {what} "
                          f"(its first keys, renamed to ours: {some_keys})")

    layer3_blocks = _count(state, "backbone.body.layer3.")
    has_conv3 = any(k.startswith("backbone.body.layer1.0.conv3.") for k in state)
    backbone = {(6, True): "resnet50", (23, True): "resnet101", (2, False): "resnet18", (6, False): "resnet34"}.get(
        (layer3_blocks, has_conv3))
    if backbone is None:
        raise not_dab_detr(f"no ResNet-18/34/50/101 backbone (layer3 has {layer3_blocks} blocks)")
    if official.DEFORMABLE_KEY in state:
        return {"backbone": backbone, **_infer_deformable_config(state, not_dab_detr, known)}
    missing = [key for key in ("input_proj.weight", "transformer.encoder.layers.0.linear1.weight",
                               "refpoint_embed.weight", "class_embed.weight") if key not in state]
    if missing:
        raise not_dab_detr(f"no {', '.join(missing)}")
    values = {
        "backbone": backbone,
        **_transformer_sizes(state, "input_proj.weight"),
        "num_queries": state["refpoint_embed.weight"].shape[0],
        "num_patterns": state["transformer.patterns.weight"].shape[0] if "transformer.patterns.weight" in state else 0,
        "keep_query_pos": "transformer.decoder.layers.1.ca_qpos_proj.weight" in state,
        "num_classes": state["class_embed.weight"].shape[0],
    }
    values.update(known)
    return values


def _infer_deformable_config(state, not_dab_detr, known):
    """_infer_config's fields of a DAB-Deformable-DETR: sizes from the shapes, the heads from
    `known` (the args; 8 where none say), and from them the points per head and level; a two-stage
    model's query count from `known` too (the preset's 300 where none says)."""
    two_stage = "transformer.enc_output.weight" in state  # its queries come from proposals: no query weights
    required = ("input_proj.0.0.weight", "transformer.encoder.layers.0.linear1.weight", "class_embed.0.weight",
                *(() if two_stage else ("refpoint_embed.weight",)))
    missing = [key for key in required if key not in state]
    if missing:
        raise not_dab_detr(f"a DAB-Deformable-DETR level embedding but no {', '.join(missing)}")
    levels, heads = state[official.DEFORMABLE_KEY].shape[0], known.get("num_heads", 8)

    def points(key):
        rows = state[key].shape[0]
        if rows % (2 * heads * levels):
            raise not_dab_detr(f"{key} has {rows} rows, not a whole number of points for {heads} heads and {levels} "
                               "levels (num_heads is in the checkpoint's args)")
        return rows // (2 * heads * levels)

    values = {
        **PRESETS["dab_deformable_detr_r50"],
        **_transformer_sizes(state, "input_proj.0.0.weight"),
        "input_proj_kernel_size": state["input_proj.0.0.weight"].shape[-1],
        "num_patterns": state["patterns_embed.weight"].shape[0] if "patterns_embed.weight" in state else 0,
        "two_stage": two_stage,
        "num_classes": state["class_embed.0.weight"].shape[0],
        "num_feature_levels": levels,
        # The last stage the backbone has (C5 in every official checkpoint).
        "backbone_stage": max(stage for stage in (2, 3, 4) if f"backbone.body.layer{stage}.0.conv1.weight" in state),
        "encoder_points": points("transformer.encoder.layers.0.self_attn.sampling_offsets.weight"),
        "decoder_points": points("transformer.decoder.layers.0.cross_attn.sampling_offsets.weight"),
    }
    if not two_stage:
        values["num_queries"] = state["refpoint_embed.weight"].shape[0]
    return {**values, **known}


def _torch_load(path):
    """torch.load(weights_only=True), also for official checkpoints that pickle their argparse args."""
    def load(path):
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)

    return read_torch_file(path, load)


def directory_source(path):
    """"dabdetr" or "huggingface": the format of a model directory, from its config.json; a
    ValueError saying what is wrong for any other directory."""
    config_path = os.path.join(path, native.CONFIG_FILE)
    if os.path.isdir(os.path.join(path, native.RUN_MODEL_DIR)) or os.path.exists(os.path.join(path, native.RUN_LATEST)):
        raise ValueError(f"{path}: the folder of a training run; load its {native.RUN_MODEL_DIR}/ (the final model), "
                         f"{native.RUN_BEST} or {native.RUN_LATEST}")
    if not os.path.exists(config_path):
        raise ValueError(f"{path}: a checkpoint directory needs {native.CONFIG_FILE}")
    with open(config_path) as f:
        config = json.load(f)
    if config.get("format") == native.FORMAT_TAG:
        return "dabdetr"
    if config.get("model_type") == "dab-detr":
        return "huggingface"
    raise ValueError(f"{config_path}: neither a dabdetr config nor a Hugging Face DAB-DETR config "
                     f"(model_type={config.get('model_type')!r})")


def _detect(path):
    """(source, checkpoint): the format of path, and for a single file its loaded content (so it
    is read once)."""
    if os.path.isdir(path):
        return directory_source(path), None
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = _torch_load(path)
    if isinstance(checkpoint, dict) and checkpoint.get("format") == TRAIN_CHECKPOINT_FORMAT:
        return "dabdetr-train", checkpoint
    if isinstance(checkpoint, dict) and "model" in checkpoint:
        is_detrex = isinstance(checkpoint["model"], dict) and detrex.is_detrex(checkpoint["model"])
        return ("detrex" if is_detrex else "official"), checkpoint
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        return "mmdetection", checkpoint
    keys = list(checkpoint)[:10] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise ValueError(f"{path}: not a DAB-DETR checkpoint this library knows (top-level keys: {keys}); "
                     "expected an official or detrex ('model'), MMDetection ('state_dict'), Hugging Face or dabdetr "
                     "one")


def _class_names(stored):
    """{label: name} from the string-keyed dict our files store (json keys are strings)."""
    return {int(label): name for label, name in (stored or {}).items()}


def _load_source(path, source, checkpoint=None):
    """(our state dict, config values, metadata) of a checkpoint; checkpoint: the file's content
    if already read. metadata: see load_pretrained."""
    no_metadata = {"class_names": {}, "train_config": None, "eval_size": None, "max_size": None}
    if source == "dabdetr":
        state, config, stored = native.read_model_directory(path)
        return state, config, {**no_metadata, **stored}
    if source == "huggingface":
        with open(os.path.join(path, native.CONFIG_FILE)) as f:
            hf = json.load(f)
        state = huggingface.from_huggingface(huggingface.read_weights(path))
        metadata = {**no_metadata, "class_names": huggingface.class_names_from_huggingface(hf)}
        described = f"{path}: read as a Hugging Face model directory"
        return state, _infer_config(state, described, **huggingface.config_from_huggingface(hf)), metadata
    if checkpoint is None:
        checkpoint = _torch_load(path)
    if source == "dabdetr-train":
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != TRAIN_CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: source='dabdetr-train' expects a checkpoint written by `dabdetr train`")
        train_config = checkpoint["train_config"]
        metadata = {"class_names": _class_names(checkpoint.get("class_names")), "train_config": train_config,
                    "eval_size": train_config.get("eval_size"), "max_size": train_config.get("max_size")}
        # A run with ema_decay evaluated (and chose best.pt by) its moving average: serve that.
        return checkpoint.get("ema_model") or checkpoint["model"], checkpoint["model_config"], metadata
    key = "state_dict" if source == "mmdetection" else "model"
    if not isinstance(checkpoint, dict) or key not in checkpoint:
        raise ValueError(f"{path}: source={source!r} expects a checkpoint with a {key!r} key; this one has none")
    if source == "official":
        state = official.from_official(checkpoint["model"])
        described = f"{path}: read as an official DAB-DETR checkpoint (it has a 'model' key)"
        args = official.config_from_args(checkpoint.get("args"), deformable=official.DEFORMABLE_KEY in state)
        return state, _infer_config(state, described, **args), no_metadata
    if source == "detrex":
        state = detrex.from_detrex(checkpoint["model"])
        described = f"{path}: read as a detrex checkpoint (a 'model' key, detectron2's backbone names)"
        return state, _infer_config(state, described), no_metadata
    state = mmdetection.from_mmdetection(checkpoint["state_dict"])
    described = f"{path}: read as an MMDetection checkpoint (it has a 'state_dict' key)"
    return state, _infer_config(state, described, **mmdetection.CONFIG_VALUES), no_metadata


def _load_state(model, state, path):
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        def listing(keys):
            return f"{len(keys)}: {keys[:20]}{' ...' if len(keys) > 20 else ''}"

        raise ValueError(f"{path}: checkpoint does not match the model; missing keys {listing(result.missing_keys)}; "
                         f"unexpected keys {listing(result.unexpected_keys)}")


def from_pretrained(path, source="auto", revision=None, **overrides):
    """A ready model (eval mode) from a checkpoint.

    path: a dabdetr directory (save_pretrained), a training checkpoint of `dabdetr train`
    (checkpoint.pt, best.pt), a Hugging Face DabDetr directory (config.json +
    model.safetensors or pytorch_model.bin), an official DAB-DETR .pth ('model' key) or an
    MMDetection .pth ('state_dict' key, 80-class head), a detrex .pth ('model' key with
    detectron2's backbone names, 80-class head); or, where no such path exists, a
    published model's name (`dabdetr zoo`), a Hugging Face hub id ("IDEA-Research/dab-detr-resnet-50",
    "org/name@revision") or a URL, fetched once into the hub's or torch's cache (dabdetr.weights.hub).
    source: "auto" (detected) or one of "dabdetr", "dabdetr-train", "huggingface", "official",
    "mmdetection", "detrex".
    revision: of a hub id: a branch, tag or commit.
    overrides: DABDETRConfig fields, e.g. dilation=True for a DC5 checkpoint that carries no
    config, or ops_impl="reference".
    """
    return load_pretrained(path, source, revision, **overrides)[0]


def resolve_checkpoint(path, source="auto", revision=None):
    """(local path, source, config overrides) of what from_pretrained takes: a published model's
    name brings its location, format and overrides (dabdetr.weights.zoo); hub ids and URLs are fetched."""
    published = zoo.PUBLISHED.get(path) if not os.path.exists(path) else None
    if published is None:
        try:
            return hub.resolve(path, revision), source, {}
        except FileNotFoundError as error:  # perhaps a published name, mistyped
            close = difflib.get_close_matches(path, zoo.PUBLISHED, n=1)
            if not close:
                raise
            raise FileNotFoundError(f"{error}; did you mean the published model {close[0]!r}? (dabdetr zoo)") from None
    if published.manual_download:
        raise FileNotFoundError(f"{path}: the {published.ap_source}'s weights need a browser to download; get them "
                                f"from {published.location} and pass the file's path")
    source = published.format if source == "auto" else source
    return hub.resolve(published.location, revision), source, published.overrides


def load_pretrained(path, source="auto", revision=None, **overrides):
    """(model, metadata): from_pretrained's model, with the checkpoint read once, and what it
    says besides the weights: metadata["class_names"] {label: name} (stored by dabdetr or in a
    Hugging Face config; {} otherwise), metadata["train_config"] (a TrainConfig dict for
    training checkpoints, else None), and metadata["eval_size"], metadata["max_size"]: the image
    sizes the model was evaluated at (a dabdetr directory's or a training run's; None: unknown,
    COCO's 800 and 1333 serve).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    path, source, published_overrides = resolve_checkpoint(path, source, revision)
    overrides = {**published_overrides, **overrides}
    checkpoint = None
    if source == "auto":
        source, checkpoint = _detect(path)
    state, values, metadata = _load_source(path, source, checkpoint)
    model = build_model(DABDETRConfig.from_dict({**values, **overrides}))
    try:
        _load_state(model, state, path)
    except RuntimeError as error:  # shape mismatches
        raise ValueError(f"{path}: checkpoint does not fit the model config: {error}") from error
    return model.eval(), metadata
