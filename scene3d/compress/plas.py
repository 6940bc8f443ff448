"""Self-organising Gaussian grids (Morgenstern et al., "Compact 3D Scene Representation via
Self-Organizing Gaussian Grids", ECCV 2024).

The Gaussians of a model are laid out on a 2D grid so that neighbouring cells hold similar
Gaussians; every attribute then becomes a smooth image that an ordinary image codec compresses
well. Two pieces:

* :func:`sort_into_grid` finds the layout with Parallel Linear Assignment Sorting (PLAS). Starting
  from a random layout, it works through a coarse-to-fine sequence of radii. At each radius the grid
  is box-filtered into a *target* (what each cell's neighbourhood looks like), then the grid is cut
  into blocks of about the radius; within every block the cells are dealt into random groups of
  four, and each group takes whichever of the 24 ways of permuting its four Gaussians brings them
  closest to the target at their cells. All groups are solved at once as a batch of tiny linear
  assignment problems; rounds repeat with fresh groups (and shifted blocks) until the distance to
  the target stops improving by more than ``improvement_break``, then the radius shrinks.
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
    if isinstance(params, Mapping):
        return params
    inner = getattr(params, "params", None)
    if isinstance(inner, Mapping):
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
    std = (xs - mean).pow(2).mean().sqrt()
    return (x - mean) / std if float(std) > 0 else x - mean


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
    c = torch.cumsum(x, dim=dim)
    c = torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c], dim=dim)
    i = torch.arange(n, device=x.device)
    hi = (i + r + 1).clamp_max(n)
    lo = (i - r).clamp_min(0)
    return c.index_select(dim, hi) - c.index_select(dim, lo)


def _box_mean(grid: Tensor, valid: Tensor, ry: int, rx: int) -> Tensor:
    """Mean of the valid cells of ``grid`` [H, W, D] in a (2ry+1) x (2rx+1) window around each cell."""
    m = valid.to(grid.dtype)[..., None]
    s = torch.cat([grid * m, m], dim=-1)
    s = _box_sum(_box_sum(s, ry, 0), rx, 1)
    return s[..., :-1] / s[..., -1:].clamp_min(1e-12)


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


def _radii(h: int, w: int, min_radius: float, decay: float) -> list[int]:
    out, r = [], max(h, w) / 2 - 1
    while r >= min_radius:
        if not out or int(r) != out[-1]:
            out.append(int(r))
        r *= decay
    if not out or out[-1] > min_radius:
        out.append(max(int(min_radius), 1))
    return out


def sort_into_grid(
    features: Tensor,
    shape: tuple[int, int] | None = None,
    seed: int = 0,
    improvement_break: float = 1e-4,
    min_block_size: int = 16,
    radius_decay: float = 0.95,
    min_radius: float = 1.0,
    max_rounds: int | None = None,
    verbose: bool = False,
) -> Tensor:
    """Lay the rows of ``features`` [N, D] out on a grid so that adjacent cells are similar.

    Returns ``order`` [H * W] int64 (row-major, on the device of ``features``): the index of the
    Gaussian in each cell, -1 for the empty cells (the last ``H * W - N``). ``shape`` defaults to
    :func:`grid_shape`. Deterministic for a ``seed`` on a given device.

    Effort: at each radius, rounds of group swaps continue while one round lowers the distance to
    the target by at least ``improvement_break`` (relative); larger values stop sooner (1e-3 is
    about 3x faster for a slightly rougher grid). ``max_rounds`` caps the total number of rounds;
    the cap is shared out over the radii so the fine radii still get their turn. Larger
    ``radius_decay`` (closer to 1) means more radii, slower and a little smoother.
    """
    t0 = time.perf_counter()
    x = torch.as_tensor(features).detach()
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
    order = torch.full((m,), -1, dtype=torch.long, device=dev)
    if n == 0:
        return order

    gen = torch.Generator(device=dev).manual_seed(int(seed))
    rng = np.random.default_rng(int(seed))
    start = torch.randperm(n, generator=gen, device=dev)
    order[:n] = start
    x = x - x.mean(0)
    grid = torch.zeros(m, d, device=dev)
    grid[:n] = x[start]
    valid = torch.zeros(m, dtype=torch.bool, device=dev)
    valid[:n] = True
    has_empty = m > n
    validf = valid.float()[:, None]
    perms, sel = _perms(dev)
    inv_perms = perms.argsort(1)
    group_base = torch.arange(m // 4 + 1, device=dev)[:, None] * 4

    radii = _radii(h, w, min_radius, radius_decay)
    rounds_left = max_rounds
    total_rounds = 0
    for level, r in enumerate(radii):
        by, bx = _block_dims(max(int(min_block_size), 2 * r + 2), h, w)
        if by * bx < 4:
            break
        nby, nbx = h // by, w // bx
        target = _box_mean(grid.view(h, w, d), valid.view(h, w), min(r, h - 1), min(r, w - 1)).reshape(m, d)
        dist = float(((grid - target).pow(2) * validf).sum())
        level_cap = None
        if rounds_left is not None:
            level_cap = max(1, rounds_left // (len(radii) - level))
        level_rounds = 0
        configs = 0
        while True:
            sy, sx = int(rng.integers(0, by)), int(rng.integers(0, bx))
            ys = (torch.arange(nby * by, device=dev) + sy) % h
            xs = (torch.arange(nbx * bx, device=dev) + sx) % w
            cells = (ys[:, None] * w + xs[None, :]).view(nby, by, nbx, bx).permute(0, 2, 1, 3).reshape(-1)
            # block-major working copies of the features, the target, the item ids and the cell
            # ids. Every round deals the cells of each block into new groups of 4 (consecutive
            # slots) by shuffling the slots within the blocks, the same shuffle for all blocks.
            nb, bb = nby * nbx, by * bx
            feat = grid.index_select(0, cells)
            targ = target.index_select(0, cells)
            item = order.index_select(0, cells)
            base = torch.arange(nb, device=dev)[:, None] * bb
            pending = None  # the last round's within-group moves, applied with the next shuffle
            improved = False
            while level_cap is None or level_rounds < level_cap:
                shuffle = (base + torch.randperm(bb, generator=gen, device=dev)).reshape(-1)
                moved = shuffle if pending is None else pending.index_select(0, shuffle)
                feat = feat.index_select(0, moved)
                item = item.index_select(0, moved)
                targ = targ.index_select(0, shuffle)
                cells = cells.index_select(0, shuffle)
                scores = torch.bmm(feat.view(-1, 4, d), targ.view(-1, 4, d).transpose(1, 2)).reshape(-1, 16) @ sel
                best_score, best = scores.max(1)  # [G]
                if has_empty:  # groups holding an empty cell stay as they are
                    full = valid.index_select(0, cells).view(-1, 4).all(1)
                    best = torch.where(full, best, torch.zeros_like(best))
                    best_score = torch.where(full, best_score, scores[:, 0])
                # squared distance drop = 2 * (gain in the matched dot products)
                gain = 2.0 * float((best_score - scores[:, 0]).sum())
                # slot j of group g receives the item from slot inv_perms[best[g], j]
                pending = (inv_perms[best] + group_base[: best.shape[0]]).reshape(-1)
                level_rounds += 1
                rel = gain / dist if dist > 0 else 0.0
                dist -= gain
                if rel < improvement_break:
                    break
                improved = True
            if pending is not None:
                feat = feat.index_select(0, pending)
                item = item.index_select(0, pending)
            grid.index_copy_(0, cells, feat)
            order.index_copy_(0, cells, item)
            configs += 1
            if (not improved and configs >= 4) or (level_cap is not None and level_rounds >= level_cap):
                break
        total_rounds += level_rounds
        if rounds_left is not None:
            rounds_left = max(0, rounds_left - level_rounds)
        if verbose:
            print(f"radius {r:4d} block {by}x{bx}: {level_rounds:4d} rounds, dist {dist:.4g}")
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
    order = torch.as_tensor(order).reshape(-1).long()
    h, w = int(shape[0]), int(shape[1])
    total_w = sum(float(weights[k]) for k in names)
    out = None
    for k in names:
        a = attrs[k].float()
        order_k = order.to(a.device)
        valid_rows = torch.zeros(a.shape[0], dtype=torch.bool, device=a.device)
        valid_rows[order_k[order_k >= 0]] = True
        a = _standardise(a, valid_rows)
        grid, valid = to_grid(a, order_k, (h, w))
        img = grid.permute(2, 0, 1)  # [C, H, W]
        mask = valid.to(img.dtype)
        blurred = _masked_blur(img.detach() if detach_target else img, mask, sigma, kernel_size)
        if loss == "huber":
            per = F.huber_loss(img, blurred, reduction="none")
        else:
            per = (img - blurred).pow(2)
        term = (per * mask).sum() / (mask.sum() * img.shape[0]).clamp_min(1)
        term = term * (float(weights[k]) / total_w)
        out = term if out is None else out + term
    return out
