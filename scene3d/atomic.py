"""Atomic file writes: the one way scene3d puts a file in place.

A file is written to a temporary name in its own folder and renamed over the target once it is
complete (and flushed), so a reader sees either the old file or the whole new one, never half of
one, and a failed or killed write leaves what was there before. :func:`atomic_write` takes the
bytes (or a function writing them to an open file); :func:`atomic_path` gives a temporary path for
libraries that want to open the file themselves (``torch.save``, PIL, imageio).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}"


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block ends normally the file written there
    replaces ``path``, otherwise it is removed and ``path`` is untouched. ``suffix`` (default:
    ``path``'s own) ends the temporary name, for writers that choose the format by extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, path.suffix if suffix is None else suffix)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None] | bytes | str) -> Path:
    """Writes ``path`` atomically from bytes, text (UTF-8) or a function that writes to the open
    binary file. The folder is created if needed; on any error an existing ``path`` is kept."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            if callable(write):
                write(f)
            else:
                f.write(write.encode() if isinstance(write, str) else write)
            f.flush()
    return path
