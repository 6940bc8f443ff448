"""Settings and output records of Gaussian rasterization, and the constants every backend shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

from torch import Tensor

Backend = Literal["auto", "gsplat", "cpu", "torch"]

TILE_SIZE = 16
"""Tiles are 16 x 16 pixels (gsplat's default)."""
ALPHA_MIN = 1.0 / 255.0
"""A Gaussian is skipped at a pixel where its alpha is below this (gsplat's ALPHA_THRESHOLD)."""
ALPHA_MAX = 0.999
"""Alphas are clamped to this, so transmittance never reaches zero in one step."""
T_MIN = 1e-4
"""A pixel stops once blending the next Gaussian would bring its transmittance to this or below;
that Gaussian is not blended (gsplat's rule)."""
RADIUS_SIGMAS = 3.33
"""Upper bound of a Gaussian's screen-space extent in standard deviations (gsplat's rule)."""


@dataclass(frozen=True)
class RasterSettings:
    """How to rasterize. Every backend honours every field."""

    backend: Backend = "auto"
    """"auto": gsplat when the tensors are on CUDA and gsplat imports, else the numba CPU kernel,
    else the PyTorch reference. "gsplat", "cpu" or "torch" force one."""
    sh_degree: Optional[int] = None
    """Active SH degree when colours are SH coefficients [N, K, 3]; None uses every band given."""
    near: float = 0.01
    """Gaussians whose centre is nearer than this (camera z) are culled."""
    far: float = 1e10
    """Gaussians whose centre is farther than this are culled."""
    eps2d: float = 0.3
    """Added to the diagonal of every projected 2D covariance (pixels squared)."""
    antialiased: bool = False
    """Mip-Splatting's 2D filter: opacities are scaled by sqrt(det(cov) / det(cov + eps2d I))."""
    background: Optional[tuple[float, ...]] = None
    """Colour composited behind the Gaussians (one value per channel); None is black."""
    absgrad: bool = False
    """Also accumulate |dL/dmeans2d| per pixel contribution (AbsGS), read from
    ``info.means2d_absgrad`` after backward."""
    render_depth: bool = True
    """Also render the expected depth (costs one more blended channel)."""


@dataclass
class RasterInfo:
    """What densification strategies read after a render.

    ``means2d`` is part of the autograd graph; when the Gaussians require grad, ``retain_grad()``
    has been called on it, so ``info.means2d.grad`` is filled by backward.
    """

    means2d: Tensor  # [C, N, 2] projected centres (pixels)
    radii: Tensor  # [C, N] int32 screen radius in pixels (max over x and y), 0 = culled
    depths: Tensor  # [C, N] camera-space z of the centres
    conics: Tensor  # [C, N, 3] inverse 2D covariance (a, b, c): sigma = a dx^2/2 + b dx dy + c dy^2/2
    opacities: Tensor  # [C, N] opacities as blended (times the antialiasing compensation)
    width: int
    height: int
    n_cameras: int
    backend: str
    _absgrad: Callable[[], Optional[Tensor]] = field(default=lambda: None, repr=False)

    @property
    def visible(self) -> Tensor:
        """[C, N] bool: the Gaussian reaches the image of that camera."""
        return self.radii > 0

    @property
    def means2d_absgrad(self) -> Optional[Tensor]:
        """[C, N, 2] sum over pixels of |dL/dmeans2d| (AbsGS); None before backward or when
        ``settings.absgrad`` is False."""
        return self._absgrad()


@dataclass
class RenderOutput:
    """Images of a batch of C cameras, all of size H x W."""

    rgb: Tensor  # [C, H, W, D] colours (D = 3 for RGB), background composited
    alpha: Tensor  # [C, H, W, 1] accumulated opacity
    depth: Optional[Tensor]  # [C, H, W, 1] expected depth sum(w z) / max(alpha, 1e-10), or None
    info: RasterInfo
