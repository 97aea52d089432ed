"""Benchmark of the whole detector: ops_impl="reference" vs "kernel", with Hugging Face's
DabDetrForObjectDetection (same architecture, random weights) as a peer on the same input.

Inference at batch 1 and 8, and one training step (forward + backward of a scalar of all
outputs). Hugging Face's stem and layer1 are frozen as ours are, so the training steps do the
same work. Images are 800x1066 (the COCO evaluation size, where the attention ops matter; at
small sizes the ResNet dominates and the peers are within noise); the CPU training step uses
batch 2. CUDA runs float32 and bfloat16 autocast.

    python benchmarks/bench_model.py [--device cuda] [--preset dab_detr_r50]
"""

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from dabdetr.models import DABDETR, preset  # noqa: E402


def huggingface_peer(config, device):
    """HF's DAB-DETR with the same architecture, or None where transformers is not installed."""
    try:
        import transformers
    except ImportError:
        return None
    backbone = transformers.ResNetConfig(out_features=["stage4"], depths={"resnet50": [3, 4, 6, 3], "resnet101": [3, 4, 23, 3]}[config.backbone])
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="dab_detr_r50")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    height, width = 800, 1066
    repeats = args.repeats or (10 if cuda else 3)
    config = preset(args.preset)
    torch.manual_seed(0)
    models = {"reference": DABDETR(config.replace(ops_impl="reference")).to(device)}
    models["kernel"] = DABDETR(config.replace(ops_impl="kernel")).to(device)
    models["kernel"].load_state_dict(models["reference"].state_dict())
    hf = huggingface_peer(config, device)
    if hf is not None:
        models["huggingface"] = hf
    precisions = [("float32", contextlib.nullcontext)]
    if cuda:
        precisions.append(("bf16 autocast", lambda: torch.autocast("cuda", dtype=torch.bfloat16)))

    rows = []
    for precision, autocast in precisions:
        for task, batch in (("inference", 1), ("inference", 8), ("train step", 8 if cuda else 2)):
            images = torch.randn(batch, 3, height, width, device=device)
            mask = torch.zeros(batch, height, width, dtype=torch.bool, device=device)
            mask[1:, :, width * 3 // 4:] = True  # later images padded, as in a real batch
            fns = step_functions(models, images, mask, train=task == "train step", autocast=autocast)
            times = harness.time_peers(fns, device, repeats, warmup=1)
            for impl, ms in times.items():
                rows.append({"task": task, "batch": batch, "image": f"{height}x{width}", "precision": precision,
                             "impl": impl, "median_ms": ms, "speedup_vs_reference": times["reference"] / ms,
                             "images_per_s": batch / (ms * 1e-3)})
            print(f"  {precision} {task} batch {batch}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in times.items()))
    harness.write_results(
        "model", device, rows,
        ["task", "batch", "image", "precision", "impl", "median_ms", "speedup_vs_reference", "images_per_s"],
        extra_meta={"preset": args.preset, "repeats": repeats}, out_dir=args.out_dir,
    )


if __name__ == "__main__":
    main()
