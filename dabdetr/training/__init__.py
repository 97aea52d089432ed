"""Training: the Trainer (one run: data, model, optimizer, checkpoints, evaluation, logs), its
config and the published recipes (config), the loop (engine), the set criterion and the Hungarian
matcher, training checkpoints and resume (checkpoint), and preemption (a signal ends a run
cleanly at a checkpoint).

May import: dabdetr.evaluation, dabdetr.weights, dabdetr.data, dabdetr.models, dabdetr.ops,
dabdetr.box_ops, dabdetr.distributed. Never deployment or the CLI.
"""

from dabdetr.training.config import TrainConfig, recipe
from dabdetr.training.trainer import Trainer

__all__ = ["Trainer", "TrainConfig", "recipe"]
