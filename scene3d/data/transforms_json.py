"""The transforms.json readers: nerfstudio / instant-ngp (``transforms.json``) and Blender
synthetic (``transforms_{train,val,test}.json``), plus the PLY point cloud a transforms.json may name.

Every value is checked before it is used: numbers must be numbers in range, paths strings that
stay inside the scene folder, and the JSON itself bounded in size and depth. OpenGL camera-to-world
poses are converted here to OpenCV world-to-camera.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from scene3d.cameras import CameraModel, Cameras, opengl_to_opencv_c2w, rigid_inverse
from scene3d.data import images as imio
from scene3d.data import validate
from scene3d.data.dataset import RawScene
from scene3d.data.readers import _match_image_sizes, _shipped_downscales
from scene3d.errors import DataError

log = logging.getLogger("scene3d.data")


# ---------------------------------------------------------------------- nerfstudio / instant-ngp
def _load_json(path: Path) -> dict:
    try:
        if path.stat().st_size > validate.MAX_JSON_BYTES:
            raise DataError(path, f"is larger than {validate.MAX_JSON_BYTES >> 20} MiB, more than any scene description needs")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "not found") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, or a number too long to convert
        raise DataError(path, f"is not valid JSON ({str(e)[:120]})") from None
    except RecursionError:
        raise DataError(path, "is nested too deeply to be a scene description") from None
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise DataError(path, "must hold a JSON object at the top level")
    if validate.json_depth(data) > validate.MAX_JSON_DEPTH:
        raise DataError(path, f"nests lists and objects more than {validate.MAX_JSON_DEPTH} deep, more than any scene description needs")
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


def _angle(path: Path, where: str, field: str, value) -> float:
    a = validate.real(path, where, field, value)
    if not 0 < a < math.pi:
        raise DataError(path, f"{where} has {field} {value}, but a field of view must be between 0 and pi radians")
    return a


def _intrinsics(spec: dict, path: Path, image: Path, where: str) -> tuple[CameraModel, list[float], list[float], int, int]:
    """Intrinsics from a transforms.json dict (global keys overridden per frame), each value checked."""
    if "w" in spec and "h" in spec:
        w, h = validate.size(path, where, "w", spec["w"]), validate.size(path, where, "h", spec["h"])
    else:
        w, h = imio.image_size(image)
    num = lambda key, **kw: validate.real(path, where, key, spec[key], **kw) if key in spec else None  # noqa: E731
    fx, fy = num("fl_x", minimum=validate.MIN_FOCAL), num("fl_y", minimum=validate.MIN_FOCAL)
    if fx is None and "camera_angle_x" in spec:
        fx = 0.5 * w / math.tan(0.5 * _angle(path, where, "camera_angle_x", spec["camera_angle_x"]))
    if fy is None and "camera_angle_y" in spec:
        fy = 0.5 * h / math.tan(0.5 * _angle(path, where, "camera_angle_y", spec["camera_angle_y"]))
    if fx is None and fy is None:
        raise DataError(path, f"{where} has no focal length (fl_x/fl_y or camera_angle_x)")
    fx, fy = (fx if fx is not None else fy), (fy if fy is not None else fx)
    cx, cy = num("cx"), num("cy")
    cx, cy = (w / 2 if cx is None else cx), (h / 2 if cy is None else cy)
    name = validate.text(path, where, "camera_model", spec.get("camera_model", "OPENCV")).upper()
    coeff = {k: num(k) or 0.0 for k in ("k1", "k2", "k3", "k4", "p1", "p2")}
    if name == "OPENCV_FISHEYE":
        dist, model = [coeff[k] for k in ("k1", "k2", "k3", "k4")], CameraModel.OPENCV_FISHEYE
    elif name in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        if coeff["k3"] != 0.0:
            log.warning("%s: k3 is ignored (scene3d models OPENCV distortion with k1, k2, p1, p2)", path)
        dist = [coeff[k] for k in ("k1", "k2", "p1", "p2")]
        model = CameraModel.OPENCV if any(dist) else CameraModel.PINHOLE
    else:
        raise DataError(path, f"{where} has camera_model {validate.shown(name)}; supported: OPENCV, OPENCV_FISHEYE, PINHOLE")
    validate.check_camera(path, where, fx, fy, cx, cy, dist, w, h)
    return model, [fx, fy, cx, cy], dist, w, h


def _pose(frame: dict, path: Path, where: str) -> torch.Tensor:
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except KeyError:
        raise DataError(path, f"{where} has no transform_matrix") from None
    except (TypeError, ValueError, OverflowError, RecursionError):
        raise DataError(path, f"{where} has a transform_matrix that is not a matrix of numbers") from None
    if m.shape == (3, 4):
        m = np.vstack([m, [0, 0, 0, 1]])
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise DataError(path, f"{where} has a transform_matrix that is not a finite 4x4 matrix")
    validate.check_rotation(path, where, "transform_matrix", m[:3, :3], m[:3, 3])
    return rigid_inverse(opengl_to_opencv_c2w(torch.from_numpy(m)))


def _frames_to_cameras(json_path: Path, data: dict, frames: list[dict], root: Path, allow_outside: bool) -> tuple[Cameras, list[Path], list[str], list[Path | None], int]:
    """Cameras for frames whose image exists; returns the count of skipped frames too."""
    w2c, intr, dist, models, ws, hs, paths, names, masks = [], [], [], [], [], [], [], [], []
    skipped = 0
    base = json_path.parent
    for i, frame in enumerate(frames):
        where = f"frame {i}"
        if not isinstance(frame, dict) or "file_path" not in frame:
            raise DataError(json_path, f"{where} has no file_path")
        file_path = validate.text(json_path, where, "file_path", frame["file_path"])
        where = f"frame {i} ({validate.shown(file_path, quote=False)})"
        validate.inside(root, base / file_path, allow_outside, json_path, where)  # before any file is probed
        image = validate.inside(root, _resolve_image(base, file_path), allow_outside, json_path, where)
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
        names.append(file_path)
        mask = None
        if "mask_path" in frame:
            mask = validate.inside(root, base / validate.text(json_path, where, "mask_path", frame["mask_path"]), allow_outside, json_path, where)
        masks.append(mask)
    if not paths:
        raise DataError(json_path, f"lists {len(frames)} frames but none of their images exist")
    k = np.array(intr)
    cams = Cameras.create(torch.stack(w2c), k[:, 0], k[:, 1], k[:, 2], k[:, 3], ws, hs, models, dist)
    return cams, paths, names, masks, skipped


def _file_list(path: Path, data: dict, key: str) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(path, f"has {key} {validate.shown(value, 40)}, but it must be a list of file names")
    return value


def read_nerfstudio(root: Path, json_name: str = "transforms.json", allow_outside: bool = False) -> RawScene:
    path = root / json_name
    data = _load_json(path)
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DataError(path, "has no 'frames' list")
    cams, paths, names, masks, skipped = _frames_to_cameras(path, data, frames, root, allow_outside)
    warnings = []
    if skipped:
        msg = f"{path}: skipped {skipped} of {len(frames)} frames whose image file is missing"
        log.warning(msg)
        warnings.append(msg)
    cams = _match_image_sizes(cams, paths)

    split = None
    if "train_filenames" in data:
        index = {n: i for i, n in enumerate(names)} | {str(Path(n)): i for i, n in enumerate(names)}
        lists = {key: _file_list(path, data, key) for key in ("train_filenames", "test_filenames", "val_filenames")}

        def pick(key: str) -> list[int]:
            return [index[str(Path(f))] for f in lists[key] if str(Path(f)) in index]

        split = {"train": pick("train_filenames"), "test": pick("test_filenames") or pick("val_filenames")}

    points = colors = None
    if "ply_file_path" in data:
        ply = path.parent / validate.text(path, "the scene", "ply_file_path", data["ply_file_path"])
        points, colors = read_ply_points(validate.inside(root, ply, allow_outside, path, "ply_file_path"))
    aabb_scale = data.get("aabb_scale")
    if aabb_scale is not None:
        validate.real(path, "the scene", "aabb_scale", aabb_scale, positive=True)
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
    _check_ply_header(path)
    import open3d as o3d

    pc = o3d.io.read_point_cloud(str(path))
    pts = np.asarray(pc.points)
    if len(pts) == 0:
        raise DataError(path, "holds no points (or is not a readable PLY)")
    cols = (np.asarray(pc.colors) * 255).round().astype(np.uint8) if pc.has_colors() else np.full((len(pts), 3), 128, np.uint8)
    return pts, cols


_PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
              "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}


def _check_ply_header(path: Path) -> None:
    """Refuses a PLY whose header is malformed or declares more elements than the file can hold,
    before open3d allocates for them."""
    if path.suffix.lower() != ".ply":
        raise DataError(path, "is not a .ply point cloud (nerfstudio's ply_file_path names a PLY file)")
    with open(path, "rb") as f:
        head = f.read(65536)
    end = head.find(b"end_header")
    if not head.startswith(b"ply") or end < 0:
        raise DataError(path, "is not a PLY file (no 'ply' ... 'end_header' header in its first 64 KiB)")
    newline = head.find(b"\n", end)
    body = path.stat().st_size - newline - 1 if newline >= 0 else 0
    lines = [ln.split() for ln in head[:end].decode("latin1").splitlines()]
    binary = any(ln[:2] in (["format", "binary_little_endian"], ["format", "binary_big_endian"]) for ln in lines)
    elements = []
    for ln in lines:
        if ln[:1] == ["element"] and len(ln) == 3 and ln[2].isdigit():
            elements.append([ln[1], int(ln[2]), 0])
        elif ln[:1] == ["property"] and elements and len(ln) >= 3:
            elements[-1][2] += _PLY_SIZES.get(ln[2] if ln[1] == "list" else ln[1], 1) if binary else 2  # ascii: a digit and a space
        elif ln[:1] == ["element"]:
            raise DataError(path, f"has a malformed PLY header line {' '.join(ln)[:60]!r}")
    need = sum(count * max(per_item, 1) for _, count, per_item in elements)
    if need > body + 1:  # + 1: an ascii file's last line may lack its newline
        name, count, _ = max(elements, key=lambda e: e[1])
        raise DataError(path, f"declares {count} {name} elements, more than the file holds")


# ---------------------------------------------------------------------- Blender synthetic
def read_blender(root: Path, allow_outside: bool = False) -> RawScene:
    splits = {s: root / f"transforms_{s}.json" for s in ("train", "val", "test")}
    if not splits["train"].is_file() and (root / "metadata.json").is_file():
        return read_blender_multiscale(root, allow_outside)
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
        cams, ps, ns, _, skipped = _frames_to_cameras(p, data, frames, root, allow_outside)
        if skipped:
            raise DataError(p, f"lists {skipped} frames whose image file is missing")
        start = len(paths)
        index[split] = list(range(start, start + len(ps)))
        all_cams.append(cams)
        paths += ps
        names += [f"{split}/{Path(n).name}" for n in ns]
    return _blender_scene(root, all_cams, paths, names, index)


def _blender_scene(root: Path, cams: list[Cameras], paths: list[Path], names: list[str], index: dict[str, list[int]], **meta) -> RawScene:
    """A Blender scene's RawScene from its splits' cameras, files and names (``index``: split ->
    image indices; the test split is ``test``, else ``val``), in the [-1.5, 1.5]^3 box."""
    test_split = "test" if "test" in index else "val"
    return RawScene(
        format="blender",
        root=root,
        cameras=Cameras.cat(cams),
        image_paths=paths,
        names=names,
        split={"train": index["train"], "test": index.get(test_split, [])},
        aabb=np.array([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]]),
        meta={"test_split_from": test_split if test_split in index else None, "split_sizes": {k: len(v) for k, v in index.items()}, **meta},
    )


_MULTISCALE_LISTS = ("file_path", "cam2world", "width", "height", "focal")


def read_blender_multiscale(root: Path, allow_outside: bool = False) -> RawScene:
    """mip-NeRF's multiscale Blender layout: ``metadata.json`` maps each split (train, val, test) to
    parallel lists ``file_path``, ``cam2world`` (OpenGL camera-to-world, 3x4 or 4x4), ``width``,
    ``height``, ``focal`` and ``lossmult`` (the squared downscale of each image, 1, 4, 16, 64; or
    ``label``, its power of two). Each image is a camera of its own; the scale factors are kept
    (``SceneDataset.scale_factors``), so evaluation reports PSNR per scale."""
    path = root / "metadata.json"
    meta = _load_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("train"), dict):
        raise DataError(path, "has no 'train' split (a multiscale Blender scene maps train, val and test to lists of images)")
    all_cams, paths, names, factors, index = [], [], [], [], {}
    for split in ("train", "val", "test"):
        entry = meta.get(split)
        if entry is None:
            continue
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), list) for k in _MULTISCALE_LISTS):
            raise DataError(path, f"split {split!r} must hold the lists {', '.join(_MULTISCALE_LISTS)}")
        n = len(entry["file_path"])
        if n == 0 or any(len(entry[k]) != n for k in _MULTISCALE_LISTS):
            raise DataError(path, f"split {split!r} must hold lists of one equal, non-zero length ({', '.join(_MULTISCALE_LISTS)})")
        scale = entry.get("lossmult", entry.get("label"))
        if scale is not None and (not isinstance(scale, list) or len(scale) != n):
            raise DataError(path, f"split {split!r} has a lossmult (or label) list whose length is not {n}")
        frames = []
        for i in range(n):
            where = f"{split} image {i}"
            frames.append({"file_path": entry["file_path"][i], "transform_matrix": entry["cam2world"][i], "fl_x": entry["focal"][i],
                           "fl_y": entry["focal"][i], "w": entry["width"][i], "h": entry["height"][i], "camera_model": "PINHOLE"})  # fmt: skip
            if scale is None:
                factors.append(1)
            else:
                factors.append(_scale_factor(path, where, scale[i], squared="lossmult" in entry))
        cams, ps, ns, _, skipped = _frames_to_cameras(path, {}, frames, root, allow_outside)
        if skipped:
            raise DataError(path, f"split {split!r} lists {skipped} images whose file is missing")
        index[split] = list(range(len(paths), len(paths) + len(ps)))
        all_cams.append(cams)
        paths += ps
        names += [str(n) for n in ns]
    return _blender_scene(root, all_cams, paths, names, index, scale_factors=factors, multiscale_layout=True)


def _scale_factor(path: Path, where: str, value, squared: bool) -> int:
    """An image's downscale (1, 2, 4, ...) from its ``lossmult`` (``squared``: f^2) or ``label`` (log2 f)."""
    v = validate.real(path, where, "lossmult" if squared else "label", value)
    f = math.sqrt(v) if squared else 2.0**v if 0 <= v <= 16 else -1.0
    k = round(math.log2(f)) if f >= 1 else -1
    if not 0 <= k <= 16 or abs(f - 2**k) > 1e-3 * f:
        raise DataError(path, f"{where} has {'lossmult' if squared else 'label'} {value}, but it must give a downscale of a power of two")
    return 2**k
