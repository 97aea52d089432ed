"""The embedded synthetic dataset: coloured shapes on noisy backgrounds, in COCO format.

Every image is a pure function of (seed, image index): its layout (background, shapes, colours,
boxes) is drawn by numpy's generator seeded with both, stored as COCO annotations with a few
extra fields ("background", "noise_seed" per image; "color", "shape" per annotation), and the
pixels are rendered from those annotations on demand. So the same evaluation code runs on it as
on COCO, `to_json()` writes it out, and nothing is stored on disk.
"""

import numpy as np
from PIL import Image, ImageDraw

from dabdetr.data.coco import CocoDetection, load_coco

SHAPES = ("ellipse", "rectangle", "triangle", "cross")


def shape_polygon(shape, x0, y0, x1, y1):
    """Outline of a shape filling the box (x0, y0, x1, y1), for PIL's polygon()."""
    w, h = x1 - x0, y1 - y0
    if shape == "triangle":
        return [(x0 + w / 2, y0), (x1, y1), (x0, y1)]
    # A plus sign whose arms are a third of the box wide.
    a, b = (x0 + w / 3, x0 + 2 * w / 3), (y0 + h / 3, y0 + 2 * h / 3)
    return [(a[0], y0), (a[1], y0), (a[1], b[0]), (x1, b[0]), (x1, b[1]), (a[1], b[1]), (a[1], y1), (a[0], y1),
            (a[0], b[1]), (x0, b[1]), (x0, b[0]), (a[0], b[0])]


def draw_shape(draw, shape, box, color):
    x0, y0, x1, y1 = box
    if shape == "ellipse":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=color)
    elif shape == "rectangle":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=color)
    else:
        draw.polygon(shape_polygon(shape, x0, y0, x1 - 1, y1 - 1), fill=color)


def box_iou(a, b):
    """IoU of two xyxy boxes given as sequences (plain Python: box_ops.box_iou's tensors made
    building the layouts 5x slower)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def contrasting_color(rng, background, min_distance=100.0):
    """A saturated colour at least min_distance (RGB euclidean) from the background."""
    while True:
        color = rng.integers(0, 256, size=3)
        color[rng.integers(3)] = rng.integers(200, 256)  # one strong channel: saturated, visible
        if np.linalg.norm(color - background) >= min_distance:
            return [int(c) for c in color]


def synthetic_coco(num_images, image_size=128, max_objects=5, min_size=0.12, max_size=0.45, max_overlap=0.3,
                   seed=0):
    """The COCO dict of the synthetic set: images of image_size x image_size pixels holding 1 to
    max_objects shapes of side min_size..max_size (fractions of the image; aspect 0.6..1.6),
    overlapping pairwise by IoU <= max_overlap (later shapes are drawn on top)."""
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng((seed, index))
        background = rng.integers(0, 256, size=3)
        image_id = index + 1
        images.append({"id": image_id, "file_name": f"synthetic_{seed}_{index:06d}.png", "width": image_size,
                       "height": image_size, "background": [int(c) for c in background],
                       "noise_seed": int(rng.integers(2**31))})
        boxes = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            for _attempt in range(20):  # rejection sampling against overlaps; give up on crowded images
                side = rng.uniform(min_size, max_size) * image_size
                aspect = rng.uniform(0.6, 1.6)
                w, h = min(side * aspect**0.5, image_size - 2), min(side / aspect**0.5, image_size - 2)
                x0, y0 = rng.uniform(0, image_size - w), rng.uniform(0, image_size - h)
                box = [round(x0), round(y0), round(x0 + w), round(y0 + h)]
                if all(box_iou(box, other) <= max_overlap for other in boxes):
                    break
            else:
                continue
            boxes.append(box)
            category = int(rng.integers(len(SHAPES)))
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category + 1,
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                "area": float((box[2] - box[0]) * (box[3] - box[1])), "iscrowd": 0,
                "shape": SHAPES[category], "color": contrasting_color(rng, background),
            })
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    return {"info": {"description": f"dabdetr synthetic shapes, seed {seed}"}, "images": images,
            "annotations": annotations, "categories": categories}


def render(image_info, annotations):
    """The RGB image of one synthetic entry: background with Gaussian noise, shapes in id order."""
    size = (image_info["height"], image_info["width"])
    noise = np.random.default_rng(image_info["noise_seed"]).normal(0, 12, size=(*size, 3))
    pixels = np.clip(np.asarray(image_info["background"], dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for ann in sorted(annotations, key=lambda a: a["id"]):
        x, y, w, h = ann["bbox"]
        draw_shape(draw, ann["shape"], (x, y, x + w, y + h), tuple(ann["color"]))
    return image


class SyntheticShapes(CocoDetection):
    """CocoDetection over synthetic_coco(...); labels are contiguous (0 = ellipse .. 3 = cross).
    `split_seed` picks the images (use different ones for train and validation), `seed` the
    augmentation."""

    def __init__(self, num_images, transforms, image_size=128, max_objects=5, object_size=(0.12, 0.45),
                 max_overlap=0.3, split_seed=0, seed=0):
        layouts = synthetic_coco(num_images, image_size, max_objects, *object_size, max_overlap, seed=split_seed)
        coco = load_coco(layouts, "synthetic")
        super().__init__(coco, None, transforms, label_mapping="contiguous", seed=seed)

    def load_image(self, image_info):
        return render(image_info, self.coco.imgToAnns.get(image_info["id"], []))
