"""k-means clustering in torch, and 1D scalar codebooks, for quantising Gaussian attributes.

:func:`kmeans` ``(points [N, D], k, iterations, seed, weights) -> (centroids [k', D], labels [N])``:

* ``k' <= min(k, N)``; every returned centroid is the mean (accumulated in float64) of the points
  labelled with it, so none is empty or NaN; labels lie in ``[0, k')``. Seeded and deterministic.
* ``weights`` [N] (optional, >= 0) make it minimise the weighted squared error: centroids are
  weighted means, seeds are drawn in proportion to weight, clusters are shared out between coarse
  groups by weight, and emptied clusters are re-seeded at the worst weighted error. Used for the SOG
  higher-SH palette with each Gaussian's contribution to the training images as its weight
  (sensitivity-aware clustering, as in Niedermayr et al., CVPR 2024): the palette then spends its
  entries on the Gaussians that show. A tiny floor (1e-6 of the mean weight) keeps points of zero
  weight from leaving a centroid undefined.
* Lloyd's algorithm with a fixed number of iterations. Assignment is chunked: a block of points at a
  time against all centroids, with distances ``|c|^2 - 2 x.c`` from one matrix product (``|x|^2`` is
  constant per point), blocks bounded to ~64 MB, so memory stays at the points plus one block.
* Small problems (``N * k <= FLAT_LIMIT`` = 4M distance evaluations per iteration): plain Lloyd,
  initialised by k-means++ (on a subsample) for ``k <= 1024`` and by distinct random points above.
  An emptied cluster is re-seeded at the point worst served by its centroid.
* Large problems (the 64k-entry SH palette of 200k+ Gaussians, where exact Lloyd evaluates N * k
  distances per iteration, over a minute each on two CPU cores): two levels. ``ceil(sqrt(k))``
  coarse clusters; inside each, fine clusters in proportion to its size (seeded by k-means++ where a
  coarse cluster gets at most 32, by random points where it gets more); then ``refine`` Lloyd passes
  in which every point searches the fine centroids of its ``probe`` nearest coarse clusters. The
  cost per pass is about ``probe * N * sqrt(k)`` distances. Its squared error is within ~1% of
  exact Lloyd's when N >> k, ~9% above it when k ~ N (an 8192-entry palette for 10k Gaussians
  of random SH; tests/test_sog.py asserts 10% on a clustered case). Measured: 200k x 45 into 64k
  clusters, 10 iterations, ~12 s and ~0.5 GB peak on two shared CPU cores (exact Lloyd: over a
  minute per iteration).

:func:`fit_codebook` fits a 1D codebook (256 levels by default, ascending, float32) to a value
distribution: the least-error partition (dynamic programming) of up to 1024 runs of the sorted
values, cut at equal counts and equal widths and weighted by count ** 0.5 so that sparse tails keep
levels, then a few weighted Lloyd steps. When the data have no more distinct values than levels,
the codebook holds them exactly.
:func:`quantize_to_codebook` gives each value its nearest level; :func:`codebook_error` the largest
absolute error of doing so.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

FLAT_LIMIT = 1 << 22
_BLOCK_BYTES = 64 << 20
_KMEANSPP_MAX_K = 1024
_KMEANSPP_SAMPLES_PER_CLUSTER = 32
_GROUP_KMEANSPP_MAX_K = 32


# ---------------------------------------------------------------------------------------------
# k-means


def kmeans(
    points: Tensor,
    k: int,
    iterations: int = 10,
    seed: int = 0,
    *,
    probe: int = 3,
    refine: int = 2,
    flat_limit: int = FLAT_LIMIT,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Cluster ``points`` [N, D] into at most ``k`` clusters.

    Args:
        points: [N, D] float tensor (any device; the work runs there). Must be finite.
        k: the most clusters wanted (>= 1).
        iterations: Lloyd iterations (assignment + mean update) at each level, >= 1.
        seed: seeds the initialisation and the re-seeding of emptied clusters.
        probe: coarse clusters each point searches during the two-level refinement.
        refine: global refinement passes of the two-level path.
        flat_limit: ``N * k`` above which the two-level path is used.
        weights: optional [N] non-negative finite weights of the points (see the module docstring).

    Returns:
        ``(centroids [k', D] float32, labels [N] int64)``; with ``N <= k`` every point is its own
        centroid.
    """
    if points.ndim != 2:
        raise ValueError(f"points must be [N, D], got {list(points.shape)}")
    if k < 1 or iterations < 1:
        raise ValueError(f"need k >= 1 and iterations >= 1, got k={k}, iterations={iterations}")
    x = points.detach().to(torch.float32).contiguous()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("points have NaN or Inf values")
    n = x.shape[0]
    w = None
    if weights is not None:
        w = torch.as_tensor(weights).detach().to(device=x.device, dtype=torch.float64).reshape(-1)
        if w.shape[0] != n or not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError(f"weights must be [{n}] finite and >= 0")
        mean = float(w.mean()) if n else 0.0
        w = w + 1e-6 * mean if mean > 0 else torch.ones_like(w)
    if n <= k:
        return x.clone(), torch.arange(n, device=x.device)
    gen = torch.Generator().manual_seed(int(seed))
    if n * k <= flat_limit:
        with _single_thread(x.device):
            return _flat(x, k, iterations, gen, w)
    return _two_level(x, k, iterations, gen, probe=max(1, probe), refine=max(0, refine), w=w)


