"""modulated_attention: DAB-DETR's per-head [content | positional] attention as one fused op."""

import math

import torch

from dabdetr.ops import reference
from dabdetr.ops.extension import (
    BUILD_INFO,
    EMULATOR_LIMITS,
    check_floating_tensors,
    kernel_ops,
    last_dim_contiguous,
    no_double_backward,
    op_libraries,
)

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def modulated_attention(
    q_content, q_pos, k_content, k_pos, value, key_padding_mask=None, scale=None, *, impl="auto"
):
    """Attention whose per-head logits are q_content.k_content + q_pos.k_pos, scaled.

    Equals softmax([q_content | q_pos] . [k_content | k_pos]^T * scale) @ value per head, without
    building the concatenation or the [Nq, Nk] probabilities (on the kernel path).

    Args:
        q_content: [B, H, Nq, Dc].   q_pos: [B, H, Nq, Dp] or None.
        k_content: [B, H, Nk, Dc].   k_pos: [B, H, Nk, Dp] or None (None together with q_pos).
        value: [B, H, Nk, Dv].
        key_padding_mask: [B, Nk] bool, True = padded key, or None. A query whose keys are all
            padded gets a zero output and zero gradients.
        scale: logit scale, default 1 / sqrt(Dc + Dp).
        impl: "auto" (kernel when one serves the device and dtype), "reference", "kernel", or
            "cuda_emulated" (the CUDA kernels run by the CUDA emulator, on CPU tensors).
    Returns:
        [B, H, Nq, Dv]. Inputs may be strided views whose last dim is contiguous.
    """
    _check_inputs(q_content, q_pos, k_content, k_pos, value, key_padding_mask)
    if scale is None:
        scale = 1.0 / math.sqrt(q_content.shape[-1] + (q_pos.shape[-1] if q_pos is not None else 0))
    def unsupported(cuda):
        return _unsupported(q_content, q_pos, k_content, value) if cuda else None

    ops = kernel_ops(impl, "modulated_attention", q_content.device, q_content.dtype, unsupported)
    if ops is not None:
        q_content, q_pos, k_content, k_pos, value = (
            last_dim_contiguous(t) for t in (q_content, q_pos, k_content, k_pos, value)
        )
        out, _ = ops.modulated_attention(q_content, q_pos, k_content, k_pos, value, key_padding_mask, float(scale))
        return out
    return reference.modulated_attention(q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale)


def _unsupported(q_content, q_pos, k_content, value):
    """Why the CUDA kernel (or its emulation) cannot serve this call (limits from
    csrc/cuda/launch.h), or None."""
    limits = BUILD_INFO if BUILD_INFO.get("cuda") else EMULATOR_LIMITS
    widest = max(q_content.shape[-1], value.shape[-1], q_pos.shape[-1] if q_pos is not None else 0)
    if widest > limits["cuda_max_head_dim"]:
        return f"no CUDA kernel for head dims above {limits['cuda_max_head_dim']} (widest is {widest})"
    rows = max(q_content.shape[2], k_content.shape[2])
    if rows > limits["cuda_max_attention_rows"]:
        return (f"the CUDA kernel serves at most {limits['cuda_max_attention_rows']} queries and keys per head, "
                f"got {rows}")
    return None


def _check_inputs(q_content, q_pos, k_content, k_pos, value, key_padding_mask):
    named = {"q_content": q_content, "k_content": k_content, "value": value}
    if (q_pos is None) != (k_pos is None):
        raise ValueError("modulated_attention: q_pos and k_pos must be given together or both be None")
    if q_pos is not None:
        named.update(q_pos=q_pos, k_pos=k_pos)
    check_floating_tensors("modulated_attention", named)
    for name, t in named.items():
        if t.dim() != 4:
            raise ValueError(f"modulated_attention: {name} must have 4 dims [B, H, N, D], got shape {tuple(t.shape)}")
    B, H, Nq, Dc = q_content.shape
    Nk = k_content.shape[2]

    def expect(name, dims, wanted):
        got = tuple(named[name].shape[i] for i in dims)
        if got != wanted:
            labels = "".join("BHND"[i] for i in dims)
            raise ValueError(
                f"modulated_attention: {name} has shape {tuple(named[name].shape)}; its {labels} "
                f"dims must be {wanted} to match the other inputs"
            )

    expect("k_content", (0, 1, 3), (B, H, Dc))
    expect("value", (0, 1, 2), (B, H, Nk))
    if q_pos is not None:
        expect("q_pos", (0, 1, 2), (B, H, Nq))
        expect("k_pos", (0, 1, 2, 3), (B, H, Nk, q_pos.shape[3]))
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            is_tensor = isinstance(key_padding_mask, torch.Tensor)
            got = key_padding_mask.dtype if is_tensor else type(key_padding_mask).__name__
            raise TypeError(f"modulated_attention: key_padding_mask must be a bool tensor (True = padded), got {got}")
        if tuple(key_padding_mask.shape) != (B, Nk):
            raise ValueError(
                f"modulated_attention: key_padding_mask must have shape [B, Nk] = {(B, Nk)}, "
                f"got {tuple(key_padding_mask.shape)}"
            )
        if key_padding_mask.device != q_content.device:
            raise ValueError(
                f"modulated_attention: key_padding_mask is on {key_padding_mask.device} "
                f"but q_content is on {q_content.device}"
            )


def _register(library):
    """Fake (meta) and autograd registrations of the attention ops of one op library."""
    ops = getattr(torch.ops, library)

    @torch.library.register_fake(f"{library}::modulated_attention")
    def _modulated_attention_fake(q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale):
        _check_inputs(q_content, q_pos, k_content, k_pos, value, key_padding_mask)
        B, H, Nq, _ = q_content.shape
        lse_dtype = torch.float32 if q_content.dtype in _HALF_DTYPES else q_content.dtype
        out = q_content.new_empty((B, H, Nq, value.shape[-1]))
        return out, q_content.new_empty((B, H, Nq), dtype=lse_dtype)

    @torch.library.register_fake(f"{library}::modulated_attention_backward")
    def _modulated_attention_backward_fake(
        grad_out, q_content, q_pos, k_content, k_pos, value, key_padding_mask, out, lse, scale
    ):
        def like(t):
            return t.new_empty(t.shape) if t is not None else q_content.new_empty((0,))

        return like(q_content), like(q_pos), like(k_content), like(k_pos), like(value)

    def _setup_context(ctx, inputs, output):
        q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale = inputs
        out, lse = output
        ctx.save_for_backward(q_content, q_pos, k_content, k_pos, value, key_padding_mask, out, lse)
        ctx.scale = scale
        ctx.mark_non_differentiable(lse)

    def _backward(ctx, grad_out, _grad_lse):
        q_content, q_pos, k_content, k_pos, value, key_padding_mask, out, lse = ctx.saved_tensors
        g_qc, g_qp, g_kc, g_kp, g_v = ops.modulated_attention_backward(
            grad_out, q_content, q_pos, k_content, k_pos, value, key_padding_mask, out, lse, ctx.scale
        )
        if q_pos is None:
            g_qp = g_kp = None
        return g_qc, g_qp, g_kc, g_kp, g_v, None, None

    torch.library.register_autograd(f"{library}::modulated_attention", _backward, setup_context=_setup_context)
    torch.library.register_autograd(
        f"{library}::modulated_attention_backward", no_double_backward("modulated_attention")
    )


for _library in op_libraries():
    _register(_library)
