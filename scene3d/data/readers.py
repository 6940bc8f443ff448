"""One reader per input format, each returning a :class:`~scene3d.data.dataset.RawScene`.

Formats: COLMAP (binary or text model), nerfstudio / instant-ngp ``transforms.json``, Blender
synthetic (``transforms_{train,val,test}.json``) and LLFF (``poses_bounds.npy``). Poses are
converted once, here, to OpenCV world-to-camera.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from scene3d.cameras import CameraModel, Cameras, opengl_to_opencv_c2w, llff_to_opencv_c2w, quaternion_to_matrix, rigid_inverse
from scene3d.data import colmap_io
from scene3d.data import images as imio
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


def read_colmap(root: Path) -> RawScene:
    model_dir = largest_model_dir(root)
    if model_dir is None:
        raise DataError(root, "holds no COLMAP model (looked in ., sparse/, sparse/N/, colmap/sparse/N/)")
    model = colmap_io.read_model(model_dir)
    if not model.images:
        raise DataError(model_dir, "has no registered images")
    image_dir = next((d for d in (root / "images", model_dir.parent.parent / "images", root) if d.is_dir() and d != model_dir), root)
    mask_dir = root / "masks"

    ordered = sorted(model.images.values(), key=lambda im: im.name)
    w2c, intr, dist, models, widths, heights, paths, masks = [], [], [], [], [], [], [], []
    for im in ordered:
        cam = model.cameras[im.camera_id]
        m, k, d = camera_from_colmap(cam, model_dir / "cameras.bin")
        T = torch.eye(4, dtype=torch.float64)
        T[:3, :3] = quaternion_to_matrix(torch.tensor(im.qvec))
        T[:3, 3] = torch.tensor(im.tvec)
        w2c.append(T)
        intr.append(k)
        dist.append(d)
        models.append(int(m))
        widths.append(cam.width)
        heights.append(cam.height)
        paths.append(image_dir / im.name)
        mask = next((c for c in (mask_dir / im.name, mask_dir / (im.name + ".png"), (mask_dir / im.name).with_suffix(".png")) if c.is_file()), None)
        masks.append(mask)

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


def _match_image_sizes(cams: Cameras, paths: list[Path]) -> Cameras:
    """Rescales intrinsics where an image on disk is not the size its camera says (resized copies)."""
    sizes = [imio.image_size(p) for p in paths]
    w = torch.tensor([s[0] for s in sizes])
    h = torch.tensor([s[1] for s in sizes])
    if torch.equal(w, cams.width) and torch.equal(h, cams.height):
        return cams
    ratio_w, ratio_h = w / cams.width, h / cams.height
    bad = ((ratio_w - ratio_h).abs() > 0.02).nonzero()
    if len(bad):
        i = int(bad[0])
        raise DataError(paths[i], f"is {sizes[i][0]}x{sizes[i][1]}, which does not match its camera's {int(cams.width[i])}x{int(cams.height[i])} aspect ratio")
    return cams.resized(w, h)


def _shipped_downscales(root: Path, image_dir: Path, names: list[str]) -> dict[int, list[Path]]:
    """``images_N/`` folders next to ``images/`` holding the same file names."""
    out = {}
    for factor in (2, 4, 8):
        d = image_dir.parent / f"{image_dir.name}_{factor}"
        if d.is_dir():
            out[factor] = [d / n for n in names]
    return out


# ---------------------------------------------------------------------- nerfstudio / instant-ngp
def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(path, "must hold a JSON object at the top level")
    return data


def _resolve_image(base: Path, file_path: str) -> Path:
    p = base / file_path
    if p.suffix.lower() in imio.IMAGE_EXTENSIONS:
        return p
    for ext in (".png", ".jpg", ".jpeg"):  # Blender-style paths without an extension
        if p.with_name(p.name + ext).is_file():
            return p.with_name(p.name + ext)
    return p


_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "k1", "k2", "k3", "k4", "p1", "p2", "camera_model", "camera_angle_x", "camera_angle_y")


def _intrinsics(spec: dict, path: Path, image: Path, where: str) -> tuple[CameraModel, list[float], list[float], int, int]:
    """Intrinsics from a transforms.json dict (global keys overridden per frame)."""
    if "w" in spec and "h" in spec:
        w, h = int(spec["w"]), int(spec["h"])
    else:
        w, h = imio.image_size(image)
    fx = spec.get("fl_x")
    fy = spec.get("fl_y")
    if fx is None and "camera_angle_x" in spec:
        fx = 0.5 * w / math.tan(0.5 * float(spec["camera_angle_x"]))
    if fy is None and "camera_angle_y" in spec:
        fy = 0.5 * h / math.tan(0.5 * float(spec["camera_angle_y"]))
    if fx is None and fy is None:
        raise DataError(path, f"{where} has no focal length (fl_x/fl_y or camera_angle_x)")
    fx, fy = float(fx if fx is not None else fy), float(fy if fy is not None else fx)
    cx, cy = float(spec.get("cx", w / 2)), float(spec.get("cy", h / 2))
    name = str(spec.get("camera_model", "OPENCV")).upper()
    if name == "OPENCV_FISHEYE":
        return CameraModel.OPENCV_FISHEYE, [fx, fy, cx, cy], [float(spec.get(k, 0.0)) for k in ("k1", "k2", "k3", "k4")], w, h
    if name not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        raise DataError(path, f"has camera_model {name!r}; supported: OPENCV, OPENCV_FISHEYE, PINHOLE")
    if float(spec.get("k3", 0.0)) != 0.0:
        log.warning("%s: k3 is ignored (scene3d models OPENCV distortion with k1, k2, p1, p2)", path)
    dist = [float(spec.get(k, 0.0)) for k in ("k1", "k2", "p1", "p2")]
    return (CameraModel.OPENCV if any(dist) else CameraModel.PINHOLE), [fx, fy, cx, cy], dist, w, h


def _pose(frame: dict, path: Path, where: str) -> torch.Tensor:
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except KeyError:
        raise DataError(path, f"{where} has no transform_matrix") from None
    except (TypeError, ValueError):
        raise DataError(path, f"{where} has a transform_matrix that is not a matrix of numbers") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0, 0, 0, 1]])
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise DataError(path, f"{where} has a transform_matrix that is not a finite 4x4 matrix")
    return rigid_inverse(opengl_to_opencv_c2w(torch.from_numpy(m)))


def _frames_to_cameras(json_path: Path, data: dict, frames: list[dict], base: Path) -> tuple[Cameras, list[Path], list[str], list[Path | None], int]:
    """Cameras for frames whose image exists; returns the count of skipped frames too."""
    w2c, intr, dist, models, ws, hs, paths, names, masks = [], [], [], [], [], [], [], [], []
    skipped = 0
    for i, frame in enumerate(frames):
        where = f"frame {i}"
        if not isinstance(frame, dict) or "file_path" not in frame:
            raise DataError(json_path, f"{where} has no file_path")
        image = _resolve_image(base, str(frame["file_path"]))
        if not image.is_file():
            skipped += 1
            continue
        spec = {k: data[k] for k in _INTRINSIC_KEYS if k in data} | {k: frame[k] for k in _INTRINSIC_KEYS if k in frame}
        m, k, d, w, h = _intrinsics(spec, json_path, image, where)
        w2c.append(_pose(frame, json_path, where))
        intr.append(k)
        dist.append(d)
        models.append(int(m))
        ws.append(w)
        hs.append(h)
        paths.append(image)
        names.append(str(frame["file_path"]))
        masks.append(base / frame["mask_path"] if "mask_path" in frame else None)
    if not paths:
        raise DataError(json_path, f"lists {len(frames)} frames but none of their images exist")
    k = np.array(intr)
    cams = Cameras.create(torch.stack(w2c), k[:, 0], k[:, 1], k[:, 2], k[:, 3], ws, hs, models, dist)
    return cams, paths, names, masks, skipped


def read_nerfstudio(root: Path, json_name: str = "transforms.json") -> RawScene:
    path = root / json_name
    data = _load_json(path)
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DataError(path, "has no 'frames' list")
    cams, paths, names, masks, skipped = _frames_to_cameras(path, data, frames, path.parent)
    warnings = []
    if skipped:
        msg = f"{path}: skipped {skipped} of {len(frames)} frames whose image file is missing"
        log.warning(msg)
        warnings.append(msg)
    cams = _match_image_sizes(cams, paths)

    split = None
    if "train_filenames" in data:
        index = {n: i for i, n in enumerate(names)} | {str(Path(n)): i for i, n in enumerate(names)}

        def pick(key: str) -> list[int]:
            return [index[str(Path(f))] for f in data.get(key, []) if str(Path(f)) in index]

        split = {"train": pick("train_filenames"), "test": pick("test_filenames") or pick("val_filenames")}

    points = colors = None
    if "ply_file_path" in data:
        points, colors = read_ply_points(path.parent / data["ply_file_path"])
    aabb_scale = data.get("aabb_scale")
    if aabb_scale is not None and not (isinstance(aabb_scale, (int, float)) and aabb_scale > 0):
        raise DataError(path, f"has aabb_scale {aabb_scale!r}; it must be a positive number")
    return RawScene(
        format="nerfstudio",
        root=root,
        cameras=cams,
        image_paths=paths,
        names=names,
        points=points,
        point_colors=colors,
        mask_paths=masks if any(m is not None for m in masks) else None,
        split=split,
        downscaled_images=_shipped_downscales(root, paths[0].parent, [p.name for p in paths]) if len({p.parent for p in paths}) == 1 else {},
        warnings=warnings,
        meta={"aabb_scale": aabb_scale, "num_frames_listed": len(frames), "num_frames_skipped": skipped},
    )


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertex positions [P, 3] and colours [P, 3] uint8 of a point-cloud PLY (open3d reader)."""
    if not path.is_file():
        raise DataError(path, "point cloud file not found")
    import open3d as o3d

    pc = o3d.io.read_point_cloud(str(path))
    pts = np.asarray(pc.points)
    if len(pts) == 0:
        raise DataError(path, "holds no points (or is not a readable PLY)")
    cols = (np.asarray(pc.colors) * 255).round().astype(np.uint8) if pc.has_colors() else np.full((len(pts), 3), 128, np.uint8)
    return pts, cols


