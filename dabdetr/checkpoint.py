"""Atomic file writes and the training checkpoint format.

A training checkpoint is a dict saved with torch.save, loadable with weights_only=True:

    format "dabdetr-train-checkpoint"; model (state dict); model_config, train_config (dicts);
    optimizer, scheduler, grad_scaler (state dicts, grad_scaler None without fp16 AMP);
    epoch (the number of finished epochs); step (the steps of the next epoch already done: 0, or
    more in a mid-epoch checkpoint) and epoch_totals (their loss sums, "steps" their count);
    best_ap (float or None); rng (every process's generator states).
"""

import os
import random
import tempfile

import numpy as np
import torch

TRAIN_CHECKPOINT_FORMAT = "dabdetr-train-checkpoint"


def atomic_write(path, write, binary=False):
    """Calls write(file) on a temporary file beside path, then renames it over path, so a crash
    leaves either the old file or the new one, never a partial one."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temporary name only
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_torch_save(obj, path):
    atomic_write(path, lambda f: torch.save(obj, f), binary=True)


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
    """A training checkpoint, with a clear error for a missing, corrupt or foreign file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no training checkpoint at {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated files and foreign pickles fail in several ways
        raise ValueError(f"{path}: cannot be read as a training checkpoint "
                         f"(torch.load(weights_only=True) failed: {error})") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != TRAIN_CHECKPOINT_FORMAT:
        kind = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path}: not a dabdetr training checkpoint (top-level keys: {kind}); --resume needs the "
                         "checkpoint.pt that `dabdetr train` writes. Pretrained weights go to --init instead")
    return checkpoint
