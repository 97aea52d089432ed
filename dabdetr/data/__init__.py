"""Detection data: COCO-format datasets, the synthetic shapes set, transforms, batching."""

from dabdetr.data.build import build_datasets
from dabdetr.data.coco import CocoDetection, load_coco
from dabdetr.data.collate import collate_detection
from dabdetr.data.synthetic import SyntheticShapes, synthetic_coco
from dabdetr.data.transforms import make_transforms

__all__ = ["build_datasets", "CocoDetection", "SyntheticShapes", "collate_detection", "load_coco", "make_transforms",
           "synthetic_coco"]
