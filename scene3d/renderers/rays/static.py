"""Rendering rays with shapes fixed on the host: training steps that never wait for the device.

:func:`~scene3d.renderers.rays.render.render_rays` sizes its tensors by what the occupancy grid
left (``torch.nonzero`` of the valid samples, the longest ray, the samples worth shading), so on
CUDA the host waits for the device several times a step. Here every size is known on the host
before the step runs:

* samples lie on the lattice [N, S] of :func:`~scene3d.renderers.rays.sampling.sample_lattice`
  (S from the box's diagonal, not from the rays), valid where the occupancy grid is occupied;
* the valid samples are compacted, in lattice order (ray by ray, near to far), into a buffer of
  ``capacity`` slots by a cumulative sum and a scatter (:func:`compact`; no ``nonzero``), and the
  density field is evaluated at the buffer's points: the count of points evaluated is bounded by
  the occupancy grid (the occupied samples, padded up to the capacity), not by the lattice;
* densities are scattered back into dense [N, S] tensors (zero elsewhere, which composites as
  nothing) and composited as :func:`render_rays` does;
* two-stage shading (colour only where the weight exceeds ``weight_threshold``, plus each ray's
  ``shade_topk`` heaviest samples) compacts the samples it keeps into a second buffer of
  ``shade_capacity`` slots.

Padded slots evaluate the field at some lattice point and their answers are discarded (their
density and colour are set to zero and scattered nowhere), so they change neither the result nor
the gradients. The true counts come back as device tensors (:class:`StaticCounts`); a caller reads
them later (:class:`~scene3d.device.LaggedReadout`) and sizes the next buffers with
:class:`Capacity`. Samples beyond a buffer's capacity are dropped: those that come last in lattice
order (the last rays of the batch; the ray crossing the limit keeps its nearest samples). Dropped
densities composite as empty space, dropped colours as black. A caller counts them
(``Capacity.dropped``) and reports them.
With capacities at least the counts, the result equals :func:`render_rays`' to float rounding.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor

from scene3d.renderers.rays.pixels import Rays
from scene3d.renderers.rays.render import ColorFn, DensityFn, RayOutput
from scene3d.renderers.rays.sampling import RaySamples
from scene3d.renderers.rays.volrend import RenderBackend, volume_render_fn

log = logging.getLogger(__name__)


@dataclass
class StaticCounts:
    """What one :func:`render_rays_static` call needed, as int64 device scalars (not read)."""

    points: Tensor
    """Valid (occupied) samples: the density evaluations a large enough buffer holds."""
    shaded: Tensor
    """Samples two-stage shading asked colour for (of those that fit the point buffer)."""


def compact(mask: Tensor, capacity: int) -> tuple[Tensor, Tensor, Tensor]:
    """The positions of ``mask``'s True entries, in order, in a buffer of ``capacity`` slots,
    without reading the mask's count on the host.

    The k-th True entry (k from 0, counted by a cumulative sum) goes to slot k when k <
    ``capacity``; the rest, and the False entries, are scattered into one spare slot that is cut
    off. Args: mask [L] bool. Returns: index [capacity] int64 (into ``mask``; 0 in padded slots),
    filled [capacity] bool (slot holds an entry), count (0-dim int64: True entries, also those that
    did not fit).
    """
    assert mask.ndim == 1 and mask.dtype == torch.bool, f"mask must be [L] bool, got {tuple(mask.shape)} {mask.dtype}"
    assert capacity >= 1, f"capacity must be >= 1, got {capacity}"
    length = mask.shape[0]
    rank = torch.cumsum(mask, dim=0)  # int64: 1 + the entry's place among the True ones
    count = rank[-1] if length else rank.new_zeros(())
    slot = torch.where(mask & (rank <= capacity), rank - 1, capacity)
    index = torch.zeros(capacity + 1, dtype=torch.int64, device=mask.device)
    index.scatter_(0, slot, torch.arange(length, device=mask.device))
    filled = torch.arange(capacity, device=mask.device) < count
    return index[:capacity], filled, count


def render_rays_static(
    density: DensityFn,
    color: ColorFn,
    rays: Rays,
    samples: RaySamples,  # [N, S] on the lattice (sample_lattice)
    *,
    capacity: int,
    shade_capacity: int,
    background: Tensor | None = None,  # [C] or [N, C]
    backend: RenderBackend = "auto",
    weight_threshold: float = 0.0,
    shade_topk: int = 0,
) -> tuple[RayOutput, StaticCounts]:
    """Renders N rays with two-stage shading (``density`` then ``color``, as
    :func:`~scene3d.renderers.rays.render.render_rays` with ``color`` given) through buffers of
    ``capacity`` points and ``shade_capacity`` coloured samples (see the module docstring).

    Returns the render (``num_samples`` is ``capacity``: the density evaluations made, padding
    included; ``weights`` and ``samples`` on the lattice) and the counts the buffers needed.
    """
    n, s = samples.valid.shape
    assert len(rays) == n, f"{len(rays)} rays for samples of {n}"
    length = n * s
    render = volume_render_fn(backend)
    origins, dirs = rays.origins, rays.dirs
    index, filled, n_points = compact(samples.valid.reshape(-1), capacity)
    ray = torch.div(index, max(s, 1), rounding_mode="floor")
    mid = samples.midpoints.reshape(-1)[index]
    points = origins[ray] + dirs[ray] * mid[:, None]
    sigma = density(points).reshape(-1)
    assert sigma.shape == (capacity,), f"density must return sigma [{capacity}], got {tuple(sigma.shape)}"
    sigma = torch.where(filled, sigma, torch.zeros_like(sigma))
    target = torch.where(filled, index, length)  # padded slots land in a spare entry, cut off below
    sigmas = sigma.new_zeros(length + 1).scatter(0, target, sigma)[:length].view(n, s)

    with torch.no_grad():  # which samples get colour: weights without gradient, as render_rays' _shade
        weights = render(samples.t_starts, samples.t_ends, sigmas.detach(), sigmas.new_zeros(n, s, 3), None)[3]
        keep = filled & (weights.reshape(-1)[index] > weight_threshold)
        if shade_topk > 0 and s > 0:
            heavy = torch.zeros_like(samples.valid).scatter_(1, weights.topk(min(shade_topk, s), dim=1).indices, True)
            keep = keep | (filled & heavy.reshape(-1)[index])
    slot, shaded, n_shaded = compact(keep, shade_capacity)
    rgb = color(points[slot], dirs[ray[slot]])
    assert rgb.ndim == 2 and rgb.shape[0] == shade_capacity, f"color must return rgb [{shade_capacity}, C], got {tuple(rgb.shape)}"
    rgb = torch.where(shaded[:, None], rgb, torch.zeros_like(rgb))
    where = torch.where(shaded, index[slot], length)[:, None].expand(-1, rgb.shape[1])
    rgbs = rgb.new_zeros(length + 1, rgb.shape[1]).scatter(0, where, rgb)[:length].view(n, s, -1)

    rgb_out, alpha, depth, weights = render(samples.t_starts, samples.t_ends, sigmas, rgbs, background)
    return RayOutput(rgb_out, alpha, depth, capacity, weights, samples), StaticCounts(n_points, n_shaded)


@dataclass
class Capacity:
    """The size of a buffer that must hold a count known only on the device, adapted from the
    counts the host reads some steps later.

    ``None`` until first used: then the whole lattice, so nothing is dropped before the first
    count arrives, which sets the size to ``growth`` times it. A count read that exceeds the size
    makes it ``jump`` times that count at once: a count that outgrew its buffer is usually still
    growing (early in training, as the field turns opaque, the samples worth shading grow by a few
    percent a step), and the steps until the next count is read run with the new size. Once
    ``window`` counts in a row read since the size last changed would fit in 0.8 of it, it shrinks
    to ``growth`` times the largest of them. Sizes are rounded up to a multiple of ``quantum``
    (fewer distinct shapes for the allocator) and never exceed the lattice. ``dropped`` totals what
    the counts read exceeded the sizes their steps ran with.
    """

    size: int | None = None
    growth: float = 1.25
    jump: float = 2.0
    quantum: int = 1024
    window: int = 16
    dropped: int = 0
    """Entries that did not fit, over the steps read so far."""
    overflows: int = 0
    """Steps read so far that dropped entries."""
    reads: int = 0
    """Counts read so far."""
    name: str = "buffer"
    _recent: deque = field(default_factory=deque, repr=False)

    def use(self, limit: int) -> int:
        """The size for a step whose count cannot exceed ``limit`` (the lattice)."""
        if self.size is None:
            self.size = limit
        return max(1, min(self.size, limit))

    def fit(self, count: float, limit: int) -> int:
        """``count`` rounded up to a multiple of ``quantum``, at most ``limit``."""
        return max(1, min(limit, self.quantum * math.ceil(count / self.quantum)))

    def scale(self, factor: float) -> None:
        """Expects counts ``factor`` times larger from now on: a larger size at once (a smaller
        one only once counts show it)."""
        if self.size is not None and factor > 1:
            self.size = self.quantum * math.ceil(self.size * factor / self.quantum)
            self._recent.clear()

    def observe(self, step: int, count: int, used: int, limit: int) -> None:
        """Notes that ``step`` needed ``count`` entries and ran with ``used`` slots."""
        over = max(0, count - used)
        if over:
            if self.overflows == 0:
                log.warning("%s: step %d dropped %d of %d entries (size %d); the size grows and drops are counted in the metrics", self.name, step, over, count, used)
            self.dropped += over
            self.overflows += 1
        first = self.reads == 0
        self.reads += 1
        self._recent.append(count)
        if len(self._recent) > self.window:
            self._recent.popleft()
        current = self.use(limit)
        settled = self.fit(self.growth * max(self._recent), limit)
        if count > current:
            self.size = self.fit(self.jump * count, limit)
            self._recent.clear()  # shrinking waits for ``window`` counts read at this size
        elif first or (len(self._recent) == self.window and settled < 0.8 * current):
            self.size = settled
            self._recent.clear()
