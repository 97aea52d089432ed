"""detrex's checkpoints (dabdetr.weights.formats.detrex): state dicts laid out here as detrex's
modules name their parameters (detectron2's ResNet, BaseTransformerLayer's attentions / ffns /
norms in operation order, the ChannelMapper neck, the heads registered twice), written by a
mapping of this file's own; loaded back they must give the model's outputs exactly."""

import re

import pytest
import torch

import dabdetr
from dabdetr.models import build_model
from dabdetr.weights import zoo
from dabdetr.weights.formats.official import to_official_state_dict

COMMON = {"backbone": "resnet18", "backbone_norm": "frozen_bn", "backbone_weights": "none", "hidden_dim": 64,
          "num_heads": 8, "ffn_dim": 96, "num_encoder_layers": 2, "num_decoder_layers": 2, "num_queries": 7,
          "num_classes": 80, "anchor_temperature": 10000.0}


def randomized(model):
    torch.manual_seed(0)
    with torch.no_grad():  # trained-looking weights everywhere, the frozen statistics too
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
                if name.endswith("running_var"):
                    tensor.abs_().add_(0.5)
    return model.eval()


def dab_detr(**overrides):
    return randomized(build_model("dab_detr_r50", **{**COMMON, "backbone_stage": 4, **overrides}))


def dab_deformable_detr(**overrides):
    return randomized(build_model("dab_deformable_detr_r50", **{**COMMON, "backbone_stage": 4, **overrides}))


def detectron2_backbone_name(key):
    """torchvision's ResNet names -> detectron2's: stem, res{n + 1} for layer{n}, conv{k}.norm for
    bn{k}, shortcut (+ .norm) for the downsampling convolution (+ its norm)."""
    key = key.replace("backbone.body.", "backbone.")
    key = re.sub(r"^backbone\.conv1\.", "backbone.stem.conv1.", key)
    key = re.sub(r"^backbone\.bn1\.", "backbone.stem.conv1.norm.", key)
    key = re.sub(r"^backbone\.layer(\d)\.", lambda m: f"backbone.res{int(m[1]) + 1}.", key)
    key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
    return key.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")


def detrex_dab_detr_state(model):
    """A detrex DAB-DETR's state dict holding model's weights (projects/dab_detr)."""
    conditional = {"qcontent_proj": "query_content_proj", "qpos_proj": "query_pos_proj",
                   "kcontent_proj": "key_content_proj", "kpos_proj": "key_pos_proj", "v_proj": "value_proj",
                   "qpos_sine_proj": "query_pos_sine_proj"}
    layer = {"self_attn": "attentions.0.attn", "linear1": "ffns.0.layers.0.0", "activation": "ffns.0.layers.0.1",
             "linear2": "ffns.0.layers.1", "norm1": "norms.0", "norm2": "norms.1", "norm3": "norms.2"}
    state = {}
    for key, tensor in model.state_dict().items():
        key = detectron2_backbone_name(key)
        m = re.match(r"transformer\.(encoder|decoder)\.layers\.(\d+)\.(\w+)\.(.*)", key)
        if m:
            part, i, module, rest = m.groups()
            if part == "decoder" and module in ("self_attn", "cross_attn"):
                module = f"attentions.{0 if module == 'self_attn' else 1}"  # only out_proj lives there
            elif module[:3] in ("sa_", "ca_"):
                module = f"attentions.{0 if module[:3] == 'sa_' else 1}.{conditional[module[3:]]}"
            else:
                module = layer[module]
            key = f"transformer.{part}.layers.{i}.{module}.{rest}"
        key = key.replace("transformer.decoder.norm.", "transformer.decoder.post_norm_layer.")
        state[key] = tensor.clone()
        if key.startswith("bbox_embed."):
            state["transformer.decoder." + key] = tensor.clone()
    return state


def detrex_deformable_state(model):
    """A detrex DAB-Deformable-DETR's state dict holding model's weights
    (projects/dab_deformable_detr): the decoder's norms in operation order are the official
    norm2 (after self-attention), norm1 (after cross-attention), norm3."""
    backbone_levels = min(3, model.config.num_feature_levels)
    decoder_norms = {"norm2": 0, "norm1": 1, "norm3": 2}
    state = {}
    for key, tensor in model.state_dict().items():
        key = detectron2_backbone_name(key)
        m = re.match(r"input_proj\.(\d+)\.(\d)\.(.*)", key)
        if m:
            level, part, rest = int(m[1]), ("conv", "norm")[int(m[2])], m[3]
            key = (f"neck.convs.{level}.{part}.{rest}" if level < backbone_levels
                   else f"neck.extra_convs.{level - backbone_levels}.{part}.{rest}")
        key = key.replace("transformer.level_embed", "transformer.level_embeds")
        m = re.match(r"transformer\.(encoder|decoder)\.layers\.(\d+)\.(\w+)\.(.*)", key)
        if m:
            part, i, module, rest = m.groups()
            module = {"self_attn": "attentions.0" + ".attn" * (part == "decoder"), "cross_attn": "attentions.1",
                      "linear1": "ffns.0.layers.0.0", "linear2": "ffns.0.layers.1"}.get(module, module)
            if module.startswith("norm"):
                module = f"norms.{decoder_norms[module] if part == 'decoder' else int(module[4:]) - 1}"
            key = f"transformer.{part}.layers.{i}.{module}.{rest}"
        state[key] = tensor.clone()
        if key.startswith("bbox_embed.") or (model.config.two_stage and key.startswith("class_embed.")):
            state["transformer.decoder." + key] = tensor.clone()
    return state


