"""Inference rendering of two-stage fields: rays marched front to back in blocks of samples,
empty space skipped by the occupancy grid, each ray dropped once it is opaque.

Training renders with :func:`~scene3d.renderers.rays.render.render_rays`: every valid sample of
every ray is laid out in one [N, S] batch, so gradients flow through all of them. For evaluation,
renders and the viewer nothing needs gradients, and most of that batch is wasted: a sample behind
an opaque surface adds at most its ray's remaining transmittance to the pixel. :func:`march_rays`
walks the same lattice of intervals as :class:`~scene3d.renderers.rays.sampling.OccupancySampler`
(``t_k = near + k step``, not jittered) ``block`` samples at a time:

1. for the rays still alive, the block's interval midpoints are looked up in the occupancy grid
   (cheap: no field evaluation) and the density is evaluated only at occupied ones;
2. the block is composited onto what the ray has so far (transmittance ``T`` carried over from
   the previous blocks, ``w_k = T_k alpha_k``), and colour is evaluated only where the weight
   exceeds ``weight_threshold`` (two-stage shading, as in training);
3. a ray whose transmittance falls to ``early_stop`` or below (when it is above 0), or that has
   left the box, is dropped.

With ``early_stop = 0`` the result equals :func:`render_rays` with the same sampler (the same
intervals, densities and weights, summed in another order; a test holds them to float32 rounding).
With ``early_stop = e`` each pixel differs by at most ``e`` times the largest colour behind the
stopping point (what the skipped samples and the background could still add), so the default
``1e-4`` is far below one 8-bit level. The work is tensor operations over the alive rays of a block;
no Python runs per sample or per ray.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.renderers.rays.aabb import ray_aabb
from scene3d.renderers.rays.pixels import Rays, camera_rays
from scene3d.renderers.rays.render import RayRenderOutput
from scene3d.renderers.rays.sampling import OccupancySampler

DensityFn = Callable[[Tensor], Tensor]
ColorFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class MarchOutput:
    """What :func:`march_rays` returns for N rays."""

    rgb: Tensor  # [N, C], background composited
    alpha: Tensor  # [N, 1] accumulated opacity (sum of weights)
    depth: Tensor  # [N, 1] expected distance sum(w t_mid) / max(alpha, 1e-10)
    num_samples: int  # density evaluations
    num_shaded: int  # colour evaluations


@torch.no_grad()
def march_rays(
    density: DensityFn,
    color: ColorFn,
    rays: Rays,
    *,
    sampler: OccupancySampler,
    background: Optional[Tensor] = None,  # [C] or [N, C]
    weight_threshold: float = 0.0,
    early_stop: float = 1e-4,
    block: int = 32,
    threads: int | None = None,
    fill_unshaded: bool = False,
    vm: Optional[VMDensity] = None,
    cap: int = 32,
) -> MarchOutput:
    """Renders N rays (unit directions) through a two-stage field without gradients (see the
    module docstring). ``density``: points [M, 3] -> sigma [M]; ``color``: points [M, 3], dirs
    [M, 3] -> rgb [M, C]. ``threads``: torch's thread count while colour is evaluated (None:
    unchanged), when the marching itself runs on fewer. ``fill_unshaded``: the weight of the
    samples below ``weight_threshold`` takes the mean colour of the ray's shaded samples
    (:func:`_fill_unshaded`) instead of none, and a ray with no sample above the threshold has its
    heaviest one shaded. ``vm``: the same density as a VM grid,
    which on the CPU lets one numba pass march every ray (:func:`_march_vm`, recording at most
    ``cap`` samples per ray for shading; a ray with more is marched again here)."""
    assert block >= 1, f"block must be >= 1, got {block}"
    assert early_stop >= 0.0, f"early_stop must be >= 0, got {early_stop}"
    origins, dirs = rays.origins, rays.dirs
    n, device = origins.shape[0], origins.device
    if vm is not None and device.type == "cpu" and origins.dtype == torch.float32 and _numba_ok():
        kw = dict(sampler=sampler, background=background, weight_threshold=weight_threshold, early_stop=early_stop, block=block, threads=threads,
                  fill_unshaded=fill_unshaded)  # fmt: skip
        return _march_vm(density, color, rays, vm, cap, kw)

    def shade(points: Tensor, directions: Tensor) -> Tensor:
        if threads is None:
            return color(points, directions)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return color(points, directions)
        finally:
            torch.set_num_threads(before)

    near, far, _ = ray_aabb(origins, dirs, sampler.aabb, sampler.near_min)
    step = float(sampler.step_size)
    span = torch.clamp(far - near, min=0.0)
    steps = torch.clamp(torch.ceil(span / step), max=sampler.max_samples).long()  # intervals k with near + k step < far
    if sampler.grid is not None:  # each ray's occupied stretch: the intervals before and after it are empty
        first, last = sampler.grid.ray_spans(origins, dirs, near, far, steps, step)
        first, last = first.to(device), last.to(device)
    else:
        first, last = torch.zeros_like(steps), steps - 1
    longest = int((last - first).max()) + 1 if n else 0
    transmittance = torch.ones(n, device=device)
    rgb_sum: Tensor | None = None
    alpha_sum = torch.zeros(n, device=device)
    depth_sum = torch.zeros(n, device=device)
    alive = torch.nonzero(last >= first).squeeze(1)
    evaluated = shaded = 0
    to_shade: list[tuple[Tensor, Tensor, Tensor]] = []  # (points, their ray, their weight) kept for colour
    offsets = torch.arange(block, device=device)
    fused = _fused_blocks(origins, dirs, sampler.grid)
    best_w = torch.zeros(n, device=device)  # with fill_unshaded: the heaviest sample left unshaded, per ray
    best_pt = torch.zeros(n, 3, device=device)
    for start in range(0, max(longest, 0), block):
        if alive.numel() == 0:
            break
        if fused is not None:  # the same intervals and decisions, in one numba pass
            t_starts, t_ends, mids, valid = fused(near, far, first, last, alive, start, block, step)
        else:
            a_near, a_far = near[alive, None], far[alive, None]
            k = first[alive, None] + start + offsets[None, :]
            t_starts = a_near + k.to(origins.dtype) * step
            t_ends = torch.minimum(t_starts + step, a_far)
            valid = (t_starts < a_far) & (k <= last[alive, None])
            mids = origins[alive, None, :] + dirs[alive, None, :] * (0.5 * (t_starts + t_ends))[..., None]
            if sampler.grid is not None:
                valid &= sampler.grid.occupied(mids.reshape(-1, 3)).reshape(valid.shape)
        ray, col = torch.nonzero(valid, as_tuple=True)
        if ray.numel():
            points = mids[ray, col]
            sigmas = torch.zeros(valid.shape, device=device, dtype=origins.dtype)
            sigmas[ray, col] = density(points).reshape(-1).to(sigmas.dtype)
            evaluated += ray.numel()
            alphas = 1.0 - torch.exp(-sigmas * (t_ends - t_starts))
            survive = torch.cumprod(1.0 - alphas, dim=1)
            before = transmittance[alive, None] * torch.cat([torch.ones_like(survive[:, :1]), survive[:, :-1]], dim=1)
            weights = before * alphas
            if early_stop > 0:  # the ray ends at the first sample it reaches with transmittance early_stop or less
                weights = torch.where(before > early_stop, weights, torch.zeros_like(weights))
            alpha_sum[alive] += weights.sum(1)
            depth_sum[alive] += (weights * 0.5 * (t_starts + t_ends)).sum(1)
            w = weights[ray, col]
            keep = w > weight_threshold
            to_shade.append((points[keep], alive[ray[keep]], w[keep]))
            if fill_unshaded:  # each ray's heaviest sample below the threshold so far
                below = torch.where(keep, torch.zeros_like(w), w)
                top = torch.zeros(alive.numel(), device=device, dtype=w.dtype).scatter_reduce_(0, ray, below, "amax")
                heavier = top > best_w[alive]
                at = torch.zeros(alive.numel(), dtype=torch.long, device=device).scatter_reduce_(
                    0, ray, torch.where(below == top[ray], torch.arange(ray.numel(), device=device), torch.full_like(ray, -1)), "amax")  # fmt: skip
                best_w[alive[heavier]] = top[heavier]
                best_pt[alive[heavier]] = points[at[heavier]]
            transmittance[alive] = transmittance[alive] * survive[:, -1]
        go_on = first[alive] + start + block <= last[alive]
        if early_stop > 0:  # 0: march every ray to its end (the training renderer's samples, for comparison)
            go_on &= transmittance[alive] > early_stop
        alive = alive[go_on]
    if fill_unshaded and to_shade:  # rays with nothing above the threshold shade their heaviest sample
        lonely = torch.zeros(n, dtype=torch.bool, device=device)
        lonely[torch.cat([part[1] for part in to_shade])] = True
        lonely = torch.nonzero(~lonely & (best_w > 0)).squeeze(1)
        to_shade.append((best_pt[lonely], lonely, best_w[lonely]))
    if to_shade:  # colour for all blocks at once: one large batch for the shading network
        points, owner, w = (torch.cat(parts) for parts in zip(*to_shade))
        if owner.numel():
            rgb = shade(points, dirs[owner])
            rgb_sum = torch.zeros(n, rgb.shape[1], device=device, dtype=rgb.dtype).index_add_(0, owner, w[:, None] * rgb)
            if fill_unshaded:
                rgb_sum = _fill_unshaded(rgb_sum, torch.zeros(n, device=device, dtype=w.dtype).index_add_(0, owner, w), alpha_sum)
            shaded = owner.numel()
    c = rgb_sum.shape[1] if rgb_sum is not None else (3 if background is None else background.shape[-1])
    if rgb_sum is None:
        rgb_sum = torch.zeros(n, c, device=device)
    alpha = alpha_sum[:, None]
    depth = depth_sum[:, None] / torch.clamp(alpha, min=1e-10)
    if background is not None:
        rgb_sum = rgb_sum + (1.0 - alpha) * background.to(rgb_sum)
    return MarchOutput(rgb_sum, alpha, depth, evaluated, shaded)


def _fill_unshaded(rgb_sum: Tensor, shaded_weight: Tensor, alpha: Tensor) -> Tensor:
    """``sum_shaded w c`` [N, C] scaled so the ray's whole weight ``alpha`` [N] carries its shaded
    samples' weighted mean colour: the samples left unshaded (each below the shading threshold)
    are given that colour instead of black. The result is ``alpha`` times a mean of colours, so it
    stays within their range; it differs from shading every sample by at most the unshaded weight
    times the colours' spread."""
    scale = torch.where(shaded_weight > 0, alpha / torch.clamp(shaded_weight, min=1e-20), torch.ones_like(alpha))
    return rgb_sum * scale[:, None]


