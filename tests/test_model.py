"""The DAB-DETR model: parity with Hugging Face transformers, checkpoint formats, kernel vs
reference ops, post-processing, backbone details."""

import argparse
import math

import pytest
import torch
from conftest import DEVICES, check_target

import dabdetr
from dabdetr.models import DABDETR, build_model, post_process, preset
from dabdetr.weights import pretrained
from dabdetr.weights.formats import huggingface


def _images(batch=2, height=128, width=160, seed=0):
    """Images and a padding mask whose second image is padded on the right and bottom."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, height, width, generator=g)
    mask = torch.zeros(batch, height, width, dtype=torch.bool)
    mask[1:, :, width * 3 // 4:] = True
    mask[1:, height * 3 // 4:, :] = True
    return images, mask


def _randomize(model, seed=0):
    """Make a fresh model non-degenerate: anchors spread out, box refinement and PReLU active."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.refpoint_embed.weight.copy_(torch.randn(model.refpoint_embed.weight.shape, generator=g))
        last = model.bbox_embed.layers[-1]
        last.weight.copy_(torch.randn(last.weight.shape, generator=g) * 0.02)
        last.bias.copy_(torch.randn(last.bias.shape, generator=g) * 0.1)
        for m in model.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5)
    return model


# --- parity with Hugging Face ---------------------------------------------------------------

