"""The DAB-DETR training loss (docs/training.md): sigmoid focal classification, L1 and
GIoU box losses on Hungarian-matched pairs, for the final and every auxiliary decoder layer."""

import re

import torch
import torch.nn.functional as F
from torch import nn

from dabdetr import distributed
from dabdetr.box_ops import box_cxcywh_to_xyxy, generalized_box_iou
from dabdetr.models.denoising import padded_targets


def sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0):
    """Elementwise focal loss (Lin et al. 2017) of logits against {0, 1} targets, same shape:
    alpha_t (1 - p_t)^gamma BCE(logit, target)."""
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t) ** gamma * bce


def widened(x):
    """x in float32 at least: autocast's 16-bit outputs are widened for the losses, float64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def global_num_boxes(targets):
    """Ground-truth boxes per process in the global batch (all-reduced mean), at least 1."""
    num_boxes = distributed.all_reduce_mean({"num_boxes": sum(len(t["labels"]) for t in targets)})["num_boxes"]
    return max(num_boxes, 1.0)


class SetCriterion(nn.Module):
    """forward(outputs, targets) -> dict of losses.

    outputs: the model's dict (pred_logits [B, Nq, K], pred_boxes [B, Nq, 4], aux_outputs);
    targets: list of B dicts, labels [n] (int64 class index < K), boxes [n, 4] (normalized cxcywh).
    Returns loss_ce, loss_bbox, loss_giou of the last layer, the same with suffix _0 .. _{L-2} for
    the auxiliary layers, with outputs["dn_outputs"] (denoising training) the same again with
    infix _dn (loss_ce_dn, loss_ce_dn_0, ...), with outputs["enc_outputs"] (two-stage proposals)
    suffix _enc, and "loss": their sum weighted by the weights.
    """

    def __init__(self, num_classes, matcher, loss_ce=1.0, loss_bbox=5.0, loss_giou=2.0, focal_alpha=0.25,
                 focal_gamma=2.0, aux_loss=True):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weights = {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": loss_giou}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.aux_loss = aux_loss

    def loss_terms(self, logits, one_hot, pred_boxes, gt_boxes, num_boxes):
        """Focal loss summed over logits [..., K] against one_hot targets, L1 and 1 - GIoU summed
        over the paired boxes [m, 4] (cxcywh), each divided by num_boxes."""
        loss_ce = sigmoid_focal_loss(logits, one_hot, self.focal_alpha, self.focal_gamma).sum() / num_boxes
        pred_boxes = widened(pred_boxes)
        gt_boxes = gt_boxes.to(pred_boxes.dtype)
        loss_bbox = F.l1_loss(pred_boxes, gt_boxes, reduction="sum") / num_boxes
        giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(gt_boxes)))
        return {"loss_ce": loss_ce, "loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_boxes}

    def layer_losses(self, outputs, targets, num_boxes):
        """The three losses of one decoder layer's predictions, on Hungarian-matched pairs."""
        indices = self.matcher(outputs, targets)
        logits = widened(outputs["pred_logits"])
        batch_index = torch.cat([torch.full_like(query, b) for b, (query, _) in enumerate(indices)])
        query_index = torch.cat([query for query, _ in indices])
        one_hot = torch.zeros_like(logits)
        matched_labels = torch.cat([t["labels"][target] for t, (_, target) in zip(targets, indices)])
        one_hot[batch_index, query_index, matched_labels.to(logits.device)] = 1
        gt_boxes = torch.cat([t["boxes"][target] for t, (_, target) in zip(targets, indices)])
        return self.loss_terms(logits, one_hot, outputs["pred_boxes"][batch_index, query_index], gt_boxes, num_boxes)

    def denoising_losses(self, outputs, padded, num_boxes):
        """The three losses of one layer's denoising predictions (dn_outputs), suffixed _dn: each
        query against the object it was made from (no matching); padding queries do not count.
        padded: padded_targets(targets, groups); num_boxes: the global box count times groups."""
        labels, boxes, padding = padded
        valid = ~padding
        logits = widened(outputs["pred_logits"][valid])  # [m, K]: the focal loss is elementwise
        one_hot = torch.zeros_like(logits)
        one_hot[torch.arange(len(logits)), labels[valid]] = 1
        losses = self.loss_terms(logits, one_hot, outputs["pred_boxes"][valid], boxes[valid], num_boxes)
        return {f"{k}_dn": v for k, v in losses.items()}

    def forward(self, outputs, targets, num_boxes=None):
        """num_boxes: the normalizer of every loss, by default global_num_boxes(targets); gradient
        accumulation passes the count of the whole accumulated batch."""
        for t in targets:
            if len(t["labels"]) and int(t["labels"].max()) >= self.num_classes:
                raise ValueError(f"SetCriterion: target label {int(t['labels'].max())} >= num_classes "
                                 f"{self.num_classes}")
        num_boxes = global_num_boxes(targets) if num_boxes is None else num_boxes
        losses = self.layer_losses(outputs, targets, num_boxes)
        if self.aux_loss:
            for i, aux in enumerate(outputs.get("aux_outputs", [])):
                losses.update({f"{k}_{i}": v for k, v in self.layer_losses(aux, targets, num_boxes).items()})
        proposals = outputs.get("enc_outputs")  # two-stage: the encoder's chosen proposals, matched as a layer's
        if proposals is not None:
            losses.update({f"{k}_enc": v for k, v in self.layer_losses(proposals, targets, num_boxes).items()})
        dn = outputs.get("dn_outputs")
        if dn is not None:
            padded, dn_num_boxes = padded_targets(targets, dn["groups"]), num_boxes * dn["groups"]
            losses.update(self.denoising_losses(dn, padded, dn_num_boxes))
            for i, aux in enumerate(dn["aux_outputs"] if self.aux_loss else []):
                losses.update({f"{k}_{i}": v for k, v in self.denoising_losses(aux, padded, dn_num_boxes).items()})
        losses["loss"] = sum(self.weights[re.sub(r"(_dn|_enc)?(_\d+)?$", "", k)] * v for k, v in losses.items())
        return losses
