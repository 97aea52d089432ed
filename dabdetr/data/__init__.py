"""Detection data: COCO-format datasets (coco), the synthetic shapes set (synthetic), image
files (images), transforms, batching and collation, and the datasets a run uses (build).

May import: dabdetr.box_ops. Never the model, weights, training, evaluation, deployment or the CLI.
"""

from dabdetr.data.build import build_datasets
from dabdetr.data.coco import CocoDetection, load_coco
from dabdetr.data.collate import collate_detection
from dabdetr.data.synthetic import SyntheticShapes, synthetic_coco
from dabdetr.data.transforms import make_transforms

__all__ = ["build_datasets", "CocoDetection", "SyntheticShapes", "collate_detection", "load_coco", "make_transforms",
           "synthetic_coco"]
