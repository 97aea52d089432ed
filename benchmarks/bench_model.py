"""Benchmark of the whole detector: ops_impl="reference" vs "kernel", with Hugging Face's
DabDetrForObjectDetection (same architecture, random weights) as a peer on the same input.

Inference and one training step (forward + backward of a scalar of all outputs). Hugging Face's
stem and layer1 are frozen as ours are, so the training steps do the same work. Images are
800x1066 (the COCO evaluation size, where the attention ops matter; at small sizes the ResNet
dominates and the peers are within noise). CPU: inference at batch 1 and 8, training at batch 2,
float32 (--precisions float32,bf16 adds bfloat16 autocast, for CPUs with AVX-512 BF16 or AMX).
CUDA: both at batch 2 and 8, float32 and bfloat16 autocast, with the peak memory of each call.
The kernel rows also give the share of the call spent in the attention ops (torch.profiler);
--tensor-cores adds the kernel model on the tensor-core attention path (bf16 autocast, CUDA), and
on a CPU with AVX-512 BF16 the bf16 rows add "kernel avx512", the attention computed in float32.

A DAB-Deformable-DETR preset (--preset dab_deformable_detr_r50) has no Hugging Face peer; its rows
give the share of the deformable attention for the reference ops too (on the CPU: the time inside
the model's calls of the op and in the backward of what they ran), so that the share before and
after the fused op stand side by side. Its results are written as model_<preset>_<machine>.

    python benchmarks/bench_model.py [--device cuda] [--preset dab_detr_r50] [--size 800x1066] [--batches 2,8]
"""

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

import dabdetr.models.deformable_transformer as deformable_transformer
import dabdetr.ops
from dabdetr.models import build_model, preset


def huggingface_peer(config, device):
    """HF's DAB-DETR with the same architecture, or None where transformers is not installed (or
    the model is DAB-Deformable-DETR, which it does not have)."""
    if config.architecture != "dab_detr":
        return None
    try:
        import transformers
    except ImportError:
        return None
    try:
        return _huggingface_model(transformers, config, device)
    except Exception as error:  # a transformers release whose DAB-DETR API differs: no peer, said why
        print(f"Hugging Face peer unavailable ({type(error).__name__}: {error})")
        return None


