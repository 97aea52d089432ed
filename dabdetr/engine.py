"""One training epoch and one evaluation pass (the loops; the Trainer owns everything around them)."""

import math
from contextlib import nullcontext

import torch
from tqdm import tqdm

from dabdetr import distributed
from dabdetr.coco_eval import evaluate_detections, to_coco_results
from dabdetr.models.detector import post_process


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


def autocast_context(device, amp):
    """torch.autocast for amp "bf16" / "fp16" on CUDA; nothing for "off"."""
    if amp == "off":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def move_targets(targets, device):
    return [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]


def train_one_epoch(model, criterion, loader, optimizer, device, epoch, clip_max_norm=0.1, amp="off",
                    grad_scaler=None, log_step=None, show_progress=True, start_step=0, totals=None):
    """Trains over loader once. log_step(step, losses dict) is called after every step with the
    losses averaged over processes. Raises NonFiniteLossError naming the step where the loss is
    not finite (before the optimizer applies it). Returns the epoch's mean losses.

    A mid-epoch resume: loader yields the epoch's batches from start_step on, and totals holds
    the loss sums of the steps before ("steps": their count). totals is updated in place."""
    model.train()
    criterion.train()
    totals = {"steps": 0} if totals is None else totals
    progress = tqdm(loader, desc=f"epoch {epoch}", disable=not (show_progress and distributed.is_main_process()),
                    dynamic_ncols=True, leave=False, initial=start_step, total=start_step + len(loader))
    for step, (images, mask, targets) in enumerate(progress, start=start_step):
        images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        targets = move_targets(targets, device)
        with autocast_context(device, amp):
            outputs = model(images, mask, targets)  # targets: for denoising queries, if the model uses them
        try:
            losses = criterion(outputs, targets)  # in float32, outside autocast
            total, reason = losses["loss"].item(), ""
        except FloatingPointError as error:  # the matcher refuses non-finite predictions
            total, reason = math.nan, f": {error}"
        # Every process learns of a non-finite loss on any of them, so all stop at the same step.
        total = distributed.all_reduce_mean({"loss": total})["loss"]
        if not math.isfinite(total):
            raise NonFiniteLossError(f"non-finite loss ({total}) at epoch {epoch}, step {step}; the update was not "
                                     f"applied{reason}")
        logged = distributed.all_reduce_mean({k: v.detach().item() for k, v in losses.items()})
        optimizer.zero_grad(set_to_none=True)
        if grad_scaler is not None:
            grad_scaler.scale(losses["loss"]).backward()
            grad_scaler.unscale_(optimizer)
        else:
            losses["loss"].backward()
        if clip_max_norm > 0:
            logged["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm))
        if grad_scaler is not None:
            grad_scaler.step(optimizer)
            grad_scaler.update()
        else:
            optimizer.step()
        for k, v in logged.items():
            totals[k] = totals.get(k, 0.0) + v
        totals["steps"] += 1
        progress.set_postfix(loss=f"{logged['loss']:.3f}", ce=f"{logged['loss_ce']:.3f}",
                             l1=f"{logged['loss_bbox']:.3f}", giou=f"{logged['loss_giou']:.3f}")
        if log_step is not None:
            log_step(step, logged)
    return {k: v / max(totals["steps"], 1) for k, v in totals.items() if k != "steps"}


@torch.no_grad()
def detect_image(model, pixels, original_size, device):
    """post_process output (scores, labels, boxes in original-image pixels, on the CPU) of one
    transformed image pixels [3, h, w] whose original size is (height, width)."""
    model.eval()
    mask = torch.zeros(1, *pixels.shape[1:], dtype=torch.bool, device=device)
    outputs = model(pixels[None].to(device), mask)
    detections = post_process(outputs, torch.tensor([original_size], device=device), model.config.num_select)[0]
    return {k: v.cpu() for k, v in detections.items()}


@torch.no_grad()
def predict_dataset(model, loader, device, num_select, amp="off", show_progress=True):
    """Detections of every image of loader (this process's share): a dict image_id -> post_process
    output (scores, labels, boxes in original-image pixels, on the CPU)."""
    model.eval()
    detections = {}
    progress = tqdm(loader, desc="eval", disable=not (show_progress and distributed.is_main_process()),
                    dynamic_ncols=True, leave=False)
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
