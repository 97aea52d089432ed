"""dabdetr: DAB-DETR with fused kernels for its modulated attention, anchor sine embedding and
multi-scale deformable attention.

The package, by role, from the bottom up (each layer imports only the layers below it; the
import-linter contract in pyproject.toml keeps it so):

    ops         the fused kernels (C++ / CUDA) and their PyTorch reference
    box_ops     box formats and IoU;  distributed  process groups and collectives
    models      the DAB-DETR model        data   datasets, transforms, batching
    weights     loading and saving checkpoints of every format, published models, ImageNet backbones
    evaluation  the evaluation loop, COCO AP, plots
    training    Trainer, recipes, criterion, matcher, checkpoints, preemption
    deployment  export (ONNX, torch.export, AOTInductor), runtimes, prediction on image files
    cli         the `dabdetr` command

The names a user needs are here, in __all__. Training's and deployment's load on first use:
they bring scipy and matplotlib, which using a model does not need.
"""

import importlib

from dabdetr import ops
from dabdetr.models import DABDETR, DABDETRConfig, build_model, post_process, preset
from dabdetr.ops import (
    anchor_sine_embed,
    kernel_info,
    modulated_anchor_sine_embed,
    modulated_attention,
    multi_scale_deformable_attention,
)
from dabdetr.weights import from_pretrained, load_pretrained, save_pretrained

_ON_FIRST_USE = {
    "Trainer": "dabdetr.training", "TrainConfig": "dabdetr.training", "recipe": "dabdetr.training",
    "export": "dabdetr.deployment.export", "load_detector": "dabdetr.deployment",
    "predict_images": "dabdetr.deployment", "detect": "dabdetr.deployment",
}

__version__ = "0.1.0"

__all__ = [
    # the model
    "DABDETR", "DABDETRConfig", "build_model", "preset", "post_process",
    # weights
    "from_pretrained", "load_pretrained", "save_pretrained",
    # training
    "Trainer", "TrainConfig", "recipe",
    # deployment
    "detect", "export", "load_detector", "predict_images",
    # the fused ops
    "ops", "modulated_attention", "anchor_sine_embed", "modulated_anchor_sine_embed",
    "multi_scale_deformable_attention", "kernel_info",
    "__version__",
]


def __getattr__(name):
    if name in _ON_FIRST_USE:
        return getattr(importlib.import_module(_ON_FIRST_USE[name]), name)
    raise AttributeError(f"module 'dabdetr' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
