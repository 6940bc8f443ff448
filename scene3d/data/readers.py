"""The COLMAP and LLFF readers, each returning a :class:`~scene3d.data.dataset.RawScene`, and the
image-size rules shared with the transforms.json readers (:mod:`scene3d.data.transforms_json`).

Poses are converted once, here, to OpenCV world-to-camera. Every camera, pose, declared size and
image path is checked (:mod:`scene3d.data.validate`) before it is used: a scene from anyone loads
as valid cameras or ends in one DataError sentence.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from scene3d.cameras import CameraModel, Cameras, llff_to_opencv_c2w, quaternion_to_matrix, rigid_inverse
from scene3d.data import colmap_io
from scene3d.data import images as imio
from scene3d.data import validate
from scene3d.data.dataset import RawScene
from scene3d.errors import DataError

log = logging.getLogger("scene3d.data")


# ---------------------------------------------------------------------- COLMAP
def colmap_model_dirs(root: Path) -> list[Path]:
    """Folders under ``root`` that hold a COLMAP model, in the usual places."""
    candidates = [root, root / "sparse", root / "colmap" / "sparse"]
    for base in (root / "sparse", root / "colmap" / "sparse"):
        if base.is_dir():
            candidates += sorted(p for p in base.iterdir() if p.is_dir())
    return [c for c in candidates if c.is_dir() and colmap_io.find_model_files(c)]


def largest_model_dir(root: Path) -> Path | None:
    """The COLMAP model folder under ``root`` with the most registered images, if any."""
    dirs = colmap_model_dirs(root)
    return max(dirs, key=colmap_io.count_registered) if dirs else None


def camera_from_colmap(cam: colmap_io.ColmapCamera, path: Path) -> tuple[CameraModel, list[float], list[float]]:
    """(model, [fx, fy, cx, cy], dist[4]) from a COLMAP camera."""
    p = list(cam.params)
    if cam.model == "SIMPLE_PINHOLE":
        return CameraModel.SIMPLE_PINHOLE, [p[0], p[0], p[1], p[2]], [0, 0, 0, 0]
    if cam.model == "PINHOLE":
        return CameraModel.PINHOLE, p[:4], [0, 0, 0, 0]
    if cam.model == "SIMPLE_RADIAL":
        return CameraModel.SIMPLE_RADIAL, [p[0], p[0], p[1], p[2]], [p[3], 0, 0, 0]
    if cam.model == "RADIAL":
        return CameraModel.RADIAL, [p[0], p[0], p[1], p[2]], [p[3], p[4], 0, 0]
    if cam.model == "OPENCV":
        return CameraModel.OPENCV, p[:4], p[4:8]
    if cam.model == "OPENCV_FISHEYE":
        return CameraModel.OPENCV_FISHEYE, p[:4], p[4:8]
    raise DataError(path, f"uses camera model {cam.model}, which scene3d does not support (supported: {', '.join(m.name for m in CameraModel)}); undistort the images first (scene3d process --undistort or colmap image_undistorter)")


def read_colmap(root: Path, allow_outside: bool = False) -> RawScene:
    model_dir = largest_model_dir(root)
    if model_dir is None:
        raise DataError(root, "holds no COLMAP model (looked in ., sparse/, sparse/N/, colmap/sparse/N/)")
    model = colmap_io.read_model(model_dir)
    if not model.images:
        raise DataError(model_dir, "has no registered images")
    ext = colmap_io.find_model_files(model_dir)
    cameras_file, images_file = model_dir / f"cameras.{ext}", model_dir / f"images.{ext}"
    candidates = [root / "images", model_dir.parent.parent / "images", root]
    image_dir = next((d for d in candidates if d.is_dir() and d != model_dir and (allow_outside or _within(root, d))), root)
    mask_dir = root / "masks"

    ordered = sorted(model.images.values(), key=lambda im: im.name)
    w2c, intr, dist, models, widths, heights, paths, masks = [], [], [], [], [], [], [], []
    for im in ordered:
        where = f"image {validate.shown(im.name)}"
        cam = model.cameras[im.camera_id]
        m, k, d = camera_from_colmap(cam, cameras_file)
        validate.check_camera(cameras_file, f"camera {cam.id} (of image {validate.shown(im.name)})", *k, d, cam.width, cam.height)
        validate.check_quaternion(images_file, where, im.qvec, im.tvec)
        T = torch.eye(4, dtype=torch.float64)
        T[:3, :3] = quaternion_to_matrix(torch.tensor(im.qvec))
        T[:3, 3] = torch.tensor(im.tvec)
        w2c.append(T)
        intr.append(k)
        dist.append(d)
        models.append(int(m))
        widths.append(cam.width)
        heights.append(cam.height)
        paths.append(validate.inside(root, image_dir / im.name, allow_outside, images_file, where))
        mask = next((c for c in (mask_dir / im.name, mask_dir / (im.name + ".png"), (mask_dir / im.name).with_suffix(".png")) if c.is_file()), None)
        masks.append(None if mask is None else validate.inside(root, mask, allow_outside, images_file, f"the mask of {where}"))

    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(missing[0], f"is listed in {model_dir.name}/images.* but not found ({len(missing)} of {len(paths)} images missing)")
    k = np.array(intr)
    cams = Cameras.create(torch.stack(w2c), k[:, 0], k[:, 1], k[:, 2], k[:, 3], widths, heights, models, dist)
    cams = _match_image_sizes(cams, paths)
    return RawScene(
        format="colmap",
        root=root,
        cameras=cams,
        image_paths=paths,
        names=[im.name for im in ordered],
        points=model.xyz,
        point_colors=model.rgb,
        mask_paths=masks if any(masks) else None,
        downscaled_images=_shipped_downscales(root, image_dir, [im.name for im in ordered]),
        meta={"model_dir": str(model_dir), "num_models": len(colmap_model_dirs(root))},
    )


def _within(root: Path, path: Path) -> bool:
    return path.resolve() == root.resolve() or root.resolve() in path.resolve().parents


def _match_image_sizes(cams: Cameras, paths: list[Path]) -> Cameras:
    """Rescales intrinsics where an image on disk is a shrunk copy of the size its camera declares."""
    sizes = [imio.image_size(p) for p in paths]
    for i, (p, actual) in enumerate(zip(paths, sizes)):
        validate.check_image_size(p, (int(cams.width[i]), int(cams.height[i])), actual)
    w = torch.tensor([s[0] for s in sizes])
    h = torch.tensor([s[1] for s in sizes])
    if torch.equal(w, cams.width) and torch.equal(h, cams.height):
        return cams
    return cams.resized(w, h)


def _shipped_downscales(root: Path, image_dir: Path, names: list[str]) -> dict[int, list[Path]]:
    """``images_N/`` folders next to ``images/`` holding the same file names."""
    out = {}
    for factor in (2, 4, 8):
        d = image_dir.parent / f"{image_dir.name}_{factor}"
        if d.is_dir():
            out[factor] = [d / n for n in names]
    return out


# ---------------------------------------------------------------------- LLFF
MAX_LLFF_POSES = 1_000_000
"""Most rows a poses_bounds.npy may declare (checked before the array is read)."""


def _load_poses_bounds(path: Path) -> np.ndarray:
    """The [N, 17] float array of ``poses_bounds.npy``, its header checked before anything is allocated."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if header is None:
                raise DataError(path, f"is a .npy file of version {version[0]}.{version[1]}, which scene3d does not read (save it with numpy.save)")
            try:
                shape, _, dtype = header(f)
            except Exception as e:  # numpy's header parser raises ValueError, SyntaxError, tokenize errors...
                raise DataError(path, f"has an unreadable .npy header ({type(e).__name__})") from None
            size = path.stat().st_size
        if dtype.hasobject:
            raise DataError(path, "holds Python objects, which scene3d never unpickles")
        if dtype.kind not in "fiu":
            raise DataError(path, f"holds {dtype} values, but poses and bounds must be numbers")
        if len(shape) != 2 or shape[1] != 17:
            raise DataError(path, f"must be an [N, 17] array, got shape {list(shape)}")
        if shape[0] == 0:
            raise DataError(path, "holds no poses")
        if shape[0] > MAX_LLFF_POSES or shape[0] * 17 * dtype.itemsize > size:
            raise DataError(path, f"declares {shape[0]} poses, more than the file holds")
        arr = np.load(path, allow_pickle=False)
    except DataError:
        raise
    except (OSError, ValueError, EOFError, SyntaxError, MemoryError) as e:
        raise DataError(path, f"cannot be read as a numpy array ({e})") from None
    return arr.astype(np.float64)


