"""PlayCanvas splat-transform (npm @playcanvas/splat-transform) as an independent reader/writer.

scripts/setup.sh installs it into .tools/ when npm can reach its registry; tests that use it skip
when it is absent. ``SCENE3D_SPLAT_TRANSFORM`` may point at another executable.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def splat_transform_path() -> str | None:
    candidates = [os.environ.get("SCENE3D_SPLAT_TRANSFORM"), str(REPO / ".tools" / "node_modules" / ".bin" / "splat-transform")]
    for c in candidates:
        if c and Path(c).exists():
            return c
    return shutil.which("splat-transform")


def run_splat_transform(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run splat-transform with ``args`` (skips the test when it is not installed)."""
    exe = splat_transform_path()
    if exe is None:
        pytest.skip("splat-transform is not installed (scripts/setup.sh installs it when npm is reachable)")
    result = subprocess.run([exe, "-q", "-w", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"splat-transform {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
