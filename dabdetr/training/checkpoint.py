"""The training checkpoint: its content, reading it back for a resume, and the files a run keeps.

A training checkpoint is a dict saved with torch.save, loadable with weights_only=True:

    format "dabdetr-train-checkpoint"; model (state dict); ema_model (the state dict of the
    weights' moving average, None without ema_decay) and ema_updates (the steps it averaged);
    model_config, train_config (dicts);
    optimizer, scheduler, grad_scaler (state dicts, grad_scaler None without fp16 AMP);
    epoch (the number of finished epochs); step (the steps of the next epoch already done: 0, or
    more in a mid-epoch checkpoint) and epoch_totals (their loss sums, "steps" their count);
    best_ap (float or None); rng (every process's generator states).
"""

import glob
import logging
import os
import random
import shutil

import numpy as np
import torch

from dabdetr.weights.files import read_torch_file
from dabdetr.weights.formats.native import RUN_BEST, RUN_LATEST, TRAIN_CHECKPOINT_FORMAT
from dabdetr.weights.pretrained import directory_source

EPOCH_PATTERN = "checkpoint_epoch{:04d}.pt"  # the state after that many epochs (keep_last of them)

logger = logging.getLogger("dabdetr")


def rng_state():
    """Every generator training draws from: python, numpy, torch CPU and CUDA (as types that
    torch.load(weights_only=True) reads back)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(_as_tuples(state["python"]))
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuples(value):
    """weights_only loading returns python's random state as lists; random.setstate wants tuples."""
    return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def load_train_checkpoint(path):
    """A training checkpoint, with a clear error for a missing, truncated, corrupt or foreign file."""
    if os.path.isdir(path):
        try:
            kind = {"dabdetr": "a dabdetr model directory (save_pretrained)",
                    "huggingface": "a Hugging Face DAB-DETR model directory"}[directory_source(path)]
        except ValueError:
            kind = "a directory"
        raise ValueError(f"{path} is {kind}, not a training checkpoint: --resume takes the {RUN_LATEST} that `dabdetr "
                         f"train` writes (or 'auto' with --output-dir); to start training from these weights, use "
                         f"--init {path}")
    checkpoint = read_torch_file(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != TRAIN_CHECKPOINT_FORMAT:
        kind = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path}: not a dabdetr training checkpoint (top-level keys: {kind}); --resume needs the "
                         f"{RUN_LATEST} that `dabdetr train` writes. Pretrained weights go to --init instead")
    return checkpoint


def epoch_checkpoints(output_dir):
    """The epoch checkpoints of a run, oldest first."""
    return sorted(glob.glob(os.path.join(output_dir, EPOCH_PATTERN.replace("{:04d}", "[0-9]" * 4))))


def resume_candidates(output_dir):
    """The checkpoints of a run, newest first: checkpoint.pt, the epoch checkpoints, best.pt."""
    names = [os.path.join(output_dir, RUN_LATEST), *reversed(epoch_checkpoints(output_dir)),
             os.path.join(output_dir, RUN_BEST)]
    return [p for p in names if os.path.isfile(p)]


def find_resume_checkpoint(output_dir):
    """(path, checkpoint) of the newest readable training checkpoint in output_dir, or (None, None)
    when it has none; unreadable ones are skipped with a warning naming them. Raises when there
    are checkpoints but none is readable (a fresh start would silently throw the run away)."""
    candidates = resume_candidates(output_dir)
    for path in candidates:
        try:
            return path, load_train_checkpoint(path)
        except ValueError as error:
            logger.warning("resume: skipping %s", error)
    if candidates:
        raise ValueError(f"{output_dir}: none of its checkpoints can be read ({', '.join(candidates)}); "
                         "move them away to start over")
    return None, None


def keep_epoch_checkpoint(output_dir, epoch, keep_last):
    """Keeps the state after `epoch` epochs (the just written checkpoint.pt) as its own file, and
    deletes all but the newest keep_last of those. A hard link costs no space while checkpoint.pt
    is the same state; a copy where the file system has no links."""
    if keep_last <= 0:
        return
    path = os.path.join(output_dir, EPOCH_PATTERN.format(epoch))
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    try:
        os.link(os.path.join(output_dir, RUN_LATEST), tmp)
    except OSError:
        shutil.copyfile(os.path.join(output_dir, RUN_LATEST), tmp)
    os.replace(tmp, path)
    for old in epoch_checkpoints(output_dir)[:-keep_last]:
        os.unlink(old)
