"""Random pixel batches across training images, and the rays through them.

A NeRF-style model trains on a batch of rays drawn from many images at once. Each ray first picks
one of the training images (uniformly unless told otherwise), then a pixel uniformly inside that
image, so images of different sizes are equally likely (a pixel of a small image is drawn more
often than a pixel of a large one). Rays go through pixel centres ``(x + 0.5, y + 0.5)`` in the OpenCV convention of
:mod:`scene3d.cameras`, distortion included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from scene3d.cameras import Cameras


def sample_pixels(
    cameras: Cameras, camera_indices: list[int] | Tensor, n: int, generator: torch.Generator, by_pixel: bool = False,
    image_weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Draws ``n`` random pixels from the images of ``camera_indices``: an image, then a pixel of
    it uniformly. Images are drawn uniformly; with ``by_pixel`` in proportion to their pixel counts
    (every pixel of every image alike: mip-NeRF's multiscale sampling); with ``image_weights`` in
    proportion to those.

    Args:
        cameras: all cameras of the scene.
        camera_indices: the training cameras to draw from (indices into ``cameras``): a list, or
            an int64 tensor on the host (made once by a caller that draws every step).
        n: number of pixels.
        generator: the random stream (its device is where the drawing happens).
        image_weights: [len(camera_indices)] non-negative, not all zero: relative chance of each image.
    Returns:
        cam: [n] int64 camera indices (values from ``camera_indices``),
        x: [n] int64 columns in [0, width), y: [n] int64 rows in [0, height);
        all on ``cameras.device``.
    """
    if len(camera_indices) == 0:
        raise ValueError("sample_pixels needs at least one camera index")
    assert n >= 0, f"n must be >= 0, got {n}"
    dev = generator.device
    given = isinstance(camera_indices, Tensor)
    host = camera_indices.numpy() if given else np.asarray(camera_indices, dtype=np.int64)  # checked on the host
    assert host.min() >= 0 and host.max() < len(cameras), f"camera_indices must lie in [0, {len(cameras)}), got {camera_indices}"
    indices = (camera_indices if given else torch.from_numpy(host)).to(dev, torch.int64)
    if by_pixel:
        assert image_weights is None, "by_pixel and image_weights are two ways of weighing images: give one"
        image_weights = (cameras.width.to(dev)[indices] * cameras.height.to(dev)[indices]).double()
    if image_weights is None:
        pick = torch.randint(len(indices), (n,), generator=generator, device=dev)
    else:
        w = image_weights.to(dev, torch.float64)
        assert w.shape == indices.shape and bool((w >= 0).all()) and float(w.sum()) > 0, "image_weights: one non-negative weight per image, not all zero"
        ends = torch.cumsum(w, 0)
        u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64) * ends[-1]
        pick = torch.searchsorted(ends, u, right=True).clamp(max=len(indices) - 1)
    cam = indices[pick]
    w = cameras.width.to(dev)[cam]
    h = cameras.height.to(dev)[cam]
    # float64 uniforms, so u * w cannot round up to w for any realistic image size; clamp anyway.
    u = torch.rand(n, 2, generator=generator, device=dev, dtype=torch.float64)
    x = torch.minimum(torch.floor(u[:, 0] * w).long(), w - 1)
    y = torch.minimum(torch.floor(u[:, 1] * h).long(), h - 1)
    out = cameras.device
    return cam.to(out), x.to(out), y.to(out)


@dataclass
class Rays:
    """A batch of N rays.

    ``radii`` is each ray's cone radius per unit of distance along its (unit) direction: the pixel's
    footprint, so the cone through the pixel has radius ``radii * t`` at distance ``t``. As in
    mip-NeRF it is 2/sqrt(12) times the spacing of neighbouring pixels' directions (the radius of
    the disc whose variance matches the square pixel's); samplers and encodings that reason about
    scale (anti-aliased grids, multisampling) read it. None where it is unknown.
    """

    origins: Tensor  # [N, 3]
    dirs: Tensor  # [N, 3] unit
    radii: Tensor | None = None  # [N]

    def __post_init__(self) -> None:
        n = self.origins.shape[0]
        assert self.origins.shape == (n, 3) and self.dirs.shape == (n, 3), (
            f"origins and dirs must be [N, 3], got {tuple(self.origins.shape)} and {tuple(self.dirs.shape)}"
        )
        assert self.radii is None or self.radii.shape == (n,), f"radii must be [{n}], got {tuple(self.radii.shape)}"

    def __len__(self) -> int:
        return self.origins.shape[0]

    def __getitem__(self, idx) -> "Rays":
        return Rays(self.origins[idx], self.dirs[idx], None if self.radii is None else self.radii[idx])

    def to(self, device) -> "Rays":
        return Rays(self.origins.to(device), self.dirs.to(device), None if self.radii is None else self.radii.to(device))


_FOOTPRINT = 2.0 / math.sqrt(12.0)


def _footprint(cameras: Cameras, index, uv: Tensor, dirs: Tensor) -> Tensor:
    """[R] cone radii: the directions' spacing to the next pixel right and below (geometric mean)."""
    u, v = uv.unbind(-1)  # offsets made on the device: a tensor of Python numbers would be copied from the host
    _, dx = cameras.generate_rays(index, torch.stack([u + 1.0, v], dim=-1))
    _, dy = cameras.generate_rays(index, torch.stack([u, v + 1.0], dim=-1))
    spacing = torch.sqrt(torch.linalg.norm(dx - dirs, dim=-1) * torch.linalg.norm(dy - dirs, dim=-1))
    return spacing * _FOOTPRINT


def pixel_rays(cameras: Cameras, cam: Tensor, x: Tensor, y: Tensor) -> Rays:
    """World-space rays through the centres of pixels (x, y) of cameras ``cam``, with their cone radii.

    Args:
        cam, x, y: [n] int64 camera indices, columns and rows.
    Returns:
        Rays on ``cameras.device``: origins [n, 3], unit dirs [n, 3], radii [n].
    """
    n = cam.shape[0]
    assert cam.shape == x.shape == y.shape == (n,), (
        f"cam, x, y must all be [n], got {tuple(cam.shape)}, {tuple(x.shape)}, {tuple(y.shape)}"
    )
    dev = cameras.device
    cam = cam.to(dev)
    uv = torch.stack([x.to(dev, torch.float32) + 0.5, y.to(dev, torch.float32) + 0.5], dim=-1)
    origins, dirs = cameras.generate_rays(cam, uv)
    return Rays(origins, dirs, _footprint(cameras, cam, uv, dirs))


def camera_rays(cameras: Cameras) -> tuple[Rays, int, int]:
    """(rays through every pixel centre of one camera, row-major, its height, its width)."""
    assert len(cameras) == 1, f"camera_rays takes one camera, got {len(cameras)}"
    h, w = int(cameras.height[0]), int(cameras.width[0])
    ys, xs = torch.meshgrid(
        torch.arange(h, device=cameras.device, dtype=torch.float32) + 0.5,
        torch.arange(w, device=cameras.device, dtype=torch.float32) + 0.5,
        indexing="ij",
    )
    uv = torch.stack([xs, ys], dim=-1).reshape(-1, 2)
    origins, dirs = cameras.generate_rays(0, uv)
    return Rays(origins, dirs, _footprint(cameras, 0, uv, dirs)), h, w
