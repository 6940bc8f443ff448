"""Readers for every supported format, on the real scenes in ../shared/data and on built cases."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_scene
from scene3d.cameras import CameraModel, opencv_to_opengl_c2w, quaternion_to_matrix
from scene3d.data import DataConfig, detect_format, load_dataset
from scene3d.data.colmap_io import read_model


# ---------------------------------------------------------------------- real scenes
def test_fox_transforms_json_skips_missing_frames_with_one_warning(caplog):
    root = shared_scene("fox")
    with caplog.at_level("WARNING", logger="scene3d.data"):
        ds = load_dataset(root)
    assert ds.format == "nerfstudio" and len(ds) == 50
    warnings = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert len(warnings) == 1 and "17 of 67" in warnings[0]
    assert ds.meta["aabb_scale"] == 4
    assert set(CameraModel(int(m)) for m in ds.cameras.model) == {CameraModel.OPENCV}
    assert ds.cameras.dist[0].tolist() == pytest.approx([0.0578421, -0.0805099, -0.000980296, 0.00015575])
    assert len(ds.test_indices) == 7 and len(ds.train_indices) == 43  # every 8th of 50
    # Normalised: cameras inside the unit sphere, up is +z (camera -y axes point up on average).
    assert ds.cameras.centers.norm(dim=-1).max() <= 1.0 + 1e-4
    assert (-ds.cameras.cam_to_world[:, :3, 1]).mean(0)[2] > 0.9


def test_fox_downscale_uses_disk_cache():
    ds = load_dataset(shared_scene("fox"), DataConfig(downscale=4))
    assert ds.image(0).shape == (480, 270, 3)
    assert all(p.suffix == ".png" and p.is_file() for p in ds.image_paths)
    full = load_dataset(shared_scene("fox"))
    assert torch.allclose(ds.cameras.fx * 4, full.cameras.fx, rtol=1e-5)


def test_lego_blender_split_and_background():
    ds = load_dataset(shared_scene("lego_400"), DataConfig(downscale=2, background=(1.0, 1.0, 1.0)))
    assert ds.format == "blender" and len(ds.train_indices) == 100 and len(ds.test_indices) == 100
    assert ds.meta["test_split_from"] == "val"
    img, alpha = ds.image(0), ds.alpha(0)
    assert img.shape == (200, 200, 3) and alpha is not None
    assert torch.allclose(img[alpha == 0], torch.ones(3))  # transparent pixels show the background
    black = load_dataset(shared_scene("lego_400"), DataConfig(downscale=2, background=(0.0, 0.0, 0.0)))
    assert torch.allclose(black.image(0)[alpha == 0], torch.zeros(3))
    fx = 0.5 * 200 / np.tan(0.5 * 0.6911112070083618)
    assert float(ds.cameras.fx[0]) == pytest.approx(fx, rel=1e-4)


def test_colmap_points_project_onto_their_observations():
    """Loaded cameras + loaded points reproduce COLMAP's recorded 2D observations within 1 px."""
    root = shared_scene("colmap_figurine")
    for factor in (1, 2):
        ds = load_dataset(root, DataConfig(downscale=factor))
        model = read_model(root / "sparse" / "0")
        id_to_row = {int(p): i for i, p in enumerate(model.point_ids)}
        xyz_norm = torch.from_numpy(model.xyz @ ds.transform[:3, :3].T + ds.transform[:3, 3]).float()
        errors = []
        for im in model.images.values():
            i = ds.names.index(im.name)
            keep = im.point3D_ids >= 0
            rows = [id_to_row[int(p)] for p in im.point3D_ids[keep]]
            uv, z = ds.cameras[i].project(xyz_norm[rows])
            assert (z > 0).all()
            errors.append(torch.linalg.norm(uv[0] - torch.from_numpy(im.xys[keep]).float() / factor, dim=-1))
        err = torch.cat(errors)
        assert err.max() < 1.0 * 4 / factor and err.mean() < 1.0, f"mean {err.mean():.3f} px at 1/{factor}"
    assert ds.num_points >= 1400  # 1,443 points, a few outliers dropped


