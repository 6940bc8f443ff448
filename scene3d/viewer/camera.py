"""Cameras for the viewer: the browser's camera as :class:`~scene3d.cameras.Cameras`, and camera
paths (keyframes saved as JSON, interpolated into one camera per video frame).

viser reports a camera as a camera-to-world rotation (quaternion ``wxyz``) and position in the
OpenCV convention (x right, y down, z forward), which is scene3d's convention too, plus a vertical
field of view and the canvas size in pixels. A pinhole camera with square pixels and the principal
point at the centre reproduces what the browser shows.

Camera-path files (``scene3d-camera-path`` version 1) hold their keyframes in the *input* frame of
the data (the frame scene files are exported in), so one path works for a run, for the files
exported from it and for ``scene3d render RUN --path PATH.json``::

    {"format": "scene3d-camera-path", "version": 1, "width": 1280, "height": 720, "fps": 30,
     "seconds": 4.0, "loop": false,
     "keyframes": [{"position": [x, y, z], "wxyz": [w, x, y, z], "fov": 50.0}, ...]}

``fov`` is the vertical field of view in degrees. Positions follow a Catmull-Rom spline through the
keyframes, orientations a spherical interpolation between neighbouring keyframes (both uniform in
keyframe index), so the camera passes through every keyframe exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scene3d.cameras import Cameras
from scene3d.geometry import matrix_to_quat, quat_to_matrix, rigid_inverse, slerp  # noqa: F401  (re-exported for the viewer's callers)
from scene3d.errors import DataError
from scene3d.render import MAX_FPS, MAX_FRAMES, MAX_SIDE, MIN_FPS, MIN_SIDE  # noqa: F401  (also the page's limits)

PATH_FORMAT = "scene3d-camera-path"

# Ceilings for camera paths, from files and from the viewer's page alike (the video ones, shared with
# the command line, are scene3d.render's).
MIN_SECONDS, MAX_SECONDS = 0.05, 3600.0
MAX_KEYFRAMES = 1000
MIN_FOV, MAX_FOV = 0.1, 179.0  # vertical, degrees
MAX_COORDINATE = 1e9  # keyframe positions, scene units
MAX_FILE_BYTES = 1 << 20  # a path of MAX_KEYFRAMES keyframes is about 0.4 MB


# ---------------------------------------------------------------------------- viser <-> Cameras
def pinhole_camera(c2w: np.ndarray, fov_y: float, width: int, height: int) -> Cameras:
    """A pinhole camera (OpenCV c2w [4, 4], vertical fov in radians) with square pixels."""
    f = 0.5 * height / math.tan(0.5 * fov_y)
    w2c = rigid_inverse(torch.from_numpy(np.asarray(c2w, dtype=np.float64))[None]).float()
    return Cameras.create(w2c, f, f, width / 2.0, height / 2.0, int(width), int(height))


def pose_c2w(wxyz, position) -> np.ndarray:
    c2w = np.eye(4)
    c2w[:3, :3] = quat_to_matrix(wxyz)
    c2w[:3, 3] = np.asarray(position, dtype=np.float64)
    return c2w


def viewer_camera(wxyz, position, fov_y: float, width: int, height: int) -> Cameras:
    """The browser camera (viser's wxyz, position, vertical fov in radians, canvas size)."""
    return pinhole_camera(pose_c2w(wxyz, position), fov_y, width, height)


def camera_pose(cams: Cameras, i: int = 0) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(wxyz, position, vertical fov in radians, aspect) of camera ``i``, as viser takes them."""
    c2w = cams.cam_to_world[i].double().cpu().numpy()
    h, w = float(cams.height[i]), float(cams.width[i])
    fov_y = 2 * math.atan(0.5 * h / float(cams.fy[i]))
    return matrix_to_quat(c2w[:3, :3]), c2w[:3, 3].copy(), fov_y, w / h


def transform_c2w(c2w: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Camera-to-world pose after the world is mapped by the similarity ``T`` (rotation kept rigid)."""
    T = np.asarray(T, dtype=np.float64)
    s = abs(np.linalg.det(T[:3, :3])) ** (1.0 / 3.0)
    out = T @ np.asarray(c2w, dtype=np.float64)
    out[:3, :3] /= s
    return out


# ---------------------------------------------------------------------------- camera paths
@dataclass
class Keyframe:
    position: np.ndarray  # [3], input frame
    wxyz: np.ndarray  # [4], camera-to-world rotation, OpenCV convention
    fov: float  # vertical, degrees

    def c2w(self) -> np.ndarray:
        return pose_c2w(self.wxyz, self.position)


@dataclass
class CameraPath:
    """Keyframes (input frame) and how to play them."""

    keyframes: list[Keyframe] = field(default_factory=list)
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    seconds: float = 4.0
    loop: bool = False

    @property
    def num_frames(self) -> int:
        return max(int(round(self.seconds * self.fps)), 1)

    # ---- JSON
    def to_json(self) -> dict:
        return {
            "format": PATH_FORMAT,
            "version": 1,
            "width": int(self.width),
            "height": int(self.height),
            "fps": float(self.fps),
            "seconds": float(self.seconds),
            "loop": bool(self.loop),
            "keyframes": [{"position": [float(v) for v in k.position], "wxyz": [float(v) for v in k.wxyz], "fov": float(k.fov)} for k in self.keyframes],
        }

    def save(self, path: Path) -> Path:
        from scene3d.atomic import atomic_write

        return atomic_write(path, json.dumps(self.to_json(), indent=2))

    @staticmethod
    def from_json(data, source: Path | str = "camera path") -> "CameraPath":
        """Checks every field against the ceilings above before anything is built, so a hostile
        file cannot ask for endless frames, huge images or non-finite cameras."""

        def bad(problem: str) -> DataError:
            return DataError(Path(source), f"is not a valid camera path: {problem}")

        def number(value, name: str, lo: float, hi: float, integer: bool = False) -> float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(f'"{name}" must be a number, not {type(value).__name__}')
            try:
                value = float(value)
            except OverflowError:  # an integer too long for a float
                raise bad(f'"{name}" is out of range') from None
            if not math.isfinite(value):
                raise bad(f'"{name}" is {value}, not a finite number')
            if integer and not value.is_integer():
                raise bad(f'"{name}" must be a whole number, not {value}')
            if not lo <= value <= hi:
                raise bad(f'"{name}" is {value:g}, outside {lo:g} to {hi:g}')
            return value

        if not isinstance(data, dict) or data.get("format") != PATH_FORMAT:
            raise bad(f'"format" must be "{PATH_FORMAT}"')
        if data.get("version") != 1:
            raise bad(f"unsupported version {data.get('version')!r} (this scene3d reads version 1)")
        for name in ("width", "height", "fps", "seconds", "keyframes"):
            if name not in data:
                raise bad(f'the field "{name}" is missing')
        width = int(number(data["width"], "width", MIN_SIDE, MAX_SIDE, integer=True))
        height = int(number(data["height"], "height", MIN_SIDE, MAX_SIDE, integer=True))
        fps = float(number(data["fps"], "fps", MIN_FPS, MAX_FPS))
        seconds = float(number(data["seconds"], "seconds", MIN_SECONDS, MAX_SECONDS))
        if seconds * fps > MAX_FRAMES:
            raise bad(f'"seconds" x "fps" is {seconds * fps:g} frames, above the ceiling of {MAX_FRAMES}')
        loop = data.get("loop", False)
        if not isinstance(loop, bool):
            raise bad('"loop" must be true or false')
        raw = data["keyframes"]
        if not isinstance(raw, list):
            raise bad('"keyframes" must be a list')
        if not raw:
            raise bad("it has no keyframes")
        if len(raw) > MAX_KEYFRAMES:
            raise bad(f'"keyframes" holds {len(raw)} keyframes, above the ceiling of {MAX_KEYFRAMES}')
        keys = []
        for j, k in enumerate(raw):
            if not isinstance(k, dict) or any(name not in k for name in ("position", "wxyz", "fov")):
                raise bad(f"keyframe {j} is missing its position, wxyz or fov")
            pos, q = k["position"], k["wxyz"]
            if not (isinstance(pos, list) and len(pos) == 3 and isinstance(q, list) and len(q) == 4):
                raise bad(f"keyframe {j}: position needs 3 numbers and wxyz 4")
            pos = np.array([number(v, f"keyframes[{j}].position", -MAX_COORDINATE, MAX_COORDINATE) for v in pos], dtype=np.float64)
            q = np.array([number(v, f"keyframes[{j}].wxyz", -1e6, 1e6) for v in q], dtype=np.float64)
            fov = float(number(k["fov"], f"keyframes[{j}].fov", MIN_FOV, MAX_FOV))
            if np.linalg.norm(q) < 1e-8:
                raise bad(f"keyframe {j} holds a zero quaternion")
            keys.append(Keyframe(pos, q / np.linalg.norm(q), fov))
        return CameraPath(keys, width, height, fps, seconds, loop)

    @staticmethod
    def parse(content: bytes, source: Path | str) -> "CameraPath":
        """A camera path from the bytes of a file (``source`` names it in errors), size-capped."""
        if len(content) > MAX_FILE_BYTES:
            raise DataError(Path(source), f"is {len(content):,} bytes, above the camera-path ceiling of {MAX_FILE_BYTES:,}")
        try:
            data = json.loads(content.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(Path(source), f"is not valid JSON ({e})") from None
        except RecursionError:
            raise DataError(Path(source), "is not valid JSON (nested too deeply)") from None
        return CameraPath.from_json(data, source)

    @staticmethod
    def load(path: Path) -> "CameraPath":
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "does not exist")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:  # checked before reading
            raise DataError(path, f"is {size:,} bytes, above the camera-path ceiling of {MAX_FILE_BYTES:,}")
        return CameraPath.parse(path.read_bytes(), path)

    # ---- interpolation
    def poses(self, num_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(c2w [F, 4, 4], vertical fov in degrees [F]) along the path, in the input frame."""
        n = self.num_frames if num_frames is None else num_frames
        keys = self.keyframes
        if not keys:
            raise ValueError("the camera path has no keyframes")
        k = len(keys)
        positions = np.stack([kf.position for kf in keys])
        quats = np.stack([kf.wxyz for kf in keys])
        fovs = np.array([kf.fov for kf in keys])
        segments = k if (self.loop and k > 1) else k - 1
        out_c2w, out_fov = [], []
        for f in range(n):
            if segments == 0:
                u = 0.0
            elif self.loop:
                u = segments * f / n  # the last frame stops short of the first keyframe
            else:
                u = segments * f / max(n - 1, 1)
            seg = min(int(math.floor(u)), max(segments - 1, 0))
            t = u - seg
            i0, i1 = seg % k, (seg + 1) % k
            im1 = (seg - 1) % k if self.loop else max(seg - 1, 0)
            i2 = (seg + 2) % k if self.loop else min(seg + 2, k - 1)
            p = _catmull_rom(positions[im1], positions[i0], positions[i1], positions[i2], t)
            q = slerp(quats[i0], quats[i1], t)
            c2w = pose_c2w(q, p)
            out_c2w.append(c2w)
            out_fov.append((1 - t) * fovs[i0] + t * fovs[i1])
        return np.stack(out_c2w), np.array(out_fov)

    def cameras(self, to_model: np.ndarray | None = None, width: int | None = None, height: int | None = None, num_frames: int | None = None) -> Cameras:
        """One pinhole camera per frame, moved into the model's frame by ``to_model`` (input -> model)."""
        w, h = int(width or self.width), int(height or self.height)
        c2ws, fovs = self.poses(num_frames)
        cams = []
        for c2w, fov in zip(c2ws, fovs):
            if to_model is not None:
                c2w = transform_c2w(c2w, to_model)
            cams.append(pinhole_camera(c2w, math.radians(fov), w, h))
        return Cameras.cat(cams)


def _catmull_rom(p0, p1, p2, p3, t: float) -> np.ndarray:
    t2, t3 = t * t, t * t * t
    return 0.5 * ((2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t3)
