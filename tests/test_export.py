"""dabdetr.deployment.export and .runtime: every artifact, loaded in its runtime, against the eager model
on real photos (tinycoco, where present) and generated images, at three sizes and batch 1 and 3
from one exported file (each artifact is exported once per module); post-processing, bad input,
and the CLI around them. AOTInductor's packages: test_export_aoti.py."""

import argparse
import json

import pytest
import torch
from export_checks import (
    TOLERANCE,
    assert_one_size_outputs,
    assert_same_outputs,
    batches,
    parity_images,
    random_deformable_model,
    random_demo_model,
)
from PIL import Image
from test_training import TINY_RUN, tiny_config

import dabdetr
from dabdetr.cli import image_size
from dabdetr.cli import main as cli
from dabdetr.data import SyntheticShapes, make_transforms
from dabdetr.deployment import export, runtime
from dabdetr.models import DABDETR, post_process, preset
from dabdetr.training.trainer import Trainer
from dabdetr.weights.pretrained import from_pretrained

onnx = pytest.importorskip("onnx", reason="the [export] extra is not installed")
pytest.importorskip("onnxruntime", reason="the [export] extra is not installed")
pytest.importorskip("onnxscript", reason="the [export] extra is not installed")


@pytest.fixture(scope="module", params=["photos", "generated"])
def images(request):
    return parity_images(request.param)


@pytest.fixture(scope="module")
def demo_model():
    return random_demo_model()


@pytest.fixture(scope="module")
def demo_onnx(demo_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("onnx") / "demo.onnx")
    export.export(demo_model, path, "onnx", {0: "ellipse"}, eval_size=96, max_size=150)
    return path


def test_onnx_file_is_valid_with_dynamic_named_dims(demo_onnx):
    proto = onnx.load(demo_onnx)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17

    def dims(values):
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    assert dims(proto.graph.input) == {"images": ["batch", 3, "height", "width"], "mask": ["batch", "height", "width"]}
    assert dims(proto.graph.output) == {"logits": ["batch", 30, 91], "boxes": ["batch", 30, 4]}
    assert proto.graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.BOOL
    # Standard operators only: the fused ops are lowered to their reference.
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert {"MatMul", "Softmax", "Sin", "Cos"} <= {node.op_type for node in proto.graph.node}
    # The backbone's convolutions with their norms folded in: weights stored as constants, not computed per run.
    constants = {init.name for init in proto.graph.initializer}
    convs = [node for node in proto.graph.node if node.op_type == "Conv"]
    assert len(convs) > 10 and all(set(node.input[1:]) <= constants for node in convs)
    metadata = json.loads({p.key: p.value for p in proto.metadata_props}["dabdetr"])
    assert metadata["class_names"] == {"0": "ellipse"} and metadata["eval_size"] == 96


def test_onnx_graph_has_no_training_parts(demo_model, demo_onnx):
    # The demo model has denoising weights (label_embed) and 3 decoder layers with aux heads: the
    # graph keeps neither, and runs the class head once (on the last layer).
    assert demo_model.config.dn_groups > 0 and demo_model.config.num_decoder_layers == 3
    proto = onnx.load(demo_onnx)
    names = [init.name for init in proto.graph.initializer]
    assert not [name for name in names if "label_embed" in name]
    class_bias = [name for name in names if "class_embed.bias" in name]
    assert len(class_bias) == 1
    assert sum(class_bias[0] in node.input for node in proto.graph.node) == 1


def test_onnx_runtime_matches_eager_demo(demo_model, demo_onnx, images):
    assert_same_outputs(runtime.load_detector(demo_onnx), demo_model, images)


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """(dab_detr_r50 with random weights, its ONNX file)."""
    torch.manual_seed(1)
    model = DABDETR(preset("dab_detr_r50")).eval()
    path = str(tmp_path_factory.mktemp("r50") / "r50.onnx")
    export.export(model, path, "onnx")
    return model, path


def test_onnx_runtime_matches_eager_r50(r50, images):
    model, path = r50
    detector = runtime.load_detector(path)
    assert detector.kind == "onnx" and detector.metadata["model_config"]["backbone"] == "resnet50"
    assert_same_outputs(detector, model, images)


@pytest.fixture(scope="module")
def demo_pt2(demo_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("pt2") / "demo.pt2")
    export.export(demo_model, path, "torch-export")
    return path


