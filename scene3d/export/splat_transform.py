"""PlayCanvas splat-transform (npm ``@playcanvas/splat-transform``), an independent tool that reads
and writes every scene format scene3d does. ``scripts/setup.sh`` installs it into ``.tools/`` when
npm can reach its registry; ``SCENE3D_SPLAT_TRANSFORM`` may point at another executable.
scene3d uses it only to check interoperability and as a reference in ``scene3d bench export``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def find_splat_transform() -> str | None:
    """The splat-transform executable, or None when it is not installed."""
    for candidate in (os.environ.get("SCENE3D_SPLAT_TRANSFORM"), str(REPO / ".tools" / "node_modules" / ".bin" / "splat-transform")):
        if candidate and Path(candidate).exists():
            return candidate
    return shutil.which("splat-transform")


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("XDG_RUNTIME_DIR", "/tmp")  # Dawn's Vulkan loader complains without one
    return env


def gpu_device_arg(exe: str) -> str:
    """``-g`` value for splat-transform's GPU work: the first WebGPU adapter it lists (a real GPU,
    or Mesa's lavapipe on CPU-only machines, which is far faster than its JavaScript k-means),
    else ``cpu``."""
    import re

    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=120, env=_env())
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"
    m = re.search(r"^\[(\d+)\]", out.stdout + out.stderr, flags=re.M)
    return m.group(1) if m else "cpu"


def run_splat_transform(exe: str, *args: str, timeout: float = 1800, progress: bool = False) -> subprocess.CompletedProcess:
    """Run it, overwriting outputs; raises RuntimeError with its output when it fails.

    Quiet by default; with ``progress`` its own progress bars go to our stderr (for long runs such
    as a large SOG's k-means), and the error then points there instead of quoting them."""
    import sys

    if progress:
        result = subprocess.run([exe, "-w", "--tty", *args], stdout=sys.stderr, stderr=sys.stderr, timeout=timeout, env=_env())
        if result.returncode != 0:
            raise RuntimeError(f"splat-transform {' '.join(args)} failed ({result.returncode}); its output is above")
        return result
    result = subprocess.run([exe, "-q", "-w", *args], capture_output=True, text=True, timeout=timeout, env=_env())
    if result.returncode != 0:
        raise RuntimeError(f"splat-transform {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result
