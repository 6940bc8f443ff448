"""Reading COLMAP sparse models (binary and text), written from COLMAP's documented file layout.

Only what scene3d needs is kept: cameras, registered images with their 2D observations, and 3D
points with colours and reprojection errors. ``rigs.bin`` and ``frames.bin`` (written by COLMAP
3.12+ / pycolmap 4) describe multi-camera rigs and are ignored: every image still carries its own
pose in ``images.bin``.

Every structural problem (a truncated file, an unknown camera model, an image that names a
missing camera) raises :class:`~scene3d.errors.DataError` naming the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scene3d.data.validate import shown
from scene3d.errors import DataError

# COLMAP model id -> (name, number of parameters)
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
MODEL_IDS = {name: i for i, (name, _) in CAMERA_MODELS.items()}


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # [num_params] float64, COLMAP order


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # [4] (w, x, y, z), world-to-camera rotation
    tvec: np.ndarray  # [3] world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # [K, 2] observations (pixels)
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # [K], -1 = none


@dataclass
class ColmapModel:
    """A sparse reconstruction. Points are stored as arrays for speed."""

    path: Path
    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    point_ids: np.ndarray  # [P] int64
    xyz: np.ndarray  # [P, 3] float64
    rgb: np.ndarray  # [P, 3] uint8
    errors: np.ndarray  # [P] float64 mean reprojection error (pixels)
    track_lengths: np.ndarray  # [P] int64

    @property
    def num_points(self) -> int:
        return int(self.xyz.shape[0])


class _Reader:
    """A bounds-checked cursor over a binary file's bytes."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as e:
            raise DataError(path, f"cannot be read ({e.strerror or e})") from None
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise DataError(self.path, f"is truncated or corrupt (needed {n} bytes at offset {self.pos}, file has {len(self.data)})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        dtype = np.dtype(dtype)
        return np.frombuffer(self.take(dtype.itemsize * count), dtype=dtype, count=count)

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise DataError(self.path, f"is truncated or corrupt (unterminated image name at offset {self.pos})")
        s = self.data[self.pos : end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return s

    def count(self, what: str, max_item_bytes: int = 1) -> int:
        (n,) = self.unpack("Q")
        if n * max_item_bytes > len(self.data):
            raise DataError(self.path, f"is truncated or corrupt (claims {n} {what}, more than the file can hold)")
        return n

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise DataError(self.path, f"is corrupt ({len(self.data) - self.pos} unexpected trailing bytes)")


def _check_model(path: Path, model_id: int) -> tuple[str, int]:
    if model_id not in CAMERA_MODELS:
        raise DataError(path, f"has an unknown camera model id {model_id}")
    return CAMERA_MODELS[model_id]


def read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    r = _Reader(path)
    cams = {}
    for _ in range(r.count("cameras", 24)):
        cam_id, model_id, w, h = r.unpack("iiQQ")
        name, n = _check_model(path, model_id)
        cams[cam_id] = ColmapCamera(cam_id, name, int(w), int(h), np.array(r.unpack(f"{n}d")))
    r.finish()
    return cams


_POINT2D = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


def read_images_bin(path: Path) -> dict[int, ColmapImage]:
    r = _Reader(path)
    images = {}
    for _ in range(r.count("images", 64)):
        image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.unpack("i7di")
        name = r.cstring()
        k = r.count("2D points", _POINT2D.itemsize)
        pts = r.array(_POINT2D, k)
        images[image_id] = ColmapImage(
            image_id,
            np.array([qw, qx, qy, qz]),
            np.array([tx, ty, tz]),
            cam_id,
            name,
            np.stack([pts["x"], pts["y"]], axis=-1),
            pts["id"].astype(np.int64),
        )
    r.finish()
    return images


def read_points3D_bin(path: Path) -> tuple[np.ndarray, ...]:
    r = _Reader(path)
    n = r.count("points", 43)
    ids = np.empty(n, np.int64)
    xyz = np.empty((n, 3))
    rgb = np.empty((n, 3), np.uint8)
    err = np.empty(n)
    tracks = np.empty(n, np.int64)
    head = struct.Struct("<q3d3BdQ")  # ids read signed: an absurd id must not overflow int64
    for i in range(n):
        pid, x, y, z, cr, cg, cb, e, tl = head.unpack(r.take(head.size))
        r.take(8 * tl)  # track: (image_id int32, point2D_idx int32) pairs
        ids[i], xyz[i], rgb[i], err[i], tracks[i] = pid, (x, y, z), (cr, cg, cb), e, tl
    r.finish()
    return ids, xyz, rgb, err, tracks


MAX_TEXT_LINE = 64 << 20
"""Longest line a COLMAP text file may have (an image's observations or a point's track: 64 MiB
is millions of entries); the files are read a line at a time, never whole."""


def _lines(path: Path):
    """The file's lines without comments, blank ones kept, read one at a time."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            while line := f.readline(MAX_TEXT_LINE + 1):
                if len(line) > MAX_TEXT_LINE:
                    raise DataError(path, f"has a line longer than {MAX_TEXT_LINE:,} characters, so it is not a COLMAP text file")
                if not line.lstrip().startswith("#"):
                    yield line
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror or e})") from None


def _text_lines(path: Path):
    """The fields of each data line (not blank, not a comment), one line at a time."""
    return (ln.split() for ln in _lines(path) if ln.strip())


def _parse(path: Path, lineno: int, fn, *args):
    try:
        return fn(*args)
    except (ValueError, IndexError, KeyError, OverflowError):
        raise DataError(path, f"has a malformed entry at data line {lineno + 1}") from None


def read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cams = {}
    for i, f in enumerate(_text_lines(path)):
        def one(f=f):
            name = f[1]
            if name not in MODEL_IDS:
                raise DataError(path, f"has an unknown camera model {shown(name)}")
            n = CAMERA_MODELS[MODEL_IDS[name]][1]
            params = np.array([float(v) for v in f[4 : 4 + n]])
            if len(params) != n:
                raise ValueError
            return ColmapCamera(int(f[0]), name, int(f[2]), int(f[3]), params)
        cam = _parse(path, i, one)
        cams[cam.id] = cam
    return cams


def _image_pairs(path: Path):
    """(header line, observations line) of each image; the second may be empty or, at the end of
    the file, absent. Blank lines after the last image are not an image."""
    lines = _lines(path)
    for header in lines:
        observations = next(lines, "")
        if header.strip() or observations.strip():
            yield header, observations


def read_images_txt(path: Path) -> dict[int, ColmapImage]:
    images = {}
    for i, (header, observations) in enumerate(_image_pairs(path)):
        def one(header=header, observations=observations):
            f = header.split()
            obs = np.array([float(v) for v in observations.split()]).reshape(-1, 3)
            if not np.isfinite(obs[:, 2]).all() or np.abs(obs[:, 2]).max(initial=0) >= 2**63:
                raise ValueError("a point id is not an integer")
            return ColmapImage(
                int(f[0]),
                np.array([float(v) for v in f[1:5]]),
                np.array([float(v) for v in f[5:8]]),
                int(f[8]),
                " ".join(f[9:]),
                obs[:, :2],
                obs[:, 2].astype(np.int64),
            )
        img = _parse(path, 2 * i, one)
        images[img.id] = img
    return images


def read_points3D_txt(path: Path) -> tuple[np.ndarray, ...]:
    n = sum(1 for ln in _lines(path) if ln.strip())  # a first pass counts, so the arrays are allocated once
    ids, xyz, rgb = np.empty(n, np.int64), np.empty((n, 3)), np.empty((n, 3), np.uint8)
    err, tracks = np.empty(n), np.empty(n, np.int64)
    read = 0
    for i, f in enumerate(_text_lines(path)):
        if i >= n:
            raise DataError(path, "changed while it was read")
        read += 1
        def one(i=i, f=f):
            ids[i] = int(f[0])
            xyz[i] = [float(v) for v in f[1:4]]
            colour = [int(v) for v in f[4:7]]
            if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
                raise DataError(path, f"point {f[0]} (data line {i + 1}) has colour {' '.join(f[4:7])}, but colours must be three whole numbers from 0 to 255")
            rgb[i] = colour
            err[i] = float(f[7])
            tracks[i] = (len(f) - 8) // 2
        _parse(path, i, one)
    if read != n:
        raise DataError(path, "changed while it was read")
    return ids, xyz, rgb, err, tracks


def find_model_files(folder: Path) -> str | None:
    """'bin' or 'txt' if ``folder`` holds a COLMAP model, else None."""
    for ext in ("bin", "txt"):
        if (folder / f"cameras.{ext}").is_file() and (folder / f"images.{ext}").is_file():
            return ext
    return None


def count_registered(folder: Path) -> int:
    """Number of images in the model at ``folder`` without parsing all of it."""
    ext = find_model_files(folder)
    if ext == "bin":
        with open(folder / "images.bin", "rb") as f:
            head = f.read(8)
        return struct.unpack("<Q", head)[0] if len(head) == 8 else 0
    if ext == "txt":
        return len(read_images_txt(folder / "images.txt"))
    return 0


def read_model(folder: Path) -> ColmapModel:
    """Reads the COLMAP model in ``folder`` (binary preferred over text)."""
    folder = Path(folder)
    ext = find_model_files(folder)
    if ext is None:
        raise DataError(folder, "holds no COLMAP model (expected cameras.bin and images.bin, or the .txt pair)")
    if ext == "bin":
        cams, images = read_cameras_bin(folder / "cameras.bin"), read_images_bin(folder / "images.bin")
        pts_path = folder / "points3D.bin"
        pts = read_points3D_bin(pts_path) if pts_path.is_file() else None
    else:
        cams, images = read_cameras_txt(folder / "cameras.txt"), read_images_txt(folder / "images.txt")
        pts_path = folder / "points3D.txt"
        pts = read_points3D_txt(pts_path) if pts_path.is_file() else None
    if pts is None:
        pts = (np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0), np.zeros(0, np.int64))
    for img in images.values():
        if img.camera_id not in cams:
            raise DataError(folder / f"images.{ext}", f"image {shown(img.name)} refers to camera {img.camera_id}, which cameras.{ext} does not define")
    return ColmapModel(folder, cams, images, *pts)