def test_torch_export_program_keeps_the_custom_ops(demo_pt2):
    program = torch.export.load(demo_pt2)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"dabdetr.modulated_attention.default", "dabdetr.modulated_anchor_sine_embed.default",
            "dabdetr.anchor_sine_embed.default"} <= targets


def test_torch_export_program_matches_eager(demo_model, demo_pt2, images):
    detector = runtime.load_detector(demo_pt2)
    assert detector.kind == "torch-export"
    assert_same_outputs(detector, demo_model, images)


@pytest.fixture(scope="module")
def deformable_model():
    return random_deformable_model()


@pytest.fixture(scope="module")
def deformable_artifacts(deformable_model, tmp_path_factory):
    """DAB-Deformable-DETR exported once to ONNX and once by torch.export."""
    folder = tmp_path_factory.mktemp("deformable")
    onnx_path, pt2_path = str(folder / "deformable.onnx"), str(folder / "deformable.pt2")
    metadata = export.export(deformable_model, onnx_path, "onnx")
    export.export(deformable_model, pt2_path, "torch-export")
    return metadata, onnx_path, pt2_path


def test_deformable_model_exports_to_onnx_and_torch_export(deformable_model, deformable_artifacts, images):
    """DAB-Deformable-DETR through ONNX (its deformable attention lowered to Gather, Floor, Where)
    and torch.export (kept as the dabdetr op), at three sizes and batches 1 and 3 from one file."""
    metadata, onnx_path, pt2_path = deformable_artifacts
    assert metadata["min_side"] == 65  # the 4th level is at stride 64
    proto = onnx.load(onnx_path)
    assert {node.domain for node in proto.graph.node} <= {"", "ai.onnx"}
    assert {"GatherElements", "Floor"} <= {node.op_type for node in proto.graph.node}
    assert_same_outputs(runtime.load_detector(onnx_path), deformable_model, images)
    targets = {str(node.target) for node in torch.export.load(pt2_path).graph.nodes if node.op == "call_function"}
    assert "dabdetr.multi_scale_deformable_attention.default" in targets
    assert_same_outputs(runtime.load_detector(pt2_path), deformable_model, images)


def test_export_copies_a_model_it_cannot_trace_as_it_is(tmp_path):
    model = DABDETR(preset("demo")).double().eval()  # the artifact is float32: traced from a copy
    path = str(tmp_path / "double.pt2")
    export.export(model, path, "torch-export")
    assert next(model.parameters()).dtype == torch.float64
    images, mask = torch.rand(1, 3, 96, 128), torch.zeros(1, 96, 128, dtype=torch.bool)
    outputs = runtime.load_detector(path)(images, mask)
    with torch.no_grad():
        logits, _ = model.predict(images.double(), mask)
    torch.testing.assert_close(outputs["logits"], logits.float(), rtol=0, atol=TOLERANCE)


@pytest.fixture(scope="module", params=["onnx", "torch-export"])
def demo_postprocess(demo_model, tmp_path_factory, request):
    path = str(tmp_path_factory.mktemp("post") / ("post.onnx" if request.param == "onnx" else "post.pt2"))
    export.export(demo_model, path, request.param, postprocess=True)
    return path


def test_postprocess_export_gives_post_process_detections(demo_model, demo_postprocess, images):
    detector = runtime.load_detector(demo_postprocess)
    assert detector.metadata["inputs"] == ["images", "mask", "orig_sizes"]
    for pixels, mask, orig_sizes in batches(images):
        outputs = detector(pixels, mask, orig_sizes)
        with torch.no_grad():
            expected = post_process(demo_model(pixels, mask), orig_sizes, demo_model.config.num_select)
        for i, detections in enumerate(expected):
            got = {"scores": outputs["scores"][i], "labels": outputs["labels"][i], "boxes": outputs["boxes"][i]}
            # Pixel boxes: the normalized tolerance times the image side.
            assert_same_detections(got, detections, box_tolerance=TOLERANCE * float(orig_sizes.max()))


def assert_same_detections(got, expected, box_tolerance):
    """The same top-k detections, as sets: scores equal within TOLERANCE can come in either order
    (random weights make many near-ties), and at the k-th score either of a near-tie can be cut."""
    torch.testing.assert_close(got["scores"], expected["scores"], rtol=0, atol=TOLERANCE)  # both sorted
    cutoff = float(expected["scores"][-1]) + TOLERANCE
    unused = list(range(len(got["scores"])))
    for score, label, box in zip(expected["scores"], expected["labels"], expected["boxes"]):
        match = next((j for j in unused if got["labels"][j] == label and abs(got["scores"][j] - score) <= TOLERANCE
                      and (got["boxes"][j] - box).abs().max() <= box_tolerance), None)
        if match is None:
            assert score <= cutoff, f"no match for the detection {float(score):.6f} {int(label)} {box.tolist()}"
        else:
            unused.remove(match)


