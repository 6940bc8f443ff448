"""TensoRF's vector-matrix (VM) features at points, for rendering: a numba kernel on the CPU and its
PyTorch twin (``F.grid_sample``, the path training differentiates).

A VM field holds, for each of three axis-aligned planes p (spanning axes ``MAT_MODES[p] = (a, b)``)
and the complementary axis ``VEC_MODES[p] = v``, a plane ``M^p`` [C, H_p, W_p] (W along a, H along
b) and a line ``l^p`` [C, L_p] (along v). At a point x with box coordinates in [-1, 1]^3, component
c of plane p is ``M^p_c(x_a, x_b) * l^p_c(x_v)``, both interpolated bilinearly / linearly with
``align_corners=True`` (the grid's first and last samples lie on the box faces) and zero outside.

* :func:`vm_density_features`: ``sum_p sum_{c < C} M^p_c l^p_c`` -> [M] (the density feature);
* :func:`vm_stacked_features`: ``[M^0_c l^0_c for c < C] ++ [plane 1] ++ [plane 2]`` -> [M, 3C]
  (what the appearance basis reads).

``C`` may be fewer than the channels held: the first C, so a slimmed model reads only its own
components. ``F.grid_sample`` reads one channel plane after another, touching four scattered
texels per channel per point; the kernel works on channels-last copies of the grids
(:func:`channels_last`, made once per rendered image), so the four taps of a point are four
contiguous runs of C floats, and points run in parallel. float32 throughout; the twins agree to
float32 rounding (tests compare them).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MAT_MODES = ((0, 1), (0, 2), (1, 2))
VEC_MODES = (2, 1, 0)


def channels_last(planes, lines, channels: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Contiguous float32 numpy copies of the first ``channels`` channels: planes [1, C, H, W] ->
    [H, W, channels], lines [1, C, L, 1] -> [L, channels]."""
    p = [np.ascontiguousarray(pl.detach()[0, :channels].permute(1, 2, 0).to(torch.float32).cpu().numpy()) for pl in planes]
    ln = [np.ascontiguousarray(li.detach()[0, :channels, :, 0].T.to(torch.float32).cpu().numpy()) for li in lines]
    return p, ln


def _twin(planes, lines, x: Tensor, channels: int) -> list[Tensor]:
    """[C, M] products per plane, by ``F.grid_sample`` (the PyTorch twin)."""
    out = []
    for p, ((a, b), v) in enumerate(zip(MAT_MODES, VEC_MODES)):
        pc = x[:, [a, b]].view(1, -1, 1, 2)
        lc = torch.stack([torch.zeros_like(x[:, v]), x[:, v]], dim=-1).view(1, -1, 1, 2)
        plane = F.grid_sample(planes[p][:, :channels], pc, align_corners=True).view(channels, -1)
        line = F.grid_sample(lines[p][:, :channels], lc, align_corners=True).view(channels, -1)
        out.append(plane * line)
    return out


def vm_density_features_torch(planes, lines, x: Tensor, channels: int) -> Tensor:
    """The twin of :func:`vm_density_features` (differentiable)."""
    return sum(prod.sum(0) for prod in _twin(planes, lines, x, channels))


def vm_stacked_features_torch(planes, lines, x: Tensor, channels: int) -> Tensor:
    """The twin of :func:`vm_stacked_features` (differentiable)."""
    return torch.cat(_twin(planes, lines, x, channels)).T


def vm_density_features(grids: tuple[list[np.ndarray], list[np.ndarray]], x: Tensor) -> Tensor:
    """[M] density features at box coordinates ``x`` [M, 3] (CPU), from :func:`channels_last` grids."""
    planes, lines = grids
    xs = np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())
    from scene3d.renderers.rays._numba_rays import vm_density

    return torch.from_numpy(vm_density(xs, *planes, *lines, planes[0].shape[2]))


def vm_stacked_features(grids: tuple[list[np.ndarray], list[np.ndarray]], x: Tensor) -> Tensor:
    """[M, 3C] appearance features at box coordinates ``x`` [M, 3] (CPU), from :func:`channels_last` grids."""
    planes, lines = grids
    xs = np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())
    from scene3d.renderers.rays._numba_rays import vm_stacked

    return torch.from_numpy(vm_stacked(xs, *planes, *lines, planes[0].shape[2]))
