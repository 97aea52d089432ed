"""modulated_attention: reference against a naive formula, kernel against the reference."""

import pytest
import torch
from op_samples import (
    ATTENTION_CASES,
    GRADCHECK_CASES,
    AttentionCase,
    assert_error_ratio,
    attention_cotangent,
    attention_inputs,
    default_scale,
    naive_attention,
    retyped,
)

from dabdetr.ops import CPU_ISA_LEVELS, kernel_info, modulated_attention, reference

GRAD_NAMES = ("q_content", "q_pos", "k_content", "k_pos", "value")


def _run(inputs, impl, cotangent=None):
    out = modulated_attention(**inputs, impl=impl)
    if cotangent is None:
        return out, {}
    leaves = {n: inputs[n] for n in GRAD_NAMES if inputs[n] is not None}
    grads = torch.autograd.grad(out, list(leaves.values()), cotangent)
    return out, dict(zip(leaves, grads))


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=str)
def test_reference_matches_naive_formula(case):
    inputs = attention_inputs(case)
    expected = naive_attention(**inputs, scale=default_scale(case))
    out = modulated_attention(**inputs, impl="reference")
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=str)
def test_kernel_matches_reference_fp64(case, device):
    inputs = attention_inputs(case, device, torch.float64, requires_grad=True)
    cotangent = attention_cotangent(case, device, torch.float64)
    out, grads = _run(inputs, device.impl, cotangent)
    ref_out, ref_grads = _run(inputs, "reference", cotangent)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=str)
def test_kernel_matches_reference_fp32(case, device):
    truth_inputs = attention_inputs(case, device, torch.float64, requires_grad=True)
    inputs = attention_inputs(case, device, torch.float32, requires_grad=True)
    cotangent = attention_cotangent(case, device, torch.float64)
    truth, truth_grads = _run(truth_inputs, "reference", cotangent)
    out, grads = _run(inputs, device.impl, cotangent.float())
    ref_out, ref_grads = _run(inputs, "reference", cotangent.float())
    # fp32 kernels accumulate in a different order than the reference: allow 2x (forward) and
    # 3x (backward) the reference's own fp32 error, plus a few ulps for exact references.
    assert_error_ratio(out, ref_out, truth, 2.0, "out", floor=2e-6)
    for name in grads:
        assert_error_ratio(grads[name], ref_grads[name], truth_grads[name], 3.0, name, floor=1e-5)


# The CPU computes float16 in float32, and bfloat16 in bf16 dot products where it has them
# (level avx512_bf16; in AMX tiles at amx_bf16), in float32 below.
CPU_HALF_PATHS = [(torch.float16, None), (torch.bfloat16, "avx512"), (torch.bfloat16, "avx512_bf16"),
                  (torch.bfloat16, "amx_bf16")]
BF16_LEVELS = ["avx512_bf16", "amx_bf16"]


def cpu_runs(level):
    """Whether this CPU (uncapped) runs the CPU kernels' level `level` or a higher one."""
    return CPU_ISA_LEVELS.index(kernel_info()["cpu_isa"]) >= CPU_ISA_LEVELS.index(level)


def skip_unless_cpu_runs(level):
    if not cpu_runs(level):
        pytest.skip(f"this CPU runs {kernel_info()['cpu_isa']}, not {level}")


@pytest.fixture(params=CPU_HALF_PATHS,
                ids=["float16", "bfloat16-in-float32", "bfloat16-dot-products", "bfloat16-amx-tiles"])
def cpu_half_dtype(request, monkeypatch):
    """A 16-bit dtype, with DABDETR_CPU_ISA capped to the level of the CPU path under test."""
    dtype, level = request.param
    if level in BF16_LEVELS:
        skip_unless_cpu_runs(level)
    if level is not None:
        monkeypatch.setenv("DABDETR_CPU_ISA", level)  # a cap: a CPU without AVX-512 runs its best
    return dtype


