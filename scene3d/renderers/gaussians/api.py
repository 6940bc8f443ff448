"""The rasterization entry point: checks inputs, picks a backend, composes the outputs."""

from __future__ import annotations

import functools
import logging
from typing import Optional

import torch
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.renderers.gaussians.projection import Projection, gaussian_colors, project_gaussians
from scene3d.renderers.gaussians.settings import RasterInfo, RasterSettings, RenderOutput
from scene3d.renderers.gaussians.sh import sh_degree_of

log = logging.getLogger(__name__)


@functools.cache
def gsplat_available() -> bool:
    """gsplat imports and CUDA is present."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except Exception:  # an ImportError, or a broken CUDA extension build
        return False
    return True


@functools.cache
def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _announce(choice: str, reason: str) -> None:
    log.info("Gaussian rasterization backend: %s (%s)", choice, reason)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on tensors on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return (["gsplat"] if gsplat_available() else []) + ["torch"]
    return (["cpu"] if numba_available() else []) + ["torch"]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend "auto" stands for on ``device``, or ``backend`` itself once checked."""
    if backend == "auto":
        if device.type == "cuda" and gsplat_available():
            choice, reason = "gsplat", "CUDA tensors and gsplat installed"
        elif device.type == "cpu" and numba_available():
            choice, reason = "cpu", "numba kernel"
        else:
            choice, reason = "torch", "reference; install numba (CPU) or gsplat (CUDA) for speed"
        _announce(choice, reason)
        return choice
    if backend == "gsplat":
        if not torch.cuda.is_available():
            raise RuntimeError("backend='gsplat' needs a CUDA device; use backend='cpu' or 'auto' on this machine")
        if not gsplat_available():
            raise RuntimeError("backend='gsplat' needs gsplat: pip install -e '.[cuda]'")
        if device.type != "cuda":
            raise RuntimeError("backend='gsplat' needs the Gaussians on a CUDA device")
    elif backend == "cpu":
        if not numba_available():
            raise RuntimeError("backend='cpu' needs numba: pip install numba")
        if device.type != "cpu":
            raise RuntimeError("backend='cpu' needs the Gaussians on the CPU")
    elif backend != "torch":
        raise ValueError(f"unknown rasterization backend {backend!r}; choose auto, gsplat, cpu or torch")
    return backend


def _check_inputs(means, quats, scales, opacities, colors, cameras: Cameras, settings: RasterSettings) -> None:
    N = means.shape[0]
    assert means.ndim == 2 and means.shape[1] == 3, f"means must be [N, 3], got {tuple(means.shape)}"
    assert quats.shape == (N, 4), f"quats must be [{N}, 4], got {tuple(quats.shape)}"
    assert scales.shape == (N, 3), f"scales must be [{N}, 3], got {tuple(scales.shape)}"
    assert opacities.shape == (N,), f"opacities must be [{N}], got {tuple(opacities.shape)}"
    assert colors.shape[0] == N and colors.ndim in (2, 3), (
        f"colors must be [{N}, D] features or [{N}, K, 3] SH coefficients, got {tuple(colors.shape)}"
    )
    if colors.ndim == 3:
        assert colors.shape[2] == 3, f"SH coefficients must be [N, K, 3], got {tuple(colors.shape)}"
        k = colors.shape[1]
        degree = sh_degree_of(k) if settings.sh_degree is None else settings.sh_degree
        assert (degree + 1) ** 2 <= k, f"sh_degree {degree} needs {(degree + 1) ** 2} coefficients, colors has {k}"
    if len(cameras) == 0:
        raise ValueError("rasterize needs at least one camera")
    cameras = cameras.on_host()  # sizes and models, read without waiting for the device
    if bool(cameras.is_distorted.any()):
        raise ValueError(
            "the Gaussian rasterizer handles pinhole cameras only; undistort the images first "
            "(scene3d process --undistort) and load the undistorted cameras"
        )
    if bool((cameras.width != cameras.width[0]).any()) or bool((cameras.height != cameras.height[0]).any()):
        raise ValueError("all cameras of one rasterize call must share one image size; render them in separate calls")


