"""The ray path of NeRF-style models: pick rays, clip them to the scene box, march them through an
occupancy grid, query a field callback at the samples and volume-render the answers.

    from scene3d.renderers.rays import OccupancyGrid, OccupancySampler, render_rays, sample_pixels, pixel_rays
    cam, x, y = sample_pixels(cameras, train_indices, 4096, generator)
    rays = pixel_rays(cameras, cam, x, y)          # origins, unit dirs, cone radii (pixel footprints)
    sampler = OccupancySampler(aabb, step_size=5e-3, max_samples=1024, grid=grid)
    out = render_rays(field, rays, sampler=sampler)
    out.rgb, out.alpha, out.depth, out.num_samples

The kernels are model-free: a field is any callable ``(points [M, 3], dirs [M, 3]) -> (sigma [M],
rgb [M, 3])``. Compositing runs through nerfacc's batched functions when nerfacc is installed
(``backend="auto"``), else through :func:`volume_render_reference`, its PyTorch twin. Layouts are
batched: [N, S] samples with a validity mask. Training steps that must not wait for the device
(CUDA) render through :func:`render_rays_static` instead: the same result with every shape fixed on
the host (:mod:`scene3d.renderers.rays.static`).
"""

from scene3d.renderers.rays.aabb import ray_aabb
from scene3d.renderers.rays.occupancy import OccupancyGrid
from scene3d.renderers.rays.pixels import Rays, camera_rays, pixel_rays, sample_pixels
from scene3d.renderers.rays.render import Field, RayOutput, RayRenderOutput, render_image, render_rays
from scene3d.renderers.rays.sampling import OccupancySampler, RaySampler, RaySamples, sample_along_rays, sample_lattice
from scene3d.renderers.rays.static import Capacity, StaticCounts, render_rays_static
from scene3d.renderers.rays.volrend import (
    nerfacc_available,
    resolve_backend,
    volume_render,
    volume_render_fn,
    volume_render_reference,
)

__all__ = [
    "Capacity",
    "Field",
    "OccupancyGrid",
    "OccupancySampler",
    "RaySampler",
    "Rays",
    "camera_rays",
    "RayOutput",
    "RayRenderOutput",
    "RaySamples",
    "StaticCounts",
    "nerfacc_available",
    "pixel_rays",
    "ray_aabb",
    "render_image",
    "render_rays",
    "render_rays_static",
    "resolve_backend",
    "sample_along_rays",
    "sample_lattice",
    "sample_pixels",
    "volume_render",
    "volume_render_fn",
    "volume_render_reference",
]
