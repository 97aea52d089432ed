"""Kernel loading, the impl switch, the reference fallback, and every CPU instruction-set level."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dabdetr.ops import CPU_ISA_LEVELS, kernel_info, modulated_attention

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code, **env):
    """Run `code` in a fresh interpreter (the extension is loaded once per process)."""
    full_env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests"), **env)
    return subprocess.run(
        [sys.executable, "-W", "always::RuntimeWarning", "-c", textwrap.dedent(code)],
        capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=300,
    )


FALLBACK_CHECK = """
    import warnings, torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import dabdetr
        from dabdetr.ops import modulated_attention, anchor_sine_embed, kernel_info
        from op_samples import ATTENTION_CASES, attention_inputs
        inputs = attention_inputs(ATTENTION_CASES[1])
        auto = modulated_attention(**inputs)
        ref = modulated_attention(**inputs, impl="reference")
        assert torch.equal(auto, ref)
        boxes = torch.rand(5, 4)
        assert torch.equal(anchor_sine_embed(boxes), anchor_sine_embed(boxes, impl="reference"))
        try:
            modulated_attention(**inputs, impl="kernel")
            raise SystemExit("impl='kernel' did not raise")
        except RuntimeError as error:
            print("KERNEL_ERROR", error)
    ours = [w for w in caught if "dabdetr" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    print("WARNING", ours[0].message)
    print("INFO", kernel_info())
"""


def test_disable_env_falls_back_with_one_warning():
    result = _python(FALLBACK_CHECK, DABDETR_DISABLE_KERNELS="1")
    assert result.returncode == 0, result.stderr
    assert "disabled by DABDETR_DISABLE_KERNELS=1" in result.stdout
    assert "KERNEL_ERROR modulated_attention: impl='kernel' but disabled by DABDETR_DISABLE_KERNELS=1" in result.stdout


def test_missing_extension_falls_back_with_one_warning():
    # Make `from dabdetr import _C` fail as it would with no compiled extension.
    code = "import sys; sys.modules['dabdetr._C'] = None\n" + textwrap.dedent(FALLBACK_CHECK)
    result = _python(code)
    assert result.returncode == 0, result.stderr
    assert "the extension dabdetr._C could not be imported" in result.stdout
    assert "'extension_loaded': False" in result.stdout


def test_kernel_info_describes_the_build():
    info = kernel_info()
    assert info["extension_loaded"] and info["cpu"]
    assert info["cpu_isa"] in CPU_ISA_LEVELS
    assert info["torch_version"] == torch.__version__.split("+")[0]
    assert isinstance(info["cuda"], bool) and isinstance(info["cuda_archs"], list)
    assert info["deformable_max_levels"] == 16  # csrc/op_params.h's kMaxDeformableLevels


ISA_CHECK = """
    import torch
    from dabdetr.ops import kernel_info, modulated_attention, modulated_anchor_sine_embed
    from op_samples import (ATTENTION_CASES, assert_error_ratio, attention_cotangent, attention_inputs, retyped,
                            sine_inputs)
    print("ISA", kernel_info()["cpu_isa"])
    names = ("q_content", "q_pos", "k_content", "k_pos", "value")
    for case in ATTENTION_CASES:
        for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-4)):
            inputs = attention_inputs(case, dtype=dtype, requires_grad=True)
            leaves = [inputs[n] for n in names if inputs[n] is not None]
            results = []
            for impl in ("kernel", "reference"):
                out = modulated_attention(**inputs, impl=impl)
                results.append([out, *torch.autograd.grad(out.square().sum(), leaves)])
            for got, want in zip(*results):
                torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=case.name)
        # bfloat16: float32 arithmetic below avx512_bf16, bf16 dot products there and above; any within
        # the error-ratio bound of the bf16 reference against the float64 truth.
        inputs = attention_inputs(case, dtype=torch.bfloat16, requires_grad=True)
        cotangent = attention_cotangent(case, dtype=torch.float64)
        results = []
        for impl, run_inputs, run_cotangent in (("kernel", inputs, cotangent.bfloat16()),
                                                ("reference", inputs, cotangent.bfloat16()),
                                                ("reference", retyped(inputs, torch.float64), cotangent)):
            out = modulated_attention(**run_inputs, impl=impl)
            leaves = [run_inputs[n] for n in names if run_inputs[n] is not None]
            results.append([out, *torch.autograd.grad(out, leaves, run_cotangent)])
        for got, want, truth in zip(*results):
            floor = 4 * torch.finfo(torch.bfloat16).eps * max(1.0, truth.abs().max().item())
            assert_error_ratio(got, want, truth, 3.0, case.name, floor=floor)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-4)):
        tensors = sine_inputs((300, 4), 128, dtype=dtype, requires_grad=True)
        results = []
        threads = torch.get_num_threads()
        for impl in ("kernel", "reference"):
            # The reference on one thread: ATen's float64 sin and cos over two threads gave part of
            # this embedding 7e-9 off, now and then on a loaded AMX Xeon (torch 2.13.0+cpu).
            torch.set_num_threads(threads if impl == "kernel" else 1)
            embed, xy = modulated_anchor_sine_embed(*tensors, impl=impl)
            results.append([embed, xy, *torch.autograd.grad(embed.sum() + xy.square().sum(), tensors)])
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, rtol=tol, atol=tol * 10)
    from dabdetr.ops import multi_scale_deformable_attention
    from op_samples import DEFORMABLE_CASES, deformable_inputs
    leaves = ("value", "sampling_locations", "attention_weights")
    for case in DEFORMABLE_CASES:
        for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
            inputs = deformable_inputs(case, dtype=dtype, requires_grad=True)
            results = []
            for impl in ("kernel", "reference"):
                out = multi_scale_deformable_attention(**inputs, impl=impl)
                results.append([out, *torch.autograd.grad(out.square().sum(), [inputs[n] for n in leaves])])
            for got, want in zip(*results):
                torch.testing.assert_close(got, want, rtol=tol, atol=tol, msg=case.name)
        # bfloat16 values with float32 locations and weights: the values widened as they are read.
        inputs = deformable_inputs(case, dtype=torch.float32)
        inputs["value"] = inputs["value"].bfloat16().float()
        exact = multi_scale_deformable_attention(**inputs, impl="kernel")
        inputs["value"] = inputs["value"].bfloat16()
        assert torch.equal(multi_scale_deformable_attention(**inputs, impl="kernel"), exact), case.name
    print("OK")
