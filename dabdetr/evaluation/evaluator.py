"""The evaluation loop: detections of a dataset (over all processes) and their COCO box AP;
detections of one image."""

import torch
from tqdm import tqdm

from dabdetr import distributed
from dabdetr.box_ops import clip_boxes_to_image
from dabdetr.evaluation.coco_eval import evaluate_detections, to_coco_results
from dabdetr.evaluation.precision import autocast_context
from dabdetr.models.detector import post_process


@torch.no_grad()
def detect_image(model, pixels, original_size, device):
    """post_process output (scores, labels, boxes in original-image pixels, on the CPU) of one
    transformed image pixels [3, h, w] whose original size is (height, width), its boxes clipped
    to the image, for pictures (evaluation leaves them as the model predicts)."""
    model.eval()
    mask = torch.zeros(1, *pixels.shape[1:], dtype=torch.bool, device=device)
    outputs = model(pixels[None].to(device), mask)
    size = torch.tensor([original_size], device=device)
    detections = post_process(outputs, size, model.config.num_select)[0]
    detections["boxes"] = clip_boxes_to_image(detections["boxes"], size[0])
    return {k: v.cpu() for k, v in detections.items()}


@torch.no_grad()
def predict_dataset(model, loader, device, num_select, amp="off", show_progress=True):
    """Detections of every image of loader (this process's share): a dict image_id -> post_process
    output (scores, labels, boxes in original-image pixels, on the CPU)."""
    model.eval()
    detections = {}
    with tqdm(loader, desc="eval", disable=not (show_progress and distributed.is_main_process()),
              dynamic_ncols=True, leave=False) as progress:
        for images, mask, targets in progress:
            with autocast_context(device, amp):
                outputs = model(images.to(device), mask.to(device))
            outputs = {k: v.float() for k, v in outputs.items() if k in ("pred_logits", "pred_boxes")}
            sizes = torch.stack([t["orig_size"] for t in targets]).to(device)
            for target, det in zip(targets, post_process(outputs, sizes, num_select)):
                detections[int(target["image_id"])] = {k: v.cpu() for k, v in det.items()}
    return detections


def evaluate(model, loader, coco_gt, label_to_category_id, device, num_select, amp="off", show_progress=True):
    """COCO box AP of model on loader's dataset, over all processes.

    Returns (metrics, results): metrics as evaluate_detections gives them, results the COCO
    result dicts (on every process)."""
    detections = predict_dataset(model, loader, device, num_select, amp, show_progress)
    merged = {}
    for part in distributed.all_gather_objects(detections):  # duplicates from sampler padding collapse
        merged.update(part)
    results = to_coco_results(list(merged), list(merged.values()), label_to_category_id)
    metrics = evaluate_detections(coco_gt, results, image_ids=list(merged)) if distributed.is_main_process() else None
    return distributed.broadcast_object(metrics), results