@pytest.mark.parametrize("num_patterns,temperature", [(0, 20), (3, 10)])
def test_matches_huggingface(tmp_path, num_patterns, temperature):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.DabDetrConfig(
        use_timm_backbone=False, backbone=None, use_pretrained_backbone=False,
        backbone_config=transformers.ResNetConfig(out_features=["stage4"]), num_labels=91, dropout=0.0,
        num_patterns=num_patterns, temperature_height=temperature, temperature_width=temperature,
    )
    hf = transformers.DabDetrForObjectDetection(config).eval()
    with torch.no_grad():  # what a fresh model leaves degenerate (anchors, zero box layer) made random
        hf.model.query_refpoint_embeddings.weight.normal_(0, 1)
        hf.bbox_predictor.layers[2].weight.normal_(0, 0.02)
        hf.bbox_predictor.layers[2].bias.normal_(0, 0.1)
        for m in hf.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(0, 0.5)
    hf.save_pretrained(tmp_path)
    ours = dabdetr.from_pretrained(str(tmp_path))
    assert ours.config.num_patterns == num_patterns and ours.config.pe_temperature_h == temperature

    images, mask = _images()
    with torch.no_grad():
        expected = hf(pixel_values=images, pixel_mask=(~mask).long())
        expected_refs = hf.model(pixel_values=images, pixel_mask=(~mask).long()).reference_points
        out = ours(images, mask)
    torch.testing.assert_close(out["pred_logits"], expected.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(out["pred_boxes"], expected.pred_boxes, rtol=0, atol=1e-4)
    torch.testing.assert_close(out["references"], expected_refs, rtol=0, atol=1e-4)
    assert out["pred_boxes"].std() > 0.05  # the anchors moved: refinement was exercised


# --- checkpoint formats ---------------------------------------------------------------------

def _small(**overrides):
    """The demo architecture with frozen batch norm and the anchor temperature of published checkpoints."""
    overrides = {"backbone_norm": "frozen_bn", "backbone_frozen_stages": 1, "backbone_stage": 4, "dn_groups": 0,
                 "anchor_temperature": 10000.0, **overrides}
    return _randomize(build_model("demo", num_queries=20, **overrides).eval())


def _outputs(model):
    images, mask = _images(height=96, width=128)
    with torch.no_grad():
        return model(images, mask)


def _assert_same_outputs(a, b):
    out_a, out_b = _outputs(a), _outputs(b)
    torch.testing.assert_close(out_a["pred_logits"], out_b["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(out_a["pred_boxes"], out_b["pred_boxes"], rtol=0, atol=0)


def test_save_pretrained_round_trip(tmp_path):
    model = _small(num_patterns=3, dilation=True)
    model.save_pretrained(tmp_path)
    loaded = dabdetr.from_pretrained(str(tmp_path))
    assert loaded.config == model.config
    _assert_same_outputs(model, loaded)


def test_official_checkpoint(tmp_path):
    model = _small(keep_query_pos=True)
    path = tmp_path / "checkpoint.pth"
    args = argparse.Namespace(dilation=False, pe_temperatureH=20, pe_temperatureW=20, nheads=8, num_select=100)
    torch.save({"model": pretrained.to_official_state_dict(model), "args": args, "epoch": 49}, path)
    loaded = dabdetr.from_pretrained(str(path))
    assert loaded.config.keep_query_pos and loaded.config.num_select == 100
    _assert_same_outputs(model, loaded)


def test_official_checkpoint_carries_what_the_weights_cannot_tell(tmp_path):
    # Settings no tensor shape shows: without the checkpoint's args they would load as the defaults.
    settings = {"pe_temperature_h": 10.0, "pe_temperature_w": 10.0, "num_heads": 4, "num_select": 50,
                "random_refpoints_xy": True}
    model = _small(**settings)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": pretrained.to_official_state_dict(model), "args": pretrained.official_args(model.config)},
               path)
    loaded = dabdetr.from_pretrained(str(path))
    assert {k: getattr(loaded.config, k) for k in settings} == settings
    _assert_same_outputs(model, loaded)


def test_mmdetection_checkpoint(tmp_path):
    model = _small(num_classes=80, anchor_update_eps=1e-5, box_head_eps=1e-3)
    state = pretrained.to_mmdetection_state_dict(model)
    state["backbone.bn1.num_batches_tracked"] = torch.tensor(0)  # MMDetection keeps ordinary BN
    path = tmp_path / "mmdet.pth"
    torch.save({"state_dict": state, "meta": {"mmdet_version": "3.3.0"}}, path)
    loaded = dabdetr.from_pretrained(str(path))
    assert loaded.config.num_classes == 80
    assert (loaded.config.anchor_update_eps, loaded.config.box_head_eps) == (1e-5, 1e-3)
    _assert_same_outputs(model, loaded)


@pytest.mark.parametrize("hf_resnet", [False, True])
def test_huggingface_key_mapping_round_trips(hf_resnet):
    model = _small()
    state = huggingface.from_huggingface(pretrained.to_huggingface_state_dict(model, hf_resnet_backbone=hf_resnet))
    reference = model.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)


def test_mismatched_checkpoint_lists_keys(tmp_path):
    model = _small()
    state = pretrained.to_official_state_dict(model)
    del state["class_embed.bias"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    expected = r"missing keys 1: \['class_embed.bias'\].*unexpected keys 1: \['extra.weight'\]"
    with pytest.raises(ValueError, match=expected):
        dabdetr.from_pretrained(str(path))


def test_unknown_checkpoints_raise(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"weights": {}}, path)
    with pytest.raises(ValueError, match="not a DAB-DETR checkpoint.*'weights'"):
        dabdetr.from_pretrained(str(path))
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"corrupt.pth: not a checkpoint \(torch.save writes a zip archive"):
        dabdetr.from_pretrained(str(corrupt))
    with pytest.raises(FileNotFoundError):
        dabdetr.from_pretrained(str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="needs config.json"):
        dabdetr.from_pretrained(str(tmp_path))
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text('{"preset": "demo"}')  # a run's settings, not a model's
    with pytest.raises(ValueError, match="run: the folder of a training run; load its model/"):
        dabdetr.from_pretrained(str(tmp_path / "run"))


