"""Batched cameras in the OpenCV convention.

Convention (the one COLMAP and gsplat use): camera x points right, y down, z forward; a pixel's
continuous coordinates have the top-left corner of the image at (0, 0), so the centre of pixel
(i, j) is (i + 0.5, j + 0.5). Poses are stored world-to-camera. OpenGL/Blender and LLFF poses are
converted once, at load time, with the helpers at the bottom of this module.

Distortion is stored as four numbers per camera whose meaning depends on the camera model:

=================  =========================  =================================
model              params (COLMAP order)      ``dist``
=================  =========================  =================================
SIMPLE_PINHOLE     f, cx, cy                  0, 0, 0, 0
PINHOLE            fx, fy, cx, cy             0, 0, 0, 0
SIMPLE_RADIAL      f, cx, cy, k               k, 0, 0, 0
RADIAL             f, cx, cy, k1, k2          k1, k2, 0, 0
OPENCV             fx, fy, cx, cy, k1..p2     k1, k2, p1, p2
OPENCV_FISHEYE     fx, fy, cx, cy, k1..k4     k1, k2, k3, k4
=================  =========================  =================================

All perspective models share the radial-tangential formula (unused terms are zero); the fisheye
model is the equidistant one of OpenCV/COLMAP.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import Sequence

import torch
from torch import Tensor

from scene3d.geometry import quaternion_to_matrix, rigid_inverse  # noqa: F401  (re-exported: the camera layer's pose maths)


class CameraModel(enum.IntEnum):
    """Camera models, numbered as COLMAP numbers them."""

    SIMPLE_PINHOLE = 0
    PINHOLE = 1
    SIMPLE_RADIAL = 2
    RADIAL = 3
    OPENCV = 4
    OPENCV_FISHEYE = 5

    @property
    def is_fisheye(self) -> bool:
        return self is CameraModel.OPENCV_FISHEYE


def _as_batch(x, n: int, dtype=torch.float32) -> Tensor:
    t = torch.as_tensor(x, dtype=dtype)
    if t.ndim == 0:
        t = t.expand(n).clone()
    return t


@dataclass(frozen=True)
class Cameras:
    """A batch of N cameras.

    Attributes:
        world_to_cam: [N, 4, 4] world-to-camera transforms (OpenCV convention).
        fx, fy, cx, cy: [N] focal lengths and principal point, in pixels.
        width, height: [N] image size in pixels (int64).
        model: [N] :class:`CameraModel` codes (int64).
        dist: [N, 4] distortion parameters (see the module docstring).
    """

    world_to_cam: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: Tensor
    height: Tensor
    model: Tensor
    dist: Tensor

    def __post_init__(self) -> None:
        n = self.world_to_cam.shape[0]
        assert self.world_to_cam.shape == (n, 4, 4), f"world_to_cam must be [N,4,4], got {tuple(self.world_to_cam.shape)}"
        for name in ("fx", "fy", "cx", "cy", "width", "height", "model"):
            shape = tuple(getattr(self, name).shape)
            assert shape == (n,), f"{name} must be [{n}], got {shape}"
        assert self.dist.shape == (n, 4), f"dist must be [{n},4], got {tuple(self.dist.shape)}"

    @staticmethod
    def create(
        world_to_cam,
        fx,
        fy,
        cx,
        cy,
        width,
        height,
        model: CameraModel | int | Sequence[int] = CameraModel.PINHOLE,
        dist=None,
    ) -> "Cameras":
        """Builds cameras from array-likes; scalars are broadcast over the batch."""
        w2c = torch.as_tensor(world_to_cam, dtype=torch.float32)
        if w2c.ndim == 2:
            w2c = w2c[None]
        if w2c.shape[-2:] == (3, 4):
            bottom = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(w2c.shape[0], 1, 4)
            w2c = torch.cat([w2c, bottom], dim=1)
        n = w2c.shape[0]
        d = torch.zeros(n, 4) if dist is None else torch.as_tensor(dist, dtype=torch.float32).reshape(-1, 4)
        if d.shape[0] == 1 and n > 1:
            d = d.expand(n, 4).clone()
        return Cameras(
            world_to_cam=w2c.contiguous(),
            fx=_as_batch(fx, n),
            fy=_as_batch(fy, n),
            cx=_as_batch(cx, n),
            cy=_as_batch(cy, n),
            width=_as_batch(width, n, torch.int64),
            height=_as_batch(height, n, torch.int64),
            model=_as_batch(model, n, torch.int64),
            dist=d,
        )

    # ------------------------------------------------------------------ batch handling
    def __len__(self) -> int:
        return self.world_to_cam.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        """A sub-batch; an integer index keeps the batch dimension."""
        if isinstance(idx, int):
            idx = [idx]
        out = Cameras(**{k: v[idx] for k, v in self._fields().items()})
        host = self.__dict__.get("_host")
        if host is not None and isinstance(idx, (list, slice)):
            object.__setattr__(out, "_host", host[idx])
        return out

    def _fields(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def to(self, device: torch.device | str) -> "Cameras":
        """The cameras on ``device``. Cameras moved off the CPU remember the copy they came from,
        so :meth:`on_host` reads sizes and models without waiting for the device."""
        out = Cameras(**{k: v.to(device) for k, v in self._fields().items()})
        if out.device.type != "cpu":
            host = self if self.device.type == "cpu" else self.__dict__.get("_host")
            if host is not None:
                object.__setattr__(out, "_host", host)
        return out

    def on_host(self) -> "Cameras":
        """These cameras on the CPU (the copy they were moved from, when there is one: no device
        synchronisation). For reading sizes and camera models in host code."""
        if self.device.type == "cpu":
            return self
        host = self.__dict__.get("_host")
        return host if host is not None else self.to("cpu")

    @staticmethod
    def cat(batches: Sequence["Cameras"]) -> "Cameras":
        return Cameras(**{k: torch.cat([getattr(b, k) for b in batches]) for k in Cameras.__dataclass_fields__})

    @property
    def device(self) -> torch.device:
        return self.world_to_cam.device

    # ------------------------------------------------------------------ derived quantities
    @property
    def cam_to_world(self) -> Tensor:
        """[N, 4, 4] camera-to-world transforms (OpenCV convention)."""
        return rigid_inverse(self.world_to_cam)

    @property
    def centers(self) -> Tensor:
        """[N, 3] camera centres in world coordinates."""
        return self.cam_to_world[:, :3, 3]

    @property
    def Ks(self) -> Tensor:
        """[N, 3, 3] intrinsic matrices."""
        K = torch.zeros(len(self), 3, 3, device=self.device)
        K[:, 0, 0], K[:, 1, 1] = self.fx, self.fy
        K[:, 0, 2], K[:, 1, 2] = self.cx, self.cy
        K[:, 2, 2] = 1.0
        return K

    @property
    def is_distorted(self) -> Tensor:
        """[N] bool: whether a camera has non-zero distortion or a fisheye model."""
        return (self.dist.abs().sum(-1) > 0) | (self.model == CameraModel.OPENCV_FISHEYE)

    # ------------------------------------------------------------------ editing
    def resized(self, width, height) -> "Cameras":
        """Cameras for images resampled to ``width`` x ``height`` (scalars or [N]).

        Intrinsics scale with the ratio of new to old size along each axis; with the pixel-corner
        origin this is exact for any resampling that maps the image rectangle onto itself.
        """
        w = _as_batch(width, len(self), torch.int64).to(self.device)
        h = _as_batch(height, len(self), torch.int64).to(self.device)
        sx = w.float() / self.width.float()
        sy = h.float() / self.height.float()
        return replace(self, fx=self.fx * sx, fy=self.fy * sy, cx=self.cx * sx, cy=self.cy * sy, width=w, height=h)

    def downscaled(self, factor: float) -> "Cameras":
        """Cameras for images downscaled by ``factor`` (sizes rounded to the nearest pixel)."""
        w = torch.clamp(torch.round(self.width.float() / factor), min=1).long()
        h = torch.clamp(torch.round(self.height.float() / factor), min=1).long()
        return self.resized(w, h)

    def transformed(self, world_transform: Tensor) -> "Cameras":
        """Cameras after the world is mapped by the similarity ``world_transform`` [4, 4].

        ``world_transform`` = [[s R, t], [0, 1]]; the new world-to-camera is rigid again: the
        camera's translation is scaled by s, its rotation loses R.
        """
        T = torch.as_tensor(world_transform, dtype=torch.float32, device=self.device)
        s = torch.linalg.det(T[:3, :3]).abs() ** (1.0 / 3.0)
        c2w = self.cam_to_world
        new_c2w = T @ c2w
        new_c2w[:, :3, :3] = new_c2w[:, :3, :3] / s
        return replace(self, world_to_cam=rigid_inverse(new_c2w))

    # ------------------------------------------------------------------ projection and rays
    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Projects world points into every camera, honouring distortion.

        Args:
            points: [P, 3] world points.
        Returns:
            uv: [N, P, 2] pixel coordinates (pixel-corner origin).
            depth: [N, P] z in camera coordinates (<= 0 means behind the camera).
        """
        assert points.ndim == 2 and points.shape[-1] == 3, f"points must be [P,3], got {tuple(points.shape)}"
        pts = points.to(self.world_to_cam)
        p_cam = torch.einsum("nij,pj->npi", self.world_to_cam[:, :3, :3], pts) + self.world_to_cam[:, None, :3, 3]
        z = p_cam[..., 2]
        xy = camera_to_normalized(p_cam, self.model[:, None], self.dist[:, None, :])
        u = xy[..., 0] * self.fx[:, None] + self.cx[:, None]
        v = xy[..., 1] * self.fy[:, None] + self.cy[:, None]
        return torch.stack([u, v], dim=-1), z

    def pixel_directions(self, uv: Tensor, index: int | Tensor | None = None) -> Tensor:
        """Camera-frame unit directions of pixel positions.

        Args:
            uv: [N, R, 2] pixel coordinates (or [R, 2] with ``index`` naming one camera, or
                [R, 2] with ``index`` a [R] tensor of camera indices).
        Returns:
            [..., R, 3] unit directions in the camera frame (z forward).
        """
        fx, fy, cx, cy, model, dist = self._select(index, uv.ndim)
        xd = (uv[..., 0] - cx) / fx
        yd = (uv[..., 1] - cy) / fy
        if self.all_pinhole:  # no distortion to invert, known without reading the device
            dirs = torch.stack([xd, yd, torch.ones_like(xd)], dim=-1)
        else:
            dirs = normalized_to_camera_dirs(torch.stack([xd, yd], dim=-1), model, dist)
        return dirs / torch.linalg.norm(dirs, dim=-1, keepdim=True)

    @property
    def all_pinhole(self) -> bool:
        """Whether no camera of the batch is distorted or fisheye. Read once per batch (from its
        host copy where it has one) and kept while ``model`` and ``dist`` are unchanged, so rays
        drawn every training step do not wait for the device to answer it."""
        key = (self.model._version, self.dist._version)
        cached = self.__dict__.get("_all_pinhole")
        if cached is None or cached[0] != key:
            host = self.on_host()
            cached = (key, not bool(host.is_distorted.any()))
            object.__setattr__(self, "_all_pinhole", cached)
        return cached[1]

    def _select(self, index, uv_ndim: int):
        params = (self.fx, self.fy, self.cx, self.cy, self.model, self.dist)
        if index is None:
            assert uv_ndim == 3, "uv must be [N,R,2] when no camera index is given"
            return tuple(p[:, None] for p in params)
        if isinstance(index, int):
            return tuple(p[index] for p in params)
        return tuple(p[index] for p in params)

    def generate_rays(self, index: int | Tensor, uv: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """World-space rays through pixel positions.

        Args:
            index: one camera index (then ``uv`` is [R, 2], or None for every pixel centre,
                giving [H, W] rays), or a [R] tensor of camera indices with ``uv`` [R, 2].
        Returns:
            origins, directions: [..., 3]; directions have unit length.
        """
        if uv is None:
            assert isinstance(index, int), "whole-image rays need a single camera index"
            w, h = int(self.width[index]), int(self.height[index])
            ys, xs = torch.meshgrid(
                torch.arange(h, device=self.device, dtype=torch.float32) + 0.5,
                torch.arange(w, device=self.device, dtype=torch.float32) + 0.5,
                indexing="ij",
            )
            uv = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
            o, d = self.generate_rays(index, uv)
            return o.reshape(h, w, 3), d.reshape(h, w, 3)
        dirs_cam = self.pixel_directions(uv, index)
        c2w = self.cam_to_world[index]
        if isinstance(index, int):
            dirs = dirs_cam @ c2w[:3, :3].T
            origins = c2w[:3, 3].expand_as(dirs)
        else:
            dirs = torch.einsum("rij,rj->ri", c2w[:, :3, :3], dirs_cam)
            origins = c2w[:, :3, 3]
        return origins, dirs


# ---------------------------------------------------------------------- distortion maths
def distort(xy: Tensor, model: Tensor, dist: Tensor) -> Tensor:
    """Maps undistorted normalised coordinates to distorted ones.

    For perspective models ``xy`` are (X/Z, Y/Z); for the fisheye model ``xy`` are also (X/Z, Y/Z)
    of a point in front of the camera (use :func:`camera_to_normalized` for points beyond 90 deg).

    Args:
        xy: [..., 2]; model: [...] codes; dist: [..., 4] (both broadcastable to xy's batch).
    Returns:
        [..., 2] distorted normalised coordinates.
    """
    x, y = xy[..., 0], xy[..., 1]
    k1, k2, p1, p2 = dist.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * k2)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    persp = torch.stack([xd, yd], dim=-1)
    fish = _fisheye_distort(torch.sqrt(r2), torch.ones_like(r2), x, y, dist)
    return torch.where((model == CameraModel.OPENCV_FISHEYE)[..., None], fish, persp)


