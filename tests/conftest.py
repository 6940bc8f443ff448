"""Shared fixtures: the real scenes in ../shared/data (tests skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import scene3d  # noqa: F401  (first, so its OpenMP setting reaches torch)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCENE3D_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_scene(name: str) -> Path:
    """Path of a scene in ../shared/data, skipping the test when it is not there."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared data {path} is absent")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Downscaled-image caches go to a per-session temporary folder, never to ~/.cache."""
    monkeypatch.setenv("SCENE3D_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "scene3d-cache"))


@pytest.fixture(scope="session")
def short_run(tmp_path_factory) -> Path:
    """A 3dgs run of the embedded default scene, 40 steps at --downscale 4, trained once per session
    through the CLI. Tests only read it (they write their outputs elsewhere)."""
    from tests.runs import DEFAULT_SCENE, cli

    out = tmp_path_factory.mktemp("short_run") / "run"
    r = cli("train", str(DEFAULT_SCENE), "-o", str(out), "--preset", "short", "--max-steps", "40", "--downscale", "4")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def slim_run(tmp_path_factory) -> Path:
    """A small slimmerf run of a synthetic scene (150 steps, rank 4), trained once per session in process."""
    from scene3d.cli import main
    from tests.synthetic import write_synthetic_scene

    root = tmp_path_factory.mktemp("slim")
    scene = write_synthetic_scene(root / "scene", n_views=10, width=40, height=30, points=False)  # a radiance field needs no points
    out = root / "run"
    args = ["train", str(scene), "-o", str(out), "--model", "slimmerf", "--max-steps", "150", "--model.batch-rays", "256", "--model.lr-grid", "0.05",
            "--model.grid-init", "24", "--model.grid-final", "32", "--model.upsample-steps", "100", "--model.alpha-mask-steps", "120",
            "--model.rank", "4", "--model.rank-upsilon", "0.0", "--model.rank-cooldown", "5", "--model.occupancy-resolution", "24",
            "--model.max-samples", "96", "--log-every", "10"]
    assert main(args) == 0
    return out