def rasterize(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] (w, x, y, z), need not be normalised
    scales: Tensor,  # [N, 3] actual scales (not log)
    opacities: Tensor,  # [N] in [0, 1] (after the sigmoid)
    colors: Tensor,  # [N, D] features (D = 3: RGB) or [N, K, 3] SH coefficients
    cameras: Cameras,  # C pinhole cameras sharing one image size
    settings: RasterSettings = RasterSettings(),
    *,
    background: Optional[Tensor] = None,  # [D] or [C, D]; overrides settings.background
) -> RenderOutput:
    """Renders N Gaussians into C cameras.

    Colours given as SH coefficients become ``max(SH(view direction) + 0.5, 0)``; plain features
    are blended as they are. Returns rgb [C, H, W, D], alpha [C, H, W, 1], expected depth
    [C, H, W, 1] (``sum_i w_i z_i / max(alpha, 1e-10)``, gsplat's "ED"; None when
    ``settings.render_depth`` is False) and the :class:`RasterInfo` strategies need.
    """
    _check_inputs(means, quats, scales, opacities, colors, cameras, settings)
    backend = resolve_backend(settings.backend, means.device)
    host = cameras.on_host()
    cameras = cameras.to(means.device)
    C = len(cameras)
    width, height = int(host.width[0]), int(host.height[0])
    D = colors.shape[-1]
    bg = _background(settings, background, C, D, means.device)
    if backend == "gsplat":
        from scene3d.renderers.gaussians.gsplat_backend import rasterize_gsplat

        return rasterize_gsplat(means, quats, scales, opacities, colors, cameras, settings, bg)

    if backend == "cpu":
        from scene3d.renderers.gaussians import cpu_backend as impl

        project = impl.project  # the same values, differentiated by a numba kernel
    else:
        from scene3d.renderers.gaussians import torch_backend as impl

        project = project_gaussians
    proj = project(
        means, quats, scales, opacities, cameras,
        near=settings.near, far=settings.far, eps2d=settings.eps2d, antialiased=settings.antialiased,
    )
    if proj.means2d.requires_grad:
        proj.means2d.retain_grad()
    feats = gaussian_colors(colors, means, cameras, settings.sh_degree)  # [C, N, D]
    if settings.render_depth:
        feats = torch.cat([feats, proj.depths[..., None]], dim=-1)
    absgrad_box = {} if settings.absgrad else None
    out, alpha = impl.blend(proj, feats, width, height, absgrad_box)  # [C, H, W, F], [C, H, W]
    alpha = alpha[..., None]
    rgb = out[..., :D]
    if bg is not None:
        rgb = rgb + (1.0 - alpha) * bg[:, None, None, :]
    depth = out[..., D:] / alpha.clamp_min(1e-10) if settings.render_depth else None
    info = _info(proj, width, height, backend, absgrad_box)
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, info=info)


def _background(settings: RasterSettings, background: Optional[Tensor], C: int, D: int, device) -> Optional[Tensor]:
    """[C, D] background colours, or None for black."""
    if background is None and settings.background is None:
        return None
    bg = torch.as_tensor(settings.background if background is None else background, dtype=torch.float32, device=device)
    if bg.ndim == 1:
        bg = bg[None].expand(C, -1)
    assert bg.shape == (C, D), f"background must be [{D}] or [{C}, {D}], got {tuple(bg.shape)}"
    return bg


def _info(proj: Projection, width: int, height: int, backend: str, absgrad_box: Optional[dict]) -> RasterInfo:
    return RasterInfo(
        means2d=proj.means2d,
        radii=proj.radii,
        depths=proj.depths,
        conics=proj.conics,
        opacities=proj.opacities,
        width=width,
        height=height,
        n_cameras=proj.means2d.shape[0],
        backend=backend,
        _absgrad=(lambda: absgrad_box.get("value")) if absgrad_box is not None else (lambda: None),
    )


def accumulate_pixel_error(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    cameras: Cameras,
    error_map: Tensor,  # [C, H, W]
    settings: RasterSettings = RasterSettings(),
) -> Tensor:
    """[C, N]: for each camera and Gaussian, the sum over pixels of its blending weight times the
    error at that pixel (what pixel-error densification ranks Gaussians by). No gradient."""
    dummy = torch.zeros(means.shape[0], 1, device=means.device)
    _check_inputs(means, quats, scales, opacities, dummy, cameras, settings)
    backend = resolve_backend(settings.backend, means.device)
    host = cameras.on_host()
    cameras = cameras.to(means.device)
    C, width, height = len(cameras), int(host.width[0]), int(host.height[0])
    assert error_map.shape == (C, height, width), f"error_map must be [{C}, {height}, {width}], got {tuple(error_map.shape)}"
    if backend == "gsplat":
        from scene3d.renderers.gaussians.gsplat_backend import accumulate_error_gsplat

        return accumulate_error_gsplat(means, quats, scales, opacities, cameras, error_map, settings)
    with torch.no_grad():
        proj = project_gaussians(
            means, quats, scales, opacities, cameras,
            near=settings.near, far=settings.far, eps2d=settings.eps2d, antialiased=settings.antialiased,
        )
        error_map = error_map.detach().float()
        if backend == "cpu":
            from scene3d.renderers.gaussians.cpu_backend import accumulate_error

            return accumulate_error(proj, error_map, width, height)
        from scene3d.renderers.gaussians.torch_backend import blend

        feats = torch.zeros(C, means.shape[0], 1, device=means.device)
        return blend(proj, feats, width, height, error_map=error_map)[0]
