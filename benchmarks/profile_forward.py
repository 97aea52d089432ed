"""Where an eager forward of the detector goes, in float32 and under bfloat16 autocast: the
profiler's self time by kind of op (harness.OP_CATEGORIES: convolutions, matrix products, the
fused ops, dtype conversions and layout copies, the rest), then the ops with the most time.
What `dabdetr predict --amp bf16` runs, at COCO's evaluation size.

    python benchmarks/profile_forward.py [--preset dab_detr_r50] [--size 800x1066] [--batch 1] [--calls 3]

Written as forward_profile_<preset>_<machine>.
"""

import argparse
import os
import sys
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

from dabdetr.evaluation.precision import autocast_context
from dabdetr.models import build_model, preset

PRECISIONS = {"float32": "off", "bf16 autocast": "bf16"}  # row label -> amp


def profile_forward(model, images, mask, amp, calls, top_ops):
    """Rows of ms per forward by category and for the top ops, over `calls` profiled forwards."""
    with torch.no_grad(), autocast_context(images.device, amp):
        model(images, mask)  # warm-up: oneDNN's primitives, the allocator
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                model(images, mask)
    events = prof.key_averages()
    by_category = defaultdict(float)
    for event in events:
        by_category[harness.op_category(event.key)] += event.self_cpu_time_total / 1000 / calls
    total = sum(by_category.values())
    rows = [{"table": "by kind of op", "part": name, "ms_per_forward": round(ms, 1), "share": f"{ms / total:.1%}"}
            for name, ms in sorted(by_category.items(), key=lambda kv: -kv[1])]
    rows.append({"table": "by kind of op", "part": "all ops (self time)", "ms_per_forward": round(total, 1),
                 "share": "100%"})
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top_ops]
    rows += [{"table": "the top ops", "part": f"{e.key} ({harness.op_category(e.key).split(' (')[0]})",
              "calls": e.count // calls, "ms_per_forward": round(e.self_cpu_time_total / 1000 / calls, 1),
              "share": f"{e.self_cpu_time_total / 1000 / calls / total:.1%}"} for e in top]
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="dab_detr_r50")
    parser.add_argument("--size", default="800x1066", help="image HEIGHTxWIDTH")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--calls", type=int, default=3, help="profiled forwards (after one of warm-up)")
    parser.add_argument("--top-ops", type=int, default=12)
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    model = build_model(preset(args.preset)).eval()
    images, mask = harness.image_batch(args.batch, height, width, torch.device("cpu"))
    rows = []
    for precision, amp in PRECISIONS.items():
        measured = profile_forward(model, images, mask, amp, args.calls, args.top_ops)
        rows += [{"precision": precision, **row} for row in measured]
    harness.write_results(f"forward_profile_{args.preset}", torch.device("cpu"), rows,
                          ["precision", "table", "part", "calls", "ms_per_forward", "share"],
                          {"preset": args.preset, "image": args.size, "batch": args.batch, "calls": args.calls},
                          args.out_dir)


if __name__ == "__main__":
    main()
