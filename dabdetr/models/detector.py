"""The DAB-DETR detector: backbone, transformer, heads, and post-processing."""

import math

import torch
from torch import nn

from dabdetr.box_ops import box_cxcywh_to_xyxy
from dabdetr.models.backbone import Backbone
from dabdetr.models.config import DABDETRConfig
from dabdetr.models.denoising import noised_queries
from dabdetr.models.position_encoding import PositionEmbeddingSineHW
from dabdetr.models.transformer import MLP, Transformer, inverse_sigmoid


class DABDETR(nn.Module):
    """forward(images [B, 3, H, W], mask [B, H, W] bool, True = padding) -> dict:

    pred_logits [B, Nq, num_classes] (sigmoid scores, no background class);
    pred_boxes [B, Nq, 4] (cx, cy, w, h), normalized by each image's unpadded size;
    aux_outputs: a list of {"pred_logits", "pred_boxes"} for decoder layers 0 .. L-2;
    references [L, B, Nq, 4]: the anchors each decoder layer used (cx, cy, w, h);
    dn_outputs (training with denoising, when the batch has objects): the same for the denoising
    queries, over [B * dn_groups, n] of them, plus "padding" [B * dn_groups, n] and "groups".

    model.save_pretrained(directory, class_names=None, eval_size=None, max_size=None) writes
    config.json and model.pt, which dabdetr.from_pretrained(directory) loads back; dabdetr.weights
    gives the model this method, so that the model never imports its saving code.
    """

    def __init__(self, config: DABDETRConfig):
        super().__init__()
        self.config = config
        d = config.hidden_dim
        self.backbone = Backbone(config)
        self.input_proj = nn.Conv2d(self.backbone.num_channels[-1], d, kernel_size=1)
        self.position_encoding = PositionEmbeddingSineHW(d // 2, config.pe_temperature_h, config.pe_temperature_w,
                                                         config.ops_impl)
        self.transformer = Transformer(config)
        self.refpoint_embed = nn.Embedding(config.num_queries, 4)
        if config.random_refpoints_xy:
            with torch.no_grad():  # centres logit(U(0, 1)); they stay trainable, as in every implementation
                self.refpoint_embed.weight[:, :2].uniform_(0, 1)
                self.refpoint_embed.weight[:, :2] = inverse_sigmoid(self.refpoint_embed.weight[:, :2], 1e-5)
        self.class_embed = nn.Linear(d, config.num_classes)
        nn.init.constant_(self.class_embed.bias, -math.log((1 - config.prior_prob) / config.prior_prob))
        self.bbox_embed = MLP(d, d, 4, 3)  # also the decoder's anchor-update head
        nn.init.zeros_(self.bbox_embed.layers[-1].weight)
        nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        if config.dn_groups:
            self.label_embed = nn.Embedding(config.num_classes, d)  # content queries of denoising

    def forward(self, images, mask=None, targets=None):
        """mask None: no padding. targets (training with config.dn_groups > 0 only): the
        criterion's targets, from which denoising queries are built; their predictions come back
        under "dn_outputs"."""
        config = self.config
        denoising = self.training and config.dn_groups and targets is not None
        dn = self.denoising_queries(targets) if denoising else None
        hs, references = self.encode_decode(images, mask, dn["queries"] if dn else None)
        logits, boxes = self.class_embed(hs), self.box_head(hs, references)
        Nq = config.num_queries * max(config.num_patterns, 1)  # the matching queries come first
        outputs = {**layer_outputs(logits[:, :, :Nq], boxes[:, :, :Nq]), "references": references[:, :, :Nq]}
        if dn is not None:  # [L, B, G * n, .] -> [L, B * G, n, .]
            dn_logits, dn_boxes = (x[:, :, Nq:].reshape(len(x), *dn["padding"].shape, -1) for x in (logits, boxes))
            outputs["dn_outputs"] = {**layer_outputs(dn_logits, dn_boxes), "padding": dn["padding"],
                                     "groups": config.dn_groups}
        return outputs

    def predict(self, images, mask=None):
        """(logits [B, Nq, num_classes], boxes [B, Nq, 4]): pred_logits and pred_boxes of forward()
        alone, with the heads run on the last decoder layer only (what inference and export need)."""
        hs, references = self.encode_decode(images, mask)
        return self.class_embed(hs[-1]), self.box_head(hs[-1], references[-1])

    def encode_decode(self, images, mask, extra_queries=None):
        """Backbone, encoder and decoder: hs [L, B, N, d], references [L, B, N, 4]: the Nq matching
        queries, then the extra_queries (Transformer.forward) if any."""
        mask = checked_inputs(images, mask)
        (features,), (feature_mask,) = self.backbone(images, mask)
        pos = self.position_encoding(feature_mask, self.input_proj.weight.dtype)
        src = self.input_proj(features).flatten(2).transpose(1, 2)
        return self.transformer(src, pos, feature_mask.flatten(1), self.refpoint_embed.weight, self.bbox_embed,
                                extra_queries)

    def box_head(self, hs, references):
        """Boxes (cx, cy, w, h) in (0, 1): the anchors each layer used, refined by bbox_embed."""
        return (self.bbox_embed(hs) + inverse_sigmoid(references, self.config.box_head_eps)).sigmoid()

    def denoising_queries(self, targets):
        """The denoising groups of the batch (models/denoising.py) as the transformer's extra queries,
        or None when the batch has no objects: {"queries": (tgt [B, G * n, d], anchors [B, G * n, 4],
        query_blocks), "padding": [B * G, n]}, G = dn_groups, n = the most objects in an image
        rounded up (denoising.padded_targets)."""
        config = self.config
        if not any(len(t["labels"]) for t in targets):
            return None
        labels, anchors, padding = noised_queries(targets, config.dn_groups, config.num_classes,
                                                  config.dn_label_noise, config.dn_box_noise)
        B, n = len(targets), padding.shape[1]
        tgt = self.label_embed(labels).reshape(B, config.dn_groups * n, -1)
        anchors = anchors.to(tgt.dtype).reshape(B, config.dn_groups * n, 4)  # the targets' dtype may differ
        queries = (tgt, anchors, [(config.dn_groups, n, padding)])
        return {"queries": queries, "padding": padding}


