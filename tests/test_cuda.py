"""CUDA-only checks (skipped without a GPU): 16-bit dtypes against the error-ratio bound of
design.md at DAB-DETR and odd shapes, streams, head-dim limits, and compute-sanitizer.
The float32/float64 CUDA checks are the device-parametrized tests of test_attention.py and
test_sine_embed.py (values, gradients, gradcheck, opcheck, torch.compile)."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from dabdetr.ops import anchor_sine_embed, kernel_info, modulated_anchor_sine_embed, modulated_attention
from op_samples import ATTENTION_CASES, AttentionCase, assert_error_ratio, attention_inputs, sine_inputs

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

GRAD_NAMES = ("q_content", "q_pos", "k_content", "k_pos", "value")
DAB_CASES = [
    AttentionCase("dab_r50_b2", B=2, H=8, Nq=300, Nk=850, Dc=32, Dp=32, Dv=32, mask="random", views=True),
    AttentionCase("dab_r50_3pat_b8", B=8, H=8, Nq=900, Nk=850, Dc=32, Dp=32, Dv=32, mask="one_fully_padded"),
    AttentionCase("dab_dc5_b2", B=2, H=8, Nq=300, Nk=3400, Dc=32, Dp=32, Dv=32, mask="mostly_padded"),
]
HALF_DTYPES = [torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def _cuda_kernels_built():
    if not kernel_info()["cuda"]:
        pytest.fail("a CUDA device is present but dabdetr._C was built without CUDA kernels")


def _forward_backward(inputs, impl, cotangent):
    out = modulated_attention(**inputs, impl=impl)
    leaves = [inputs[n] for n in GRAD_NAMES if inputs[n] is not None]
    return [out, *torch.autograd.grad(out, leaves, cotangent)]


def _upcast(inputs):
    """The same (already rounded) inputs in float64: the truth both candidates are measured against."""
    return {k: (v.detach().double().requires_grad_(v.requires_grad) if v is not None and v.is_floating_point() else v)
            for k, v in inputs.items()}


@pytest.mark.parametrize("dtype", HALF_DTYPES + [torch.float32], ids=str)
@pytest.mark.parametrize("case", DAB_CASES + ATTENTION_CASES, ids=str)
def test_attention_error_ratio(case, dtype):
    inputs = attention_inputs(case, "cuda", dtype, requires_grad=True)
    cotangent = torch.randn(case.B, case.H, case.Nq, case.Dv, device="cuda", dtype=torch.float64)
    truth = _forward_backward(_upcast(inputs), "reference", cotangent)
    kernel = _forward_backward(inputs, "kernel", cotangent.to(dtype))
    reference = _forward_backward(inputs, "reference", cotangent.to(dtype))
    names = ["out"] + [n for n in GRAD_NAMES if inputs[n] is not None]
    eps = torch.finfo(dtype).eps
    for name, k, r, t in zip(names, kernel, reference, truth):
        assert torch.isfinite(k).all(), name
        factor = 2.0 if name == "out" else 3.0
        assert_error_ratio(k, r, t, factor, f"{case.name} {dtype} {name}", floor=4 * eps * max(1.0, t.abs().max().item()))


def test_fully_padded_rows_are_zero_in_half_precision():
    case = next(c for c in ATTENTION_CASES if c.mask == "one_fully_padded")
    for dtype in HALF_DTYPES:
        inputs = attention_inputs(case, "cuda", dtype, requires_grad=True)
        out = modulated_attention(**inputs, impl="kernel")
        grads = torch.autograd.grad(out.float().square().sum(), [inputs[n] for n in GRAD_NAMES])
        assert (out[1] == 0).all() and all((g[1] == 0).all() for g in grads)
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


def test_non_default_stream():
    case = DAB_CASES[0]
    inputs = attention_inputs(case, "cuda", torch.float32, requires_grad=True)
    expected = _forward_backward(inputs, "kernel", torch.ones(case.B, case.H, case.Nq, case.Dv, device="cuda"))
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = _forward_backward(inputs, "kernel", torch.ones(case.B, case.H, case.Nq, case.Dv, device="cuda"))
    torch.cuda.current_stream().wait_stream(stream)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_wide_heads_fall_back_or_raise():
    case = AttentionCase("wide", B=1, H=2, Nq=5, Nk=9, Dc=96, Dp=32, Dv=32)
    inputs = attention_inputs(case, "cuda", torch.float32)
    torch.testing.assert_close(modulated_attention(**inputs), modulated_attention(**inputs, impl="reference"))
    with pytest.raises(RuntimeError, match="head dims above 64"):
        modulated_attention(**inputs, impl="kernel")


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_sine_embed_error_ratio(dtype):
    boxes, xy_scale, ref_wh = sine_inputs((300, 8, 4), 128, "cuda", dtype, requires_grad=True)
    plain = sine_inputs((100_000, 4), 128, "cuda", dtype, modulated=False)[0]

    def run(tensors, impl):
        embed, xy = modulated_anchor_sine_embed(*tensors, impl=impl)
        grads = torch.autograd.grad((embed, xy), tensors, (torch.ones_like(embed), torch.ones_like(xy)))
        return [embed, xy, *grads]

    tensors = (boxes, xy_scale, ref_wh)
    truth = run([t.detach().double().requires_grad_() for t in tensors], "reference")
    for i, (k, r, t) in enumerate(zip(run(tensors, "kernel"), run(tensors, "reference"), truth)):
        assert_error_ratio(k, r, t, 3.0, f"{dtype} output/grad {i}", floor=4 * torch.finfo(dtype).eps * max(1.0, t.abs().max().item()))
    assert_error_ratio(anchor_sine_embed(plain, impl="kernel"), anchor_sine_embed(plain, impl="reference"),
                       anchor_sine_embed(plain.double(), impl="reference"), 2.0, f"{dtype} embed", floor=torch.finfo(dtype).eps)


MEMCHECK_SCRIPT = """
import torch
from dabdetr.ops import modulated_attention, modulated_anchor_sine_embed
from op_samples import ATTENTION_CASES, attention_inputs, sine_inputs
for case in ATTENTION_CASES[:5]:
    for dtype in (torch.float32, torch.bfloat16):
        inputs = attention_inputs(case, "cuda", dtype, requires_grad=True)
        out = modulated_attention(**inputs, impl="kernel")
        out.float().sum().backward()
tensors = sine_inputs((37, 4), 16, "cuda", torch.float32, requires_grad=True)
embed, xy = modulated_anchor_sine_embed(*tensors, num_feats=16, impl="kernel")
(embed.sum() + xy.sum()).backward()
torch.cuda.synchronize()
print("MEMCHECK_RAN")
"""


def test_compute_sanitizer_memcheck_is_clean():
    sanitizer = shutil.which("compute-sanitizer") or os.path.join(
        os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "compute-sanitizer")
    if not os.path.exists(sanitizer):
        pytest.skip("compute-sanitizer not found")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        [sanitizer, "--tool", "memcheck", "--error-exitcode", "3", sys.executable, "-c", MEMCHECK_SCRIPT],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 0 and "MEMCHECK_RAN" in result.stdout, result.stdout[-4000:] + result.stderr[-4000:]
    assert "ERROR SUMMARY: 0 errors" in result.stdout + result.stderr
