"""Self-organising Gaussian grids (Morgenstern et al., "Compact 3D Scene Representation via
Self-Organizing Gaussian Grids", ECCV 2024).

The Gaussians of a model are laid out on a 2D grid so that neighbouring cells hold similar
Gaussians; every attribute then becomes a smooth image that an ordinary image codec compresses
well. Two pieces:

* :func:`sort_into_grid` finds the layout with Parallel Linear Assignment Sorting (PLAS). Starting
  from a random layout, it works through a coarse-to-fine sequence of blur radii. At each radius
  the grid is box-filtered into a *target* (what each cell's neighbourhood looks like), then cut
  into blocks of about twice the radius (at least 16x16, placed at a random offset). A *round*
  deals the cells of every block into random groups of four, and each group takes whichever of
  the 24 ways of permuting its four Gaussians brings them closest to the target at their cells:
  all groups at once, as one batch of tiny linear assignment problems solved by trying every
  permutation. Rounds repeat while they still help, blocks are re-placed a few times per radius,
  then the radius shrinks. The run time is proportional to the number of rounds, and so, mostly,
  is the quality; spending rounds at the finest radii (many passes at radius 1-3, each with a
  fresh target) gives the smoothest grids for the time.
* :func:`grid_smoothness_loss` is the paper's neighbour loss, a differentiable penalty on the
  difference between the attribute grids and a blurred copy of them; adding it to the training loss
  keeps a sorted model sortable, so re-sorting moves little and the images stay smooth.

Grids are row-major with ``W`` a multiple of 4 (the width PlayCanvas SOG uses). When the grid has
more cells than there are Gaussians, the empty cells are the last ones in row-major order, so the
first ``N`` cells are exactly the Gaussians (what SOG's ``count`` expects); the empty cells never
move and are ignored by the target, the distance and the loss.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SOG_WEIGHTS: dict[str, float] = {"means": 1.0, "sh0": 1.0, "scales": 1.0, "quats": 1.0, "opacities": 1.0}
"""Per-attribute weights of the sort features (after each attribute is standardised). The paper's
best sort used positions, DC colour and scales with equal weights; rotations and opacity are
included here too (at the same weight) since their images are stored as well."""

LOSS_WEIGHTS: dict[str, float] = {"means": 1.0, "sh0": 1.0, "scales": 1.0, "quats": 1.0, "opacities": 1.0}
"""Per-attribute weights of :func:`grid_smoothness_loss` (normalised to sum to 1)."""


# ---------------------------------------------------------------------------------------- layout
def grid_shape(n: int) -> tuple[int, int]:
    """A near-square grid ``(H, W)`` with ``H * W >= n`` and ``W`` a multiple of 4 (SOG's width:
    ``W = 4 * ceil(sqrt(n) / 4)``, ``H = ceil(n / W)``; SOG pads the height to a multiple of 4 too,
    which only appends empty rows)."""
    n = int(n)
    if n < 0:
        raise ValueError(f"grid_shape: n must be >= 0, got {n}")
    if n == 0:
        return (0, 0)
    w = 4 * math.ceil(math.sqrt(n) / 4)
    return (math.ceil(n / w), w)


def to_grid(values: Tensor, order: Tensor, shape: tuple[int, int], fill: float = 0.0) -> tuple[Tensor, Tensor]:
    """``values`` [N, ...] laid out on the grid by ``order``: returns ``(grid [H, W, ...], valid
    [H, W])``, empty cells (``order == -1``) filled with ``fill``. Differentiable in ``values``."""
    h, w = shape
    order = torch.as_tensor(order, device=values.device).reshape(-1).long()
    if order.numel() != h * w:
        raise ValueError(f"to_grid: order has {order.numel()} cells, shape {shape} has {h * w}")
    valid = order >= 0
    grid = values[order.clamp_min(0)]
    if not bool(valid.all()):
        mask = valid.reshape(-1, *([1] * (values.dim() - 1)))
        grid = torch.where(mask, grid, torch.full_like(grid, fill))
    return grid.reshape(h, w, *values.shape[1:]), valid.reshape(h, w)


def grid_neighbour_distance(grid, valid=None) -> float:
    """Mean L2 distance between horizontally and vertically adjacent cells of ``grid`` [H, W, D]
    (or [H, W]); pairs touching a cell where ``valid`` [H, W] is False are skipped. Lower is
    smoother."""
    g = torch.as_tensor(grid).detach().double()
    if g.dim() == 2:
        g = g[..., None]
    if g.dim() != 3:
        raise ValueError(f"grid_neighbour_distance: grid must be [H, W, D], got {tuple(g.shape)}")
    dx = (g[:, 1:] - g[:, :-1]).norm(dim=-1)
    dy = (g[1:] - g[:-1]).norm(dim=-1)
    if valid is None:
        d = torch.cat([dx.reshape(-1), dy.reshape(-1)])
    else:
        v = torch.as_tensor(valid, device=g.device).bool()
        d = torch.cat([dx[v[:, 1:] & v[:, :-1]], dy[v[1:] & v[:-1]]])
    return float(d.mean()) if d.numel() else 0.0


# ---------------------------------------------------------------------------------------- features
def _param_dict(params) -> Mapping[str, Tensor]:
    if isinstance(params, (Mapping, torch.nn.ParameterDict)):
        return params
    inner = getattr(params, "params", None)
    if isinstance(inner, (Mapping, torch.nn.ParameterDict)):
        return inner
    raise TypeError("expected a dict of Gaussian parameters (or a model with .params)")


def _attributes(params, names) -> dict[str, Tensor]:
    """The sortable attributes [N, c] in the form the paper sorts by: positions, DC colour, log
    scales, unit quaternions (sign chosen so w >= 0: q and -q are the same rotation) and opacity
    in [0, 1]. Differentiable."""
    p = _param_dict(params)
    out = {}
    for name in names:
        if name == "means":
            out[name] = p["means"].reshape(-1, 3)
        elif name == "sh0":
            out[name] = p["sh0"].reshape(p["sh0"].shape[0], -1)
        elif name == "shN":
            out[name] = p["shN"].reshape(p["shN"].shape[0], -1)
        elif name == "scales":
            out[name] = p["scales"].reshape(-1, 3)
        elif name == "quats":
            q = F.normalize(p["quats"].reshape(-1, 4), dim=-1)
            out[name] = torch.where(q[:, :1] < 0, -q, q)
        elif name in ("opacities", "opacity"):
            out[name] = torch.sigmoid(p["opacities"].reshape(-1, 1))
        else:
            raise ValueError(f"unknown attribute {name!r}")
    return out


def _standardise(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Centred per channel and divided by one (detached) scale for the whole attribute, so the
    relative geometry of multi-channel attributes (e.g. positions) is kept."""
    xs = x.detach() if mask is None else x.detach()[mask]
    if xs.shape[0] == 0:
        return x
    mean = xs.mean(0)
    std = float((xs - mean).pow(2).mean().sqrt())
    if std <= 1e-7 * max(1.0, float(mean.abs().max())):  # constant (up to rounding): just centred
        return x - mean
    return (x - mean) / std


