"""The CUDA backend: gsplat 1.5's ``rasterization`` (imported lazily), mapped onto our settings and
outputs.

Mapping: world_to_cam -> viewmats, Cameras.Ks -> Ks, near/far -> near_plane/far_plane, eps2d,
antialiased -> rasterize_mode="antialiased", render_depth -> render_mode "RGB+ED", absgrad,
backgrounds [C, D]; ``packed=False`` so per-camera outputs are [C, N, ...]. gsplat's radii are
per axis ([C, N, 2]); we report their maximum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.renderers.gaussians.settings import RasterInfo, RasterSettings, RenderOutput
from scene3d.renderers.gaussians.sh import sh_degree_of


def _call(means, quats, scales, opacities, colors, cameras: Cameras, settings: RasterSettings, sh_degree, bg, mode):
    from gsplat import rasterization

    return rasterization(
        means,
        quats,
        scales,
        opacities,
        colors,
        viewmats=cameras.world_to_cam.contiguous(),
        Ks=cameras.Ks.contiguous(),
        width=int(cameras.on_host().width[0]),
        height=int(cameras.on_host().height[0]),
        near_plane=settings.near,
        far_plane=settings.far,
        eps2d=settings.eps2d,
        sh_degree=sh_degree,
        packed=False,
        backgrounds=bg,
        render_mode=mode,
        absgrad=settings.absgrad,
        rasterize_mode="antialiased" if settings.antialiased else "classic",
    )


def rasterize_gsplat(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] or [N, K, 3]
    cameras: Cameras,
    settings: RasterSettings,
    bg: Tensor | None,  # [C, D]
) -> RenderOutput:
    sh_degree = None
    if colors.ndim == 3:
        sh_degree = sh_degree_of(colors.shape[1]) if settings.sh_degree is None else settings.sh_degree
    mode = "RGB+ED" if settings.render_depth else "RGB"
    render, alphas, meta = _call(means, quats, scales, opacities, colors, cameras, settings, sh_degree, bg, mode)
    D = colors.shape[-1]
    means2d = meta["means2d"]  # [C, N, 2]
    if means2d.requires_grad:
        means2d.retain_grad()
    info = RasterInfo(
        means2d=means2d,
        radii=meta["radii"].amax(dim=-1).to(torch.int32) if meta["radii"].ndim == 3 else meta["radii"].to(torch.int32),
        depths=meta["depths"],
        conics=meta["conics"],
        opacities=meta["opacities"],
        width=int(meta["width"]),
        height=int(meta["height"]),
        n_cameras=len(cameras),
        backend="gsplat",
        _absgrad=lambda: getattr(means2d, "absgrad", None),
    )
    return RenderOutput(
        rgb=render[..., :D],
        alpha=alphas,
        depth=render[..., D:] if settings.render_depth else None,
        info=info,
    )


def accumulate_error_gsplat(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    cameras: Cameras,
    error_map: Tensor,  # [C, H, W]
    settings: RasterSettings,
) -> Tensor:
    """[C, N] sum over pixels of weight * error, as the gradient of sum(error * F) with respect to
    a per-camera scalar feature F of every Gaussian (dF(p)/df_i = w_i(p))."""
    C, N = len(cameras), means.shape[0]
    with torch.enable_grad():
        feat = torch.zeros(C, N, 1, device=means.device, requires_grad=True)
        render, _, _ = _call(
            means.detach(), quats.detach(), scales.detach(), opacities.detach(), feat,
            cameras, settings, None, None, "RGB",
        )
        (grad,) = torch.autograd.grad((render[..., 0] * error_map.detach()).sum(), feat)
    return grad[..., 0]