# ---------------------------------------------------------------------- Blender synthetic
def read_blender(root: Path) -> RawScene:
    splits = {s: root / f"transforms_{s}.json" for s in ("train", "val", "test")}
    if not splits["train"].is_file():
        raise DataError(splits["train"], "not found (a Blender synthetic scene needs transforms_train.json)")
    all_cams, paths, names, index = [], [], [], {}
    for split, p in splits.items():
        if not p.is_file():
            continue
        data = _load_json(p)
        frames = data.get("frames")
        if not isinstance(frames, list) or not frames:
            raise DataError(p, "has no 'frames' list")
        if "camera_angle_x" not in data:
            raise DataError(p, "has no camera_angle_x")
        cams, ps, ns, _, skipped = _frames_to_cameras(p, data, frames, p.parent)
        if skipped:
            raise DataError(p, f"lists {skipped} frames whose image file is missing")
        start = len(paths)
        index[split] = list(range(start, start + len(ps)))
        all_cams.append(cams)
        paths += ps
        names += [f"{split}/{Path(n).name}" for n in ns]
    test_split = "test" if "test" in index else "val"
    return RawScene(
        format="blender",
        root=root,
        cameras=Cameras.cat(all_cams),
        image_paths=paths,
        names=names,
        split={"train": index["train"], "test": index.get(test_split, [])},
        aabb=np.array([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]),
        meta={"test_split_from": test_split if test_split in index else None, "split_sizes": {k: len(v) for k, v in index.items()}},
    )


# ---------------------------------------------------------------------- LLFF
def read_llff(root: Path) -> RawScene:
    path = root / "poses_bounds.npy"
    try:
        arr = np.load(path)
    except (OSError, ValueError) as e:
        raise DataError(path, f"cannot be read as a numpy array ({e})") from None
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise DataError(path, f"must be an [N, 17] array, got shape {list(arr.shape)}")
    image_dir = root / "images"
    files = sorted(p for p in image_dir.iterdir() if imio.is_image_file(p)) if image_dir.is_dir() else []
    if len(files) != len(arr):
        raise DataError(image_dir, f"holds {len(files)} images but poses_bounds.npy has {len(arr)} poses")
    poses = arr[:, :15].reshape(-1, 3, 5)
    near_far = arr[:, 15:17]
    hwf = poses[:, :, 4]  # [N, 3] height, width, focal of the images the poses were made for
    if not (np.isfinite(poses).all() and (hwf > 0).all()):
        raise DataError(path, "holds non-finite poses or non-positive image sizes/focal lengths")
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
