"""The CUDA kernels, on a GPU (skipped without one) and on the CUDA emulator (CPU tensors,
impl="cuda_emulated"; skipped unless built): 16-bit dtypes (and float32 with TF32 allowed) against
the error-ratio bound of docs/ops.md at odd shapes (and, on a GPU, DAB-DETR's), on both attention
paths (SIMT and tensor cores: key splits, determinism, the path setting, TF32 only where torch
allows it), head-dim and grid limits, empty sizes, fp16 range; on a GPU only: streams, 64-bit
offsets, and compute-sanitizer (memcheck, racecheck, synccheck).
The float32/float64 checks of the CUDA kernels are the device-parametrized tests of
test_attention.py and test_sine_embed.py (values, gradients, gradcheck, opcheck, torch.compile)."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import CUDA_TARGETS, check_target
from op_samples import (
    ATTENTION_CASES,
    AttentionCase,
    assert_error_ratio,
    attention_cotangent,
    attention_inputs,
    default_scale,
    retyped,
    sine_inputs,
)

from dabdetr.ops import anchor_sine_embed, kernel_info, modulated_anchor_sine_embed, modulated_attention
from dabdetr.ops.extension import EMULATOR_LIMITS

GPU = CUDA_TARGETS[0].values[0]


def gpu_only(test):
    """A check of what only a GPU shows: streams, memory past 2^31 elements, compute-sanitizer."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")(test))


GRAD_NAMES = ("q_content", "q_pos", "k_content", "k_pos", "value")
DAB_CASES = [
    AttentionCase("dab_r50_b2", B=2, H=8, Nq=300, Nk=850, Dc=32, Dp=32, Dv=32, mask="random", views=True),
    AttentionCase("dab_r50_3pat_b8", B=8, H=8, Nq=900, Nk=850, Dc=32, Dp=32, Dv=32, mask="one_fully_padded"),
    AttentionCase("dab_dc5_b2", B=2, H=8, Nq=300, Nk=3400, Dc=32, Dp=32, Dv=32, mask="mostly_padded"),
]
HALF_DTYPES = [torch.float16, torch.bfloat16]
# The attention kernels' paths (DABDETR_ATTENTION_PATH, read on every call): the SIMT kernels serve
# every dtype, the tensor-core ones the 16-bit dtypes on sm_80+, and float32 where TF32 is allowed.
PATHS = ["simt", "tensor_core"]
TF32_EPS = 2.0**-10  # 10 mantissa bits


@pytest.fixture(params=CUDA_TARGETS)
def gpu(request):
    """A Target (conftest.py) of the CUDA kernels: a GPU, or the emulator on CPU tensors."""
    return check_target(request.param)


def _skip_unserved(path, gpu):
    """The emulated GPU is an sm_90 (or an sm_80: DABDETR_EMULATED_GPU), which serves both paths."""
    if path == "tensor_core" and not gpu.emulated and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("the tensor-core kernels need sm_80 or newer")


def _skip_dab_size_on_the_emulator(case, gpu):
    if gpu.emulated and case in DAB_CASES:
        pytest.skip("DAB-DETR-size shapes take minutes on the emulator; the odd shapes cover its code paths")


@pytest.fixture
def use_path(monkeypatch):
    """use_path(path, target): the attention kernels of the rest of the test."""

    def use(path, target):
        _skip_unserved(path, target)
        monkeypatch.setenv("DABDETR_ATTENTION_PATH", path)

    return use


@pytest.fixture
def allow_tf32():
    """allow_tf32(): float32 matmuls (torch's and the tensor-core path's) in TF32 for the rest of the test.
    (Not monkeypatch: torch.backends.cuda.matmul's attributes are properties it cannot restore.)"""
    previous = torch.backends.cuda.matmul.allow_tf32
    yield lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    torch.backends.cuda.matmul.allow_tf32 = previous


def _forward_backward(inputs, impl, cotangent):
    out = modulated_attention(**inputs, impl=impl)
    leaves = [inputs[n] for n in GRAD_NAMES if inputs[n] is not None]
    return [out, *torch.autograd.grad(out, leaves, cotangent)]


