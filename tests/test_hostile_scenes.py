"""Hostile scenes: every bad camera field, outside path, odd image and former traceback of
issue 16 ends in one DataError sentence naming the file, the frame and the field.

The scenes are built here, in every input format, from one ring of cameras; each builder writes
32x24 PNG images and lets a test edit the declared values (plain dicts and lists) before the scene
files are written, so a test plants exactly one bad field. test_fuzz_scenes.py reuses the builders.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from scene3d.cameras import opengl_to_opencv_c2w, rigid_inverse
from scene3d.data import DataConfig, load_dataset
from scene3d.data import images as imio
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


# ---------------------------------------------------------------------- paths outside the scene folder
def test_transforms_path_outside_the_scene_is_refused_before_it_is_opened(tmp_path):
    root = nerfstudio_scene(tmp_path / "scene", mutate=_frame("file_path", "../../../etc/passwd"))
    refused(root, "transforms.json", "frame 2 (../../../etc/passwd)", "outside the scene folder", "--allow-outside-paths")


def test_outside_image_allowed_only_with_the_flag(tmp_path):
    write_images(tmp_path / "elsewhere", ["x.png"], seed=3)
    root = nerfstudio_scene(tmp_path / "scene", mutate=_frame("file_path", "../elsewhere/x.png"))
    refused(root, "frame 2 (../elsewhere/x.png)", "outside the scene folder")
    ds = load_dataset(root, DataConfig(allow_outside_paths=True))
    assert ds.source_paths[2].resolve() == (tmp_path / "elsewhere" / "x.png").resolve()


def test_symlink_inside_the_scene_pointing_outside_is_refused(tmp_path):
    write_images(tmp_path / "elsewhere", ["x.png"], seed=3)
    root = nerfstudio_scene(tmp_path / "scene")
    (root / "images" / "1.png").unlink()
    (root / "images" / "1.png").symlink_to(tmp_path / "elsewhere" / "x.png")
    refused(root, "frame 1 (images/1.png)", "outside the scene folder")
    assert len(load_dataset(root, DataConfig(allow_outside_paths=True))) == 4


def test_mask_and_point_cloud_outside_are_refused(tmp_path):
    root = nerfstudio_scene(tmp_path / "a", mutate=_frame("mask_path", "../../m.png"))
    refused(root, "frame 2 (images/2.png)", "outside the scene folder")
    root = nerfstudio_scene(tmp_path / "b", mutate=lambda d: d.update(ply_file_path="/etc/passwd"))
    refused(root, "ply_file_path", "outside the scene folder")


@pytest.mark.parametrize("kind", ["bin", "txt"])
def test_colmap_image_name_outside_is_refused(tmp_path, kind):
    root = colmap_scene(tmp_path / "scene", kind, mutate=_img(name="../../../etc/passwd"))
    refused(root, f"images.{kind}", "image '../../../etc/passwd'", "outside the scene folder")


def test_llff_image_symlinked_outside_is_refused(tmp_path):
    write_images(tmp_path / "elsewhere", ["x.png"], seed=3)
    root = llff_scene(tmp_path / "scene")
    (root / "images" / "img_3.png").unlink()
    (root / "images" / "img_3.png").symlink_to(tmp_path / "elsewhere" / "x.png")
    refused(root, "image 'img_3.png'", "outside the scene folder")
    assert len(load_dataset(root, DataConfig(allow_outside_paths=True))) == 4


# ---------------------------------------------------------------------- images
def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def write_png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG written by hand (PIL writes 16-bit greyscale only): [H, W] grey or [H, W, 3] RGB."""
    h, w = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    rows = pixels.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    header = struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


def test_16bit_grey_png_decodes_to_the_right_values(tmp_path):
    values = np.linspace(0, 65535, W * H).round().astype(np.uint16).reshape(H, W)
    root = nerfstudio_scene(tmp_path)
    write_png16(root / "images" / "1.png", values)
    ds = load_dataset(root)
    img = ds.image(ds.names.index("images/1.png"))
    expected = torch.from_numpy(values.astype(np.float64) / 65535).float()
    assert img.shape == (H, W, 3)
    assert (img - expected[..., None]).abs().max() <= 0.5 / 255 + 1e-6  # exact to 8-bit rounding
    assert float(img.min()) == 0.0 and float(img.max()) == 1.0


def test_16bit_rgb_png_decodes_to_the_right_values(tmp_path):
    rng = np.random.default_rng(5)
    values = rng.integers(0, 65536, (H, W, 3)).astype(np.uint16)
    write_png16(tmp_path / "rgb16.png", values)
    arr = imio.read_image(tmp_path / "rgb16.png")
    assert arr.shape == (H, W, 3) and arr.dtype == np.uint8
    assert np.abs(arr - values / 257.0).max() <= 1.0  # the top 8 bits: within one step of exact