def test_colmap_text_model_and_several_models_pick_largest(tmp_path):
    import pycolmap

    src = shared_scene("colmap_figurine")
    rec = pycolmap.Reconstruction(str(src / "sparse" / "0"))
    big, small = tmp_path / "sparse" / "1", tmp_path / "sparse" / "0"
    big.mkdir(parents=True)
    small.mkdir(parents=True)
    rec.write_text(str(big))  # text format, with the rigs/frames files pycolmap 4 writes
    rec.write(str(small))
    # Make sparse/0 a smaller model: keep its first 5 images only.
    lines = (big / "images.txt").read_text().splitlines()
    header = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if not ln.startswith("#")]
    (small / "images.bin").unlink()
    (small / "images.txt").write_text("\n".join(header + body[:10]) + "\n")
    for name in ("cameras.bin", "points3D.bin"):
        (small / name).unlink()
    shutil.copy(big / "cameras.txt", small / "cameras.txt")
    (tmp_path / "images").symlink_to(src / "images")  # outside the scene folder: allowed by the flag
    ds_txt = load_dataset(tmp_path, DataConfig(normalize=False, allow_outside_paths=True))
    ds_bin = load_dataset(src, DataConfig(normalize=False))
    assert ds_txt.meta["model_dir"].endswith("sparse/1") and len(ds_txt) == 23
    assert ds_txt.names == ds_bin.names
    assert torch.allclose(ds_txt.cameras.world_to_cam, ds_bin.cameras.world_to_cam, atol=1e-5)
    assert torch.allclose(ds_txt.cameras.fx, ds_bin.cameras.fx)
    assert ds_txt.num_points == ds_bin.num_points


def test_colmap_binary_with_rigs_and_frames(tmp_path):
    import pycolmap

    src = shared_scene("colmap_figurine")
    out = tmp_path / "sparse" / "0"
    out.mkdir(parents=True)
    pycolmap.Reconstruction(str(src / "sparse" / "0")).write(str(out))
    assert (out / "rigs.bin").exists() and (out / "frames.bin").exists()
    (tmp_path / "images").symlink_to(src / "images")
    ds = load_dataset(tmp_path, DataConfig(allow_outside_paths=True))
    assert detect_format(tmp_path) == "colmap" and len(ds) == 23


def test_llff_matches_the_colmap_poses_it_came_from(tmp_path):
    src = shared_scene("colmap_figurine")
    ref = load_dataset(src, DataConfig(normalize=False, test_every=0))
    c2w = ref.cameras.cam_to_world.double()
    right, down, fwd, t = c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3]
    w, h, f = ref.cameras.width.double(), ref.cameras.height.double(), ref.cameras.fx.double()
    hwf = torch.stack([h, w, f], -1)
    poses = torch.stack([down, right, -fwd, t, hwf], dim=-1)  # [N, 3, 5]
    bounds = torch.tensor([[0.5, 10.0]]).expand(len(ref), 2).double()
    arr = torch.cat([poses.reshape(-1, 15), bounds], -1).numpy()
    np.save(tmp_path / "poses_bounds.npy", arr)
    (tmp_path / "images").mkdir()
    for i, p in enumerate(ref.source_paths):
        (tmp_path / "images" / f"img_{i:03d}.jpg").symlink_to(p)
    ds = load_dataset(tmp_path, DataConfig(normalize=False, allow_outside_paths=True))
    assert ds.format == "llff" and len(ds) == 23
    assert torch.allclose(ds.cameras.world_to_cam, ref.cameras.world_to_cam, atol=1e-5)
    assert torch.allclose(ds.cameras.fx, ref.cameras.fx) and ds.near_far.shape == (23, 2)


# ---------------------------------------------------------------------- nerfstudio features on built scenes
def write_scene(tmp_path: Path, frames: list[dict], **top) -> Path:
    from PIL import Image

    (tmp_path / "images").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for fr in frames:
        p = tmp_path / fr["file_path"]
        if not p.exists() and not fr.pop("_missing", False):
            Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(p)
        fr.pop("_missing", None)
    (tmp_path / "transforms.json").write_text(json.dumps({**top, "frames": frames}))
    return tmp_path


