"""Hungarian matching of predictions to ground truth (docs/training.md)."""

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from dabdetr.box_ops import box_cxcywh_to_xyxy, generalized_box_iou


class HungarianMatcher(nn.Module):
    """One-to-one assignment minimizing, per image,

        C = cost_bbox * L1(b_pred, b_gt) + cost_class * focal(p, c_gt) - cost_giou * GIoU(b_pred, b_gt),

    focal(p, c) = alpha (1 - p)^gamma (-log p) - (1 - alpha) p^gamma (-log(1 - p)), p = sigmoid(logit_c).
    Costs are computed for the whole batch at once; the assignment runs per image on the CPU.
    """

    def __init__(self, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.25, focal_gamma=2.0):
        super().__init__()
        if cost_class == cost_bbox == cost_giou == 0:
            raise ValueError("HungarianMatcher: all costs are 0")
        self.cost_class, self.cost_bbox, self.cost_giou = cost_class, cost_bbox, cost_giou
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma

    def cost_matrix(self, pred_logits, pred_boxes, targets):
        """pred_logits [B, Nq, K], pred_boxes [B, Nq, 4] (cxcywh), targets: list of B dicts with
        labels [n_b] and boxes [n_b, 4] (normalized cxcywh). Returns C [B, Nq, sum n_b] (float32)."""
        B, Nq, _ = pred_logits.shape
        prob = pred_logits.flatten(0, 1).float().sigmoid()  # [B*Nq, K]
        boxes = pred_boxes.flatten(0, 1).float()  # [B*Nq, 4]
        gt_labels = torch.cat([t["labels"] for t in targets])
        gt_boxes = torch.cat([t["boxes"] for t in targets]).float()

        alpha, gamma = self.focal_alpha, self.focal_gamma
        positive = alpha * (1 - prob) ** gamma * -(prob + 1e-8).log()
        negative = (1 - alpha) * prob**gamma * -(1 - prob + 1e-8).log()
        cost_class = (positive - negative)[:, gt_labels]
        cost_bbox = torch.cdist(boxes, gt_boxes, p=1)
        cost_giou = -generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(gt_boxes))
        cost = self.cost_bbox * cost_bbox + self.cost_class * cost_class + self.cost_giou * cost_giou
        return cost.view(B, Nq, -1)

    @torch.no_grad()
    def forward(self, outputs, targets):
        """outputs: {"pred_logits" [B, Nq, K], "pred_boxes" [B, Nq, 4]}; targets as in cost_matrix.

        Returns a list of B pairs (query_index [m_b], target_index [m_b]) (int64, CPU),
        m_b = min(Nq, n_b), sorted by query index.
        """
        sizes = [len(t["boxes"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.empty(0, dtype=torch.int64)
            return [(empty, empty) for _ in targets]
        cost = self.cost_matrix(outputs["pred_logits"], outputs["pred_boxes"], targets).cpu()
        if not torch.isfinite(cost).all():
            raise FloatingPointError("HungarianMatcher: the cost matrix has NaN or inf (non-finite predictions)")
        indices = []
        for b, cost_b in enumerate(cost.split(sizes, dim=-1)):
            query, target = linear_sum_assignment(cost_b[b].numpy())
            indices.append((torch.as_tensor(query, dtype=torch.int64), torch.as_tensor(target, dtype=torch.int64)))
        return indices
