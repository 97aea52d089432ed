"""DAB-Deformable-DETR's encoder and decoder (docs/architecture.md), batch-first.

The encoder's self-attention and the decoder's cross-attention are Deformable DETR's multi-scale
deformable attention (dabdetr.ops.multi_scale_deformable_attention); the decoder's queries carry
DAB-DETR's dynamic anchor boxes: each layer's positional query is the sine embedding of its anchor
(dabdetr.ops.anchor_sine_embed), and each layer refines the anchors. Parameter names follow the
official implementation (IDEA-Research/DAB-DETR, models/dab_deformable_detr).
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from dabdetr.models.onednn_fusion import LinearReLU
from dabdetr.models.transformer import MLP, EncoderSelfAttention, inverse_sigmoid
from dabdetr.ops import anchor_sine_embed, multi_scale_deformable_attention


@dataclass
class FeatureLevels:
    """The levels of a multi-scale feature map, flattened one after another.

    sizes: [(H_l, W_l)]; spatial_shapes [L, 2] int64 on the CPU (where the op reads sizes without
    waiting for a device); pixel_sizes [L, 2] (W_l, H_l) in the features' dtype and device;
    valid_ratios [B, L, 2]: the unpadded fraction (w, h) of each level of each image.
    """

    sizes: list
    spatial_shapes: torch.Tensor
    pixel_sizes: torch.Tensor
    valid_ratios: torch.Tensor

    @classmethod
    def of(cls, masks, dtype):
        """From the levels' masks [B, H_l, W_l] (True = padding)."""
        sizes = [tuple(m.shape[-2:]) for m in masks]
        spatial_shapes = torch.tensor(sizes, dtype=torch.int64)
        pixel_sizes = spatial_shapes.flip(-1).to(masks[0].device, dtype)
        return cls(sizes, spatial_shapes, pixel_sizes, torch.stack([valid_ratio(m, dtype) for m in masks], 1))