def sog_features(params, weights: Mapping[str, float] | None = None) -> Tensor:
    """The per-Gaussian feature vector [N, D] to sort by: each attribute of ``weights`` (default
    :data:`SOG_WEIGHTS`: means 3, sh0 3, log scales 3, unit quats 4, sigmoid opacity 1 = 14 dims)
    standardised and multiplied by its weight. Detached."""
    weights = SOG_WEIGHTS if weights is None else weights
    names = [k for k, w in weights.items() if w > 0]
    attrs = _attributes(params, names)
    with torch.no_grad():
        return torch.cat([_standardise(attrs[k].float()) * float(weights[k]) for k in names], dim=1)


# ---------------------------------------------------------------------------------------- filters
def _box_sum(x: Tensor, r: int, dim: int) -> Tensor:
    """Sum of ``x`` over the window [i - r, i + r] along ``dim``, clipped to the array."""
    n = x.shape[dim]
    r = min(int(r), n - 1)
    if r <= 0:
        return x
    if r <= 3:  # a few shifted adds beat a cumulative sum
        out = x.clone()
        for k in range(1, r + 1):
            out.narrow(dim, k, n - k).add_(x.narrow(dim, 0, n - k))
            out.narrow(dim, 0, n - k).add_(x.narrow(dim, k, n - k))
        return out
    c = torch.cumsum(x, dim=dim)
    out = torch.empty_like(x)
    out.narrow(dim, 0, n - r).copy_(c.narrow(dim, r, n - r))  # upper end i + r
    out.narrow(dim, n - r, r).copy_(c.narrow(dim, n - 1, 1).expand_as(out.narrow(dim, n - r, r)))  # clipped
    if n - r - 1 > 0:
        out.narrow(dim, r + 1, n - r - 1).sub_(c.narrow(dim, 0, n - r - 1))  # minus below i - r
    return out


