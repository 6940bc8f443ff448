"""Projection of 3D Gaussians into pinhole cameras: the differentiable torch code every backend
shares (autograd carries the rasterizers' 2D gradients back to means, quaternions, scales,
opacities and colours).

The maths follows EWA splatting as 3DGS and gsplat compute it:

- world covariance ``Sigma = R S S^T R^T`` from a (w, x, y, z) quaternion (normalised here) and
  actual (not log) scales;
- camera-frame centre ``t = W m + w`` and covariance ``W Sigma W^T``;
- 2D covariance ``J Sigma_c J^T`` with the pinhole Jacobian ``J = [[fx/z, 0, -fx x/z^2],
  [0, fy/z, -fy y/z^2]]``, where x/z and y/z are clamped to 1.3 times the field of view (as
  gsplat does, so Gaussians far outside the image do not explode);
- the low-pass filter: ``eps2d`` is added to the diagonal; in antialiased mode the opacity is
  multiplied by ``sqrt(det(cov) / det(cov + eps2d I))`` (Mip-Splatting);
- the radius rule of gsplat 1.5: a Gaussian reaches ``extend * sqrt(cov_xx)`` pixels in x (and
  likewise in y), ``extend = min(3.33, sqrt(2 ln(255 opacity)))``, rounded up; that box holds every
  pixel where its alpha reaches 1/255. Gaussians nearer than ``near``, farther than ``far``, with
  opacity below 1/255 or whose box misses the image get radius 0 (culled).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scene3d.cameras import Cameras, quaternion_to_matrix
from scene3d.renderers.gaussians.settings import ALPHA_MIN, RADIUS_SIGMAS
from scene3d.renderers.gaussians.sh import sh_degree_of, sh_to_color


@dataclass
class Projection:
    """Gaussians projected into C cameras. Entries with ``radii_xy == 0`` are culled: their other
    values are finite but meaningless."""

    means2d: Tensor  # [C, N, 2] pixel coordinates of the centres (pixel-corner origin)
    conics: Tensor  # [C, N, 3] (a, b, c) of the inverse blurred 2D covariance [[a, b], [b, c]]
    depths: Tensor  # [C, N] camera-space z
    opacities: Tensor  # [C, N] opacity, times the antialiasing compensation when enabled
    radii_xy: Tensor  # [C, N, 2] int32 extent in pixels along x and y (0 = culled)
    log_thresholds: Tensor  # [C, N] ln(255 opacity) (no grad): a pixel is reached iff sigma <= this

    @property
    def radii(self) -> Tensor:
        """[C, N] int32: the larger of the two extents."""
        return self.radii_xy.amax(dim=-1)

    @property
    def visible(self) -> Tensor:
        """[C, N] bool."""
        return (self.radii_xy > 0).all(dim=-1)


def _quat_to_rotation_entries(quats: Tensor) -> list[list[Tensor]]:
    """Rotation matrices of (w, x, y, z) quaternions [N, 4] (normalised here), as 3x3 nested lists
    of [N] entries (the same matrix as :func:`scene3d.cameras.quaternion_to_matrix`)."""
    w, x, y, z = (quats / torch.linalg.norm(quats, dim=-1, keepdim=True)).unbind(-1)
    return [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World covariances [N, 3, 3] of Gaussians with quaternions [N, 4] (w, x, y, z) and scales [N, 3]."""
    M = quaternion_to_matrix(quats) * scales[..., None, :]  # R S
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    cameras: Cameras,
    *,
    near: float,
    far: float,
    eps2d: float,
    antialiased: bool,
) -> Projection:
    """Projects N Gaussians into every camera of the batch (all cameras share one image size).

    With ``M = R S`` (so Sigma = M M^T) and ``T = J W`` (the 2x3 Jacobian times the camera
    rotation), the 2D covariance is ``(T M)(T M)^T``: the 3x3 camera-frame covariance is never
    formed. Matrices are handled as lists of their entries, each a [N] or [C, N] tensor, because
    torch on CPU is several times faster on long contiguous tensors than on [..., 3, 3] ones.
    """
    width, height = int(cameras.width[0]), int(cameras.height[0])
    R = _quat_to_rotation_entries(quats)  # 3x3 nested lists of [N]
    M = [[R[j][k] * scales[:, k] for k in range(3)] for j in range(3)]  # R S
    W = cameras.world_to_cam[:, :3, :3]  # [C, 3, 3]
    Wc = [[W[:, j, k, None] for k in range(3)] for j in range(3)]  # entries as [C, 1]
    t = cameras.world_to_cam[:, :3, 3]
    mx, my, mz = means.unbind(-1)
    x, y, z = (Wc[j][0] * mx + Wc[j][1] * my + Wc[j][2] * mz + t[:, j, None] for j in range(3))  # [C, N]

    in_depth = (z >= near) & (z <= far)
    z_safe = torch.where(in_depth, z, torch.ones_like(z))  # keeps culled entries finite (and their grads)
    fx, fy = cameras.fx[:, None], cameras.fy[:, None]  # [C, 1]
    cx, cy = cameras.cx[:, None], cameras.cy[:, None]
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    u = torch.minimum(torch.maximum(x / z_safe, -lim_x_neg), lim_x_pos)  # clamped x/z for J
    v = torch.minimum(torch.maximum(y / z_safe, -lim_y_neg), lim_y_pos)
    # T = J W with J = [[fx/z, 0, -fx u/z], [0, fy/z, -fy v/z]]
    gx, gy = fx / z_safe, fy / z_safe
    T = [[gx * (Wc[0][k] - u * Wc[2][k]) for k in range(3)], [gy * (Wc[1][k] - v * Wc[2][k]) for k in range(3)]]
    TM = [[T[i][0] * M[0][k] + T[i][1] * M[1][k] + T[i][2] * M[2][k] for k in range(3)] for i in range(2)]
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)  # [C, N, 2]

    a, b, c = (sum(TM[i][k] * TM[j][k] for k in range(3)) for i, j in ((0, 0), (0, 1), (1, 1)))  # 2D covariance
    det_orig = a * c - b * b
    a, c = a + eps2d, c + eps2d
    det = a * c - b * b
    det_ok = det > 0
    det_safe = torch.where(det_ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)  # [C, N, 3]

    opac = opacities[None, :].expand(z.shape)  # [C, N]
    if antialiased:
        ratio = det_orig / det_safe
        ratio_ok = ratio > 0
        comp = torch.where(ratio_ok, torch.sqrt(torch.where(ratio_ok, ratio, torch.ones_like(ratio))), torch.zeros_like(ratio))
        opac = opac * comp

    with torch.no_grad():
        bright = opac >= ALPHA_MIN
        log_thr = torch.log(torch.clamp_min(opac * 255.0, 1e-30))
        extend = torch.clamp(torch.sqrt(torch.clamp_min(2.0 * log_thr, 0.0)), max=RADIUS_SIGMAS)
        rx = torch.ceil(extend * torch.sqrt(torch.clamp_min(a, 0.0)))
        ry = torch.ceil(extend * torch.sqrt(torch.clamp_min(c, 0.0)))
        mx, my = means2d[..., 0], means2d[..., 1]
        inside = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        keep = in_depth & det_ok & bright & inside & (rx > 0) & (ry > 0)
        radii_xy = torch.stack([rx, ry], dim=-1).where(keep[..., None], 0.0).to(torch.int32)

    return Projection(
        means2d=means2d,
        conics=conics,
        depths=z,
        opacities=opac,
        radii_xy=radii_xy,
        log_thresholds=log_thr,
    )


def gaussian_colors(
    colors: Tensor,  # [N, D] post-activation features, or [N, K, 3] SH coefficients
    means: Tensor,  # [N, 3]
    cameras: Cameras,
    sh_degree: int | None,
) -> Tensor:
    """Per-camera colours [C, N, D]: SH evaluated towards each camera centre (plus 0.5, clamped at
    0, as gsplat does), or the plain features broadcast over the cameras."""
    C = len(cameras)
    if colors.ndim == 2:
        return colors[None].expand(C, *colors.shape)
    degree = sh_degree_of(colors.shape[-2]) if sh_degree is None else sh_degree
    dirs = means[None, :, :] - cameras.centers[:, None, :]  # [C, N, 3]
    return sh_to_color(degree, dirs, colors[None].expand(C, *colors.shape))