def test_checkpoints_of_another_model_name_what_they_lack(tmp_path):
    state = pretrained.to_official_state_dict(_small())
    del state["refpoint_embed.weight"]  # as a DETR checkpoint: a backbone, no anchors
    detr = tmp_path / "detr.pth"
    torch.save({"model": state}, detr)
    with pytest.raises(ValueError, match=r"detr.pth: read as an official DAB-DETR checkpoint .* no refpoint_embed"):
        dabdetr.from_pretrained(str(detr))
    classifier = tmp_path / "classifier.pth"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, classifier)
    with pytest.raises(ValueError, match=r"MMDetection checkpoint .* no ResNet.*first keys.*: fc.weight"):
        dabdetr.from_pretrained(str(classifier))


def test_separate_decoder_box_head_is_refused(tmp_path):
    state = pretrained.to_official_state_dict(_small())
    state["transformer.decoder.bbox_embed.layers.0.bias"] = state["transformer.decoder.bbox_embed.layers.0.bias"] + 1
    path = tmp_path / "diff.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match="differs from bbox_embed.layers.0.bias"):
        dabdetr.from_pretrained(str(path))


# --- the model itself -----------------------------------------------------------------------

CPU_KERNELS = [t for t in DEVICES if t.id != "cuda"]  # the CPU kernels, and the CUDA ones emulated


def _outputs_and_grads(model, images, mask, targets=None):
    """Training-mode outputs and the gradients of a loss over every output (denoising included)."""
    model.train()
    torch.manual_seed(0)  # the same denoising noise for every model
    out = model(images, mask, targets)
    layers = [out, *out["aux_outputs"], *([out["dn_outputs"]] if "dn_outputs" in out else [])]
    loss = sum(o["pred_logits"].sigmoid().sum() + o["pred_boxes"].sum() for o in layers)
    params = [p for p in model.parameters() if p.requires_grad]
    return out, torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("target", CPU_KERNELS)
def test_kernel_and_reference_ops_agree(target):
    check_target(target)
    model = _small(num_patterns=2)
    reference = DABDETR(model.config.replace(ops_impl="reference"))
    reference.load_state_dict(model.state_dict())
    kernel = DABDETR(model.config.replace(ops_impl=target.impl))
    kernel.load_state_dict(model.state_dict())
    images, mask = _images(height=96, width=128)
    (out_k, grads_k), (out_r, grads_r) = (_outputs_and_grads(m, images, mask) for m in (kernel, reference))
    torch.testing.assert_close(out_k["pred_logits"], out_r["pred_logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_k["pred_boxes"], out_r["pred_boxes"], rtol=1e-4, atol=1e-5)
    names = [n for n, p in kernel.named_parameters() if p.requires_grad]
    for name, gk, gr in zip(names, grads_k, grads_r):
        assert (gk is None) == (gr is None), name
        if gk is not None:
            torch.testing.assert_close(gk, gr, rtol=1e-3, atol=1e-4, msg=name)


def test_demo_model_on_the_emulated_cuda_kernels_equals_the_reference_ops():
    """A training step's forward and backward of the demo preset (denoising queries included) with
    every fused op on the CUDA kernels, run by the emulator, against the reference ops in float64:
    within 4x the distance of the CPU kernels from the reference (the model amplifies any
    difference of summation order: about 1e-8 in the logits for the CPU kernels too)."""
    check_target(next(t for t in CPU_KERNELS if t.id == "cuda_emulated").values[0])
    torch.manual_seed(0)
    base = _randomize(build_model("demo", num_classes=5, ops_impl="reference")).double()
    images, mask = _images(height=128, width=128)
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]],
                                                                       dtype=torch.float64)},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]], dtype=torch.float64)}]
    runs = {}
    for impl in ("reference", "kernel", "cuda_emulated"):
        model = DABDETR(base.config.replace(ops_impl=impl)).double()
        model.load_state_dict(base.state_dict())
        out, grads = _outputs_and_grads(model, images.double(), mask, targets)
        assert "dn_outputs" in out
        runs[impl] = [out["pred_logits"], out["pred_boxes"], out["dn_outputs"]["pred_logits"],
                      out["dn_outputs"]["pred_boxes"], *(g for g in grads if g is not None)]
    reference, cpu, emulated = runs["reference"], runs["kernel"], runs["cuda_emulated"]
    assert len(reference) == len(cpu) == len(emulated)
    for i, (r, k, e) in enumerate(zip(reference, cpu, emulated)):
        floor = 1e-12 * max(1.0, r.abs().max().item())
        assert (e - r).abs().max() <= 4 * (k - r).abs().max() + floor, f"output/gradient {i}"