"""

DETECTED = kernel_info()["cpu_isa"]


@pytest.mark.parametrize("level", CPU_ISA_LEVELS)
def test_every_cpu_isa_level_matches_reference(level):
    if CPU_ISA_LEVELS.index(level) > CPU_ISA_LEVELS.index(DETECTED):
        pytest.skip(f"this CPU runs {DETECTED}, not {level}")
    result = _python(ISA_CHECK, DABDETR_CPU_ISA=level)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"ISA {level}" in result.stdout and "OK" in result.stdout


def test_cpu_isa_is_chosen_per_call(monkeypatch):
    """DABDETR_CPU_ISA is read on every call, so one process can run (and the benchmarks time)
    every level side by side; the lowered level still matches the reference."""
    from op_samples import ATTENTION_CASES, attention_inputs

    monkeypatch.setenv("DABDETR_CPU_ISA", "generic")
    assert kernel_info()["cpu_isa"] == "generic"
    inputs = attention_inputs(ATTENTION_CASES[0], dtype=torch.float64)
    torch.testing.assert_close(modulated_attention(**inputs, impl="kernel"),
                               modulated_attention(**inputs, impl="reference"), rtol=1e-9, atol=1e-9)
    monkeypatch.delenv("DABDETR_CPU_ISA")
    assert kernel_info()["cpu_isa"] == DETECTED
