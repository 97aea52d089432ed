"""Where a kernel path's attention differs from the reference, for the first GPU runs of a path.

For a few shapes (aligned and odd, masked, content-only), each output and gradient of the
kernel is compared with the fp64 reference on the same inputs. The bar for each tensor is 16 eps
of its dtype or 4 times the error of the reference run in that same dtype, whichever is larger
(long fp32 sums round further than 16 eps without anything being wrong); a tensor whose error
exceeds it is summarized by the (b, h, row, col) of its largest error and by the fraction of bad
elements per row % 16 and column % 8: the residues of the tensor-core fragments, so a layout
mistake shows up as a pattern (one row group, every odd column...) rather than as one number.

    DABDETR_ATTENTION_PATH=tensor_core python benchmarks/diagnose_attention.py [--dtype bfloat16|float16|tf32]

--dtype tf32 is float32 with torch.backends.cuda.matmul.allow_tf32 on (the tensor-core path's
float32 mode), judged with the tf32 epsilon 2^-10.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from op_samples import AttentionCase, attention_inputs

from dabdetr.ops import modulated_attention

CASES = [
    AttentionCase("aligned", B=1, H=2, Nq=64, Nk=64, Dc=32, Dp=32, Dv=32),
    AttentionCase("dab_cross", B=2, H=8, Nq=300, Nk=850, Dc=32, Dp=32, Dv=32, mask="random"),
    AttentionCase("odd", B=1, H=3, Nq=33, Nk=129, Dc=5, Dp=7, Dv=3, mask="random"),
    AttentionCase("content_only", B=2, H=4, Nq=9, Nk=50, Dc=32, Dp=0, Dv=32, mask="random"),
    AttentionCase("wide", B=1, H=2, Nq=17, Nk=70, Dc=64, Dp=32, Dv=48),
]
NAMES = ("out", "q_content", "q_pos", "k_content", "k_pos", "value")


def outputs(inputs, impl, cotangent):
    out = modulated_attention(**inputs, impl=impl)
    leaves = [inputs[n] for n in NAMES[1:] if inputs[n] is not None]
    return [out, *torch.autograd.grad(out, leaves, cotangent.to(out.dtype))]


def pattern(bad):
    """Fraction of bad elements per row % 16 (rows of the last-but-one dim) and column % 8."""
    rows = bad.shape[-2]
    by_row = [bad[..., r::16, :].float().mean().item() if r < rows else 0.0 for r in range(16)]
    by_col = [bad[..., c::8].float().mean().item() if c < bad.shape[-1] else 0.0 for c in range(8)]
    return " ".join(f"{x:.2f}" for x in by_row), " ".join(f"{x:.2f}" for x in by_col)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.dtype == "tf32":
        dtype, eps = torch.float32, 2.0**-10
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        dtype = getattr(torch, args.dtype)
        eps = torch.finfo(dtype).eps
    least_tolerance = 16 * eps  # relative to each tensor's largest true value
    print(f"path {os.environ.get('DABDETR_ATTENTION_PATH', 'default')}, {args.dtype}, tolerance at least "
          f"{least_tolerance:.3g}, or 4x the {args.dtype} reference's error")
    clean = True
    for case in CASES:
        inputs = attention_inputs(case, args.device, dtype, requires_grad=True)
        truth_inputs = {k: (v.detach().double().requires_grad_(True) if v is not None and v.is_floating_point() else v)
                        for k, v in inputs.items()}
        cotangent = torch.randn(case.B, case.H, case.Nq, case.Dv, dtype=torch.float64,
                                generator=torch.Generator().manual_seed(1)).to(args.device)
        got = outputs(inputs, "kernel", cotangent)
        same_dtype_reference = outputs(inputs, "reference", cotangent)
        truth = outputs(truth_inputs, "reference", cotangent)
        names = [n for n in NAMES if n == "out" or inputs[n] is not None]
        for name, g, r, t in zip(names, got, same_dtype_reference, truth):
            error = (g.double() - t).abs()
            scale = max(t.abs().max().item(), 1e-30)
            reference_error = (r.double() - t).abs().max().item() / scale
            tolerance = max(least_tolerance, 4 * reference_error)
            bad = error > tolerance * scale
            if not torch.isfinite(g).all():
                bad |= ~torch.isfinite(g)
            status = "ok" if not bad.any() else "BAD"
            print(f"{case.name:13s} {name:10s} {status}  max error {error.max().item() / scale:.3g} (relative; "
                  f"the reference's {reference_error:.3g})")
            if bad.any():
                clean = False
                index = tuple(int(i) for i in torch.nonzero(error == error.max())[0])
                rows, cols = pattern(bad)
                print(f"    worst at (b, h, row, col) {index}: got {g[index].item():.5g}, true {t[index].item():.5g}")
                print(f"    bad fraction by row % 16: {rows}")
                print(f"    bad fraction by col % 8:  {cols}")
    print("all within tolerance" if clean else "MISMATCHES above")
    sys.exit(0 if clean else 1)


if __name__ == "__main__":
    main()
