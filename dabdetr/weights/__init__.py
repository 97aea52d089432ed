"""Loading and saving weights: every checkpoint format (formats/: ours, Hugging Face, official,
MMDetection), wherever it is (hub: a path, a URL, a Hugging Face hub id; zoo: the published
models by name), ImageNet backbone weights (backbone), and the files underneath (files).

May import: dabdetr.models, dabdetr.ops, dabdetr.box_ops. Never data, training, evaluation,
deployment or the CLI.
"""

from dabdetr.models import MODEL_CLASSES
from dabdetr.weights.formats.native import save_pretrained
from dabdetr.weights.pretrained import from_pretrained, load_pretrained

# The models' save method comes from here, so that the dependency points from saving code to the
# models and never back.
for _model_class in MODEL_CLASSES.values():
    _model_class.save_pretrained = save_pretrained

__all__ = ["from_pretrained", "load_pretrained", "save_pretrained"]
