"""Point clouds of a trained run: ``scene3d export RUN --format points -o cloud.ply``.

Any representation gives one. A model that bakes to Gaussians gives its Gaussians' centres,
coloured by their view-independent colour (those at least ``min_opacity`` opaque). A field (a NeRF)
is sampled where the training cameras see it: each training view is rendered at a size that makes
about ``2 x num_points`` rays in all, and every pixel at least ``min_alpha`` opaque becomes the
point at its expected depth along the ray, coloured by the render (un-premultiplied). The cloud is
then thinned at random to ``num_points``, and written in the input data's frame as a binary PLY
of ``x y z`` (float32) and ``red green blue`` (uint8), which MeshLab, CloudCompare, Open3D and
Blender open.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from scene3d.errors import Scene3dError

MAX_POINTS = 50_000_000  # what --num-points may ask for (1.5 GB of PLY)


def gaussian_points(gaussians, min_opacity: float) -> tuple[np.ndarray, np.ndarray]:
    """(centres [N, 3], colours [N, 3] in [0, 1]) of the Gaussians at least ``min_opacity`` opaque."""
    from scene3d.renderers.gaussians import sh_to_rgb

    keep = torch.sigmoid(gaussians.opacities.detach()) >= min_opacity
    xyz = gaussians.means.detach()[keep]
    rgb = sh_to_rgb(gaussians.sh0.detach()[keep, 0]).clamp(0, 1)
    return xyz.cpu().double().numpy(), rgb.cpu().float().numpy()


@torch.no_grad()
def field_points(model, cameras, num_rays: int, min_alpha: float, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(points [P, 3], colours [P, 3]) of a field seen by ``cameras`` (model frame): every view
    rendered at the size that makes about ``num_rays`` rays over all of them, the pixels at least
    ``min_alpha`` opaque placed at their expected distance along the ray."""
    from rich.progress import track

    from scene3d.renderers.rays import camera_rays

    pixels = float((cameras.width * cameras.height).sum())
    factor = max(1.0, math.sqrt(pixels / max(1, num_rays)))
    cams = cameras.downscaled(factor) if factor > 1.0 else cameras
    xyz, rgb = [], []
    for i in track(range(len(cams)), description="sampling the field", transient=True, disable=not progress):
        cam = cams[i]
        out = model.render(cam)
        rays, _, _ = camera_rays(cam)
        alpha = out.alpha.reshape(-1)
        keep = torch.isfinite(out.depth.reshape(-1)) & (alpha >= min_alpha)
        depth = out.depth.reshape(-1, 1)[keep]
        xyz.append((rays.origins[keep] + rays.dirs[keep] * depth).double().cpu())
        rgb.append((out.rgb.reshape(-1, 3)[keep] / alpha[keep, None]).clamp(0, 1).float().cpu())
    return torch.cat(xyz).numpy(), torch.cat(rgb).numpy()


def thin(xyz: np.ndarray, rgb: np.ndarray, num_points: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """At most ``num_points`` of the points, drawn without replacement (seeded), in their order."""
    if len(xyz) <= num_points:
        return xyz, rgb
    keep = np.sort(np.random.default_rng(seed).choice(len(xyz), size=num_points, replace=False))
    return xyz[keep], rgb[keep]


def write_point_ply(path: str | Path, xyz: np.ndarray, rgb: np.ndarray, transform: np.ndarray | None = None) -> Path:
    """Writes points [N, 3] with colours [N, 3] in [0, 1] as a binary little-endian PLY (``transform``
    [4, 4]: applied to the points first). Written beside ``path`` and moved over it when complete."""
    from scene3d.atomic import atomic_write

    xyz = np.asarray(xyz, dtype=np.float64)
    if transform is not None:
        t = np.asarray(transform, dtype=np.float64)
        xyz = xyz @ t[:3, :3].T + t[:3, 3]
    rows = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    rows["x"], rows["y"], rows["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    colour = np.clip(np.rint(np.asarray(rgb, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    rows["red"], rows["green"], rows["blue"] = colour[:, 0], colour[:, 1], colour[:, 2]
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment scene3d point cloud\n"
        f"element vertex {len(rows)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nend_header\n"
    )

    def write(f) -> None:
        f.write(header.encode("ascii"))
        f.write(rows.tobytes())

    return atomic_write(Path(path), write)


def read_point_ply(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(points [N, 3] float32, colours [N, 3] uint8) of a PLY written by :func:`write_point_ply`."""
    from scene3d.errors import DataError

    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(4096)
    end = head.find(b"end_header\n")
    if not head.startswith(b"ply\n") or end < 0:
        raise DataError(path, "is not a PLY file")
    lines = head[:end].decode("ascii", "replace").splitlines()
    try:
        counts = [int(line.split()[2]) for line in lines if line.startswith("element vertex ")]
    except (IndexError, ValueError):
        raise DataError(path, "has an element vertex line without a count") from None
    dtype = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    start = end + len(b"end_header\n")
    if len(counts) != 1 or path.stat().st_size != start + counts[0] * dtype.itemsize:
        raise DataError(path, "is not a point cloud of x, y, z and red, green, blue whose size matches its vertex count")
    rows = np.fromfile(path, dtype=dtype, offset=start, count=counts[0])
    return np.stack([rows["x"], rows["y"], rows["z"]], -1), np.stack([rows["red"], rows["green"], rows["blue"]], -1)


def export_points(run, model, output: Path, *, num_points: int = 1_000_000, min_alpha: float = 0.5, seed: int = 0, progress: bool = True) -> int:
    """Writes ``run``'s point cloud (see the module docstring) to ``output``; returns its size."""
    if not 1 <= num_points <= MAX_POINTS:
        raise Scene3dError(f"--num-points must be in 1..{MAX_POINTS:,}, got {num_points}")
    if not 0.0 < min_alpha <= 1.0:
        raise Scene3dError(f"--min-alpha must be in (0, 1], got {min_alpha}")
    gaussians = model.to_gaussians() if model.caps.gaussians else None
    if gaussians is not None:
        xyz, rgb = gaussian_points(gaussians, min_alpha)
    else:
        ds = run.dataset()
        cams = ds.cameras[ds.train_indices].to(next(iter(model.parameters())).device)
        xyz, rgb = field_points(model, cams, 2 * num_points, min_alpha, progress)
    if len(xyz) == 0:
        raise Scene3dError(f"{run.path}: no point of the model is at least {min_alpha} opaque; nothing to write (try a lower --min-alpha)")
    xyz, rgb = thin(xyz, rgb, num_points, seed)
    write_point_ply(output, xyz, rgb, transform=run.to_input)
    return len(xyz)
