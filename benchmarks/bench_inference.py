"""Inference benchmark of every way to run the detector, on the same weights and input:

    eager reference   DABDETR.predict with ops_impl="reference" (the ops in plain PyTorch)
    eager kernel      DABDETR.predict with the fused kernels
    torch.compile     DetectorGraph compiled by Inductor, freezing on while it traces, the dabdetr ops opaque
    aoti              the AOTInductor package of `dabdetr export --format aoti` (CPU only)
    aoti one size     the same for the benchmark's one image size (`--image-size`): no dynamic height or width
    onnxruntime       the ONNX file of `dabdetr export --format onnx`, ONNX Runtime (CUDA provider on
                      CUDA where installed; its inputs and outputs then cross through host memory)
    huggingface       transformers' DabDetrForObjectDetection loaded with the same weights

Median latency and images/s per batch size, every runtime and precision timed interleaved in one
process; max_abs_diff: the largest difference of logits and boxes from eager reference in the
same precision on that input; build_s: export and load (compiles for aoti); first_call_s: the
first call (compiles for torch.compile). bf16 autocast rows: the eager paths called under it
(`dabdetr predict --amp bf16`, `dabdetr eval --amp bf16`), torch.compile and aoti with it inside
their graph (`dabdetr export --amp bf16`); speedup_vs_float32_eager_kernel compares every row
with the float32 eager kernel row.

A DAB-Deformable-DETR preset has no Hugging Face row (transformers has no such model); its
results are written as inference_<preset>_<machine>.

    python benchmarks/bench_inference.py [--device cuda] [--preset dab_detr_r50] [--size 800x1066] [--batches 1,8]
"""

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

from dabdetr.deployment import runtime
from dabdetr.deployment.export import DetectorGraph, export
from dabdetr.evaluation.precision import autocast_context
from dabdetr.models import build_model, preset
from dabdetr.weights.pretrained import save_huggingface

RUNTIME_NAMES = ("eager reference", "eager kernel", "torch.compile", "aoti", "aoti one size", "onnxruntime",
                 "huggingface")


PRECISIONS = ("float32", "bf16 autocast")


def build_runtimes(config, device, names, scratch, image_size):
    """{(precision, name): (callable(images, mask) -> (logits, boxes), seconds it took to build,
    where it runs)} of the names that this machine can run, in each precision it has: the eager
    paths called under bf16 autocast, torch.compile and aoti built with it inside their graph,
    ONNX Runtime and Hugging Face in float32 only. The reason for each one left out is printed."""
    torch.manual_seed(0)
    reference = build_model(config.replace(ops_impl="reference")).eval().to(device)
    kernel = build_model(config.replace(ops_impl="auto")).eval().to(device)
    kernel.load_state_dict(reference.state_dict())
    builders = {
        "eager reference": lambda amp: (_eager(reference, device, amp), device.type),
        "eager kernel": lambda amp: (_eager(kernel, device, amp), device.type),
        "torch.compile": lambda amp: _compiled(kernel, device, amp),
        "aoti": lambda amp: _exported(kernel, "aoti", os.path.join(scratch, f"model_{amp}.aoti.pt2"), device, amp),
        "aoti one size": lambda amp: _exported(kernel, "aoti", os.path.join(scratch, f"model_{amp}_one_size.aoti.pt2"),
                                               device, amp, image_size),
        "onnxruntime": lambda amp: _exported(kernel, "onnx", os.path.join(scratch, "model.onnx"), device, amp),
        "huggingface": lambda amp: _huggingface(kernel, os.path.join(scratch, "hf"), device, amp),
    }
    runtimes = {}
    for precision in PRECISIONS:
        for name in names:
            start = time.perf_counter()
            try:
                fn, backend = builders[name]("off" if precision == "float32" else "bf16")
            except Exception as error:  # a runtime this machine lacks (a package, a compiler): no row, said why
                print(f"{name} ({precision}): unavailable ({type(error).__name__}: {str(error)[:300]})")
                continue
            runtimes[precision, name] = (fn, time.perf_counter() - start, backend)
            print(f"{name} ({precision}): ready in {runtimes[precision, name][1]:.0f} s ({backend})")
    return runtimes


def _eager(model, device, amp):
    def run(images, mask):
        with autocast_context(device, amp):  # what `dabdetr predict --amp` runs the model in
            return model.predict(images, mask)

    return run