def test_published_parameter_count():
    # docs/architecture.md (parameter count): 43,671,517 for DAB-DETR-R50 with 91 classes (BN as buffers).
    assert sum(p.numel() for p in build_model("dab_detr_r50").parameters()) == 43_671_517


def test_backbone_freezing_and_dc5_stride():
    def split(model):
        frozen = {n.split(".")[1] for n, p in model.backbone.named_parameters() if not p.requires_grad}
        return frozen, {n.split(".")[1] for n, p in model.backbone.named_parameters() if p.requires_grad}

    assert split(build_model("dab_detr_r50")) == ({"conv1", "layer1"}, {"layer2", "layer3", "layer4"})
    assert split(build_model("dab_detr_r50", train_backbone=False))[1] == set()
    scratch = build_model("demo")  # batch norm, nothing frozen: trained from scratch
    assert split(scratch) == (set(), {"conv1", "bn1", "layer1", "layer2", "layer3"})
    assert isinstance(scratch.backbone.body.bn1, torch.nn.BatchNorm2d)
    with pytest.raises(ValueError, match="needs backbone_frozen_stages=0"):
        build_model("demo", backbone_frozen_stages=1)
    images, mask = _images(batch=1, height=128, width=160)
    for overrides, stride, channels in (({}, 32, 512), ({"dilation": True}, 16, 512), ({"backbone_stage": 3}, 16, 256),
                                        ({"backbone_stage": 2}, 8, 128)):
        model = build_model("demo", **{"backbone_stage": 4, **overrides})
        (features,), (feature_mask,) = model.backbone(images, mask)
        assert features.shape[1:] == (channels, math.ceil(128 / stride), math.ceil(160 / stride))
        assert feature_mask.shape == (1, *features.shape[-2:])
        assert model.backbone.num_channels == [channels]
    # The multi-scale models read the last three stages: C3, C4, C5 at strides 8, 16, 32.
    features, masks = build_model("demo_deformable", backbone_stage=4).backbone(images, mask)
    assert [f.shape[1:] for f in features] == [(c, math.ceil(128 / s), math.ceil(160 / s))
                                               for c, s in ((128, 8), (256, 16), (512, 32))]
    assert [m.shape[1:] for m in masks] == [f.shape[-2:] for f in features]
    assert not any(k.startswith("backbone.body.layer3") for k in build_model("demo", backbone_stage=2).state_dict())


def test_post_process_against_brute_force():
    g = torch.Generator().manual_seed(0)
    outputs = {"pred_logits": torch.randn(2, 7, 5, generator=g),
               "pred_boxes": torch.rand(2, 7, 4, generator=g) * 0.5 + 0.2}
    sizes = torch.tensor([[480, 640], [300, 200]])
    results = post_process(outputs, sizes, num_select=4)
    for b, result in enumerate(results):
        candidates = sorted(((torch.sigmoid(outputs["pred_logits"][b, q, c]).item(), q, c)
                             for q in range(7) for c in range(5)), reverse=True)[:4]
        got = zip(result["scores"], result["labels"], result["boxes"])
        for (score, q, c), (got_score, got_label, got_box) in zip(candidates, got):
            cx, cy, w, h = outputs["pred_boxes"][b, q].tolist()
            H, W = sizes[b].tolist()
            assert got_label.item() == c and math.isclose(got_score.item(), score, rel_tol=1e-6)
            expected = [(cx - w / 2) * W, (cy - h / 2) * H, (cx + w / 2) * W, (cy + h / 2) * H]
            torch.testing.assert_close(got_box, torch.tensor(expected))