def _huggingface_model(transformers, config, device):
    depths = {"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}[config.backbone]
    backbone = transformers.ResNetConfig(out_features=["stage4"], depths=depths)
    hf_config = transformers.DabDetrConfig(
        use_timm_backbone=False, backbone=None, use_pretrained_backbone=False, backbone_config=backbone,
        num_labels=config.num_classes, dropout=0.0, num_queries=config.num_queries, num_patterns=config.num_patterns,
    )
    model = transformers.DabDetrForObjectDetection(hf_config).to(device)
    for name, parameter in model.named_parameters():  # freeze stem and layer1, as the recipe does
        if ".embedder." in name or ".stages.0." in name:
            parameter.requires_grad_(False)
    return model


def step_functions(models, images, mask, train, autocast):
    def ours(model):
        return lambda: model(images, mask)

    def hf(model):
        pixel_mask = (~mask).long()
        return lambda: model(pixel_values=images, pixel_mask=pixel_mask)

    def scalar(out):
        logits = out.logits if hasattr(out, "logits") else out["pred_logits"]  # HF's output is a dict too
        boxes = out.pred_boxes if hasattr(out, "pred_boxes") else out["pred_boxes"]
        return logits.float().sum() + boxes.float().sum()

    fns = {}
    for name, model in models.items():
        forward = hf(model) if name == "huggingface" else ours(model)
        model.train(train)
        if train:
            params = [p for p in model.parameters() if p.requires_grad]

            def run(forward=forward, params=params):
                with autocast():
                    loss = scalar(forward())
                return torch.autograd.grad(loss, params, allow_unused=True)
        else:
            def run(forward=forward):
                with torch.no_grad(), autocast():
                    return forward()
        fns[name] = run
    return fns


@contextlib.contextmanager
def deformable_attention_scope():
    """The deformable transformer's op calls inside a profiler scope named "deformable_attention"."""
    original = deformable_transformer.multi_scale_deformable_attention

    def scoped(*args, **kwargs):
        with torch.profiler.record_function("deformable_attention"):
            return original(*args, **kwargs)

    deformable_transformer.multi_scale_deformable_attention = scoped
    try:
        yield
    finally:
        deformable_transformer.multi_scale_deformable_attention = original


def deformable_attention_share(fn):
    """CPU: the fraction of one call's time inside the deformable attention, whichever ops compute
    it: the time of the scopes (forward) and of the backward functions of every op run inside
    them (matched by the autograd sequence number), over all ops' self time."""
    from torch.profiler import ProfilerActivity, profile

    def descendants(event):
        for child in event.cpu_children:
            yield child
            yield from descendants(child)

    with deformable_attention_scope():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
    events = prof.events()
    scopes = [e for e in events if e.name == "deformable_attention"]
    forward_ops = {d.sequence_nr for e in scopes for d in descendants(e) if d.sequence_nr >= 0}
    backward = [e for e in events if e.name.startswith("autograd::engine::evaluate_function")
                and e.sequence_nr in forward_ops]
    total = sum(e.self_cpu_time_total for e in events)
    return (sum(e.cpu_time_total for e in scopes + backward) / total) if total else None


def attention_share(fn, device):
    """Fraction of one call's time spent in the modulated attention ops, forward and backward (one
    profiled call after a warm-up): on CUDA their kernels' time (the kernels taking AttentionArgs,
    DeformableAttentionArgs in a DAB-Deformable-DETR) over every kernel's; on the CPU the self time
    of the dabdetr::modulated_attention* ops over every op's."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    fn()
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        fn()
        harness.synchronize(device)
    events = prof.key_averages()
    if cuda:
        kernels = [e for e in events if e.self_device_time_total > 0]
        total = sum(e.self_device_time_total for e in kernels)
        ours = sum(e.self_device_time_total for e in kernels if "AttentionArgs" in e.key)
    else:
        total = sum(e.self_cpu_time_total for e in events)
        ours = sum(e.self_cpu_time_total for e in events if e.key.startswith("dabdetr::modulated_attention"))
    return ours / total if total else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    harness.add_model_arguments(parser)
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes of every task")
    parser.add_argument("--precisions", default=None,
                        help="float32 and/or bf16, comma-separated (default: both on CUDA, float32 on the CPU)")
    parser.add_argument("--tensor-cores", action="store_true",
                        help="CUDA: also the kernel model with the tensor-core attention path, in bf16 autocast")
    args = parser.parse_args()
    memory_suffix, allocator = harness.apply_memory_argument(args)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    height, width = (int(v) for v in args.size.split("x"))
    if args.batches:
        batches = [int(b) for b in args.batches.split(",")]
        tasks = [(task, b) for task in ("inference", "train step") for b in batches]
    elif cuda:
        tasks = [(task, b) for task in ("inference", "train step") for b in (2, 8)]
    else:
        tasks = [("inference", 1), ("inference", 8), ("train step", 2)]
    repeats = args.repeats or (10 if cuda else 3)
    config = preset(args.preset)
    torch.manual_seed(0)
    deformable = config.architecture == "dab_deformable_detr"
    models = {"reference": build_model(config.replace(ops_impl="reference")).to(device)}
    models["kernel"] = build_model(config.replace(ops_impl="kernel")).to(device)
    models["kernel"].load_state_dict(models["reference"].state_dict())
    hf = huggingface_peer(config, device)
    if hf is not None:
        models["huggingface"] = hf
    autocasts = {"float32": ("float32", contextlib.nullcontext),
                 "bf16": ("bf16 autocast", lambda: torch.autocast(device.type, dtype=torch.bfloat16))}
    chosen = (args.precisions or ("float32,bf16" if cuda else "float32")).split(",")
    if not set(chosen) <= autocasts.keys():
        raise SystemExit(f"--precisions takes float32 and bf16, got {args.precisions}")
    precisions = [autocasts[name] for name in chosen]

    # On a CPU with AVX-512 BF16, bf16 rows also time the kernel model with its attention in
    # float32 (level avx512) beside the default, in bf16 dot products (and on an AMX CPU, whose
    # default has them in AMX tiles, at level avx512_bf16 too).
    bf16_levels = [] if cuda else harness.bf16_attention_levels_below(dabdetr.ops.kernel_info()["cpu_isa"])
    rows = []
    for precision, autocast in precisions:
        for task, batch in tasks:
            images, mask = harness.image_batch(batch, height, width, device)
            fns = step_functions(models, images, mask, train=task == "train step", autocast=autocast)
            if args.tensor_cores and cuda and precision != "float32":
                fns["kernel tensor_core"] = harness.in_environment(fns["kernel"], harness.TENSOR_CORE_PATH)
            for level in bf16_levels if precision != "float32" else ():
                fns[f"kernel {level}"] = harness.in_environment(fns["kernel"], {"DABDETR_CPU_ISA": level})
            times = harness.time_peers(fns, device, repeats, warmup=1)
            for impl, ms in times.items():
                # CUDA only: the CPU probe runs in a fresh process, which a model step does not fit.
                peak = harness.peak_memory_bytes(lambda fn=fns[impl]: fn, (), device) / 2**20 if cuda else None
                if deformable and not cuda:
                    share = deformable_attention_share(fns[impl])
                else:
                    share = attention_share(fns[impl], device) if impl.startswith("kernel") else None
                rows.append({"task": task, "batch": batch, "image": f"{height}x{width}", "precision": precision,
                             "impl": impl, "median_ms": ms, "speedup_vs_reference": times["reference"] / ms,
                             "images_per_s": batch / (ms * 1e-3), "peak_extra_mb": peak, "attention_share": share})
            print(f"  {precision} {task} batch {batch}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in times.items()))
            del images, mask, fns
    harness.write_results(
        ("model" if args.preset == "dab_detr_r50" else f"model_{args.preset}") + memory_suffix, device, rows,
        ["task", "batch", "image", "precision", "impl", "median_ms", "speedup_vs_reference", "images_per_s",
         "peak_extra_mb", "attention_share"],
        extra_meta={"preset": args.preset, "repeats": repeats, "allocator": allocator}, out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
