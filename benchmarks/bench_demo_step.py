"""The demo recipe's training step per precision, timed interleaved in one process: one trainer
per AMP setting, blocks of steps of each in turn (so drift in machine load hits all alike), the
median block reported with its speed-up over the first setting.

    python benchmarks/bench_demo_step.py [--amps off,bf16] [--recipe demo] [--blocks 8] [--steps 8]
    python benchmarks/bench_demo_step.py --amps off,bf16@avx512,bf16   # a setting's CPU kernels capped
    python benchmarks/bench_demo_step.py --amps off,off+compile,bf16,bf16+compile

A setting AMP@LEVEL runs its steps with DABDETR_CPU_ISA=LEVEL (on an avx512_bf16 CPU, bf16@avx512
times the bfloat16 attention computed in float32 beside the one in bf16 dot products); AMP+compile
trains under torch.compile (TrainConfig.compile; its compiling happens in the warm-up steps).

A step is the trainer's own (dabdetr.training.engine.train_step) plus the wait for its batch,
as a run has them; profile_demo_step.py says where one setting's step goes. Written under
benchmarks/results/ as demo_step_<cpu>-<isa>_cpu.{md,json} (demo_deformable_step_... for
--recipe demo_deformable).
"""

import argparse
import os
import statistics
import sys
import tempfile
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness
from profile_demo_step import endless, run_steps

import dabdetr


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--amps", default="off,bf16",
                        help="AMP settings, comma-separated (the first is the base); AMP@LEVEL caps the CPU kernels, "
                             "AMP+compile trains under torch.compile")
    parser.add_argument("--recipe", default="demo", choices=("demo", "demo_deformable"))
    parser.add_argument("--blocks", type=int, default=8, help="timed blocks of each setting")
    parser.add_argument("--steps", type=int, default=8, help="steps per block (after 4 of warm-up)")
    parser.add_argument("--out-dir", default=None)
    args = parser.parse_args()
    amps = args.amps.split(",")
    with tempfile.TemporaryDirectory() as output_dir:
        runs = {}
        for setting in amps:
            base, compiled, _ = setting.partition("+compile")
            amp, _, level = base.partition("@")
            trainer = dabdetr.Trainer(dabdetr.recipe(args.recipe, output_dir=os.path.join(output_dir, setting),
                                                     device="cpu", progress=False, amp=amp, compile=bool(compiled)))
            batches = endless(trainer.train_loader)
            environment = {"DABDETR_CPU_ISA": level} if level else {}
            with harness.environment(environment):
                run_steps(trainer, batches, 4, defaultdict(float))  # oneDNN primitives, allocator, loader workers
            runs[setting] = (trainer, batches, environment)
        blocks = defaultdict(list)
        for _ in range(args.blocks):
            for setting, (trainer, batches, environment) in runs.items():
                totals = defaultdict(float)
                with harness.environment(environment):
                    run_steps(trainer, batches, args.steps, totals)
                seconds = totals["step"] + totals["data (waiting for the loader)"]
                blocks[setting].append(seconds * 1000 / args.steps)
    medians = {amp: statistics.median(ms) for amp, ms in blocks.items()}
    rows = [{"amp": amp, "ms_per_step": round(medians[amp], 1), "speedup": round(medians[amps[0]] / medians[amp], 2),
             "blocks_ms": " ".join(f"{ms:.0f}" for ms in blocks[amp])} for amp in amps]
    config = runs[amps[0]][0].config
    extra = {"recipe": args.recipe, "kernels": dabdetr.kernel_info()["cpu_isa"], "batch_size": config.batch_size,
             "image_size": config.synthetic_image_size, "num_workers": config.num_workers,
             "blocks": args.blocks, "steps_per_block": args.steps}
    name = "demo_step" if args.recipe == "demo" else "demo_deformable_step"
    harness.write_results(name, torch.device("cpu"), rows, ["amp", "ms_per_step", "speedup", "blocks_ms"],
                          extra, args.out_dir)


if __name__ == "__main__":
    main()
