"""Random pixel batches across training images, and the rays through them.

A NeRF-style model trains on a batch of rays drawn from many images at once. Each ray first picks
one of the training images uniformly, then a pixel uniformly inside that image, so images of
different sizes are equally likely (a pixel of a small image is drawn more often than a pixel of a
large one). Rays go through pixel centres ``(x + 0.5, y + 0.5)`` in the OpenCV convention of
:mod:`scene3d.cameras`, distortion included.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scene3d.cameras import Cameras


def sample_pixels(
    cameras: Cameras, camera_indices: list[int], n: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Draws ``n`` random pixels from the images of ``camera_indices``.

    Args:
        cameras: all cameras of the scene.
        camera_indices: the training cameras to draw from (indices into ``cameras``).
        n: number of pixels.
        generator: the random stream (its device is where the drawing happens).
    Returns:
        cam: [n] int64 camera indices (values from ``camera_indices``),
        x: [n] int64 columns in [0, width), y: [n] int64 rows in [0, height);
        all on ``cameras.device``.
    """
    if len(camera_indices) == 0:
        raise ValueError("sample_pixels needs at least one camera index")
    assert n >= 0, f"n must be >= 0, got {n}"
    dev = generator.device
    indices = torch.as_tensor(camera_indices, dtype=torch.int64, device=dev)
    assert int(indices.min()) >= 0 and int(indices.max()) < len(cameras), (
        f"camera_indices must lie in [0, {len(cameras)}), got {camera_indices}"
    )
    pick = torch.randint(len(indices), (n,), generator=generator, device=dev)
    cam = indices[pick]
    w = cameras.width.to(dev)[cam]
    h = cameras.height.to(dev)[cam]
    # float64 uniforms, so u * w cannot round up to w for any realistic image size; clamp anyway.
    u = torch.rand(n, 2, generator=generator, device=dev, dtype=torch.float64)
    x = torch.minimum(torch.floor(u[:, 0] * w).long(), w - 1)
    y = torch.minimum(torch.floor(u[:, 1] * h).long(), h - 1)
    out = cameras.device
    return cam.to(out), x.to(out), y.to(out)


def pixel_rays(cameras: Cameras, cam: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """World-space rays through the centres of pixels (x, y) of cameras ``cam``.

    Args:
        cam, x, y: [n] int64 camera indices, columns and rows.
    Returns:
        origins: [n, 3]; dirs: [n, 3] unit directions.
    """
    n = cam.shape[0]
    assert cam.shape == x.shape == y.shape == (n,), (
        f"cam, x, y must all be [n], got {tuple(cam.shape)}, {tuple(x.shape)}, {tuple(y.shape)}"
    )
    dev = cameras.device
    uv = torch.stack([x.to(dev, torch.float32) + 0.5, y.to(dev, torch.float32) + 0.5], dim=-1)
    return cameras.generate_rays(cam.to(dev), uv)