@pytest.mark.parametrize(("path", "dtype"), [(p, d) for p in PATHS for d in HALF_DTYPES]
                         + [("simt", torch.float32), ("tensor_core", "tf32")], ids=str)
@pytest.mark.parametrize("case", DAB_CASES + ATTENTION_CASES, ids=str)
def test_attention_error_ratio(case, path, dtype, gpu, use_path, allow_tf32):
    """"tf32": float32 with TF32 allowed, so the same-dtype reference runs its matmuls in TF32 too
    and sets that mode's error bound (on a GPU; on the CPU the floor of 4 tf32 ulps does)."""
    _skip_dab_size_on_the_emulator(case, gpu)
    use_path(path, gpu)
    eps = TF32_EPS if dtype == "tf32" else torch.finfo(dtype).eps
    if dtype == "tf32":
        allow_tf32()
        dtype = torch.float32
    inputs = attention_inputs(case, gpu, dtype, requires_grad=True)
    cotangent = attention_cotangent(case, gpu, torch.float64)
    truth = _forward_backward(retyped(inputs, torch.float64), "reference", cotangent)
    kernel = _forward_backward(inputs, gpu.impl, cotangent.to(dtype))
    reference = _forward_backward(inputs, "reference", cotangent.to(dtype))
    names = ["out"] + [n for n in GRAD_NAMES if inputs[n] is not None]
    for name, k, r, t in zip(names, kernel, reference, truth):
        assert torch.isfinite(k).all(), name
        factor = 2.0 if name == "out" else 3.0
        floor = 4 * eps * max(1.0, t.abs().max().item())
        assert_error_ratio(k, r, t, factor, f"{case.name} {path} {dtype} {name}", floor=floor)


@pytest.mark.parametrize(("dim", "dim_value"), [(16, 16), (32, 32), (32, 16), (48, 48), (64, 40)], ids=str)
def test_simt_backward_gives_exact_zeros_where_one_key_is_valid(dim, dim_value, gpu, use_path):
    """Where a batch entry has a single unpadded key, every query of it gives that key probability 1
    whatever the logits, so the true dK, dK_pos and dQ of the entry are exactly 0. The SIMT backward
    gets exactly 0 only if delta_i = rowsum(dO_i * O_i) and both passes' dO_i . V_j (two threads a
    row, each summing half) are summed in one order: one rounding apart, dS is a rounding error
    and the gradients follow it. Widths 32 and 64, one half and both."""
    use_path("simt", gpu)
    generator = torch.Generator().manual_seed(dim + dim_value)
    shapes = {"q_content": (2, 3, 37, dim), "q_pos": (2, 3, 37, dim), "k_content": (2, 3, 50, dim),
              "k_pos": (2, 3, 50, dim), "value": (2, 3, 50, dim_value)}
    inputs = {name: torch.randn(shape, generator=generator).to(gpu).requires_grad_() for name, shape in shapes.items()}
    mask = torch.zeros(2, 50, dtype=torch.bool)
    mask[1] = True
    mask[1, 7] = False
    out = modulated_attention(**inputs, key_padding_mask=mask.to(gpu), impl=gpu.impl)
    cotangent = torch.randn_like(out)
    grads = dict(zip(GRAD_NAMES, torch.autograd.grad(out, [inputs[n] for n in GRAD_NAMES], cotangent)))
    for name in ("q_content", "q_pos", "k_content", "k_pos"):
        assert (grads[name][1] == 0).all(), name
        assert grads[name][0].abs().max() > 0, name  # the other entry's are not
    # dV of the valid key: the sum of the entry's dO (probability 1), of the others 0.
    torch.testing.assert_close(grads["value"][1, :, 7], cotangent[1].sum(1))
    assert (grads["value"][1, :, :7] == 0).all() and (grads["value"][1, :, 8:] == 0).all()


