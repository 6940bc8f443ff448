"""Structure from motion (``scene3d process``): bad input fails with one clear sentence; real scenes register.

The real-scene tests use ../shared/data beside the repository (or $SCENE3D_SHARED_DATA) and skip
when it is absent; they are marked slow (tens of seconds each on two CPU cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scene3d.align import camera_pose_agreement
from scene3d.data.sfm import ProcessConfig, prepare_images, run_process
from scene3d.errors import DataError, Scene3dError, SfmError

SHARED_DATA = Path(os.environ.get("SCENE3D_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])
FAST = {"num_threads": 2}


def shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"shared data {path} is absent")
    return path


def noise_image(path: Path, size: tuple[int, int] = (128, 96), seed: int = 0, exif: Image.Exif | None = None) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, exif=exif or Image.Exif())


def sfm_c2w(model_dir: Path) -> dict[str, np.ndarray]:
    """Image name -> [4, 4] OpenCV camera-to-world of each registered image."""
    import pycolmap

    poses = {}
    for image in pycolmap.Reconstruction(model_dir).images.values():
        if image.has_pose:
            c2w = np.eye(4)
            c2w[:3, :4] = image.cam_from_world().inverse().matrix()
            poses[image.name] = c2w
    return poses


# ------------------------------------------------------------------------------ bad input (fast)
def test_missing_folder(tmp_path):
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DataError, match="does not exist") as err:
        run_process(missing, tmp_path / "out", ProcessConfig())
    assert str(missing) in str(err.value)


def test_a_file_instead_of_a_folder(tmp_path):
    noise_image(tmp_path / "a.png")
    with pytest.raises(DataError, match="not a folder") as err:
        run_process(tmp_path / "a.png", tmp_path / "out", ProcessConfig())
    assert str(tmp_path / "a.png") in str(err.value)


def test_empty_folder(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError, match="is empty") as err:
        run_process(tmp_path / "photos", tmp_path / "out", ProcessConfig())
    assert str(tmp_path / "photos") in str(err.value)
    assert not (tmp_path / "out").exists()


def test_folder_without_images(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("notes.txt", "readme.txt"):
        (photos / name).write_text("not an image")
    noise_image(photos / "sub" / "hidden.png")
    with pytest.raises(DataError, match="no image files") as err:
        run_process(photos, tmp_path / "out", ProcessConfig())
    assert str(photos) in str(err.value)


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_corrupt_jpeg_is_named(tmp_path, kind):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        noise_image(photos / f"good_{i}.jpg", seed=i)
    bad = photos / "bad.jpg"
    if kind == "truncated":
        data = (photos / "good_0.jpg").read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="not a readable image") as err:
        run_process(photos, tmp_path / "out", ProcessConfig())
    assert str(bad) in str(err.value)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]  # no staging folder left behind


def test_noise_images_do_not_register(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        noise_image(photos / f"{i}.png", seed=i)
    with pytest.raises(SfmError) as err:
        run_process(photos, tmp_path / "out", ProcessConfig(**FAST))
    message = str(err.value)
    assert str(photos) in message and "of 4 images" in message
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["photos"]


@pytest.mark.parametrize("gps", [True, False])
def test_spatial_matcher_uses_gps_or_falls_back(tmp_path, caplog, gps):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        exif = Image.Exif()
        if gps:
            exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0 + i), 3: "E", 4: (2.0, 20.0, 10.0), 6: 100.0}
        noise_image(photos / f"{i}.jpg", seed=i, exif=exif)
    with caplog.at_level("WARNING", logger="scene3d.data.sfm"), pytest.raises(SfmError, match="of 3 images"):
        run_process(photos, tmp_path / "out", ProcessConfig(matcher="spatial", **FAST))
    assert any("falls back" in r.getMessage() for r in caplog.records) != gps


def test_non_empty_output_needs_overwrite(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        noise_image(photos / f"{i}.png", seed=i)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(DataError, match="overwrite") as err:
        run_process(photos, out, ProcessConfig())
    assert str(out) in str(err.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="not a folder"):
        run_process(photos, tmp_path / "file", ProcessConfig())


def test_input_inside_output_images_is_refused(tmp_path):
    photos = tmp_path / "scene" / "images"
    photos.mkdir(parents=True)
    for i in range(3):
        noise_image(photos / f"{i}.png", seed=i)
    with pytest.raises(DataError, match="choose another output") as err:
        run_process(photos, tmp_path / "scene", ProcessConfig(overwrite=True))
    assert str(photos) in str(err.value)
    assert len(list(photos.iterdir())) == 3


def test_too_few_images(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        noise_image(photos / f"{i}.png", seed=i)
    with pytest.raises(DataError, match="only 2 image") as err:
        run_process(photos, tmp_path / "out", ProcessConfig())
    assert str(photos) in str(err.value)


@pytest.mark.parametrize("field, value", [("max_size", -1), ("max_size", 8), ("min_registered", 1), ("sift_max_features", 0)])
def test_bad_option_values(tmp_path, field, value):
    with pytest.raises(Scene3dError, match=field.replace("_", "-")):
        run_process(tmp_path, tmp_path / "out", ProcessConfig(**{field: value}))


def test_different_sizes_cannot_share_one_camera(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    noise_image(photos / "a.png", (128, 96))
    noise_image(photos / "b.png", (96, 128))
    noise_image(photos / "c.png", (96, 128))
    with pytest.raises(DataError, match="different sizes") as err:
        run_process(photos, tmp_path / "out", ProcessConfig(single_camera=True))
    assert str(photos) in str(err.value)


def test_config_import_is_light():
    heavy = "{'pycolmap', 'torch', 'open3d', 'PIL'}"
    code = f"import sys, scene3d.data.sfm as m; m.ProcessConfig(); print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "[]"


def test_prepare_images_downscales_rotates_and_keeps_exif(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90 degrees clockwise
    exif[0x8825] = {1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 20.0, 10.0)}
    noise_image(src / "big.jpg", (400, 300), exif=exif)
    noise_image(src / "small.png", (100, 60))
    sizes = prepare_images(sorted(src.iterdir()), dst, max_size=200)
    assert sizes == {"big.jpg": (150, 200), "small.png": (100, 60)}
    with Image.open(dst / "big.jpg") as big:
        assert big.size == (150, 200)
        assert big.getexif().get(0x0112, 1) == 1
        assert big.getexif().get_ifd(0x8825)[1] == "N"
    assert (dst / "small.png").read_bytes() == (src / "small.png").read_bytes()


# ------------------------------------------------------------------------------ real scenes (slow)
@pytest.mark.slow
def test_sacre_coeur_registers_all_ten(tmp_path):
    photos = shared("sacre_coeur/mapping")
    import pycolmap

    start = time.perf_counter()
    summary = run_process(photos, tmp_path / "scene", ProcessConfig())
    print(f"sacre_coeur SfM: {time.perf_counter() - start:.1f} s")

    assert summary["num_images"] == 10 and summary["num_registered"] == 10 and summary["unregistered"] == []
    assert summary["registered_fraction"] == 1.0 and summary["matcher"] == "exhaustive"
    assert summary["mean_reprojection_error_px"] < 1.5 and summary["num_points"] > 500
    written = json.loads((tmp_path / "scene" / "process_summary.json").read_text())
    keys = {"num_images", "num_registered", "registered_fraction", "num_points", "mean_reprojection_error_px",
            "unregistered", "matcher", "camera_model", "seconds", "max_size"}
    assert keys <= set(written) and written["num_points"] == summary["num_points"]

    model = pycolmap.Reconstruction(tmp_path / "scene" / "sparse" / "0")
    assert model.num_reg_images() == 10 and model.num_points3D() == summary["num_points"]
    assert model.num_cameras() == 10  # photos of different sizes: one camera each
    images = sorted(p.name for p in (tmp_path / "scene" / "images").iterdir())
    assert images == sorted(p.name for p in photos.iterdir())
    assert sorted(image.name for image in model.images.values()) == images
    assert (tmp_path / "scene" / "database.db").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["scene"]


def fox_subset(tmp_path: Path, count: int) -> tuple[Path, dict[str, np.ndarray]]:
    """The first ``count`` fox images that exist, copied to tmp, with their OpenCV c2w from transforms.json."""
    root = shared("fox")
    meta = json.loads((root / "transforms.json").read_text())
    reference = {}
    for frame in meta["frames"]:
        path = root / frame["file_path"]
        if path.is_file():
            reference[path.name] = np.asarray(frame["transform_matrix"]) @ OPENGL_TO_OPENCV
    photos = tmp_path / "photos"
    photos.mkdir()
    names = sorted(reference)[:count]
    for name in names:
        shutil.copyfile(root / "images" / name, photos / name)
    return photos, {name: reference[name] for name in names}


@pytest.mark.slow
def test_fox_poses_agree_with_transforms_json(tmp_path):
    # 25 images at 405x720 take about 19 s. The rotation error is mostly a constant 0.65 degree
    # tilt in the camera frame: transforms.json has its principal point 14.6 px and 5.3 px off the
    # image centre (at 1080x1920), while COLMAP keeps it at the centre. With only the first 20
    # images (a shorter arc) the error grows to about 1 degree.
    photos, reference = fox_subset(tmp_path, 25)
    start = time.perf_counter()
    summary = run_process(photos, tmp_path / "scene", ProcessConfig(max_size=720))
    print(f"fox 25 images SfM: {time.perf_counter() - start:.1f} s")

    assert summary["num_registered"] == 25
    with Image.open(tmp_path / "scene" / "images" / "0001.jpg") as image:
        assert image.size == (405, 720)
    estimated = sfm_c2w(tmp_path / "scene" / "sparse" / "0")
    names = sorted(estimated)
    agreement = camera_pose_agreement(np.stack([estimated[n] for n in names]), np.stack([reference[n] for n in names]))
    print(agreement)
    assert agreement["centre_error_rel_median"] < 0.02
    assert agreement["rotation_error_deg_median"] < 1.0


@pytest.mark.slow
def test_fox_undistort_and_overwrite(tmp_path):
    import pycolmap

    photos, _ = fox_subset(tmp_path, 8)
    out = tmp_path / "scene"
    (out / "sparse" / "0").mkdir(parents=True)
    (out / "sparse" / "0" / "stale.bin").write_bytes(b"old")
    (out / "notes.txt").write_text("kept")
    cfg = ProcessConfig(max_size=480, camera_model="OPENCV", undistort=True, overwrite=True, **FAST)
    summary = run_process(photos, out, cfg)

    assert summary["undistorted"] and summary["num_registered"] >= 6
    assert (out / "notes.txt").read_text() == "kept" and not (out / "sparse" / "0" / "stale.bin").exists()
    model = pycolmap.Reconstruction(out / "sparse" / "0")
    assert {camera.model_name for camera in model.cameras.values()} == {"PINHOLE"}
    registered = {image.name: image for image in model.images.values() if image.has_pose}
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(registered)
    for name, image in registered.items():
        with Image.open(out / "images" / name) as file:
            assert file.size == (image.camera.width, image.camera.height)
