"""The (train, val) datasets of a TrainConfig."""

import os

from dabdetr.data.coco import CocoDetection
from dabdetr.data.synthetic import SyntheticShapes
from dabdetr.data.transforms import make_transforms


def build_datasets(config):
    """(train, val) datasets of the config: COCO under data_root, else the synthetic shapes."""
    train_transforms = make_transforms(True, config.train_sizes, config.max_size, config.crop_resize_sizes,
                                       config.crop_size, hflip_prob=config.hflip_prob)
    val_transforms = make_transforms(False, config.train_sizes, config.max_size, eval_size=config.eval_size)
    if config.data_root is None:
        common = {"image_size": config.synthetic_image_size, "max_objects": config.synthetic_max_objects,
                  "object_size": config.synthetic_object_size, "max_overlap": config.synthetic_max_overlap,
                  "seed": config.seed}
        # Different split seeds: the validation images are never seen in training.
        return (SyntheticShapes(config.synthetic_train_images, train_transforms, split_seed=1, **common),
                SyntheticShapes(config.synthetic_val_images, val_transforms, split_seed=2, **common))
    root = config.data_root
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data_root {root} is not a directory")
    for field in ("train_images", "val_images", "train_annotations", "val_annotations"):
        path = os.path.join(root, getattr(config, field))
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: data_root holds COCO's layout ({config.train_images}/, {config.val_images}/, "
                f"{config.train_annotations}, {config.val_annotations}); for another layout: --set {field}=PATH "
                "(relative to data_root)")
    return tuple(
        CocoDetection(os.path.join(root, annotations), os.path.join(root, images), transforms,
                      config.label_mapping, seed=config.seed, skip_bad_images=skip, cache_images=config.cache_images)
        for annotations, images, transforms, skip in (
            (config.train_annotations, config.train_images, train_transforms, config.skip_bad_images),
            (config.val_annotations, config.val_images, val_transforms, False)))