@pytest.mark.parametrize("case", ATTENTION_CASES, ids=str)
def test_cpu_kernel_matches_reference_half(case, cpu_half_dtype):
    # Within the error-ratio bound of the 16-bit reference against the float64 truth (test_cuda.py
    # holds each CUDA path to the same).
    device, dtype = "cpu", cpu_half_dtype
    inputs = attention_inputs(case, device, dtype, requires_grad=True)
    cotangent = attention_cotangent(case, device, torch.float64)
    truth, truth_grads = _run(retyped(inputs, torch.float64), "reference", cotangent)
    out, grads = _run(inputs, "kernel", cotangent.to(dtype))
    ref_out, ref_grads = _run(inputs, "reference", cotangent.to(dtype))
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads.values())
    eps = torch.finfo(dtype).eps
    assert_error_ratio(out, ref_out, truth, 2.0, "out", floor=4 * eps * max(1.0, truth.abs().max().item()))
    for name in grads:
        floor = 4 * eps * max(1.0, truth_grads[name].abs().max().item())
        assert_error_ratio(grads[name], ref_grads[name], truth_grads[name], 3.0, name, floor=floor)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cpu_half_is_the_float32_kernel_rounded_once(dtype, monkeypatch):
    monkeypatch.setenv("DABDETR_CPU_ISA", "avx512")  # bfloat16 above it: bf16 dot products
    case = next(c for c in ATTENTION_CASES if c.mask == "one_fully_padded")
    inputs = attention_inputs(case, "cpu", dtype, requires_grad=True)
    widened = retyped(inputs, torch.float32)
    cotangent = attention_cotangent(case, dtype=dtype)
    half_out, half_grads = _run(inputs, "kernel", cotangent)
    out, grads = _run(widened, "kernel", cotangent.float())
    _, lse = torch.ops.dabdetr.modulated_attention(*(inputs[n] for n in (*GRAD_NAMES, "key_padding_mask")), 0.25)
    assert lse.dtype == torch.float32  # the softmax statistics stay in float32, as on CUDA
    assert half_out.dtype == dtype and torch.equal(half_out, out.to(dtype))
    # The backward reads the saved 16-bit output, so its gradients are within a few 16-bit ulps.
    eps = torch.finfo(dtype).eps
    for name in grads:
        assert half_grads[name].dtype == dtype, name
        torch.testing.assert_close(half_grads[name].float(), grads[name], rtol=4 * eps,
                                   atol=4 * eps * grads[name].abs().max().item(), msg=name)


@pytest.mark.parametrize("level", BF16_LEVELS)
def test_cpu_bf16_dot_products_are_their_own_path(level, monkeypatch):
    """At avx512_bf16 and amx_bf16 bfloat16 runs its own kernel (P and dS rounded to bf16 for their
    products), not the float32 one: its results differ from that one's; a batch entry whose keys
    are all padded gets exact zeros (outputs and gradients) and an lse of -inf, kept in float32."""
    skip_unless_cpu_runs(level)
    case = next(c for c in ATTENTION_CASES if c.name == "dab_decoder_head")
    inputs = attention_inputs(case, "cpu", torch.bfloat16, requires_grad=True)
    inputs["key_padding_mask"][1] = True
    cotangent = attention_cotangent(case, dtype=torch.bfloat16)
    results = {}
    for run_level in ("avx512", level):
        monkeypatch.setenv("DABDETR_CPU_ISA", run_level)
        results[run_level] = _run(inputs, "kernel", cotangent)
    (out, grads), (float32_out, _) = results[level], results["avx512"]
    assert not torch.equal(out, float32_out)
    assert (out[1] == 0).all() and out[0].abs().sum() > 0
    for name, grad in grads.items():
        assert grad.dtype == torch.bfloat16 and (grad[1] == 0).all() and grad[0].abs().sum() > 0, name
    _, lse = torch.ops.dabdetr.modulated_attention(*(inputs[n] for n in (*GRAD_NAMES, "key_padding_mask")), 0.25)
    assert lse.dtype == torch.float32 and torch.isneginf(lse[1]).all() and torch.isfinite(lse[0]).all()


def test_fully_padded_rows_give_zeros_and_zero_grads(device):
    case = next(c for c in ATTENTION_CASES if c.mask == "one_fully_padded")
    inputs = attention_inputs(case, device, torch.float32, requires_grad=True)
    out = modulated_attention(**inputs, impl=device.impl)
    assert torch.isfinite(out).all()
    assert (out[1] == 0).all()
    grads = torch.autograd.grad(out.square().sum(), [inputs[n] for n in GRAD_NAMES])
    for name, grad in zip(GRAD_NAMES, grads):
        assert torch.isfinite(grad).all(), name
        assert (grad[1] == 0).all(), name
        assert grad[0].abs().sum() > 0, name


def test_padded_keys_get_no_weight(device):
    # Changing what is under a padded key must not change anything.
    case = next(c for c in ATTENTION_CASES if c.mask == "random" and c.Dp)
    inputs = attention_inputs(case, device, torch.float64)
    out = modulated_attention(**inputs, impl=device.impl)
    mask = inputs["key_padding_mask"]
    for name in ("k_content", "k_pos", "value"):
        changed = dict(inputs)
        changed[name] = inputs[name].masked_fill(mask[:, None, :, None], 1e6)
        torch.testing.assert_close(modulated_attention(**changed, impl=device.impl), out, rtol=0, atol=1e-12)