@pytest.mark.parametrize("splits", [1, 2, 3, 4, 5, 16, "auto"])
def test_tensor_core_key_splits_match_the_fp64_truth(splits, use_path, monkeypatch, gpu):
    """Every split count of the tensor-core forward (the combine step included) gives out within
    the error-ratio bound and lse = logsumexp of the scaled logits over the unpadded keys; "auto":
    the count key_splits() chooses (4 here: 12 blocks of 64 queries, 16 tiles of 64 keys)."""
    use_path("tensor_core", gpu)
    if splits == "auto":
        monkeypatch.delenv("DABDETR_ATTENTION_SPLITS", raising=False)
    else:
        monkeypatch.setenv("DABDETR_ATTENTION_SPLITS", str(splits))
    case = AttentionCase("split", B=2, H=3, Nq=70, Nk=1000, Dc=32, Dp=32, Dv=32, mask="one_fully_padded")
    inputs = attention_inputs(case, gpu, torch.bfloat16)
    scale = default_scale(case)
    out, lse = gpu.ops.modulated_attention(*inputs.values(), scale)
    truth = retyped(inputs, torch.float64)
    logits = (truth["q_content"] @ truth["k_content"].mT + truth["q_pos"] @ truth["k_pos"].mT) * scale
    logits = logits.masked_fill(inputs["key_padding_mask"][:, None, None, :], float("-inf"))
    expected_lse = torch.logsumexp(logits, dim=-1)
    assert torch.isneginf(lse[1]).all() and (out[1] == 0).all()  # batch 1: every key padded
    torch.testing.assert_close(lse[0].double(), expected_lse[0], rtol=0, atol=1e-3)
    assert_error_ratio(out, modulated_attention(**inputs, impl="reference"),
                       modulated_attention(**truth, impl="reference"), 2.0, f"splits={splits} out",
                       floor=4 * torch.finfo(torch.bfloat16).eps)


def test_tensor_core_backward_is_deterministic(use_path, gpu):
    use_path("tensor_core", gpu)
    case = ATTENTION_CASES[1] if gpu.emulated else DAB_CASES[0]
    inputs = attention_inputs(case, gpu, torch.bfloat16, requires_grad=True)
    cotangent = attention_cotangent(case, gpu, torch.bfloat16)
    first, second = _forward_backward(inputs, gpu.impl, cotangent), _forward_backward(inputs, gpu.impl, cotangent)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_attention_path_setting_errors(use_path, monkeypatch, gpu):
    if not gpu.emulated:
        info = kernel_info()
        assert info["cuda_attention_paths"] == PATHS and info["cuda_attention_default_path"] in PATHS
        assert info["cuda_tensor_core_dtypes"] == ["float16", "bfloat16", "float32"]
    inputs = attention_inputs(ATTENTION_CASES[1], gpu, torch.float32)
    use_path("tensor_core", gpu)
    with pytest.raises(RuntimeError, match="tensor_core serves float16 and bfloat16, and float32 where torch allows "
                                           "TF32 .* got float32 with TF32 not allowed"):
        modulated_attention(**inputs, impl=gpu.impl)
    with pytest.raises(RuntimeError, match="got float64"):
        modulated_attention(**attention_inputs(ATTENTION_CASES[1], gpu, torch.float64), impl=gpu.impl)
    monkeypatch.setenv("DABDETR_ATTENTION_PATH", "auto")  # float32: the SIMT kernels
    torch.testing.assert_close(modulated_attention(**inputs, impl=gpu.impl),
                               modulated_attention(**inputs, impl="reference"))
    monkeypatch.setenv("DABDETR_ATTENTION_PATH", "fast")
    with pytest.raises(RuntimeError, match="DABDETR_ATTENTION_PATH must be simt, tensor_core or auto, got 'fast'"):
        modulated_attention(**inputs, impl=gpu.impl)
    monkeypatch.setenv("DABDETR_ATTENTION_PATH", "tensor_core")
    monkeypatch.setenv("DABDETR_ATTENTION_SPLITS", "17")
    with pytest.raises(RuntimeError, match="DABDETR_ATTENTION_SPLITS must be 1..16"):
        modulated_attention(**attention_inputs(ATTENTION_CASES[1], gpu, torch.bfloat16), impl=gpu.impl)