def valid_ratio(mask, dtype):
    """mask [B, H, W] (True = padding) -> [B, 2]: the unpadded fraction of its width and height (the
    padding is at the right and bottom)."""
    _, H, W = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1).to(dtype) / H
    valid_w = (~mask[:, 0, :]).sum(1).to(dtype) / W
    return torch.stack((valid_w, valid_h), -1)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable DETR's attention (the official MSDeformAttn's parameters): each query samples, per
    head and level, `points` locations around its reference point and sums their bilinear samples of
    the projected values with softmax weights over levels and points.

    reference_points [B, N, L, 2] (x, y): offsets in pixels of each level; or [B, N, L, 4]
    (x, y, w, h): offsets relative to the box, as points / P * (w, h) / 2 (DAB-Deformable-DETR's).
    """

    def __init__(self, dim, levels, heads, points, ops_impl):
        super().__init__()
        self.levels, self.heads, self.points, self.ops_impl = levels, heads, points, ops_impl
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self):
        """Deformable DETR's init: every head starts looking along its own direction (a ring of H
        angles), point p at p + 1 pixels; uniform attention; xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.heads, dtype=torch.float32) * (2 * math.pi / self.heads)
        directions = torch.stack((angles.cos(), angles.sin()), -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values  # to the unit square's edge
        grid = directions[:, None, None, :] * torch.arange(1, self.points + 1, dtype=torch.float32)[:, None]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.expand(self.heads, self.levels, self.points, 2).flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(self, query, reference_points, values, levels, padding_mask=None):
        """query [B, N, d]; values [B, S, d] (the levels flattened); levels: FeatureLevels;
        padding_mask [B, S] (True = padding: those values count as zero) -> [B, N, d]."""
        B, N, _ = query.shape
        H, L, P = self.heads, self.levels, self.points
        value = self.value_proj(values)
        if padding_mask is not None:  # in place: the projection's output is new, and its backward does not read it
            value = value.masked_fill_(padding_mask[..., None], 0.0)
        value = value.unflatten(-1, (H, -1))
        offsets = self.sampling_offsets(query).view(B, N, H, L, P, 2)
        logits = self.attention_weights(query).view(B, N, H, L * P)
        # In float32 at least: CPU autocast would leave the softmax in bf16, slower there and rounded.
        weights = logits.softmax(-1, dtype=torch.promote_types(logits.dtype, torch.float32)).view(B, N, H, L, P)
        locations = sampling_locations(reference_points, offsets, levels.pixel_sizes)
        # Under autocast the locations come out float32 (the anchors are) and value bf16: the op
        # computes in float32 (16-bit locations would miss by pixels), reading the bf16 values as
        # they are on the CPU.
        dtype = torch.promote_types(value.dtype, locations.dtype)
        out = multi_scale_deformable_attention(value, levels.spatial_shapes, None, locations.to(dtype),
                                               weights.to(dtype), impl=self.ops_impl)
        return self.output_proj(out)


def sampling_locations(reference_points, offsets, pixel_sizes):
    """Where each head's points sample each level, (x, y) normalized to the level: offsets [B, N, H,
    L, P, 2] in pixels of each level (pixel_sizes [L, 2]: (W_l, H_l)) from reference_points [B, N,
    L, 2]; or, for reference boxes [B, N, L, 4] (cx, cy, w, h), offsets scaled by half the box over
    P from its center. -> [B, N, H, L, P, 2]."""
    B, N, H, L, P, _ = offsets.shape

    def per_coordinate(t):  # [..., L, 2] -> [..., L * P * 2], each point's copy of its level's pair
        return t[..., None, :].expand(*t.shape[:-1], P, 2).flatten(-3)

    # Over [B, N, H, L * P * 2], only the heads broadcast: with [B, N, 1, L, 1, 2] operands the
    # op's innermost loop is 2 wide, 3-5 times slower (an encoder layer at COCO's size: 8.5 against
    # 1.8 ms). One fused op each: a pass fewer than dividing (or multiplying), then adding.
    flat = offsets.reshape(B, N, H, L * P * 2)
    if reference_points.shape[-1] == 2:
        locations = torch.addcdiv(per_coordinate(reference_points)[:, :, None], flat, per_coordinate(pixel_sizes))
    else:
        centers, half_sizes = per_coordinate(reference_points[..., :2]), per_coordinate(reference_points[..., 2:])
        locations = torch.addcmul(centers[:, :, None], flat, half_sizes[:, :, None] * (0.5 / P))
    return locations.view(B, N, H, L, P, 2)


# Tokens whose feed-forward hidden layer is computed at a time in eager CPU inference: a [1024,
# ffn_dim] block stays in the cache, where the whole [tokens, ffn_dim] layer (the encoder's 17 821
# tokens at COCO size: 146 MB in float32) would go through memory three times (bias, ReLU, product).
FEED_FORWARD_BLOCK = 1024


class LayerWithFeedForward(nn.Module):
    """A layer's feed-forward block (linear1, linear2: the official names) and dropout: ReLU, as the
    official code hard-codes whatever its activation argument says."""

    def __init__(self, config):
        super().__init__()
        self.linear1 = nn.Linear(config.hidden_dim, config.ffn_dim)
        self.linear2 = nn.Linear(config.ffn_dim, config.hidden_dim)
        self.dropout = nn.Dropout(config.dropout)

    def feed_forward(self, x, norm):
        """norm(x + linear2(relu(linear1(x)))); x [B, N, d]."""
        hidden = LinearReLU(self.linear1, x)
        tokens = x.reshape(-1, x.shape[-1])
        # Graphs get the compiler's own fusion (and the size is not compared there: it may be symbolic).
        blockwise = (not torch.compiler.is_compiling() and not torch.is_grad_enabled() and x.device.type == "cpu"
                     and tokens.shape[0] > FEED_FORWARD_BLOCK)
        if blockwise:
            ffn = torch.cat([self.hidden_to_output(hidden, block) for block in tokens.split(FEED_FORWARD_BLOCK)])
            ffn = ffn.view_as(x)
        else:
            ffn = self.hidden_to_output(hidden, x)
        return norm(x + self.dropout(ffn))

    def hidden_to_output(self, hidden, x):
        """linear2(hidden(x)) for hidden = relu(linear1(.)), a LinearReLU (onednn_fusion.py): there
        the ReLU is applied as linear1 writes its output where oneDNN may run it."""
        return self.linear2(self.dropout(hidden(x)))


class DeformableEncoderLayer(LayerWithFeedForward):
    """Post-norm: x = norm1(x + MSDeformAttn(x + pos, pixel centres, x)); x = norm2(x + FFN(x))."""

    def __init__(self, config):
        super().__init__(config)
        d = config.hidden_dim
        self.self_attn = MultiScaleDeformableAttention(d, config.num_feature_levels, config.num_heads,
                                                       config.encoder_points, config.ops_impl)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, src, pos, reference_points, levels, padding_mask):
        src = self.norm1(src + self.dropout(self.self_attn(src + pos, reference_points, src, levels, padding_mask)))
        return self.feed_forward(src, self.norm2)