def test_post_process_names_target_sizes_of_the_wrong_shape():
    outputs = {"pred_logits": torch.zeros(2, 7, 5), "pred_boxes": torch.full((2, 7, 4), 0.5)}
    for sizes in (torch.tensor([480, 640]), torch.tensor([[480, 640]]), torch.tensor([[480, 640, 3]] * 2)):
        with pytest.raises(ValueError, match=r"target_sizes must be \[B, 2\] = \[2, 2\] \(height, width"):
            post_process(outputs, sizes)


def _bad_model_inputs():
    images, mask = _images(height=64, width=96)
    return [
        ("one_image", images[0], mask, ValueError, r"images must have shape \[B, 3, H, W\] .*got \(3, 64, 96\)"),
        ("gray", images[:, :1], mask, ValueError, r"images must have shape \[B, 3, H, W\] .*got \(2, 1, 64, 96\)"),
        ("uint8", images.to(torch.uint8), mask, TypeError, r"images must be floating point .*got torch.uint8"),
        ("pixel_mask", images, (~mask).long(), TypeError, r"mask must be a bool tensor \(True = .*torch.int64"),
        ("mask_size", images, mask[:, :32], ValueError, r"mask must have shape \[B, H, W\] = \(2, 64, 96\) .*"
                                                        r"got \(2, 32, 96\)"),
        ("mask_batch", images, mask[:1], ValueError, r"mask must have shape \[B, H, W\] = \(2, 64, 96\) .*"
                                                     r"got \(1, 64, 96\)"),
        ("mask_device", images, mask.to("meta"), ValueError, "mask is on meta but images is on cpu"),
    ]


@pytest.mark.parametrize("name,images,mask,error,message", _bad_model_inputs(), ids=[c[0] for c in _bad_model_inputs()])
def test_bad_model_inputs_are_named(name, images, mask, error, message):
    model = _small().eval()
    for run in (model, model.predict):
        with pytest.raises(error, match=message):
            run(images, mask)


def test_no_mask_is_no_padding():
    model = _small().eval()
    images, _ = _images(height=64, width=96)
    with torch.no_grad():
        unmasked, masked = model(images), model(images, torch.zeros(2, 64, 96, dtype=torch.bool))
    torch.testing.assert_close(unmasked["pred_boxes"], masked["pred_boxes"], rtol=0, atol=0)
    torch.testing.assert_close(unmasked["pred_logits"], masked["pred_logits"], rtol=0, atol=0)


def test_input_checks_compile_into_one_graph():
    """The checks read shapes and dtypes only: torch.compile(fullgraph=True) traces them away."""
    model = _small().eval()
    images, mask = _images(height=64, width=96)
    compiled = torch.compile(model.predict, fullgraph=True, backend="eager")
    with torch.no_grad():
        for given in (mask, None):
            for got, expected in zip(compiled(images, given), model.predict(images, given)):
                torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_predict_is_forward_without_the_training_outputs():
    model = _small(num_patterns=2)  # patterns: 40 queries
    images, mask = _images(height=96, width=128)
    with torch.no_grad():
        outputs, (logits, boxes) = model(images, mask), model.predict(images, mask)
    assert logits.shape == (2, 40, model.config.num_classes) and boxes.shape == (2, 40, 4)
    torch.testing.assert_close(logits, outputs["pred_logits"], rtol=0, atol=0)
    torch.testing.assert_close(boxes, outputs["pred_boxes"], rtol=0, atol=0)


def test_presets_build_and_validate():
    for name in ("dab_detr_r50_3pat", "dab_detr_r50_dc5", "dab_detr_r50_dc5_3pat", "dab_detr_r101"):
        config = preset(name)
        assert config.total_queries == 300 * max(config.num_patterns, 1)
    assert preset("dab_detr_r50_dc5").pe_temperature_h == 10.0
    with pytest.raises(ValueError, match="unknown preset"):
        preset("yolo")
    with pytest.raises(ValueError, match="ops_impl"):
        preset("demo", ops_impl="fast")