def _fisheye_distort(r: Tensor, z: Tensor, x: Tensor, y: Tensor, dist: Tensor) -> Tensor:
    """Equidistant fisheye: theta = atan2(r, z); theta_d = theta (1 + k1 t^2 + ... + k4 t^8)."""
    k1, k2, k3, k4 = dist.unbind(-1)
    theta = torch.atan2(r, z)
    t2 = theta * theta
    theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    scale = torch.where(r > 1e-12, theta_d / r.clamp_min(1e-12), 1.0 / z.clamp_min(1e-12))
    return torch.stack([x * scale, y * scale], dim=-1)


def camera_to_normalized(p_cam: Tensor, model: Tensor, dist: Tensor) -> Tensor:
    """Distorted normalised image coordinates of camera-frame points [..., 3] -> [..., 2]."""
    z = p_cam[..., 2]
    safe_z = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    xy = p_cam[..., :2] / safe_z[..., None]
    persp = distort(xy, torch.zeros_like(model), dist)
    r = torch.linalg.norm(p_cam[..., :2], dim=-1)
    fish = _fisheye_distort(r, z, p_cam[..., 0], p_cam[..., 1], dist)
    return torch.where((model == CameraModel.OPENCV_FISHEYE)[..., None], fish, persp)


def undistort(xy_d: Tensor, model: Tensor, dist: Tensor, iterations: int = 20) -> Tensor:
    """Inverts :func:`distort` for perspective models by Newton's method.

    Args:
        xy_d: [..., 2] distorted normalised coordinates; model [...]; dist [..., 4].
    Returns:
        [..., 2] undistorted normalised coordinates (X/Z, Y/Z). For fisheye cameras this is only
        meaningful within 90 degrees of the axis; prefer :func:`normalized_to_camera_dirs`.
    """
    dirs = normalized_to_camera_dirs(xy_d, model, dist, iterations)
    return dirs[..., :2] / dirs[..., 2:3]


