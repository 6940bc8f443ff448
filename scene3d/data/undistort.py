"""Undistortion of a dataset's images to pinhole cameras (cached on disk).

Gaussian rasterizers model pinhole cameras only, so distorted captures (OPENCV, fisheye) are
resampled once: each output pixel looks up, through the distortion model, where its ray falls in
the original image (bilinear). The pinhole intrinsics keep the image size and principal point;
the focal length is raised just enough that every output pixel has a source pixel, so no black
border appears (OpenCV's ``alpha = 0``).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scene3d.atomic import atomic_path
from scene3d.cameras import CameraModel, Cameras, distort
from scene3d.data import images as imio


def _source_pixels(cams: Cameras, i: int, zoom: float, uv: torch.Tensor) -> torch.Tensor:
    """Pixel positions in the distorted image i of pinhole pixels ``uv`` [M, 2] (focal x zoom)."""
    fx, fy, cx, cy = (float(v[i]) for v in (cams.fx, cams.fy, cams.cx, cams.cy))
    xy = torch.stack([(uv[:, 0] - cx) / (fx * zoom), (uv[:, 1] - cy) / (fy * zoom)], -1).double()
    xd = distort(xy, cams.model[i].expand(len(uv)), cams.dist[i].double().expand(len(uv), 4))
    return torch.stack([xd[:, 0] * fx + cx, xd[:, 1] * fy + cy], -1)


def _border(w: int, h: int, n: int = 64) -> torch.Tensor:
    t = torch.linspace(0, 1, n, dtype=torch.float64)
    xs, ys = t * w, t * h
    return torch.cat([
        torch.stack([xs, torch.zeros_like(xs)], -1), torch.stack([xs, torch.full_like(xs, h)], -1),
        torch.stack([torch.zeros_like(ys), ys], -1), torch.stack([torch.full_like(ys, w), ys], -1),
    ])


def pinhole_zoom(cams: Cameras, i: int) -> float:
    """Smallest focal multiplier (>= some value near 1) whose whole image maps inside the source."""
    w, h = int(cams.width[i]), int(cams.height[i])
    border = _border(w, h)

    def inside(z: float) -> bool:
        src = _source_pixels(cams, i, z, border)
        return bool(((src[:, 0] >= 0) & (src[:, 0] <= w) & (src[:, 1] >= 0) & (src[:, 1] <= h)).all())

    lo, hi = 0.5, 1.0
    while not inside(hi):
        lo, hi = hi, hi * 1.5
        if hi > 20:
            return hi
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if inside(mid) else (mid, hi)
    return hi


def undistort_image(img: np.ndarray, cams: Cameras, i: int, zoom: float) -> np.ndarray:
    """Resamples image i (uint8 [H, W, C]) to its pinhole camera."""
    h, w = img.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5, torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    src = _source_pixels(cams, i, zoom, torch.stack([xs, ys], -1).reshape(-1, 2))
    grid = torch.stack([src[:, 0] / w * 2 - 1, src[:, 1] / h * 2 - 1], -1).float().reshape(1, h, w, 2)
    t = torch.from_numpy(np.ascontiguousarray(img).copy()).permute(2, 0, 1)[None].float()
    out = F.grid_sample(t, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def undistort_dataset(ds):
    """A copy of ``ds`` whose distorted cameras are pinhole, reading undistorted cached images."""
    from PIL import Image

    cams = ds.cameras
    todo = [i for i in range(len(cams)) if bool(cams.is_distorted[i])]
    if not todo:
        return ds
    fx, fy = cams.fx.clone(), cams.fy.clone()
    paths = list(ds.image_paths)
    key = hashlib.sha1(str(Path(ds.root).resolve()).encode()).hexdigest()[:16]
    folder = imio.cache_root() / "undistorted" / key / f"images_{ds.downscale}"
    from rich.progress import track

    for i in track(todo, description=f"undistorting {len(todo)} images", transient=True):
        zoom = pinhole_zoom(cams, i)
        fx[i], fy[i] = cams.fx[i] * zoom, cams.fy[i] * zoom
        source = imio.source_stamp(Path(ds.image_paths[i])).encode()  # a replaced photo is undistorted again
        tag = hashlib.sha1(np.array([zoom, *cams.dist[i].tolist(), float(cams.fx[i])]).tobytes() + source).hexdigest()[:8]
        dst = folder / f"{i:05d}_{tag}_{Path(ds.image_paths[i]).stem}.png"
        if not dst.is_file():
            out = undistort_image(ds.image_uint8(i), cams, i, zoom)
            with atomic_path(dst, suffix=".png") as tmp:
                Image.fromarray(out).save(tmp, format="PNG")
        paths[i] = dst
    model = cams.model.clone()
    model[todo] = int(CameraModel.PINHOLE)
    dist = cams.dist.clone()
    dist[todo] = 0
    new_cams = replace(cams, fx=fx, fy=fy, model=model, dist=dist)
    return replace(ds, cameras=new_cams, image_paths=paths, mask_paths=None if todo else ds.mask_paths, meta={**ds.meta, "undistorted": len(todo)})
