"""Models, cameras and renders shared by the scene-file tests (exporters, importers, compression)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.renderers.gaussians import RasterSettings, rasterize


def random_model(n: int = 2000, degree: int = 3, seed: int = 0, extent: float = 1.0) -> dict[str, Tensor]:
    """A plausible trained-looking model in scene3d's convention: means in a cube of half-size
    ``extent`` around the origin, log scales around 2% of the extent, unnormalised quaternions,
    logit opacities spread over (0, 1), DC colours over the displayable range, small higher SH."""
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return {
        "means": (torch.rand(n, 3, generator=g) * 2 - 1) * extent,
        "quats": torch.randn(n, 4, generator=g) * 0.7,
        "scales": math.log(0.02 * extent) + 0.6 * torch.randn(n, 3, generator=g),
        "opacities": 2.0 * torch.randn(n, generator=g),
        "sh0": (torch.rand(n, 1, 3, generator=g) - 0.5) * 3.0,
        "shN": 0.15 * torch.randn(n, k - 1, 3, generator=g),
    }


def orbit_cameras(num: int = 4, radius: float = 3.0, size: int = 96, fov_deg: float = 50.0) -> Cameras:
    """``num`` pinhole cameras on a circle of ``radius`` around the origin, looking at it."""
    w2cs = []
    for i in range(num):
        a = 2 * math.pi * i / num
        eye = torch.tensor([radius * math.cos(a), 0.4 * radius, radius * math.sin(a)])
        forward = -eye / eye.norm()
        right = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0]))
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        R = torch.stack([right, down, forward])  # rows: camera x, y, z in world (OpenCV)
        w2c = torch.eye(4)
        w2c[:3, :3] = R
        w2c[:3, 3] = -R @ eye
        w2cs.append(w2c)
    f = 0.5 * size / math.tan(math.radians(fov_deg) / 2)
    return Cameras.create(torch.stack(w2cs), f, f, size / 2, size / 2, size, size)


def render(params: dict[str, Tensor], cameras: Cameras) -> Tensor:
    """[C, H, W, 3] renders of a model in scene3d's convention (CPU rasterizer, white background)."""
    colors = torch.cat([params["sh0"], params["shN"]], dim=1) if params.get("shN") is not None else params["sh0"]
    with torch.no_grad():
        out = rasterize(
            params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
            colors, cameras, RasterSettings(background=(1.0, 1.0, 1.0), render_depth=False),
        )  # fmt: skip
    return out.rgb.clamp(0, 1)


def psnr(a: Tensor, b: Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return float("inf") if mse == 0 else -10 * math.log10(mse)