def ring_poses(n: int) -> list[list[list[float]]]:
    out = []
    for k in range(n):
        a = 2 * np.pi * k / n
        eye = np.array([3 * np.cos(a), 3 * np.sin(a), 1.0])
        fwd = -eye / np.linalg.norm(eye)
        right = np.cross(fwd, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        c2w_cv = np.eye(4)
        c2w_cv[:3, :3] = np.stack([right, down, fwd], -1)
        c2w_cv[:3, 3] = eye
        out.append(opencv_to_opengl_c2w(torch.from_numpy(c2w_cv)).tolist())
    return out


def test_nerfstudio_explicit_split_and_per_frame_intrinsics(tmp_path):
    poses = ring_poses(6)
    frames = [{"file_path": f"images/{k}.png", "transform_matrix": poses[k]} for k in range(6)]
    frames[5]["fl_x"] = 50.0  # per-frame override
    frames[5]["camera_model"] = "OPENCV_FISHEYE"
    frames[5]["k1"] = 0.05
    root = write_scene(
        tmp_path, frames, fl_x=30.0, fl_y=31.0, cx=16.0, cy=12.0, w=32, h=24,
        train_filenames=["images/0.png", "images/2.png", "images/3.png"], test_filenames=["images/5.png"],
    )
    ds = load_dataset(root)
    assert [ds.names[i] for i in ds.train_indices] == ["images/0.png", "images/2.png", "images/3.png"]
    assert [ds.names[i] for i in ds.test_indices] == ["images/5.png"]
    assert float(ds.cameras.fx[5]) == 50.0 and float(ds.cameras.fy[5]) == 31.0
    assert CameraModel(int(ds.cameras.model[5])) is CameraModel.OPENCV_FISHEYE
    assert float(ds.cameras.dist[5, 0]) == pytest.approx(0.05)
    assert CameraModel(int(ds.cameras.model[0])) is CameraModel.PINHOLE


def test_nerfstudio_camera_angle_only_and_points(tmp_path):
    """instant-ngp style: only camera_angle_x, size read from the image; a ply of sparse points."""
    import open3d as o3d

    poses = ring_poses(4)
    frames = [{"file_path": f"images/{k}.png", "transform_matrix": poses[k]} for k in range(4)]
    rng = np.random.default_rng(1)
    pts = rng.normal(size=(200, 3)) * 0.3
    pts[0] = [500.0, 500.0, 500.0]  # an outlier the cleaning must drop
    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts))
    pc.colors = o3d.utility.Vector3dVector(rng.uniform(size=(200, 3)))
    o3d.io.write_point_cloud(str(tmp_path / "sparse_pc.ply"), pc)
    root = write_scene(tmp_path, frames, camera_angle_x=1.0, ply_file_path="sparse_pc.ply")
    ds = load_dataset(root)
    assert int(ds.cameras.width[0]) == 32 and int(ds.cameras.height[0]) == 24
    assert float(ds.cameras.fx[0]) == pytest.approx(16 / np.tan(0.5))
    assert 150 < ds.num_points < 200
    back = ds.to_input_frame(ds.points)
    assert np.abs(back).max() < 5  # the far outlier is gone and the mapping back is consistent
    raw = load_dataset(root, DataConfig(remove_outliers=False, normalize=False))
    assert raw.num_points == 200


def test_masks_are_loaded(tmp_path):
    from PIL import Image

    poses = ring_poses(3)
    frames = [{"file_path": f"images/{k}.png", "transform_matrix": poses[k], "mask_path": f"masks/{k}.png"} for k in range(3)]
    (tmp_path / "masks").mkdir()
    m = np.zeros((24, 32), np.uint8)
    m[:, :16] = 255
    for k in range(3):
        Image.fromarray(m).save(tmp_path / "masks" / f"{k}.png")
    ds = load_dataset(write_scene(tmp_path, frames, fl_x=30.0, w=32, h=24))
    mask = ds.mask(0)
    assert mask.shape == (24, 32) and mask[:, :16].all() and not mask[:, 16:].any()


def test_default_split_every_eighth_image(tmp_path):
    poses = ring_poses(17)
    frames = [{"file_path": f"images/{k:02d}.png", "transform_matrix": poses[k]} for k in range(17)]
    ds = load_dataset(write_scene(tmp_path, frames, fl_x=30.0, w=32, h=24))
    assert ds.test_indices == [0, 8, 16]
    assert len(ds.train_indices) == 14
