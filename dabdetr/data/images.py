"""Image files without annotations, for prediction: files, folders and globs as one dataset, and
batches of images of similar aspect ratio, so that a batch pads little."""

import glob
import os

import torch
from PIL import Image, UnidentifiedImageError

from dabdetr.data.coco import open_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def list_images(sources):
    """Image paths, sorted and without repeats, of sources: image files, folders (their image
    files, not recursive) and glob patterns. A source that names no image is a FileNotFoundError."""
    paths = set()
    for source in sources:
        if os.path.isdir(source):
            found = [os.path.join(source, name) for name in os.listdir(source)
                     if name.lower().endswith(IMAGE_EXTENSIONS)]
        elif glob.has_magic(source):
            found = [path for path in glob.glob(source, recursive=True) if path.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(source):
            found = [source]
        else:
            raise FileNotFoundError(f"image file not found: {source}")
        if not found:
            raise FileNotFoundError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {source}")
        paths.update(found)
    return sorted(paths)


def image_size(path):
    """(height, width) from the file's header, without decoding it."""
    try:
        with Image.open(path) as image:
            return image.height, image.width
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot decode image {path}: {error}") from None


class ImageFiles(torch.utils.data.Dataset):
    """dataset[i] = (pixels [3, h, w] after the eval transforms, {"index": i, "orig_size": [2]
    (height, width)}), the form collate_detection batches."""

    def __init__(self, paths, transforms):
        self.paths, self.transforms = list(paths), transforms
        self.sizes = [image_size(path) for path in self.paths]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        image = open_image(self.paths[index])
        size = torch.tensor([image.height, image.width])
        target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "size": size}
        pixels, _ = self.transforms(image, target, None)
        return pixels, {"index": index, "orig_size": size}


def aspect_ratio_batches(sizes, batch_size):
    """Batches (lists of indices into sizes, (height, width) each) of images whose aspect ratios
    are neighbours in sorted order: landscape photos batch with landscape photos."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i][0] / sizes[i][1], i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
