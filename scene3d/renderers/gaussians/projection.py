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
    """Projects N Gaussians into every camera of the batch (all cameras share one image size)."""
    width, height = int(cameras.width[0]), int(cameras.height[0])
    covars = quat_scale_to_covar(quats, scales)  # [N, 3, 3]
    R = cameras.world_to_cam[:, :3, :3]  # [C, 3, 3]
    t = cameras.world_to_cam[:, :3, 3]  # [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    covars_c = torch.einsum("cij,njk,clk->cnil", R, covars, R)  # [C, N, 3, 3]

    x, y, z = means_c.unbind(-1)  # [C, N]
    in_depth = (z >= near) & (z <= far)
    z_safe = torch.where(in_depth, z, torch.ones_like(z))  # keeps culled entries finite (and their grads)
    fx, fy = cameras.fx[:, None], cameras.fy[:, None]  # [C, 1]
    cx, cy = cameras.cx[:, None], cameras.cy[:, None]
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    u = torch.minimum(torch.maximum(x / z_safe, -lim_x_neg), lim_x_pos)
    v = torch.minimum(torch.maximum(y / z_safe, -lim_y_neg), lim_y_pos)
    zeros = torch.zeros_like(z)
    J = torch.stack(
        [fx / z_safe, zeros, -fx * u / z_safe, zeros, fy / z_safe, -fy * v / z_safe], dim=-1
    ).reshape(*z.shape, 2, 3)  # [C, N, 2, 3]
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)  # [C, N, 2]

    a, b, c = cov2d[..., 0, 0], 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]), cov2d[..., 1, 1]
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
        comp = torch.where(ratio_ok, torch.sqrt(torch.where(ratio_ok, ratio, torch.ones_like(ratio))), zeros)
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