@dataclass
class VMDensity:
    """A density that is a VM (vector-matrix) tensor decomposition, for :func:`march_rays`'s
    one-pass CPU kernel: ``sigma(p) = softplus(sum_p sum_{c < channels} M^p_c l^p_c (x) + shift)
    * scale`` at box coordinates ``x = (p - lo) / size * 2 - 1`` (see
    :mod:`scene3d.renderers.rays.vm`). It must equal the ``density`` function passed beside it."""

    grids: tuple  # channels-last planes [H, W, C] x 3 and lines [L, C] x 3 (:func:`~scene3d.renderers.rays.vm.channels_last`)
    lo: Tensor  # [3]
    size: Tensor  # [3]
    shift: float
    scale: float


def _numba_ok() -> bool:
    try:
        import scene3d.renderers.rays._numba_rays  # noqa: F401
    except ImportError:
        return False
    return True


def _march_vm(density, color, rays: Rays, vm: VMDensity, cap: int, kw: dict) -> MarchOutput:
    """:func:`march_rays` by one numba pass per ray (:func:`scene3d.renderers.rays._numba_rays.march_vm`):
    the same intervals, occupancy decisions, densities (to float32 rounding), early stop and
    shading threshold as the block path, without per-block tensor work. Then colour for every
    recorded sample at once; rays that had more than ``cap`` samples to shade are marched again
    by the block path."""
    import numpy as np

    from scene3d.renderers.rays._numba_rays import march_vm

    sampler, background, threads = kw["sampler"], kw["background"], kw["threads"]
    origins, dirs = rays.origins, rays.dirs
    n = origins.shape[0]
    near, far, _ = ray_aabb(origins, dirs, sampler.aabb, sampler.near_min)
    step = float(sampler.step_size)
    steps = torch.clamp(torch.ceil(torch.clamp(far - near, min=0.0) / step), max=sampler.max_samples).long()
    grid = sampler.grid
    if grid is None:
        levels, table, box, use_grid = np.zeros(1, np.uint8), np.array([[0, 1]]), np.zeros(6, np.float32), False
    else:
        levels, table = grid.levels()
        box, use_grid = grid.aabb.cpu().numpy().astype(np.float32), True
    (p0, p1, p2), (l0, l1, l2) = vm.grids

    def np32(t: Tensor) -> np.ndarray:
        return np.ascontiguousarray(t.detach().to(torch.float32).cpu().numpy())

    t_mid, w, count, acc, dep, evaluated = march_vm(
        np32(origins), np32(dirs), np32(near), np32(far), steps.numpy(), np.float32(step), levels, table, box, use_grid,
        np32(vm.lo), np32(vm.size), p0, p1, p2, l0, l1, l2, p0.shape[2], np.float32(vm.shift), np.float32(vm.scale),
        np.float32(kw["weight_threshold"]), np.float32(kw["early_stop"]), cap, bool(kw["fill_unshaded"]),
    )  # fmt: skip
    count = torch.from_numpy(count)
    alpha = torch.from_numpy(acc)[:, None]
    depth = torch.from_numpy(dep)[:, None] / torch.clamp(alpha, min=1e-10)
    num = torch.clamp(count, max=cap)
    ray, slot = torch.nonzero(torch.arange(cap)[None, :] < num[:, None], as_tuple=True)
    rgb_sum = None
    if ray.numel():
        t = torch.from_numpy(t_mid)[ray, slot]
        weights = torch.from_numpy(w)[ray, slot]
        points = origins[ray] + dirs[ray] * t[:, None]
        if threads is not None:
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
        try:
            rgb = color(points, dirs[ray])
        finally:
            if threads is not None:
                torch.set_num_threads(before)
        rgb_sum = torch.zeros(n, rgb.shape[1], dtype=rgb.dtype).index_add_(0, ray, weights[:, None] * rgb)
        if kw["fill_unshaded"]:
            rgb_sum = _fill_unshaded(rgb_sum, torch.zeros(n).index_add_(0, ray, weights), alpha[:, 0])
    if rgb_sum is None:
        rgb_sum = torch.zeros(n, 3 if background is None else background.shape[-1])
    if background is not None:
        rgb_sum = rgb_sum + (1.0 - alpha) * background.to(rgb_sum)
    evaluations, shaded = int(evaluated.sum()), int(num.sum())
    over = torch.nonzero(count > cap).squeeze(1)
    if over.numel():  # more samples to shade than recorded: these rays by the block path
        bg = background if background is None or background.dim() == 1 else background[over]
        again = march_rays(density, color, Rays(origins[over], dirs[over]), **{**kw, "background": bg})
        rgb_sum[over], alpha[over], depth[over] = again.rgb, again.alpha, again.depth
        shaded += again.num_shaded - int(num[over].sum())
        evaluations += again.num_samples - int(evaluated[over.numpy()].sum())
    return MarchOutput(rgb_sum, alpha, depth, evaluations, shaded)