def test_float32_takes_tf32_tensor_cores_only_where_torch_allows_tf32(monkeypatch, gpu):
    """Under "auto", float32 stays exact at torch's default precision ("highest") and moves to the
    tensor cores (an error at tf32's scale, far above float32's) with set_float32_matmul_precision("high")."""
    _skip_unserved("tensor_core", gpu)
    monkeypatch.setenv("DABDETR_ATTENTION_PATH", "auto")
    inputs = attention_inputs(ATTENTION_CASES[1] if gpu.emulated else DAB_CASES[0], gpu, torch.float32)
    truth = modulated_attention(**retyped(inputs, torch.float64), impl="reference")
    scale = truth.abs().max().item()
    assert torch.get_float32_matmul_precision() == "highest"
    exact = (modulated_attention(**inputs, impl=gpu.impl).double() - truth).abs().max().item()
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        tf32 = (modulated_attention(**inputs, impl=gpu.impl).double() - truth).abs().max().item()
    finally:
        torch.set_float32_matmul_precision(previous)
    assert exact < 16 * torch.finfo(torch.float32).eps * scale
    assert 16 * torch.finfo(torch.float32).eps * scale < tf32 < 16 * TF32_EPS * scale


@pytest.mark.parametrize("path", PATHS)
def test_fully_padded_rows_are_zero_in_half_precision(path, use_path, gpu):
    use_path(path, gpu)
    case = next(c for c in ATTENTION_CASES if c.mask == "one_fully_padded")
    for dtype in HALF_DTYPES:
        inputs = attention_inputs(case, gpu, dtype, requires_grad=True)
        out = modulated_attention(**inputs, impl=gpu.impl)
        grads = torch.autograd.grad(out.float().square().sum(), [inputs[n] for n in GRAD_NAMES])
        assert (out[1] == 0).all() and all((g[1] == 0).all() for g in grads)
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)


@gpu_only
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


def test_wide_heads_fall_back_or_raise(gpu):
    case = AttentionCase("wide", B=1, H=2, Nq=5, Nk=9, Dc=96, Dp=32, Dv=32)
    inputs = attention_inputs(case, gpu, torch.float32)
    torch.testing.assert_close(modulated_attention(**inputs), modulated_attention(**inputs, impl="reference"))
    with pytest.raises(RuntimeError, match="head dims above 64"):
        modulated_attention(**inputs, impl=gpu.impl)


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=str)
def test_sine_embed_error_ratio(dtype, gpu):
    boxes, xy_scale, ref_wh = sine_inputs((300, 8, 4), 128, gpu, dtype, requires_grad=True)
    plain = sine_inputs((2_000 if gpu.emulated else 100_000, 4), 128, gpu, dtype, modulated=False)[0]

    def run(tensors, impl):
        embed, xy = modulated_anchor_sine_embed(*tensors, impl=impl)
        grads = torch.autograd.grad((embed, xy), tensors, (torch.ones_like(embed), torch.ones_like(xy)))
        return [embed, xy, *grads]

    tensors = (boxes, xy_scale, ref_wh)
    truth = run([t.detach().double().requires_grad_() for t in tensors], "reference")
    for i, (k, r, t) in enumerate(zip(run(tensors, gpu.impl), run(tensors, "reference"), truth)):
        floor = 4 * torch.finfo(dtype).eps * max(1.0, t.abs().max().item())
        assert_error_ratio(k, r, t, 3.0, f"{dtype} output/grad {i}", floor=floor)
    assert_error_ratio(anchor_sine_embed(plain, impl=gpu.impl), anchor_sine_embed(plain, impl="reference"),
                       anchor_sine_embed(plain.double(), impl="reference"), 2.0, f"{dtype} embed",
                       floor=torch.finfo(dtype).eps)


def _free_gib():
    return torch.cuda.mem_get_info()[0] / 2**30


