"""Ray samplers: where along each ray a field is evaluated.

A sampler is any object with ``sample(rays, *, stratified, generator) -> RaySamples``
(:class:`RaySampler`); :func:`~scene3d.renderers.rays.render.render_rays` takes one, so a model
chooses how its rays are sampled without the renderer knowing. :class:`OccupancySampler` is the
marcher below (clip to a box, uniform steps, skip empty cells of an occupancy grid); proposal
networks are another sampler behind the same interface. A sampler may leave what its losses need
(proposal histograms, say) in ``RaySamples.extras``.

Uniform ray marching between near and far, with empty-space skipping by an occupancy grid:

Ray i is cut into intervals of length ``step_size`` starting at ``near_i``:

    t_start[i, k] = near_i + (k + u_i) * step_size,    t_end[i, k] = min(t_start[i, k] + step_size, far_i)

for k = 0 .. S0-1 with ``S0 = min(max_samples, ceil(max_i (far_i - near_i) / step_size))``. ``u_i`` is
0, or uniform in [0, 1) per ray when ``stratified`` (so over training every depth is sampled, not
just a fixed lattice). The last interval of a ray is cut at ``far``, so every interval lies in
[near, far]. An interval is valid when it starts before ``far`` and, given a grid, its midpoint
``o + d (t_start + t_end) / 2`` lies in an occupied cell.

Layout is batched: [N, S] tensors plus a ``valid`` mask. Each row is compacted so its valid
intervals come first (in increasing t), and S is the largest number of valid intervals of any
ray, so a sparse grid gives a small S. Skipping invalid intervals changes nothing in volume
rendering: they carry zero density, hence zero opacity. Invalid entries are set to the empty
interval ``t_start = t_end = far`` (``0`` for rays that miss the box), which has zero opacity
whatever density it is given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Protocol, Sequence

import torch
from torch import Tensor

from scene3d.renderers.rays.aabb import ray_aabb

if TYPE_CHECKING:
    from scene3d.renderers.rays.occupancy import OccupancyGrid
    from scene3d.renderers.rays.pixels import Rays


@dataclass
class RaySamples:
    """Intervals along N rays, batched [N, S]."""

    t_starts: Tensor  # [N, S]
    t_ends: Tensor  # [N, S]
    valid: Tensor  # [N, S] bool; valid entries come first in each row (``sample_lattice``: in place)
    extras: dict = field(default_factory=dict)  # what a sampler leaves for the model's losses

    @property
    def midpoints(self) -> Tensor:
        """[N, S] interval centres."""
        return 0.5 * (self.t_starts + self.t_ends)

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())


def sample_along_rays(
    origins: Tensor,  # [N, 3]
    dirs: Tensor,  # [N, 3]
    near: Tensor,  # [N]
    far: Tensor,  # [N]; rays with far <= near get no samples
    step_size: float,
    max_samples: int,
    grid: Optional["OccupancyGrid"] = None,
    stratified: bool = False,
    generator: Optional[torch.Generator] = None,
) -> RaySamples:
    """Marches every ray from ``near`` to ``far`` in steps of ``step_size`` (see the module docstring)."""
    n = origins.shape[0]
    assert origins.shape == (n, 3) and dirs.shape == (n, 3), (
        f"origins and dirs must be [N, 3], got {tuple(origins.shape)} and {tuple(dirs.shape)}"
    )
    assert near.shape == (n,) and far.shape == (n,), f"near and far must be [{n}], got {tuple(near.shape)}, {tuple(far.shape)}"
    assert step_size > 0, f"step_size must be > 0, got {step_size}"
    assert max_samples >= 1, f"max_samples must be >= 1, got {max_samples}"
    near, far = near.detach(), far.detach()
    span = torch.clamp(far - near, min=0.0)
    longest = float(span.max()) if n else 0.0
    s0 = min(max_samples, math.ceil(longest / step_size))
    if s0 == 0:
        empty = near.new_zeros(n, 0)
        return RaySamples(empty, empty.clone(), torch.zeros(n, 0, dtype=torch.bool, device=near.device))
    if stratified:
        gen_device = generator.device if generator is not None else near.device
        u = torch.rand(n, generator=generator, device=gen_device).to(near)
    else:
        u = torch.zeros_like(near)
    k = torch.arange(s0, device=near.device, dtype=near.dtype)
    t_starts = near[:, None] + (k[None, :] + u[:, None]) * step_size
    t_ends = torch.minimum(t_starts + step_size, far[:, None])
    valid = t_starts < far[:, None]
    if grid is not None:
        mid = origins.detach()[:, None, :] + dirs.detach()[:, None, :] * (0.5 * (t_starts + t_ends))[..., None]
        valid &= grid.occupied(mid.reshape(-1, 3)).reshape(n, s0)
    return _compact(t_starts, t_ends, valid, far)


def sample_lattice(
    origins: Tensor,  # [N, 3]
    dirs: Tensor,  # [N, 3]
    near: Tensor,  # [N]
    far: Tensor,  # [N]; rays with far <= near get no samples
    step_size: float,
    num_samples: int,
    grid: Optional["OccupancyGrid"] = None,
    stratified: bool = False,
    generator: Optional[torch.Generator] = None,
) -> RaySamples:
    """The intervals of :func:`sample_along_rays` on the fixed lattice [N, ``num_samples``],
    without reading anything back from the device: ``num_samples`` is a bound the caller knows
    (from the box's diagonal and ``max_samples``), not the longest ray of this batch, and the
    rows are not compacted, so valid entries stay where they are (interleaved with invalid ones,
    which are the empty interval ``t_start = t_end = far``). A ray's valid intervals are those of
    :func:`sample_along_rays` (same jitter, same order) as long as it needs at most
    ``num_samples``. The jitter is drawn on ``generator``'s device and copied to the rays' device
    by a queued copy (:func:`~scene3d.device.to_device_async`)."""
    from scene3d.device import to_device_async

    n = origins.shape[0]
    assert origins.shape == (n, 3) and dirs.shape == (n, 3), (
        f"origins and dirs must be [N, 3], got {tuple(origins.shape)} and {tuple(dirs.shape)}"
    )
    assert near.shape == (n,) and far.shape == (n,), f"near and far must be [{n}], got {tuple(near.shape)}, {tuple(far.shape)}"
    assert step_size > 0 and num_samples >= 1, f"step_size and num_samples must be positive, got {step_size}, {num_samples}"
    near, far = near.detach(), far.detach()
    if stratified:
        gen_device = generator.device if generator is not None else near.device
        u = to_device_async(torch.rand(n, generator=generator, device=gen_device), near.device).to(near.dtype)
    else:
        u = torch.zeros_like(near)
    k = torch.arange(num_samples, device=near.device, dtype=near.dtype)
    t_starts = near[:, None] + (k[None, :] + u[:, None]) * step_size
    t_ends = torch.minimum(t_starts + step_size, far[:, None])
    valid = t_starts < far[:, None]
    if grid is not None:
        mid = origins.detach()[:, None, :] + dirs.detach()[:, None, :] * (0.5 * (t_starts + t_ends))[..., None]
        valid &= grid.occupied(mid.reshape(-1, 3)).reshape(n, num_samples)
    fill = far[:, None].expand_as(t_starts)
    return RaySamples(torch.where(valid, t_starts, fill), torch.where(valid, t_ends, fill), valid)


def _compact(t_starts: Tensor, t_ends: Tensor, valid: Tensor, far: Tensor) -> RaySamples:
    """Moves each row's valid entries to the front (keeping their order) and drops the columns
    no ray needs."""
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)
    valid = valid.gather(1, order)
    s = int(valid.sum(dim=1).max()) if valid.shape[0] else 0
    valid = valid[:, :s]
    fill = far[:, None].expand_as(valid)
    t_starts = torch.where(valid, t_starts.gather(1, order)[:, :s], fill)
    t_ends = torch.where(valid, t_ends.gather(1, order)[:, :s], fill)
    return RaySamples(t_starts.contiguous(), t_ends.contiguous(), valid.contiguous())


class RaySampler(Protocol):
    """Chooses the intervals along rays that a field is evaluated on."""

    def sample(self, rays: "Rays", *, stratified: bool = False, generator: Optional[torch.Generator] = None) -> RaySamples:
        """Intervals along each of the N rays (batched [N, S], valid entries first)."""
        ...


@dataclass
class OccupancySampler:
    """Uniform marching inside ``aabb`` in steps of ``step_size`` (at most ``max_samples`` per ray),
    skipping the cells ``grid`` marks empty (every cell counts as occupied without one)."""

    aabb: Tensor | Sequence[float]  # [6] min xyz, max xyz
    step_size: float
    max_samples: int
    grid: Optional["OccupancyGrid"] = None
    near_min: float = 0.0

    def sample(self, rays: "Rays", *, stratified: bool = False, generator: Optional[torch.Generator] = None) -> RaySamples:
        near, far, _ = ray_aabb(rays.origins.detach(), rays.dirs.detach(), self.aabb, self.near_min)
        return sample_along_rays(rays.origins, rays.dirs, near, far, self.step_size, self.max_samples, self.grid, stratified, generator)
