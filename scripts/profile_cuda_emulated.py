"""What a GPU profiler would report of every CUDA kernel, counted on the CUDA emulator: global
memory requests and sectors, shared memory wavefronts and bank conflicts, atomics, barriers and
warp collectives, per launch and per access site (dabdetr.ops.emulated_counters; the model and
its limits: docs/results/gpu_model.md). No GPU needed: the emulator's counting build
(COUNTERS=1 bash scripts/build_cuda_emulator.sh) runs the kernels on the CPU.

    python scripts/profile_cuda_emulated.py --json FILE [--markdown FILE] [--only SUBSTRING] [--small]
    ncu --csv --page raw ... python scripts/profile_cuda_emulated.py --target cuda --json FILE   # on a GPU

Every kernel of the three ops, forward and backward: the modulated attention on the SIMT path in
each of its four dtypes and on the tensor-core path in each of its three (float32 as TF32), with
one run split over keys (the combine kernel); the anchor sine embedding, plain and modulated; the
multi-scale deformable attention with both backwards (atomics, deterministic). The shapes are
DAB-DETR's and DAB-Deformable-DETR's decoder at reduced size (SHAPES): counts grow with the
shapes, their ratios (sectors per request, conflicts) are the kernels'. One record per launch,
the keys of emulated_counters() plus op, path, dtype, shape and pass; the same file every run.
--target cuda makes the same calls with the GPU's kernels, for Nsight Compute to count
(benchmarks/run_gpu_suite.sh, phase counters; scripts/compare_ncu_counts.py sets both side by side).
--small: smaller shapes (SMALL_SHAPES); with --without-sites (the launches' totals only) what
tests/emulated_counters_recorded.json holds, the counts tests/test_emulated_counters.py holds the
kernels to (after a change that moves them, rerun this and review the difference):

    python scripts/profile_cuda_emulated.py --small --without-sites --json tests/emulated_counters_recorded.json
"""

import argparse
import contextlib
import json
import os
import re
import sys
from unittest import mock

import torch

from dabdetr.ops import (
    anchor_sine_embed,
    emulated_counters,
    modulated_anchor_sine_embed,
    modulated_attention,
    multi_scale_deformable_attention,
)

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Reduced decoder shapes: 8 heads of 32 channels (hidden 256), 100 queries; attention over a 16 x 16
# feature map; deformable attention over 4 levels of a 256 x 256 image, 4 points each.
SHAPES = {
    "modulated_attention": {"batch": 1, "heads": 8, "queries": 100, "keys": 256, "head_dim": 32},
    "anchor_sine_embed": {"boxes": 100, "batch": 2, "num_feats": 128},
    "multi_scale_deformable_attention": {"batch": 1, "queries": 100, "heads": 8, "head_dim": 32,
                                         "levels": [[32, 32], [16, 16], [8, 8], [4, 4]], "points": 4},
}
SMALL_SHAPES = {
    "modulated_attention": {"batch": 1, "heads": 2, "queries": 70, "keys": 130, "head_dim": 32},
    "anchor_sine_embed": {"boxes": 20, "batch": 2, "num_feats": 128},
    "multi_scale_deformable_attention": {"batch": 1, "queries": 20, "heads": 2, "head_dim": 32,
                                         "levels": [[8, 8], [4, 4]], "points": 4},
}


@contextlib.contextmanager
def settings(env, tf32=False, deterministic=False):
    """os.environ with `env` (the CUDA host code reads its path settings on every call), TF32
    matmuls allowed (the tensor-core path's float32) and deterministic algorithms as asked."""
    tf32_before = torch.backends.cuda.matmul.allow_tf32
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.use_deterministic_algorithms(deterministic)
    try:
        with mock.patch.dict(os.environ, env):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32_before
        torch.use_deterministic_algorithms(deterministic_before)


# Where the cases run: the emulator's counting build (CPU tensors), or a GPU's kernels (under ncu).
TARGETS = {"emulated": ("cpu", "cuda_emulated"), "cuda": ("cuda", "kernel")}


def leaves(device, dtype, *tensors):
    """The tensors (made on the CPU from a seeded generator) on `device` in `dtype`, as leaves that
    take gradients."""
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in tensors]


def attention_inputs(s, dtype, device, impl):
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randn(s["batch"], s["heads"], n, s["head_dim"], generator=generator)
            for n in (s["queries"], s["queries"], s["keys"], s["keys"], s["keys"])]
    inputs = leaves(device, dtype, *rows)
    return lambda: modulated_attention(*inputs, impl=impl)


def sine_inputs(s, modulated, device, impl):
    generator = torch.Generator().manual_seed(0)
    boxes = torch.rand(s["boxes"], s["batch"], 4, generator=generator)
    xy_scale = torch.rand(s["boxes"], s["batch"], 2 * s["num_feats"], generator=generator)
    ref_wh = torch.rand(s["boxes"], s["batch"], 2, generator=generator)
    boxes, xy_scale, ref_wh = leaves(device, torch.float32, boxes, xy_scale, ref_wh)
    if not modulated:
        return lambda: anchor_sine_embed(boxes, num_feats=s["num_feats"], impl=impl)
    return lambda: modulated_anchor_sine_embed(boxes, xy_scale, ref_wh, num_feats=s["num_feats"], impl=impl)


