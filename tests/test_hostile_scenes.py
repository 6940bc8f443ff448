"""Hostile scenes: every bad camera field, outside path, odd image and former traceback of
issue 16 ends in one DataError sentence naming the file, the frame and the field.

The scenes are built here, in every input format, from one ring of cameras; each builder writes
32x24 PNG images and lets a test edit the declared values (plain dicts and lists) before the scene
files are written, so a test plants exactly one bad field. test_fuzz_scenes.py reuses the builders.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from scene3d.cameras import opengl_to_opencv_c2w, rigid_inverse
from scene3d.data import DataConfig, load_dataset
from scene3d.errors import DataError
from scene3d.geometry import matrix_to_quat
from test_readers import ring_poses

W, H, F = 32, 24, 30.0


def write_images(folder: Path, names: list[str], seed: int = 0) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(folder / name)


def c2w_cv(n: int) -> np.ndarray:
    """[n, 4, 4] OpenCV camera-to-world poses on a ring around the origin."""
    return opengl_to_opencv_c2w(torch.tensor(ring_poses(n), dtype=torch.float64)).numpy()


# ---------------------------------------------------------------------- transforms.json
def nerfstudio_scene(root: Path, n: int = 4, mutate=None) -> Path:
    frames = [{"file_path": f"images/{k}.png", "transform_matrix": p} for k, p in enumerate(ring_poses(n))]
    data = {"fl_x": F, "fl_y": F, "cx": W / 2, "cy": H / 2, "w": W, "h": H, "frames": frames}
    write_images(root / "images", [f"{k}.png" for k in range(n)])
    if mutate:
        mutate(data)
    (root / "transforms.json").write_text(json.dumps(data))
    return root


def blender_scene(root: Path, n: int = 4, mutate=None) -> Path:
    poses = ring_poses(n)
    for split in ("train", "val"):
        frames = [{"file_path": f"./{split}/r_{k}", "transform_matrix": p} for k, p in enumerate(poses)]
        data = {"camera_angle_x": 2 * float(np.arctan(W / 2 / F)), "frames": frames}
        write_images(root / split, [f"r_{k}.png" for k in range(n)])
        if mutate and split == "train":
            mutate(data)
        (root / f"transforms_{split}.json").write_text(json.dumps(data))
    return root


# ---------------------------------------------------------------------- COLMAP
def colmap_model(n: int = 4) -> dict:
    """Cameras (one OPENCV camera per image), images and a few points, as editable dicts."""
    w2c = rigid_inverse(torch.from_numpy(c2w_cv(n))).numpy()
    cams = [{"id": k + 1, "model": 4, "w": W, "h": H, "params": [F, F, W / 2, H / 2, 0.01, 0.0, 0.0, 0.0]} for k in range(n)]
    images = [{"id": k + 1, "q": matrix_to_quat(w2c[k, :3, :3]).tolist(), "t": w2c[k, :3, 3].tolist(), "cam": k + 1, "name": f"{k}.png"} for k in range(n)]
    rng = np.random.default_rng(0)
    points = [{"id": k + 1, "xyz": rng.normal(size=3).tolist(), "rgb": [10, 200, 30], "err": 0.5} for k in range(8)]
    return {"cameras": cams, "images": images, "points": points}


def write_colmap_bin(folder: Path, model: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    out = struct.pack("<Q", len(model["cameras"]))
    for c in model["cameras"]:
        out += struct.pack("<iiQQ", c["id"], c["model"], int(c["w"]), int(c["h"])) + struct.pack(f"<{len(c['params'])}d", *c["params"])
    (folder / "cameras.bin").write_bytes(out)
    out = struct.pack("<Q", len(model["images"]))
    for im in model["images"]:
        out += struct.pack("<i7di", im["id"], *im["q"], *im["t"], im["cam"]) + im["name"].encode() + b"\0" + struct.pack("<Q", 0)
    (folder / "images.bin").write_bytes(out)
    out = struct.pack("<Q", len(model["points"]))
    for p in model["points"]:
        out += struct.pack("<Q3d3BdQ", p["id"], *p["xyz"], *p["rgb"], p["err"], 0)
    (folder / "points3D.bin").write_bytes(out)


_MODEL_NAMES = {1: "PINHOLE", 4: "OPENCV"}


def write_colmap_txt(folder: Path, model: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{c['id']} {_MODEL_NAMES[c['model']]} {c['w']} {c['h']} " + " ".join(repr(float(v)) for v in c["params"]) for c in model["cameras"]]
    (folder / "cameras.txt").write_text("# cameras\n" + "\n".join(lines) + "\n")
    lines = []
    for im in model["images"]:
        lines += [" ".join(str(v) for v in [im["id"], *im["q"], *im["t"], im["cam"], im["name"]]), ""]
    (folder / "images.txt").write_text("# images\n" + "\n".join(lines) + "\n")
    lines = [" ".join(str(v) for v in [p["id"], *p["xyz"], *p["rgb"], p["err"]]) for p in model["points"]]
    (folder / "points3D.txt").write_text("# points\n" + "\n".join(lines) + "\n")


def colmap_scene(root: Path, kind: str = "bin", n: int = 4, mutate=None) -> Path:
    model = colmap_model(n)
    write_images(root / "images", [im["name"] for im in model["images"]])
    if mutate:
        mutate(model)
    (write_colmap_bin if kind == "bin" else write_colmap_txt)(root / "sparse" / "0", model)
    return root


# ---------------------------------------------------------------------- LLFF
def llff_rows(n: int = 4) -> np.ndarray:
    """[n, 17] poses_bounds rows: (down, right, back, centre, hwf) columns and near/far bounds."""
    c2w = c2w_cv(n)
    right, down, fwd, t = c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3]
    hwf = np.tile([H, W, F], (n, 1))
    poses = np.stack([down, right, -fwd, t, hwf], axis=-1)
    return np.concatenate([poses.reshape(n, 15), np.tile([0.5, 10.0], (n, 1))], axis=1)


def llff_scene(root: Path, n: int = 4, mutate=None) -> Path:
    rows = llff_rows(n)
    write_images(root / "images", [f"img_{k}.png" for k in range(n)])
    if mutate:
        rows = mutate(rows)
    np.save(root / "poses_bounds.npy", rows)
    return root


# ---------------------------------------------------------------------- helpers
def refused(root: Path, *fragments: str, cfg=None) -> str:
    """Loads ``root`` expecting one DataError whose sentence holds every fragment."""
    with pytest.raises(DataError) as info:
        load_dataset(root, cfg)
    msg = str(info.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


def cli_error(capsys, *args: str) -> str:
    """Runs the CLI in this process; returns its one `scene3d: error:` line (exit status 2)."""
    from scene3d.cli import main

    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("scene3d: error: "), err
    return err[0]


NAN, INF = float("nan"), float("inf")


# ---------------------------------------------------------------------- bad cameras, per format and field
def _frame(key, value):
    return lambda d: d["frames"][2].update({key: value})


@pytest.mark.parametrize(
    "mutate, field",
    [
        (_frame("fl_x", NAN), "fl_x nan"),
        (_frame("fl_x", INF), "fl_x inf"),
        (_frame("fl_x", 0), "fl_x 0"),
        (_frame("fl_x", -3.0), "fl_x -3.0"),
        (_frame("fl_x", "abc"), "fl_x 'abc'"),
        (_frame("fl_y", 1e300), "fl_y 1e+300"),
        (_frame("cx", NAN), "cx nan"),
        (_frame("cy", "abc"), "cy 'abc'"),
        (_frame("k1", NAN), "k1 nan"),
        (_frame("p2", INF), "p2 inf"),
        (_frame("w", "abc"), "w 'abc'"),
        (_frame("w", 0), "w 0"),
        (_frame("h", -24), "h -24"),
        (_frame("w", 1e9), "w 1000000000.0"),
        (_frame("w", 32.5), "w 32.5"),
        (lambda d: d["frames"][2].update(w=60000, h=60000), "60000x60000 image, more than the 120,000,000-pixel ceiling"),
        (_frame("camera_model", 7), "camera_model 7"),
        (lambda d: [d.pop("fl_x"), d.pop("fl_y"), d.update(camera_angle_x=1.0), d["frames"][2].update(camera_angle_x="wide")], "camera_angle_x 'wide'"),
        (lambda d: [d.pop("fl_x"), d.pop("fl_y"), d.update(camera_angle_x=1.0), d["frames"][2].update(camera_angle_x=3.5)], "camera_angle_x 3.5"),
        (_frame("transform_matrix", [[0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1]]), "singular transform_matrix"),
        (_frame("transform_matrix", (np.diag([2.0, 2.0, 2.0, 1.0])).tolist()), "not orthonormal"),
        (_frame("transform_matrix", (np.diag([1.0, 1.0, -1.0, 1.0])).tolist()), "mirrored transform_matrix"),
        (_frame("transform_matrix", [[NAN] * 4] * 4), "not a finite 4x4 matrix"),
        (_frame("file_path", 5), "file_path 5"),
        (_frame("mask_path", ["m.png"]), "mask_path ['m.png']"),
    ],
)
def test_nerfstudio_bad_camera_names_frame_and_field(tmp_path, mutate, field):
    root = nerfstudio_scene(tmp_path, mutate=mutate)
    msg = refused(root, "transforms.json", field)
    assert "frame 2" in msg


@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (lambda d: d.update(camera_angle_x=0), ("frame 0 (./train/r_0)", "camera_angle_x 0,")),
        (lambda d: d.update(camera_angle_x="wide"), ("frame 0 (./train/r_0)", "camera_angle_x 'wide'")),
        (lambda d: d["frames"][1].update(transform_matrix=np.zeros((4, 4)).tolist()), ("frame 1 (./train/r_1)", "singular transform_matrix")),
    ],
)
def test_blender_bad_camera_names_frame_and_field(tmp_path, mutate, fragments):
    refused(blender_scene(tmp_path, mutate=mutate), "transforms_train.json", *fragments)


def _cam(index, **change):
    def mutate(model):
        cam = model["cameras"][2]
        for key, value in change.items():
            if key.startswith("p"):
                cam["params"][int(key[1:])] = value
            else:
                cam[key] = value
    return mutate


def _img(**change):
    return lambda model: model["images"][2].update(change)


COLMAP_CASES = [
    (_cam(2, p0=NAN), "cameras", "focal length fx nan"),
    (_cam(2, p0=0.0), "cameras", "focal length fx 0.0"),
    (_cam(2, p1=-1.0), "cameras", "focal length fy -1.0"),
    (_cam(2, p2=INF), "cameras", "principal point cx inf"),
    (_cam(2, p3=NAN), "cameras", "principal point cy nan"),
    (_cam(2, p4=NAN), "cameras", "distortion parameter 1 nan"),
    (_cam(2, p7=INF), "cameras", "distortion parameter 4 inf"),
    (_cam(2, w=0), "cameras", "width 0"),
    (_cam(2, h=10**9), "cameras", "height 1000000000"),
    (_cam(2, w=20000, h=20000), "cameras", "20000x20000 image, more than the 120,000,000-pixel ceiling"),
    (_img(q=[NAN, 0.0, 0.0, 0.0]), "images", "non-finite rotation quaternion"),
    (_img(q=[0.0, 0.0, 0.0, 0.0]), "images", "zero rotation quaternion"),
    (_img(t=[0.0, INF, 0.0]), "images", "non-finite translation"),
]


@pytest.mark.parametrize("kind", ["bin", "txt"])
@pytest.mark.parametrize("mutate, file, field", COLMAP_CASES)
def test_colmap_bad_camera_names_image_and_field(tmp_path, kind, mutate, file, field):
    root = colmap_scene(tmp_path, kind, mutate=mutate)
    where = "camera 3 (of image '2.png')" if file == "cameras" else "image '2.png'"
    refused(root, f"{file}.{kind}", where, field)


def _row(i, col, value):
    def mutate(rows):
        rows[i, col] = value
        return rows
    return mutate


def _zero_rotation(rows):
    poses = rows[:, :15].reshape(-1, 3, 5)
    poses[:, :, :3] = 0.0
    rows[:, :15] = poses.reshape(-1, 15)
    return rows


@pytest.mark.parametrize(
    "mutate, fragments",
    [
        (_row(2, 14, NAN), ("pose 2 (for img_2.png)", "focal length fx nan")),
        (_row(2, 14, 0.0), ("pose 2 (for img_2.png)", "focal length fx 0.0")),
        (_row(2, 4, 0.0), ("pose 2 (for img_2.png)", "height 0.0")),
        (_row(2, 9, 1e9), ("pose 2 (for img_2.png)", "width 1000000000.0")),
        (_row(2, 3, INF), ("pose 2 (for img_2.png)", "pose with non-finite entries")),
        (_zero_rotation, ("pose 0 (for img_0.png)", "singular pose")),
        (_row(1, 15, NAN), ("pose 1 (for img_1.png)", "depth bounds")),
        (lambda r: r[:0], ("holds no poses",)),
        (lambda r: r.astype(str), ("holds <U", "must be numbers")),
        (lambda r: np.array([[object()] * 17] * 4, dtype=object), ("Python objects", "never unpickles")),
    ],
)
def test_llff_bad_array_names_pose_and_field(tmp_path, mutate, fragments):
    refused(llff_scene(tmp_path, mutate=mutate), "poses_bounds.npy", *fragments)


def test_llff_header_declaring_more_rows_than_the_file_is_refused_before_reading(tmp_path):
    root = llff_scene(tmp_path)
    data = (root / "poses_bounds.npy").read_bytes()
    header_end = data.index(b"\n") + 1
    header = data[:header_end].replace(b"(4, 17)", b"(99999999999, 17)")
    header = header[:-1].ljust(header_end - 1, b" ")[: header_end - 1] + b"\n"  # same header length
    (root / "poses_bounds.npy").write_bytes(header + data[header_end:])
    refused(root, "poses_bounds.npy", "declares 99999999999 poses")


# ---------------------------------------------------------------------- declared sizes against the images
@pytest.mark.parametrize("w, h, ok", [(32, 24, True), (64, 48, True), (96, 72, True), (32, 30, False), (16, 12, False), (64, 40, False)])
def test_declared_size_must_match_the_image_or_a_shrunk_copy(tmp_path, w, h, ok):
    root = nerfstudio_scene(tmp_path, mutate=lambda d: d.update(w=w, h=h, fl_x=F * w / W, fl_y=F * w / W, cx=w / 2, cy=h / 2))
    if ok:
        ds = load_dataset(root, DataConfig(normalize=False))
        assert ds.cameras.width.tolist() == [W] * 4 and ds.cameras.height.tolist() == [H] * 4
        assert ds.cameras.fx.tolist() == pytest.approx([F] * 4) and ds.cameras.cx.tolist() == pytest.approx([W / 2] * 4)
    else:
        refused(root, "0.png", f"is 32x24, but its camera declares {w}x{h}")


def test_colmap_declared_size_mismatch_is_refused(tmp_path):
    refused(colmap_scene(tmp_path, "bin", mutate=_cam(2, w=40)), "2.png", "is 32x24, but its camera declares 40x24")
