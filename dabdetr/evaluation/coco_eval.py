"""COCO box evaluation (pycocotools COCOeval): detections to COCO results, the six AP numbers."""

import contextlib
import io

import numpy as np
from pycocotools.cocoeval import COCOeval

from dabdetr.box_ops import box_xyxy_to_xywh

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_coco_results(image_ids, detections, label_to_category_id):
    """COCO result dicts from post_process outputs.

    image_ids: B ints; detections: B dicts with scores [k], labels [k], boxes [k, 4] (xyxy pixels
    of the original image); label_to_category_id: the dataset's label -> category id map.
    """
    results = []
    for image_id, det in zip(image_ids, detections):
        boxes = box_xyxy_to_xywh(det["boxes"].float()).tolist()
        for score, label, box in zip(det["scores"].tolist(), det["labels"].tolist(), boxes):
            if label in label_to_category_id:  # logits of unused class slots are not detections
                results.append({"image_id": int(image_id), "category_id": label_to_category_id[label],
                                "bbox": [round(v, 3) for v in box], "score": round(score, 5)})
    return results


def evaluate_detections(coco_gt, results, image_ids=None):
    """COCOeval (bbox, maxDets 100) of result dicts against the COCO ground truth.

    Returns {"AP", "AP50", "AP75", "APs", "APm", "APl"} as fractions in [0, 1], None where
    COCOeval has no ground truth of that kind (its -1), and "table": the text it prints.
    """
    if not results:
        return {**{name: 0.0 for name in METRIC_NAMES}, "table": "no detections"}
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        evaluator.summarize()
    stats = np.asarray(evaluator.stats[: len(METRIC_NAMES)], dtype=float)
    metrics = {name: (None if value < 0 else float(value)) for name, value in zip(METRIC_NAMES, stats)}
    return {**metrics, "table": table.getvalue()}