def deformable_inputs(s, dtype, device, impl):
    generator = torch.Generator().manual_seed(0)
    shapes = torch.tensor(s["levels"])
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    levels, points = len(s["levels"]), s["points"]
    value = torch.randn(s["batch"], int(areas.sum()), s["heads"], s["head_dim"], generator=generator)
    locations = torch.rand(s["batch"], s["queries"], s["heads"], levels, points, 2, generator=generator)
    weights = torch.rand(s["batch"], s["queries"], s["heads"], levels, points, generator=generator).softmax(-1)
    value, locations, weights = leaves(device, dtype, value, locations, weights)
    shapes, starts = shapes.to(device), starts.to(device)
    return lambda: multi_scale_deformable_attention(value, shapes, starts, locations, weights, impl=impl)


def cases():
    """(op, path, dtype, settings, forward: zero-arg callable giving the output)."""
    out = []
    for dtype in ("float32", "float64", "float16", "bfloat16"):
        out.append(("modulated_attention", "simt", dtype, {"env": {"DABDETR_ATTENTION_PATH": "simt"}}, dtype))
    for dtype in ("float32", "float16", "bfloat16"):
        out.append(("modulated_attention", "tensor_core", dtype,
                    {"env": {"DABDETR_ATTENTION_PATH": "tensor_core"}, "tf32": dtype == "float32"}, dtype))
    out.append(("modulated_attention", "tensor_core 4 key splits", "bfloat16",
                {"env": {"DABDETR_ATTENTION_PATH": "tensor_core", "DABDETR_ATTENTION_SPLITS": "4"}}, "bfloat16"))
    out.append(("anchor_sine_embed", "default", "float32", {"env": {}}, False))
    out.append(("modulated_anchor_sine_embed", "default", "float32", {"env": {}}, True))
    for dtype in ("float32", "bfloat16"):
        out.append(("multi_scale_deformable_attention", "atomic backward", dtype, {"env": {}}, dtype))
        out.append(("multi_scale_deformable_attention", "deterministic backward", dtype,
                    {"env": {}, "deterministic": True}, dtype))
    return out


def forward_of(op, shape, argument, target):
    device, impl = TARGETS[target]
    if op == "modulated_attention":
        return attention_inputs(shape, DTYPES[argument], device, impl)
    if op.endswith("anchor_sine_embed"):
        return sine_inputs(shape, argument, device, impl)
    return deformable_inputs(shape, DTYPES[argument], device, impl)


def profile(only=None, shapes=SHAPES, target="emulated"):
    """The records of every case's launches (target "emulated"), or (target "cuda": the same calls
    on a GPU, for ncu to count) one record per case and pass without counts."""
    records = []
    counting = emulated_counters if target == "emulated" else contextlib.nullcontext
    for op, path, dtype, setting, argument in cases():
        if only and only not in f"{op} {path} {dtype}":
            continue
        shape = shapes["anchor_sine_embed" if op.endswith("anchor_sine_embed") else op]
        forward = forward_of(op, shape, argument, target)
        with settings(**setting):
            with counting() as forward_counters:
                out = forward()
            outputs = (out,) if isinstance(out, torch.Tensor) else out
            grads = [torch.ones_like(o) for o in outputs]
            with counting() as backward_counters:
                torch.autograd.backward(outputs, grads)
        case = {"op": op, "path": path, "dtype": dtype, "shape": shape}
        for pass_name, counters in (("forward", forward_counters), ("backward", backward_counters)):
            launches = counters.records if counters is not None else [{}]
            records += [{**case, "pass": pass_name, **record} for record in launches]
        print(f"{op} {path} {dtype}: done", file=sys.stderr)
    if target == "cuda":
        torch.cuda.synchronize()
    return records


# An H100 SXM5's peaks (NVIDIA's datasheet; dense tensor-core rates): what the model divides by.
H100 = {"sms": 132, "clock_hz": 1.98e9, "dram_bytes_per_s": 3.35e12, "float32": 67e12, "float64": 34e12,
        "tensor_16bit": 989e12, "tensor_tf32": 495e12}
MMA_FLOPS = {"float32": 2 * 16 * 8 * 8, "float16": 2 * 16 * 8 * 16, "bfloat16": 2 * 16 * 8 * 16}  # per mma.sync