def _box_mean(grid: Tensor, valid: Tensor | None, ry: int, rx: int) -> Tensor:
    """Mean of the valid cells of ``grid`` [H, W, D] in a (2ry+1) x (2rx+1) window around each
    cell, the window clipped to the grid. ``valid`` [H, W] (None: all cells) marks the cells that
    count; ``grid`` must already be zero at the others."""
    h, w, _ = grid.shape
    if valid is None:
        cy = _box_sum(torch.ones(h, device=grid.device, dtype=grid.dtype), ry, 0)
        cx = _box_sum(torch.ones(w, device=grid.device, dtype=grid.dtype), rx, 0)
        count = (cy[:, None] * cx[None, :])[..., None]
    else:
        count = _box_sum(_box_sum(valid.to(grid.dtype), ry, 0), rx, 1)[..., None].clamp_min(1e-12)
    return _box_sum(_box_sum(grid, ry, 0), rx, 1) / count


def _gaussian_kernel(sigma: float, size: int, device, dtype) -> Tensor:
    r = size // 2
    t = torch.arange(-r, r + 1, device=device, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _masked_blur(img: Tensor, mask: Tensor, sigma: float, size: int) -> Tensor:
    """Separable Gaussian blur of ``img`` [C, H, W] over the cells where ``mask`` [H, W] is 1,
    renormalised by the blurred mask (so empty cells and the outside contribute nothing)."""
    c, h, w = img.shape
    k = _gaussian_kernel(sigma, size, img.device, img.dtype)
    r = size // 2
    x = torch.cat([img * mask, mask[None]], 0)[None]  # [1, C+1, H, W]
    x = F.conv2d(F.pad(x, (r, r, 0, 0)), k.view(1, 1, 1, -1).expand(c + 1, 1, 1, -1), groups=c + 1)
    x = F.conv2d(F.pad(x, (0, 0, r, r)), k.view(1, 1, -1, 1).expand(c + 1, 1, -1, 1), groups=c + 1)
    x = x[0]
    return x[:c] / x[c:].clamp_min(1e-12)


# ---------------------------------------------------------------------------------------- sorting
_PERMS_CACHE: dict = {}


def _perms(device) -> tuple[Tensor, Tensor]:
    """The 24 permutations of 4 slots ([24, 4], identity first) and a [16, 24] matrix whose column
    p sums a flattened 4x4 score matrix along permutation p."""
    key = str(device)
    if key not in _PERMS_CACHE:
        perms = torch.tensor(list(itertools.permutations(range(4))), dtype=torch.long)
        sel = torch.zeros(4, 4, 24)
        for p, perm in enumerate(perms.tolist()):
            for i, j in enumerate(perm):
                sel[i, j, p] = 1.0
        _PERMS_CACHE[key] = (perms.to(device), sel.reshape(16, 24).to(device))
    return _PERMS_CACHE[key]


def _block_dims(b: int, h: int, w: int) -> tuple[int, int]:
    """Block height and width (about ``b``, at most the grid) holding a multiple of 4 cells."""
    by = min(b, h) // 2 * 2
    bx = min(b, w) // 2 * 2
    if by == 0:  # a single row: blocks 1 x (multiple of 4)
        return (1, min(b, w) // 4 * 4)
    if bx == 0:
        return (min(b, h) // 4 * 4, 1)
    return (by, bx)


def _radii(h: int, w: int, min_radius: float, decay: float, fine_radius: float, fine_decay: float) -> list[int]:
    """Blur radii from half the grid down to ``min_radius``: shrinking by ``decay`` per step, and
    by the gentler ``fine_decay`` once at or below ``fine_radius``. Radii are truncated to
    integers and repeats are kept, so each small radius is visited several times, each time with a
    freshly blurred target: that is where most of the final smoothness comes from (for the same
    number of rounds, spending them at the fine radii gives smoother grids)."""
    out, r = [], max(h, w) / 2 - 1
    while r >= min_radius:
        out.append(int(r))
        r *= fine_decay if r <= fine_radius else decay
    return out or [max(int(min_radius), 1)]


def _block_cells(h: int, w: int, by: int, bx: int, sy: int, sx: int, device) -> tuple[Tensor, Tensor]:
    """The cells of the grid cut into by x bx blocks (offset by sy, sx, wrapping around): block
    after block, each block's cells row-major; and the cells no block covers this time."""
    nby, nbx = h // by, w // bx
    ys = (torch.arange(nby * by, device=device) + sy) % h
    xs = (torch.arange(nbx * bx, device=device) + sx) % w
    blocks = (ys[:, None] * w + xs[None, :]).view(nby, by, nbx, bx).permute(0, 2, 1, 3).reshape(-1)
    ly = (torch.arange(nby * by, h, device=device) + sy) % h  # rows left out
    lx = (torch.arange(nbx * bx, w, device=device) + sx) % w  # columns left out
    rest = torch.cat([(ly[:, None] * w + torch.arange(w, device=device)).reshape(-1), (ys[:, None] * w + lx).reshape(-1)])
    return blocks, rest


def sort_into_grid(
    features: Tensor,
    shape: tuple[int, int] | None = None,
    seed: int = 0,
    improvement_break: float = 1e-2,
    configs_per_radius: int = 6,
    radius_decay: float = 0.9,
    fine_radius: float = 8.0,
    fine_radius_decay: float = 0.985,
    min_radius: float = 1.0,
    min_block_size: int = 16,
    max_rounds: int | None = None,
    num_threads: int | None = 1,
    verbose: bool = False,
) -> Tensor:
    """Lay the rows of ``features`` [N, D] out on a grid so that adjacent cells are similar.

    Returns ``order`` [H * W] int64 (row-major, on the device of ``features``): the index of the
    Gaussian in each cell, -1 for the empty cells (the last ``H * W - N``). ``shape`` defaults to
    :func:`grid_shape`. Deterministic for a ``seed`` on a given device.

    Effort (the run time is proportional to the number of rounds, each a pass over all cells):
    at each blur radius the blocks are placed ``configs_per_radius`` times at random offsets (more
    while that still helps); at each placement, rounds of group swaps repeat while one round lowers
    the distance to the target by at least ``improvement_break`` (relative). Radii shrink by
    ``radius_decay`` per step, by ``fine_radius_decay`` from ``fine_radius`` down. Finer settings
    (more configs, smaller break, decays closer to 1) give smoother grids for more time: about
    1000 rounds by default for 200k Gaussians, 20-40 s on one CPU core. ``max_rounds`` is a hard cap on the total number of rounds,
    shared out over the radii (thinned out if need be) so the fine radii still get their turn.

    On the CPU the sort runs on ``num_threads`` torch threads (restored afterwards; None: leave
    torch's setting). The default 1 is deliberate: a sort is ~10^4 short memory-bound operations,
    and waking the other threads for each costs more than they gain (measured 18x slower with 2
    threads on a busy 2-core machine).
    """
    x = torch.as_tensor(features).detach()
    if x.device.type != "cpu" or num_threads is None or num_threads == torch.get_num_threads():
        return _sort_into_grid(x, shape, seed, improvement_break, configs_per_radius, radius_decay, fine_radius,
                               fine_radius_decay, min_radius, min_block_size, max_rounds, verbose)
    before = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        return _sort_into_grid(x, shape, seed, improvement_break, configs_per_radius, radius_decay, fine_radius,
                               fine_radius_decay, min_radius, min_block_size, max_rounds, verbose)
    finally:
        torch.set_num_threads(before)


def _sort_into_grid(x, shape, seed, improvement_break, configs_per_radius, radius_decay, fine_radius,
                    fine_radius_decay, min_radius, min_block_size, max_rounds, verbose) -> Tensor:
    t0 = time.perf_counter()
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2:
        raise ValueError(f"sort_into_grid: features must be [N, D], got {tuple(x.shape)}")
    x = x.float()
    n, d = x.shape
    h, w = grid_shape(n) if shape is None else (int(shape[0]), int(shape[1]))
    m = h * w
    if m < n:
        raise ValueError(f"sort_into_grid: grid {h}x{w} has {m} cells for {n} Gaussians")
    dev = x.device
    if n == 0:
        return torch.full((m,), -1, dtype=torch.long, device=dev)

    gen = torch.Generator(device=dev).manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    perms, sel = _perms(dev)
    inv_perms = perms.argsort(1)  # slot j of a group receives the item from slot inv_perms[p, j]
    arange_m = torch.arange(m, device=dev)
    has_empty = m > n
    valid_cells = None
    if has_empty:
        valid_cells = (arange_m < n).view(h, w)

    # The state is a list of slots, each holding a cell id, the Gaussian in it (-1: empty) and its
    # features. Slots are rearranged freely (block by block, groups of 4 consecutive slots);
    # ``pending`` holds the last round's moves within groups, applied lazily by the next gather.
    start = torch.randperm(n, generator=gen, device=dev)
    item = torch.full((m,), -1, dtype=torch.long, device=dev)
    item[:n] = start
    feat = torch.zeros(m, d, device=dev)
    feat[:n] = x[start] - x.mean(0)
    cell = arange_m.clone()
    pending = arange_m.clone()
    pos = torch.empty(m, dtype=torch.long, device=dev)

    radii = _radii(h, w, min_radius, radius_decay, fine_radius, fine_radius_decay)
    if max_rounds is not None:
        if max_rounds < 1:
            raise ValueError(f"sort_into_grid: max_rounds must be >= 1, got {max_rounds}")
        if max_rounds < len(radii):  # fewer radii, spread over the same range
            radii = [radii[i] for i in np.linspace(0, len(radii) - 1, max_rounds).round().astype(int)]
    rounds_left = max_rounds
    total_rounds = 0
    for level, r in enumerate(radii):
        by, bx = _block_dims(max(int(min_block_size), 2 * r + 2), h, w)
        if by * bx < 4:
            break
        nbb = (h // by) * (w // bx) * by * bx  # slots inside blocks
        pos[cell] = arange_m  # the slot holding each cell
        grid = feat.index_select(0, pending.index_select(0, pos))  # features in cell order
        target = _box_mean(grid.view(h, w, d), valid_cells, min(r, h - 1), min(r, w - 1)).reshape(m, d)
        diff = grid - target
        if has_empty:
            diff[n:] = 0
        dist = float(diff.pow(2).sum())
        del grid, diff
        level_cap = None
        if rounds_left is not None:
            level_cap = max(1, rounds_left // (len(radii) - level))
        level_rounds = 0
        configs = 0
        while True:
            # new block placement: slot order becomes block-major (cells outside blocks at the end)
            blocks, rest = _block_cells(h, w, by, bx, int(rng.integers(0, by)), int(rng.integers(0, bx)), dev)
            pos[cell] = arange_m
            layout = pos.index_select(0, torch.cat([blocks, rest]))
            block_base = (torch.arange(nbb // (by * bx), device=dev) * (by * bx))[:, None]
            improved = False
            while level_cap is None or level_rounds < level_cap:
                # deal the cells of every block into new groups of 4: one shuffle for all blocks
                shuffle = (block_base + torch.randperm(by * bx, generator=gen, device=dev)).reshape(-1)
                if nbb < m:
                    shuffle = torch.cat([shuffle, arange_m[nbb:]])
                if layout is not None:
                    shuffle, layout = layout.index_select(0, shuffle), None
                src = pending.index_select(0, shuffle)
                feat = feat.index_select(0, src)
                item = item.index_select(0, src)
                cell = cell.index_select(0, shuffle)
                targ = target.index_select(0, cell[:nbb])
                scores = torch.bmm(feat[:nbb].view(-1, 4, d), targ.view(-1, 4, d).transpose(1, 2)).reshape(-1, 16) @ sel
                best_score, best = scores.max(1)  # [G] over the 24 permutations
                if has_empty:  # groups holding an empty cell stay as they are
                    full = (item[:nbb] >= 0).view(-1, 4).all(1)
                    best = torch.where(full, best, torch.zeros_like(best))
                    best_score = torch.where(full, best_score, scores[:, 0])
                # the squared distance drops by twice the gain in matched dot products
                gain = 2.0 * float((best_score - scores[:, 0]).sum())
                pending = (inv_perms[best] + arange_m[:nbb].view(-1, 4)[:, :1]).reshape(-1)
                if nbb < m:
                    pending = torch.cat([pending, arange_m[nbb:]])
                level_rounds += 1
                rel = gain / dist if dist > 0 else 0.0
                dist -= gain
                if rel < improvement_break:
                    break
                improved = True
            configs += 1
            if (not improved and configs >= configs_per_radius) or (level_cap is not None and level_rounds >= level_cap):
                break
        total_rounds += level_rounds
        if rounds_left is not None:
            rounds_left = max(0, rounds_left - level_rounds)
        if verbose:
            print(f"radius {r:4d} block {by}x{bx}: {configs:3d} configs {level_rounds:4d} rounds, dist {dist:.4g}, "
                  f"{time.perf_counter() - t0:.2f}s")
    order = torch.empty(m, dtype=torch.long, device=dev)
    order[cell] = item.index_select(0, pending)
    if verbose:
        print(f"sorted {n} x {d} into {h}x{w} in {time.perf_counter() - t0:.2f}s ({total_rounds} rounds)")
    return order


# ---------------------------------------------------------------------------------------- loss
def grid_smoothness_loss(
    params,
    order: Tensor,
    shape: tuple[int, int],
    weights: Mapping[str, float] | None = None,
    sigma: float = 3.0,
    kernel_size: int = 5,
    loss: str = "huber",
    detach_target: bool = True,
) -> Tensor:
    """The paper's neighbour loss: each attribute of ``weights`` (default :data:`LOSS_WEIGHTS`)
    laid out on the grid by ``order``, standardised (with detached statistics), compared with a
    Gaussian-blurred copy of itself (``kernel_size``, ``sigma``; empty cells excluded from blur and
    loss) by ``"huber"`` or ``"mse"``; the weighted mean over attributes. As in the paper the
    blurred copy is a constant target by default (``detach_target``), so the gradient pulls every
    cell towards its neighbourhood. Differentiable in ``params``."""
    weights = LOSS_WEIGHTS if weights is None else weights
    names = [k for k, w in weights.items() if w > 0]
    if not names:
        raise ValueError("grid_smoothness_loss: no attribute has a positive weight")
    if loss not in ("huber", "mse"):
        raise ValueError(f"grid_smoothness_loss: loss must be 'huber' or 'mse', got {loss!r}")
    attrs = _attributes(params, names)
    dev = attrs[names[0]].device
    order = torch.as_tensor(order).reshape(-1).long().to(dev)
    h, w = int(shape[0]), int(shape[1])
    in_grid = torch.zeros(attrs[names[0]].shape[0], dtype=torch.bool, device=dev)
    in_grid[order[order >= 0]] = True
    if bool(in_grid.all()):
        in_grid = None
    # all attributes as one stack of channels, each channel weighted so that every attribute's
    # term is the mean over its channels and the grid's cells
    total_w = sum(float(weights[k]) for k in names)
    chans, chan_w = [], []
    for k in names:
        a = _standardise(attrs[k].float(), in_grid)
        chans.append(a)
        chan_w += [float(weights[k]) / total_w / a.shape[1]] * a.shape[1]
    grid, valid = to_grid(torch.cat(chans, 1), order, (h, w))
    img = grid.permute(2, 0, 1)  # [C, H, W], zero at empty cells
    mask = valid.to(img.dtype)
    blurred = _masked_blur(img.detach() if detach_target else img, mask, sigma, kernel_size)
    if loss == "huber":
        per = F.huber_loss(img, blurred, reduction="none")
    else:
        per = (img - blurred).pow(2)
    per_chan = (per * mask).sum((1, 2)) / mask.sum().clamp_min(1)
    return (per_chan * torch.tensor(chan_w, device=dev, dtype=per_chan.dtype)).sum()
