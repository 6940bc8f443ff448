"""Running the scene3d CLI as a user would, in a subprocess (shared by the CLI tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = REPO / "data" / "default_scene"


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """``python -m scene3d ARGS``, its output captured."""
    return subprocess.run([sys.executable, "-m", "scene3d", *args], capture_output=True, text=True, timeout=timeout)