def simt_flops(record):
    """The multiply-adds (2 FLOPs each) of the op's formula that a SIMT kernel computes; index
    arithmetic, exp and sincos are not counted (the sine embedding is left at 0: memory bound)."""
    s, kernel = record["shape"], kernel_base(record["kernel"]).split("<")[0]
    if record["op"] == "modulated_attention":
        pairs, d = s["batch"] * s["heads"] * s["queries"] * s["keys"], s["head_dim"]
        per_pair = {"forward_kernel": 2 * 3 * d, "key_grad_kernel": 4 * 2 * d + 4 * d,
                    "query_grad_kernel": 4 * 2 * d + 2 * d}.get(kernel)
        if per_pair is not None:
            return pairs * per_pair
        if kernel == "delta_kernel":
            return 2 * s["batch"] * s["heads"] * s["queries"] * d
        return 0
    if record["op"] == "multi_scale_deformable_attention":
        samples = s["batch"] * s["queries"] * s["heads"] * len(s["levels"]) * s["points"]
        per_sample = {"forward_kernel": 2 * 4, "backward_kernel": 2 * 4 * 4, "sample_grad_kernel": 2 * 4 * 3,
                      "value_grad_sorted_kernel": 2 * 4}.get(kernel, 0)
        return samples * s["head_dim"] * per_sample
    return 0


def h100_bound(record):
    """(microseconds, what binds) of a model of the launch on an H100: the distinct global sectors
    over DRAM bandwidth, FLOPs over the pipe's peak, shared wavefronts over one a clock per SM. A
    lower bound from counts, not a measurement (launch latency, occupancy and L2 not modelled)."""
    dram = record["global_distinct_sectors"] * 32 / H100["dram_bytes_per_s"]
    if record["mma"]:
        pipe = "tensor_tf32" if record["dtype"] == "float32" else "tensor_16bit"
        compute = record["mma"] * MMA_FLOPS[record["dtype"]] / H100[pipe]
    else:
        compute = simt_flops(record) / H100["float64" if record["dtype"] == "float64" else "float32"]
    wavefronts = (record["shared_load_wavefronts"] + record["shared_store_wavefronts"]
                  + record["shared_atomic_wavefronts"]) / (H100["sms"] * H100["clock_hz"])
    terms = {"DRAM": dram, "FLOPs": compute, "shared": wavefronts}
    binding = max(terms, key=terms.get)
    return terms[binding] * 1e6, binding


def kernel_base(name):
    """'forward_kernel<float, 32, true>' from a kernel's name as the emulator or nvcc (in ncu's
    reports) demangles it."""
    name = re.sub(r"\((?:anonymous namespace)\)::|\{anonymous\}::|dabdetr::cuda::|^void ", "", name.strip())
    return re.sub(r"\([^()]*\)$", "", name).strip()


def markdown(records):
    """One row per launch: global requests, sectors and the fewest the requests' bytes need (equal:
    coalesced), shared wavefronts and the fewest (equal: no bank conflicts), atomics, barriers."""
    lines = ["| op | path | dtype | pass | kernel | global ld req | ld sectors (ideal) | global st req | "
             "st sectors (ideal) | shared ld wavefronts (ideal) | shared st wavefronts (ideal) | atomics | barriers |",
             "|" + "---|" * 13]
    for r in records:
        kernel = kernel_base(r["kernel"])
        lines.append(
            f"| {r['op']} | {r['path']} | {r['dtype']} | {r['pass']} | `{kernel}` | {r['global_load_requests']} | "
            f"{r['global_load_sectors']} ({r['global_load_ideal_sectors']}) | {r['global_store_requests']} | "
            f"{r['global_store_sectors']} ({r['global_store_ideal_sectors']}) | "
            f"{r['shared_load_wavefronts']} ({r['shared_load_ideal_wavefronts']}) | "
            f"{r['shared_store_wavefronts']} ({r['shared_store_ideal_wavefronts']}) | {r['atomic_requests']} | "
            f"{r['barriers']} |")
    lines += ["", "The H100 model of each launch (h100_bound: a lower bound from the counts, not a measurement):", "",
              "| op | path | dtype | pass | kernel | DRAM KB (distinct sectors) | model µs | bound by |",
              "|" + "---|" * 8]
    for r in records:
        kernel = kernel_base(r["kernel"])
        microseconds, binding = h100_bound(r)
        lines.append(f"| {r['op']} | {r['path']} | {r['dtype']} | {r['pass']} | `{kernel}` | "
                     f"{r['global_distinct_sectors'] * 32 / 1024:.1f} | {microseconds:.2f} | {binding} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the records")
    parser.add_argument("--markdown", help="also a table of the launches' ratios")
    parser.add_argument("--only", help="only the cases whose 'op path dtype' contains this")
    parser.add_argument("--small", action="store_true", help="the smaller shapes of SMALL_SHAPES")
    parser.add_argument("--without-sites", action="store_true", help="the launches' totals only")
    parser.add_argument("--target", choices=sorted(TARGETS), default="emulated",
                        help="cuda: the same calls on a GPU (for ncu; the records then hold no counts)")
    args = parser.parse_args()
    shapes = SMALL_SHAPES if args.small else SHAPES
    records = profile(args.only, shapes, args.target)
    if args.without_sites:
        records = [{k: v for k, v in r.items() if k != "sites"} for r in records]
    with open(args.json, "w") as f:
        json.dump({"shapes": shapes, "records": records}, f, indent=1)
    if args.markdown and args.target == "emulated":
        with open(args.markdown, "w") as f:
            f.write(markdown(records))
    print(f"wrote {len(records)} launch records to {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