@pytest.fixture(scope="module")
def trained_demo(tmp_path_factory):
    """A training checkpoint of the demo recipe (a small model, two epochs on the synthetic shapes)."""
    output_dir = tmp_path_factory.mktemp("trained")
    Trainer(tiny_config(output_dir)).fit()
    return output_dir / "checkpoint.pt"


@pytest.fixture(scope="module")
def trained_onnx(trained_demo, tmp_path_factory):
    """The trained checkpoint exported by the command line."""
    path = tmp_path_factory.mktemp("trained_onnx") / "trained.onnx"
    cli(["export", str(trained_demo), str(path), "--format", "onnx"])
    return path


def test_cli_export_of_a_trained_model_runs_in_onnx_runtime(trained_demo, trained_onnx, images):
    detector = runtime.load_detector(str(trained_onnx))
    assert detector.metadata["eval_size"] == TINY_RUN["eval_size"]  # the run's preprocessing travels with it
    assert sorted(detector.metadata["class_names"].values()) == ["cross", "ellipse", "rectangle", "triangle"]
    assert_same_outputs(detector, from_pretrained(str(trained_demo)), images)


def test_cli_predict_onnx_runtime_matches_eager(trained_demo, tmp_path, capsys):
    shapes = SyntheticShapes(5, make_transforms(False, [64], 64), image_size=64, seed=3)
    folder = tmp_path / "photos"
    folder.mkdir()
    for image_id in shapes.coco.imgs:
        image = shapes.load_image(shapes.coco.imgs[image_id])
        if image_id % 2:  # mixed aspect ratios, so batches group and pad
            image = image.resize((96, 64))
        image.save(folder / f"{image_id:06d}.png")
    onnx_path = tmp_path / "trained.onnx"
    cli(["export", str(trained_demo), str(onnx_path), "--format", "onnx", "--with-postprocess"])
    assert f"wrote {onnx_path} (onnx, with post-processing)" in capsys.readouterr().out
    common = ["--size", "64", "--max-size", "128", "--score-threshold", "0", "--batch-size", "2",
              "--num-workers", "0", "--no-progress"]
    cli(["predict", str(trained_demo), str(folder), "--output-dir", str(tmp_path / "eager"), "--save-images", *common])
    cli(["predict", str(onnx_path), str(folder / "*.png"), "--output-dir", str(tmp_path / "onnx"), *common])
    eager = json.loads((tmp_path / "eager" / "detections.json").read_text())
    exported = json.loads((tmp_path / "onnx" / "detections.json").read_text())

    def per_image(results):
        by_id = {}
        for r in sorted(results, key=lambda r: -r["score"]):
            by_id.setdefault(r["image_id"], []).append(r)
        return {image_id: {"scores": torch.tensor([r["score"] for r in rs]),
                           "labels": torch.tensor([r["category_id"] for r in rs]),
                           "boxes": torch.tensor([r["bbox"] for r in rs])} for image_id, rs in by_id.items()}

    eager, exported = per_image(eager), per_image(exported)
    assert sorted(eager) == sorted(exported) == sorted(shapes.coco.imgs)
    for image_id, detections in eager.items():
        assert_same_detections(exported[image_id], detections, box_tolerance=0.01)
    images = json.loads((tmp_path / "eager" / "images.json").read_text())
    assert sorted(i["id"] for i in images) == sorted(shapes.coco.imgs)
    assert sorted(p.name for p in (tmp_path / "eager").glob("*.png")) == sorted(p.name for p in folder.iterdir())


