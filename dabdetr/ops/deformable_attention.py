"""multi_scale_deformable_attention: Deformable DETR's multi-scale deformable attention as one fused op."""

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

OP = "multi_scale_deformable_attention"


def multi_scale_deformable_attention(
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, *, impl="auto"
):
    """Multi-scale deformable attention (Deformable DETR), forward and backward fused.

    The arguments are MSDeformAttnFunction's, in its order (without im2col_step), so code written
    for the Deformable DETR extension can call this instead.

    Args:
        value: [B, S, H, D]; S = sum of H_l * W_l, the levels' tokens one level after another, each
            level row-major. The last dim must be contiguous (as a Linear's output viewed per head).
        spatial_shapes: [L, 2] integers (H_l, W_l), or a sequence of L pairs; on the CPU or on
            value's device (on a GPU, sizes there are read back to the host: pass them on the CPU).
        level_start_index: [L] integers, the first token of each level, or None (computed).
        sampling_locations: [B, Nq, H, L, P, 2], (x, y) normalized to each level: the pixel is
            x W_l - 0.5, y H_l - 0.5 (grid_sample with align_corners=False). Corners outside a level
            contribute zero.
        attention_weights: [B, Nq, H, L, P]. value, sampling_locations and attention_weights share a
            dtype, or value is float16 / bfloat16 and the other two float32 (what autocast's
            module passes: 16-bit locations would miss by pixels); then the op computes in float32
            (on the CPU reading bfloat16 values as they are) and returns float32.
        impl: "auto" (a kernel where one serves the call), "reference" (grid_sample), "kernel",
            or "cuda_emulated" (the CUDA kernels run by the CUDA emulator, on CPU tensors).
    Returns:
        [B, Nq, H * D] in sampling_locations' dtype. Differentiable in value, sampling_locations
        and attention_weights (each gradient in its input's dtype).
    """
    spatial_shapes = _as_index_tensor(spatial_shapes)
    level_start_index = _as_index_tensor(level_start_index)
    _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)

    def unsupported(cuda):
        return _unsupported(value, sampling_locations, cuda)

    ops = kernel_ops(impl, OP, value.device, value.dtype, unsupported)
    if value.dtype != sampling_locations.dtype and not (ops is torch.ops.dabdetr and value.device.type == "cpu"):
        value = value.to(sampling_locations.dtype)  # only the CPU kernels take 16-bit values with float32 ones
    # The sizes' values are checked here on every path (under torch.compile, where they are not
    # known while tracing, the kernels check them when they run).
    compiling = torch.compiler.is_compiling()
    level_sizes = None if compiling else _level_sizes(spatial_shapes, level_start_index, value.shape[1])
    if ops is not None:
        return ops.multi_scale_deformable_attention(
            last_dim_contiguous(value), spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
    if level_sizes is None:
        level_sizes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return reference.multi_scale_deformable_attention(value, level_sizes, sampling_locations, attention_weights)


def _level_sizes(spatial_shapes, level_start_index, num_values):
    """The levels' [(H_l, W_l)] as ints, checked: positive, adding up to S = num_values, and
    starting where level_start_index (if given) says."""
    sizes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    for level, (h, w) in enumerate(sizes):
        if h < 1 or w < 1:
            raise ValueError(f"{OP}: spatial_shapes: level {level} has size {h} x {w}; every level needs a height "
                             "and width of at least 1")
    starts = [sum(h * w for h, w in sizes[:level]) for level in range(len(sizes))]
    total = sum(h * w for h, w in sizes)
    if total != num_values:
        raise ValueError(f"{OP}: spatial_shapes: the levels hold {total} tokens (sum of H * W) but value has "
                         f"S = {num_values}")
    if level_start_index is not None and level_start_index.tolist() != starts:
        raise ValueError(f"{OP}: level_start_index is {level_start_index.tolist()} but the levels of "
                         f"spatial_shapes start at {starts}")
    return sizes


def _as_index_tensor(t):
    """A sequence of ints as an int64 tensor on the CPU (tensors pass as they are, to be checked)."""
    if t is None or isinstance(t, torch.Tensor):
        return t
    try:
        as_tensor = torch.as_tensor(t)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{OP}: spatial_shapes and level_start_index must be integer tensors or sequences of "
                        f"ints, got {t!r}") from error
    return as_tensor.to(torch.int64) if not as_tensor.dtype.is_floating_point else as_tensor


