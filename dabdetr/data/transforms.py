"""DETR's box-aware image transforms (docs/training.md), on PIL images.

Every transform is called as transform(image, target, rng): image a PIL RGB image, target a
dict with boxes [n, 4] (x0, y0, x1, y1 in pixels of the current image), labels [n] and size
(h, w); rng a random.Random. Randomness comes only from rng, so a sample's augmentation depends
only on the generator it is given (exact resume; the same batches with any number of workers).
"""

import numpy as np
import torch
from PIL import Image

from dabdetr.box_ops import box_xyxy_to_cxcywh

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The COCO recipe's sizes (shorter side; longer-side cap), written here once.
COCO_TRAIN_SIZES = tuple(range(480, 801, 32))
COCO_EVAL_SIZE = 800
COCO_MAX_SIZE = 1333


PER_OBJECT_FIELDS = ("boxes", "labels", "area", "iscrowd")


def keep_boxes(target, keep):
    """Drops the objects where keep [n] is False from every per-object field of target."""
    return {k: v[keep] if k in PER_OBJECT_FIELDS else v for k, v in target.items()}


def hflip(image, target):
    width = image.width
    boxes = target["boxes"]
    flipped = torch.stack((width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]), dim=-1)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), {**target, "boxes": flipped}


def resized_shape(height, width, shorter, max_size=None, fit=None):
    """(h, w) with the shorter side `shorter`, scaled down so the longer side is <= max_size
    (DETR's rule, rounding to int), then, where given, scaled down to fit in fit = (height, width)
    (an exported model's one image size)."""
    if max_size is not None:
        short, long = min(height, width), max(height, width)
        if long / short * shorter > max_size:
            shorter = int(round(max_size * short / long))
    h, w = (int(shorter * height / width), shorter) if width <= height else (shorter, int(shorter * width / height))
    if fit is not None and (h > fit[0] or w > fit[1]):
        factor = min(fit[0] / h, fit[1] / w)
        h, w = min(fit[0], max(1, int(h * factor))), min(fit[1], max(1, int(w * factor)))
    return h, w


def resize(image, target, shorter, max_size=None, fit=None):
    new_h, new_w = resized_shape(image.height, image.width, shorter, max_size, fit)
    scale = torch.tensor([new_w / image.width, new_h / image.height] * 2)
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    return image, {**target, "boxes": target["boxes"] * scale, "size": torch.tensor([new_h, new_w])}


def crop(image, target, top, left, height, width):
    """Crops the region; boxes are clipped to it and objects left with no area are dropped."""
    image = image.crop((left, top, left + width, top + height))
    boxes = target["boxes"] - torch.tensor([left, top, left, top], dtype=target["boxes"].dtype)
    boxes = torch.min(boxes.view(-1, 2, 2), torch.tensor([width, height], dtype=boxes.dtype)).clamp(min=0)
    keep = (boxes[:, 1, :] > boxes[:, 0, :]).all(dim=1)
    target = keep_boxes({**target, "boxes": boxes.view(-1, 4), "size": torch.tensor([height, width])}, keep)
    return image, target


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image, target, rng):
        return hflip(image, target) if rng.random() < self.p else (image, target)


class Resize:
    """Resizes the shorter side to `size` (longer side capped at max_size, the whole fitting in
    fit = (height, width) where given); not random."""

    def __init__(self, size, max_size=None, fit=None):
        self.size, self.max_size, self.fit = size, max_size, fit

    def __call__(self, image, target, rng=None):
        return resize(image, target, self.size, self.max_size, self.fit)


class RandomResize:
    """Resizes the shorter side to a size drawn from `sizes` (longer side capped at max_size)."""

    def __init__(self, sizes, max_size=None):
        self.sizes, self.max_size = list(sizes), max_size

    def __call__(self, image, target, rng):
        return resize(image, target, rng.choice(self.sizes), self.max_size)


class RandomSizeCrop:
    """Crops a region of random size in [min_size, max_size] (capped by the image) at a random place."""

    def __init__(self, min_size, max_size):
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image, target, rng):
        width = rng.randint(min(image.width, self.min_size), min(image.width, self.max_size))
        height = rng.randint(min(image.height, self.min_size), min(image.height, self.max_size))
        top, left = rng.randint(0, image.height - height), rng.randint(0, image.width - width)
        return crop(image, target, top, left, height, width)


class RandomSelect:
    """Applies `first` with probability p, else `second`."""

    def __init__(self, first, second, p=0.5):
        self.first, self.second, self.p = first, second, p

    def __call__(self, image, target, rng):
        return self.first(image, target, rng) if rng.random() < self.p else self.second(image, target, rng)


class ToNormalizedTensor:
    """PIL image -> float tensor [3, h, w] normalized with the ImageNet mean/std; boxes -> cxcywh
    divided by the image size (what the model predicts)."""

    def __call__(self, image, target, rng=None):
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        pixels = (pixels - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        height, width = pixels.shape[-2:]
        boxes = box_xyxy_to_cxcywh(target["boxes"]) / torch.tensor([width, height, width, height], dtype=torch.float32)
        return pixels.contiguous(), {**target, "boxes": boxes}


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target, rng=None):
        for transform in self.transforms:
            image, target = transform(image, target, rng)
        return image, target


def make_transforms(train, sizes, max_size, crop_resize_sizes=None, crop_size=None, eval_size=None, hflip_prob=0.5,
                    fit=None):
    """DETR's pipelines. Train: flip (with probability hflip_prob), then either resize to one of
    `sizes` or (with probability 0.5, when crop_resize_sizes and crop_size are given) resize to
    one of crop_resize_sizes, crop a region of crop_size = (min, max), and resize to one of
    `sizes`. Eval: resize to eval_size (default max(sizes)), scaled down further to fit in fit =
    (height, width) where given (an artifact exported for one image size). COCO recipe: sizes
    480..800 step 32, max_size 1333, crop_resize_sizes (400, 500, 600), crop_size (384, 600)."""
    if not train:
        return Compose([Resize(eval_size or max(sizes), max_size, fit), ToNormalizedTensor()])
    resize_only = RandomResize(sizes, max_size)
    if crop_resize_sizes and crop_size:
        scale = RandomSelect(resize_only, Compose([RandomResize(crop_resize_sizes), RandomSizeCrop(*crop_size),
                                                   RandomResize(sizes, max_size)]))
    else:
        scale = resize_only
    return Compose([RandomHorizontalFlip(hflip_prob), scale, ToNormalizedTensor()])
