"""Atomic file writes: the one way scene3d puts a file in place.

A file is written to a temporary name in its own folder and renamed over the target once it is
complete (and flushed), so a reader sees either the old file or the whole new one, never half of
one, and a failed or killed write leaves what was there before. :func:`atomic_write` takes the
bytes (or a function writing them to an open file); :func:`atomic_path` gives a temporary path for
libraries that want to open the file themselves (``torch.save``, PIL, imageio).

A write that fails in the file system (the target is a folder, its folder is read-only, the disk is
full) is one :class:`~scene3d.errors.DataError` naming the target and the reason. A killed process
cannot clean up its temporary file; :func:`remove_stale_temporaries` does so at the next start.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from scene3d.errors import DataError

_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp.*$")


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp{suffix}"


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; when the block ends normally the file written there
    replaces ``path``, otherwise it is removed and ``path`` is untouched. ``suffix`` (default:
    ``path``'s own) ends the temporary name, for writers that choose the format by extension."""
    path = Path(path)
    tmp = _temporary_name(path, path.suffix if suffix is None else suffix)
    try:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        nearest = next((p for p in path.parents if p.exists()), None)
        if nearest is not None and not nearest.is_dir():  # mkdir would only say "file exists"
            raise NotADirectoryError(errno.ENOTDIR, f"{nearest.name} is not a directory", str(nearest))
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise DataError(path, f"could not be written ({_reason(e)})") from e
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _reason(e: OSError) -> str:
    """The system's words for an OSError, without the repeated path."""
    if e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    return str(e) or type(e).__name__


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


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Removes the temporary files that killed writers left in ``folder`` (names this module makes,
    whose process is gone); returns what was removed. Files of live writers are kept."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMPORARY.match(p.name)
        if m and p.is_file() and not _process_alive(int(m["pid"])):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed
