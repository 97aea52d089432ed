"""Inference benchmark of every way to run the detector, on the same weights and input:

    eager reference   DABDETR.predict with ops_impl="reference" (the ops in plain PyTorch)
    eager kernel      DABDETR.predict with the fused kernels
    torch.compile     DetectorGraph compiled by Inductor (freezing on), the dabdetr ops opaque
    aoti              the AOTInductor package of `dabdetr export --format aoti` (CPU only)
    onnxruntime       the ONNX file of `dabdetr export --format onnx`, ONNX Runtime (CUDA provider on
                      CUDA where installed; its inputs and outputs then cross through host memory)
    huggingface       transformers' DabDetrForObjectDetection loaded with the same weights

Median latency and images/s per batch size; max_abs_diff: the largest difference of logits and
boxes from eager reference on that input; build_s: export and load (compiles for aoti);
first_call_s: the first call (compiles for torch.compile). bf16 autocast rows follow for the
eager paths (`dabdetr predict --amp bf16`, `dabdetr eval --amp bf16`), compared with eager
reference in bf16 autocast too.

A DAB-Deformable-DETR preset has no Hugging Face row (transformers has no such model); its
results are written as inference_<preset>_<machine>.

    python benchmarks/bench_inference.py [--device cuda] [--preset dab_detr_r50] [--size 800x1066] [--batches 1,8]
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

from dabdetr.deployment import runtime
from dabdetr.deployment.export import DetectorGraph, export
from dabdetr.models import build_model, preset
from dabdetr.weights.pretrained import save_huggingface

RUNTIME_NAMES = ("eager reference", "eager kernel", "torch.compile", "aoti", "onnxruntime", "huggingface")


def build_runtimes(config, device, names, scratch):
    """{name: (callable(images, mask) -> (logits, boxes), seconds it took to build, where it runs)}
    of the names that this machine can run; the reason for each one left out is printed."""
    torch.manual_seed(0)
    reference = build_model(config.replace(ops_impl="reference")).eval()
    kernel = build_model(config.replace(ops_impl="auto")).eval()
    kernel.load_state_dict(reference.state_dict())
    builders = {
        "eager reference": lambda: (reference.to(device).predict, device.type),
        "eager kernel": lambda: (kernel.to(device).predict, device.type),
        "torch.compile": lambda: _compiled(kernel, device),
        "aoti": lambda: _exported(kernel, "aoti", os.path.join(scratch, "model.aoti.pt2"), device),
        "onnxruntime": lambda: _exported(kernel, "onnx", os.path.join(scratch, "model.onnx"), device),
        "huggingface": lambda: _huggingface(kernel, os.path.join(scratch, "hf"), device),
    }
    runtimes = {}
    for name in names:
        start = time.perf_counter()
        try:
            fn, backend = builders[name]()
        except Exception as error:  # a runtime this machine lacks (a package, a compiler): no row, said why
            print(f"{name}: unavailable ({type(error).__name__}: {str(error)[:300]})")
            continue
        runtimes[name] = (fn, time.perf_counter() - start, backend)
        print(f"{name}: ready in {runtimes[name][1]:.0f} s ({backend})")
    return runtimes


def _compiled(model, device):
    return torch.compile(DetectorGraph(model.to(device)), options={"freezing": True}), device.type


def _exported(model, format, path, device):
    if format == "aoti" and device.type != "cpu":
        raise ValueError("the AOTInductor export is compiled for the CPU")
    export(model, path, format)
    detector = runtime.load_detector(path, device=device)
    backend = detector.session.get_providers()[0] if format == "onnx" else "cpu"
    return (lambda images, mask: tuple(detector(images, mask).values())), backend


def _huggingface(model, directory, device):
    import transformers

    if model.config.architecture != "dab_detr":
        raise ValueError("transformers has no DAB-Deformable-DETR")
    save_huggingface(model, directory)
    hf = transformers.DabDetrForObjectDetection.from_pretrained(directory).to(device).eval()

    def run(images, mask):
        out = hf(pixel_values=images, pixel_mask=(~mask).long())
        return out.logits, out.pred_boxes

    return run, device.type


def measure(runtimes, batch, height, width, device, autocast, repeats):
    """One row per runtime (see build_runtimes) on one random batch, later images padded."""
    images, mask = harness.image_batch(batch, height, width, device)

    def call(fn):
        with torch.no_grad(), autocast():
            return fn(images, mask)

    fns = {name: (lambda fn=fn: call(fn)) for name, (fn, _, _) in runtimes.items()}
    outputs, first_call_s = {}, {}
    for name, fn in fns.items():  # torch.compile compiles here, for each new batch size
        start = time.perf_counter()
        outputs[name] = fn()
        first_call_s[name] = time.perf_counter() - start
    times = harness.time_peers(fns, device, repeats, warmup=1)
    base, base_ms = outputs.get("eager reference"), times.get("eager reference")
    rows = []
    for name, ms in times.items():
        diff = None if base is None else max((a.float() - b.float()).abs().max().item()
                                             for a, b in zip(outputs[name], base))
        rows.append({"batch": batch, "image": f"{height}x{width}", "runtime": name, "backend": runtimes[name][2],
                     "median_ms": ms, "images_per_s": batch / (ms * 1e-3),
                     "speedup_vs_eager_reference": base_ms / ms if base_ms else None, "max_abs_diff": diff,
                     "build_s": runtimes[name][1], "first_call_s": first_call_s[name]})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_model_arguments(parser)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--runtimes", default=",".join(RUNTIME_NAMES), help="comma-separated subset of " +
                        ", ".join(RUNTIME_NAMES))
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    height, width = (int(v) for v in args.size.split("x"))
    repeats = args.repeats or (10 if cuda else 3)
    names = [name.strip() for name in args.runtimes.split(",")]
    unknown = sorted(set(names) - set(RUNTIME_NAMES))
    if unknown:
        raise SystemExit(f"unknown runtimes {unknown}; choose from {RUNTIME_NAMES}")
    config = preset(args.preset)
    # bf16 on a CPU is fast only with native instructions (AVX-512 BF16, AMX): the rows show which.
    precisions = [("float32", contextlib.nullcontext),
                  ("bf16 autocast", lambda: torch.autocast(device.type, dtype=torch.bfloat16))]

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        runtimes = build_runtimes(config, device, names, scratch)
        for precision, autocast in precisions:
            # Only the eager paths take autocast; exported graphs are float32 programs.
            chosen = {name: built for name, built in runtimes.items() if precision == "float32" or "eager" in name}
            for batch in (int(b) for b in args.batches.split(",")):
                measured = [{"precision": precision, **row}
                            for row in measure(chosen, batch, height, width, device, autocast, repeats)]
                print(f"  {precision} batch {batch}: " + ", ".join(f"{row['runtime']} {row['median_ms']:.0f} ms"
                                                                  for row in measured))
                rows += measured
    harness.write_results(
        "inference" if args.preset == "dab_detr_r50" else f"inference_{args.preset}", device, rows,
        ["batch", "image", "precision", "runtime", "backend", "median_ms", "images_per_s", "speedup_vs_eager_reference",
         "max_abs_diff", "build_s", "first_call_s"],
        extra_meta={"preset": args.preset, "repeats": repeats}, out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
