"""DAB-Deformable-DETR (dabdetr.models.deformable_detector): its parts against formulas written here,
the fused ops against the reference ops (CPU kernels, and the CUDA kernels on the emulator), the
query layout with patterns, the presets, and a training run."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES, check_target

import dabdetr.models.deformable_transformer as deformable_transformer
from dabdetr.models import DABDeformableDETR, build_model
from dabdetr.models.deformable_transformer import (
    FeatureLevels,
    MultiScaleDeformableAttention,
    encoder_reference_points,
    sampling_locations,
)
from dabdetr.models.position_encoding import PositionEmbeddingSineHW

TINY = {"architecture": "dab_deformable_detr", "backbone": "resnet18", "backbone_norm": "batch_norm",
        "backbone_frozen_stages": 0, "backbone_weights": "none", "backbone_stage": 3, "hidden_dim": 64,
        "num_heads": 4, "ffn_dim": 96, "num_encoder_layers": 2, "num_decoder_layers": 2, "num_queries": 7,
        "num_classes": 5, "num_select": 20, "pe_temperature_h": 10000.0, "pe_temperature_w": 10000.0}
CPU_KERNELS = [t for t in DEVICES if t.id != "cuda"]


def tiny(**overrides):
    torch.manual_seed(0)
    model = build_model("dab_detr_r50", **{**TINY, **overrides})
    with torch.no_grad():  # trained-looking weights: the init's zero offsets and weights hide most paths
        for name, parameter in model.named_parameters():
            if "backbone" not in name:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    return model


def images_and_mask(batch=2, height=80, width=112):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(batch, 3, height, width, generator=g)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    mask[1, :, width * 3 // 4:] = True
    mask[1, height * 5 // 6:, :] = True
    return images, mask


def test_outputs_and_levels():
    model = tiny().eval()
    images, mask = images_and_mask()
    out = model(images, mask)
    assert out["pred_logits"].shape == (2, 7, 5) and out["pred_boxes"].shape == (2, 7, 4)
    assert len(out["aux_outputs"]) == 1 and out["references"].shape == (2, 2, 7, 4)
    assert ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    # Four levels: ResNet-18's C2-C4 (64, 128, 256 channels: backbone_stage 3) and a strided one on C4.
    assert [p[0].in_channels for p in model.input_proj] == [64, 128, 256, 256]
    assert [p[0].stride for p in model.input_proj] == [(1, 1)] * 3 + [(2, 2)]
    logits, boxes = model.predict(images, mask)
    torch.testing.assert_close(logits, out["pred_logits"])
    torch.testing.assert_close(boxes, out["pred_boxes"])


def test_position_encoding_of_pixel_centres():
    """Deformable DETR's encoding: per axis, (valid pixels counted up to here - 0.5) / (valid pixels
    in the row or column) * 2 pi over temperature^(2 floor(k / 2) / n), sin at even k, cos at odd k,
    y first; written here in loops."""
    mask = torch.zeros(1, 3, 5, dtype=torch.bool)
    mask[0, :, 4:] = True
    n, temperature = 6, 10000.0
    pos = PositionEmbeddingSineHW(n, temperature, temperature, "reference", offset=0.5)(mask)
    for i in range(3):
        for j in range(4):  # the unpadded pixels (a padded column counts no valid pixel: no sensible y)
            y, x = (i + 1 - 0.5) / (3 + 1e-6), (j + 1 - 0.5) / (4 + 1e-6)
            expected = []
            for u in (y, x):
                for k in range(n):
                    angle = u * 2 * math.pi / temperature ** (2 * (k // 2) / n)
                    expected.append(math.sin(angle) if k % 2 == 0 else math.cos(angle))
            torch.testing.assert_close(pos[0, i * 5 + j], torch.tensor(expected), atol=1e-6, rtol=0)


def test_valid_ratios_and_encoder_reference_points():
    masks = [torch.zeros(2, 4, 6, dtype=torch.bool), torch.zeros(2, 2, 3, dtype=torch.bool)]
    masks[0][1, :, 3:] = True  # image 1: half its width padded at level 0
    masks[0][1, 3:, :] = True  # and its last row
    masks[1][1, :, 2:] = True
    levels = FeatureLevels.of(masks, torch.float64)
    assert levels.sizes == [(4, 6), (2, 3)] and levels.spatial_shapes.tolist() == [[4, 6], [2, 3]]
    assert levels.pixel_sizes.tolist() == [[6, 4], [3, 2]]
    torch.testing.assert_close(levels.valid_ratios[1], torch.tensor([[3 / 6, 3 / 4], [2 / 3, 2 / 2]],
                                                                    dtype=torch.float64))
    refs = encoder_reference_points(levels, "cpu")
    assert refs.shape == (2, 24 + 6, 2, 2)
    # Token (row 1, column 2) of level 0 in image 1: its centre (2.5, 1.5) over the valid extent (3, 3),
    # seen from level l: times level l's valid ratio.
    token = 1 * 6 + 2
    for level in range(2):
        expected = torch.tensor([2.5 / 3, 1.5 / 3], dtype=torch.float64) * levels.valid_ratios[1, level]
        torch.testing.assert_close(refs[1, token, level], expected)


@pytest.mark.parametrize("corners", [2, 4])
def test_deformable_attention_samples_where_the_offsets_say(corners):
    """With the offsets' weights zeroed, every query samples reference + bias offsets: a 2-d reference
    moves by bias pixels of each level, a 4-d one by bias / points * (w, h) / 2. The module's output
    against bilinear sampling written with grid_sample here."""
    torch.manual_seed(0)
    dim, heads, levels, points = 8, 2, 2, 3
    attn = MultiScaleDeformableAttention(dim, levels, heads, points, "reference").double()
    with torch.no_grad():
        attn.sampling_offsets.weight.zero_()
        attn.sampling_offsets.bias.copy_(torch.randn(heads * levels * points * 2) * 2)
        attn.attention_weights.weight.zero_()
        attn.attention_weights.bias.copy_(torch.randn(heads * levels * points))
    masks = [torch.zeros(1, 5, 7, dtype=torch.bool), torch.zeros(1, 3, 4, dtype=torch.bool)]
    feature_levels = FeatureLevels.of(masks, torch.float64)
    values = torch.randn(1, 35 + 12, dim, dtype=torch.float64)
    query = torch.randn(1, 2, dim, dtype=torch.float64)
    reference = torch.rand(1, 2, levels, corners, dtype=torch.float64) * 0.6 + 0.2
    out = attn(query, reference, values, feature_levels)

    bias = attn.sampling_offsets.bias.view(heads, levels, points, 2)
    weights = attn.attention_weights.bias.view(heads, levels * points).softmax(-1).view(heads, levels, points)
    value = attn.value_proj(values)[0]
    expected = torch.zeros(2, heads, dim // heads, dtype=torch.float64)
    start = 0
    for level, (h, w) in enumerate(feature_levels.sizes):
        grid = value[start: start + h * w].view(h, w, heads, -1).permute(2, 3, 0, 1)  # [heads, D, h, w]
        for q in range(2):
            for head in range(heads):
                for p in range(points):
                    r = reference[0, q, level]
                    if corners == 2:
                        loc = r + bias[head, level, p] / torch.tensor([w, h], dtype=torch.float64)
                    else:
                        loc = r[:2] + bias[head, level, p] / points * r[2:] * 0.5
                    sample = F.grid_sample(grid[head: head + 1], (2 * loc - 1).view(1, 1, 1, 2), align_corners=False)
                    expected[q, head] += weights[head, level, p] * sample.view(-1)
        start += h * w
    torch.testing.assert_close(out[0], attn.output_proj(expected.flatten(1)))


@pytest.mark.parametrize("coordinates", [2, 4])
def test_sampling_locations_against_the_formula(coordinates):
    """Points (x, y) + offsets / (W_l, H_l), or for boxes (cx, cy) + offsets * (w, h) * 0.5 / P, per
    head, level and point, written out with broadcasting in float64; gradients alike."""
    g = torch.Generator().manual_seed(0)
    B, N, H, L, P = 2, 5, 3, 4, 2
    offsets = torch.randn(B, N, H, L, P, 2, generator=g, dtype=torch.float64, requires_grad=True)
    reference = torch.rand(B, N, L, coordinates, generator=g, dtype=torch.float64, requires_grad=True)
    pixel_sizes = torch.tensor([[13.0, 10.0], [7.0, 5.0], [4.0, 3.0], [2.0, 1.0]], dtype=torch.float64)
    got = sampling_locations(reference, offsets, pixel_sizes)
    r = reference[:, :, None, :, None, :]
    if coordinates == 2:
        expected = r + offsets / pixel_sizes[:, None, :]
    else:
        expected = r[..., :2] + offsets * r[..., 2:] * 0.5 / P
    assert got.shape == (B, N, H, L, P, 2)
    torch.testing.assert_close(got, expected, rtol=1e-15, atol=1e-15)
    grad = torch.randn(got.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, [offsets, reference], grad),
                    torch.autograd.grad(expected, [offsets, reference], grad)):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("tokens", [3, 5, 37])
def test_feed_forward_in_blocks_of_tokens(monkeypatch, tokens):
    """The feed-forward block against norm(x + W2 relu(W1 x + b1) + b2) written out, with gradients
    (the whole layer at once) and in inference (blocks of FEED_FORWARD_BLOCK tokens once there are
    more, the last block shorter), in float64."""
    monkeypatch.setattr(deformable_transformer, "FEED_FORWARD_BLOCK", 8)
    layer = tiny().transformer.encoder.layers[0].double()
    blocks = []
    monkeypatch.setattr(layer, "hidden_to_output", lambda hidden, x, run=layer.hidden_to_output:
                        blocks.append(tuple(x.shape[:-1])) or run(hidden, x))
    x = torch.randn(2, tokens, 64, dtype=torch.float64)
    hidden = torch.clamp(x @ layer.linear1.weight.T + layer.linear1.bias, min=0)
    expected = F.layer_norm(x + hidden @ layer.linear2.weight.T + layer.linear2.bias, (64,),
                            layer.norm2.weight, layer.norm2.bias)
    torch.testing.assert_close(layer.feed_forward(x, layer.norm2), expected)
    assert blocks == [(2, tokens)]
    blocks.clear()
    with torch.no_grad():
        torch.testing.assert_close(layer.feed_forward(x, layer.norm2), expected)
    rows = 2 * tokens
    assert blocks == ([(8,)] * (rows // 8) + [(rows % 8,)] if rows > 8 else [(2, tokens)])


def test_attention_weights_reach_the_op_as_float32_under_bf16_autocast(monkeypatch):
    """CPU autocast leaves softmax in the input's dtype: the module takes the softmax of the bf16
    logits in float32, as CUDA autocast would, so the weights are not rounded to bf16; the values
    reach the op in bf16."""
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(16, 2, 2, 3, "reference")
    with torch.no_grad():
        attn.attention_weights.weight.normal_()
    calls = []

    def op(value, spatial_shapes, level_start_index, locations, weights, impl):
        calls.append(weights)
        # bf16 values as the projection made them (no float32 copy), float32 locations.
        assert value.dtype == torch.bfloat16 and locations.dtype == torch.float32
        return value[:, :3].flatten(2)

    monkeypatch.setattr(deformable_transformer, "multi_scale_deformable_attention", op)
    masks = [torch.zeros(1, 5, 7, dtype=torch.bool), torch.zeros(1, 3, 4, dtype=torch.bool)]
    query = torch.randn(1, 3, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(query, torch.rand(1, 3, 2, 2), torch.randn(1, 47, 16), FeatureLevels.of(masks, torch.float32))
        logits = attn.attention_weights(query)
    assert logits.dtype == torch.bfloat16 and calls[0].dtype == torch.float32
    torch.testing.assert_close(calls[0].flatten(2), logits.float().view(1, 3, 2, 6).softmax(-1).flatten(2),
                               rtol=0, atol=0)


def test_patterns_lay_out_queries_pattern_by_pattern():
    model = tiny(num_patterns=3)
    tgt, anchors = model.queries(2)
    assert tgt.shape == (2, 21, 64) and anchors.shape == (2, 21, 4)
    for p in range(3):
        for q in range(7):
            torch.testing.assert_close(tgt[1, p * 7 + q], model.tgt_embed.weight[q] + model.patterns_embed.weight[p])
            torch.testing.assert_close(anchors[1, p * 7 + q], model.refpoint_embed.weight[q].sigmoid())
    out = model.eval()(*images_and_mask())
    assert out["pred_logits"].shape == (2, 21, 5)


def _outputs_and_grads(model, images, mask):
    model.train()
    out = model(images, mask)
    loss = sum(o["pred_logits"].sigmoid().sum() + o["pred_boxes"].sum() for o in [out, *out["aux_outputs"]])
    params = [p for p in model.parameters() if p.requires_grad]
    return [out["pred_logits"], out["pred_boxes"], *torch.autograd.grad(loss, params)]


@pytest.mark.parametrize("target", CPU_KERNELS)
def test_fused_ops_match_the_reference_ops_in_float64(target):
    """The whole model, forward and backward, on the fused ops (CPU kernels; CUDA kernels on the
    emulator) against the same weights on the reference ops (grid_sample, the PyTorch sine
    embedding), in float64."""
    check_target(target)
    base = tiny(num_patterns=2, ops_impl="reference").double()
    images, mask = images_and_mask(height=48, width=64)
    runs = []
    for impl in ("reference", target.impl):
        model = DABDeformableDETR(base.config.replace(ops_impl=impl)).double()
        model.load_state_dict(base.state_dict())
        runs.append(_outputs_and_grads(model, images.double(), mask))
    for i, (got, want) in enumerate(zip(*runs)):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9, msg=f"output/gradient {i}")


def test_presets_and_config_checks():
    r50 = build_model("dab_deformable_detr_r50", backbone_weights="none")
    assert isinstance(r50, DABDeformableDETR) and r50.config.num_feature_levels == 4
    assert [p[0].in_channels for p in r50.input_proj] == [512, 1024, 2048, 2048]
    assert r50.config.pe_temperature_h == 10000.0 and r50.config.num_select == 100
    assert len(r50.class_embed) == len(r50.bbox_embed) == 6
    assert isinstance(build_model("demo_deformable"), DABDeformableDETR)
    with pytest.raises(ValueError, match="GroupNorm"):
        build_model("demo_deformable", hidden_dim=80, num_heads=8)
    with pytest.raises(ValueError, match="does not use dn_groups"):
        build_model("demo_deformable", dn_groups=2)
    with pytest.raises(ValueError, match="backbone_stage >= 3"):
        build_model("demo_deformable", backbone_stage=2)
    with pytest.raises(ValueError, match="architecture must be one of"):
        build_model("demo_deformable", architecture="deformable")


def test_dc5_dilates_the_last_stage_and_the_extra_level_strides_it():
    """With dilation (DC5) the last stage keeps stride 16: levels at strides 8, 16, 16, 32."""
    model = tiny(backbone_stage=4, dilation=True).eval()
    sizes = []
    hooks = [p.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:]))) for p in model.input_proj]
    images, mask = images_and_mask(height=80, width=112)
    model(images, mask)
    for hook in hooks:
        hook.remove()
    assert sizes == [(10, 14), (5, 7), (5, 7), (3, 4)]
    assert [p[0].in_channels for p in model.input_proj] == [128, 256, 512, 512]


def test_compiles_into_one_graph():
    """torch.compile(fullgraph=True) of predict: the level sizes, valid ratios and the op's checks
    trace without a graph break, and the compiled model gives the eager outputs."""
    model = tiny().eval()
    images, mask = images_and_mask()
    compiled = torch.compile(model.predict, fullgraph=True, backend="eager")
    with torch.no_grad():
        for got, expected in zip(compiled(images, mask), model.predict(images, mask)):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


# ---- checkpoints ----------------------------------------------------------------------------------

def test_official_checkpoint_round_trip(tmp_path):
    """An official DAB-Deformable-DETR checkpoint (the official names, the decoder's copies of the box
    heads, the args the official code builds the model from) reads back as the same model, with what
    the weights cannot tell (heads, and so points per head) from the args; the official code ignores
    its temperature args, and so does the reader."""
    from dabdetr import from_pretrained
    from dabdetr.weights.formats.official import official_args, to_official_state_dict

    model = tiny(num_patterns=2, num_heads=2, encoder_points=3, decoder_points=2, num_feature_levels=3).eval()
    state = to_official_state_dict(model)
    assert "backbone.0.body.conv1.weight" in state and "transformer.decoder.bbox_embed.1.layers.2.bias" in state
    args = official_args(model.config)
    assert (args.modelname, args.nheads, args.enc_n_points, args.dec_n_points) == ("dab_deformable_detr", 2, 3, 2)
    args.pe_temperatureH = args.pe_temperatureW = 20  # the official parser's defaults, which its model ignores
    torch.save({"model": state, "args": args, "epoch": 49}, tmp_path / "checkpoint.pth")
    loaded = from_pretrained(str(tmp_path / "checkpoint.pth"))
    assert isinstance(loaded, DABDeformableDETR) and loaded.config.pe_temperature_h == 10000.0
    fields = ("num_heads", "encoder_points", "decoder_points", "num_feature_levels", "num_patterns", "num_queries",
              "hidden_dim", "num_classes")
    assert {f: getattr(loaded.config, f) for f in fields} == {f: getattr(model.config, f) for f in fields}
    images, mask = images_and_mask()
    for got, want in zip(loaded.predict(images, mask), model.predict(images, mask)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_official_checkpoint_without_args_takes_eight_heads(tmp_path):
    from dabdetr import from_pretrained
    from dabdetr.weights.formats.official import to_official_state_dict

    model = tiny(num_heads=8)
    torch.save({"model": to_official_state_dict(model)}, tmp_path / "bare.pth")
    assert from_pretrained(str(tmp_path / "bare.pth")).config.decoder_points == 4
    odd = tiny(num_heads=4, encoder_points=3)  # 4 x 4 x 3 x 2 offsets: no whole number of points for 8 heads
    torch.save({"model": to_official_state_dict(odd)}, tmp_path / "odd.pth")
    with pytest.raises(ValueError, match="not a whole number of points for 8 heads"):
        from_pretrained(str(tmp_path / "odd.pth"))


def test_formats_without_the_model_refuse_it():
    from dabdetr.weights.formats.huggingface import to_huggingface_state_dict
    from dabdetr.weights.formats.mmdetection import to_mmdetection_state_dict
    from dabdetr.weights.formats.official import to_official_state_dict

    model = tiny()
    for write, name in ((to_huggingface_state_dict, "Hugging Face"), (to_mmdetection_state_dict, "MMDetection")):
        with pytest.raises(ValueError, match=f"the {name} format has no DAB-Deformable-DETR"):
            write(model)
    with pytest.raises(ValueError, match="fixes DAB-Deformable-DETR's position encoding at temperature 10000"):
        to_official_state_dict(tiny(pe_temperature_h=20.0))


def test_saved_model_directory_round_trip(tmp_path):
    from dabdetr import from_pretrained

    model = tiny().eval()
    model.save_pretrained(str(tmp_path / "model"), class_names={0: "a"})
    loaded = from_pretrained(str(tmp_path / "model"))
    assert isinstance(loaded, DABDeformableDETR) and loaded.config == model.config
    images, mask = images_and_mask()
    torch.testing.assert_close(loaded.predict(images, mask)[1], model.predict(images, mask)[1], rtol=0, atol=0)


# ---- two-stage ------------------------------------------------------------------------------------

def test_two_stage_proposals_and_queries():
    """Every encoder token proposes a box at its pixel centre (normalized by its level's unpadded
    size) with sides 0.05 * 2^level; padded and edge tokens (a coordinate outside (0.01, 0.99)) are
    never usable (zero memory, inf logits: boxes of 1); the num_queries proposals of highest logit
    over all classes become the decoder's anchors, and their projected memory its content queries."""
    model = tiny(two_stage=True).eval()
    images, mask = images_and_mask()
    out = model(images, mask)
    proposals = out["enc_outputs"]
    assert proposals["pred_logits"].shape == (2, 7, 5) and proposals["pred_boxes"].shape == (2, 7, 4)
    assert len(model.class_embed) == len(model.bbox_embed) == 3 and not hasattr(model, "tgt_embed")
    # Every token's proposal, from the encoder's memory (hooked) through the formulas written here.
    captured = {}
    model.transformer.encoder.register_forward_hook(lambda module, args, output: captured.update(memory=output))
    tgts = []
    model.transformer.decoder.register_forward_pre_hook(lambda module, args: tgts.append(args[0]))
    model(images, mask)
    memory = captured["memory"]
    features, masks = model.backbone(images, mask)
    levels = []
    last = masks[-1].shape[-2:]  # the strided level: a 3x3 stride-2 convolution on the last one
    extra = F.interpolate(mask[None].float(), size=((last[0] + 1) // 2, (last[1] + 1) // 2))[0].bool()
    for level, m in enumerate(masks + [extra]):
        h, w = m.shape[-2:]
        valid_h, valid_w = (~m[:, :, 0]).sum(1), (~m[:, 0, :]).sum(1)
        for i in range(h):
            for j in range(w):
                cx, cy = (j + 0.5) / valid_w, (i + 0.5) / valid_h
                side = torch.full_like(cx, 0.05 * 2**level)
                levels.append((torch.stack((cx, cy, side, side), -1), m[:, i, j]))
    boxes = torch.stack([b for b, _ in levels], 1)
    padded = torch.stack([p for _, p in levels], 1)
    usable = ((boxes > 0.01) & (boxes < 0.99)).all(-1) & ~padded
    assert memory.shape[1] == boxes.shape[1] and (~usable[1]).any()
    projected = model.transformer.enc_output_norm(model.transformer.enc_output(memory * usable[..., None]))
    logits = model.class_embed[-1](projected)
    box_logits = model.bbox_embed[-1](projected) + torch.where(usable[..., None], torch.logit(boxes), math.inf)
    best = logits.max(-1).values.topk(7, dim=1).indices
    for b in range(2):
        torch.testing.assert_close(proposals["pred_logits"][b], logits[b, best[b]])
        torch.testing.assert_close(proposals["pred_boxes"][b], box_logits[b, best[b]].sigmoid())
        torch.testing.assert_close(tgts[0][b], projected[b, best[b]])
    torch.testing.assert_close(out["references"][0], proposals["pred_boxes"])


@pytest.mark.parametrize("target", CPU_KERNELS)
def test_two_stage_fused_ops_match_the_reference_ops(target):
    check_target(target)
    base = tiny(two_stage=True, ops_impl="reference").double()
    images, mask = images_and_mask(height=48, width=64)
    runs = []
    for impl in ("reference", target.impl):
        model = DABDeformableDETR(base.config.replace(ops_impl=impl)).double().train()
        model.load_state_dict(base.state_dict())
        out = model(images.double(), mask)
        proposals = out["enc_outputs"]
        loss = (out["pred_logits"].sigmoid().sum() + out["pred_boxes"].sum() + proposals["pred_logits"].sum()
                + proposals["pred_boxes"].sum())
        runs.append([out["pred_logits"], out["pred_boxes"], *torch.autograd.grad(loss, list(model.parameters()))])
    for i, (got, want) in enumerate(zip(*runs)):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9, msg=f"output/gradient {i}")


def test_two_stage_saved_model_directory_round_trip(tmp_path):
    """Ours holds the two-stage model (the official format cannot: its code's two-stage path does
    not run; detrex's checkpoints are read in tests/test_detrex_checkpoints.py)."""
    from dabdetr import from_pretrained

    model = tiny(two_stage=True, num_queries=5).eval()
    model.save_pretrained(str(tmp_path / "two_stage"))
    loaded = from_pretrained(str(tmp_path / "two_stage"))
    assert loaded.config.two_stage and loaded.config.num_queries == 5
    images, mask = images_and_mask()
    torch.testing.assert_close(loaded.predict(images, mask)[0], model.predict(images, mask)[0], rtol=0, atol=0)


def test_two_stage_needs_as_many_tokens_as_queries():
    model = tiny(two_stage=True, num_queries=1000).eval()
    images, mask = images_and_mask(height=64, width=64)  # 16x16 + 8x8 + 4x4 + 2x2 = 340 tokens
    with pytest.raises(RuntimeError, match="chooses its 1000 queries among the encoder's tokens, but these images "
                                           "give 340: use larger images or fewer num_queries"):
        model(images, mask)
