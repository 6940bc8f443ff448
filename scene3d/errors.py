"""User-facing errors.

Anything the user can fix (a missing file, a corrupt image, a malformed model) is raised as a
:class:`Scene3dError` whose message is one sentence naming the file and the problem. The CLI prints
that sentence and exits non-zero; the traceback is shown only with ``--debug``.
"""

from __future__ import annotations

from pathlib import Path


class Scene3dError(Exception):
    """An error caused by the user's input, reported as one clear sentence."""


class DataError(Scene3dError):
    """A dataset, image or model file is missing, unreadable or inconsistent."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SfmError(Scene3dError):
    """Structure-from-motion could not produce a usable reconstruction."""
