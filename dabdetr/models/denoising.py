"""Denoising queries (DN-DETR, Li et al. CVPR 2022, built on DAB-DETR): an optional training aid.

Ground-truth boxes with noise become extra decoder anchors, their (possibly flipped) labels the
content queries; each such query must reconstruct its own object, with no matching, which gives
the decoder and backbone a stable signal from the first step and speeds up convergence.

The detector decodes the `groups` noised copies of an image's objects in one pass with its
matching queries, each group and the matching queries a separate self-attention block
(transformer.blockwise_self_attention): the denoising queries see their own group only (DN-DETR's
attention mask also lets them see the matching queries), and the matching queries never see them
(as in DN-DETR). At inference nothing changes.
"""

import torch

from dabdetr.box_ops import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh

MIN_BOX_SIDE = 1e-3  # noised boxes keep a positive width/height (the anchor embedding divides by them)
# A group's length, the most objects of an image in the batch, is rounded up to a multiple of this:
# the padding costs nothing measurable, and a model under torch.compile (TrainConfig.compile) then
# sees a few shapes of denoising queries, one graph each, rather than one per object count.
GROUP_LENGTH_MULTIPLE = 8


def padded_targets(targets, groups):
    """The targets as tensors, padded to n, the largest object count rounded up to a multiple of
    GROUP_LENGTH_MULTIPLE, and repeated per group: labels [B*G, n], boxes [B*G, n, 4] (normalized
    cxcywh in the first target's dtype; padding gets a finite dummy box), padding [B*G, n] bool (True
    past an image's object count), image-major, group-minor."""
    device = targets[0]["boxes"].device
    most, B = max(len(t["labels"]) for t in targets), len(targets)
    n = -(-most // GROUP_LENGTH_MULTIPLE) * GROUP_LENGTH_MULTIPLE
    labels = torch.zeros(B, n, dtype=torch.int64, device=device)
    boxes = torch.tensor([0.5, 0.5, 0.2, 0.2], dtype=targets[0]["boxes"].dtype, device=device).repeat(B, n, 1)
    padding = torch.ones(B, n, dtype=torch.bool, device=device)
    for b, target in enumerate(targets):
        k = len(target["labels"])
        labels[b, :k], boxes[b, :k], padding[b, :k] = target["labels"], target["boxes"].to(boxes.dtype), False
    return tuple(x.repeat_interleave(groups, dim=0) for x in (labels, boxes, padding))


def noised_queries(targets, groups, num_classes, label_noise, box_noise, generator=None):
    """Noised copies of the targets: padded_targets(targets, groups) with each label flipped to a
    random class with probability label_noise, and each box corner moved by up to box_noise times
    half the box side (then kept inside the image, with sides >= MIN_BOX_SIDE)."""
    labels, boxes, padding = padded_targets(targets, groups)
    device = labels.device
    flip = torch.rand(labels.shape, device=device, generator=generator) < label_noise
    random_labels = torch.randint(0, num_classes, labels.shape, device=device, generator=generator)
    labels = torch.where(flip & ~padding, random_labels, labels)

    xyxy = box_cxcywh_to_xyxy(boxes)
    half_sides = boxes[..., 2:].repeat(1, 1, 2) / 2
    shift = (torch.rand(xyxy.shape, device=device, generator=generator) * 2 - 1) * box_noise * half_sides
    noised = box_xyxy_to_cxcywh((xyxy + shift).clamp(0, 1))
    noised = torch.cat([noised[..., :2], noised[..., 2:].clamp(min=MIN_BOX_SIDE)], dim=-1)
    return labels, torch.where(padding[..., None], boxes, noised), padding
