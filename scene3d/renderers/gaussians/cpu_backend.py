"""The CPU backend: numba kernels with hand-written backward passes, wrapped as autograd Functions.

- :func:`project`: the torch projection of ``projection.py`` runs as is (so every backend sees the
  same projected values, bit for bit) but is differentiated by a numba kernel
  (``_numba_projection.py``) instead of autograd's walk over its many small tensor operations.
- :func:`blend` (:class:`_BlendCPU`): bins the projected Gaussians into depth-sorted tile lists
  and blends them (``_numba_kernels.py``); its backward runs the numba backward kernel and hands
  dL/d(means2d, conics, opacities, features) back to autograd.
- :func:`accumulate_error`: the forward kernel, accumulating weight * error per Gaussian.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading

import numpy as np
import torch
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.renderers.gaussians.projection import Projection, project_gaussians
from scene3d.renderers.gaussians.settings import TILE_SIZE

log = logging.getLogger(__name__)
_LAUNCH = threading.Lock()
"""Serialises kernel launches: numba's workqueue layer must not be entered from two threads at
once (and each launch already uses every core)."""


@functools.cache
def _kernels():
    """The numba kernels module, imported on first use (numba compiles each kernel on its first
    call, about half a minute in all, and caches the machine code next to the module).

    When torch was imported before scene3d without OMP_WAIT_POLICY=PASSIVE, numba's threading
    layer is set to "workqueue" (plain pthreads) unless the user chose one: numba's OpenMP layer
    can bind to the OpenMP runtime torch loaded, whose threads then spin, and the kernels burn 4x
    the CPU. Otherwise numba's default (OpenMP) stays: its launches are cheaper.
    """
    import numba

    import scene3d
    from scene3d.renderers.gaussians import _numba_kernels as K

    if scene3d.OMP_POLICY_SET_LATE:
        log.warning(
            "torch was imported before scene3d with OMP_WAIT_POLICY unset: its OpenMP threads spin "
            "and slow the CPU rasterizer down; set OMP_WAIT_POLICY=PASSIVE or import scene3d first"
        )
        if "NUMBA_THREADING_LAYER" not in os.environ and numba.config.THREADING_LAYER == "default":
            numba.config.THREADING_LAYER = "workqueue"
    return K


def _np(t: Tensor, dtype=np.float32) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy(), dtype=dtype)


class Binning:
    """Per-tile depth-sorted lists of the projected Gaussians (plus what the kernels need)."""

    def __init__(self, proj: Projection, width: int, height: int):
        K = _kernels()
        with torch.no_grad():
            packed = torch.cat(
                [proj.means2d, proj.conics, proj.opacities[..., None], proj.log_thresholds[..., None], proj.depths[..., None]],
                dim=-1,
            )  # [C, N, 8]
        self.width, self.height = width, height
        self.tiles_x = math.ceil(width / TILE_SIZE)
        self.tiles_y = math.ceil(height / TILE_SIZE)
        packed, radii = _np(packed), _np(proj.radii_xy, np.int32)
        with _LAUNCH:
            self.gdata, self.offsets, self.ids = K.prepare(packed, radii, self.tiles_x, self.tiles_y)

    @property
    def n_cameras(self) -> int:
        return self.gdata.shape[0]

    @property
    def n_gaussians(self) -> int:
        return self.gdata.shape[1]

    @property
    def n_pairs(self) -> int:
        return int(self.ids.shape[0])

    def forward(self, feats: np.ndarray, err: np.ndarray | None = None):
        K = _kernels()
        err_in = np.zeros((0, 0, 0), np.float32) if err is None else err
        out_err = np.zeros(self.n_pairs if err is not None else 0, np.float32)
        with _LAUNCH:
            out, T, last = K.rasterize_forward(
                self.gdata, feats, self.offsets, self.ids, self.width, self.height, self.tiles_x, self.tiles_y,
                err_in, out_err,
            )
        return out, T, last, out_err

    def reduce(self, per_pair: np.ndarray) -> np.ndarray:
        """Per-pair rows [n_pairs, Q] summed per Gaussian -> [C, N, Q]."""
        K = _kernels()
        with _LAUNCH:
            return K.reduce_pairs(
                per_pair, self.offsets, self.ids, self.n_cameras, self.n_gaussians, self.tiles_x * self.tiles_y
            )


class _ProjectCPU(torch.autograd.Function):
    """:func:`project_gaussians` with its gradient computed by a numba kernel: the forward is the
    torch code itself (without autograd), so the values are exactly those every backend uses."""

    @staticmethod
    def forward(ctx, means, quats, scales, opacities, cameras: Cameras, near, far, eps2d, antialiased):
        proj = project_gaussians(
            means, quats, scales, opacities, cameras, near=near, far=far, eps2d=eps2d, antialiased=antialiased
        )
        ctx.save_for_backward(means, quats, scales, opacities)
        ctx.cameras, ctx.options = cameras, (near, far, eps2d, antialiased)
        ctx.mark_non_differentiable(proj.radii_xy, proj.log_thresholds)
        return proj.means2d, proj.conics, proj.depths, proj.opacities.contiguous(), proj.radii_xy, proj.log_thresholds

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_depths, g_opacities, _g_radii, _g_thresholds):
        from scene3d.renderers.gaussians._numba_projection import projection_backward

        means, quats, scales, opacities = ctx.saved_tensors
        cams: Cameras = ctx.cameras
        near, far, eps2d, antialiased = ctx.options
        C, N = len(cams), means.shape[0]

        def grad(g, shape):
            return np.zeros(shape, np.float32) if g is None else _np(g)

        intrinsics = torch.stack([cams.fx, cams.fy, cams.cx, cams.cy], dim=-1)
        with _LAUNCH:
            g = projection_backward(
                _np(means), _np(quats), _np(scales), _np(opacities),
                _np(cams.world_to_cam, np.float64), _np(intrinsics, np.float64),
                float(cams.width[0]), float(cams.height[0]), float(near), float(far), float(eps2d), bool(antialiased),
                grad(g_means2d, (C, N, 2)), grad(g_conics, (C, N, 3)), grad(g_depths, (C, N)), grad(g_opacities, (C, N)),
            )
        g_means, g_quats, g_scales, g_opac = (torch.from_numpy(x).to(means.dtype) for x in g)
        return g_means, g_quats, g_scales, g_opac, None, None, None, None, None


def project(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, cameras: Cameras, *,
    near: float, far: float, eps2d: float, antialiased: bool,
) -> Projection:
    """:func:`project_gaussians` (same signature and values) differentiated by the numba kernel."""
    _kernels()
    m2d, conics, depths, opac, radii_xy, log_thr = _ProjectCPU.apply(
        means, quats, scales, opacities, cameras, near, far, eps2d, antialiased
    )
    return Projection(
        means2d=m2d, conics=conics, depths=depths, opacities=opac, radii_xy=radii_xy, log_thresholds=log_thr
    )


def _padded(x: np.ndarray) -> np.ndarray:
    """Zero-pads the last axis to a multiple of 4 (the kernels blend channels four at a time)."""
    extra = -x.shape[-1] % 4
    return np.concatenate([x, np.zeros(x.shape[:-1] + (extra,), np.float32)], axis=-1) if extra else x


class _BlendCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, opacities, feats, proj, width, height, absgrad_box):
        binning = Binning(proj, width, height)
        F = feats.shape[-1]
        feats_np = _padded(_np(feats))
        out, T, last, _ = binning.forward(feats_np)
        ctx.binning, ctx.feats_np, ctx.T, ctx.last, ctx.n_feats = binning, feats_np, T, last, F
        ctx.absgrad_box = absgrad_box
        alpha = torch.from_numpy(1.0 - T)
        return torch.from_numpy(out[..., :F]), alpha

    @staticmethod
    def backward(ctx, g_out, g_alpha):
        K = _kernels()
        b: Binning = ctx.binning
        F = ctx.n_feats
        if g_out is None:
            g_out_np = np.zeros(ctx.T.shape + (ctx.feats_np.shape[-1],), np.float32)
        else:
            g_out_np = _padded(_np(g_out))
        g_alpha_np = _np(g_alpha) if g_alpha is not None else np.zeros_like(ctx.T)
        with _LAUNCH:
            per_pair = K.rasterize_backward(
                b.gdata, ctx.feats_np, b.offsets, b.ids, b.width, b.height, b.tiles_x, b.tiles_y,
                ctx.T, ctx.last, g_out_np, g_alpha_np,
            )
        per_g = torch.from_numpy(b.reduce(per_pair))  # [C, N, 8 + F (padded)]
        if ctx.absgrad_box is not None:
            ctx.absgrad_box["value"] = per_g[..., 5:7].clone()
        g_conics = per_g[..., 0:3]
        g_means2d = per_g[..., 3:5]
        g_opac = per_g[..., 7]
        g_feats = per_g[..., 8 : 8 + F]
        return g_means2d, g_conics, g_opac, g_feats, None, None, None, None


def blend(proj: Projection, feats: Tensor, width: int, height: int, absgrad_box: dict | None) -> tuple[Tensor, Tensor]:
    """Blends features [C, N, F] of projected Gaussians: ([C, H, W, F], alpha [C, H, W])."""
    return _BlendCPU.apply(proj.means2d, proj.conics, proj.opacities, feats, proj, width, height, absgrad_box)


def accumulate_error(proj: Projection, error_map: Tensor, width: int, height: int) -> Tensor:
    """[C, N]: sum over pixels of each Gaussian's blending weight times ``error_map`` [C, H, W]."""
    binning = Binning(proj, width, height)
    feats = np.zeros((binning.n_cameras, binning.n_gaussians, 4), np.float32)
    _, _, _, per_pair = binning.forward(feats, _np(error_map))
    return torch.from_numpy(binning.reduce(per_pair[:, None])[..., 0])