@pytest.mark.parametrize("path", PATHS)
@gpu_only
def test_operands_past_element_2_31_of_their_storage(path, use_path):
    """64-bit offsets on load: batch 1 of every operand lives beyond element 2^31 of one bf16 buffer."""
    use_path(path, GPU)
    if _free_gib() < 12:
        pytest.skip("needs about 5 GiB of free GPU memory for the 4.3 GB buffer and its checks")
    case = AttentionCase("far", B=2, H=2, Nq=37, Nk=70, Dc=32, Dp=32, Dv=32, mask="random")
    small = attention_inputs(case, "cuda", torch.bfloat16)
    batch_stride = 2**31 + 1024
    buffer = torch.empty(batch_stride + 5 * 8192, dtype=torch.bfloat16, device="cuda")
    far = dict(small)
    for i, name in enumerate(GRAD_NAMES):
        t = small[name]
        view = buffer.as_strided(t.shape, (batch_stride, t.shape[2] * 32, 32, 1), storage_offset=i * 8192)
        view.copy_(t)
        far[name] = view.requires_grad_(True)
        small[name] = t.clone().requires_grad_(True)
    cotangent = attention_cotangent(case, "cuda", torch.bfloat16)
    del buffer  # the views keep the storage alive
    for got, want in zip(_forward_backward(far, "kernel", cotangent), _forward_backward(small, "kernel", cotangent)):
        assert torch.equal(got, want)


@pytest.mark.parametrize("path", PATHS)
@gpu_only
def test_outputs_past_element_2_31(path, use_path):
    """64-bit offsets on store: out and dQ of [1, 1025, 65536, 32] bf16; with one key the result
    is known exactly: out = value, dQ = dK = 0, dV = Nq * dO."""
    use_path(path, GPU)
    if _free_gib() < 24:
        pytest.skip("needs about 18 GiB of free GPU memory")
    B, H, Nq, D = 1, 1025, 65536, 32
    q = torch.randn(B, H, Nq, D, device="cuda", dtype=torch.bfloat16).requires_grad_(True)
    k = torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16).requires_grad_(True)
    v = torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16).requires_grad_(True)
    out = modulated_attention(q, None, k, None, v, impl="kernel")
    assert out.numel() > 2**31
    assert torch.equal(out, v.detach().expand_as(out))
    grad_q, grad_k, grad_v = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    del out
    assert not grad_q.any() and not grad_k.any()
    assert (grad_v == Nq).all()


@pytest.mark.parametrize("path", PATHS)
def test_fp16_logits_beyond_the_fp16_range(path, use_path, gpu):
    """Logits above 65504 (the fp16 maximum) stay finite: the kernel never stores them in fp16."""
    use_path(path, gpu)
    case = AttentionCase("hot", B=1, H=2, Nq=20, Nk=60, Dc=32, Dp=32, Dv=32, mask="random")
    inputs = attention_inputs(case, gpu, torch.float16, requires_grad=False)
    for name in ("q_content", "q_pos", "k_content", "k_pos"):
        inputs[name] = inputs[name] * 8
        inputs[name][:, :, 0] = 50.0  # query 0 . key 0 = 64 * 2500 = 160000
        inputs[name].requires_grad_(True)
    inputs["value"].requires_grad_(True)
    inputs["key_padding_mask"][:, 0] = False
    cotangent = attention_cotangent(case, gpu, torch.float64)
    kernel = _forward_backward(inputs, gpu.impl, cotangent.half())
    truth = _forward_backward(retyped(inputs, torch.float64), "reference", cotangent)
    for name, k, t in zip(["out", *GRAD_NAMES], kernel, truth):
        assert torch.isfinite(k).all(), name
        torch.testing.assert_close(k.double(), t, rtol=1e-2, atol=1e-2 * max(1.0, t.abs().max().item()), msg=name)


def test_too_many_queries_is_a_clear_error_and_auto_falls_back(gpu):
    limit = (EMULATOR_LIMITS if gpu.emulated else kernel_info())["cuda_max_attention_rows"]
    q = torch.randn(1, 1, limit + 1, 2, device=gpu)
    k, v = torch.randn(1, 1, 3, 2, device=gpu), torch.randn(1, 1, 3, 2, device=gpu)
    with pytest.raises(RuntimeError, match=f"at most {limit} queries and keys per head"):
        modulated_attention(q, None, k, None, v, impl=gpu.impl)
    with pytest.raises(RuntimeError, match="modulated_attention: the CUDA kernel serves at most"):
        gpu.ops.modulated_attention(q, None, k, None, v, None, 1.0)
    torch.testing.assert_close(modulated_attention(q, None, k, None, v),
                               modulated_attention(q, None, k, None, v, impl="reference"))


