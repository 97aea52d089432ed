"""dabdetr.detect: detections on images in memory or on disk, with the model's preprocessing."""

import copy
import logging

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

import dabdetr
from dabdetr.deployment.runtime import EagerDetector, load_detector
from dabdetr.evaluation import precision
from dabdetr.models import DABDETR
from dabdetr.models.config import preset

TINY_MODEL = {"num_queries": 8, "num_encoder_layers": 1, "num_decoder_layers": 2, "ffn_dim": 64, "hidden_dim": 64}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return DABDETR(preset("demo", num_classes=4, **TINY_MODEL)).eval()


def photo(width=80, height=60, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def evaluated_by_hand(model, image, size):
    """The published preprocessing written out: the shorter side to size, ImageNet normalization,
    then the model and post_process at the image's own size (boxes as COCO evaluation takes them)."""
    scale = size / min(image.width, image.height)
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    pixels = torch.tensor(np.asarray(resized), dtype=torch.float32).permute(2, 0, 1) / 255
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    pixels = (pixels - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        outputs = model(pixels[None])
    return dabdetr.post_process(outputs, torch.tensor([[image.height, image.width]]))[0]


def by_hand(model, image, size):
    """evaluated_by_hand with its boxes clipped to the image, one side at a time."""
    found = evaluated_by_hand(model, image, size)
    x0, y0, x1, y1 = found["boxes"].unbind(1)
    found["boxes"] = torch.stack((x0.clamp(0, image.width), y0.clamp(0, image.height),
                                  x1.clamp(0, image.width), y1.clamp(0, image.height)), dim=1)
    return found


def test_detect_equals_the_preprocessing_and_post_process_written_out(model):
    image = photo()
    found = dabdetr.detect(model, image, score_threshold=0.0, size=48, max_size=1000)
    expected = by_hand(model, image, 48)
    assert len(found["scores"]) == len(expected["scores"]) == 4 * 8  # every query x class at threshold 0
    for key in ("scores", "labels", "boxes"):
        torch.testing.assert_close(found[key], expected[key], rtol=1e-5, atol=1e-4)
    assert (found["scores"][:-1] >= found["scores"][1:]).all()
    assert found["names"] == [str(int(label)) for label in found["labels"]]
    named = dabdetr.detect(model, image, score_threshold=0.0, size=48, class_names={0: "ellipse", 2: "triangle"})
    assert named["names"] == [{0: "ellipse", 2: "triangle"}.get(int(label), str(int(label)))
                              for label in named["labels"]] and "triangle" in named["names"]
    kept = dabdetr.detect(model, image, score_threshold=float(expected["scores"][5]), size=48, max_size=1000)
    assert len(kept["scores"]) >= 6 and (kept["scores"] >= expected["scores"][5]).all()


def test_boxes_reaching_past_the_image_are_clipped_to_it():
    """Anchors passed through unrefined (a zero box head) put every box at (cx, cy, w, h) = (0.9,
    0.1, 0.8, 0.8): xyxy (0.5, -0.3, 1.3, 0.5) of the image, which detect clips and post_process
    (what COCO evaluation uses) does not."""
    torch.manual_seed(0)
    model = DABDETR(preset("demo", num_classes=4, **TINY_MODEL)).eval()
    with torch.no_grad():
        last = model.bbox_embed.layers[-1]
        last.weight.zero_()
        last.bias.zero_()
        anchor = torch.tensor([0.9, 0.1, 0.8, 0.8])
        model.refpoint_embed.weight.copy_(torch.log(anchor / (1 - anchor)).expand_as(model.refpoint_embed.weight))
    image = photo(width=80, height=60)
    found = dabdetr.detect(model, image, score_threshold=0.0, size=48)
    expected = torch.tensor([0.5 * 80, 0.0, 80.0, 0.5 * 60]).expand_as(found["boxes"])
    torch.testing.assert_close(found["boxes"], expected, rtol=1e-5, atol=1e-3)
    unclipped = torch.tensor([0.5 * 80, -0.3 * 60, 1.3 * 80, 0.5 * 60]).expand_as(found["boxes"])
    torch.testing.assert_close(evaluated_by_hand(model, image, 48)["boxes"], unclipped, rtol=1e-5, atol=1e-3)


def test_detect_leaves_a_model_in_the_mode_it_was_in():
    """A model in training (here with dropout, which changes its outputs) is run in eval mode and
    left training."""
    torch.manual_seed(0)
    model = DABDETR(preset("demo", num_classes=4, dropout=0.5, **TINY_MODEL))
    image = photo()
    found = dabdetr.detect(model.train(), image, score_threshold=0.0, size=48)
    assert model.training and all(module.training for module in model.modules())
    torch.testing.assert_close(found["boxes"], by_hand(model.eval(), image, 48)["boxes"], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_detect_in_16_bits_is_close_to_float32(model, amp):
    """Autocast runs (the outputs move, by about a 16-bit rounding) and what comes out is float32,
    close to the float32 model's: each query's logits within 0.1, its box within 0.01 of the image."""
    torch.manual_seed(1)
    refining = copy.deepcopy(model)  # a box head that moves the anchors (a new model's is zero)
    torch.nn.init.normal_(refining.bbox_embed.layers[-1].weight, std=0.1)
    images = torch.randn(2, 3, 48, 64)
    full = EagerDetector(refining)(images)
    half = EagerDetector(refining, amp=amp)(images)
    assert half["logits"].dtype == half["boxes"].dtype == torch.float32
    assert not torch.equal(half["logits"], full["logits"]) and not torch.equal(half["boxes"], full["boxes"])
    torch.testing.assert_close(half["logits"], full["logits"], rtol=0, atol=0.1)
    torch.testing.assert_close(half["boxes"], full["boxes"], rtol=0, atol=0.01)
    found = dabdetr.detect(model, photo(), score_threshold=0.0, size=48, amp=amp)
    assert found["scores"].dtype == found["boxes"].dtype == torch.float32
    torch.testing.assert_close(found["scores"], dabdetr.detect(model, photo(), score_threshold=0.0, size=48)["scores"],
                               rtol=0, atol=0.02)  # sorted scores move no more than the scores do


def test_16_bits_on_a_cpu_without_them_is_warned_about_once(model, monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_has_16_bit_convolutions", lambda amp: amp == "bf16")
    precision.warn_if_cpu_lacks_16_bit.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="dabdetr"):
            for amp in ("bf16", "fp16", "fp16"):
                dabdetr.detect(model, photo(), size=48, amp=amp)
    finally:
        precision.warn_if_cpu_lacks_16_bit.cache_clear()
    assert "amp=bf16" not in caplog.text
    assert caplog.text.count("amp=fp16 on a CPU without float16 convolutions (oneDNN needs AVX-512 FP16 or "
                             "AMX-FP16): the model runs about 14x slower than in float32") == 1


def test_amp_is_checked_and_belongs_to_eager_models(model, tmp_path):
    with pytest.raises(ValueError, match=r"amp must be one of \('off', 'bf16', 'fp16'\), got 'half'"):
        dabdetr.detect(model, photo(), amp="half")
    with pytest.raises(ValueError, match="a Detector's precision is set when it is made"):
        dabdetr.detect(EagerDetector(model), photo(), amp="bf16")
    exported = tmp_path / "model.onnx"
    exported.write_bytes(b"")
    with pytest.raises(ValueError, match="amp='bf16' is for models run eagerly; .*model.onnx computes in the"):
        load_detector(exported, amp="bf16")


def test_every_kind_of_image_gives_the_same_detections(model, tmp_path):
    image = photo(64, 96, seed=1)
    path = tmp_path / "photo.png"
    image.save(path)
    sideways = tmp_path / "sideways.png"  # stored turned, with the tag that turns it back
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # display = stored turned 90 degrees clockwise
    image.transpose(Image.Transpose.ROTATE_90).save(sideways, exif=exif)
    sources = [image, str(path), sideways, np.asarray(image), torch.from_numpy(np.array(image)).permute(2, 0, 1)]
    results = dabdetr.detect(model, sources, score_threshold=0.0, size=48, batch_size=2)
    assert isinstance(results, list) and len(results) == len(sources)
    for found in results:
        torch.testing.assert_close(found["boxes"], results[0]["boxes"])
        assert found["boxes"][:, 2].max() < 64 * 2 and found["boxes"][:, 3].max() < 96 * 2  # the upright size
    grey = dabdetr.detect(model, np.asarray(image.convert("L")), score_threshold=0.0, size=48)
    torch.testing.assert_close(grey["boxes"],
                               dabdetr.detect(model, image.convert("L"), score_threshold=0.0, size=48)["boxes"])


def test_detect_names_bad_images_and_settings(model):
    with pytest.raises(TypeError, match="must be uint8"):
        dabdetr.detect(model, np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"must be \[H, W, 3\] \(RGB\) or \[H, W\] \(grey\), got \[8, 8, 4\]"):
        dabdetr.detect(model, np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match=r"tensor must be \[3, H, W\], got \[8, 8, 3\]"):
        dabdetr.detect(model, torch.zeros(8, 8, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="a PIL image, a path, a numpy array or a tensor, got int"):
        dabdetr.detect(model, 3)
    with pytest.raises(FileNotFoundError, match="image file not found: missing.jpg"):
        dabdetr.detect(model, "missing.jpg")
    with pytest.raises(ValueError, match="score_threshold must be in"):
        dabdetr.detect(model, photo(), score_threshold=1.5)


def test_load_detector_tells_checkpoints_from_exports():
    with pytest.raises(ValueError, match="model.onnx is an exported model: run it with runtime onnx"):
        load_detector("model.onnx", runtime="eager")
    with pytest.raises(ValueError, match="runtime must be 'auto' or one of"):
        load_detector("model.onnx", runtime="tensorrt")
    with pytest.raises(FileNotFoundError, match="no exported model at missing.pt2"):
        load_detector("missing.pt2")