def _radtan_residual(x: Tensor, y: Tensor, xd: Tensor, yd: Tensor, k1, k2, p1, p2) -> tuple[Tensor, Tensor, Tensor]:
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * k2)
    fx = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
    fy = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
    return fx, fy, radial


def _undistort_radtan(xd: Tensor, yd: Tensor, dist: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """Newton's method with step halving: a step is shortened until the residual shrinks, so
    strong barrel distortion (where the polynomial folds back) cannot throw the iterate onto the
    far branch on the other side of the centre."""
    k1, k2, p1, p2 = dist.unbind(-1)
    x, y = xd.clone(), yd.clone()
    for _ in range(iterations):
        fx, fy, radial = _radtan_residual(x, y, xd, yd, k1, k2, p1, p2)
        r2 = x * x + y * y
        d_radial = k1 + 2 * k2 * r2  # d radial / d r2
        fx_x = radial + 2 * x * x * d_radial + 2 * p1 * y + 6 * p2 * x
        fx_y = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        fy_x = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        fy_y = radial + 2 * y * y * d_radial + 6 * p1 * y + 2 * p2 * x
        det = fx_x * fy_y - fx_y * fy_x
        det = torch.where(det.abs() < 1e-12, torch.full_like(det, 1e-12), det)
        dx = (fx * fy_y - fy * fx_y) / det
        dy = (fy * fx_x - fx * fy_x) / det
        err = fx * fx + fy * fy
        step = torch.ones_like(x)
        for _ in range(8):
            gx, gy, _ = _radtan_residual(x - step * dx, y - step * dy, xd, yd, k1, k2, p1, p2)
            worse = gx * gx + gy * gy > err
            if not bool(worse.any()):
                break
            step = torch.where(worse, step * 0.5, step)
        x = x - step * dx
        y = y - step * dy
    return x, y


def _fisheye_theta(theta_d: Tensor, dist: Tensor, iterations: int) -> Tensor:
    k1, k2, k3, k4 = dist.unbind(-1)
    theta = theta_d.clone()
    for _ in range(iterations):
        t2 = theta * theta
        f = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - theta_d
        df = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
        theta = theta - f / torch.where(df.abs() < 1e-12, torch.full_like(df, 1e-12), df)
    return theta


def normalized_to_camera_dirs(xy_d: Tensor, model: Tensor, dist: Tensor, iterations: int = 20) -> Tensor:
    """Camera-frame directions (not normalised) of distorted normalised coordinates [..., 2].

    Perspective models return (x, y, 1); the fisheye model returns (sin t * xd/rd, sin t * yd/rd,
    cos t), valid beyond 90 degrees.
    """
    xd, yd = xy_d[..., 0], xy_d[..., 1]
    if not bool((model == CameraModel.OPENCV_FISHEYE).any()) and not bool(dist.any()):  # pinhole: nothing to invert
        return torch.stack([xd, yd, torch.ones_like(xd)], dim=-1)
    model, dist = torch.broadcast_tensors(model[..., None], dist)
    model = model[..., 0]
    dist = dist.expand(*xd.shape, 4)
    model = model.expand(xd.shape)
    x, y = _undistort_radtan(xd, yd, dist, iterations)
    persp = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    rd = torch.sqrt(xd * xd + yd * yd)
    theta = _fisheye_theta(rd, dist, iterations)
    s = torch.where(rd > 1e-12, torch.sin(theta) / rd.clamp_min(1e-12), torch.ones_like(rd))
    fish = torch.stack([xd * s, yd * s, torch.cos(theta)], dim=-1)
    return torch.where((model == CameraModel.OPENCV_FISHEYE)[..., None], fish, persp)


# ---------------------------------------------------------------------- pose conventions
_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def opengl_to_opencv_c2w(c2w_gl: Tensor) -> Tensor:
    """OpenGL/Blender camera-to-world [..., 4, 4] (x right, y up, z back) -> OpenCV (x right, y down, z forward).

    The world frame is unchanged; only the camera axes flip.
    """
    c2w = torch.as_tensor(c2w_gl, dtype=torch.float64)
    return c2w @ _FLIP_YZ.to(c2w)


def opencv_to_opengl_c2w(c2w_cv: Tensor) -> Tensor:
    """Inverse of :func:`opengl_to_opencv_c2w` (flipping y and z is its own inverse)."""
    return opengl_to_opencv_c2w(c2w_cv)


def llff_to_opencv_c2w(poses: Tensor) -> Tensor:
    """LLFF ``poses_bounds.npy`` 3x4 poses [..., 3, 4] -> OpenCV camera-to-world [..., 4, 4].

    LLFF stores the rotation columns as (down, right, backwards); OpenCV wants (right, down,
    forwards), so the columns become (col1, col0, -col2).
    """
    p = torch.as_tensor(poses, dtype=torch.float64)
    R = torch.stack([p[..., :, 1], p[..., :, 0], -p[..., :, 2]], dim=-1)
    out = torch.zeros(*p.shape[:-2], 4, 4, dtype=torch.float64)
    out[..., :3, :3] = R
    out[..., :3, 3] = p[..., :, 3]
    out[..., 3, 3] = 1.0
    return out
