"""Bad input ends in one clear sentence naming the file, through the library and through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_scene
from scene3d.data import load_dataset
from scene3d.errors import DataError
from test_readers import ring_poses, write_scene


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scene3d", *args], capture_output=True, text=True, timeout=300)


def assert_one_clear_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    err = result.stderr.strip()
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("scene3d: error:")]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def good_scene(tmp_path: Path) -> Path:
    poses = ring_poses(4)
    frames = [{"file_path": f"images/{k}.png", "transform_matrix": poses[k]} for k in range(4)]
    return write_scene(tmp_path, frames, fl_x=30.0, w=32, h=24)


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="not a recognised scene"):
        load_dataset(tmp_path)
    assert_one_clear_error(cli("info", str(tmp_path)), str(tmp_path), "not a recognised scene")


def test_missing_folder(tmp_path):
    assert_one_clear_error(cli("info", str(tmp_path / "nope")), "nope", "does not exist")


def test_non_image_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "data.csv").write_text("1,2,3")
    assert_one_clear_error(cli("info", str(tmp_path)), str(tmp_path), "not a recognised scene")


def test_images_without_poses_point_to_process(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.jpg")
    assert_one_clear_error(cli("info", str(tmp_path)), "scene3d process")


def test_malformed_json(tmp_path):
    root = good_scene(tmp_path)
    (root / "transforms.json").write_text('{"frames": [ {"file_path": ')
    assert_one_clear_error(cli("info", str(root)), "transforms.json", "not valid JSON")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("frames"), "no 'frames' list"),
        (lambda d: d["frames"][1].pop("transform_matrix"), r"frame 1 \(images/1.png\) has no transform_matrix"),
        (lambda d: d["frames"][2].pop("file_path"), "frame 2 has no file_path"),
        (lambda d: d.pop("fl_x"), "no focal length"),
        (lambda d: d["frames"][0].update(transform_matrix=[[float("nan")] * 4] * 4), "not a finite 4x4 matrix"),
        (lambda d: d["frames"][0].update(transform_matrix="eye"), "not a matrix of numbers"),
        (lambda d: d.update(camera_model="EQUIRECTANGULAR"), "camera_model"),
    ],
)
def test_missing_or_bad_keys(tmp_path, mutate, message):
    root = good_scene(tmp_path)
    data = json.loads((root / "transforms.json").read_text())
    mutate(data)
    (root / "transforms.json").write_text(json.dumps(data))
    with pytest.raises(DataError, match=message) as info:
        load_dataset(root)
    assert "transforms.json" in str(info.value)


def test_all_frames_missing(tmp_path):
    root = good_scene(tmp_path)
    shutil.rmtree(root / "images")
    assert_one_clear_error(cli("info", str(root)), "transforms.json", "none of their images exist")


def test_corrupt_jpeg_in_dataset(tmp_path):
    root = good_scene(tmp_path)
    (root / "images" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(40))
    assert_one_clear_error(cli("info", str(root)), "1.png", "not a readable image")


def test_truncated_image_data_is_reported_on_load(tmp_path):
    from PIL import Image

    root = good_scene(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / "images" / "2.png")
    data = (root / "images" / "2.png").read_bytes()
    (root / "images" / "2.png").write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    ds = load_dataset(root)
    with pytest.raises(DataError, match="2.png"):
        ds.image(ds.names.index("images/2.png"))


@pytest.mark.parametrize("name", ["images.bin", "cameras.bin", "points3D.bin"])
def test_truncated_colmap_binary(tmp_path, name):
    src = shared_scene("colmap_figurine")
    shutil.copytree(src / "sparse", tmp_path / "sparse")
    (tmp_path / "images").symlink_to(src / "images")
    f = tmp_path / "sparse" / "0" / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_one_clear_error(cli("info", str(tmp_path), "--allow-outside-paths"), name, "truncated or corrupt")


def test_colmap_image_missing_on_disk(tmp_path):
    src = shared_scene("colmap_figurine")
    shutil.copytree(src / "sparse", tmp_path / "sparse")
    (tmp_path / "images").mkdir()
    for p in sorted((src / "images").iterdir())[1:]:
        (tmp_path / "images" / p.name).symlink_to(p)
    assert_one_clear_error(cli("info", str(tmp_path), "--allow-outside-paths"), "DSC_5283.jpg", "not found")


def test_bad_llff_array(tmp_path):
    np.save(tmp_path / "poses_bounds.npy", np.zeros((3, 12)))
    assert_one_clear_error(cli("info", str(tmp_path)), "poses_bounds.npy", "[N, 17]")


def test_debug_shows_traceback(tmp_path):
    result = cli("info", str(tmp_path), "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr
