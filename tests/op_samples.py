"""Inputs shared by the CPU and CUDA op tests (the sample_inputs pattern of extension-cpp),
the naive fp64 formulas the references are checked against, and the error-ratio assertion."""

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionCase:
    name: str
    B: int = 2
    H: int = 2
    Nq: int = 5
    Nk: int = 7
    Dc: int = 4
    Dp: int = 4  # 0: content-only attention (q_pos = k_pos = None)
    Dv: int = 4
    mask: str = "none"  # none | random | mostly_padded | one_fully_padded | tile_edges
    views: bool = False  # inputs as view(B, N, H, D).transpose(1, 2) of a Linear-like output

    def __str__(self):
        return self.name


ATTENTION_CASES = [
    AttentionCase("tiny"),
    AttentionCase("dab_decoder_head", B=2, H=8, Nq=40, Nk=200, Dc=32, Dp=32, Dv=32, mask="random"),
    AttentionCase("odd_tiles", B=1, H=3, Nq=33, Nk=129, Dc=5, Dp=7, Dv=3, mask="random"),
    AttentionCase("one_key", B=2, H=2, Nq=5, Nk=1),
    AttentionCase("content_only", B=2, H=4, Nq=9, Nk=50, Dc=32, Dp=0, Dv=32, mask="random"),
    AttentionCase("dc_ne_dv", B=1, H=2, Nq=17, Nk=70, Dc=64, Dp=32, Dv=48),
    # Head dims of single vectors plus a tail (the demo model's head dim is 16).
    AttentionCase("vectors_and_tail", B=2, H=2, Nq=37, Nk=150, Dc=16, Dp=24, Dv=20, mask="random"),
    AttentionCase("mostly_padded", B=2, H=2, Nq=6, Nk=140, Dc=16, Dp=16, Dv=16, mask="mostly_padded"),
    AttentionCase("one_fully_padded", B=3, H=2, Nq=7, Nk=30, Dc=8, Dp=8, Dv=8, mask="one_fully_padded"),
    AttentionCase("views", B=2, H=4, Nq=35, Nk=140, Dc=32, Dp=32, Dv=32, mask="random", views=True),
    # Unpadded keys scattered among padded ones, exactly one and just over one 128-key tile of
    # them: the CPU kernels gather the unpadded keys into tiles.
    AttentionCase("gathered_tile_edges", B=2, H=2, Nq=35, Nk=300, Dc=16, Dp=8, Dv=16, mask="tile_edges"),
]

# gradcheck cost grows fast: keep to small odd shapes.
GRADCHECK_CASES = [
    AttentionCase("gc_plain", B=1, H=2, Nq=3, Nk=5, Dc=3, Dp=2, Dv=3),
    AttentionCase("gc_masked", B=2, H=1, Nq=4, Nk=6, Dc=2, Dp=3, Dv=2, mask="one_fully_padded"),
    AttentionCase("gc_content_only", B=1, H=2, Nq=3, Nk=35, Dc=3, Dp=0, Dv=2, mask="random"),
]


def _operand(case, n, d, device, dtype, generator):
    if case.views:
        # As produced by a Linear: [B, N, H*D] viewed per head, feature dim contiguous.
        flat = torch.randn(case.B, n, case.H * d, generator=generator, dtype=torch.float64)
        return flat.to(device, dtype).view(case.B, n, case.H, d).transpose(1, 2)
    return torch.randn(case.B, case.H, n, d, generator=generator, dtype=torch.float64).to(device, dtype)


def _mask(case, device, generator):
    if case.mask == "none":
        return None
    mask = torch.rand(case.B, case.Nk, generator=generator) < 0.25
    if case.mask == "mostly_padded":
        mask[0] = torch.rand(case.Nk, generator=generator) < 0.9
        mask[0, 0] = False
    if case.mask == "one_fully_padded":
        mask[1] = True
    if case.mask == "tile_edges":
        for b, unpadded in enumerate((128, 129)):
            mask[b] = True
            mask[b, torch.randperm(case.Nk, generator=generator)[:unpadded]] = False
    return mask.to(device)