def _fused_blocks(origins: Tensor, dirs: Tensor, grid):
    """On the CPU with numba: a function making one block's intervals, midpoints and validity
    (:func:`scene3d.renderers.rays._numba_rays.block_samples`); None elsewhere (the torch path)."""
    if origins.device.type != "cpu" or origins.dtype != torch.float32:
        return None
    try:
        from scene3d.renderers.rays._numba_rays import block_samples
    except ImportError:
        return None
    import numpy as np

    o = np.ascontiguousarray(origins.detach().numpy())
    dirs_np = np.ascontiguousarray(dirs.detach().to(torch.float32).numpy())
    if grid is None:
        binary, r, box, use_grid = np.zeros(1, np.uint8), 1, np.zeros(6, np.float32), False
    else:
        binary = np.ascontiguousarray(grid.binary.cpu().numpy().astype(np.uint8).reshape(-1))
        r, box, use_grid = grid.resolution, grid.aabb.cpu().numpy().astype(np.float32), True
    d = None

    def make(near, far, first, last, alive, start, block, step):
        nonlocal d
        if d is None:
            d = ([np.ascontiguousarray(t.detach().to(torch.float32).numpy()) for t in (near, far)], first.numpy(), last.numpy())
        (n32, f32), fi, la = d
        out = block_samples(o, dirs_np, n32, f32, fi, la, alive.numpy(), start, block, np.float32(step), binary, r, box, use_grid)
        return tuple(torch.from_numpy(a) for a in out)

    return make


