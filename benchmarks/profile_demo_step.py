"""Where a training step of the demo recipe goes: data, forward, matcher, loss, backward and the
optimizer by wall clock; then, under torch.profiler, the forward and backward by kind of op
(the backbone's convolutions and batch norms, the fused ops, the transformer's matrix products,
the rest).

    python benchmarks/profile_demo_step.py [--steps 30] [--set FIELD=VALUE ...]

`DABDETR_CPU_ISA=avx2` and `ONEDNN_MAX_CPU_ISA=AVX2` make an AVX-512 machine behave as an
AVX2-only one (our kernels and oneDNN's convolutions). The table is printed and written under
benchmarks/results/ as demo_step_profile_<cpu>-<isa>_cpu.{md,json}.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

import dabdetr
from dabdetr.training.engine import move_targets

# Profiler op names (forward and backward) by the part of the model they belong to, first match wins.
CATEGORIES = [
    ("fused ops (attention, sine embedding)", ("dabdetr",)),
    ("data loader (in the profiled step)", ("dataloader",)),
    ("convolutions (backbone)", ("convolution", "conv2d", "mkldnn_conv")),
    ("max pooling (backbone stem)", ("max_pool",)),
    ("batch norm (backbone)", ("batch_norm",)),
    ("matrix products (transformer, heads)", ("addmm", "aten::mm", "aten::bmm", "matmul", "linear")),
    ("optimizer", ("adamw", "foreach", "clip_grad", "aten::norm", "linalg_vector_norm")),
]


def category(op_name):
    lowered = op_name.lower()
    for name, patterns in CATEGORIES:
        if any(p in lowered for p in patterns):
            return name
    return "other element-wise and copies"


class Clock:
    """Seconds per named phase, summed over steps."""

    def __init__(self):
        self.totals = defaultdict(float)

    def phase(self, name):
        clock = self

        class Phase:
            def __enter__(self):
                self.start = time.perf_counter()

            def __exit__(self, *exc):
                clock.totals[name] += time.perf_counter() - self.start

        return Phase()


def run_steps(trainer, batches, steps, clock):
    model, criterion, optimizer = trainer.model, trainer.criterion, trainer.optimizer
    matcher_forward = criterion.matcher.forward

    def timed_matcher(*args, **kwargs):
        with clock.phase("matcher (Hungarian, scipy)"):
            return matcher_forward(*args, **kwargs)

    criterion.matcher.forward = timed_matcher
    model.train()
    for _ in range(steps):
        with clock.phase("data (waiting for the loader)"):
            images, mask, targets = next(batches)
        with clock.phase("forward"):
            outputs = model(images, mask, targets)
        start = time.perf_counter()
        losses = criterion(outputs, targets, max(sum(len(t["labels"]) for t in targets), 1))
        clock.totals["loss (without the matcher)"] += time.perf_counter() - start
        with clock.phase("backward"):
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
        with clock.phase("optimizer (clip, AdamW)"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), trainer.config.clip_max_norm)
            optimizer.step()
    clock.totals["loss (without the matcher)"] -= clock.totals["matcher (Hungarian, scipy)"]
    criterion.matcher.forward = matcher_forward


def endless(loader):
    while True:
        for images, mask, targets in loader:
            yield images, mask, move_targets(targets, "cpu")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after 5 of warm-up)")
    parser.add_argument("--profiled-steps", type=int, default=5)
    parser.add_argument("--top-ops", type=int, default=15, help="the ops with the most self time, listed")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TrainConfig field of the demo recipe, as in `dabdetr train --set`")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = dabdetr.Trainer(dabdetr.recipe("demo", output_dir=output_dir, device="cpu", progress=False,
                                                 **overrides))
        batches = endless(trainer.train_loader)
        run_steps(trainer, batches, 5, Clock())  # warm-up: oneDNN primitives, allocator, loader workers
        clock = Clock()
        start = time.perf_counter()
        run_steps(trainer, batches, args.steps, clock)
        step_ms = (time.perf_counter() - start) * 1000 / args.steps

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            run_steps(trainer, batches, args.profiled_steps, Clock())
    by_category = defaultdict(float)
    for event in profile.key_averages():
        by_category[category(event.key)] += event.self_cpu_time_total / 1000 / args.profiled_steps
    profiled_ms = sum(by_category.values())

    info = dabdetr.kernel_info()
    isa = f"{info['cpu_isa']}, oneDNN max {os.environ.get('ONEDNN_MAX_CPU_ISA', 'default')}"
    rows = [{"table": "phases", "part": name, "ms_per_step": round(seconds * 1000 / args.steps, 1),
             "share": f"{seconds * 1000 / args.steps / step_ms:.0%}"} for name, seconds in clock.totals.items()]
    rows.append({"table": "phases", "part": "step", "ms_per_step": round(step_ms, 1), "share": "100%"})
    rows += [{"table": "ops (profiled forward + backward + optimizer)", "part": name, "ms_per_step": round(ms, 1),
              "share": f"{ms / profiled_ms:.0%}"}
             for name, ms in sorted(by_category.items(), key=lambda kv: -kv[1])]
    rows.append({"table": "ops (profiled forward + backward + optimizer)", "part": "all ops (self time)",
                 "ms_per_step": round(profiled_ms, 1), "share": "100%"})
    top = sorted(profile.key_averages(), key=lambda e: -e.self_cpu_time_total)[:args.top_ops]
    rows += [{"table": "the top ops", "part": f"{e.key} ({category(e.key).split(' (')[0]})",
              "ms_per_step": round(e.self_cpu_time_total / 1000 / args.profiled_steps, 1),
              "share": f"{e.self_cpu_time_total / 1000 / args.profiled_steps / profiled_ms:.0%}"} for e in top]
    config = trainer.config
    extra = {"kernels": isa, "batch_size": config.batch_size, "image_size": config.synthetic_image_size,
             "num_workers": config.num_workers, "amp": config.amp, "channels_last": config.channels_last,
             "steps": args.steps, "overrides": overrides}
    device = torch.device("cpu")
    harness.write_results("demo_step_profile", device, rows,
                          ["table", "part", "ms_per_step", "share"], extra, args.out_dir)


if __name__ == "__main__":
    main()
