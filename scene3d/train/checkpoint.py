"""Atomic checkpoint files: written to a temporary file in the same folder, then renamed."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from scene3d.errors import DataError


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to ``path`` without ever leaving a half-written file there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: Path) -> dict:
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: any unpickling error
        raise DataError(path, f"is not a readable scene3d checkpoint ({type(e).__name__}: {e})") from None
