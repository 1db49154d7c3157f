"""Checkpoints: written atomically, named after their model, read back with clear errors.

A checkpoint is one ``torch.save`` file holding the model name, the run's config, the data state (vocabulary,
normaliser...), the weights, the optimizer, scheduler and grad-scaler states, the position in training (epoch,
step within the epoch, global step), the best validation metric so far, the history and every RNG state — so a
resumed run continues exactly where the saved one stopped.
"""

from __future__ import annotations

import errno
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

FORMAT = "deepfuse-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, truncated, not deepfuse's, or of another model."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (``disk_full``: no space left); the file it replaces is intact."""

    def __init__(self, path: Path, message: str, disk_full: bool) -> None:
        super().__init__(f"{path}: {message}")
        self.path, self.disk_full = path, disk_full


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """An OSError "no space left" (or quota exceeded), or torch.save's own words for a short write."""
    if isinstance(error, OSError):
        return error.errno in DISK_FULL_ERRNOS
    text = str(error)
    return isinstance(error, RuntimeError) and ("unexpected pos" in text or "file write failed" in text)


def save_atomically(payload: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename over ``path``: a run killed at any
    moment leaves either the old file or the new one, never a truncated one. A failed write (a full disk, a
    folder made read-only) raises CheckpointWriteError; the old file stands."""
    path = Path(path)
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        if is_disk_full(error):
            raise CheckpointWriteError(path, "the disk is full", disk_full=True) from None
        if isinstance(error, OSError):
            raise CheckpointWriteError(path, f"cannot write ({error.strerror or error})", disk_full=False) from None
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def load_checkpoint(path: str | Path, model_name: str | None = None) -> dict:
    """The checkpoint at ``path``; raises CheckpointError naming the file when it is not a usable one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated, corrupt or not a torch file at all
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a deepfuse training checkpoint (expected format {FORMAT!r})")
    if model_name is not None and payload["model"] != model_name:
        raise CheckpointError(f"{path}: a checkpoint of model {payload['model']!r}, not {model_name!r}")
    return payload


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
