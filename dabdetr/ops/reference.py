"""Pure-PyTorch specification of the ops (and their fallback where no kernel serves a call).

Written for clarity, not speed: attention builds the per-head concatenation and the full
probability matrix; the sine embedding follows docs/ops.md (op 2) literally; the deformable
attention samples each level with grid_sample, as Deformable DETR's own fallback does.
"""

import math

import torch
import torch.nn.functional as F


def modulated_attention(q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale):
    """softmax(([q_content | q_pos] . [k_content | k_pos]^T) * scale, masked) @ value, per head.

    Shapes: q_* [B, H, Nq, D*], k_* [B, H, Nk, D*], value [B, H, Nk, Dv],
    key_padding_mask [B, Nk] bool (True = padded) or None. Returns [B, H, Nq, Dv].
    A query whose keys are all padded gets zeros (and zero gradients), not NaN.
    """
    if q_pos is not None:
        query = torch.cat([q_content, q_pos], dim=-1)
        key = torch.cat([k_content, k_pos], dim=-1)
    else:
        query, key = q_content, k_content
    # The scale goes on the [Nq, D] query rather than the [Nq, Nk] logits: a full-size pass fewer,
    # forward and backward (this path is also the fallback where no kernel serves a dtype).
    logits = torch.matmul(query * scale, key.transpose(-2, -1))
    if key_padding_mask is None:
        return torch.matmul(logits.softmax(dim=-1), value)
    all_padded = key_padding_mask.all(dim=-1)  # [B]
    # A fully padded row would be softmax(-inf, ..., -inf) = NaN: its keys stay unmasked, and its
    # output is zeroed instead (on the small [Nq, Dv] output), which zeroes its gradients too.
    padded = (key_padding_mask & ~all_padded[:, None])[:, None, None, :]
    probs = logits.masked_fill(padded, float("-inf")).softmax(dim=-1)
    return torch.matmul(probs, value).masked_fill(all_padded[:, None, None, None], 0.0)


def sine_frequency_divisors(num_feats, temperature, dtype, device):
    """tau_k = temperature^(2 floor(k/2) / num_feats) for k < num_feats, as in the published code."""
    k = torch.arange(num_feats, dtype=dtype, device=device)
    return temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / num_feats)


def anchor_sine_embed(boxes, num_feats, temperature):
    """[..., 4] (cx, cy, w, h) -> [..., 4n] blocks (cy, cx, w, h); [..., 2] -> [..., 2n] (cy, cx).

    Block of coordinate u, feature k: sin(u 2pi / tau_k) at even k, cos at odd k.
    """
    tau = sine_frequency_divisors(num_feats, temperature, boxes.dtype, boxes.device)
    angles = boxes[..., None] * (2 * math.pi) / tau  # [..., C, n]
    embed = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)
    # y before x, then w, h (slices, not an index list, which tracing would make a tensor constant)
    return torch.cat((embed[..., 1:2, :], embed[..., 0:1, :], embed[..., 2:, :]), dim=-2).flatten(-2)


def modulated_anchor_sine_embed(boxes, xy_scale, ref_wh, num_feats, temperature):
    """(embed, modulated_xy): modulated_xy = embed[..., :2n] * xy_scale, then its y block times
    ref_wh[..., 1] / h and its x block times ref_wh[..., 0] / w (docs/ops.md, op 2)."""
    embed = anchor_sine_embed(boxes, num_feats, temperature)
    xy = embed[..., : 2 * num_feats]
    if xy_scale is not None:
        xy = xy * xy_scale
    if ref_wh is not None:
        y_mod = (ref_wh[..., 1] / boxes[..., 3])[..., None]
        x_mod = (ref_wh[..., 0] / boxes[..., 2])[..., None]
        xy = torch.cat((xy[..., :num_feats] * y_mod, xy[..., num_feats:] * x_mod), dim=-1)
    return embed, xy


def multi_scale_deformable_attention(value, level_sizes, sampling_locations, attention_weights):
    """Multi-scale deformable attention by grid_sample (docs/ops.md, op 3).

    Args:
        value: [B, S, H, D], the levels' tokens one level after another, each level row-major.
        level_sizes: the levels' (H_l, W_l) as ints, summing (H_l * W_l) to S.
        sampling_locations: [B, Nq, H, L, P, 2], (x, y) normalized to each level: pixel x W_l - 0.5.
        attention_weights: [B, Nq, H, L, P].
    Returns:
        [B, Nq, H * D]: per query and head, the attention-weighted sum over levels and points of the
        bilinear sample of that head's value map (corners outside a level count as zero).
    """
    B, _, H, D = value.shape
    _, Nq, _, L, P, _ = sampling_locations.shape
    levels = value.split([h * w for h, w in level_sizes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample's [-1, 1], corners of the corner pixels
    samples = []
    for level, (h, w), grid in zip(levels, level_sizes, grids.unbind(3)):
        maps = level.permute(0, 2, 3, 1).reshape(B * H, D, h, w)  # [B*H, D, H_l, W_l]
        grid = grid.transpose(1, 2).reshape(B * H, Nq, P, 2)
        samples.append(F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    sampled = torch.stack(samples, dim=3)  # [B*H, D, Nq, L, P]
    weights = attention_weights.transpose(1, 2).reshape(B * H, 1, Nq, L, P)
    out = (sampled * weights).sum(dim=(3, 4))  # [B*H, D, Nq]
    return out.view(B, H * D, Nq).transpose(1, 2).contiguous()


def multi_scale_deformable_attention_by_index(value, spatial_shapes, sampling_locations, attention_weights):
    """The same op as multi_scale_deformable_attention, with the bilinear corners gathered by index
    arithmetic: the level sizes stay tensor values (spatial_shapes [L, 2] integers), so a graph traced
    with symbolic sizes (torch.export, ONNX) needs no size that depends on data. For export only:
    it holds the same [B*H, Nq*L*P, D] samples per corner as grid_sample holds per level."""
    B, S, H, D = value.shape
    _, Nq, _, L, P, _ = sampling_locations.shape
    shapes = spatial_shapes.to(device=value.device, dtype=torch.int64)
    heights, widths = shapes[:, 0].view(L, 1), shapes[:, 1].view(L, 1)  # [L, 1], against [..., L, P]
    starts = torch.cumsum(heights * widths, dim=0) - heights * widths
    x = sampling_locations[..., 0] * widths.to(value.dtype) - 0.5  # [B, Nq, H, L, P] pixels
    y = sampling_locations[..., 1] * heights.to(value.dtype) - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.to(torch.int64), y0.to(torch.int64)
    maps = value.permute(0, 2, 1, 3).reshape(B * H, S, D)
    out = value.new_zeros(B * H, Nq, D)
    corners = ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy))
    for dx, dy, bilinear in corners:
        cx, cy = x0 + dx, y0 + dy
        inside = (cx >= 0) & (cx < widths) & (cy >= 0) & (cy < heights)
        token = torch.where(inside, starts + cy * widths + cx, 0)  # [B, Nq, H, L, P]
        token = token.transpose(1, 2).reshape(B * H, Nq * L * P, 1).expand(-1, -1, D)
        weight = torch.where(inside, bilinear * attention_weights, 0).transpose(1, 2).reshape(B * H, Nq, L * P, 1)
        out = out + (maps.gather(1, token).view(B * H, Nq, L * P, D) * weight).sum(dim=2)
    return out.view(B, H, Nq, D).transpose(1, 2).reshape(B, Nq, H * D)
