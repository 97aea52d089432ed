"""Pure-PyTorch specification of the two ops (and their fallback where no kernel serves a call).

Written for clarity, not speed: attention builds the per-head concatenation and the full
probability matrix; the sine embedding follows docs/ops.md (op 2) literally.
"""

import math

import torch


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