def images_and_mask():
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 96, 128, generator=g)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, :, 96:] = True
    return images, mask


def assert_same_outputs(loaded, model):
    images, mask = images_and_mask()
    with torch.no_grad():
        for got, want in zip(loaded.predict(images, mask), model.predict(images, mask)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def save_detrex(path, state):
    torch.save({"model": state, "iteration": 374999}, path)  # detectron2's checkpointer's layout
    return str(path)


def test_detectron2_backbone_names():
    """Spot checks of the names detrex's files hold, against detectron2's ResNet layout."""
    state = detrex_deformable_state(dab_deformable_detr())
    for key in ("backbone.stem.conv1.weight", "backbone.stem.conv1.norm.running_var",
                "backbone.res2.0.conv2.norm.bias", "backbone.res3.0.shortcut.weight",
                "backbone.res5.1.conv1.norm.weight", "neck.convs.2.conv.weight", "neck.extra_convs.0.norm.bias",
                "transformer.level_embeds", "transformer.encoder.layers.1.attentions.0.sampling_offsets.weight",
                "transformer.decoder.layers.0.attentions.0.attn.in_proj_weight",
                "transformer.decoder.layers.0.attentions.1.value_proj.weight",
                "transformer.decoder.layers.1.ffns.0.layers.1.weight", "transformer.decoder.layers.1.norms.2.bias",
                "transformer.decoder.bbox_embed.1.layers.2.weight", "tgt_embed.weight", "refpoint_embed.weight"):
        assert key in state, key


def test_dab_detr(tmp_path):
    model = dab_detr()
    state = detrex_dab_detr_state(model)
    assert "transformer.decoder.layers.1.attentions.1.query_pos_proj.weight" not in state  # None past layer 0
    loaded = dabdetr.from_pretrained(save_detrex(tmp_path / "dab_detr.pth", state))
    assert loaded.config.num_classes == 80 and loaded.config.backbone == "resnet18"
    assert_same_outputs(loaded, model)


@pytest.mark.parametrize("overrides", [{}, {"input_proj_kernel_size": 3}, {"two_stage": True},
                                       {"num_feature_levels": 5, "encoder_points": 2}])
def test_dab_deformable_detr(tmp_path, overrides):
    """detrex's ChannelMapper defaults to 3x3 input projections: the kernel comes from the weights."""
    model = dab_deformable_detr(**overrides)
    path = save_detrex(tmp_path / "deformable.pth", detrex_deformable_state(model))
    # A two-stage file has no query weights: its query count is the preset's 300 unless given.
    loaded = dabdetr.from_pretrained(path, **({"num_queries": 7} if model.config.two_stage else {}))
    for field in ("input_proj_kernel_size", "two_stage", "num_feature_levels", "encoder_points", "num_classes"):
        assert getattr(loaded.config, field) == getattr(model.config, field), field
    assert_same_outputs(loaded, model)


def test_a_corrupted_copy_of_the_heads_is_refused(tmp_path):
    state = detrex_deformable_state(dab_deformable_detr())
    state["transformer.decoder.bbox_embed.0.layers.0.bias"] += 1
    with pytest.raises(ValueError, match=r"transformer\.decoder\.bbox_embed\.0\.layers\.0\.bias differs"):
        dabdetr.from_pretrained(save_detrex(tmp_path / "bad.pth", state))


def test_what_the_official_format_cannot_hold_is_refused():
    for overrides, reason in (({"two_stage": True}, "two-stage path does not run"),
                              ({"input_proj_kernel_size": 3}, "1x1 convolutions")):
        with pytest.raises(ValueError, match=reason):
            to_official_state_dict(dab_deformable_detr(**overrides))


def test_published_detrex_names_load_from_torch_cache(tmp_path, monkeypatch):
    """The zoo's detrex entries are URLs: a file already in torch's cache under the URL's name is
    loaded as detrex's, without a network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = dab_deformable_detr(two_stage=True)
    url = zoo.PUBLISHED["detrex-dab-deformable-detr-r50-two-stage"].location
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    save_detrex(tmp_path / "hub" / "checkpoints" / url.rsplit("/", 1)[1], detrex_deformable_state(model))
    assert_same_outputs(dabdetr.from_pretrained("detrex-dab-deformable-detr-r50-two-stage", num_queries=7), model)


def test_the_official_google_drive_entry_says_where_to_get_it():
    with pytest.raises(FileNotFoundError, match=r"drive\.google\.com/drive/folders/.*pass the file's path"):
        dabdetr.from_pretrained("dab-deformable-detr-r50")
