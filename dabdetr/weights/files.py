"""Checkpoint files on disk: atomic writes (a crash leaves the old file or the new one, never a
partial one) and torch.load(weights_only=True) with errors that say what is wrong with a file."""

import os
import tempfile
import zipfile

import torch


def atomic_write(path, write, binary=False):
    """Calls write(file) on a temporary file beside path, then renames it over path, so a crash
    leaves either the old file or the new one, never a partial one. Missing folders of path are
    created, as for an --output-dir."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
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
