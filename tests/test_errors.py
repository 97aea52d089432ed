"""Bad inputs raise errors that name the offending argument, on every path (wrapper, kernel
called directly); nothing crashes."""

import pytest
import torch
from op_samples import AttentionCase, DeformableCase, attention_inputs, deformable_inputs, sine_inputs

from dabdetr.ops import (
    anchor_sine_embed,
    modulated_anchor_sine_embed,
    modulated_attention,
    multi_scale_deformable_attention,
)

CASE = AttentionCase("errors", B=2, H=2, Nq=3, Nk=5, Dc=4, Dp=4, Dv=4, mask="random")


def _inputs(**changes):
    inputs = attention_inputs(CASE, dtype=torch.float32)
    inputs.update(changes)
    return inputs


def _bad_attention_inputs():
    t = attention_inputs(CASE, dtype=torch.float32)
    return [
        ("rank", dict(q_content=t["q_content"][0]), "q_content.*4 dims"),
        ("batch", dict(k_content=t["k_content"][:1]), "k_content"),
        ("heads", dict(value=t["value"][:, :1]), "value"),
        ("num_keys", dict(value=t["value"][:, :, :4]), "value"),
        ("num_queries", dict(q_pos=t["q_pos"][:, :, :2]), "q_pos"),
        ("dim_content", dict(k_content=t["k_content"][..., :3]), "k_content"),
        ("dim_pos", dict(k_pos=t["k_pos"][..., :3]), "k_pos"),
        ("dtype", dict(value=t["value"].double()), "value.*dtype"),
        ("integer", dict(q_content=t["q_content"].long()), "q_content.*floating"),
        ("mask_dtype", dict(key_padding_mask=t["key_padding_mask"].float()), "key_padding_mask.*bool"),
        ("mask_shape", dict(key_padding_mask=t["key_padding_mask"][:, :4]), "key_padding_mask"),
        ("mask_device", dict(key_padding_mask=t["key_padding_mask"].to("meta")), "key_padding_mask.*meta"),
        ("device", dict(k_pos=t["k_pos"].to("meta")), "k_pos.*meta"),
        ("pos_pairing", dict(k_pos=None), "q_pos and k_pos"),
    ]


@pytest.mark.parametrize("impl", ["reference", "kernel", "auto"])
@pytest.mark.parametrize("name,changes,message", _bad_attention_inputs(), ids=[c[0] for c in _bad_attention_inputs()])
def test_attention_bad_inputs_name_the_argument(name, changes, message, impl):
    with pytest.raises((ValueError, TypeError), match=message):
        modulated_attention(**_inputs(**changes), impl=impl)


@pytest.mark.parametrize(
    "name,changes,message",
    [c for c in _bad_attention_inputs() if c[0] not in ("pos_pairing",)],
    ids=[c[0] for c in _bad_attention_inputs() if c[0] not in ("pos_pairing",)],
)
def test_kernel_op_called_directly_checks_its_inputs(name, changes, message):
    # The C++ checks (and, for a meta tensor, which routes to the fake kernel, the Python checks)
    # are the last line of defence for callers of torch.ops.dabdetr.* directly.
    inputs = _inputs(**changes)
    with pytest.raises((RuntimeError, ValueError, TypeError), match=message.split(".*")[0]):
        torch.ops.dabdetr.modulated_attention(*inputs.values(), 0.5)


def test_attention_kernel_unavailable_for_dtype_raises():
    # Every float type with arithmetic has a CPU kernel; an 8-bit float has none.
    inputs = {k: (v.to(torch.float8_e4m3fn) if v is not None and v.is_floating_point() else v)
              for k, v in attention_inputs(CASE).items()}
    with pytest.raises(RuntimeError, match="impl='kernel' but no kernel for torch.float8_e4m3fn on cpu"):
        modulated_attention(**inputs, impl="kernel")


def test_unknown_impl_raises():
    with pytest.raises(ValueError, match="impl must be one of"):
        modulated_attention(**_inputs(), impl="fast")
    with pytest.raises(ValueError, match="impl must be one of"):
        anchor_sine_embed(torch.rand(3, 4), impl="triton")


def _bad_sine_inputs():
    boxes, xy_scale, ref_wh = sine_inputs((3, 4), 8, dtype=torch.float32)
    return [
        ("last_dim", dict(boxes=torch.rand(3, 3)), "boxes must have shape"),
        ("scalar", dict(boxes=torch.tensor(0.5)), "boxes must have shape"),
        ("integer", dict(boxes=boxes.long()), "boxes must be a floating"),
        ("xy_scale_shape", dict(boxes=boxes, xy_scale=xy_scale[:, :15]), "xy_scale must have shape"),
        ("xy_scale_dtype", dict(boxes=boxes, xy_scale=xy_scale.double()), "xy_scale.*dtype"),
        ("ref_wh_shape", dict(boxes=boxes, ref_wh=ref_wh[:2]), "ref_wh must have shape"),
        ("ref_wh_device", dict(boxes=boxes, ref_wh=ref_wh.to("meta")), "ref_wh.*meta"),
        ("ref_wh_2d_boxes", dict(boxes=boxes[:, :2], ref_wh=ref_wh), "ref_wh needs boxes with w and h"),
    ]


