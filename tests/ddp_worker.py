"""Run by test_training.py under torchrun (2 processes, gloo) with OUTPUT_DIR PRESET: a few
training steps, then every rank's parameters are compared. Rank 0 writes OUTPUT_DIR/ddp_result.json."""

import json
import os
import sys

import torch
import torch.distributed as dist

from dabdetr import distributed
from dabdetr.training.config import recipe
from dabdetr.training.trainer import Trainer

sys.path.insert(0, os.path.dirname(__file__))
from test_training import TINY_RUN

output_dir, preset = sys.argv[1:3]
trainer = Trainer(recipe(preset, output_dir=output_dir, **{**TINY_RUN, "device": "cpu"}))
initial = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
trainer.fit()
flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
draws = distributed.all_gather_objects(torch.rand(16).tolist())  # the training stream's next numbers
if dist.get_rank() == 0:
    with open(os.path.join(output_dir, "log.jsonl")) as f:
        steps = [json.loads(line) for line in f]
    report = {"world_size": dist.get_world_size(), "steps": sum(r["type"] == "train" for r in steps),
              "max_parameter_difference": max((g - flat).abs().max().item() for g in gathered),
              "parameters_changed": bool((flat != initial).any()),
              "ranks_draw_differently": draws[0] != draws[1]}
    with open(os.path.join(output_dir, "ddp_result.json"), "w") as f:
        json.dump(report, f)
del trainer  # its DDP model holds the process group: release it while the interpreter is alive
distributed.shutdown()