def test_huggingface_hub_layout_with_timm_backbone(tmp_path):
    # The published checkpoints use the default (timm) backbone: torchvision names under
    # model.backbone.conv_encoder.model._backbone, weights in model.safetensors.
    transformers = pytest.importorskip("transformers")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    model = _randomize(build_model("dab_detr_r50", hidden_dim=64, num_heads=4, ffn_dim=128, num_encoder_layers=1,
                                   num_decoder_layers=2, num_queries=10, anchor_update_eps=1e-5,
                                   box_head_eps=1e-5).eval())
    transformers.DabDetrConfig(
        hidden_size=64, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
        encoder_layers=1, decoder_layers=2, num_queries=10, num_labels=91,
    ).save_pretrained(tmp_path)
    state = pretrained.to_huggingface_state_dict(model)
    assert any(k.startswith("model.backbone.conv_encoder.model._backbone.layer4.") for k in state)
    weights = {k: v.clone().contiguous() for k, v in state.items()}
    safetensors_torch.save_file(weights, str(tmp_path / "model.safetensors"))
    loaded = dabdetr.from_pretrained(str(tmp_path))
    assert loaded.config == model.config.replace(dropout=0.1)  # Hugging Face's default dropout
    _assert_same_outputs(model, loaded)


@pytest.mark.parametrize("backbone,stage", [("resnet18", 3), ("resnet50", 4)])
def test_saved_huggingface_directory_runs_in_transformers(tmp_path, backbone, stage):
    # The writer's output, loaded by transformers itself, computes what our model computes.
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    model = _small(backbone=backbone, backbone_stage=stage, backbone_norm="batch_norm", backbone_frozen_stages=0,
                   dn_groups=2, num_patterns=2, anchor_update_eps=1e-5, box_head_eps=1e-5)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking batch-norm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
    pretrained.save_huggingface(model, tmp_path, class_names={0: "ellipse"})
    hf = transformers.DabDetrForObjectDetection.from_pretrained(str(tmp_path)).eval()
    assert hf.config.id2label[0] == "ellipse" and hf.config.num_labels == model.config.num_classes
    images, mask = _images(height=96, width=128)
    with torch.no_grad():
        expected = hf(pixel_values=images, pixel_mask=(~mask).long())
        out = model(images, mask)
    torch.testing.assert_close(out["pred_logits"], expected.logits, rtol=0, atol=1e-4)
    torch.testing.assert_close(out["pred_boxes"], expected.pred_boxes, rtol=0, atol=1e-4)
    # And back: our reader gets the same model (without the training-only denoising embedding).
    loaded = dabdetr.from_pretrained(str(tmp_path))
    assert loaded.config.backbone_stage == stage and loaded.config.dn_groups == 0
    _assert_same_outputs(model, loaded)


def test_other_formats_refuse_another_anchor_temperature(tmp_path):
    # They hard-code 10000: the written model would compute something else there.
    model = _small(anchor_temperature=20.0)
    for write in (pretrained.to_official_state_dict, pretrained.to_mmdetection_state_dict,
                  lambda m: pretrained.save_huggingface(m, tmp_path)):
        with pytest.raises(ValueError, match="fixes the anchors' temperature at 10000; this model uses "
                                             "anchor_temperature=20.0"):
            write(model)


def test_saved_huggingface_timm_layout_round_trips(tmp_path):
    # transformers needs timm to build this layout (not installed here); our reader checks it.
    pytest.importorskip("safetensors")
    model = _small(backbone="resnet50", dilation=True, anchor_update_eps=1e-5, box_head_eps=1e-5)
    with pytest.raises(ValueError, match="dilated .DC5. backbone only through timm"):
        pretrained.save_huggingface(model, tmp_path / "no")
    pretrained.save_huggingface(model, tmp_path, timm_backbone=True)
    loaded = dabdetr.from_pretrained(str(tmp_path))
    assert loaded.config.dilation
    _assert_same_outputs(model, loaded)