@pytest.mark.parametrize("impl", ["reference", "kernel"])
@pytest.mark.parametrize("name,kwargs,message", _bad_sine_inputs(), ids=[c[0] for c in _bad_sine_inputs()])
def test_sine_bad_inputs_name_the_argument(name, kwargs, message, impl):
    with pytest.raises((ValueError, TypeError), match=message):
        modulated_anchor_sine_embed(**kwargs, num_feats=8, impl=impl)


@pytest.mark.parametrize("num_feats", [0, 7, -2, 8.0])
def test_sine_bad_num_feats(num_feats):
    with pytest.raises(ValueError, match="num_feats"):
        anchor_sine_embed(torch.rand(2, 4), num_feats=num_feats)


def test_sine_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        anchor_sine_embed(torch.rand(2, 4), temperature=0.0)
    with pytest.raises(RuntimeError, match="temperature"):
        torch.ops.dabdetr.anchor_sine_embed(torch.rand(2, 4), 8, -1.0)


def test_sine_kernel_op_called_directly_checks_its_inputs():
    with pytest.raises(RuntimeError, match="boxes must have shape"):
        torch.ops.dabdetr.anchor_sine_embed(torch.rand(2, 5), 8, 10000.0)
    with pytest.raises(RuntimeError, match="num_feats"):
        torch.ops.dabdetr.anchor_sine_embed(torch.rand(2, 4), 7, 10000.0)
    with pytest.raises(RuntimeError, match="xy_scale"):
        torch.ops.dabdetr.modulated_anchor_sine_embed(torch.rand(2, 4), torch.rand(2, 7), None, 8, 10000.0)
    with pytest.raises(RuntimeError, match="CPU kernel supports float32, float64, float16 and bfloat16, got Float8"):
        torch.ops.dabdetr.anchor_sine_embed(torch.rand(2, 4).to(torch.float8_e4m3fn), 8, 10000.0)


def test_backward_ops_called_directly_check_their_inputs():
    inputs = attention_inputs(CASE, dtype=torch.float32)
    args = list(inputs.values())
    out, lse = torch.ops.dabdetr.modulated_attention(*args, 0.5)
    with pytest.raises(RuntimeError, match="grad_out must be"):
        torch.ops.dabdetr.modulated_attention_backward(out[:, :1], *args, out, lse, 0.5)
    with pytest.raises(RuntimeError, match="lse must be"):
        torch.ops.dabdetr.modulated_attention_backward(out, *args, out, lse.double(), 0.5)
    boxes, xy_scale, ref_wh = sine_inputs((3, 4), 8, dtype=torch.float32)
    embed, xy = torch.ops.dabdetr.modulated_anchor_sine_embed(boxes, xy_scale, ref_wh, 8, 20.0)
    with pytest.raises(RuntimeError, match="grad_modulated_xy must be"):
        torch.ops.dabdetr.anchor_sine_embed_backward(embed, xy[:, :4], embed, boxes, xy_scale, ref_wh, 8, 20.0)
    with pytest.raises(RuntimeError, match="embed must be"):
        torch.ops.dabdetr.anchor_sine_embed_backward(None, None, embed[:2], boxes, None, None, 8, 20.0)


DEFORMABLE = DeformableCase("errors", levels=((3, 4), (2, 2)), B=2, Nq=3, H=2, D=8, P=2)


def _bad_deformable_inputs():
    t = deformable_inputs(DEFORMABLE, dtype=torch.float32)
    value, shapes, starts, loc, weights = (t[k] for k in ("value", "spatial_shapes", "level_start_index",
                                                          "sampling_locations", "attention_weights"))
    return [
        ("value_rank", dict(value=value[0]), "value must have 4 dims"),
        ("value_tokens", dict(value=value[:, :15]), "levels hold 16 tokens .* S = 15"),
        ("value_heads", dict(value=value[:, :, :1]), "sampling_locations .*B and H"),
        ("value_integer", dict(value=value.long()), "value must be a floating"),
        ("locations_rank", dict(sampling_locations=loc[..., 0]), "sampling_locations must have shape"),
        ("locations_dtype", dict(sampling_locations=loc.double()), "sampling_locations .*dtype"),
        ("locations_device", dict(sampling_locations=loc.to("meta")), "sampling_locations .*meta"),
        ("weights_shape", dict(attention_weights=weights[:, :, :, :, :1]), "attention_weights must have shape"),
        ("weights_dtype", dict(attention_weights=weights.half()), "attention_weights .*dtype"),
        ("shapes_float", dict(spatial_shapes=shapes.float()), "spatial_shapes must hold integers"),
        ("shapes_float_pairs", dict(spatial_shapes=[(3.5, 4), (2, 2)]), "spatial_shapes must hold integers"),
        ("shapes_levels", dict(spatial_shapes=shapes[:1]), "spatial_shapes must have shape"),
        ("shapes_zero", dict(spatial_shapes=torch.tensor([[4, 4], [0, 2]])), "level 1 has size 0 x 2"),
        ("shapes_sum", dict(spatial_shapes=torch.tensor([[3, 4], [2, 3]])), "levels hold 18 tokens .* S = 16"),
        ("shapes_device", dict(spatial_shapes=shapes.to("meta")), "spatial_shapes is on meta"),
        ("start_index", dict(level_start_index=torch.tensor([0, 11])), "level_start_index is \\[0, 11\\]"),
        ("start_index_shape", dict(level_start_index=starts[:1]), "level_start_index must have shape"),
        ("start_index_float", dict(level_start_index=starts.float()), "level_start_index must hold integers"),
    ]


