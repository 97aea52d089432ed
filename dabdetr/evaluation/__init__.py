"""Evaluation: the evaluation loop over a dataset (evaluator), COCO box AP and COCO result
files (coco_eval), the precision models run in (precision: amp, shared with training and
prediction), and the pictures of results: loss and AP curves, the AP of each category,
detections drawn on images (plots; written atomically).

May import: dabdetr.weights, dabdetr.data, dabdetr.models, dabdetr.ops, dabdetr.box_ops,
dabdetr.distributed. Never training, deployment or the CLI.
"""

from dabdetr.evaluation.coco_eval import evaluate_detections, to_coco_results
from dabdetr.evaluation.evaluator import evaluate

__all__ = ["evaluate", "evaluate_detections", "to_coco_results"]
