"""One training epoch and its steps (the loop; the Trainer owns everything around it)."""

import math
from contextlib import nullcontext

import torch
from tqdm import tqdm

from dabdetr import distributed
from dabdetr.evaluation.precision import autocast_context
from dabdetr.training.criterion import global_num_boxes


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


def move_targets(targets, device):
    return [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]


def train_one_epoch(model, criterion, loader, optimizer, device, epoch, clip_max_norm=0.1, amp="off",
                    grad_scaler=None, log_step=None, show_progress=True, start_step=0, totals=None,
                    accumulate_steps=1, max_steps=None):
    """Trains over loader once, one optimizer step per accumulate_steps batches (a remainder is
    left out), or for max_steps steps where that is fewer. log_step(step, losses dict) is called
    after every step with the losses averaged over processes. Raises NonFiniteLossError naming
    the step where the loss is not finite (before the optimizer applies it). Returns the epoch's
    mean losses and "skipped_images" (the images the loader left out of its batches as
    unreadable, see collate_detection), summed.

    A mid-epoch resume: loader yields the epoch's batches from start_step on, and totals holds
    the loss sums of the steps before ("steps": their count). totals is updated in place."""
    model.train()
    criterion.train()
    totals = {"steps": 0} if totals is None else totals
    steps = len(loader) // accumulate_steps
    if max_steps is not None:
        steps = min(steps, max_steps)
    progress = tqdm(total=start_step + steps, initial=start_step, desc=f"epoch {epoch}", dynamic_ncols=True,
                    disable=not (show_progress and distributed.is_main_process()), leave=False)
    batches = iter(loader)
    try:
        for step in range(start_step, start_step + steps):
            micro_batches = [next(batches) for _ in range(accumulate_steps)]
            logged = train_step(model, criterion, micro_batches, optimizer, device, clip_max_norm, amp, grad_scaler,
                                where=f"epoch {epoch}, step {step}")
            skipped = sum(loader.batch_sampler.batch_size - len(targets) for _, _, targets in micro_batches)
            totals["skipped_images"] = totals.get("skipped_images", 0) + distributed.all_reduce_sum(skipped)
            for k, v in logged.items():
                totals[k] = totals.get(k, 0.0) + v
            totals["steps"] += 1
            progress.update(1)
            progress.set_postfix(loss=f"{logged['loss']:.3f}", ce=f"{logged['loss_ce']:.3f}",
                                 l1=f"{logged['loss_bbox']:.3f}", giou=f"{logged['loss_giou']:.3f}")
            if log_step is not None:
                log_step(step, logged)
    finally:
        # Stops the loader's workers now, also when an exception (a preemption, a non-finite loss)
        # leaves: its traceback would keep this frame, and with it the workers, alive until the
        # traceback goes (at exit, where they are terminated instead: preemption.py).
        del batches
        progress.close()
    means = {k: v / max(totals["steps"], 1) for k, v in totals.items() if k not in ("steps", "skipped_images")}
    return {**means, "skipped_images": int(totals.get("skipped_images", 0))}


def train_step(model, criterion, micro_batches, optimizer, device, clip_max_norm, amp, grad_scaler, where):
    """One optimizer step over micro_batches [(images, mask, targets), ...]: every loss is
    normalized by the boxes of all of them (over all processes), so N micro-batches of batch b
    update as one batch of N b would. Returns the losses (summed over the micro-batches,
    averaged over processes) and the gradient norm."""
    targets = [move_targets(batch_targets, device) for _, _, batch_targets in micro_batches]
    num_boxes = global_num_boxes([t for batch_targets in targets for t in batch_targets])
    optimizer.zero_grad(set_to_none=True)
    summed = {}
    for i, ((images, mask, _), batch_targets) in enumerate(zip(micro_batches, targets)):
        images, mask = images.to(device, non_blocking=True), mask.to(device, non_blocking=True)
        # DDP averages gradients once, in the last micro-batch's backward.
        last = i == len(micro_batches) - 1
        with nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with autocast_context(device, amp):
                outputs = model(images, mask, batch_targets)  # targets: for denoising queries, if the model uses them
            try:
                losses = criterion(outputs, batch_targets, num_boxes)  # in float32, outside autocast
                total, reason = losses["loss"].item(), ""
            except FloatingPointError as error:  # the matcher refuses non-finite predictions
                total, reason = math.nan, f": {error}"
            # Every process learns of a non-finite loss on any of them, so all stop at the same step.
            total = distributed.all_reduce_mean({"loss": total})["loss"]
            if not math.isfinite(total):
                raise NonFiniteLossError(f"non-finite loss ({total}) at {where}; the update was not applied{reason}")
            (grad_scaler.scale(losses["loss"]) if grad_scaler is not None else losses["loss"]).backward()
        for k, v in losses.items():
            summed[k] = summed.get(k, 0.0) + v.detach().item()
    logged = distributed.all_reduce_mean(summed)
    if grad_scaler is not None:
        grad_scaler.unscale_(optimizer)
    if clip_max_norm > 0:
        logged["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip_max_norm))
    if grad_scaler is not None:
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        optimizer.step()
    return logged
