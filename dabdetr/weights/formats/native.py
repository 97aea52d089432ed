"""Our model directory: config.json ({"format": "dabdetr", "config": DABDETRConfig fields,
"class_names": {label: name}, "eval_size", "max_size": the image sizes it was evaluated at}) and
model.pt (the state dict); the tag of a training checkpoint (dabdetr.training.checkpoint),
whose model weights from_pretrained reads too; and the files of a training run's folder."""

import json
import os

import torch

from dabdetr.weights.files import atomic_write, read_torch_file

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.pt"
FORMAT_TAG = "dabdetr"
TRAIN_CHECKPOINT_FORMAT = "dabdetr-train-checkpoint"
# A training run's folder (dabdetr.training): the newest state (written at every epoch's end and
# every mid-epoch checkpoint), the state at the best AP, and the final model directory.
RUN_LATEST, RUN_BEST, RUN_MODEL_DIR = "checkpoint.pt", "best.pt", "model"


def save_pretrained(model, directory, class_names=None, eval_size=None, max_size=None):
    """Writes config.json and model.pt (each atomically: a temporary file, then a rename).
    class_names: optional {label: name}; eval_size, max_size: the shorter side and the cap of
    the longer one the model was evaluated at (None: COCO's 800 and 1333), so that prediction
    resizes images as training did. Both kept in config.json for `dabdetr predict`."""
    os.makedirs(directory, exist_ok=True)
    atomic_write(os.path.join(directory, WEIGHTS_FILE), lambda f: torch.save(model.state_dict(), f), binary=True)
    config = {"format": FORMAT_TAG, "config": model.config.to_dict()}
    if class_names:
        config["class_names"] = {str(label): name for label, name in class_names.items()}
    config.update({k: v for k, v in (("eval_size", eval_size), ("max_size", max_size)) if v is not None})
    atomic_write(os.path.join(directory, CONFIG_FILE), lambda f: json.dump(config, f, indent=1))


def read_model_directory(directory):
    """(state dict, DABDETRConfig fields, metadata {"class_names": {label: name}, "eval_size",
    "max_size" (None where not stored)}) of a directory save_pretrained wrote."""
    with open(os.path.join(directory, CONFIG_FILE)) as f:
        config = json.load(f)
    metadata = {"class_names": {int(label): name for label, name in (config.get("class_names") or {}).items()},
                "eval_size": config.get("eval_size"), "max_size": config.get("max_size")}
    return read_torch_file(os.path.join(directory, WEIGHTS_FILE)), config["config"], metadata
