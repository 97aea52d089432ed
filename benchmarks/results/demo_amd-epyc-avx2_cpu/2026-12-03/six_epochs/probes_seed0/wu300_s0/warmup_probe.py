"""Probe: the demo with a linear lr warm-up over the first N steps (monkeypatched, not the product)."""

import sys

import dabdetr.training.engine as engine
from dabdetr.cli import main

warmup = int(sys.argv.pop(1))
original = engine.train_step
count = [0]


def train_step(model, criterion, micro_batches, optimizer, *args, **kwargs):
    k = count[0]
    if k <= warmup:
        for g in optimizer.param_groups:
            g.setdefault("base_for_warmup", g["lr"])
            g["lr"] = g["base_for_warmup"] * min(1.0, (k + 1) / warmup)
    count[0] += 1
    return original(model, criterion, micro_batches, optimizer, *args, **kwargs)


engine.train_step = train_step
sys.exit(main(sys.argv[1:]))
