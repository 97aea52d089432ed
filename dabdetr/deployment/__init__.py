"""Deployment: exporting a model to ONNX, torch.export and AOTInductor (export), one interface
over the eager model and those artifacts (runtime), and detection on many image files with any
of them and on images in memory (predict).

May import: dabdetr.evaluation, dabdetr.weights, dabdetr.data, dabdetr.models, dabdetr.ops,
dabdetr.box_ops. Never training or the CLI.
"""

from dabdetr.deployment.predict import detect, predict_images
from dabdetr.deployment.runtime import load_detector

# export() stays in dabdetr.deployment.export: as a package attribute it would hide that module.
__all__ = ["detect", "load_detector", "predict_images"]
