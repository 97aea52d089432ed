"""Benchmark of multi_scale_deformable_attention at Deformable DETR's shapes: the decoder's
cross-attention (B 2, 300 queries) and the encoder's self-attention (B 1, every token a query), both
with H 8, L 4, P 4, D 32 over the four levels of an 800x1066 image (strides 8 to 64).

Peers: the grid_sample reference; the fused kernel (on CPU also "kernel avx2" on an AVX-512 CPU, or
the levels --cpu-isas names, in the same process; on CUDA also "kernel deterministic", the backward
that torch.use_deterministic_algorithms selects); and, where the Deformable DETR CUDA extension is
importable (`MultiScaleDeformableAttention`, built by its make.sh), that extension as
"deformable_detr_extension". Forward (no grad) and forward+backward (torch.autograd.grad of value,
sampling_locations and attention_weights), float32 by default. Each row gives the arithmetic rate
(4 corners x D multiply-adds per sample forward, three times that backward) against the device's
measured matmul peak; a separate table gives the forward+backward's peak memory above its inputs.

    python benchmarks/bench_deformable_attention.py [--device cuda] [--keep-memory] [--quick]
"""

import argparse
import importlib
import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

from dabdetr.ops import multi_scale_deformable_attention

HEADS, LEVELS, POINTS, HEAD_DIM = 8, 4, 4, 32
IMAGE = (800, 1066)