def checked_inputs(images, mask):
    """The mask (all False for None) once images [B, 3, H, W] and mask [B, H, W] are what the model
    reads; otherwise a ValueError (shape, device) or TypeError (dtype) naming what is not."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must have shape [B, 3, H, W] (a batch of RGB images), got {got}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point (normalized RGB), got {images.dtype}")
    B, _, H, W = images.shape
    if mask is None:
        return torch.zeros(B, H, W, dtype=torch.bool, device=images.device)
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"mask must be a bool tensor (True = padding; Hugging Face's pixel_mask is the "
                        f"opposite, 1 = image), got {got}")
    if mask.shape != (B, H, W):
        raise ValueError(f"mask must have shape [B, H, W] = {(B, H, W)} to match images, got {tuple(mask.shape)}")
    if mask.device != images.device:
        raise ValueError(f"mask is on {mask.device} but images is on {images.device}")
    return mask


def layer_outputs(logits, boxes):
    """Every decoder layer's logits [L, ..., K] and boxes [L, ..., 4]: the last as pred_logits and
    pred_boxes, the others as aux_outputs."""
    return {
        "pred_logits": logits[-1],
        "pred_boxes": boxes[-1],
        "aux_outputs": [{"pred_logits": c, "pred_boxes": b} for c, b in zip(logits[:-1], boxes[:-1])],
    }


@torch.no_grad()
def post_process(outputs, target_sizes, num_select=300):
    """Top-k over queries x classes, as the published models evaluate.

    outputs: the model's dict; target_sizes [B, 2] (height, width) of the original images.
    Returns a list of B dicts: scores [k], labels [k] (class index), boxes [k, 4] (x0, y0, x1, y1
    in original-image pixels; not clipped to the image: box_ops.clip_boxes_to_image does that).
    """
    scores, labels, boxes = select_detections(outputs["pred_logits"], outputs["pred_boxes"], target_sizes,
                                              num_select)
    return [{"scores": s, "labels": c, "boxes": b} for s, c, b in zip(scores, labels, boxes)]


def select_detections(logits, boxes, target_sizes, num_select=300):
    """post_process as batched tensors (the form an exported graph computes): logits
    [B, Nq, K], boxes [B, Nq, 4] (cx, cy, w, h normalized), target_sizes [B, 2] (height, width)
    -> scores [B, k], labels [B, k] int64, boxes [B, k, 4] xyxy pixels; k = min(num_select, Nq * K)."""
    B, Nq, K = logits.shape
    if target_sizes.shape != (B, 2):
        raise ValueError(f"target_sizes must be [B, 2] = [{B}, 2] (height, width of each image), "
                         f"got {list(target_sizes.shape)}")
    scores, index = logits.sigmoid().flatten(1).topk(min(num_select, Nq * K), dim=1)
    query, labels = index // K, index % K
    boxes = box_cxcywh_to_xyxy(boxes.gather(1, query[..., None].expand(-1, -1, 4)))
    height, width = target_sizes.to(boxes.dtype).unbind(1)
    boxes = boxes * torch.stack((width, height, width, height), dim=1)[:, None, :]
    return scores, labels, boxes
