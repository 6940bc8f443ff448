"""The ``scene3d`` command end to end: help, info on the embedded scene, and the README's main job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scene3d.align import camera_pose_agreement
from scene3d.data import DataConfig, load_dataset

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = REPO / "data" / "default_scene"


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scene3d", *args], capture_output=True, text=True, timeout=timeout)


def test_help_is_light():
    """`scene3d --help` must not import torch, pycolmap or open3d."""
    code = "import sys; from scene3d.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\nprint(sorted(m for m in ('torch', 'pycolmap', 'open3d') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "process" in out and "info" in out
    assert out.strip().splitlines()[-1] == "[]"


def test_info_json_on_embedded_scene():
    result = run("info", str(DEFAULT_SCENE), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["format"] == "nerfstudio"
    assert info["num_cameras"] == 44 and info["num_train"] + info["num_test"] == 44 and info["num_test"] == 6
    assert info["image_size"] == [400, 300]
    assert info["num_points"] > 10_000


def test_info_table_downscaled():
    result = run("info", str(DEFAULT_SCENE), "--downscale", "2")
    assert result.returncode == 0, result.stderr
    assert "200x150" in result.stdout and "nerfstudio" in result.stdout


@pytest.mark.slow
def test_readme_main_job_recovers_the_known_cameras(tmp_path):
    """`scene3d process` on the embedded images registers all of them, and the poses match the
    ground truth the images were rendered with, up to a similarity."""
    out = tmp_path / "scene"
    result = run("process", str(DEFAULT_SCENE / "images"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "process_summary.json").read_text())
    assert summary["num_registered"] == 44 and summary["unregistered"] == []
    info = json.loads(run("info", str(out), "--json").stdout)
    assert info["format"] == "colmap" and info["num_cameras"] == 44 and info["num_points"] > 1000

    sfm = load_dataset(out, DataConfig(normalize=False))
    truth = load_dataset(DEFAULT_SCENE, DataConfig(normalize=False))
    names = [Path(n).name for n in truth.names]
    order = [sfm.names.index(n) for n in names]
    agreement = camera_pose_agreement(sfm.cameras.cam_to_world.double().numpy()[order], truth.cameras.cam_to_world.double().numpy())
    assert agreement["centre_error_rel_median"] < 0.01
    assert agreement["rotation_error_deg_median"] < 0.5
    assert float(np.abs(sfm.cameras.fx.numpy() / truth.cameras.fx.numpy() - 1).max()) < 0.01