def level_sizes(height, width):
    """The four levels of an image: ResNet's C3-C5 (strides 8, 16, 32, each side rounded up) and
    the extra stride-2 convolution on C5."""
    sizes = [(-(-height // stride), -(-width // stride)) for stride in (8, 16, 32)]
    h, w = sizes[-1]
    return [*sizes, ((h + 1) // 2, (w + 1) // 2)]


LEVEL_SIZES = level_sizes(*IMAGE)
NUM_VALUES = sum(h * w for h, w in LEVEL_SIZES)


@dataclass(frozen=True)
class Shape:
    name: str
    batch: int
    num_queries: int

    def __str__(self):
        return f"{self.name} B{self.batch} Nq{self.num_queries}"


SHAPES = [Shape("decoder", 2, 300), Shape("encoder", 1, NUM_VALUES)]


def make_inputs(shape, device, dtype, requires_grad, seed=0):
    """Inputs as the model makes them: each query's reference point (the encoder's: its own token's
    position; the decoder's: anywhere) plus offsets of a few pixels of each level, softmax weights."""
    g = torch.Generator().manual_seed(seed)
    B, Nq = shape.batch, shape.num_queries
    if shape.name == "encoder":
        centres = [torch.stack(torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                                              indexing="ij")[::-1], dim=-1).reshape(-1, 2) for h, w in LEVEL_SIZES]
        reference = torch.cat(centres).expand(B, -1, -1)
    else:
        reference = torch.rand(B, Nq, 2, generator=g)
    sizes = torch.tensor([[w, h] for h, w in LEVEL_SIZES], dtype=torch.float32)  # (W_l, H_l)
    offsets = torch.randn(B, Nq, HEADS, LEVELS, POINTS, 2, generator=g) * 2.0 / sizes[:, None, :]
    locations = reference[:, :, None, None, None, :] + offsets
    weights = torch.randn(B, Nq, HEADS, LEVELS * POINTS, generator=g).softmax(-1).view(B, Nq, HEADS, LEVELS, POINTS)
    value = torch.randn(B, NUM_VALUES, HEADS, HEAD_DIM, generator=g)
    leaves = [t.to(device, dtype).requires_grad_(requires_grad) for t in (value, locations, weights)]
    spatial_shapes = torch.tensor(LEVEL_SIZES, dtype=torch.int64)
    return {"value": leaves[0], "spatial_shapes": spatial_shapes, "level_start_index": None,
            "sampling_locations": leaves[1], "attention_weights": leaves[2]}


def deformable_detr_extension():
    """The Deformable DETR CUDA extension's module, where it is installed, else None."""
    try:
        return importlib.import_module("MultiScaleDeformableAttention")
    except ImportError:
        return None


def peer_functions(inputs, backward, cpu_isas=None):
    """{peer name: zero-arg callable}."""
    device = inputs["value"].device
    leaves = [inputs[k] for k in ("value", "sampling_locations", "attention_weights")]

    def run(call):
        if not backward:
            with torch.no_grad():
                return call()
        out = call()
        return torch.autograd.grad(out, leaves, torch.ones_like(out))

    def ours(impl):
        return lambda: run(lambda: multi_scale_deformable_attention(**inputs, impl=impl))

    peers = {"reference": ours("reference"), "kernel": ours("kernel")}
    for name, env in harness.cpu_isa_variants(device, cpu_isas).items():
        peers[name] = harness.in_environment(ours("kernel"), env)
    if device.type == "cuda":
        peers["kernel deterministic"] = deterministic(ours("kernel"))
        extension = deformable_detr_extension()
        if extension is not None:
            shapes = inputs["spatial_shapes"].to(device)
            starts = torch.cat((shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]))
            peers["deformable_detr_extension"] = lambda: run(lambda: _ExtensionFunction.apply(
                extension, leaves[0], shapes, starts, leaves[1], leaves[2]))
    return peers


def deterministic(fn):
    def run():
        previous = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True)
        try:
            return fn()
        finally:
            torch.use_deterministic_algorithms(previous)
    return run


class _ExtensionFunction(torch.autograd.Function):
    """The Deformable DETR extension's forward and backward (its im2col_step 64), as its
    MSDeformAttnFunction calls them."""

    @staticmethod
    def forward(ctx, extension, value, shapes, starts, locations, weights):
        ctx.extension = extension
        ctx.save_for_backward(value, shapes, starts, locations, weights)
        return extension.ms_deform_attn_forward(value, shapes, starts, locations, weights, 64)

    @staticmethod
    def backward(ctx, grad_out):
        value, shapes, starts, locations, weights = ctx.saved_tensors
        grads = ctx.extension.ms_deform_attn_backward(value, shapes, starts, locations, weights,
                                                      grad_out.contiguous(), 64)
        return None, grads[0], None, None, grads[1], grads[2]


def flops(shape, backward):
    """4 corners x D multiply-adds per sample forward; the backward's dots and scatters, 3x that."""
    samples = shape.batch * shape.num_queries * HEADS * LEVELS * POINTS
    forward = samples * 4 * HEAD_DIM * 2
    return forward * (4 if backward else 1)


def build_forward_backward(impl, shape, device_name):
    """Module-level (picklable) builder for the memory probe: inputs and one forward+backward."""
    inputs = make_inputs(shape, torch.device(device_name), torch.float32, requires_grad=True)
    return peer_functions(inputs, backward=True)[impl]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_op_arguments(parser, "float32")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory probe")
    parser.add_argument("--quick", action="store_true", help="the decoder's shape only")
    args = parser.parse_args()
    result_suffix, allocator = harness.apply_memory_argument(args)
    device = torch.device(args.device)
    repeats = args.repeats or (50 if device.type == "cuda" else 9)

    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        roofline = harness.measure_roofline(device, dtype)
        print(f"{dtype_name}: measured matmul peak {roofline[0] / 1e9:.0f} GFLOP/s")
        for shape in SHAPES[:1] if args.quick else SHAPES:
            for backward in (False, True):
                inputs = make_inputs(shape, device, dtype, requires_grad=backward)
                times = harness.time_peers(peer_functions(inputs, backward, args.cpu_isas), device, repeats)
                fl = flops(shape, backward)
                pass_name = "fwd+bwd" if backward else "fwd"
                for impl, ms in times.items():
                    rows.append({
                        "shape": str(shape), "dtype": dtype_name, "pass": pass_name, "impl": impl, "median_ms": ms,
                        "speedup_vs_reference": times["reference"] / ms, "gflops": fl / (ms * 1e-3) / 1e9,
                        "of_matmul_peak": fl / (ms * 1e-3) / roofline[0],
                    })
                print(f"  {shape} {pass_name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in times.items()))
    if not args.no_memory and not args.keep_memory:  # the probe's fresh processes keep the default allocator
        memory_rows = []
        for shape in SHAPES:
            for impl in ("reference", "kernel"):
                extra = harness.peak_memory_bytes(build_forward_backward, (impl, shape, device.type), device)
                memory_rows.append({"shape": str(shape), "impl": impl, "fwd_bwd_peak_extra_mb": extra / 2**20})
                print(f"  {shape} {impl}: forward+backward peak {extra / 2**20:.1f} MB above the inputs")
        harness.write_results("deformable_attention_memory", device, memory_rows,
                              ["shape", "impl", "fwd_bwd_peak_extra_mb"], out_dir=args.out_dir)
    harness.write_results(
        "deformable_attention" + result_suffix, device, rows,
        ["shape", "dtype", "pass", "impl", "median_ms", "speedup_vs_reference", "gflops", "of_matmul_peak"],
        extra_meta={"heads": HEADS, "levels": LEVEL_SIZES, "points": POINTS, "head_dim": HEAD_DIM,
                    "repeats": repeats, "allocator": allocator}, out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