def _compiled(model, device, amp):
    # Freezing must be on while Dynamo traces, which is when it lifts the weights as constants: in
    # torch.compile's options it reaches Inductor alone, and the weights stay graph inputs (the
    # backbone's folded weights then recomputed on every call, no convolution fused).
    graph = torch.compile(DetectorGraph(model, amp=amp))

    def run(images, mask):
        with torch._inductor.config.patch(freezing=True):
            return graph(images, mask)

    return run, device.type


def _exported(model, format, path, device, amp, image_size=None):
    if format == "aoti" and device.type != "cpu":
        raise ValueError("the AOTInductor export is compiled for the CPU")
    export(model, path, format, amp=amp, image_size=image_size)
    detector = runtime.load_detector(path, device=device)
    backend = detector.session.get_providers()[0] if format == "onnx" else "cpu"
    return (lambda images, mask: tuple(detector(images, mask).values())), backend


def _huggingface(model, directory, device, amp):
    import transformers

    if model.config.architecture != "dab_detr":
        raise ValueError("transformers has no DAB-Deformable-DETR")
    if amp != "off":
        raise ValueError("measured in float32 only")
    save_huggingface(model, directory)
    hf = transformers.DabDetrForObjectDetection.from_pretrained(directory).to(device).eval()

    def run(images, mask):
        out = hf(pixel_values=images, pixel_mask=(~mask).long())
        return out.logits, out.pred_boxes

    return run, device.type


def measure(runtimes, batch, height, width, device, repeats):
    """One row per runtime and precision (see build_runtimes) on one random batch, later images
    padded, all timed interleaved."""
    images, mask = harness.image_batch(batch, height, width, device)

    def call(fn):
        with torch.no_grad():
            return fn(images, mask)

    fns = {key: (lambda fn=fn: call(fn)) for key, (fn, _, _) in runtimes.items()}
    outputs, first_call_s = {}, {}
    for key, fn in fns.items():  # torch.compile compiles here, for each new batch size
        start = time.perf_counter()
        outputs[key] = fn()
        first_call_s[key] = time.perf_counter() - start
    times = harness.time_peers(fns, device, repeats, warmup=1)
    float32_kernel_ms = times.get(("float32", "eager kernel"))
    rows = []
    for (precision, name), ms in times.items():
        base, base_ms = outputs.get((precision, "eager reference")), times.get((precision, "eager reference"))
        diff = None if base is None else max((a.float() - b.float()).abs().max().item()
                                             for a, b in zip(outputs[precision, name], base))
        rows.append({"batch": batch, "image": f"{height}x{width}", "precision": precision, "runtime": name,
                     "backend": runtimes[precision, name][2], "median_ms": ms, "images_per_s": batch / (ms * 1e-3),
                     "speedup_vs_eager_reference": base_ms / ms if base_ms else None,
                     "speedup_vs_float32_eager_kernel": float32_kernel_ms / ms if float32_kernel_ms else None,
                     "max_abs_diff": diff, "build_s": runtimes[precision, name][1],
                     "first_call_s": first_call_s[precision, name]})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_model_arguments(parser)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--runtimes", default=",".join(RUNTIME_NAMES), help="comma-separated subset of " +
                        ", ".join(RUNTIME_NAMES))
    args = parser.parse_args()
    memory_suffix, allocator = harness.apply_memory_argument(args)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    height, width = (int(v) for v in args.size.split("x"))
    repeats = args.repeats or (10 if cuda else 3)
    names = [name.strip() for name in args.runtimes.split(",")]
    unknown = sorted(set(names) - set(RUNTIME_NAMES))
    if unknown:
        raise SystemExit(f"unknown runtimes {unknown}; choose from {RUNTIME_NAMES}")
    config = preset(args.preset)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        runtimes = build_runtimes(config, device, names, scratch, (height, width))
        for batch in (int(b) for b in args.batches.split(",")):
            measured = measure(runtimes, batch, height, width, device, repeats)
            print(f"  batch {batch}: " + ", ".join(f"{row['runtime']} {row['precision']} {row['median_ms']:.0f} ms"
                                                   for row in measured))
            rows += measured
    harness.write_results(
        ("inference" if args.preset == "dab_detr_r50" else f"inference_{args.preset}") + memory_suffix, device, rows,
        ["batch", "image", "precision", "runtime", "backend", "median_ms", "images_per_s", "speedup_vs_eager_reference",
         "speedup_vs_float32_eager_kernel", "max_abs_diff", "build_s", "first_call_s"],
        extra_meta={"preset": args.preset, "repeats": repeats, "allocator": allocator}, out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