def tile_order(h: int, w: int, tile: int, device=None) -> Tensor:
    """Pixel indices (row-major flat) grouped into ``tile`` x ``tile`` tiles, tile after tile: rays
    of one tile hit nearby surfaces, so they stop marching together."""
    ys = torch.arange(h, device=device)
    xs = torch.arange(w, device=device)
    key = ((ys[:, None] // tile) * ((w + tile - 1) // tile) + xs[None, :] // tile) * (tile * tile) + (ys[:, None] % tile) * tile + xs[None, :] % tile
    return torch.argsort(key.reshape(-1))


@torch.no_grad()
def march_image(
    density: DensityFn,
    color: ColorFn,
    cameras: Cameras,  # one camera
    *,
    sampler: OccupancySampler,
    background: Optional[Tensor] = None,  # [C]
    tile: int = 64,
    **kw,
) -> RayRenderOutput:
    """Every pixel of one camera marched by :func:`march_rays`, a ``tile`` x ``tile`` block of
    pixels at a time; ``kw`` are its other options."""
    rays, h, w = camera_rays(cameras)
    order = tile_order(h, w, tile, rays.origins.device)
    threads = torch.get_num_threads()
    if rays.origins.device.type == "cpu" and threading.current_thread() is threading.main_thread():
        # Marching is many small tensor operations: with scene3d's passive OpenMP threads (see
        # scene3d/__init__.py) waking them for each costs more than it saves (1.07 -> 0.62 s per
        # lego view on two cores); the field's numba kernels keep their own threads. Only on the
        # main thread (eval, render): the setting is process-wide, and a viewer thread must not
        # slow the training beside it.
        torch.set_num_threads(1)
    try:
        return _march_tiles(density, color, rays, h, w, order, tile, sampler, background, {"threads": threads, **kw})
    finally:
        torch.set_num_threads(threads)


def _march_tiles(density, color, rays, h, w, order, tile, sampler, background, kw) -> RayRenderOutput:
    rgb = alpha = depth = None
    total = 0
    for i in range(0, h * w, tile * tile):
        idx = order[i : i + tile * tile]
        out = march_rays(density, color, Rays(rays.origins[idx], rays.dirs[idx]), sampler=sampler, background=background, **kw)
        if rgb is None:
            rgb = out.rgb.new_zeros(h * w, out.rgb.shape[1])
            alpha, depth = out.alpha.new_zeros(h * w, 1), out.depth.new_zeros(h * w, 1)
        rgb[idx], alpha[idx], depth[idx] = out.rgb, out.alpha, out.depth
        total += out.num_samples
    return RayRenderOutput(rgb.reshape(1, h, w, -1), alpha.reshape(1, h, w, 1), depth.reshape(1, h, w, 1), total)