def encoder_reference_points(levels, device):
    """[B, S, L, 2]: every token's pixel centre (x, y) normalized by the valid extent of its own
    level, then scaled to each level's valid extent (Deformable DETR's reference points)."""
    dtype, ratios = levels.valid_ratios.dtype, levels.valid_ratios
    per_level = []
    for level, (h, w) in enumerate(levels.sizes):
        y, x = torch.meshgrid(torch.arange(h, dtype=dtype, device=device) + 0.5,
                              torch.arange(w, dtype=dtype, device=device) + 0.5, indexing="ij")
        x = x.reshape(-1)[None] / (ratios[:, None, level, 0] * w)
        y = y.reshape(-1)[None] / (ratios[:, None, level, 1] * h)
        per_level.append(torch.stack((x, y), -1))
    return torch.cat(per_level, 1)[:, :, None] * ratios[:, None]


class DeformableEncoder(nn.Module):
    """src, pos [B, S, d]; padding_mask [B, S] -> memory [B, S, d]."""

    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(config) for _ in range(config.num_encoder_layers))

    def forward(self, src, pos, levels, padding_mask):
        reference_points = encoder_reference_points(levels, src.device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, levels, padding_mask)
        return src


class DABDeformableDecoderLayer(LayerWithFeedForward):
    """Self-attention (q = k = tgt + query_pos), then deformable cross-attention sampling around
    each query's anchor box, then the FFN; post-norm (norm2, norm1, norm3, the official names)."""

    def __init__(self, config):
        super().__init__(config)
        d = config.hidden_dim
        self.self_attn = EncoderSelfAttention(d, config.num_heads, config.ops_impl)
        self.cross_attn = MultiScaleDeformableAttention(d, config.num_feature_levels, config.num_heads,
                                                        config.decoder_points, config.ops_impl)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, tgt, query_pos, anchors, memory, levels, padding_mask):
        """tgt, query_pos [B, N, d]; anchors [B, N, L, 4] (scaled per level); memory [B, S, d]."""
        q = k = tgt + query_pos
        tgt = self.norm2(tgt + self.dropout(self.self_attn(q, k, tgt, None)))
        cross = self.cross_attn(tgt + query_pos, anchors, memory, levels, padding_mask)
        tgt = self.norm1(tgt + self.dropout(cross))
        return self.feed_forward(tgt, self.norm3)


class DABDeformableDecoder(nn.Module):
    """The DAB decoder on deformable attention: anchors refined layer by layer."""

    def __init__(self, config):
        super().__init__()
        d = config.hidden_dim
        self.config = config
        self.layers = nn.ModuleList(DABDeformableDecoderLayer(config) for _ in range(config.num_decoder_layers))
        self.query_scale = MLP(d, d, d, 2)
        self.ref_point_head = MLP(2 * d, d, d, 2)

    def forward(self, tgt, anchors, memory, levels, padding_mask, bbox_embed):
        """tgt [B, N, d]; anchors [B, N, 4] (cx, cy, w, h) in (0, 1), of the unpadded image; memory
        [B, S, d]; bbox_embed: the per-layer box heads (shared with the detector).

        Returns hs [L, B, N, d] (every layer's output) and references [L, B, N, 4] (the anchors
        each layer used; the first not detached).
        """
        config = self.config
        scale_to_levels = torch.cat((levels.valid_ratios, levels.valid_ratios), -1)[:, None]  # [B, 1, L, 4]
        reference, references, hs = anchors, [anchors], []
        for i, layer in enumerate(self.layers):
            level_anchors = reference[:, :, None] * scale_to_levels  # [B, N, L, 4]
            # Position from the anchor as level 0 sees it: sines of (y, x, w, h), 4 x d/2 features.
            embed = anchor_sine_embed(level_anchors[:, :, 0], num_feats=config.hidden_dim // 2,
                                      temperature=config.anchor_temperature, impl=config.ops_impl)
            query_pos = self.ref_point_head(embed.to(tgt.dtype))
            if i > 0:
                query_pos = self.query_scale(tgt) * query_pos
            tgt = layer(tgt, query_pos, level_anchors, memory, levels, padding_mask)
            new_reference = (bbox_embed[i](tgt) + inverse_sigmoid(reference, config.anchor_update_eps)).sigmoid()
            reference = new_reference.detach()
            if i < len(self.layers) - 1:
                references.append(reference)
            hs.append(tgt)
        return torch.stack(hs), torch.stack(references)