def test_runtime_rejects_bad_inputs_naming_the_argument(demo_onnx, tmp_path):
    detector = runtime.load_detector(demo_onnx)
    images, mask = torch.rand(2, 3, 96, 128), torch.zeros(2, 96, 128, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"images must have shape \[B, 3, H, W\] .*got \(3, 96, 128\)"):
        detector(images[0], mask)
    with pytest.raises(ValueError, match=r"mask must have shape \[B, H, W\] = \(2, 96, 128\) .* got \(2, 96, 127\)"):
        detector(images, mask[..., :-1])
    with pytest.raises(TypeError, match="mask must be a bool tensor"):
        detector(images, mask.float())
    with pytest.raises(TypeError, match="images must be float32 for an exported model, got torch.float64"):
        detector(images.double(), mask)
    with pytest.raises(ValueError, match="images: the exported model takes sides 33 to"):
        detector(images[..., :20], mask[..., :20])
    post = str(tmp_path / "post.pt2")
    export.export(DABDETR(preset("demo")), post, "torch-export", postprocess=True)
    with pytest.raises(ValueError, match="orig_sizes .* is an input of this model"):
        runtime.load_detector(post)(images, mask)
    with pytest.raises(ValueError, match="orig_sizes must be int64 of shape"):
        runtime.load_detector(post)(images, mask, torch.ones(2, 2))


def test_one_size_export_is_specialized_and_pads_smaller_images(deformable_model, tmp_path):
    """image_size: a program whose height and width are fixed (the batch stays dynamic); the
    runtime pads smaller images to that size (assert_one_size_outputs)."""
    path = str(tmp_path / "one_size.pt2")
    assert export.export(deformable_model, path, "torch-export", image_size=(200, 264))["image_size"] == [200, 264]
    program = torch.export.load(path)
    shape = next(node for node in program.graph.nodes if node.name == "images").meta["val"].shape
    assert isinstance(shape[0], torch.SymInt) and tuple(shape[1:]) == (3, 200, 264)
    detector = runtime.load_detector(path)
    assert detector.metadata["image_size"] == [200, 264]
    assert_one_size_outputs(detector, deformable_model, (200, 264))
    # Prediction scales a photo down to fit (this portrait one would be 1333 x 800 at COCO's sizes).
    found = dabdetr.detect(detector, Image.new("RGB", (180, 300)), score_threshold=0.0)
    assert len(found["scores"]) > 0 and (found["boxes"] <= torch.tensor([180, 300, 180, 300])).all()
    with pytest.raises(ValueError, match=r"image_size must be \(height, width\), each from 65 .this model's min_side"):
        export.export(deformable_model, path, "torch-export", image_size=(64, 264))
    assert image_size("800x1088") == (800, 1088)
    with pytest.raises(argparse.ArgumentTypeError, match="expected HEIGHTxWIDTH"):
        image_size("800")


def test_export_and_load_errors(demo_model, tmp_path, caplog):
    with pytest.raises(ValueError, match="export format must be one of"):
        export.export(demo_model, str(tmp_path / "m.tflite"), "tflite")
    with pytest.raises(SystemExit):  # argparse: invalid choice
        cli(["export", "model", str(tmp_path / "m.tflite"), "--format", "tflite"])
    picture = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(picture)
    with pytest.raises(SystemExit):
        cli(["export", str(picture), str(tmp_path / "m.onnx"), "--format", "onnx"])
    assert f"{picture}: not a checkpoint" in caplog.text
    with pytest.raises(SystemExit):
        cli(["export", str(picture), str(tmp_path / "m.pt2"), "--format", "onnx"])
    assert "export --format onnx writes a .onnx file" in caplog.text
    with pytest.raises(ValueError, match="not an exported model"):
        runtime.load_detector(str(picture), runtime="torch-export")
    with pytest.raises(ValueError, match="photo.jpg: not a checkpoint"):  # auto: neither .onnx nor .pt2
        runtime.load_detector(str(picture))
    with pytest.raises(ValueError, match="no dabdetr export metadata"):
        foreign = tmp_path / "foreign.onnx"
        onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], [])), str(foreign))
        runtime.load_detector(str(foreign))
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x0a\xff\xff not protobuf")
    with pytest.raises(SystemExit):
        cli(["predict", str(damaged), str(picture), "--runtime", "onnx", "--output-dir", str(tmp_path / "out")])
    assert f"{damaged}: not an ONNX model, or a damaged one" in caplog.text


def test_missing_export_packages_name_the_extra(demo_model, tmp_path, monkeypatch):
    import importlib

    real = importlib.import_module

    def without_onnxscript(name, *args):
        if name == "onnxscript":
            raise ImportError("No module named 'onnxscript'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", without_onnxscript)
    with pytest.raises(ImportError, match=r"ONNX export needs onnx, onnxscript .*dabdetr\[export\]"):
        export.export(demo_model, str(tmp_path / "m.onnx"), "onnx")


