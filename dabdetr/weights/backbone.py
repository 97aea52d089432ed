"""A backbone's initial weights (DABDETRConfig.backbone_weights): ImageNet, a URL, a local file or
a Hugging Face hub id, in torchvision's, timm's or Hugging Face's ResNet layout, loaded into a new
model's ResNet (docs/checkpoints.md, "Backbone weights").

    "imagenet"  torchvision's ImageNet weights of the configured depth: IMAGENET1K_V1, the
                weights DETR and DAB-DETR started from (downloaded once into torch's cache)
    a URL, a file (.pth, .pt, .bin, .safetensors) or a hub id (dabdetr.weights.hub.resolve)
    "none"      no pretrained weights: the initialization of a model trained from scratch

Only a model being built for training loads these: from_pretrained, --init and --resume load a
whole checkpoint and never fetch backbone weights they would overwrite.
"""

import logging
import os
import re

from dabdetr.weights import hub
from dabdetr.weights.formats.huggingface import RESNET_OFFSETS, RESNET_RULES, read_weights, read_weights_file
from dabdetr.weights.formats.renames import rename

logger = logging.getLogger("dabdetr")

IMAGENET_URLS = {  # torchvision's IMAGENET1K_V1
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
}
NONE = "none"

# The stem convolution of each layout: the key that tells the layout and the prefix before it.
TORCHVISION_STEM = "conv1.weight"  # torchvision and timm (timm's ResNets keep torchvision's names)
HUGGINGFACE_STEM = "embedder.embedder.convolution.weight"  # transformers' ResNetModel
EXPECTED_LEFT_OUT = re.compile(r"^(fc|classifier|head)\.|num_batches_tracked$")  # classification heads, counters


def weights_location(backbone, backbone_weights):
    """The location (hub.resolve) of backbone_weights for a ResNet of that name; None for "none"."""
    if backbone_weights == NONE:
        return None
    if backbone_weights == "imagenet":
        return IMAGENET_URLS[backbone]
    return backbone_weights


def read_state_dict(path):
    """The tensors of a weights file or hub directory, unwrapped from a training checkpoint's
    "state_dict" / "model" entry if they sit in one."""
    state = read_weights(path) if os.path.isdir(path) else read_weights_file(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict of a ResNet, found a {type(state).__name__}")
    return state


def to_torchvision_layout(state, where):
    """(the ResNet's tensors of state under torchvision's names: conv1, bn1, layer1..4, fc; the
    keys of state that are not the ResNet's), whatever prefix the ResNet's keys carry (module.,
    backbone., model., resnet., ...) and whether in torchvision's, timm's or Hugging Face's layout."""
    for stem, hf in ((TORCHVISION_STEM, False), (HUGGINGFACE_STEM, True)):
        prefixes = [k[: -len(stem)] for k in state if k == stem or k.endswith("." + stem)]
        if prefixes:
            prefix = min(prefixes, key=len)  # the stem's: a block's own conv1 sits deeper
            parts = ("embedder.", "encoder.") if hf else ("",)
            ours = [k for k in state if k.startswith(tuple(prefix + p for p in parts))]
            inner = {k[len(prefix):]: state[k] for k in ours}
            if hf:
                inner = rename(inner, RESNET_RULES, to_ours=True, offsets=RESNET_OFFSETS)
            return inner, sorted(set(state) - set(ours))
    raise ValueError(f"{where}: not the weights of a ResNet: no {TORCHVISION_STEM!r} (torchvision, timm) or "
                     f"{HUGGINGFACE_STEM!r} (Hugging Face) among its {len(state)} keys (first: {list(state)[:5]})")


def resnet_name(state):
    """'resnet50', ... of a torchvision-layout state dict, from its blocks; None if none fits."""
    blocks = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}) for s in (1, 2, 3, 4))
    bottleneck = any(k.startswith("layer1.0.conv3.") for k in state)
    return {((3, 4, 6, 3), True): "resnet50", ((3, 4, 23, 3), True): "resnet101", ((2, 2, 2, 2), False): "resnet18",
            ((3, 4, 6, 3), False): "resnet34"}.get((blocks, bottleneck))


def load_backbone_weights(model, backbone_weights=None, progress=True):
    """Loads the weights named by backbone_weights (default: model.config.backbone_weights) into
    model.backbone.body. Returns a report dict: "source" (the local file or directory), "loaded"
    (our keys), "left_out" (theirs not used: a classification head, stages the model does not
    build); None for "none". Raises ValueError for a ResNet of another depth or weights that do
    not fill the backbone."""
    config = model.config
    backbone_weights = config.backbone_weights if backbone_weights is None else backbone_weights
    location = weights_location(config.backbone, backbone_weights)
    if location is None:
        return None
    path = hub.resolve(location, hub_files=(), progress=progress)
    state, foreign = to_torchvision_layout(read_state_dict(path), backbone_weights)
    depth = resnet_name(state)
    if depth is not None and depth != config.backbone:
        raise ValueError(f"{backbone_weights}: these are the weights of a {depth}, the model's backbone is a "
                         f"{config.backbone} (DABDETRConfig.backbone)")
    body = model.backbone.body
    target = {k: v for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(k for k in target if k not in state)
    if missing:
        raise ValueError(f"{backbone_weights}: the weights lack {len(missing)} of the backbone's {len(target)} tensors "
                         f"(first: {missing[:5]}): a {config.backbone} in torchvision's, timm's or Hugging Face's "
                         "layout fills it")
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in target.items() if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{backbone_weights}: {len(wrong)} tensors have other shapes than the backbone's "
                         f"(name, theirs, ours; first: {wrong[:3]})")
    body.load_state_dict({k: state[k] for k in target}, strict=False)
    unused = [k for k in state if k not in target]
    unexpected = [k for k in unused if not EXPECTED_LEFT_OUT.search(k) and not _unbuilt_stage(k, config)]
    left_out = sorted(unused + foreign)
    logger.info("backbone weights %s (%s): loaded %d tensors; left out %d (%s)%s", backbone_weights, path, len(target),
                len(left_out), ", ".join(sorted({k.rsplit(".", 1)[0] for k in left_out})[:6]) or "none",
                f"; NOT EXPECTED: {unexpected[:10]}" if unexpected else "")
    return {"source": path, "loaded": sorted(target), "left_out": left_out}


def _unbuilt_stage(key, config):
    """Whether key belongs to a stage after the one the model reads (backbone_stage < 4)."""
    match = re.match(r"^layer(\d)\.", key)
    return bool(match) and int(match.group(1)) > config.backbone_stage
