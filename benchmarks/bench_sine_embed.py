"""Benchmark of the anchor sine embedding: reference vs fused kernel (on CPU also the kernel at
lower instruction-set levels, --cpu-isas).

Workloads: the decoder's modulated embedding (one layer, 300 queries x batch 2 = 600 boxes, with
xy_scale and ref_wh) and the plain 4-D embedding of many boxes (100k on CPU; 1M on CUDA,
reported as GB/s against the device's measured copy bandwidth). Forward and forward+backward.

    python benchmarks/bench_sine_embed.py [--device cuda]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

from dabdetr.ops import anchor_sine_embed, modulated_anchor_sine_embed

NUM_FEATS = 128


def make_inputs(num_boxes, modulated, device, dtype, requires_grad, seed=0):
    g = torch.Generator().manual_seed(seed)
    boxes = torch.rand(num_boxes, 4, generator=g) * 0.9 + 0.05
    tensors = [boxes]
    if modulated:
        tensors.append(torch.randn(num_boxes, 2 * NUM_FEATS, generator=g))
        tensors.append(torch.rand(num_boxes, 2, generator=g) * 0.9 + 0.05)
    return [t.to(device, dtype).requires_grad_(requires_grad) for t in tensors]


def peer_functions(tensors, modulated, backward, cpu_isas=None):
    """{peer name: zero-arg callable}: the reference, the kernel and the kernel at each CPU
    level of harness.cpu_isa_variants."""
    def call(impl):
        if modulated:
            return modulated_anchor_sine_embed(*tensors, num_feats=NUM_FEATS, impl=impl)
        return (anchor_sine_embed(tensors[0], num_feats=NUM_FEATS, impl=impl),)

    def forward(impl):
        with torch.no_grad():
            return call(impl)

    def forward_backward(impl):
        outs = call(impl)
        return torch.autograd.grad(outs, tensors, [torch.ones_like(o) for o in outs])

    run = forward_backward if backward else forward
    isa_variants = harness.cpu_isa_variants(tensors[0].device, cpu_isas)
    peers = {impl: (lambda impl=impl: run(impl)) for impl in ("reference", "kernel")}
    peers.update({name: harness.in_environment(lambda: run("kernel"), env) for name, env in isa_variants.items()})
    return peers


def bytes_moved(num_boxes, modulated, element_size, backward):
    inputs = 4 + (2 * NUM_FEATS + 2 if modulated else 0)
    outputs = 4 * NUM_FEATS + (2 * NUM_FEATS if modulated else 0)
    once = num_boxes * (inputs + outputs) * element_size
    # backward: reads grads of the outputs and the saved embedding, writes grads of the inputs
    return once + (num_boxes * (outputs + 4 * NUM_FEATS + inputs) * element_size if backward else 0)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_op_arguments(parser, "float32")
    args = parser.parse_args()
    result_suffix, allocator = harness.apply_memory_argument(args)
    device = torch.device(args.device)
    repeats = args.repeats or (50 if device.type == "cuda" else 15)
    many = 1_000_000 if device.type == "cuda" else 100_000
    workloads = [("decoder layer (modulated)", 600, True), (f"{many} boxes", many, False)]

    rows = []
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        _, bandwidth = harness.measure_roofline(device, dtype)
        print(f"{dtype_name}: copy bandwidth {bandwidth / 1e9:.1f} GB/s")
        totals = {}
        for name, num_boxes, modulated in workloads:
            for backward in (False, True):
                tensors = make_inputs(num_boxes, modulated, device, dtype, requires_grad=backward)
                times = harness.time_peers(peer_functions(tensors, modulated, backward, args.cpu_isas), device,
                                           repeats)
                nbytes = bytes_moved(num_boxes, modulated, dtype.itemsize, backward)
                pass_name = "fwd+bwd" if backward else "fwd"
                for impl, ms in times.items():
                    if backward:
                        totals[impl] = totals.get(impl, 0.0) + ms
                    rows.append({
                        "workload": name, "dtype": dtype_name, "pass": pass_name, "impl": impl, "median_ms": ms,
                        "speedup_vs_reference": times["reference"] / ms,
                        "gb_per_s": nbytes / (ms * 1e-3) / 1e9, "of_copy_bandwidth": nbytes / (ms * 1e-3) / bandwidth,
                    })
                print(f"  {name} {pass_name}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in times.items()))
        for impl, ms in totals.items():
            rows.append({"workload": "both workloads", "dtype": dtype_name, "pass": "fwd+bwd", "impl": impl,
                         "median_ms": ms, "speedup_vs_reference": totals["reference"] / ms})
    harness.write_results(
        "sine_embed" + result_suffix, device, rows,
        ["workload", "dtype", "pass", "impl", "median_ms", "speedup_vs_reference", "gb_per_s", "of_copy_bandwidth"],
        extra_meta={"num_feats": NUM_FEATS, "repeats": repeats, "allocator": allocator}, out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
