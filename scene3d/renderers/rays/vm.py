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

import functools

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


@functools.cache
def _kernels():
    from numba import njit, prange

    @njit(inline="always")
    def taps(coord, size):
        """(i0, i1, w0, w1) of a linear interpolation with align_corners; taps outside get weight 0."""
        f = (coord + np.float32(1.0)) * np.float32(0.5) * np.float32(size - 1)
        i0 = int(np.floor(f))
        t = np.float32(f - i0)
        w0, w1 = np.float32(1.0) - t, t
        i1 = i0 + 1
        if i0 < 0 or i0 >= size:
            w0 = np.float32(0.0)
            i0 = 0
        if i1 < 0 or i1 >= size:
            w1 = np.float32(0.0)
            i1 = 0
        return i0, i1, w0, w1

    @njit(inline="always")
    def product(x, p0, p1, p2, l0, l1, l2, plane_index, c_count, out, offset, accumulate):
        if plane_index == 0:
            pl, ln, a, b, v = p0, l0, 0, 1, 2
        elif plane_index == 1:
            pl, ln, a, b, v = p1, l1, 0, 2, 1
        else:
            pl, ln, a, b, v = p2, l2, 1, 2, 0
        h, w = pl.shape[0], pl.shape[1]
        x0, x1, wx0, wx1 = taps(x[a], w)
        y0, y1, wy0, wy1 = taps(x[b], h)
        z0, z1, wz0, wz1 = taps(x[v], ln.shape[0])
        w00, w01, w10, w11 = wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1
        total = np.float32(0.0)
        for c in range(c_count):
            m = w00 * pl[y0, x0, c] + w01 * pl[y0, x1, c] + w10 * pl[y1, x0, c] + w11 * pl[y1, x1, c]
            s = m * (wz0 * ln[z0, c] + wz1 * ln[z1, c])
            if accumulate:
                total += s
            else:
                out[offset + c] = s
        return total

    @njit(parallel=True, fastmath=True, cache=True)
    def density(x, p0, p1, p2, l0, l1, l2, c_count):
        n = x.shape[0]
        out = np.empty(n, np.float32)
        dummy = np.empty(0, np.float32)
        for i in prange(n):
            acc = np.float32(0.0)
            for p in range(3):
                acc += product(x[i], p0, p1, p2, l0, l1, l2, p, c_count, dummy, 0, True)
            out[i] = acc
        return out

    @njit(parallel=True, fastmath=True, cache=True)
    def stacked(x, p0, p1, p2, l0, l1, l2, c_count):
        n = x.shape[0]
        out = np.empty((n, 3 * c_count), np.float32)
        for i in prange(n):
            for p in range(3):
                product(x[i], p0, p1, p2, l0, l1, l2, p, c_count, out[i], p * c_count, False)
        return out

    return density, stacked


def vm_density_features(grids: tuple[list[np.ndarray], list[np.ndarray]], x: Tensor) -> Tensor:
    """[M] density features at box coordinates ``x`` [M, 3] (CPU), from :func:`channels_last` grids."""
    planes, lines = grids
    xs = np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())
    return torch.from_numpy(_kernels()[0](xs, *planes, *lines, planes[0].shape[2]))


def vm_stacked_features(grids: tuple[list[np.ndarray], list[np.ndarray]], x: Tensor) -> Tensor:
    """[M, 3C] appearance features at box coordinates ``x`` [M, 3] (CPU), from :func:`channels_last` grids."""
    planes, lines = grids
    xs = np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())
    return torch.from_numpy(_kernels()[1](xs, *planes, *lines, planes[0].shape[2]))
