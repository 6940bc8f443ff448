"""PlayCanvas splat-transform as an independent reader/writer in the tests (skipped when absent)."""

from __future__ import annotations

import subprocess

import pytest

from scene3d.export.splat_transform import find_splat_transform
from scene3d.export.splat_transform import run_splat_transform as _run


def splat_transform_path() -> str | None:
    return find_splat_transform()


def run_splat_transform(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run splat-transform with ``args`` (skips the test when it is not installed)."""
    exe = find_splat_transform()
    if exe is None:
        pytest.skip("splat-transform is not installed (scripts/setup.sh installs it when npm is reachable)")
    try:
        return _run(exe, *args, timeout=timeout)
    except RuntimeError as e:
        raise AssertionError(str(e)) from None
