"""Rendering rays and images through a radiance field given as a callback.

``render_rays`` chains the steps of the ray path: a sampler chooses intervals along each ray
(:class:`~scene3d.renderers.rays.sampling.OccupancySampler` clips each ray to the scene box and
marches it in uniform steps skipping empty cells; any :class:`RaySampler` will do), the field is
queried only at valid interval midpoints, scatter the answers into [N, S] tensors (density
0 elsewhere) and composite them (:mod:`volrend`). The field is

    field(points [M, 3], dirs [M, 3]) -> (sigma [M], rgb [M, C])

and the result is differentiable through its outputs (interval bounds are not differentiated).

Two-stage shading (TensoRF's, which SlimmeRF keeps): with ``color`` given, ``field`` is a density
function ``points [M, 3] -> sigma [M]``; the densities are composited once without gradient, and
colour is evaluated only at samples whose weight exceeds ``weight_threshold`` (plus, with
``shade_topk``, each ray's heaviest samples during stratified training, so colour learns while
every weight is still small). Unshaded samples composite as black, which their weights make
negligible.
``render_image`` renders every pixel centre of one camera in chunks of rays and returns images
under the attribute names of the Gaussian ``RenderOutput``, so evaluation and the viewer can take
either.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.renderers.rays.pixels import Rays, camera_rays
from scene3d.renderers.rays.sampling import RaySampler, RaySamples
from scene3d.renderers.rays.volrend import RenderBackend, volume_render_fn

Field = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
"""points [M, 3], unit view directions [M, 3] -> (sigma [M], rgb [M, C])."""
DensityFn = Callable[[Tensor], Tensor]
"""points [M, 3] -> sigma [M] (the first stage of two-stage shading)."""
ColorFn = Callable[[Tensor, Tensor], Tensor]
"""points [M, 3], unit view directions [M, 3] -> rgb [M, C] (the second stage)."""


@dataclass
class RayOutput:
    """What ``render_rays`` returns for N rays."""

    rgb: Tensor  # [N, C], background composited
    alpha: Tensor  # [N, 1] accumulated opacity
    depth: Tensor  # [N, 1] expected distance sum(w t_mid) / max(alpha, 1e-10)
    num_samples: int  # density evaluations: the valid samples (render_rays_static: its buffer, padding included)
    weights: Tensor  # [N, S] compositing weights of ``samples``
    samples: RaySamples


@dataclass
class RayRenderOutput:
    """Images of one camera (the attribute names of the Gaussian ``RenderOutput``)."""

    rgb: Tensor  # [1, H, W, C]
    alpha: Tensor  # [1, H, W, 1]
    depth: Tensor  # [1, H, W, 1]
    num_samples: int


def render_rays(
    field: Field | DensityFn,
    rays: Rays,
    *,
    sampler: RaySampler,
    background: Optional[Tensor] = None,  # [C] or [N, C]
    stratified: bool = False,
    generator: Optional[torch.Generator] = None,
    backend: RenderBackend = "auto",
    color: Optional[ColorFn] = None,
    weight_threshold: float = 0.0,
    shade_topk: int = 0,
) -> RayOutput:
    """Renders N rays (unit directions, so depth is a distance) through ``field``, sampled by
    ``sampler`` (see the module docstring)."""
    n = len(rays)
    origins, dirs = rays.origins, rays.dirs
    samples = sampler.sample(rays, stratified=stratified, generator=generator)
    render = volume_render_fn(backend)
    ray, col = torch.nonzero(samples.valid, as_tuple=True)
    s = samples.valid.shape[1]
    m = len(ray)
    if m == 0:  # nothing to evaluate: the field is not called and the output does not depend on it
        c = 3 if background is None else background.shape[-1]
        sigmas, rgbs = origins.new_zeros(n, s), origins.new_zeros(n, s, c)
    else:
        points = origins[ray] + dirs[ray] * samples.midpoints[ray, col][:, None]
        if color is None:
            sigma, rgb = field(points, dirs[ray])
            assert rgb.ndim == 2 and rgb.shape[0] == m, f"field must return rgb [{m}, C], got {tuple(rgb.shape)}"
        else:
            sigma = field(points)
        assert sigma.reshape(-1).shape == (m,), f"field must return sigma [{m}], got {tuple(sigma.shape)}"
        sigmas = sigma.new_zeros(n, s).index_put((ray, col), sigma.reshape(-1))
        if color is None:
            rgbs = rgb.new_zeros(n, s, rgb.shape[1]).index_put((ray, col), rgb)
        else:
            rgbs = _shade(color, render, samples, sigmas, points, dirs[ray], ray, col, weight_threshold, shade_topk if stratified else 0)
    rgb_out, alpha, depth, weights = render(samples.t_starts, samples.t_ends, sigmas, rgbs, background)
    return RayOutput(rgb_out, alpha, depth, m, weights, samples)


def _shade(color: ColorFn, render, samples: RaySamples, sigmas: Tensor, points: Tensor, dirs: Tensor, ray: Tensor, col: Tensor,
           weight_threshold: float, topk: int) -> Tensor:  # fmt: skip
    """[N, S, C] colours: ``color`` at the valid samples that two-stage shading keeps, 0 elsewhere."""
    n, s = sigmas.shape
    with torch.no_grad():
        zeros = sigmas.new_zeros(n, s, 3)
        weights = render(samples.t_starts, samples.t_ends, sigmas.detach(), zeros, None)[3]
    keep = weights[ray, col] > weight_threshold
    if topk > 0 and s > 0:
        heavy = torch.zeros_like(samples.valid).scatter_(1, weights.topk(min(topk, s), dim=1).indices, True)
        keep = keep | heavy[ray, col]
    if not bool(keep.any()):
        return sigmas.new_zeros(n, s, 3)
    rgb = color(points[keep], dirs[keep])
    assert rgb.ndim == 2 and rgb.shape[0] == int(keep.sum()), f"color must return rgb [{int(keep.sum())}, C], got {tuple(rgb.shape)}"
    return rgb.new_zeros(n, s, rgb.shape[1]).index_put((ray[keep], col[keep]), rgb)


def render_image(
    field: Field,
    cameras: Cameras,  # one camera
    *,
    sampler: RaySampler,
    chunk: int = 4096,
    **kw,
) -> RayRenderOutput:
    """Renders every pixel of one camera, ``chunk`` rays at a time, under the caller's grad mode.

    ``kw`` are :func:`render_rays`' other options.
    """
    assert chunk >= 1, f"chunk must be >= 1, got {chunk}"
    rays, h, w = camera_rays(cameras)
    outs = [render_rays(field, rays[i : i + chunk], sampler=sampler, **kw) for i in range(0, len(rays), chunk)]
    return RayRenderOutput(
        rgb=torch.cat([o.rgb for o in outs]).reshape(1, h, w, -1),
        alpha=torch.cat([o.alpha for o in outs]).reshape(1, h, w, 1),
        depth=torch.cat([o.depth for o in outs]).reshape(1, h, w, 1),
        num_samples=sum(o.num_samples for o in outs),
    )
