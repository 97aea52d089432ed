"""multi_scale_deformable_attention: the reference against an independent fp64 formula, the export
formulation against the reference, and the kernels (CPU; CUDA on a GPU and on the emulator) against
the reference: values and gradients in every dtype, gradcheck, opcheck, torch.compile, determinism,
levels 1 to 4, points 1 to 4, every head dim the CUDA kernels serve, and the kernels' limits."""

import pytest
import torch
from conftest import CUDA_TARGETS, check_target
from op_samples import (
    DEFORMABLE_CASES,
    DEFORMABLE_GRADCHECK_CASES,
    DeformableCase,
    assert_error_ratio,
    deformable_in_dtype,
    deformable_inputs,
    naive_deformable_attention,
    retyped,
)

from dabdetr.ops import kernel_info, multi_scale_deformable_attention
from dabdetr.ops.reference import multi_scale_deformable_attention_by_index

LEAVES = ("value", "sampling_locations", "attention_weights")
HALF_DTYPES = [torch.float16, torch.bfloat16]


def _cotangent(case, device, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(case.B, case.Nq, case.H * case.D, generator=g, dtype=torch.float64).to(device, dtype)


def _run(inputs, impl, cotangent=None):
    """[out] or, with a cotangent, [out, grad value, grad sampling_locations, grad attention_weights]."""
    out = multi_scale_deformable_attention(**inputs, impl=impl)
    if cotangent is None:
        return [out]
    return [out, *torch.autograd.grad(out, [inputs[name] for name in LEAVES], cotangent)]


def _skip_unserved(case, target):
    step, widest = 8, 64  # kernel_info's cuda_deformable_head_dim_step and _max_head_dim
    if target.cuda_kernels and case.D not in range(step, widest + 1, step):
        pytest.skip(f"the CUDA kernels serve head dims {step} to {widest} in steps of {step}")


@pytest.mark.parametrize("case", DEFORMABLE_CASES, ids=str)
def test_reference_matches_naive_formula(case):
    inputs = deformable_inputs(case, requires_grad=True)
    cot = _cotangent(case, "cpu", torch.float64)
    ref = _run(inputs, "reference", cot)
    naive = naive_deformable_attention(*(inputs[k] for k in ("value", "spatial_shapes", *LEAVES[1:])))
    torch.testing.assert_close(ref[0], naive, rtol=0, atol=1e-12)
    if case.locations == "borders":
        return  # the naive tents have kinks exactly there: their one-sided derivatives differ
    naive_grads = torch.autograd.grad(naive, [inputs[name] for name in LEAVES], cot)
    for got, want in zip(ref[1:], naive_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", DEFORMABLE_CASES, ids=str)
def test_index_formulation_matches_reference(case):
    inputs = deformable_inputs(case, requires_grad=True)
    cot = _cotangent(case, "cpu", torch.float64)
    ref = _run(inputs, "reference", cot)
    out = multi_scale_deformable_attention_by_index(inputs["value"], inputs["spatial_shapes"],
                                                    inputs["sampling_locations"], inputs["attention_weights"])
    grads = torch.autograd.grad(out, [inputs[name] for name in LEAVES], cot)
    for got, want in zip([out, *grads], ref):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("case", DEFORMABLE_CASES, ids=str)
def test_kernel_matches_reference_fp64(case, device):
    _skip_unserved(case, device)
    inputs = deformable_inputs(case, device, requires_grad=True)
    cot = _cotangent(case, device, torch.float64)
    for got, want in zip(_run(inputs, device.impl, cot), _run(inputs, "reference", cot)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", DEFORMABLE_CASES, ids=str)
def test_kernel_matches_reference_fp32(case, device):
    _skip_unserved(case, device)
    inputs = deformable_inputs(case, device, torch.float32, requires_grad=True)
    truth = _run(retyped(inputs, torch.float64), "reference", _cotangent(case, device, torch.float64))
    cot = _cotangent(case, device, torch.float32)
    kernel, ref = _run(inputs, device.impl, cot), _run(inputs, "reference", cot)
    for i, (k, r, t) in enumerate(zip(kernel, ref, truth)):
        assert k.shape == t.shape and k.dtype == torch.float32
        if not t.numel():
            continue
        scale = max(1.0, t.abs().max().item())
        assert_error_ratio(k, r, t, 2.0 if i == 0 else 3.0, f"output/grad {i}", floor=4e-6 * scale)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("case", DEFORMABLE_CASES[:6], ids=str)
def test_cpu_half_is_the_float32_kernel_rounded_once(case, dtype):
    inputs = retyped(deformable_inputs(case, dtype=torch.float32, requires_grad=True), dtype)
    widened = retyped(inputs, torch.float32)
    cot = _cotangent(case, "cpu", dtype)
    half, single = _run(inputs, "kernel", cot), _run(widened, "kernel", cot.float())
    for h, s in zip(half, single):
        assert h.dtype == dtype and torch.equal(h, s.to(dtype))


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("case", DEFORMABLE_CASES, ids=str)
def test_cpu_16bit_values_with_float32_locations(case, dtype):
    """16-bit values with float32 locations and weights (what the module passes under autocast): the
    float32 kernel on the values widened, exactly (bfloat16 ones read as they are, in the kernel),
    out in float32; value's gradient that of the widened values rounded once, the others float32."""
    inputs = deformable_inputs(case, dtype=torch.float32, requires_grad=True)
    inputs["value"] = inputs["value"].detach().to(dtype).requires_grad_()
    widened = dict(inputs, value=inputs["value"].detach().float().requires_grad_())
    cot = _cotangent(case, "cpu", torch.float32)
    mixed, single = _run(inputs, "kernel", cot), _run(widened, "kernel", cot)
    assert [t.dtype for t in mixed] == [torch.float32, dtype, torch.float32, torch.float32]
    assert torch.equal(mixed[0], single[0]) and torch.equal(mixed[1], single[1].to(dtype))
    assert torch.equal(mixed[2], single[2]) and torch.equal(mixed[3], single[3])
    # The reference and the emulated CUDA kernels take the widened values.
    others = ["reference"] + (["cuda_emulated"] if kernel_info()["cuda_emulated"] and case.D in range(8, 65, 8) else [])
    for impl in others:
        torch.testing.assert_close(_run(inputs, impl)[0], single[0], rtol=1e-5, atol=1e-5, msg=impl)


def test_mixed_dtypes_other_than_16bit_values_are_refused():
    inputs = deformable_inputs(DEFORMABLE_CASES[0], dtype=torch.float32)
    for value_dtype, other in ((torch.float64, torch.float32), (torch.float32, torch.bfloat16),
                               (torch.bfloat16, torch.float16)):
        wrong = dict(inputs, value=inputs["value"].to(value_dtype),
                     sampling_locations=inputs["sampling_locations"].to(other),
                     attention_weights=inputs["attention_weights"].to(other))
        for impl in ("kernel", "reference"):
            with pytest.raises(TypeError, match="value is float16 or bfloat16 with float32"):
                multi_scale_deformable_attention(**wrong, impl=impl)
    # The op itself, called directly: bfloat16 weights beside float32 locations are refused too.
    args = [inputs["value"].bfloat16(), inputs["spatial_shapes"], None, inputs["sampling_locations"],
            inputs["attention_weights"].bfloat16()]
    with pytest.raises(RuntimeError, match="attention_weights has dtype BFloat16 but sampling_locations has dtype"):
        torch.ops.dabdetr.multi_scale_deformable_attention(*args)


def test_opcheck_of_bf16_values_with_float32_locations():
    case = DeformableCase("opcheck_mixed", levels=((3, 4), (2, 2)), B=2, Nq=3, H=2, D=8, P=2, locations="outside")
    inputs = deformable_inputs(case, dtype=torch.float32, requires_grad=True)
    value = inputs["value"].detach().bfloat16().requires_grad_()
    args = [value, inputs["spatial_shapes"], inputs["level_start_index"], *(inputs[k] for k in LEAVES[1:])]
    torch.library.opcheck(torch.ops.dabdetr.multi_scale_deformable_attention.default, args)
    cot = _cotangent(case, "cpu", torch.float32)
    torch.library.opcheck(torch.ops.dabdetr.multi_scale_deformable_attention_backward.default,
                          [cot, *(a.detach() if torch.is_tensor(a) else a for a in args)])


@pytest.mark.parametrize("levels", [1, 2, 3, 4])
@pytest.mark.parametrize("points", [1, 2, 3, 4])
def test_levels_and_points(levels, points, device):
    sizes = ((5, 7), (1, 6), (4, 1), (2, 3))[:levels]
    case = DeformableCase(f"l{levels}p{points}", levels=sizes, B=2, Nq=5, H=2, D=8, P=points, locations="outside")
    inputs = deformable_inputs(case, device, requires_grad=True, seed=levels * 10 + points)
    cot = _cotangent(case, device, torch.float64)
    for got, want in zip(_run(inputs, device.impl, cot), _run(inputs, "reference", cot)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dim", range(8, 65, 8))
def test_head_dims(dim, device):
    case = DeformableCase(f"d{dim}", levels=((4, 6), (2, 3)), B=1, Nq=6, H=3, D=dim, P=2, locations="outside")
    inputs = deformable_inputs(case, device, requires_grad=True, seed=dim)
    cot = _cotangent(case, device, torch.float64)
    for got, want in zip(_run(inputs, device.impl, cot), _run(inputs, "reference", cot)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", DEFORMABLE_GRADCHECK_CASES, ids=str)
def test_gradcheck(case, device):
    if device.cuda_kernels:
        case = DeformableCase(case.name, case.levels, case.B, case.Nq, case.H, 8, case.P, case.locations)
    inputs = deformable_inputs(case, device, requires_grad=True)

    def fn(value, locations, weights):
        return multi_scale_deformable_attention(value, inputs["spatial_shapes"], inputs["level_start_index"],
                                                locations, weights, impl=device.impl)

    assert torch.autograd.gradcheck(fn, [inputs[name] for name in LEAVES])


def test_opcheck(device):
    case = DeformableCase("opcheck", levels=((3, 4), (2, 2)), B=2, Nq=3, H=2, D=8, P=2, locations="outside")
    inputs = deformable_inputs(case, device, requires_grad=True)
    args = [inputs[k] for k in ("value", "spatial_shapes", "level_start_index", *LEAVES[1:])]
    op = device.ops.multi_scale_deformable_attention.default
    torch.library.opcheck(op, args)
    torch.library.opcheck(op, [args[0], args[1], None, *args[3:]])
    detached = [a.detach() for a in args]
    cot = _cotangent(case, device, torch.float64)
    torch.library.opcheck(device.ops.multi_scale_deformable_attention_backward.default, [cot, *detached])


def test_torch_compile_fullgraph(device):
    case = DeformableCase("compile", D=8, P=2, locations="outside")
    inputs = deformable_inputs(case, device, torch.float32, requires_grad=True)

    def layer(value, spatial_shapes, level_start_index, offsets, logits):
        locations = (0.5 + offsets).clamp(-0.2, 1.2)
        weights = logits.flatten(-2).softmax(-1).view_as(logits)
        out = multi_scale_deformable_attention(value, spatial_shapes, level_start_index, locations, weights,
                                               impl=device.impl)
        return out.square().sum()

    args = [inputs[k] for k in ("value", "spatial_shapes", "level_start_index", *LEAVES[1:])]
    leaves = [args[0], args[3], args[4]]
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    loss = compiled(*args)
    grads = torch.autograd.grad(loss, leaves)
    ref_loss = layer(*args)
    ref_grads = torch.autograd.grad(ref_loss, leaves)
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_cpu_backward_is_deterministic_at_any_thread_count():
    # Each (batch, head) owns its slice of grad_value: the same bits for 1 and 2 threads.
    case = DeformableCase("determinism", levels=((2, 3), (1, 2)), B=2, Nq=64, H=3, D=16, P=4)
    inputs = deformable_inputs(case, dtype=torch.float32, requires_grad=True)
    cot = _cotangent(case, "cpu", torch.float32)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            runs.append(_run(inputs, "kernel", cot))
    finally:
        torch.set_num_threads(threads)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_spatial_shapes_as_pairs_and_start_index_computed(device):
    case = DEFORMABLE_CASES[1]
    inputs = deformable_inputs(case, device, requires_grad=True)
    given = _run(inputs, device.impl)[0]
    as_pairs = dict(inputs, spatial_shapes=[tuple(s) for s in case.levels], level_start_index=None)
    torch.testing.assert_close(_run(as_pairs, device.impl)[0], given, rtol=0, atol=0)
    torch.testing.assert_close(_run(as_pairs, "reference")[0], given, rtol=1e-12, atol=1e-12)


def test_more_levels_than_the_kernels_serve_take_the_reference(device):
    most = kernel_info()["deformable_max_levels"]
    case = DeformableCase("many_levels", levels=((2, 1),) * (most + 1), B=1, Nq=2, H=1, D=8, P=1)
    inputs = deformable_inputs(case, device)
    if not device.emulated:
        torch.testing.assert_close(_run(inputs, "auto")[0], _run(inputs, "reference")[0])
    with pytest.raises(RuntimeError, match=f"at most {most} levels"):
        _run(inputs, device.impl)


def test_double_backward_raises_clearly(device):
    case = DeformableCase("double", levels=((2, 2),), B=1, Nq=2, H=1, D=8, P=1)
    inputs = deformable_inputs(case, device, requires_grad=True)
    out = multi_scale_deformable_attention(**inputs, impl=device.impl)
    (g,) = torch.autograd.grad(out.square().sum(), [inputs["value"]], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# ---- the CUDA kernels in 16 bits and their deterministic backward, on a GPU and on the emulator ----

@pytest.fixture(params=CUDA_TARGETS)
def gpu(request):
    return check_target(request.param)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
@pytest.mark.parametrize("case", [c for c in DEFORMABLE_CASES if c.D % 8 == 0], ids=str)
def test_cuda_half_within_error_ratio(case, dtype, gpu):
    inputs = deformable_inputs(case, gpu, dtype, requires_grad=True)
    cot = _cotangent(case, gpu, dtype)
    truth = _run(retyped(inputs, torch.float64), "reference", cot.double())
    kernel = _run(inputs, gpu.impl, cot)
    same_dtype = deformable_in_dtype(*(inputs[k] for k in ("value", "spatial_shapes", *LEAVES[1:])))
    eps = torch.finfo(dtype).eps
    assert kernel[0].dtype == dtype and kernel[0].shape == truth[0].shape
    if case.Nq:
        assert_error_ratio(kernel[0], same_dtype, truth[0], 2.0, "output", floor=eps * truth[0].abs().max().item())
    # Gradients: the float32 computation rounded to dtype once (the kernels accumulate in float32).
    widened = _run(retyped(inputs, torch.float32), "reference", cot.float())
    for i, (k, w, t) in enumerate(zip(kernel[1:], widened[1:], truth[1:]), start=1):
        assert k.dtype == dtype and k.shape == t.shape
        if not t.numel():
            continue
        bound = 2 * eps * max(1.0, t.abs().max().item()) + (w.double() - t).abs().max().item()
        assert (k.double() - t).abs().max().item() <= bound, f"grad {i}"


def test_cuda_deterministic_backward(gpu, monkeypatch):
    case = DeformableCase("collisions", levels=((2, 3), (1, 2)), B=2, Nq=48, H=2, D=32, P=4)
    inputs = deformable_inputs(case, gpu, torch.float32, requires_grad=True)
    cot = _cotangent(case, gpu, torch.float32)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        runs = [_run(inputs, gpu.impl, cot) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    atomic = _run(inputs, gpu.impl, cot)
    same_dtype = _run(inputs, "reference", cot)
    truth = _run(retyped(inputs, torch.float64), "reference", cot.double())
    for i, (d, a, r, t) in enumerate(zip(runs[0], atomic, same_dtype, truth)):
        for path, result in (("deterministic", d), ("atomic", a)):
            assert_error_ratio(result, r, t, 2.0 if i == 0 else 3.0, f"{path} output/grad {i}", floor=1e-6)



# ---- use outside this project: Hugging Face transformers' Deformable DETR attention on our op ----

class DeformableAttentionOnDabdetr(torch.nn.Module):
    """transformers' MultiScaleDeformableAttention module, on dabdetr's op (docs/ops.md shows it)."""

    def __init__(self, impl="auto"):
        super().__init__()
        self.impl = impl

    def forward(self, value, value_spatial_shapes, value_spatial_shapes_list, level_start_index, sampling_locations,
                attention_weights, im2col_step):
        return multi_scale_deformable_attention(value, value_spatial_shapes, level_start_index, sampling_locations,
                                                attention_weights, impl=self.impl)


def test_transformers_deformable_detr_attention_on_our_op(device):
    modeling = pytest.importorskip("transformers.models.deformable_detr.modeling_deformable_detr")
    from transformers import DeformableDetrConfig

    torch.manual_seed(0)
    config = DeformableDetrConfig(d_model=64, encoder_attention_heads=4, num_feature_levels=3, encoder_n_points=4)
    layer = modeling.DeformableDetrMultiscaleDeformableAttention(config, num_heads=4, n_points=4).double()
    for parameter in layer.parameters():  # trained-looking weights, not the init's zeros and grid
        torch.nn.init.normal_(parameter, std=0.2)
    levels = [(7, 9), (4, 5), (2, 3)]
    S = sum(h * w for h, w in levels)
    spatial_shapes = torch.tensor(levels, dtype=torch.int64, device=device)
    level_start_index = torch.tensor([0, 63, 83], dtype=torch.int64, device=device)
    layer = layer.to(device)
    queries = torch.randn(2, 11, 64, dtype=torch.float64, device=device, requires_grad=True)
    features = torch.randn(2, S, 64, dtype=torch.float64, device=device, requires_grad=True)
    reference_points = torch.rand(2, 11, 3, 2, dtype=torch.float64, device=device)
    mask = torch.ones(2, S, dtype=torch.bool, device=device)
    mask[1, -10:] = False  # padding

    def run():
        out, _ = layer(queries, attention_mask=mask, encoder_hidden_states=features, reference_points=reference_points,
                       spatial_shapes=spatial_shapes, spatial_shapes_list=levels, level_start_index=level_start_index)
        return [out, *torch.autograd.grad(out.square().sum(), [queries, features, *layer.parameters()])]

    theirs = run()
    layer.attn = DeformableAttentionOnDabdetr(device.impl)
    ours = run()
    for got, want in zip(ours, theirs):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
