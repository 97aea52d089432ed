"""Sine positional encoding of the feature map (docs/architecture.md)."""

import torch
from torch import nn

from dabdetr.ops import anchor_sine_embed


class PositionEmbeddingSineHW(nn.Module):
    """mask [B, H, W] (True = padding) -> pos [B, H*W, 2n] = [PE_y | PE_x] per pixel.

    y (x) is the 1-based row (column) count of valid pixels, less `offset`, normalized by the
    column's (row's) valid count, times 2 pi; feature k of an axis is sin at even k, cos at odd k,
    of that over T^(2 floor(k/2) / n). That is the anchor sine embedding of the point (x_norm,
    y_norm), whose blocks come y first, so it runs through the same fused op. DAB-DETR: offset 0,
    temperature 20; Deformable DETR (and DAB-Deformable-DETR): offset 0.5 (pixel centres), 10000.
    """

    def __init__(self, num_feats, temperature_h=20.0, temperature_w=20.0, ops_impl="auto", offset=0.0):
        super().__init__()
        self.num_feats = num_feats
        self.temperature_h = temperature_h
        self.temperature_w = temperature_w
        self.ops_impl = ops_impl
        self.offset = offset

    def forward(self, mask, dtype=torch.float32):
        """dtype: of the encoding (the model's parameters'; float32 under autocast too)."""
        not_mask = (~mask).to(dtype)
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        eps = 1e-6
        points = torch.stack(((x - self.offset) / (x[:, :, -1:] + eps), (y - self.offset) / (y[:, -1:, :] + eps)),
                             dim=-1).flatten(1, 2)
        embed_h = anchor_sine_embed(points, num_feats=self.num_feats, temperature=self.temperature_h,
                                    impl=self.ops_impl)
        if self.temperature_w == self.temperature_h:
            return embed_h
        embed_w = anchor_sine_embed(points, num_feats=self.num_feats, temperature=self.temperature_w,
                                    impl=self.ops_impl)
        return torch.cat((embed_h[..., : self.num_feats], embed_w[..., self.num_feats :]), dim=-1)

