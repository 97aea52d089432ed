"""anchor_sine_embed / modulated_anchor_sine_embed: reference against scalar math, kernel
against the reference."""

import pytest
import torch
from op_samples import BOX_SHAPES, assert_error_ratio, naive_sine_embed, sine_inputs

from dabdetr.ops import anchor_sine_embed, modulated_anchor_sine_embed


@pytest.mark.parametrize("shape", BOX_SHAPES[:4], ids=str)
@pytest.mark.parametrize("num_feats,temperature", [(16, 10000.0), (128, 10000.0), (6, 20.0)])
def test_reference_matches_scalar_formula(shape, num_feats, temperature):
    boxes, _, _ = sine_inputs(shape, num_feats, modulated=False)
    expected = naive_sine_embed(boxes, num_feats, temperature)
    out = anchor_sine_embed(boxes, num_feats=num_feats, temperature=temperature, impl="reference")
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-13)


def test_reference_modulation_matches_definition():
    n = 8
    boxes, xy_scale, ref_wh = sine_inputs((5, 4), n)
    embed, xy = modulated_anchor_sine_embed(boxes, xy_scale, ref_wh, num_feats=n, impl="reference")
    e = naive_sine_embed(boxes, n, 10000.0)
    expected = e[:, : 2 * n] * xy_scale
    expected[:, :n] *= (ref_wh[:, 1] / boxes[:, 3])[:, None]  # y block: h_ref / h
    expected[:, n:] *= (ref_wh[:, 0] / boxes[:, 2])[:, None]  # x block: w_ref / w
    torch.testing.assert_close(embed, e)
    torch.testing.assert_close(xy, expected)


def _forward_backward(fn, tensors, cotangents):
    outs = fn(*tensors)
    outs = outs if isinstance(outs, tuple) else (outs,)
    leaves = [t for t in tensors if t is not None]
    grads = torch.autograd.grad(outs, leaves, cotangents)
    return outs, grads


def _cases():
    for shape in BOX_SHAPES:
        for modulated in (False, True):
            yield pytest.param(shape, modulated, id=f"{shape}-{'mod' if modulated else 'plain'}")
    yield pytest.param((4, 4), "scale_only", id="scale_only")
    yield pytest.param((4, 4), "ref_only", id="ref_only")


def _setup(shape, variant, n, device, dtype, seed=0):
    boxes, xy_scale, ref_wh = sine_inputs(shape, n, device, dtype, modulated=bool(variant), requires_grad=True,
                                          seed=seed)
    if variant == "scale_only":
        ref_wh = None
    if variant == "ref_only":
        xy_scale = None
    return boxes, xy_scale, ref_wh


def _fn(variant, n, impl, **options):
    if not variant:
        return lambda boxes, *_: anchor_sine_embed(boxes, num_feats=n, impl=impl, **options)
    return lambda boxes, xy_scale, ref_wh: modulated_anchor_sine_embed(
        boxes, xy_scale, ref_wh, num_feats=n, impl=impl, **options)


def _cotangents(shape, n, variant, device, dtype):
    g = torch.Generator().manual_seed(1)
    lead = shape[:-1]
    cots = [torch.randn(*lead, shape[-1] * n, generator=g, dtype=torch.float64).to(device, dtype)]
    if variant:
        cots.append(torch.randn(*lead, 2 * n, generator=g, dtype=torch.float64).to(device, dtype))
    return cots


@pytest.mark.parametrize("shape,variant", list(_cases()))
def test_kernel_matches_reference_fp64(shape, variant, device):
    n = 16
    tensors = _setup(shape, variant, n, device, torch.float64)
    cots = _cotangents(shape, n, variant, device, torch.float64)
    outs, grads = _forward_backward(_fn(variant, n, device.impl), tensors, cots)
    ref_outs, ref_grads = _forward_backward(_fn(variant, n, "reference"), tensors, cots)
    for o, r in zip(outs + grads, ref_outs + ref_grads):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)


# The feature map's temperatures (20: the real-photo recipe's anchors; 10: the official R50-DC5).
@pytest.mark.parametrize("temperature", [20.0, 10.0])
@pytest.mark.parametrize("variant", [False, True])
def test_kernel_matches_reference_at_other_temperatures(variant, temperature, device):
    n = 64
    tensors = _setup((2, 7, 4), variant, n, device, torch.float64)
    cots = _cotangents((2, 7, 4), n, variant, device, torch.float64)
    outs, grads = _forward_backward(_fn(variant, n, device.impl, temperature=temperature), tensors, cots)
    ref_outs, ref_grads = _forward_backward(_fn(variant, n, "reference", temperature=temperature), tensors, cots)
    for o, r in zip(outs + grads, ref_outs + ref_grads):
        torch.testing.assert_close(o, r, rtol=1e-12, atol=1e-12)
    default = _forward_backward(_fn(variant, n, device.impl), tensors, cots)[0][0]
    assert not torch.allclose(outs[0], default)  # the temperature reaches the kernel