def test_views_are_read_in_place(device):
    case = next(c for c in ATTENTION_CASES if c.views)
    inputs = attention_inputs(case, device, torch.float32)
    assert not inputs["q_content"].is_contiguous() and inputs["q_content"].stride(-1) == 1
    contiguous = {k: (v.contiguous() if v is not None else None) for k, v in inputs.items()}
    out = modulated_attention(**inputs, impl=device.impl)
    torch.testing.assert_close(out, modulated_attention(**contiguous, impl=device.impl), rtol=0, atol=0)


def test_strided_last_dim_is_accepted(device):
    case = ATTENTION_CASES[0]
    inputs = attention_inputs(case, device, torch.float64)
    inputs["q_content"] = inputs["q_content"].transpose(2, 3).contiguous().transpose(2, 3)
    torch.testing.assert_close(
        modulated_attention(**inputs, impl=device.impl), modulated_attention(**inputs, impl="reference")
    )


def test_explicit_scale(device):
    case = ATTENTION_CASES[1]
    inputs = attention_inputs(case, device, torch.float64)
    torch.testing.assert_close(
        modulated_attention(**inputs, scale=0.3, impl=device.impl),
        naive_attention(**inputs, scale=0.3).to(device),
        rtol=1e-10,
        atol=1e-12,
    )


def test_empty_sizes_match_the_reference(device):
    for sizes in ({"B": 0}, {"H": 0}, {"Nq": 0}, {"Nk": 0}):
        case = AttentionCase("empty", mask="random", **sizes)
        inputs = attention_inputs(case, device, torch.float32, requires_grad=True)
        leaves = [inputs[n] for n in GRAD_NAMES]
        cotangent = torch.ones(case.B, case.H, case.Nq, case.Dv, device=device)
        for impl in (device.impl, "reference"):
            out = modulated_attention(**inputs, impl=impl)
            assert out.shape == (case.B, case.H, case.Nq, case.Dv)
            grads = torch.autograd.grad(out, leaves, cotangent)
            assert all(g.shape == x.shape and not g.any() for g, x in zip(grads, leaves)), (sizes, impl)
            assert not out.any(), (sizes, impl)


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=str)
def test_gradcheck(case, device):
    inputs = attention_inputs(case, device, torch.float64, requires_grad=True)
    names = [n for n in GRAD_NAMES if inputs[n] is not None]

    def fn(*tensors):
        kwargs = dict(inputs, **dict(zip(names, tensors)))
        return modulated_attention(**kwargs, impl=device.impl)

    assert torch.autograd.gradcheck(fn, [inputs[n] for n in names], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)  # bf16: a float32 lse
@pytest.mark.parametrize("case", GRADCHECK_CASES + [ATTENTION_CASES[1]], ids=str)
def test_opcheck(case, dtype, device):
    inputs = attention_inputs(case, device, dtype, requires_grad=True)
    args = (
        inputs["q_content"], inputs["q_pos"], inputs["k_content"], inputs["k_pos"], inputs["value"],
        inputs["key_padding_mask"], default_scale(case),
    )
    torch.library.opcheck(device.ops.modulated_attention.default, args)
    with torch.no_grad():
        out, lse = device.ops.modulated_attention(*args)
    grad_out = torch.randn_like(out)
    # The backward op is first-order only (see test_double_backward_raises_clearly).
    detached = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    backward_args = (grad_out, *detached[:6], out, lse, args[6])
    torch.library.opcheck(device.ops.modulated_attention_backward.default, backward_args)


def test_lse_is_log_sum_exp_of_scaled_logits(device):
    case = next(c for c in ATTENTION_CASES if c.mask == "one_fully_padded")
    inputs = attention_inputs(case, device, torch.float64)
    scale = default_scale(case)
    _, lse = device.ops.modulated_attention(*inputs.values(), scale)
    logits = (inputs["q_content"] @ inputs["k_content"].transpose(-1, -2)
              + inputs["q_pos"] @ inputs["k_pos"].transpose(-1, -2)) * scale
    logits = logits.masked_fill(inputs["key_padding_mask"][:, None, None], float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(logits, dim=-1))


