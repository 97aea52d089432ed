"""The DAB-Deformable-DETR detector: multi-scale backbone, deformable transformer, per-layer heads."""

import copy
import math

import torch
from torch import nn

from dabdetr.models.backbone import Backbone, downsampled_mask
from dabdetr.models.config import DABDETRConfig
from dabdetr.models.deformable_transformer import DeformableTransformer
from dabdetr.models.detector import checked_inputs, layer_outputs
from dabdetr.models.position_encoding import PositionEmbeddingSineHW
from dabdetr.models.transformer import MLP, inverse_sigmoid


class DABDeformableDETR(nn.Module):
    """forward(images [B, 3, H, W], mask [B, H, W] bool, True = padding) -> dict, as DABDETR's:

    pred_logits [B, Nq, num_classes] (sigmoid scores, no background class);
    pred_boxes [B, Nq, 4] (cx, cy, w, h), normalized by each image's unpadded size;
    aux_outputs: a list of {"pred_logits", "pred_boxes"} for decoder layers 0 .. L-2;
    references [L, B, Nq, 4]: the anchors each decoder layer used.

    Levels: the backbone's last min(3, num_feature_levels) stages (C3, C4, C5 in the published
    models), each projected by a 1x1 convolution (input_proj_kernel_size) and GroupNorm(32)
    (input_proj.{l}.0 and .1), then 3x3 stride-2 convolutions with GroupNorm for the rest (the
    first on the last stage's features, the next on the level before); each level's position
    encoding (Deformable DETR's sine encoding of pixel centres) plus a learned level embedding.
    Queries: tgt_embed (content) and refpoint_embed (anchor logits), with patterns_embed added per
    pattern when num_patterns > 0; with two_stage, none: the encoder's best proposals instead.
    Every decoder layer has its own class and box head (class_embed.{i}, bbox_embed.{i}; two-stage:
    one more each, for the proposals), and the box heads refine the anchors layer by layer.
    """

    def __init__(self, config: DABDETRConfig):
        super().__init__()
        self.config = config
        d, levels = config.hidden_dim, config.num_feature_levels
        self.backbone = Backbone(config, outputs=min(3, levels))
        channels = self.backbone.num_channels
        k = config.input_proj_kernel_size
        projections = [nn.Sequential(nn.Conv2d(c, d, k, padding=k // 2), nn.GroupNorm(32, d)) for c in channels]
        for extra in range(levels - len(channels)):
            in_channels = channels[-1] if extra == 0 else d
            projections.append(nn.Sequential(nn.Conv2d(in_channels, d, kernel_size=3, stride=2, padding=1),
                                             nn.GroupNorm(32, d)))
        self.input_proj = nn.ModuleList(projections)
        for projection in self.input_proj:
            nn.init.xavier_uniform_(projection[0].weight)
            nn.init.zeros_(projection[0].bias)
        self.position_encoding = PositionEmbeddingSineHW(d // 2, config.pe_temperature_h, config.pe_temperature_w,
                                                         config.ops_impl, offset=0.5)
        self.transformer = DeformableTransformer(config)
        if not config.two_stage:  # two-stage: the queries come from the encoder's proposals
            self.tgt_embed = nn.Embedding(config.num_queries, d)
            self.refpoint_embed = nn.Embedding(config.num_queries, 4)
            if config.random_refpoints_xy:
                with torch.no_grad():  # centres logit(U(0, 1)); they stay trainable, as in the official code
                    self.refpoint_embed.weight[:, :2].uniform_(0, 1)
                    self.refpoint_embed.weight[:, :2] = inverse_sigmoid(self.refpoint_embed.weight[:, :2], 1e-5)
        self.patterns_embed = nn.Embedding(config.num_patterns, d) if config.num_patterns > 0 else None
        class_embed = nn.Linear(d, config.num_classes)
        nn.init.constant_(class_embed.bias, -math.log((1 - config.prior_prob) / config.prior_prob))
        bbox_embed = MLP(d, d, 4, 3)
        nn.init.zeros_(bbox_embed.layers[-1].weight)
        nn.init.zeros_(bbox_embed.layers[-1].bias)
        heads = config.num_decoder_layers + config.two_stage  # two-stage: the last heads score the proposals
        self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(heads))
        self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(heads))
        if not config.two_stage:  # the first layer's boxes start small (two-stage: as their proposals)
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)

    def forward(self, images, mask=None, targets=None):
        """mask None: no padding. targets: unused (the criterion's; DABDETR's signature). With
        two_stage, also "enc_outputs": {"pred_logits" [B, Nq, K], "pred_boxes" [B, Nq, 4]}, the
        encoder's proposals that became the queries (trained with the same losses)."""
        hs, references, proposals = self.encode_decode(images, mask)
        logits = torch.stack([head(h) for head, h in zip(self.class_embed, hs)])
        boxes = self.box_head(hs, references)
        outputs = {**layer_outputs(logits, boxes), "references": references}
        if proposals is not None:
            outputs["enc_outputs"] = proposals
        return outputs

    def predict(self, images, mask=None):
        """(logits [B, Nq, num_classes], boxes [B, Nq, 4]) of the last decoder layer alone."""
        hs, references, _ = self.encode_decode(images, mask)
        last = len(hs) - 1
        return self.class_embed[last](hs[last]), self.box_sigmoid(last, hs[last], references[last])

    def encode_decode(self, images, mask):
        """Backbone, input projections, encoder and decoder: hs [L, B, N, d], references [L, B, N, 4],
        and the encoder's proposals (two_stage) or None (DeformableTransformer.forward)."""
        mask = checked_inputs(images, mask)
        features, masks = self.backbone(images, mask)
        srcs = [projection(f) for projection, f in zip(self.input_proj, features)]
        for projection in self.input_proj[len(features):]:
            srcs.append(projection(features[-1] if len(srcs) == len(features) else srcs[-1]))
            masks.append(downsampled_mask(mask, srcs[-1].shape[-2:]))
        pos = [self.position_encoding(m, self.level_dtype) for m in masks]
        queries = None if self.config.two_stage else self.queries(images.shape[0])
        return self.transformer(srcs, masks, pos, queries, self.class_embed, self.bbox_embed)

    @property
    def level_dtype(self):
        """The parameters' dtype, of the position encodings (float32 under autocast too)."""
        return self.input_proj[0][0].weight.dtype

    def queries(self, batch):
        """(tgt [B, Nq', d], anchors [B, Nq', 4]): query p * Nq + q has content tgt_embed[q] (plus
        patterns_embed[p]) and anchor sigmoid(refpoint_embed[q]); Nq' = Nq * max(num_patterns, 1)."""
        tgt, anchors = self.tgt_embed.weight, self.refpoint_embed.weight.sigmoid()
        if self.patterns_embed is not None:
            patterns = self.patterns_embed.num_embeddings
            tgt = tgt.repeat(patterns, 1) + self.patterns_embed.weight.repeat_interleave(tgt.shape[0], dim=0)
            anchors = anchors.repeat(patterns, 1)
        return tgt[None].expand(batch, -1, -1), anchors[None].expand(batch, -1, -1)

    def box_sigmoid(self, layer, hs, reference):
        """Layer `layer`'s boxes (cx, cy, w, h) in (0, 1): its anchors refined by its box head."""
        return (self.bbox_embed[layer](hs) + inverse_sigmoid(reference, self.config.box_head_eps)).sigmoid()

    def box_head(self, hs, references):
        """Every decoder layer's boxes [L, B, N, 4]."""
        return torch.stack([self.box_sigmoid(i, h, r) for i, (h, r) in enumerate(zip(hs, references))])