@pytest.mark.parametrize("shape,variant", list(_cases()))
def test_kernel_matches_reference_fp32(shape, variant, device):
    n = 128
    truth_tensors = _setup(shape, variant, n, device, torch.float64)
    tensors = _setup(shape, variant, n, device, torch.float32)
    cots = _cotangents(shape, n, variant, device, torch.float64)
    truth = _forward_backward(_fn(variant, n, "reference"), truth_tensors, cots)
    kernel = _forward_backward(_fn(variant, n, device.impl), tensors, [c.float() for c in cots])
    ref = _forward_backward(_fn(variant, n, "reference"), tensors, [c.float() for c in cots])
    for i, (k, r, t) in enumerate(zip(kernel[0] + kernel[1], ref[0] + ref[1], truth[0] + truth[1])):
        # The kernel's argument u * (2 pi / tau) may differ from the reference's (u * 2 pi) / tau
        # by an ulp; that, not the sin/cos, dominates: allow a few fp32 ulps of an angle <= 2 pi.
        assert_error_ratio(k, r, t, 3.0, f"output/grad {i}", floor=2e-6 * max(1.0, t.abs().max().item()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape,variant", list(_cases()))
def test_cpu_half_is_the_float32_kernel_rounded_once(shape, variant, dtype):
    n = 16
    tensors = [t.detach().to(dtype).requires_grad_() if t is not None else None
               for t in _setup(shape, variant, n, "cpu", torch.float32)]
    widened = [t.detach().float().requires_grad_() if t is not None else None for t in tensors]
    cots = _cotangents(shape, n, variant, "cpu", dtype)
    half = _forward_backward(_fn(variant, n, "kernel"), tensors, cots)
    single = _forward_backward(_fn(variant, n, "kernel"), widened, [c.float() for c in cots])
    for h, s in zip(half[0], single[0]):
        assert h.dtype == dtype and torch.equal(h, s.to(dtype))
    # The backward reads the saved 16-bit embedding, so its gradients are within a few 16-bit ulps.
    eps = torch.finfo(dtype).eps
    for h, s in zip(half[1], single[1]):
        assert h.dtype == dtype
        torch.testing.assert_close(h.float(), s, rtol=4 * eps, atol=4 * eps * s.abs().max().item())


def test_gradcheck(device):
    n = 4
    for variant in (False, True, "scale_only", "ref_only"):
        tensors = _setup((3, 4), variant, n, device, torch.float64)
        leaves = [t for t in tensors if t is not None]

        def fn(*xs, variant=variant, tensors=tensors):
            it = iter(xs)
            args = [next(it) if t is not None else None for t in tensors]
            return _fn(variant, n, device.impl)(*args)

        assert torch.autograd.gradcheck(fn, leaves), variant


def test_opcheck(device):
    boxes, xy_scale, ref_wh = sine_inputs((5, 4), 8, device, requires_grad=True)
    torch.library.opcheck(device.ops.anchor_sine_embed.default, (boxes, 8, 10000.0))
    torch.library.opcheck(device.ops.modulated_anchor_sine_embed.default, (boxes, xy_scale, ref_wh, 8, 20.0))
    torch.library.opcheck(device.ops.modulated_anchor_sine_embed.default, (boxes, None, None, 8, 20.0))
    with torch.no_grad():
        embed, xy = device.ops.modulated_anchor_sine_embed(boxes, xy_scale, ref_wh, 8, 20.0)
    detached = [t.detach() for t in (boxes, xy_scale, ref_wh)]
    torch.library.opcheck(
        device.ops.anchor_sine_embed_backward.default,
        (torch.randn_like(embed), torch.randn_like(xy), embed, *detached, 8, 20.0),
    )


def test_large_angles_stay_accurate(device):
    # Boxes far outside (0, 1): angles up to 1571 rad, where the fp32 angle itself is uncertain
    # by 1e-4. The kernel's range reduction must stay as accurate as torch's sin/cos.
    boxes = torch.tensor([[-3.0, 17.5, 250.0, 0.001], [0.3, 0.7, 40.0, 9.0]], device=device)
    truth = naive_sine_embed(boxes.double(), 32, 10000.0)
    out = anchor_sine_embed(boxes, num_feats=32, impl=device.impl)
    ref = anchor_sine_embed(boxes, num_feats=32, impl="reference")
    assert_error_ratio(out, ref, truth, 2.0, "embed", floor=1e-6)


def test_torch_compile_fullgraph(device):
    boxes, xy_scale, ref_wh = sine_inputs((6, 3, 4), 16, device, torch.float32, requires_grad=True)

    def head(boxes, xy_scale, ref_wh):
        embed, xy = modulated_anchor_sine_embed(boxes.sigmoid(), xy_scale, ref_wh, num_feats=16, impl=device.impl)
        return embed.sum() + xy.square().sum()

    compiled = torch.compile(head, fullgraph=True, backend="aot_eager")
    loss = compiled(boxes, xy_scale, ref_wh)
    grads = torch.autograd.grad(loss, [boxes, xy_scale, ref_wh])
    ref_loss = head(boxes, xy_scale, ref_wh)
    ref_grads = torch.autograd.grad(ref_loss, [boxes, xy_scale, ref_wh])
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_double_backward_raises_clearly(device):
    boxes, _, _ = sine_inputs((3, 4), 8, device, modulated=False, requires_grad=True)
    out = anchor_sine_embed(boxes, num_feats=8, impl=device.impl)
    (g,) = torch.autograd.grad(out.square().sum(), [boxes], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()