class DeformableTransformer(nn.Module):
    """Encoder and decoder, with the learned level embedding added to the position encoding; with
    config.two_stage, the encoder's proposals as the decoder's queries (encoder_proposals)."""

    def __init__(self, config):
        super().__init__()
        d = config.hidden_dim
        self.config = config
        self.encoder = DeformableEncoder(config)
        self.decoder = DABDeformableDecoder(config)
        self.level_embed = nn.Parameter(torch.empty(config.num_feature_levels, d))
        if config.two_stage:  # detrex's names
            self.enc_output, self.enc_output_norm = nn.Linear(d, d), nn.LayerNorm(d)
        for p in self.parameters():  # the official init
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MultiScaleDeformableAttention):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs, masks, pos, queries, class_embed, bbox_embed):
        """srcs, pos: per level [B, d, H_l, W_l] and [B, H_l * W_l, d]; masks: per level [B, H_l, W_l];
        queries: (tgt [B, N, d], anchors [B, N, 4]), or None with two_stage; class_embed, bbox_embed:
        the detector's per-layer heads (with two_stage, one more each, for the proposals).
        Returns (hs [L, B, N, d], references [L, B, N, 4], proposals): proposals None, or with
        two_stage {"pred_logits" [B, N, K], "pred_boxes" [B, N, 4]} of the proposals chosen as queries."""
        levels = FeatureLevels.of(masks, pos[0].dtype)  # the parameters' (float32 under autocast too)
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        pos = torch.cat([p + self.level_embed[level] for level, p in enumerate(pos)], 1)
        padding_mask = torch.cat([m.flatten(1) for m in masks], 1)
        memory = self.encoder(src, pos, levels, padding_mask)
        proposals = None
        if self.config.two_stage:
            queries, proposals = self.encoder_proposals(memory, padding_mask, levels, class_embed[-1], bbox_embed[-1])
        tgt, anchors = queries
        hs, references = self.decoder(tgt, anchors, memory, levels, padding_mask, bbox_embed)
        return hs, references, proposals

    def encoder_proposals(self, memory, padding_mask, levels, class_head, box_head):
        """Two-stage, as detrex's DAB-Deformable-DETR: every token proposes a box (its pixel centre,
        a side of 0.05 2^level), refined and scored by the last heads from its projected memory; the
        num_queries proposals of highest logit (over all classes) become the anchors (detached) and
        their projected memory the content queries (detached).
        Returns ((tgt, anchors), {"pred_logits", "pred_boxes"} of the chosen proposals)."""
        memory, logits, box_logits = self.proposals(memory, padding_mask, levels, class_head, box_head)
        tokens, queries = logits.shape[1], self.config.num_queries
        torch._check(tokens >= queries, lambda: f"two-stage DAB-Deformable-DETR chooses its {queries} queries among "
                     f"the encoder's tokens, but these images give {tokens}: use larger images or fewer num_queries")
        best = logits.max(-1).values.topk(queries, dim=1).indices[..., None]
        chosen = box_logits.gather(1, best.expand(-1, -1, 4))
        tgt = memory.gather(1, best.expand(-1, -1, memory.shape[-1]))
        proposals = {"pred_logits": logits.gather(1, best.expand(-1, -1, logits.shape[-1])),
                     "pred_boxes": chosen.sigmoid()}
        return (tgt.detach(), chosen.detach().sigmoid()), proposals

    def proposals(self, memory, padding_mask, levels, class_head, box_head):
        """Every encoder token's proposal: (projected memory [B, S, d], class logits [B, S, K], box
        logits [B, S, 4]); padded tokens and boxes with a coordinate outside (0.01, 0.99) are never
        usable: zero memory, infinite box logits."""
        boxes = []
        for level, (h, w) in enumerate(levels.sizes):
            y, x = torch.meshgrid(torch.arange(h, dtype=memory.dtype, device=memory.device),
                                  torch.arange(w, dtype=memory.dtype, device=memory.device), indexing="ij")
            valid = levels.valid_ratios[:, level] * levels.pixel_sizes[level]  # [B, 2]: unpadded (w, h)
            centres = (torch.stack((x, y), -1)[None] + 0.5) / valid[:, None, None]  # [B, h, w, 2]
            sides = torch.full_like(centres, 0.05 * 2.0**level)
            boxes.append(torch.cat((centres, sides), -1).flatten(1, 2))
        boxes = torch.cat(boxes, 1)  # [B, S, 4]
        usable = ((boxes > 0.01) & (boxes < 0.99)).all(-1, keepdim=True) & ~padding_mask[..., None]
        box_logits = torch.log(boxes / (1 - boxes)).masked_fill(~usable, float("inf"))
        memory = self.enc_output_norm(self.enc_output(memory.masked_fill(~usable, 0.0)))
        return memory, class_head(memory), box_head(memory) + box_logits
