"""Where a training step of the demo recipe goes: data, forward, matcher, loss, backward and the
optimizer by wall clock; then, under torch.profiler, the forward and backward by kind of op
(the backbone's convolutions and batch norms, the fused ops, the transformer's matrix products,
the rest).

    python benchmarks/profile_demo_step.py [--recipe demo_deformable] [--steps 30] [--set FIELD=VALUE ...]

The steps are the trainer's own (dabdetr.training.engine.train_step), so AMP, channels-last
and accumulation settings are profiled as a run would use them.

`DABDETR_CPU_ISA=avx2` and `ONEDNN_MAX_CPU_ISA=AVX2` make an AVX-512 machine behave as an
AVX2-only one (our kernels and oneDNN's convolutions). The table is printed and written under
benchmarks/results/ as demo_step_profile_<cpu>-<isa>_cpu.{md,json}.
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness

import dabdetr
from dabdetr.cli import parse_assignments
from dabdetr.training.engine import train_step


@contextlib.contextmanager
def timed(totals, name):
    start = time.perf_counter()
    try:
        yield
    finally:
        totals[name] += time.perf_counter() - start


def timing(totals, name, fn):
    def run(*args, **kwargs):
        with timed(totals, name):
            return fn(*args, **kwargs)

    return run


def run_steps(trainer, batches, steps, totals):
    """`steps` optimizer steps of the trainer's own train_step, adding seconds per phase to
    totals: the model's forward, the criterion (matcher included) and the optimizer step are
    timed by wrapping them for the while; backward and gradient clipping are the rest."""
    config, model, criterion, optimizer = trainer.config, trainer.model, trainer.criterion, trainer.optimizer
    wrapped = [(model, "forward", "forward"), (criterion, "forward", "loss"),
               (criterion.matcher, "forward", "matcher (Hungarian, scipy)"), (optimizer, "step", "optimizer step")]
    for owner, method, phase in wrapped:  # an instance attribute shadows the method until deleted
        setattr(owner, method, timing(totals, phase, getattr(owner, method)))
    try:
        with trainer.step_context():  # as the trainer's epochs run steps (compile=True: compiled)
            for step in range(steps):
                with timed(totals, "data (waiting for the loader)"):
                    micro_batches = [next(batches) for _ in range(config.accumulate_steps)]
                with timed(totals, "step"):
                    train_step(model, criterion, micro_batches, optimizer, trainer.device, config.clip_max_norm,
                               config.amp, trainer.grad_scaler, where=f"profiled step {step}")
    finally:
        for owner, method, _ in wrapped:
            delattr(owner, method)


def phases(totals):
    """The phases of run_steps' totals, without overlaps: the matcher out of the loss, and the
    step's remainder as backward and clipping."""
    step, loss, matcher = totals["step"], totals["loss"], totals["matcher (Hungarian, scipy)"]
    return {"data (waiting for the loader)": totals["data (waiting for the loader)"], "forward": totals["forward"],
            "matcher (Hungarian, scipy)": matcher, "loss (without the matcher)": loss - matcher,
            "backward and gradient clipping": step - totals["forward"] - loss - totals["optimizer step"],
            "optimizer step": totals["optimizer step"]}


def endless(loader):
    while True:
        yield from loader


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="demo", choices=("demo", "demo_deformable"),
                        help="DAB-DETR's demo, or DAB-Deformable-DETR's")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after 5 of warm-up)")
    parser.add_argument("--profiled-steps", type=int, default=5)
    parser.add_argument("--top-ops", type=int, default=15, help="the ops with the most self time, listed")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TrainConfig field of the demo recipe, as in `dabdetr train --set`")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    overrides = parse_assignments(args.set, "--set")
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = dabdetr.Trainer(dabdetr.recipe(args.recipe, output_dir=output_dir, device="cpu", progress=False,
                                                 **overrides))
        batches = endless(trainer.train_loader)
        run_steps(trainer, batches, 5, defaultdict(float))  # warm-up: oneDNN primitives, allocator, loader workers
        totals = defaultdict(float)
        start = time.perf_counter()
        run_steps(trainer, batches, args.steps, totals)
        step_ms = (time.perf_counter() - start) * 1000 / args.steps

        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
            run_steps(trainer, batches, args.profiled_steps, defaultdict(float))
    by_category = defaultdict(float)
    for event in profile.key_averages():
        by_category[harness.op_category(event.key)] += event.self_cpu_time_total / 1000 / args.profiled_steps
    profiled_ms = sum(by_category.values())

    info = dabdetr.kernel_info()
    isa = f"{info['cpu_isa']}, oneDNN max {os.environ.get('ONEDNN_MAX_CPU_ISA', 'default')}"
    rows = [{"table": "phases", "part": name, "ms_per_step": round(seconds * 1000 / args.steps, 1),
             "share": f"{seconds * 1000 / args.steps / step_ms:.0%}"} for name, seconds in phases(totals).items()]
    rows.append({"table": "phases", "part": "step", "ms_per_step": round(step_ms, 1), "share": "100%"})
    rows += [{"table": "ops (profiled forward + backward + optimizer)", "part": name, "ms_per_step": round(ms, 1),
              "share": f"{ms / profiled_ms:.0%}"}
             for name, ms in sorted(by_category.items(), key=lambda kv: -kv[1])]
    rows.append({"table": "ops (profiled forward + backward + optimizer)", "part": "all ops (self time)",
                 "ms_per_step": round(profiled_ms, 1), "share": "100%"})
    top = sorted(profile.key_averages(), key=lambda e: -e.self_cpu_time_total)[:args.top_ops]
    rows += [{"table": "the top ops", "part": f"{e.key} ({harness.op_category(e.key).split(' (')[0]})",
              "ms_per_step": round(e.self_cpu_time_total / 1000 / args.profiled_steps, 1),
              "share": f"{e.self_cpu_time_total / 1000 / args.profiled_steps / profiled_ms:.0%}"} for e in top]
    config = trainer.config
    extra = {"recipe": args.recipe, "kernels": isa, "batch_size": config.batch_size,
             "image_size": config.synthetic_image_size, "num_workers": config.num_workers, "amp": config.amp,
             "steps": args.steps, "overrides": overrides,
             "allocator": "freed memory kept (keep_freed_memory)" if config.keep_freed_memory else "default"}
    device = torch.device("cpu")
    name = "demo_step_profile" if args.recipe == "demo" else "demo_deformable_step_profile"
    harness.write_results(name, device, rows,
                          ["table", "part", "ms_per_step", "share"], extra, args.out_dir)


if __name__ == "__main__":
    main()