@pytest.mark.parametrize("impl", ["reference", "kernel", "auto"])
@pytest.mark.parametrize("name,changes,message", _bad_deformable_inputs(), ids=[c[0] for c in _bad_deformable_inputs()])
def test_deformable_bad_inputs_name_the_argument(name, changes, message, impl):
    inputs = deformable_inputs(DEFORMABLE, dtype=torch.float32)
    inputs.update(changes)
    with pytest.raises((ValueError, TypeError), match=message):
        multi_scale_deformable_attention(**inputs, impl=impl)


# Meta tensors route to the fake implementation; the op itself takes tensors, not pairs.
DIRECT_SKIPS = ("locations_device", "shapes_device", "shapes_float_pairs")


@pytest.mark.parametrize("name,changes,message", [c for c in _bad_deformable_inputs() if c[0] not in DIRECT_SKIPS],
                         ids=[c[0] for c in _bad_deformable_inputs() if c[0] not in DIRECT_SKIPS])
def test_deformable_kernel_op_called_directly_checks_its_inputs(name, changes, message):
    inputs = deformable_inputs(DEFORMABLE, dtype=torch.float32)
    inputs.update(changes)
    args = [inputs[k] for k in ("value", "spatial_shapes", "level_start_index", "sampling_locations",
                                "attention_weights")]
    with pytest.raises(RuntimeError, match=message):
        torch.ops.dabdetr.multi_scale_deformable_attention(*args)
    grad_out = torch.zeros(2, 3, 16)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.dabdetr.multi_scale_deformable_attention_backward(grad_out, *args)


def test_deformable_backward_op_checks_grad_out():
    t = deformable_inputs(DEFORMABLE, dtype=torch.float32)
    args = [t[k] for k in ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")]
    with pytest.raises(RuntimeError, match="grad_out must be"):
        torch.ops.dabdetr.multi_scale_deformable_attention_backward(torch.zeros(2, 3, 15), *args)
    with pytest.raises(RuntimeError, match="grad_out must be"):
        torch.ops.dabdetr.multi_scale_deformable_attention_backward(torch.zeros(2, 3, 16).double(), *args)


def test_deformable_locations_far_outside_or_nan_land_nowhere():
    # A location far outside every level, or NaN, contributes nothing and gets zero gradients, with
    # nothing undefined in its conversion to a pixel index, as in the Deformable DETR kernel (where
    # grid_sample, the reference, turns a NaN location into a NaN output).
    t = deformable_inputs(DEFORMABLE, dtype=torch.float32, requires_grad=True)
    leaves = ("value", "sampling_locations", "attention_weights")
    far = t["sampling_locations"].detach().clone()
    far[0, 1, 0, 0, 0] = torch.tensor([1e30, -1e30])
    nan, both_far = far.clone(), far.clone()
    nan[0, 0, 0, 0, 0] = torch.tensor([float("nan"), 0.5])
    both_far[0, 0, 0, 0, 0] = torch.tensor([-1e30, 0.5])
    results = {}
    for name, locations in (("far", far), ("nan", nan), ("both_far", both_far)):
        inputs = dict(t, sampling_locations=locations.requires_grad_())
        for impl in ("kernel", "reference"):
            out = multi_scale_deformable_attention(**inputs, impl=impl)
            results[name, impl] = [out, *torch.autograd.grad(out.sum(), [inputs[k] for k in leaves])]
    for got, want in zip(results["far", "kernel"], results["far", "reference"]):
        torch.testing.assert_close(got, want)
    assert results["far", "kernel"][2][0, 1, 0, 0, 0].eq(0).all()
    for got, far_result in zip(results["nan", "kernel"], results["both_far", "kernel"]):
        torch.testing.assert_close(got, far_result)  # the NaN sample as good as absent: no NaN anywhere