def _nearest(x: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    """(squared distance, index) of the nearest row of ``c`` for every row of ``x``, in blocks."""
    n, k = x.shape[0], c.shape[0]
    c_sq = (c * c).sum(1)
    rows = max(1, _BLOCK_BYTES // (4 * k))
    dist = torch.empty(n, dtype=x.dtype, device=x.device)
    labels = torch.empty(n, dtype=torch.long, device=x.device)
    ct = c.t()
    for s in range(0, n, rows):
        xb = x[s : s + rows]
        d = torch.addmm(c_sq, xb, ct, alpha=-2.0)
        v, i = d.min(1)
        dist[s : s + rows] = v + (xb * xb).sum(1)
        labels[s : s + rows] = i
    return dist.clamp_min_(0.0), labels


def _means(x: Tensor, labels: Tensor, k: int, w: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(float64 (weighted) means where nonempty, counts) of the points in each of ``k`` clusters."""
    sums = torch.zeros(k, x.shape[1], dtype=torch.float64, device=x.device)
    counts = torch.bincount(labels, minlength=k)
    if w is None:
        sums.index_add_(0, labels, x.to(torch.float64))
        return sums / counts.clamp_min(1).unsqueeze(1).to(torch.float64), counts
    sums.index_add_(0, labels, x.to(torch.float64) * w.unsqueeze(1))
    total = torch.zeros(k, dtype=torch.float64, device=x.device).index_add_(0, labels, w)
    return sums / torch.where(total > 0, total, 1.0).unsqueeze(1), counts


def _randperm(n: int, gen: torch.Generator, device) -> Tensor:
    return torch.randperm(n, generator=gen).to(device)


def _draw(n: int, m: int, gen: torch.Generator, device, w: Tensor | None = None) -> Tensor:
    """``m`` distinct indices of ``n`` points: uniformly, or in proportion to ``w``."""
    if w is None:
        return _randperm(n, gen, device)[:m]
    # without replacement in proportion to w: the m largest log(w) + Gumbel noise (any n, unlike
    # torch.multinomial's 2^24 categories)
    u = torch.rand(n, generator=gen, dtype=torch.float64).clamp_(1e-300, 1.0)
    keys = torch.log(w.detach().cpu().to(torch.float64)) - torch.log(-torch.log(u))
    return torch.topk(keys, min(m, n)).indices.to(device)


def _kmeanspp(x: Tensor, k: int, gen: torch.Generator, w: Tensor | None = None) -> Tensor:
    """k-means++ seeds (fewer than ``k`` when the points have fewer distinct values); with weights,
    each next seed is drawn in proportion to weight times squared distance.

    Sequential by nature, so it runs in numpy on the CPU, where a step costs microseconds."""
    pts = x.detach().cpu().numpy().astype(np.float64)
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=gen)))
    n = pts.shape[0]
    wn = None if w is None else w.detach().cpu().numpy()
    if wn is None:
        chosen = [int(rng.integers(n))]
    else:  # the first seed in proportion to weight
        chosen = [min(int(np.searchsorted(np.cumsum(wn), rng.random() * wn.sum(), side="right")), n - 1)]
    diff = pts - pts[chosen[0]]
    d2 = np.einsum("ij,ij->i", diff, diff)
    for _ in range(1, k):
        cum = np.cumsum(d2 if wn is None else d2 * wn)
        if not cum[-1] > 0.0:
            break
        i = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), n - 1)
        chosen.append(i)
        diff = pts - pts[i]
        np.minimum(d2, np.einsum("ij,ij->i", diff, diff), out=d2)
    return x[torch.tensor(chosen, device=x.device)].clone()


def _init(x: Tensor, k: int, gen: torch.Generator, w: Tensor | None = None) -> Tensor:
    n = x.shape[0]
    if k <= _KMEANSPP_MAX_K:
        if n > _KMEANSPP_SAMPLES_PER_CLUSTER * k:  # a sample, drawn by weight: k-means++ on it unweighted
            return _kmeanspp(x[_draw(n, _KMEANSPP_SAMPLES_PER_CLUSTER * k, gen, x.device, w)], k, gen)
        return _kmeanspp(x, k, gen, w)
    return x[_draw(n, k, gen, x.device, w)].clone()


def _compact(c: Tensor, labels: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Drop clusters nobody is labelled with and renumber the labels."""
    keep = counts > 0
    if bool(keep.all()):
        return c.to(torch.float32), labels
    remap = torch.cumsum(keep.to(torch.long), 0) - 1
    return c[keep].to(torch.float32), remap[labels]


def _lloyd(x: Tensor, c: Tensor, iterations: int, gen: torch.Generator, w: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``iterations`` Lloyd steps from centroids ``c``; returns compacted (centroids, labels)."""
    k = c.shape[0]
    for it in range(iterations):
        d2, labels = _nearest(x, c)
        means, counts = _means(x, labels, k, w)
        c_new = torch.where((counts > 0).unsqueeze(1), means.to(torch.float32), c)
        if it == iterations - 1:
            return _compact(means, labels, counts)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():
            # re-seed at the points farthest from their centroid (if they are not already exact)
            if w is not None:
                d2 = d2 * w.to(d2.dtype)
            far = torch.topk(d2, min(int(empty.numel()), x.shape[0])).indices
            far = far[d2[far] > 0]
            m = int(far.numel())
            if m:
                c_new[empty[:m]] = x[far]
        c = c_new
    raise AssertionError("unreachable")


def _flat(x: Tensor, k: int, iterations: int, gen: torch.Generator, w: Tensor | None = None) -> tuple[Tensor, Tensor]:
    return _lloyd(x, _init(x, k, gen, w), iterations, gen, w)


def _allot(counts: np.ndarray, k: int, mass: np.ndarray | None = None) -> np.ndarray:
    """Split ``k`` clusters over groups of ``counts`` points, in proportion to ``mass`` (default the
    counts): >= 1 per nonempty group, <= its size."""
    mass = counts if mass is None else mass
    quota = k * mass / mass.sum()
    alloc = np.clip(np.floor(quota), 1, counts).astype(np.int64)
    alloc[counts == 0] = 0
    while alloc.sum() < k:
        room = alloc < counts
        residual = np.where(room, quota - alloc, -np.inf)
        take = np.argsort(-residual, kind="stable")[: int(min(k - alloc.sum(), room.sum()))]
        if take.size == 0:
            break
        alloc[take] += 1
    while alloc.sum() > k:
        spare = alloc > 1
        excess = np.where(spare, alloc - quota, -np.inf)
        take = np.argsort(-excess, kind="stable")[: int(min(alloc.sum() - k, spare.sum()))]
        if take.size == 0:
            break
        alloc[take] -= 1
    return alloc


@contextmanager
def _single_thread(device):
    """Run a loop of many small CPU ops on one thread: waking a second OpenMP thread for every
    tiny op costs more than it saves, and on a busy machine it can cost milliseconds each."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _segments(keys: Tensor, k: int) -> tuple[Tensor, np.ndarray]:
    """(stable order grouping ``keys`` by value, bounds: group g is order[bounds[g]:bounds[g+1]])."""
    order = torch.argsort(keys, stable=True)
    bounds = np.concatenate([[0], np.cumsum(torch.bincount(keys, minlength=k).cpu().numpy())])
    return order, bounds


def _two_level(
    x: Tensor, k: int, iterations: int, gen: torch.Generator, probe: int, refine: int, w: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    n = x.shape[0]
    k1 = int(math.ceil(math.sqrt(k)))
    sample = x[_draw(n, min(n, 64 * k1), gen, x.device, w)]
    with _single_thread(x.device):
        coarse, _ = _flat(sample, k1, iterations, gen)
    k1 = coarse.shape[0]
    probe = min(probe, k1)
    near = _nearest_k(x, coarse, probe)  # [n, probe], nearest first
    group = near[:, 0].contiguous()
    mass = None if w is None else torch.zeros(k1, dtype=torch.float64, device=x.device).index_add_(0, group, w).cpu().numpy()
    alloc = _allot(torch.bincount(group, minlength=k1).cpu().numpy(), k, mass)
    members, bounds = _segments(group, k1)

    with _single_thread(x.device):
        # fine clusters inside each coarse cluster
        centroids, owner = [], []
        for g in np.flatnonzero(alloc):
            idx = members[bounds[g] : bounds[g + 1]]
            xg, wg = x[idx], None if w is None else w[idx]
            kg = int(alloc[g])
            if kg <= _GROUP_KMEANSPP_MAX_K:  # few clusters: likely separate modes, seed them well
                cg = _init(xg, kg, gen, wg)
            else:  # many: k-means++'s sequential steps would dominate the run time
                cg = xg[_draw(xg.shape[0], kg, gen, x.device, wg)].clone()
            cg, _ = _lloyd(xg, cg, iterations, gen, wg)
            centroids.append(cg)
            owner.append(torch.full((cg.shape[0],), int(g), dtype=torch.long, device=x.device))
        c = torch.cat(centroids)
        owner = torch.cat(owner)

        # refinement: every point searches the fine centroids of its `probe` nearest coarse clusters;
        # clusters left empty (and any the groups could not fill) are re-seeded at the worst-served
        # points between passes
        pair_point = torch.arange(n, device=x.device).repeat_interleave(probe)
        pairs, pair_bounds = _segments(near.flatten(), k1)
        for step in range(refine + 1):
            owned, owned_bounds = _segments(owner, k1)
            best = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
            labels = torch.zeros(n, dtype=torch.long, device=x.device)
            for g in range(k1):
                cids = owned[owned_bounds[g] : owned_bounds[g + 1]]
                pts = pair_point[pairs[pair_bounds[g] : pair_bounds[g + 1]]]
                if cids.numel() == 0 or pts.numel() == 0:
                    continue
                d, i = _nearest(x[pts], c[cids])
                better = d < best[pts]
                best[pts] = torch.where(better, d, best[pts])
                labels[pts] = torch.where(better, cids[i], labels[pts])
            means, counts = _means(x, labels, c.shape[0], w)
            c = torch.where((counts > 0).unsqueeze(1), means.to(torch.float32), c)
            empty = torch.nonzero(counts == 0).flatten()
            free = int(empty.numel()) + k - c.shape[0]
            if step < refine and free > 0:
                if w is not None:
                    best = best * w.to(best.dtype)
                far = torch.topk(best, min(free, n)).indices
                far = far[best[far] > 0]
                e = min(int(far.numel()), int(empty.numel()))
                c[empty[:e]] = x[far[:e]]
                owner[empty[:e]] = group[far[:e]]
                c = torch.cat([c, x[far[e:]]])
                owner = torch.cat([owner, group[far[e:]]])
    return _compact(means, labels, counts)


def _nearest_k(x: Tensor, c: Tensor, m: int) -> Tensor:
    """Indices [N, m] of the ``m`` nearest rows of ``c`` for every row of ``x``, in blocks."""
    n, k = x.shape[0], c.shape[0]
    c_sq = (c * c).sum(1)
    rows = max(1, _BLOCK_BYTES // (4 * k))
    out = torch.empty(n, m, dtype=torch.long, device=x.device)
    for s in range(0, n, rows):
        d = torch.addmm(c_sq, x[s : s + rows], c.t(), alpha=-2.0)
        out[s : s + rows] = torch.topk(d, m, dim=1, largest=False).indices
    return out


# ---------------------------------------------------------------------------------------------
# 1D codebooks


def fit_codebook(
    values, levels: int = 256, density_power: float = 0.5, atoms: int = 1024, max_span: int = 128,
    iterations: int = 5, max_samples: int = 1 << 20,
) -> np.ndarray:
    """A ``levels``-entry float32 codebook, ascending, fitted to ``values`` (any shape).

    Exact (the distinct values, the last repeated) when there are at most ``levels`` distinct
    values. Otherwise the sorted values (at most ``max_samples`` evenly spaced order statistics) are
    cut into at most ``atoms`` runs, at equal-count and at equal-width boundaries (so the dense
    middle and the sparse tails both get resolution); a run of ``c`` values weighs ``c **
    density_power`` in all (1: plain squared error, where sparse tails get few levels; 0: every run
    counts alike). Dynamic programming finds the partition of the runs into ``levels`` groups (of at
    most ``max_span`` runs) of least weighted squared error (within-run spread included), each
    level is its group's
    weighted mean, and ``iterations`` weighted Lloyd steps on the values then refine the boundaries.
    """
    v = np.asarray(values.detach().cpu().numpy() if isinstance(values, Tensor) else values, np.float64).ravel()
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    if v.size == 0:
        return np.zeros(levels, np.float32)
    if not np.isfinite(v).all():
        raise ValueError("values have NaN or Inf entries")
    v = np.sort(v)
    distinct = np.unique(v.astype(np.float32)).astype(np.float64)
    if distinct.size <= levels:
        return _pad(distinct, levels)
    if v.size > max_samples:
        v = v[np.linspace(0, v.size - 1, max_samples).round().astype(np.int64)]
    n = v.size
    centre, spread = float(np.median(v)), float(v[-1] - v[0])
    x = (v - centre) / spread  # well scaled for the prefix sums below

    # runs of the sorted values: equal-count and equal-width cuts
    half = max(1, atoms // 2)
    cuts = np.concatenate([
        np.round(np.arange(half + 1) * (n / half)).astype(np.int64),
        np.searchsorted(x, x[0] + np.arange(1, half) / half * (x[-1] - x[0]), side="left"),
    ])  # fmt: skip
    cuts = np.unique(np.clip(cuts, 0, n))
    starts, counts = cuts[:-1], np.diff(cuts)
    starts, counts = starts[counts > 0], counts[counts > 0]
    per_value = counts.astype(np.float64) ** (density_power - 1.0)
    w = counts * per_value
    wx = np.add.reduceat(x, starts) * per_value
    wxx = np.add.reduceat(x * x, starts) * per_value
    W, WX, WXX = (np.concatenate([[0.0], np.cumsum(a)]) for a in (w, wx, wxx))

    # dynamic programming over groups of at most `span` consecutive runs: band[j, d] is the
    # weighted squared error of runs j - d..j around their weighted mean (inf where j - d < 0)
    h = counts.size
    span = min(h, max(max_span, 2 * math.ceil(h / min(levels, h))))  # wide enough for a solution
    j_idx, d_idx = np.arange(h)[:, None], np.arange(span)[None, :]
    a_idx = j_idx - d_idx
    valid = a_idx >= 0
    a_safe = np.where(valid, a_idx, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        sw = W[j_idx + 1] - W[a_safe]
        sx = WX[j_idx + 1] - WX[a_safe]
        band = np.where(valid, np.maximum(WXX[j_idx + 1] - WXX[a_safe] - sx * sx / sw, 0.0), np.inf)
    prev = a_idx - 1  # the last run of the groups before
    prev_ok = prev >= 0
    prev_safe = np.where(prev_ok, prev, 0)
    band_after = np.where(prev_ok, band, np.inf)
    k = min(levels, h)
    best = np.where(np.arange(h) < span, band[np.arange(h), np.minimum(np.arange(h), span - 1)], np.inf)
    rows = np.arange(h)
    choice = np.zeros((k, h), np.int64)  # choice[m][j]: size - 1 of the last group ending at run j
    choice[0] = np.arange(h)
    for m in range(1, k):
        total = best[prev_safe] + band_after
        choice[m] = total.argmin(1)
        best = total[rows, choice[m]]
    groups = []
    j = h - 1
    for m in range(k - 1, -1, -1):
        a = j - int(choice[m][j])
        groups.append((a, j))
        j = a - 1
    c = np.array([(WX[b + 1] - WX[a]) / (W[b + 1] - W[a]) for a, b in reversed(groups)])

    weight = np.repeat(per_value, counts)
    wv = weight * x
    for _ in range(iterations):
        labels = np.searchsorted((c[1:] + c[:-1]) * 0.5, x, side="left")
        mass = np.bincount(labels, weights=weight, minlength=c.size)
        sums = np.bincount(labels, weights=wv, minlength=c.size)
        c = np.sort(np.where(mass > 0, sums / np.where(mass > 0, mass, 1.0), c))
    c = c * spread + centre
    return _pad(np.unique(c.astype(np.float32)).astype(np.float64), levels)


def _pad(c: np.ndarray, levels: int) -> np.ndarray:
    out = np.empty(levels, np.float32)
    out[: c.size] = c[:levels]
    out[c.size :] = c[-1]
    return out


def quantize_to_codebook(values, codebook) -> np.ndarray:
    """Index (int64, same shape as ``values``) of the nearest entry of an ascending ``codebook``."""
    v = np.asarray(values.detach().cpu().numpy() if isinstance(values, Tensor) else values, np.float64)
    c = np.asarray(codebook, np.float32).astype(np.float64)
    if c.size == 0 or np.any(np.diff(c) < 0):
        raise ValueError("codebook must be nonempty and ascending")
    return np.searchsorted((c[1:] + c[:-1]) * 0.5, v, side="left").astype(np.int64)


def codebook_error(values, codebook) -> float:
    """Largest ``|value - nearest codebook entry|`` over ``values``."""
    v = np.asarray(values.detach().cpu().numpy() if isinstance(values, Tensor) else values, np.float64)
    if v.size == 0:
        return 0.0
    c = np.asarray(codebook, np.float32).astype(np.float64)
    return float(np.abs(c[quantize_to_codebook(v, c)] - v).max())
