"""Image files: read as 8-bit RGB whatever their mode, and, for prediction, files, folders and
globs as one dataset without annotations, in batches of images of similar aspect ratio, so that a
batch pads little."""

import glob
import logging
import os

import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

# What PIL raises for a file it cannot read: not an image, truncated, or past its size limit.
UNREADABLE = (UnidentifiedImageError, OSError, Image.DecompressionBombError)

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


def open_image(path, upright=False):
    """The PIL RGB image (8 bits a channel) at path; a missing or undecodable file is an error
    naming it. upright: turned as its EXIF orientation says, as photo viewers show it (phone
    photos are often stored sideways); datasets leave it off, as the image sizes in their
    annotations are the stored ones."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            return to_rgb(ImageOps.exif_transpose(image) if upright else image, path)
    except UNREADABLE as error:
        raise ValueError(f"cannot decode image {path}: {error}") from None


def to_rgb(image, path):
    """image as 8-bit RGB. Integer grey of more than 8 bits (16-bit PNG and TIFF: modes I;16*, I)
    is scaled from the 16-bit range, as viewers show it: PIL's own conversion would clip every
    value above 255 to white. Floating-point images have no range to scale from: refused."""
    if image.mode == "F":
        raise ValueError(f"{path}: a floating-point image (mode F) has no fixed range of values; "
                         "save it as 8- or 16-bit")
    if image.mode.startswith("I"):
        grey = np.asarray(image).astype(np.float32) / 257
        image = Image.fromarray(grey.round().clip(0, 255).astype(np.uint8))
    return image.convert("RGB")


def as_rgb_image(source):
    """The 8-bit RGB PIL image of source: a PIL image (any mode, as open_image converts), a path
    (read upright), an [H, W, 3] RGB or [H, W] grey uint8 numpy array, or a [3, H, W] uint8
    tensor. Arrays are taken as RGB, as PIL and most readers give them; OpenCV's frames are BGR
    (pass frame[..., ::-1])."""
    if isinstance(source, Image.Image):
        return to_rgb(source, "the image")
    if isinstance(source, (str, os.PathLike)):
        return open_image(os.fspath(source), upright=True)
    if isinstance(source, torch.Tensor):
        if source.dim() != 3 or source.shape[0] != 3:
            raise ValueError(f"an image tensor must be [3, H, W], got {list(source.shape)}")
        source = source.detach().cpu().permute(1, 2, 0).numpy()
    if not isinstance(source, np.ndarray):
        raise TypeError(f"an image must be a PIL image, a path, a numpy array or a tensor, got {type(source).__name__}")
    if source.dtype != np.uint8:
        raise TypeError(f"an image array must be uint8 (0-255), got {source.dtype}")
    if not (source.ndim == 2 or (source.ndim == 3 and source.shape[2] == 3)) or 0 in source.shape:
        raise ValueError(f"an image array must be [H, W, 3] (RGB) or [H, W] (grey), got {list(source.shape)}")
    return Image.fromarray(np.ascontiguousarray(source)).convert("RGB")


# EXIF orientations that turn an image by a quarter (transposed, rotated 90 or 270 degrees, transversed).
QUARTER_TURNS = (5, 6, 7, 8)


def image_size(path):
    """(height, width) of the upright image (open_image(path, upright=True)) from the file's
    header, without decoding it."""
    try:
        with Image.open(path) as image:
            if image.getexif().get(ExifTags.Base.Orientation) in QUARTER_TURNS:
                return image.width, image.height
            return image.height, image.width
    except UNREADABLE as error:
        raise ValueError(f"cannot decode image {path}: {error}") from None


class ImageFiles(torch.utils.data.Dataset):
    """dataset[i] = (pixels [3, h, w] after the eval transforms, {"index": i, "orig_size": [2]
    (height, width)}), the form collate_detection batches.

    An unreadable file is a ValueError naming it; with skip_bad_images it is left out with a
    warning instead: from `paths` when its header cannot be read (`skipped` lists those), as a
    None sample when the rest of it cannot be decoded."""

    def __init__(self, paths, transforms, skip_bad_images=False):
        self.transforms, self.skip_bad_images = transforms, skip_bad_images
        self.paths, self.sizes, self.skipped = [], [], []
        for path in paths:
            try:
                self.sizes.append(image_size(path))
                self.paths.append(path)
            except ValueError as error:
                self._skip_or_raise(error)
                self.skipped.append(path)

    def _skip_or_raise(self, error):
        if not self.skip_bad_images:
            raise error
        logger.warning("skipping an unreadable image (skip_bad_images): %s", error)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        try:
            image = open_image(self.paths[index], upright=True)
        except (FileNotFoundError, ValueError) as error:
            self._skip_or_raise(error)
            return None
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