def test_float_tiff_decodes_to_the_right_values_and_out_of_range_floats_are_refused(tmp_path):
    from PIL import Image

    values = np.linspace(0, 1, W * H, dtype=np.float32).reshape(H, W)
    Image.fromarray(values).save(tmp_path / "f.tif")
    arr = imio.read_image(tmp_path / "f.tif")
    assert arr.shape == (H, W, 3) and np.abs(arr[..., 0] - values * 255).max() <= 0.5 + 1e-3
    Image.fromarray(values * 300).save(tmp_path / "hdr.tif")
    with pytest.raises(DataError, match=r"hdr.tif: holds floating-point pixel values from 0 to 300"):
        imio.read_image(tmp_path / "hdr.tif")
    values[3, 4] = np.nan
    Image.fromarray(values).save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan.tif: holds non-finite floating-point pixel values"):
        imio.read_image(tmp_path / "nan.tif")
    Image.fromarray(np.full((H, W), 100000, np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(DataError, match=r"i32.tif: holds I pixel values outside 0..65535"):
        imio.read_image(tmp_path / "i32.tif")


def write_png_header(path: Path, width: int, height: int) -> None:
    """A PNG that declares ``width`` x ``height`` one-bit pixels (the pixel data is never reached)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _png_chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(20000, 10000), (12000, 11000), (70000, 10)])
def test_huge_image_is_refused_with_the_pixel_ceiling(tmp_path, width, height):
    write_png_header(tmp_path / "big.png", width, height)
    for read in (imio.image_size, imio.read_image):
        with pytest.raises(DataError, match=r"big.png: .*120,000,000"):
            read(tmp_path / "big.png")
    root = nerfstudio_scene(tmp_path / "scene", mutate=lambda d: [d.pop(k) for k in ("w", "h", "fl_x", "fl_y", "cx", "cy")] + [d.update(camera_angle_x=1.0)])
    write_png_header(root / "images" / "0.png", width, height)
    refused(root, "0.png", "120,000,000")


def test_replaced_image_refreshes_its_cached_copies(tmp_path):
    from PIL import Image

    root = nerfstudio_scene(tmp_path)
    first = load_dataset(root, DataConfig(downscale=2))
    old = first.image(0).clone()
    in_memory = load_dataset(root)
    in_memory.image(0)
    Image.fromarray(np.full((H, W, 3), 77, np.uint8)).save(root / "images" / "0.png")  # another size on disk, too
    second = load_dataset(root, DataConfig(downscale=2))
    assert second.image_paths[0] != first.image_paths[0] and not first.image_paths[0].exists()
    assert torch.all(second.image(0) == 77 / 255) and not torch.all(old == 77 / 255)
    assert torch.all(in_memory.image(0) == 77 / 255)  # the decoded-image cache sees the change too
    assert second.image_paths[1] == first.image_paths[1]  # unchanged photos keep their copies


# ---------------------------------------------------------------------- former tracebacks, through the CLI
def _points_txt_colour_300(root: Path) -> None:
    colmap_scene(root, "txt", mutate=lambda m: m["points"][3].update(rgb=[300, 0, 0]))


def _nested_json(root: Path) -> None:
    nerfstudio_scene(root)
    (root / "transforms.json").write_text('{"frames": ' + "[" * 100_000 + "]" * 100_000 + "}")


def _bin_count(name: str, offset: int):
    def build(root: Path) -> None:
        colmap_scene(root, "bin")
        f = root / "sparse" / "0" / name
        data = bytearray(f.read_bytes())
        data[offset : offset + 8] = struct.pack("<Q", 2**62)
        f.write_bytes(bytes(data))
    return build


TRACEBACKS = [
    ("colmap NaN quaternion", lambda r: colmap_scene(r, "bin", mutate=_img(q=[NAN] * 4)), ("images.bin", "image '2.png'", "non-finite rotation quaternion")),
    ("colmap zero quaternion", lambda r: colmap_scene(r, "txt", mutate=_img(q=[0, 0, 0, 0])), ("images.txt", "image '2.png'", "zero rotation quaternion")),
    ("points3D colour 300", _points_txt_colour_300, ("points3D.txt", "point 4", "colour 300 0 0")),
    ("w abc", lambda r: nerfstudio_scene(r, mutate=lambda d: d.update(w="abc")), ("transforms.json", "frame 0", "w 'abc'")),
    ("fl_x abc", lambda r: nerfstudio_scene(r, mutate=lambda d: d.update(fl_x="abc")), ("transforms.json", "frame 0", "fl_x 'abc'")),
    ("camera_angle_x wide", lambda r: nerfstudio_scene(r, mutate=lambda d: [d.pop("fl_x"), d.pop("fl_y"), d.update(camera_angle_x="wide")]), ("transforms.json", "frame 0", "camera_angle_x 'wide'")),
    ("train_filenames 5", lambda r: nerfstudio_scene(r, mutate=lambda d: d.update(train_filenames=5)), ("transforms.json", "train_filenames 5", "list of file names")),
    ("nested JSON", _nested_json, ("transforms.json", "nested too deeply")),
    ("blender camera_angle_x 0", lambda r: blender_scene(r, mutate=lambda d: d.update(camera_angle_x=0)), ("transforms_train.json", "frame 0", "camera_angle_x 0")),
    ("empty LLFF", lambda r: llff_scene(r, mutate=lambda rows: rows[:0]), ("poses_bounds.npy", "holds no poses")),
    ("string LLFF", lambda r: llff_scene(r, mutate=lambda rows: np.array("poses")), ("poses_bounds.npy", "holds <U5 values")),
    ("cameras.bin count", _bin_count("cameras.bin", 0), ("cameras.bin", "claims 4611686018427387904 cameras")),
    ("images.bin count", _bin_count("images.bin", 0), ("images.bin", "claims 4611686018427387904 images")),
    ("2D points count", _bin_count("images.bin", 8 + 64 + len("0.png") + 1), ("images.bin", "claims 4611686018427387904 2D points")),
    ("points3D.bin count", _bin_count("points3D.bin", 0), ("points3D.bin", "claims 4611686018427387904 points")),
]


@pytest.mark.parametrize("build, fragments", [c[1:] for c in TRACEBACKS], ids=[c[0] for c in TRACEBACKS])
def test_former_traceback_is_one_sentence_and_status_2(tmp_path, capsys, build, fragments):
    build(tmp_path)
    line = cli_error(capsys, "info", str(tmp_path))
    for f in fragments:
        assert f in line, (f, line)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scene3d", *args], capture_output=True, text=True, timeout=300)


def test_cli_refuses_hostile_scenes_in_a_fresh_process(tmp_path):
    """Through the real entry point: one `scene3d: error:` line, status 2, no traceback; the flag
    lets a trusted scene reach outside its folder."""
    write_images(tmp_path / "elsewhere", ["x.png"], seed=3)
    outside = nerfstudio_scene(tmp_path / "outside", mutate=_frame("file_path", "../elsewhere/x.png"))
    nan_quat = colmap_scene(tmp_path / "nanq", "bin", mutate=_img(q=[NAN] * 4))
    for root, fragment in ((outside, "outside the scene folder"), (nan_quat, "non-finite rotation quaternion")):
        r = run_cli("info", str(root))
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(lines) == 1, r.stderr
        assert lines[0].startswith("scene3d: error: ") and fragment in lines[0]
    r = run_cli("info", str(outside), "--allow-outside-paths", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["num_cameras"] == 4


def test_replaced_image_refreshes_its_undistorted_copy(tmp_path):
    from PIL import Image

    from scene3d.data.undistort import undistort_dataset

    root = nerfstudio_scene(tmp_path, mutate=lambda d: d.update(k1=0.05))
    first = undistort_dataset(load_dataset(root))
    assert first.meta["undistorted"] == 4 and not torch.all(first.image(0) == 77 / 255)
    Image.fromarray(np.full((H, W, 3), 77, np.uint8)).save(root / "images" / "0.png")
    second = undistort_dataset(load_dataset(root))
    assert second.image_paths[0] != first.image_paths[0] and second.image_paths[1] == first.image_paths[1]
    assert torch.all(second.image(0) == 77 / 255)


def test_the_outside_paths_flag_is_kept_in_a_run_config():
    from scene3d.models.base import config_fields
    from scene3d.runs import data_config

    assert DataConfig().allow_outside_paths is False
    saved = config_fields(DataConfig(allow_outside_paths=True))
    assert saved["allow_outside_paths"] is True and data_config(saved).allow_outside_paths is True
    assert data_config({k: v for k, v in saved.items() if k != "allow_outside_paths"}).allow_outside_paths is False  # runs saved before the flag


def _ply(vertices: int, body: bytes) -> bytes:
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {vertices}\nproperty float x\nproperty float y\nproperty float z\nend_header\n"
    return header.encode() + body


def test_point_cloud_declaring_more_vertices_than_its_file_is_refused_before_reading(tmp_path):
    root = nerfstudio_scene(tmp_path, mutate=lambda d: d.update(ply_file_path="points.ply"))
    pts = np.random.default_rng(0).normal(size=(30, 3)).astype("<f4")
    (root / "points.ply").write_bytes(_ply(30, pts.tobytes()))
    assert load_dataset(root, DataConfig(remove_outliers=False)).num_points == 30
    (root / "points.ply").write_bytes(_ply(10**12, pts.tobytes()))
    refused(root, "points.ply", "declares 1000000000000 vertex elements, more than the file holds")
    (root / "points.ply").write_bytes(b"solid mesh\n")
    refused(root, "points.ply", "is not a PLY file")


def test_json_with_an_endless_number_is_one_sentence(tmp_path):
    root = nerfstudio_scene(tmp_path)
    (root / "transforms.json").write_text('{"fl_x": ' + "1" * 5000 + ', "frames": []}')
    refused(root, "transforms.json", "is not valid JSON")


def test_absurd_sparse_points_are_dropped(tmp_path):
    def plant(model):
        model["points"][1]["xyz"] = [1e300, 0.0, 0.0]
        model["points"][2]["xyz"] = [NAN, 0.0, 0.0]
    ds = load_dataset(colmap_scene(tmp_path, "bin", mutate=plant), DataConfig(remove_outliers=False))
    assert ds.num_points == 6 and np.isfinite(ds.points).all()


def test_hostile_names_stay_one_short_line(tmp_path):
    root = nerfstudio_scene(tmp_path, mutate=_frame("file_path", "../" + "x\n" * 5000))
    msg = refused(root, "frame 2 (../x?x?", "outside the scene folder")
    assert len(msg) < 800
    root = colmap_scene(tmp_path / "c", "txt", mutate=lambda m: m["cameras"][0].update(w="1" * 5000))
    assert len(refused(root, "cameras.txt", "malformed entry at data line 1")) < 300


@pytest.mark.parametrize("depth, ok", [(31, True), (33, False), (900, False)])
def test_json_nesting_is_capped_below_the_recursion_limit(tmp_path, depth, ok):
    nested = "[" * (depth - 1) + "]" * (depth - 1)  # inside the top-level object: depth in all
    root = nerfstudio_scene(tmp_path, mutate=lambda d: d.update(notes="PLACEHOLDER"))
    text = (root / "transforms.json").read_text().replace('"PLACEHOLDER"', nested)
    (root / "transforms.json").write_text(text)
    if ok:
        assert len(load_dataset(root)) == 4
    else:
        refused(root, "transforms.json", "more than 32 deep")


def test_shipped_downscaled_folder_must_match_the_cameras(tmp_path):
    from PIL import Image

    root = nerfstudio_scene(tmp_path)
    (root / "images_2").mkdir()
    for k in range(4):
        Image.fromarray(np.full((H // 2, W // 2, 3), 9, np.uint8)).save(root / "images_2" / f"{k}.png")
    ds = load_dataset(root, DataConfig(downscale=2))
    assert ds.image_paths[0] == root / "images_2" / "0.png" and ds.cameras.fx.tolist() == pytest.approx([F / 2] * 4)
    Image.fromarray(np.full((H // 2, W, 3), 9, np.uint8)).save(root / "images_2" / "3.png")
    refused(root, "images_2/3.png", "is 32x12, but its camera declares 32x24", cfg=DataConfig(downscale=2))


# ---------------------------------------------------------------------- COLMAP text, read a line at a time
def test_colmap_text_files_are_read_a_line_at_a_time(tmp_path, monkeypatch):
    """A 300k-point points3D.txt (about 20 MB) is read with little more Python and numpy memory
    than the arrays it returns (reading it whole and splitting took 254 MiB); a line past the
    ceiling is one sentence."""
    import tracemalloc

    from scene3d.data import colmap_io

    path = tmp_path / "points3D.txt"
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        f.write("# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n")
        for i, (x, y, z) in enumerate(rng.normal(size=(300_000, 3))):
            f.write(f"{i + 1} {x:.6f} {y:.6f} {z:.6f} 10 20 30 0.5 1 {i} 2 {i}\n")
    size = path.stat().st_size
    tracemalloc.start()
    ids, xyz, rgb, err, tracks = colmap_io.read_points3D_txt(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert ids[-1] == 300_000 and (tracks == 2).all() and rgb[7].tolist() == [10, 20, 30]
    returned = sum(a.nbytes for a in (ids, xyz, rgb, err, tracks))
    assert peak < returned + (2 << 20), f"{peak / 2**20:.0f} MiB for {returned / 2**20:.0f} MiB of arrays from a {size / 2**20:.0f} MiB file"

    monkeypatch.setattr(colmap_io, "MAX_TEXT_LINE", 1000)
    long = tmp_path / "images.txt"
    long.write_text("1 1 0 0 0 0 0 0 1 a.png\n" + "1.0 2.0 -1 " * 200 + "\n")
    with pytest.raises(DataError, match=r"images.txt: has a line longer than 1,000 characters"):
        colmap_io.read_images_txt(long)