def attention_inputs(case, device="cpu", dtype=torch.float64, requires_grad=False, seed=0):
    """dict of modulated_attention's tensor arguments for `case`."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "q_content": _operand(case, case.Nq, case.Dc, device, dtype, g),
        "q_pos": _operand(case, case.Nq, case.Dp, device, dtype, g) if case.Dp else None,
        "k_content": _operand(case, case.Nk, case.Dc, device, dtype, g),
        "k_pos": _operand(case, case.Nk, case.Dp, device, dtype, g) if case.Dp else None,
        "value": _operand(case, case.Nk, case.Dv, device, dtype, g),
    }
    if requires_grad:
        for x in t.values():
            if x is not None:
                x.requires_grad_(True)
    t["key_padding_mask"] = _mask(case, device, g)
    return t


def attention_cotangent(case, device="cpu", dtype=torch.float64, seed=1):
    """A cotangent [B, H, Nq, Dv] for modulated_attention's output, from its own generator (as
    attention_inputs' tensors are), so that a test does not depend on the tests run before it."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(case.B, case.H, case.Nq, case.Dv, dtype=torch.float64, generator=g).to(device, dtype)


def naive_attention(q_content, q_pos, k_content, k_pos, value, key_padding_mask, scale):
    """Per (batch, head): softmax over the unpadded keys only of (qc.kc + qp.kp) * scale, then
    times value; zeros for a query with no unpadded key. fp64, loops, no masked_fill."""
    B, H, Nq, _ = q_content.shape
    out = torch.zeros(B, H, Nq, value.shape[-1], dtype=torch.float64)
    for b in range(B):
        keep = torch.ones(k_content.shape[2], dtype=torch.bool)
        if key_padding_mask is not None:
            keep = ~key_padding_mask[b].cpu()
        if not keep.any():
            continue
        for h in range(H):
            qc, kc, v = (x[b, h].detach().cpu().double() for x in (q_content, k_content, value))
            logits = qc @ kc[keep].T
            if q_pos is not None:
                logits = logits + q_pos[b, h].detach().cpu().double() @ k_pos[b, h].detach().cpu().double()[keep].T
            weights = torch.exp((logits - logits.max(dim=1, keepdim=True).values) * scale)
            out[b, h] = (weights / weights.sum(dim=1, keepdim=True)) @ v[keep]
    return out


def default_scale(case):
    return 1.0 / math.sqrt(case.Dc + case.Dp)


BOX_SHAPES = [(7, 4), (3, 5, 4), (11, 2), (1, 4), (300, 2, 4)]


def sine_inputs(shape, num_feats=16, device="cpu", dtype=torch.float64, modulated=True, requires_grad=False, seed=0):
    """(boxes, xy_scale, ref_wh) with boxes in (0.05, 0.95); companions None when not modulated."""
    g = torch.Generator().manual_seed(seed)
    boxes = (torch.rand(shape, generator=g, dtype=torch.float64) * 0.9 + 0.05).to(device, dtype)
    lead = shape[:-1]
    xy_scale = ref_wh = None
    if modulated:
        xy_scale = torch.randn(*lead, 2 * num_feats, generator=g, dtype=torch.float64).to(device, dtype)
        if shape[-1] == 4:
            ref_wh = (torch.rand(*lead, 2, generator=g, dtype=torch.float64) * 0.9 + 0.05).to(device, dtype)
    if requires_grad:
        for x in (boxes, xy_scale, ref_wh):
            if x is not None:
                x.requires_grad_(True)
    return boxes, xy_scale, ref_wh


