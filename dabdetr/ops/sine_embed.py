"""Sine embeddings of anchor boxes (docs/ops.md, op 2) and their modulated xy part."""

import torch

from dabdetr.ops import reference
from dabdetr.ops.extension import kernel_ops, no_double_backward, op_libraries


def anchor_sine_embed(boxes, *, num_feats=128, temperature=10000.0, impl="auto"):
    """Sine embedding of boxes.

    Args:
        boxes: [..., 4] (cx, cy, w, h) or [..., 2] (cx, cy), normally in (0, 1).
        num_feats: n, features per coordinate (even).
        temperature: tau_k = temperature^(2 floor(k/2) / n); 10000 in every published model.
    Returns:
        [..., 4n] (or [..., 2n]): per coordinate u, sin(2 pi u / tau_k) at even k and cos at odd
        k, in blocks ordered cy, cx, w, h.
    """
    _check_inputs(boxes, None, None, num_feats, temperature)
    ops = kernel_ops(impl, "anchor_sine_embed", boxes.device, boxes.dtype)
    if ops is not None:
        return ops.anchor_sine_embed(boxes, num_feats, float(temperature))
    return reference.anchor_sine_embed(boxes, num_feats, temperature)


def modulated_anchor_sine_embed(
    boxes, xy_scale=None, ref_wh=None, *, num_feats=128, temperature=10000.0, impl="auto"
):
    """The anchor embedding and its scaled, width/height-modulated xy part, in one pass.

    Args:
        boxes: [..., 4] (cx, cy, w, h) or [..., 2].
        xy_scale: [..., 2n] multiplier of embed[..., :2n] (the decoder's query_scale), or None.
        ref_wh: [..., 2] (w_ref, h_ref), or None for no modulation; needs 4-D boxes.
    Returns:
        (embed [..., 4n], modulated_xy [..., 2n]) where modulated_xy = embed[..., :2n] * xy_scale
        with the y block [0:n] times h_ref / h and the x block [n:2n] times w_ref / w.
    """
    _check_inputs(boxes, xy_scale, ref_wh, num_feats, temperature)
    ops = kernel_ops(impl, "modulated_anchor_sine_embed", boxes.device, boxes.dtype)
    if ops is not None:
        return ops.modulated_anchor_sine_embed(boxes, xy_scale, ref_wh, num_feats, float(temperature))
    return reference.modulated_anchor_sine_embed(boxes, xy_scale, ref_wh, num_feats, temperature)


def _check_inputs(boxes, xy_scale, ref_wh, num_feats, temperature):
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"anchor sine embedding: boxes must be a Tensor, got {type(boxes).__name__}")
    if not boxes.dtype.is_floating_point:
        raise TypeError(f"anchor sine embedding: boxes must be a floating tensor, got {boxes.dtype}")
    if boxes.dim() < 1 or boxes.shape[-1] not in (2, 4):
        raise ValueError(
            "anchor sine embedding: boxes must have shape [..., 4] (cx, cy, w, h) or [..., 2] "
            f"(cx, cy), got {tuple(boxes.shape)}"
        )
    if not isinstance(num_feats, int) or num_feats <= 0 or num_feats % 2:
        raise ValueError(f"anchor sine embedding: num_feats must be a positive even int, got {num_feats!r}")
    if not temperature > 0:
        raise ValueError(f"anchor sine embedding: temperature must be positive, got {temperature!r}")
    if ref_wh is not None and boxes.shape[-1] != 4:
        raise ValueError(f"anchor sine embedding: ref_wh needs boxes with w and h ([..., 4]), got {tuple(boxes.shape)}")
    for name, t, last in (("xy_scale", xy_scale, 2 * num_feats), ("ref_wh", ref_wh, 2)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"anchor sine embedding: {name} must be a Tensor, got {type(t).__name__}")
        if t.dtype != boxes.dtype:
            raise TypeError(f"anchor sine embedding: {name} has dtype {t.dtype} but boxes has {boxes.dtype}")
        if t.device != boxes.device:
            raise ValueError(f"anchor sine embedding: {name} is on {t.device} but boxes is on {boxes.device}")
        wanted = (*boxes.shape[:-1], last)
        if tuple(t.shape) != wanted:
            raise ValueError(f"anchor sine embedding: {name} must have shape {wanted}, got {tuple(t.shape)}")


def _register(library):
    """Fake (meta) and autograd registrations of the sine-embedding ops of one op library."""
    ops = getattr(torch.ops, library)

    @torch.library.register_fake(f"{library}::anchor_sine_embed")
    def _anchor_sine_embed_fake(boxes, num_feats, temperature):
        _check_inputs(boxes, None, None, num_feats, temperature)
        return boxes.new_empty((*boxes.shape[:-1], boxes.shape[-1] * num_feats))

    @torch.library.register_fake(f"{library}::modulated_anchor_sine_embed")
    def _modulated_anchor_sine_embed_fake(boxes, xy_scale, ref_wh, num_feats, temperature):
        _check_inputs(boxes, xy_scale, ref_wh, num_feats, temperature)
        embed = boxes.new_empty((*boxes.shape[:-1], boxes.shape[-1] * num_feats))
        return embed, boxes.new_empty((*boxes.shape[:-1], 2 * num_feats))

    @torch.library.register_fake(f"{library}::anchor_sine_embed_backward")
    def _anchor_sine_embed_backward_fake(grad_embed, grad_modulated_xy, embed, boxes, xy_scale, ref_wh, num_feats,
                                         temperature):
        def like(t):
            return t.new_empty(t.shape) if t is not None else boxes.new_empty((0,))

        return like(boxes), like(xy_scale), like(ref_wh)

    def _setup_plain(ctx, inputs, output):
        boxes, num_feats, temperature = inputs
        ctx.save_for_backward(boxes, output)
        ctx.num_feats, ctx.temperature = num_feats, temperature

    def _backward_plain(ctx, grad_embed):
        boxes, embed = ctx.saved_tensors
        grad_boxes, _, _ = ops.anchor_sine_embed_backward(
            grad_embed, None, embed, boxes, None, None, ctx.num_feats, ctx.temperature
        )
        return grad_boxes, None, None

    def _setup_modulated(ctx, inputs, output):
        boxes, xy_scale, ref_wh, num_feats, temperature = inputs
        ctx.save_for_backward(boxes, xy_scale, ref_wh, output[0])
        ctx.num_feats, ctx.temperature = num_feats, temperature

    def _backward_modulated(ctx, grad_embed, grad_modulated_xy):
        boxes, xy_scale, ref_wh, embed = ctx.saved_tensors
        grad_boxes, grad_xy_scale, grad_ref_wh = ops.anchor_sine_embed_backward(
            grad_embed, grad_modulated_xy, embed, boxes, xy_scale, ref_wh, ctx.num_feats, ctx.temperature
        )
        return (
            grad_boxes,
            grad_xy_scale if xy_scale is not None else None,
            grad_ref_wh if ref_wh is not None else None,
            None,
            None,
        )

    torch.library.register_autograd(f"{library}::anchor_sine_embed", _backward_plain, setup_context=_setup_plain)
    torch.library.register_autograd(
        f"{library}::modulated_anchor_sine_embed", _backward_modulated, setup_context=_setup_modulated
    )
    torch.library.register_autograd(
        f"{library}::anchor_sine_embed_backward", no_double_backward("the anchor sine embedding")
    )


for _library in op_libraries():
    _register(_library)
