"""AOTInductor packages (dabdetr export --format aoti) against the eager model, as test_export.py
checks the other artifacts; bfloat16 export. A file of their own so that CI's two pytest workers
share the export tests (these take about 7 minutes on 2 cores, Inductor's code generation on one)."""

import pytest
import torch
from export_checks import (
    TOLERANCE,
    assert_one_size_outputs,
    assert_same_outputs,
    batches,
    generated_images,
    parity_images,
    random_deformable_model,
    random_demo_model,
)

from dabdetr.deployment import export, runtime


@pytest.fixture(scope="module", params=["photos", "generated"])
def images(request):
    return parity_images(request.param)


@pytest.fixture(scope="module")
def demo_model():
    return random_demo_model()


@pytest.fixture(scope="module")
def deformable_model():
    return random_deformable_model()


@pytest.fixture(scope="module")
def demo_aoti(demo_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("aoti") / "new_folder" / "demo.aoti.pt2")  # made by the export
    export.export(demo_model, path, "aoti", {0: "ellipse"})
    return path


def test_aoti_package_matches_eager(demo_model, demo_aoti, images):
    detector = runtime.load_detector(demo_aoti)
    assert detector.kind == "aoti" and detector.metadata["class_names"] == {"0": "ellipse"}
    assert_same_outputs(detector, demo_model, images)


@pytest.fixture(scope="module")
def deformable_aoti(deformable_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("deformable_aoti") / "deformable.aoti.pt2")
    export.export(deformable_model, path, "aoti")
    return path


def test_deformable_aoti_package_matches_eager(deformable_model, deformable_aoti, images):
    """AOTInductor compiles the deformable model around the dabdetr op, as it does DAB-DETR."""
    detector = runtime.load_detector(deformable_aoti)
    assert detector.kind == "aoti"
    assert_same_outputs(detector, deformable_model, images)


def test_one_size_aoti_package_pads_smaller_images(demo_model, tmp_path):
    """`export --image-size`: the package compiled for one height and width (faster code than a
    dynamic one's; docs/results/inference.md), fed padded images by the runtime."""
    path = str(tmp_path / "one_size.aoti.pt2")
    export.export(demo_model, path, "aoti", image_size=(160, 200))
    assert_one_size_outputs(runtime.load_detector(path), demo_model, (160, 200))


@pytest.mark.parametrize("format", ["torch-export", "aoti"])
def test_bf16_export_computes_as_eager_bf16_autocast(format, tmp_path):
    """amp="bf16" traces the autocast region into the artifact: float32 inputs and outputs, the
    arithmetic inside in bfloat16 (as far from float32's outputs as eager bf16 autocast is, and
    within a bfloat16 rounding of eager bf16's)."""
    model = random_demo_model()
    with torch.no_grad():  # a box head that refines the anchors, so that the boxes show the precision too
        model.bbox_embed.layers[-1].weight.normal_(0, 0.05)
    path = str(tmp_path / "bf16.pt2")
    assert export.export(model, path, format, amp="bf16")["amp"] == "bf16"
    detector = runtime.load_detector(path)
    for pixels, mask, _ in batches(generated_images()):
        outputs = detector(pixels, mask)
        with torch.no_grad():
            float32 = model.predict(pixels, mask)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = [t.float() for t in model.predict(pixels, mask)]
        for got, want, exact in zip(outputs.values(), bf16, float32):
            assert got.dtype == torch.float32
            assert (got - exact).abs().max() > TOLERANCE  # not float32 arithmetic (those agree within it)
            torch.testing.assert_close(got, want, rtol=0, atol=0.05)  # logits up to 8: a bf16 step is 0.03