def test_empty_sizes_launch_nothing_and_match_the_reference(gpu):
    for sizes in ({"B": 0}, {"H": 0}, {"Nq": 0}, {"Nk": 0}):
        case = AttentionCase("empty", **{**dict(B=2, H=2, Nq=5, Nk=7, Dc=4, Dp=4, Dv=4, mask="random"), **sizes})
        inputs = attention_inputs(case, gpu, torch.float32, requires_grad=True)
        cotangent = torch.ones(case.B, case.H, case.Nq, case.Dv, device=gpu)
        for got, want in zip(_forward_backward(inputs, gpu.impl, cotangent),
                             _forward_backward(inputs, "reference", cotangent)):
            assert got.shape == want.shape
            torch.testing.assert_close(got, want)
    if not gpu.emulated:
        torch.cuda.synchronize()  # an empty grid would be an invalid-configuration error here
    boxes = torch.rand(0, 3, 4, device=gpu, requires_grad=True)
    embed, xy = modulated_anchor_sine_embed(boxes, impl=gpu.impl)
    assert embed.shape == (0, 3, 512) and xy.shape == (0, 3, 256)
    (embed.sum() + xy.sum()).backward()
    assert boxes.grad.shape == boxes.shape


KERNELS_SCRIPT = """
import torch
from dabdetr.ops import modulated_attention, modulated_anchor_sine_embed
from op_samples import ATTENTION_CASES, attention_inputs, sine_inputs
for case in ATTENTION_CASES[:5]:
    for dtype in (torch.float32, torch.bfloat16, "tf32"):  # tf32: float32 on the tensor cores under "auto"
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
        inputs = attention_inputs(case, "cuda", torch.float32 if dtype == "tf32" else dtype, requires_grad=True)
        out = modulated_attention(**inputs, impl="kernel")
        out.float().sum().backward()
tensors = sine_inputs((37, 4), 16, "cuda", torch.float32, requires_grad=True)
embed, xy = modulated_anchor_sine_embed(*tensors, num_feats=16, impl="kernel")
(embed.sum() + xy.sum()).backward()
torch.cuda.synchronize()
print("KERNELS_RAN")
"""


def _run_kernels_script(prefix=(), **env):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.abspath(__file__)), os.environ.get("PYTHONPATH", "")]), **env)
    result = subprocess.run([*prefix, sys.executable, "-c", KERNELS_SCRIPT], capture_output=True, text=True,
                            env=env, timeout=600)
    log = result.stdout[-4000:] + result.stderr[-4000:]
    assert result.returncode == 0 and "KERNELS_RAN" in result.stdout, log
    return result.stdout + result.stderr


def _script_path(path):
    """The script's DABDETR_ATTENTION_PATH for `path`: it also runs exact float32, which only SIMT serves."""
    _skip_unserved(path, GPU)
    return "auto" if path == "tensor_core" else path


@pytest.mark.parametrize("path", PATHS)
@gpu_only
def test_sync_mode_runs_every_kernel(path):
    """DABDETR_CUDA_SYNC=1 synchronizes after each op, so a kernel fault names its op."""
    _run_kernels_script(DABDETR_CUDA_SYNC="1", DABDETR_ATTENTION_PATH=_script_path(path))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("tool", ["memcheck", "racecheck", "synccheck"])
@gpu_only
def test_compute_sanitizer_is_clean(tool, path):
    sanitizer = shutil.which("compute-sanitizer") or os.path.join(
        os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "compute-sanitizer")
    if not os.path.exists(sanitizer):
        pytest.skip("compute-sanitizer not found")
    # Only our kernels (namespace dabdetr) are instrumented: torch's own are not under test.
    log = _run_kernels_script(prefix=(sanitizer, "--tool", tool, "--error-exitcode", "3",
                                      "--kernel-name", "kns=dabdetr"), DABDETR_ATTENTION_PATH=_script_path(path))
    assert "0 errors" in log, log[-4000:]
