"""What the export tests share (test_export.py, test_export_aoti.py): images to run artifacts on, the
models they export, and the parity check of an artifact against the eager model."""

import os

import numpy as np
import pytest
import torch
from coco_fixture import TINYCOCO
from PIL import Image

from dabdetr.data import SyntheticShapes, collate_detection, make_transforms
from dabdetr.models import DABDETR, build_model, preset

TOLERANCE = 1e-4  # absolute, on logits and normalized boxes
SIZES = [(96, 150), (168, 250), (232, 360)]  # (shorter side, longer-side cap): sides not multiples of 32


def generated_images():
    """PIL images made here: two synthetic-shapes pictures and a portrait of noise."""
    shapes = SyntheticShapes(2, make_transforms(False, [96], 96), image_size=96)
    made = [shapes.load_image(shapes.coco.imgs[i]) for i in sorted(shapes.coco.imgs)]
    noise = np.random.default_rng(0).integers(0, 256, (300, 180, 3), dtype=np.uint8)
    return [*made, Image.fromarray(noise)]


def photos():
    """Three of tinycoco's COCO val photos, the last turned upright (they are all landscape), so
    that a batch mixes aspect ratios."""
    photo_dir = os.path.join(TINYCOCO, "images", "val2017")
    if not os.path.isdir(photo_dir):
        pytest.skip(f"tinycoco photos not found at {photo_dir}")
    found = [Image.open(os.path.join(photo_dir, name)).convert("RGB") for name in sorted(os.listdir(photo_dir))[:3]]
    return [*found[:2], found[2].transpose(Image.Transpose.ROTATE_90)]


def batches(images):
    """(images [B, 3, H, W], mask [B, H, W], orig_sizes [B, 2]) at each of SIZES, B = 1 and 3."""
    for size, max_size in SIZES:
        transforms = make_transforms(False, [size], max_size)
        samples = []
        for image in images:
            target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                      "size": torch.tensor([image.height, image.width])}
            samples.append((transforms(image, target, None)[0], target))
        for chosen in (samples[:1], [samples[0], samples[-1], samples[-2]]):
            pixels, mask, targets = collate_detection(chosen)
            assert len(chosen) == 1 or mask.any(), "a batch of 3 must pad"
            yield pixels, mask, torch.stack([t["size"] for t in targets])


def parity_images(kind):
    """Every parity test runs on real photos (skipped where tinycoco is missing) and on images
    made here: kind "photos" or "generated"."""
    return photos() if kind == "photos" else generated_images()


def random_demo_model():
    torch.manual_seed(0)
    return DABDETR(preset("demo")).eval()


def random_deformable_model():
    torch.manual_seed(2)
    model = build_model("demo_deformable").eval()
    with torch.no_grad():  # away from the init's zero offsets and attention weights, so that every path shows
        for name, parameter in model.named_parameters():
            if "sampling_offsets" in name or "attention_weights" in name:
                parameter.normal_(0, 0.2)
    return model


def assert_same_outputs(detector, model, images):
    """detector's logits and boxes equal model.predict's within TOLERANCE on every batch of images."""
    checked = 0
    for pixels, mask, _ in batches(images):
        outputs = detector(pixels, mask)
        with torch.no_grad():
            logits, boxes = model.predict(pixels, mask)
        assert outputs["logits"].shape == logits.shape and outputs["boxes"].shape == boxes.shape
        torch.testing.assert_close(outputs["logits"], logits, rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(outputs["boxes"], boxes, rtol=0, atol=TOLERANCE)
        checked += 1
    assert checked == 2 * len(SIZES)


def assert_one_size_outputs(detector, model, size):
    """An artifact exported for the one image size (height, width): on the generated images' batches
    that fit, its outputs equal model.predict's on the batch padded to size by hand (zeros, mask
    True), and at batch 1 and 3 from one graph; a batch that does not fit is refused, naming the size."""
    fitting = refused = 0
    for pixels, mask, _ in batches(generated_images()):
        height, width = pixels.shape[-2:]
        if height > size[0] or width > size[1]:
            with pytest.raises(ValueError, match=f"at most its image_size {size[0]} x {size[1]}"):
                detector(pixels, mask)
            refused += 1
            continue
        outputs = detector(pixels, mask)
        padded = torch.zeros(len(pixels), 3, *size)
        padded[:, :, :height, :width] = pixels
        padded_mask = torch.ones(len(pixels), *size, dtype=torch.bool)
        padded_mask[:, :height, :width] = mask
        with torch.no_grad():
            logits, boxes = model.predict(padded, padded_mask)
        torch.testing.assert_close(outputs["logits"], logits, rtol=0, atol=TOLERANCE)
        torch.testing.assert_close(outputs["boxes"], boxes, rtol=0, atol=TOLERANCE)
        fitting += 1
    assert fitting >= 2 and refused >= 2
