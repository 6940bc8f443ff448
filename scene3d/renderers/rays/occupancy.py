"""An occupancy grid: which cells of the scene box hold matter, so rays can skip empty space.

The box is split into ``R x R x R`` cells (cell (i, j, k) spans ``lo + [i, i+1] * size / R`` along
x, and likewise along y and z; flat index ``(i R + j) R + k``). Each cell keeps

* ``density``: an exponential moving maximum of the density sigma measured in the cell,
  ``density <- max(decay * density, sigma(jittered point in the cell))`` for every cell visited by
  an update (nerfacc's ``OccGridEstimator`` rule; cells not visited keep their value);
* ``binary``: whether the cell counts as occupied.

Occupancy thresholds an opacity, not a density, so it does not depend on the scale of the scene:
a cell is occupied when ``density * step_size`` exceeds ``min(occ_thre, mean over cells)``, where
``density * step_size`` is (to first order) the opacity ``1 - exp(-sigma * step_size)`` of one
ray-marching step of length ``step_size`` through the cell. Pass the renderer's step size; by
default it is the mean edge length of a cell, i.e. the opacity of crossing one cell. The ``mean``
term is nerfacc's: while the field is still near-transparent everywhere, cells denser than the
average stay occupied rather than the whole grid going empty.

Updates run every ``n`` steps. During warm-up every cell is measured; afterwards a random quarter
of the cells plus every occupied cell, so occupied cells are re-checked at each update and empty
ones are revisited about every fourth update. A new grid (and :meth:`OccupancyGrid.mark_all`)
counts every cell as occupied, so sampling is unrestricted until the first update.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

DensityFn = Callable[[Tensor], Tensor]
"""Maps points [M, 3] to densities [M] (or [M, 1])."""


class OccupancyGrid(nn.Module):
    """A ``resolution``^3 occupancy grid over ``aabb`` (xmin, ymin, zmin, xmax, ymax, zmax).

    Buffers (saved in ``state_dict``): ``aabb`` [6], ``density`` [R^3] moving maximum of density,
    ``binary`` [R, R, R] bool occupancy.
    """

    aabb: Tensor
    density: Tensor
    binary: Tensor

    def __init__(self, aabb: Tensor | Sequence[float], resolution: int = 128) -> None:
        super().__init__()
        box = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1)
        assert box.shape == (6,), f"aabb must have 6 numbers, got {tuple(box.shape)}"
        assert bool((box[3:] > box[:3]).all()), f"aabb max must exceed min on every axis, got {box.tolist()}"
        assert resolution >= 1, f"resolution must be >= 1, got {resolution}"
        self.resolution = int(resolution)
        r = self.resolution
        self.register_buffer("aabb", box)
        self.register_buffer("density", torch.zeros(r**3))
        self.register_buffer("binary", torch.ones(r, r, r, dtype=torch.bool))

    @property
    def num_cells(self) -> int:
        return self.resolution**3

    @property
    def cell_size(self) -> Tensor:
        """[3] edge lengths of one cell."""
        return (self.aabb[3:] - self.aabb[:3]) / self.resolution

    def occupied_fraction(self) -> float:
        return float(self.binary.float().mean())

    @torch.no_grad()
    def mark_all(self) -> None:
        """Counts every cell as occupied (the moving maximum is kept; the next update re-derives
        occupancy from it)."""
        self.binary.fill_(True)

    @classmethod
    @torch.no_grad()
    def covering(cls, cells: Tensor, aabb: Tensor | Sequence[float], resolution: int) -> "OccupancyGrid":
        """A ``resolution``^3 grid over ``aabb`` marking every cell that overlaps an occupied cell of
        ``cells`` [A, B, C] bool, another grid of A x B x C equal cells over the same box (and the
        cells beyond a shared face, so rounding there never loses one). Nothing is measured: the
        grid is as conservative as ``cells``."""
        box = torch.as_tensor(aabb, dtype=torch.float32).reshape(-1)
        grid = cls(box, resolution).to(cells.device)
        out = cells.to(torch.uint8)
        for axis in range(3):
            n = out.shape[axis]
            j = torch.arange(resolution, device=cells.device)
            # cell j spans [j n / R, (j + 1) n / R] in units of the other grid's cells; where an end
            # falls on a face of theirs, the cell beyond it counts too (float rounding may put a point there)
            first = torch.clamp(j * n // resolution - ((j * n) % resolution == 0).long(), min=0)
            last = torch.clamp((j + 1) * n // resolution, max=n - 1)
            widest = int((last - first).max()) + 1
            pooled = None
            for o in range(widest):
                part = out.index_select(axis, torch.minimum(first + o, last))
                pooled = part if pooled is None else torch.maximum(pooled, part)
            out = pooled
        grid.binary.copy_(out > 0)
        return grid

    @torch.no_grad()
    def levels(self) -> tuple[np.ndarray, np.ndarray]:
        """The grid and its coarser copies for skipping empty space in long strides (as
        instant-NGP's occupancy bitfield): level l + 1 has a cell occupied when any of the
        2 x 2 x 2 cells of level l below it is, halving while the size is even. Returns (every
        level's cells as flat uint8 in the grid's ``(i R + j) R + k`` order, concatenated; [levels,
        2] int64 of (offset, resolution)). Kept until ``binary`` changes."""
        key = (self.binary.data_ptr(), self.binary._version, self.resolution)
        cached = getattr(self, "_levels", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        grids = [self.binary.detach().to("cpu", torch.float32)[None, None]]
        while grids[-1].shape[-1] % 2 == 0 and grids[-1].shape[-1] > 1:
            grids.append(torch.nn.functional.max_pool3d(grids[-1], 2))
        table = np.array([[0, g.shape[-1]] for g in grids], dtype=np.int64)
        table[1:, 0] = np.cumsum([g.numel() for g in grids])[:-1]
        flat = np.ascontiguousarray(torch.cat([g.reshape(-1) for g in grids]).to(torch.uint8).numpy())
        self._levels = (key, (flat, table))
        return flat, table

    @torch.no_grad()
    def occupied(self, points: Tensor) -> Tensor:
        """Whether each point [M, 3] lies in an occupied cell -> [M] bool; outside the box is False."""
        assert points.ndim == 2 and points.shape[1] == 3, f"points must be [M, 3], got {tuple(points.shape)}"
        lo, hi = self.aabb[:3].to(points), self.aabb[3:].to(points)
        inside = ((points >= lo) & (points <= hi)).all(dim=-1)
        r = self.resolution
        ijk = torch.floor((points - lo) / (hi - lo) * r).long().clamp(0, r - 1)
        flat = (ijk[:, 0] * r + ijk[:, 1]) * r + ijk[:, 2]
        return inside & self.binary.reshape(-1).to(points.device)[flat]

    @torch.no_grad()
    def ray_spans(self, origins: Tensor, dirs: Tensor, near: Tensor, far: Tensor, steps: Tensor, step_size: float) -> tuple[Tensor, Tensor]:
        """For each ray, (first, last) indices k of the marching intervals ``[near + k step,
        min(near + (k + 1) step, far))``, k < ``steps``, whose midpoints lie in occupied cells,
        widened by one interval each way (so rounding at a cell face never drops a sample);
        ``first > last`` when none does. A numba loop per ray on the CPU (it stops at the first
        and last hit); elsewhere every interval counts (0, steps - 1)."""
        if origins.device.type != "cpu" or not _numba_available():
            return torch.zeros_like(steps), steps - 1
        from scene3d.renderers.rays._numba_rays import ray_spans as kernel

        binary = np.ascontiguousarray(self.binary.cpu().numpy().astype(np.uint8).reshape(-1))
        box = self.aabb.cpu().numpy().astype(np.float32)

        def np32(t: Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())

        first, last = kernel(np32(origins), np32(dirs), np32(near), np32(far), np.ascontiguousarray(steps.cpu().numpy().astype(np.int64)),
                             np.float32(step_size), binary, self.resolution, box)  # fmt: skip
        return torch.from_numpy(first), torch.from_numpy(last)

    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: DensityFn,
        occ_thre: float = 0.01,
        ema_decay: float = 0.95,
        warmup_steps: int = 256,
        n: int = 16,
        *,
        step_size: Optional[float] = None,
        chunk: int = 1 << 16,
        generator: Optional[torch.Generator] = None,
    ) -> bool:
        """Measures the density in cells and refreshes occupancy, on every ``n``-th step.

        Args:
            step: the training step.
            density_fn: points [M, 3] -> sigma [M]; called under ``no_grad`` on at most ``chunk``
                points at a time.
            occ_thre: opacity threshold (see the module docstring).
            ema_decay: decay of the moving maximum.
            warmup_steps: before this step every cell is measured, afterwards a random quarter
                plus the occupied ones.
            n: update period in steps.
            step_size: the ray-marching step whose opacity is thresholded; None: a cell's mean edge.
            generator: random stream for cell choice and jitter (on the grid's device).
        Returns:
            Whether the grid was updated.
        """
        if step % n != 0:
            return False
        dev = self.density.device
        cells = self._cells_to_measure(step < warmup_steps, generator)
        r = self.resolution
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], dim=-1)
        jitter = torch.rand(len(cells), 3, generator=generator, device=dev)
        points = self.aabb[:3] + (ijk + jitter) * self.cell_size
        sigma = torch.cat([self._eval(density_fn, p) for p in points.split(chunk)]) if len(cells) else points.new_zeros(0)
        self.density[cells] = torch.maximum(self.density[cells] * ema_decay, sigma)
        step_len = float(self.cell_size.mean()) if step_size is None else float(step_size)
        opacity = self.density * step_len
        threshold = torch.clamp(opacity.mean(), max=occ_thre)
        self.binary.copy_((opacity > threshold).reshape(r, r, r))
        return True

    def _cells_to_measure(self, everything: bool, generator: Optional[torch.Generator]) -> Tensor:
        dev = self.density.device
        if everything:
            return torch.arange(self.num_cells, device=dev)
        random_cells = torch.randint(self.num_cells, (self.num_cells // 4,), generator=generator, device=dev)
        occupied_cells = torch.nonzero(self.binary.reshape(-1)).squeeze(-1)
        return torch.unique(torch.cat([random_cells, occupied_cells]))

    @staticmethod
    def _eval(density_fn: DensityFn, points: Tensor) -> Tensor:
        sigma = density_fn(points)
        assert sigma.numel() == points.shape[0], (
            f"density_fn must return one density per point ([{points.shape[0]}]), got {tuple(sigma.shape)}"
        )
        return sigma.reshape(-1).to(torch.float32)


@functools.cache
def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True