def _unsupported(value, sampling_locations, cuda):
    """Why the kernels (the CUDA ones where cuda is True) cannot serve this call, or None."""
    limits = BUILD_INFO if not cuda or BUILD_INFO.get("cuda") else EMULATOR_LIMITS
    levels = sampling_locations.shape[3]
    if levels > limits["deformable_max_levels"]:
        return f"the kernels serve at most {limits['deformable_max_levels']} levels, got {levels}"
    if cuda:
        dim = value.shape[3]
        step, widest = limits["cuda_deformable_head_dim_step"], limits["cuda_deformable_max_head_dim"]
        if dim not in range(step, widest + 1, step):
            return f"the CUDA kernels serve head dims {step} to {widest} in steps of {step}, got {dim}"
    return None


def _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Types, ranks, shapes, dtypes and devices: what can be checked without reading the sizes'
    values (also the fake implementation's check)."""
    others = {"sampling_locations": sampling_locations, "attention_weights": attention_weights}
    for name, t in {"value": value, **others}.items():
        check_floating_tensors(OP, {name: t})
    # One dtype for all three, or 16-bit values with float32 locations and weights (autocast's).
    allowed = {value.dtype, torch.float32} if value.dtype in (torch.float16, torch.bfloat16) else {value.dtype}
    for name, t in others.items():
        if t.dtype not in allowed or t.dtype != sampling_locations.dtype:
            raise TypeError(f"{OP}: {name} has dtype {t.dtype} but value has {value.dtype} and sampling_locations "
                            f"{sampling_locations.dtype}; all three share a dtype, or value is float16 or bfloat16 "
                            "with float32 locations and weights")
        if t.device != value.device:
            raise ValueError(f"{OP}: {name} is on {t.device} but value is on {value.device}")
    if value.dim() != 4:
        raise ValueError(f"{OP}: value must have 4 dims [B, S, H, D], got shape {tuple(value.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[5] != 2:
        raise ValueError(f"{OP}: sampling_locations must have shape [B, Nq, H, L, P, 2], got "
                         f"{tuple(sampling_locations.shape)}")
    B, _, H, _ = value.shape
    _, Nq, _, L, P, _ = sampling_locations.shape
    if (sampling_locations.shape[0], sampling_locations.shape[2]) != (B, H):
        raise ValueError(f"{OP}: sampling_locations has shape {tuple(sampling_locations.shape)}, whose B and H do "
                         f"not match value {tuple(value.shape)}")
    if L < 1 or P < 1:
        raise ValueError(f"{OP}: sampling_locations must have at least one level and one point, got "
                         f"{tuple(sampling_locations.shape)}")
    if tuple(attention_weights.shape) != (B, Nq, H, L, P):
        raise ValueError(f"{OP}: attention_weights must have shape {(B, Nq, H, L, P)} [B, Nq, H, L, P] of "
                         f"sampling_locations, got {tuple(attention_weights.shape)}")
    for name, t, shape in (("spatial_shapes", spatial_shapes, (L, 2)), ("level_start_index", level_start_index, (L,))):
        if t is None and name == "level_start_index":
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{OP}: {name} must be a Tensor, got {type(t).__name__}")
        if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
            raise TypeError(f"{OP}: {name} must hold integers (int64), got {t.dtype}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{OP}: {name} must have shape {list(shape)} (L = {L} levels in sampling_locations), "
                             f"got {tuple(t.shape)}")
        if t.device.type != "cpu" and t.device != value.device:
            raise ValueError(f"{OP}: {name} is on {t.device} but value is on {value.device} (it may be on the CPU "
                             "or on value's device)")


def _register(library):
    """Fake (meta) and autograd registrations of the deformable attention ops of one op library."""
    ops = getattr(torch.ops, library)

    @torch.library.register_fake(f"{library}::multi_scale_deformable_attention")
    def _forward_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        _check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        B, _, H, D = value.shape
        return sampling_locations.new_empty((B, sampling_locations.shape[1], H * D))

    @torch.library.register_fake(f"{library}::multi_scale_deformable_attention_backward")
    def _backward_fake(grad_out, value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
        return (value.new_empty(value.shape), sampling_locations.new_empty(sampling_locations.shape),
                attention_weights.new_empty(attention_weights.shape))

    def _setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def _backward(ctx, grad_out):
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
        grad_value, grad_locations, grad_weights = ops.multi_scale_deformable_attention_backward(
            grad_out, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
        )
        return grad_value, None, None, grad_locations, grad_weights

    torch.library.register_autograd(f"{library}::multi_scale_deformable_attention", _backward,
                                    setup_context=_setup_context)
    torch.library.register_autograd(f"{library}::multi_scale_deformable_attention_backward",
                                    no_double_backward("multi-scale deformable attention"))


for _library in op_libraries():
    _register(_library)