def naive_sine_embed(boxes, num_feats, temperature):
    """Scalar-by-scalar evaluation of docs/ops.md (op 2) with Python's math module."""
    flat = boxes.detach().double().cpu().reshape(-1, boxes.shape[-1]).tolist()
    order = [1, 0, 2, 3][: boxes.shape[-1]]
    rows = []
    for box in flat:
        row = []
        for c in order:
            for k in range(num_feats):
                angle = box[c] * 2 * math.pi / temperature ** (2 * (k // 2) / num_feats)
                row.append(math.sin(angle) if k % 2 == 0 else math.cos(angle))
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64).reshape(*boxes.shape[:-1], -1)


def retyped(inputs, dtype):
    """The same (already rounded) inputs as new leaves of dtype: the fp64 truth of a 16-bit or
    fp32 run, or the float32 widening of a 16-bit one."""
    return {k: (v.detach().to(dtype).requires_grad_(v.requires_grad) if v is not None and v.is_floating_point()
                else v) for k, v in inputs.items()}


def assert_error_ratio(candidate, same_dtype_reference, truth, factor, what, floor=0.0):
    """The candidate's max error against the fp64 truth is at most `factor` times the error of
    the reference computed in the candidate's dtype (plus `floor`, for exact references)."""
    truth = truth.double().cpu()
    err = (candidate.double().cpu() - truth).abs().max().item()
    ref_err = (same_dtype_reference.double().cpu() - truth).abs().max().item()
    assert err <= factor * ref_err + floor, (
        f"{what}: error {err:.3e} exceeds {factor} x reference error {ref_err:.3e} + {floor:.1e}"
    )


@dataclass(frozen=True)
class DeformableCase:
    name: str
    levels: tuple = ((6, 9), (3, 5), (2, 3), (1, 2))  # (H_l, W_l)
    B: int = 2
    Nq: int = 7
    H: int = 2
    D: int = 8
    P: int = 3
    # inside: all in (0, 1); outside: in (-0.5, 1.5), many outside; borders: on the levels' edges
    # and on pixel centres and cell edges, exactly (the levels' sizes are powers of 2)
    locations: str = "inside"
    strided: bool = False  # value a slice of a wider Linear output, sampling_locations a strided view

    def __str__(self):
        return self.name

    @property
    def num_values(self):
        return sum(h * w for h, w in self.levels)


DEFORMABLE_CASES = [
    DeformableCase("tiny", levels=((2, 3),), B=1, Nq=3, H=1, P=1),
    DeformableCase("four_levels", D=16, P=4),
    DeformableCase("rows_and_columns", levels=((1, 7), (5, 1), (1, 1), (3, 1)), D=8, P=2, locations="outside"),
    DeformableCase("outside", levels=((4, 5), (2, 3)), B=2, Nq=9, H=3, D=24, P=4, locations="outside"),
    DeformableCase("borders", levels=((4, 8), (2, 4), (1, 2)), B=1, Nq=16, H=2, D=8, P=4, locations="borders"),
    DeformableCase("strided", D=32, P=2, strided=True),
    DeformableCase("odd_dim", levels=((3, 4), (2, 2)), B=2, Nq=5, H=3, D=5, P=2, locations="outside"),
    DeformableCase("wide_head", levels=((5, 6), (3, 3)), B=1, Nq=6, H=2, D=64, P=4),
    # A level too large for the CUDA backward's shared-memory sums (40 x 41 x 8 floats > 48 KB).
    DeformableCase("large_level", levels=((40, 41), (3, 3)), B=1, Nq=8, H=2, D=8, P=2),
    DeformableCase("no_queries", Nq=0),
]
# gradcheck cost grows fast: small odd shapes.
DEFORMABLE_GRADCHECK_CASES = [
    DeformableCase("gc_two_levels", levels=((3, 4), (2, 2)), B=1, Nq=3, H=2, D=3, P=2, locations="outside"),
    DeformableCase("gc_column", levels=((4, 1), (1, 3)), B=2, Nq=2, H=1, D=2, P=3),
]


def _border_locations(case, generator):
    """Normalized locations exactly on the levels' edges (0, 1, 1 + 1/(2W), -1/(2W): pixel -1 and W),
    on pixel centres and on cell edges, as (x, y) pairs drawn per sample: exact in binary for
    power-of-2 level sizes."""
    B, Nq, H, P = case.B, case.Nq, case.H, case.P
    per_level = []
    for h, w in case.levels:
        def choices(n):
            edges = [0.0, 1.0, -0.5 / n, 1.0 + 0.5 / n, 1.0 - 0.5 / n]
            return torch.tensor(edges + [(k + 0.5) / n for k in range(n)] + [k / n for k in range(n + 1)],
                                dtype=torch.float64)
        xs, ys = choices(w), choices(h)
        x = xs[torch.randint(len(xs), (B, Nq, H, P), generator=generator)]
        y = ys[torch.randint(len(ys), (B, Nq, H, P), generator=generator)]
        per_level.append(torch.stack((x, y), dim=-1))
    return torch.stack(per_level, dim=3)


def deformable_inputs(case, device="cpu", dtype=torch.float64, requires_grad=False, seed=0):
    """dict of multi_scale_deformable_attention's arguments for `case` (spatial_shapes int64 on the
    CPU, level_start_index beside it)."""
    g = torch.Generator().manual_seed(seed)
    B, S, H, D, L, P = case.B, case.num_values, case.H, case.D, len(case.levels), case.P
    if case.strided:
        # A fused projection's output [B, S, 2 H D], value its first half viewed per head.
        projected = torch.randn(B, S, 2 * H * D, generator=g, dtype=torch.float64).to(device, dtype)
        value = projected[..., : H * D].unflatten(-1, (H, D))
    else:
        value = torch.randn(B, S, H, D, generator=g, dtype=torch.float64).to(device, dtype)
    if case.locations == "borders":
        locations = _border_locations(case, g)
    else:
        low, high = (0.02, 0.98) if case.locations == "inside" else (-0.5, 1.5)
        locations = torch.rand(B, case.Nq, H, L, P, 2, generator=g, dtype=torch.float64) * (high - low) + low
    locations = locations.to(device, dtype)
    if case.strided:
        locations = torch.cat((locations, locations), dim=-1)[..., :2]  # a view with strides past the pair
    weights = torch.rand(B, case.Nq, H, L * P, generator=g, dtype=torch.float64).softmax(-1).view(B, case.Nq, H, L, P)
    weights = weights.to(device, dtype)
    leaves = {"value": value, "sampling_locations": locations, "attention_weights": weights}
    if requires_grad:
        for t in leaves.values():
            t.requires_grad_(True)
    shapes = torch.tensor(case.levels, dtype=torch.int64)
    starts = torch.tensor([0] + [h * w for h, w in case.levels][:-1], dtype=torch.int64).cumsum(0)
    return {"value": value, "spatial_shapes": shapes, "level_start_index": starts, **leaves}


def naive_deformable_attention(value, spatial_shapes, sampling_locations, attention_weights):
    """In fp64, with the bilinear weights written as tents over every pixel of a level:
    weight of pixel (i, j) = max(0, 1 - |x - j|) max(0, 1 - |y - i|) at the pixel position (x, y) =
    (loc_x W - 0.5, loc_y H - 0.5); pixels outside a level do not exist, so they weigh nothing.
    Differentiable (away from pixel positions, where the tents have kinks)."""
    value, loc, weights = (t.double() for t in (value, sampling_locations, attention_weights))
    B, _, H, D = value.shape
    out = value.new_zeros(B, loc.shape[1], H, D)
    start = 0
    for level, (h, w) in enumerate(spatial_shapes.tolist()):
        grid = value[:, start: start + h * w].reshape(B, h, w, H, D)
        x = loc[:, :, :, level, :, 0] * w - 0.5  # [B, Nq, H, P]
        y = loc[:, :, :, level, :, 1] * h - 0.5
        tent_x = (1 - (x[..., None] - torch.arange(w, dtype=torch.float64, device=x.device)).abs()).clamp(min=0)
        tent_y = (1 - (y[..., None] - torch.arange(h, dtype=torch.float64, device=y.device)).abs()).clamp(min=0)
        sampled = torch.einsum("bqhpi,bqhpj,bijhd->bqhpd", tent_y, tent_x, grid)
        out = out + (sampled * weights[:, :, :, level, :, None]).sum(3)
        start += h * w
    return out.flatten(2)


def deformable_in_dtype(value, spatial_shapes, sampling_locations, attention_weights):
    """The same-dtype computation the 16-bit CUDA kernels are held to: pixel positions and bilinear
    weights in float32 (a 16-bit position is off by up to half a pixel on a 134-pixel row), each
    corner's weight (bilinear x attention) rounded to value's dtype, products and sums in that dtype."""
    dtype = value.dtype
    value, locations, weights = value.detach(), sampling_locations.detach().float(), attention_weights.detach()
    B, _, H, D = value.shape
    out = value.new_zeros(B, locations.shape[1], H, D)
    start = 0
    for level, (h, w) in enumerate(spatial_shapes.tolist()):
        grid = value[:, start: start + h * w].reshape(B, h, w, H, D)
        x = locations[:, :, :, level, :, 0] * w - 0.5  # [B, Nq, H, P], float32
        y = locations[:, :, :, level, :, 1] * h - 0.5
        x0, y0 = x.floor(), y.floor()
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            cx, cy = (x0 + dx).long(), (y0 + dy).long()
            bilinear = (1 - (x - cx).abs()) * (1 - (y - cy).abs())
            inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
            corner_weight = (bilinear * weights[:, :, :, level].float() * inside).to(dtype)  # [B, Nq, H, P]
            b = torch.arange(B).view(B, 1, 1, 1)
            heads = torch.arange(H).view(1, 1, H, 1)
            rows = grid[b, cy.clamp(0, h - 1), cx.clamp(0, w - 1), heads]  # [B, Nq, H, P, D]
            for p in range(rows.shape[3]):
                out = out + rows[:, :, :, p] * corner_weight[:, :, :, p, None]
        start += h * w
    return out.flatten(2)