def test_explicit_source_of_the_wrong_kind_raises(tmp_path):
    path = tmp_path / "mmdet.pth"
    torch.save({"state_dict": pretrained.to_mmdetection_state_dict(_small())}, path)
    with pytest.raises(ValueError, match="source='official' expects a checkpoint with a 'model' key"):
        dabdetr.from_pretrained(str(path), source="official")


def test_denoising_queries_only_in_training():
    model = build_model("demo", num_queries=10, num_classes=5, dn_groups=3)
    images, mask = _images(height=96, width=128)
    targets = [{"labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4]])},
               {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.5, 0.5]])}]
    dn = model.train()(images, mask, targets)["dn_outputs"]
    # Groups of 8 queries (denoising.GROUP_LENGTH_MULTIPLE) for 2 and 1 objects.
    assert dn["pred_logits"].shape == (6, 8, 5) and dn["pred_boxes"].shape == (6, 8, 4)
    assert len(dn["aux_outputs"]) == 2
    assert dn["padding"].tolist() == [[False] * 2 + [True] * 6] * 3 + [[False] + [True] * 7] * 3
    assert torch.isfinite(dn["pred_boxes"]).all()
    assert "dn_outputs" not in model.eval()(images, mask, targets)
    assert not hasattr(build_model("dab_detr_r50"), "label_embed")  # off by default: the published weights


def test_query_blocks_decode_like_separate_decoder_passes():
    # Training decodes the matching queries and the denoising groups in one pass, with
    # self-attention confined to each block; that must equal decoding the matching queries alone
    # and every group as its own batch entry against a copy of its image's memory, values and
    # gradients.
    torch.manual_seed(0)
    model = build_model("demo", num_queries=10, num_classes=5).double()
    decoder, bbox_embed = model.transformer.decoder, model.bbox_embed
    groups, B, S, Nq, n, d = 3, 2, 24, 5, 4, decoder.config.hidden_dim
    memory, pos = (torch.randn(B, S, d, dtype=torch.float64, requires_grad=True) for _ in range(2))
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[1, 16:] = True
    tgt = torch.randn(B, Nq + groups * n, d, dtype=torch.float64)
    anchors = torch.rand(B, Nq + groups * n, 4, dtype=torch.float64) * 0.5 + 0.25
    padding = torch.zeros(B * groups, n, dtype=torch.bool)
    padding[groups:, 3] = True

    joint = decoder(tgt, memory, pos, mask, anchors, bbox_embed, [(1, Nq, None), (groups, n, padding)])
    matching = decoder(tgt[:, :Nq], memory, pos, mask, anchors[:, :Nq], bbox_embed)

    def per_group(x):
        return x[:, Nq:].reshape(B * groups, n, -1)

    def repeat(x):
        return x.repeat_interleave(groups, dim=0)

    grouped = decoder(per_group(tgt), repeat(memory), repeat(pos), repeat(mask), per_group(anchors), bbox_embed,
                      [(1, n, padding)])
    for a, m, g in zip(joint, matching, grouped):
        torch.testing.assert_close(a[:, :, :Nq], m, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a[:, :, Nq:].reshape(len(a), B * groups, n, -1), g, rtol=1e-10, atol=1e-12)
    grads = [torch.autograd.grad(out, (memory, pos)) for out in
             (joint[0].square().sum(), matching[0].square().sum() + grouped[0].square().sum())]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"query blocks \[\(1, 5\), \(3, 3\)\] .* do not cover the 17 queries"):
        decoder(tgt, memory, pos, mask, anchors, bbox_embed, [(1, Nq, None), (groups, 3, padding[:, :3])])
    with pytest.raises(ValueError, match=r"padding of 3 blocks of 4 queries has shape \(3, 4\), expected \(6, 4\)"):
        decoder(tgt, memory, pos, mask, anchors, bbox_embed, [(1, Nq, None), (groups, n, padding[:3])])
