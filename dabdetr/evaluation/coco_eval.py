"""COCO box evaluation (pycocotools COCOeval): detections to COCO results, the six AP numbers and
the AP of each category."""

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
    COCOeval has no ground truth of that kind (its -1); "classes": {category name: {"AP",
    "AP50"}} for each category with ground truth among the images evaluated (the numbers the
    whole-set AP averages); and "table": the text COCOeval prints.
    """
    if not results:
        images = None if image_ids is None else set(image_ids)
        with_truth = {ann["category_id"] for ann in coco_gt.dataset["annotations"]
                      if not ann.get("iscrowd", 0) and (images is None or ann["image_id"] in images)}
        classes = {category_name(coco_gt, c): {"AP": 0.0, "AP50": 0.0} for c in sorted(with_truth)}
        return {**{name: 0.0 for name in METRIC_NAMES}, "classes": classes, "table": "no detections"}
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
    return {**metrics, "classes": per_category_ap(evaluator, coco_gt), "table": table.getvalue()}


def per_category_ap(evaluator, coco_gt):
    """{category name: {"AP", "AP50"}} from an accumulated COCOeval, for the categories with
    ground truth: its precision [IoU thresholds, recall points, categories, areas, max dets]
    averaged as summarize() averages the whole set (area "all", 100 detections), one category
    at a time."""
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    classes = {}
    for k, category_id in enumerate(evaluator.params.catIds):
        ap = [p[p > -1] for p in (precision[:, :, k], precision[0, :, k])]  # -1: no ground truth
        if ap[0].size:
            classes[category_name(coco_gt, category_id)] = {"AP": float(ap[0].mean()), "AP50": float(ap[1].mean())}
    return classes


def category_name(coco_gt, category_id):
    return coco_gt.cats[category_id].get("name", str(category_id))


def per_category_table(classes):
    """The per-category AP of evaluate_detections as text: three columns of category, AP, AP50."""
    cells = [f"{name[:20]:<20} {v['AP']:6.3f} {v['AP50']:6.3f}" for name, v in classes.items()]
    header = f"{'category':<20} {'AP':>6} {'AP50':>6}"
    rows = [" | ".join(cells[i:i + 3]) for i in range(0, len(cells), 3)]
    return "\n".join([" | ".join([header] * min(3, len(cells))), *rows]) + "\n"
