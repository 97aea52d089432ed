"""COCO-format detection datasets: annotation loading with clear errors, and targets for training.

Ground truth stays a pycocotools COCO object (`dataset.coco`) so that evaluation reads the same
annotations the model trained on. A sample is (image [3, h, w] float, target dict):

    boxes [n, 4] normalized (cx, cy, w, h); labels [n] int64; image_id int;
    orig_size (h, w) of the stored image; size (h, w) after the transforms.

Crowd annotations and boxes with no area are dropped. Labels are the category ids themselves
("category_id", for 91-logit heads indexed by COCO id) or contiguous indices in sorted category-id
order ("contiguous", for 80-class heads).
"""

import contextlib
import io
import json
import logging
import os
import random

import torch
from pycocotools.coco import COCO

from dabdetr.box_ops import box_xywh_to_xyxy
from dabdetr.data.images import open_image

LABEL_MAPPINGS = ("category_id", "contiguous")

logger = logging.getLogger("dabdetr")


def load_coco(annotations, source="annotations"):
    """A pycocotools COCO from a json path or an already-parsed dict, validated; errors name the file."""
    if isinstance(annotations, (str, os.PathLike)):
        source = os.fspath(annotations)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"COCO annotation file not found: {source}")
        try:
            with open(source) as f:
                annotations = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"COCO annotation file {source} is not valid JSON: {error}") from None
    if not isinstance(annotations, dict) or not {"images", "annotations", "categories"} <= set(annotations):
        raise ValueError(f"{source}: not a COCO detection file (needs 'images', 'annotations', 'categories')")
    image_ids = {image["id"] for image in annotations["images"]}
    category_ids = {category["id"] for category in annotations["categories"]}
    for ann in annotations["annotations"]:
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{source}: annotation {ann.get('id')} has no valid bbox [x, y, w, h]: {bbox!r}")
        if ann.get("image_id") not in image_ids:
            raise ValueError(f"{source}: annotation {ann.get('id')} refers to unknown image {ann.get('image_id')}")
        if ann.get("category_id") not in category_ids:
            raise ValueError(f"{source}: annotation {ann.get('id')} has unknown category {ann.get('category_id')}")
    coco = COCO()
    coco.dataset = annotations
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """Images from image_dir with COCO annotations; transforms(image, target, rng) from
    dabdetr.data.transforms. Augmentation randomness is a function of (seed, epoch, index):
    call set_epoch(epoch) before each epoch. An image file that is missing or cannot be decoded is
    an error naming it; with skip_bad_images the sample is None instead (with a warning), which
    collate_detection leaves out of its batch. cache_images keeps every decoded image in memory
    (in each loader process): for datasets small enough to hold, read many times."""

    def __init__(self, annotations, image_dir, transforms, label_mapping="category_id", seed=0,
                 skip_bad_images=False, cache_images=False):
        if label_mapping not in LABEL_MAPPINGS:
            raise ValueError(f"label_mapping must be one of {LABEL_MAPPINGS}, got {label_mapping!r}")
        if image_dir is not None and not os.path.isdir(image_dir):  # None: a subclass that draws its images
            raise FileNotFoundError(f"image folder not found: {image_dir}")
        self.coco = annotations if isinstance(annotations, COCO) else load_coco(annotations)
        self.image_dir = image_dir
        self.transforms = transforms
        self.image_ids = sorted(self.coco.imgs)
        category_ids = sorted(self.coco.cats)
        if label_mapping == "contiguous":
            self.label_to_category_id = dict(enumerate(category_ids))
        else:
            self.label_to_category_id = {c: c for c in category_ids}
        self.category_id_to_label = {c: label for label, c in self.label_to_category_id.items()}
        self.num_classes = max(self.label_to_category_id) + 1
        self.class_names = {label: self.coco.cats[c]["name"] for label, c in self.label_to_category_id.items()}
        self.seed, self.epoch = seed, 0
        self.skip_bad_images = skip_bad_images
        self.image_cache = {} if cache_images else None

    def __len__(self):
        return len(self.image_ids)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def portrait_flags(self):
        """Per image: taller than wide, by its annotation's size (False where it gives none)."""
        infos = (self.coco.imgs[image_id] for image_id in self.image_ids)
        return [info.get("height", 0) > info.get("width", 0) for info in infos]

    def load_image(self, image_info):
        """The PIL RGB image of an entry of coco.imgs."""
        path = os.path.join(self.image_dir, image_info["file_name"])
        if self.image_cache is None:
            return open_image(path)
        if image_info["id"] not in self.image_cache:
            self.image_cache[image_info["id"]] = open_image(path)
        return self.image_cache[image_info["id"]].copy()  # transforms get an image of their own

    def raw_target(self, image_id, width, height):
        """Target in pixels of the stored image: xyxy boxes clipped to it, crowd and empty boxes dropped."""
        anns = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
        boxes = box_xywh_to_xyxy(torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4))
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        labels = torch.tensor([self.category_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        size = torch.tensor([height, width])
        return {"boxes": boxes[keep], "labels": labels[keep], "image_id": image_id, "orig_size": size, "size": size}

    def __getitem__(self, index):
        image_id = self.image_ids[index]
        info = self.coco.imgs[image_id]
        try:
            image = self.load_image(info)
        except (FileNotFoundError, ValueError) as error:
            if not self.skip_bad_images:
                raise
            logger.warning("skipping an unreadable image (skip_bad_images): %s", error)
            return None
        if "width" in info and (image.width, image.height) != (info["width"], info.get("height")):
            raise ValueError(f"image {info['file_name']} is {image.width}x{image.height} but its annotation says "
                             f"{info['width']}x{info.get('height')}")
        target = self.raw_target(image_id, image.width, image.height)
        rng = random.Random(f"{self.seed}/{self.epoch}/{index}")
        return self.transforms(image, target, rng)
