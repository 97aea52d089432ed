"""COCO-format folders the tests make themselves (images/ and annotations.json, from the
synthetic shapes), so the COCO paths are tested on a clean clone; tinycoco's real photos, where
present beside the checkout, are an extra source."""

import json
import os

from dabdetr.data import SyntheticShapes, make_transforms

TINYCOCO = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "tinycoco")
# Sparse ids, as COCO's (1..90 with gaps): category_id labels need max + 1 logits, contiguous ones 4.
CATEGORY_IDS = {1: 5, 2: 17, 3: 42, 4: 90}


def write_coco_folder(root, count=6, size=64, bad=(), crowds=True):
    """Writes root/images/*.png and root/annotations.json; returns (annotations, image_dir).
    Images whose index is in `bad` get a file that is not an image; with crowds, each image also
    gets a crowd annotation (which loading must drop)."""
    dataset = SyntheticShapes(count, make_transforms(False, [size], size), image_size=size)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    images, annotations = [], []
    for index, image_id in enumerate(sorted(dataset.coco.imgs)):
        info = {k: dataset.coco.imgs[image_id][k] for k in ("id", "width", "height")}
        info["file_name"] = f"{image_id:06d}.png"
        path = os.path.join(root, "images", info["file_name"])
        if index in bad:
            with open(path, "wb") as f:
                f.write(b"not a png")
        else:
            dataset.load_image(dataset.coco.imgs[image_id]).save(path)
        images.append(info)
        for ann in dataset.coco.imgToAnns[image_id]:
            annotations.append({k: ann[k] for k in ("id", "image_id", "bbox", "area", "iscrowd")}
                               | {"category_id": CATEGORY_IDS[ann["category_id"]]})
        if crowds:
            first = annotations[-1]
            annotations.append({**first, "id": 10_000 + image_id, "iscrowd": 1})
    categories = [{"id": CATEGORY_IDS[c["id"]], "name": c["name"]} for c in dataset.coco.cats.values()]
    path = os.path.join(root, "annotations.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return path, os.path.join(root, "images")
