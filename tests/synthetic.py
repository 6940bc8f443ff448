"""A small scene rendered from known Gaussians, written as a nerfstudio dataset (for training tests)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from scene3d.cameras import Cameras, opencv_to_opengl_c2w, rigid_inverse
from scene3d.render import look_at


def ring_cameras(n: int, width: int, height: int, radius: float = 3.0, seed: int = 0) -> Cameras:
    rng = np.random.default_rng(seed)
    poses = []
    for k in range(n):
        a = 2 * math.pi * k / n
        eye = np.array([radius * math.cos(a), radius * math.sin(a), 0.8 + 0.4 * rng.uniform(-1, 1)])
        poses.append(look_at(eye, np.zeros(3), np.array([0.0, 0.0, 1.0])))
    w2c = rigid_inverse(torch.from_numpy(np.stack(poses))).float()
    f = 0.9 * width
    return Cameras.create(w2c, f, f, width / 2, height / 2, width, height)


def known_gaussians(n: int = 400, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=g) - 0.5) * 1.6
    quats = torch.randn(n, 4, generator=g)
    scales = 0.04 + 0.08 * torch.rand(n, 3, generator=g)
    opacities = 0.6 + 0.4 * torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    return {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors}


def write_synthetic_scene(root: Path, n_views: int = 24, width: int = 64, height: int = 48, seed: int = 0, points: bool = True) -> Path:
    """Renders :func:`known_gaussians` into ``n_views`` ring cameras and writes transforms.json,
    PNG images and (with ``points``) a sparse point cloud (the centres, jittered) like nerfstudio's layout."""
    from PIL import Image

    from scene3d.renderers.gaussians import RasterSettings, rasterize

    g = known_gaussians(seed=seed)
    cams = ring_cameras(n_views, width, height, seed=seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    with torch.no_grad():
        out = rasterize(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], cams, RasterSettings(backend="torch"))
    c2w_gl = opencv_to_opengl_c2w(cams.cam_to_world.double())
    for k in range(n_views):
        img = out.rgb[k].clamp(0, 1).mul(255).round().byte().numpy()
        Image.fromarray(img).save(root / "images" / f"{k:03d}.png")
        frames.append({"file_path": f"images/{k:03d}.png", "transform_matrix": c2w_gl[k].tolist()})
    meta = {"fl_x": float(cams.fx[0]), "fl_y": float(cams.fy[0]), "cx": width / 2, "cy": height / 2, "w": width, "h": height, "frames": frames}
    if points:
        rng = np.random.default_rng(seed)
        pts = g["means"].numpy() + rng.normal(scale=0.01, size=(len(g["means"]), 3))
        cols = (g["colors"].numpy() * 255).astype(np.uint8)
        header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(pts)}\nproperty float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
        rec = np.zeros(len(pts), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("r", "u1"), ("g", "u1"), ("b", "u1")])
        rec["x"], rec["y"], rec["z"] = pts.T
        rec["r"], rec["g"], rec["b"] = cols.T
        (root / "points.ply").write_bytes(header.encode() + rec.tobytes())
        meta["ply_file_path"] = "points.ply"
    (root / "transforms.json").write_text(json.dumps(meta))
    return root