def read_llff(root: Path, allow_outside: bool = False) -> RawScene:
    path = root / "poses_bounds.npy"
    arr = _load_poses_bounds(path)
    image_dir = root / "images"
    files = sorted(p for p in image_dir.iterdir() if imio.is_image_file(p)) if image_dir.is_dir() else []
    if len(files) != len(arr):
        raise DataError(image_dir, f"holds {len(files)} images but poses_bounds.npy has {len(arr)} poses")
    files = [validate.inside(root, p, allow_outside, image_dir, f"image {validate.shown(p.name)}") for p in files]
    poses = arr[:, :15].reshape(-1, 3, 5)
    near_far = arr[:, 15:17]
    hwf = poses[:, :, 4]  # [N, 3] height, width, focal of the images the poses were made for
    for i, name in enumerate(p.name for p in files):
        where = f"pose {i} (for {name})"
        h_i, w_i, f_i = hwf[i]
        validate.check_camera(path, where, f_i, f_i, 0.0, 0.0, [], validate.size(path, where, "width", w_i), validate.size(path, where, "height", h_i))
        llff_c2w = poses[i, :, :4]
        R = llff_c2w[:, [1, 0, 2]] * np.array([1.0, 1.0, -1.0])
        validate.check_rotation(path, where, "pose", R, llff_c2w[:, 3])
        if not np.isfinite(near_far[i]).all() or near_far[i].min() < 0:
            raise DataError(path, f"{where} has depth bounds {near_far[i].tolist()}, but they must be finite and non-negative")
    c2w = llff_to_opencv_c2w(torch.from_numpy(poses[:, :, :4]))
    h, w, f = (torch.from_numpy(hwf[:, k]) for k in range(3))
    cams = Cameras.create(rigid_inverse(c2w), f, f, w / 2, h / 2, w.round().long(), h.round().long(), CameraModel.PINHOLE)
    cams = _match_image_sizes(cams, files)  # images/ may hold another resolution than hwf says
    shipped = {}
    for factor in (2, 4, 8):
        d = root / f"images_{factor}"
        if d.is_dir():
            shipped[factor] = sorted(p for p in d.iterdir() if imio.is_image_file(p))
    points = colors = None
    model_dir = largest_model_dir(root)
    if model_dir is not None:
        m = colmap_io.read_model(model_dir)
        points, colors = m.xyz, m.rgb
    return RawScene(
        format="llff",
        root=root,
        cameras=cams,
        image_paths=files,
        names=[p.name for p in files],
        points=points,
        point_colors=colors,
        downscaled_images=shipped,
        near_far=near_far,
        meta={"llff_hwf": hwf[0].tolist()},
    )
