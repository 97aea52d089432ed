"""Box conversions, IoU and generalized IoU.

Boxes are [..., 4]: "cxcywh" = (centre x, centre y, width, height), "xyxy" = (x0, y0, x1, y1),
"xywh" = (x0, y0, width, height) (COCO's json layout).
"""

import torch


def box_cxcywh_to_xyxy(boxes):
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def box_xyxy_to_cxcywh(boxes):
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_xywh_to_xyxy(boxes):
    x0, y0, w, h = boxes.unbind(-1)
    return torch.stack((x0, y0, x0 + w, y0 + h), dim=-1)


def box_xyxy_to_xywh(boxes):
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack((x0, y0, x1 - x0, y1 - y0), dim=-1)


def clip_boxes_to_image(boxes, sizes):
    """xyxy pixel boxes [..., k, 4] clamped to their images: sizes [..., 2] (height, width), one per
    leading index. A box partly outside keeps its inside part; one wholly outside becomes empty."""
    height, width = sizes.to(boxes.dtype).unbind(-1)
    upper = torch.stack((width, height, width, height), dim=-1)[..., None, :]
    return torch.minimum(boxes.clamp(min=0), upper)


def box_area(boxes):
    """xyxy [..., 4] -> [...]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2):
    """Pairwise IoU of xyxy boxes [N, 4] and [M, 4] -> (iou [N, M], union [N, M])."""
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - intersection
    return intersection / union, union


def generalized_box_iou(boxes1, boxes2):
    """Pairwise GIoU (Rezatofighi et al. 2019) of xyxy boxes [N, 4] and [M, 4] -> [N, M].

    GIoU = IoU - (|C| - |A u B|) / |C|, C the smallest box enclosing A and B. Degenerate boxes
    (x1 < x0 or y1 < y0) would give inf/NaN, so they are rejected.
    """
    for name, boxes in (("boxes1", boxes1), ("boxes2", boxes2)):
        if not bool((boxes[:, 2:] >= boxes[:, :2]).all()):
            raise ValueError(f"generalized_box_iou: {name} has degenerate boxes (x1 < x0 or y1 < y0)")
    iou, union = box_iou(boxes1, boxes2)
    enclosing_top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])
    enclosing_bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])
    enclosing_area = (enclosing_bottom_right - enclosing_top_left).clamp(min=0).prod(-1)
    return iou - (enclosing_area - union) / enclosing_area
