"""Gaussian rasterization: tensors and cameras in, images and what densification needs out.

    from scene3d.renderers.gaussians import RasterSettings, rasterize
    out = rasterize(means, quats, scales, opacities, colors, cameras, RasterSettings(antialiased=True))
    out.rgb, out.alpha, out.depth, out.info.means2d, out.info.radii

Backends (``RasterSettings.backend``): ``gsplat`` (CUDA), ``cpu`` (numba kernel with a hand-written
backward), ``torch`` (the readable reference, any device); ``auto`` picks the fastest available.
Conventions are gsplat's: OpenCV cameras with pixel centres at +0.5, (w, x, y, z) quaternions,
actual scales, opacities after the sigmoid, SH coefficients [N, K, 3].
"""

from scene3d.renderers.gaussians.api import (
    accumulate_pixel_error,
    available_backends,
    rasterize,
    resolve_backend,
)
from scene3d.renderers.gaussians.settings import RasterInfo, RasterSettings, RenderOutput
from scene3d.renderers.gaussians.sh import rgb_to_sh, sh_basis, sh_to_color, sh_to_rgb, spherical_harmonics

__all__ = [
    "RasterInfo",
    "RasterSettings",
    "RenderOutput",
    "accumulate_pixel_error",
    "available_backends",
    "rasterize",
    "resolve_backend",
    "rgb_to_sh",
    "sh_basis",
    "sh_to_color",
    "sh_to_rgb",
    "spherical_harmonics",
]
