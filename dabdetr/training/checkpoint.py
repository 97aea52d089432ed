"""Atomic file writes, reading torch checkpoint files with clear errors, and the training
checkpoint format with the files a run keeps.

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
import tempfile
import zipfile

import numpy as np
import torch

TRAIN_CHECKPOINT_FORMAT = "dabdetr-train-checkpoint"
LATEST = "checkpoint.pt"  # the newest state: every epoch's end and every mid-epoch checkpoint
BEST = "best.pt"
EPOCH_PATTERN = "checkpoint_epoch{:04d}.pt"  # the state after that many epochs (keep_last of them)

logger = logging.getLogger("dabdetr")


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


def read_torch_file(path, load=None):
    """torch.load(path, weights_only=True) on the CPU (or load(path)), with errors that say what is
    wrong: missing, truncated or corrupt (torch.save writes a zip archive), or unreadable."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        return load(path) if load else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated archives and foreign pickles fail in several ways
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            start = f.read(4)
        is_zip_start = start == b"PK\x03\x04"
        if size and not is_zip_start and not start.startswith(b"\x80"):  # pickle protocol 2+ opcode
            raise ValueError(f"{path}: not a checkpoint (torch.save writes a zip archive or a pickle; this file "
                             f"starts with {start!r})") from error
        if size == 0 or (is_zip_start and not zipfile.is_zipfile(path)):
            raise ValueError(f"{path}: the file is truncated or corrupt ({size} bytes; torch.save writes a complete "
                             "zip archive, this one is cut off)") from error
        if is_zip_start:
            try:
                zipfile.ZipFile(path).testzip()
            except (zipfile.BadZipFile, OSError, EOFError) as bad:
                raise ValueError(f"{path}: the file is corrupt ({bad})") from error
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:
            unsafe = []
        advice = (f"; it pickles objects that weights_only loading refuses ({unsafe}): save just its state dict "
                  "(torch.save(checkpoint['model'], path)) and load that") if unsafe else ""
        raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True): {error}{advice}") from error


def load_train_checkpoint(path):
    """A training checkpoint, with a clear error for a missing, truncated, corrupt or foreign file."""
    if os.path.isdir(path):
        from dabdetr.pretrained import directory_source  # late: pretrained reads files with this module

        try:
            kind = {"dabdetr": "a dabdetr model directory (save_pretrained)",
                    "huggingface": "a Hugging Face DAB-DETR model directory"}[directory_source(path)]
        except ValueError:
            kind = "a directory"
        raise ValueError(f"{path} is {kind}, not a training checkpoint: --resume takes the {LATEST} that `dabdetr "
                         f"train` writes (or 'auto' with --output-dir); to start training from these weights, use "
                         f"--init {path}")
    checkpoint = read_torch_file(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != TRAIN_CHECKPOINT_FORMAT:
        kind = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"{path}: not a dabdetr training checkpoint (top-level keys: {kind}); --resume needs the "
                         f"{LATEST} that `dabdetr train` writes. Pretrained weights go to --init instead")
    return checkpoint


def epoch_checkpoints(output_dir):
    """The epoch checkpoints of a run, oldest first."""
    return sorted(glob.glob(os.path.join(output_dir, EPOCH_PATTERN.replace("{:04d}", "[0-9]" * 4))))


def resume_candidates(output_dir):
    """The checkpoints of a run, newest first: checkpoint.pt, the epoch checkpoints, best.pt."""
    names = [os.path.join(output_dir, LATEST), *reversed(epoch_checkpoints(output_dir)), os.path.join(output_dir, BEST)]
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
        os.link(os.path.join(output_dir, LATEST), tmp)
    except OSError:
        shutil.copyfile(os.path.join(output_dir, LATEST), tmp)
    os.replace(tmp, path)
    for old in epoch_checkpoints(output_dir)[:-keep_last]:
        os.unlink(old)