class DeformableLayer(torch.nn.Module):
    """Deformable DETR's attention layer around the op: queries and their reference points sample
    a feature map of two levels (sizes fixed by the buffer spatial_shapes)."""

    def __init__(self, channels=32, heads=4, levels=((6, 8), (3, 4)), points=3):
        super().__init__()
        self.heads, self.levels, self.points = heads, len(levels), points
        self.register_buffer("spatial_shapes", torch.tensor(levels, dtype=torch.int64))
        self.value_proj = torch.nn.Linear(channels, channels)
        self.offsets = torch.nn.Linear(channels, heads * len(levels) * points * 2)
        self.weights = torch.nn.Linear(channels, heads * len(levels) * points)

    def forward(self, query, reference_points, features):
        B, Nq, _ = query.shape
        value = self.value_proj(features).unflatten(-1, (self.heads, -1))
        offsets = self.offsets(query).view(B, Nq, self.heads, self.levels, self.points, 2)
        locations = reference_points[:, :, None, None, None, :] + 0.2 * offsets.tanh()
        weights = self.weights(query).view(B, Nq, self.heads, -1).softmax(-1)
        weights = weights.view(B, Nq, self.heads, self.levels, self.points)
        return dabdetr.ops.multi_scale_deformable_attention(value, self.spatial_shapes, None, locations, weights)


def test_onnx_export_of_the_deformable_attention_runs_in_onnx_runtime():
    import onnxruntime

    torch.manual_seed(0)
    layer = DeformableLayer().eval()
    S = int(layer.spatial_shapes.prod(1).sum())

    def inputs(batch, queries):
        return torch.randn(batch, queries, 32), torch.rand(batch, queries, 2) * 1.2 - 0.1, torch.randn(batch, S, 32)

    batch, queries = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("queries", min=1, max=4096)
    with torch.no_grad():
        program = torch.export.export(layer, inputs(2, 5), strict=False, dynamic_shapes=(
            {0: batch, 1: queries}, {0: batch, 1: queries}, {0: batch}))
    targets = [node.target for node in program.graph.nodes]
    assert torch.ops.dabdetr.multi_scale_deformable_attention.default in targets
    decomposed = export.decompose_custom_ops(program)
    assert torch.ops.dabdetr.multi_scale_deformable_attention.default not in [n.target for n in decomposed.graph.nodes]
    names = ["query", "reference_points", "features"]
    proto = torch.onnx.export(decomposed, (), dynamo=True, opset_version=export.ONNX_OPSET, verbose=False,
                              input_names=names).model_proto
    onnx.checker.check_model(proto, full_check=True)
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch_size, num_queries in ((1, 7), (3, 40)):  # other sizes than the traced ones
        args = inputs(batch_size, num_queries)
        (got,) = session.run(None, {name: t.numpy() for name, t in zip(names, args)})
        with torch.no_grad():
            want = layer(*args)
        torch.testing.assert_close(torch.from_numpy(got), want, rtol=0, atol=1e-5)


def test_onnx_export_refuses_bf16(demo_model, tmp_path):
    with pytest.raises(ValueError, match="export format onnx takes amp off, got 'bf16' .ONNX's Conv takes no bfloat16"):
        export.export(demo_model, str(tmp_path / "m.onnx"), "onnx", amp="bf16")


def test_cli_export_for_one_image_size(trained_demo, tmp_path, capsys):
    path = tmp_path / "one_size.pt2"
    cli(["export", str(trained_demo), str(path), "--format", "torch-export", "--image-size", "96x128"])
    assert "(torch-export, images of 96x128)" in capsys.readouterr().out
    detector = runtime.load_detector(str(path))
    assert detector.metadata["image_size"] == [96, 128]
    assert detector(torch.zeros(2, 3, 90, 128))["logits"].shape[0] == 2
    with pytest.raises(SystemExit):
        cli(["export", str(trained_demo), str(path), "--format", "torch-export", "--image-size", "96"])
    assert "expected HEIGHTxWIDTH" in capsys.readouterr().err


def test_cli_export_in_bf16(trained_demo, tmp_path, caplog, capsys):
    path = tmp_path / "bf16.pt2"
    cli(["export", str(trained_demo), str(path), "--format", "torch-export", "--amp", "bf16"])
    assert "(torch-export, bf16 autocast)" in capsys.readouterr().out
    assert runtime.load_detector(str(path)).metadata["amp"] == "bf16"
    with pytest.raises(SystemExit):
        cli(["export", str(trained_demo), str(tmp_path / "m.onnx"), "--format", "onnx", "--amp", "bf16"])
    assert "export format onnx takes amp off, got 'bf16'" in caplog.text