def test_torch_compile_fullgraph(device):
    case = ATTENTION_CASES[1]
    inputs = attention_inputs(case, device, torch.float32, requires_grad=True)

    def layer(q_content, q_pos, k_content, k_pos, value, key_padding_mask):
        out = modulated_attention(q_content * 2, q_pos, k_content, k_pos, value, key_padding_mask, impl=device.impl)
        return out.relu().sum()

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    leaves = [inputs[n] for n in GRAD_NAMES]
    loss = compiled(**inputs)
    grads = torch.autograd.grad(loss, leaves)
    ref_loss = layer(**inputs)
    ref_grads = torch.autograd.grad(ref_loss, leaves)
    torch.testing.assert_close(loss, ref_loss)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_reference_never_nan_for_fully_padded_rows():
    case = next(c for c in ATTENTION_CASES if c.mask == "one_fully_padded")
    inputs = attention_inputs(case, requires_grad=True)
    out = reference.modulated_attention(**inputs, scale=0.5)
    grads = torch.autograd.grad(out.sum(), [inputs[n] for n in GRAD_NAMES])
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert (out[1] == 0).all() and all((g[1] == 0).all() for g in grads)


def test_double_backward_raises_clearly(device):
    inputs = attention_inputs(ATTENTION_CASES[0], device, torch.float64, requires_grad=True)
    out = modulated_attention(**inputs, impl=device.impl)
    (grad_q,) = torch.autograd.grad(out.square().sum(), [inputs["q_content"]], create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad_q.sum().backward()


@pytest.mark.parametrize("level", ["generic", "avx2", "avx512", *BF16_LEVELS])
def test_cpu_online_softmax_follows_scores_that_climb_across_key_tiles(level, monkeypatch):
    """Scores that rise from one 128-key tile to the next, for some queries gently and for others
    by more than float32's exp covers (the running sums and outputs rescaled by corrections down
    to exactly 0, computed for many rows at once), at every level: bfloat16 outputs within bf16's
    rounding of the float64 softmax, the lse within float32's."""
    skip_unless_cpu_runs(level)
    monkeypatch.setenv("DABDETR_CPU_ISA", level)
    g = torch.Generator().manual_seed(7)
    num_queries, num_keys, scale = 40, 600, 0.25
    q = torch.randn(1, 2, num_queries, 16, generator=g)
    k = torch.randn(1, 2, num_keys, 16, generator=g)
    v = torch.randn(1, 2, num_keys, 16, generator=g)
    q[..., 0] = torch.linspace(0.1, 24.0, num_queries)  # a score gain per key tile of 0.4 to 96
    k[..., 0] = torch.arange(num_keys) / 8.0
    q, k, v = (t.bfloat16() for t in (q, k, v))
    out, lse = torch.ops.dabdetr.modulated_attention(q, None, k, None, v, None, scale)
    scores = q.double() @ k.double().transpose(-1, -2) * scale
    truth = scores.softmax(-1) @ v.double()
    torch.testing.assert_close(out.double(), truth, rtol=0, atol=2 * 2**-8 * v.abs().max().item())
    torch.testing.assert_close(lse.double(), scores.logsumexp(-1), rtol=1e-6, atol=1e-4)


def test_cpu_bf16_query_with_only_minus_infinite_scores_gets_zeros():
    """A query whose every score is -inf (an infinite input) gets a zero output and an lse of -inf
    on every CPU path of bfloat16, as in the float32 kernel; the other queries are what they are
    with that input finite."""
    g = torch.Generator().manual_seed(6)
    q = torch.randn(1, 2, 5, 16, generator=g).bfloat16()
    k = torch.randn(1, 2, 40, 16, generator=g).bfloat16()
    v = torch.randn(1, 2, 40, 16, generator=g).bfloat16()
    k[..., 0] = k[..., 0].abs() + 0.5
    infinite = q.clone()
    infinite[0, 1, 3, 0] = float("-inf")  # every score of query 3 in head 1 is -inf
    others = torch.tensor([True, True, True, False, True])
    for level in [level for level in ("avx512", *BF16_LEVELS) if cpu_runs(level)]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DABDETR_CPU_ISA", level)
            out, lse = torch.ops.dabdetr.modulated_attention(infinite, None, k, None, v, None, 0.25)
            finite_out, _ = torch.ops.dabdetr.modulated_attention(q, None, k, None, v, None, 0.25)
        assert (out[0, 1, 3] == 0).all() and torch.isneginf(lse[0, 1, 3]), level
        assert torch.equal(out[0, 0], finite_out[0, 0]) and torch.equal(out[0, 1, others], finite_out[0, 1, others])
        assert torch.isfinite(lse[0, 0]).all() and torch.isfinite(lse[0, 1, others]).all(), level
