"""Numba kernels of the CPU rasterizer: tile binning, forward blending, the hand-written backward,
and the per-Gaussian accumulation of a pixel-error map.

Layout. Gaussians arrive already projected, one packed float32 record per (camera, Gaussian):
``gdata[c, n] = (mx, my, a, b, c, opacity, log_threshold, y_extent)`` and the features to blend
``feats[c, n, :F]``. A pixel centre p = (j + 0.5, i + 0.5) sees Gaussian n with
``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy``, ``dx = mx - px``, ``dy = my - py``, and is reached iff
``0 <= sigma <= log_threshold`` (the same test as gsplat's ``opacity exp(-sigma) >= 1/255``, done
in exponent space so the PyTorch reference can make bit-identical decisions). Then
``alpha = min(0.999, opacity exp(-sigma))`` and front-to-back blending stops (exclusive) once the
transmittance would fall to 1e-4 or below.

Speed (see PERF-NOTES): 16x16 tiles processed in parallel (``prange``); per Gaussian, only the tile
rows its ellipse reaches, each row a branch-free loop over 16 pixels (one AVX-512 vector) with a
polynomial exp; rows whose pixels have all stopped are skipped, and a tile stops once all its pixels
have. float32 throughout: every constant is a float32 so nothing is promoted to float64.

Floating point. The kernels are compiled with fast-math flags that allow vectorisation but neither
reassociation nor FMA contraction (except inside :func:`fast_exp` and the sums of
``_pair_grads``/``_dot``, which decide nothing), so ``sigma`` is computed with exactly the operations (and
roundings) of the PyTorch reference and of the other kernels here: forward, backward and error
accumulation agree bit for bit on which Gaussian reaches which pixel.

Backward: the tile list is walked back to front; each pixel's transmittance is recovered from its
final value, ``T_i = T_{i+1} / (1 - alpha_i)`` (as 3DGS does). Per-Gaussian sums over a tile's
pixels are kept in 16 lanes and written to one slot per (tile, Gaussian) pair, then reduced in list
order, so results are deterministic whatever the thread schedule.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

TILE = 16
# Vectorisable without changing any rounding: no 'reassoc', no 'contract'.
FLAGS = {"nnan", "ninf", "nsz", "arcp"}

F32 = np.float32
ZERO = F32(0.0)
HALF = F32(0.5)
ONE = F32(1.0)
TWO = F32(2.0)
ALPHA_MAX = F32(0.999)
T_MIN = F32(1e-4)
EXP_FLOOR = F32(-80.0)
LOG2E = F32(1.4426950408889634)
LN2_HI = F32(0.693359375)
LN2_LO = F32(-2.12194440e-4)
# Cephes expf minimax polynomial of exp(r) - 1 - r on |r| <= ln(2)/2 (about 1 ulp).
P0 = F32(1.9875691500e-4)
P1 = F32(1.3981999507e-3)
P2 = F32(8.3334519073e-3)
P3 = F32(4.1665795894e-2)
P4 = F32(1.6666665459e-1)
P5 = F32(5.0000001201e-1)
# Row culling margin (pixels): rows are skipped only when clearly out of reach.
ROW_MARGIN = F32(0.01)


@intrinsic
def _bits_to_f32(typingctx, bits):
    """Reinterprets an int32 bit pattern as a float32 (vectorises to a no-op)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@njit(fastmath=FLAGS | {"contract"}, error_model="numpy")
def fast_exp(x):
    """exp(x) for float32 x <= 0 (clamped at -80), relative error about 2e-7, branch-free.

    Unlike the rest, compiled with FMA contraction (LLVM inlines it and keeps these per-instruction
    flags): only the value of alpha depends on it, never which pixels a Gaussian reaches."""
    x = max(x, EXP_FLOOR)
    n = np.floor(x * LOG2E + HALF)
    r = x - n * LN2_HI
    r = r - n * LN2_LO
    p = P0
    p = p * r + P1
    p = p * r + P2
    p = p * r + P3
    p = p * r + P4
    p = p * r + P5
    p = p * (r * r) + r + ONE
    scale = _bits_to_f32(np.int32((np.int32(n) + np.int32(127)) << np.int32(23)))
    return p * scale


@njit(cache=True, fastmath=FLAGS, error_model="numpy")
def fast_exp_array(x):
    """:func:`fast_exp` over a float32 array (for tests)."""
    out = np.empty_like(x)
    for i in range(x.size):
        out.flat[i] = fast_exp(x.flat[i])
    return out


@njit(inline="always")
def _tile_rect(mx, my, rx, ry, tiles_x, tiles_y):
    x0 = min(max(int(math.floor((mx - rx) / TILE)), 0), tiles_x)
    x1 = min(max(int(math.ceil((mx + rx) / TILE)), 0), tiles_x)
    y0 = min(max(int(math.floor((my - ry) / TILE)), 0), tiles_y)
    y1 = min(max(int(math.ceil((my + ry) / TILE)), 0), tiles_y)
    return x0, x1, y0, y1


@njit(parallel=True, cache=True, error_model="numpy")
def prepare(packed, radii_xy, tiles_x, tiles_y):
    """Packs the kernels' records and bins them into per-tile lists sorted front to back.

    Args:
        packed: [C, N, 8] float32 (mx, my, a, b, c, opacity, log_threshold, depth);
        radii_xy: [C, N, 2] int32 (0 = culled).
    Returns:
        gdata: [C, N, 8] float32 records (depth replaced by the y extent of the reachable ellipse,
            ``sqrt(2 log_threshold cov_yy)`` plus a small margin);
        offsets: [C * tiles_y * tiles_x + 1] int64, tile t's list is ids[offsets[t]:offsets[t+1]];
        ids: [n_pairs] int32 Gaussian indices (within their camera), each list sorted by depth
            (ties by index, as a stable sort).
    """
    C, N = packed.shape[0], packed.shape[1]
    n_tiles = tiles_x * tiles_y
    gdata = np.empty((C, N, 8), np.float32)
    counts = np.zeros((C, n_tiles), np.int64)
    order = np.empty((C, N), np.int64)
    n_visible = np.zeros(C, np.int64)
    for cam in prange(C):
        visible = np.empty(N, np.int64)
        nv = 0
        for n in range(N):
            for q in range(7):
                gdata[cam, n, q] = packed[cam, n, q]
            a, b, c = float(packed[cam, n, 2]), float(packed[cam, n, 3]), float(packed[cam, n, 4])
            thr = float(packed[cam, n, 6])
            det = max(a * c - b * b, 1e-30)
            gdata[cam, n, 7] = np.float32(math.sqrt(max(2.0 * thr, 0.0) * max(a, 0.0) / det) * 1.001 + 1e-3)
            rx, ry = radii_xy[cam, n, 0], radii_xy[cam, n, 1]
            if rx <= 0 or ry <= 0:
                continue
            visible[nv] = n
            nv += 1
            x0, x1, y0, y1 = _tile_rect(packed[cam, n, 0], packed[cam, n, 1], rx, ry, tiles_x, tiles_y)
            for ty in range(y0, y1):
                for tx in range(x0, x1):
                    counts[cam, ty * tiles_x + tx] += 1
        depths = np.empty(nv, np.float32)
        for k in range(nv):
            depths[k] = packed[cam, visible[k], 7]
        by_depth = np.argsort(depths, kind="mergesort")
        for k in range(nv):
            order[cam, k] = visible[by_depth[k]]
        n_visible[cam] = nv
    offsets = np.zeros(C * n_tiles + 1, np.int64)
    offsets[1:] = np.cumsum(counts.ravel())
    ids = np.empty(offsets[-1], np.int32)
    for cam in prange(C):
        pos = offsets[cam * n_tiles : (cam + 1) * n_tiles].copy()
        for k in range(n_visible[cam]):
            n = order[cam, k]
            rx, ry = radii_xy[cam, n, 0], radii_xy[cam, n, 1]
            x0, x1, y0, y1 = _tile_rect(packed[cam, n, 0], packed[cam, n, 1], rx, ry, tiles_x, tiles_y)
            for ty in range(y0, y1):
                for tx in range(x0, x1):
                    t = ty * tiles_x + tx
                    ids[pos[t]] = n
                    pos[t] += 1
    return gdata, offsets, ids


@njit(inline="always", fastmath=FLAGS, error_model="numpy")
def _row_span(my, ey, y0):
    """Tile rows [r0, r1) whose pixel centres lie within ``ey`` of ``my``."""
    lo = my - ey - ROW_MARGIN - F32(y0) - HALF
    hi = my + ey + ROW_MARGIN - F32(y0) - HALF
    r0 = min(max(int(math.ceil(lo)), 0), TILE)
    r1 = max(min(int(math.floor(hi)) + 1, TILE), r0)
    return r0, r1


@njit(inline="always", fastmath=FLAGS, error_model="numpy")
def _row_reaches(a, b, c, thr, mx, my, row_y, x0):
    """Whether the ellipse sigma <= thr crosses the pixel row at height ``row_y`` within the
    tile's columns [x0, x0 + 16) (conservatively: a few pixels of slack)."""
    dy = my - row_y
    disc = dy * dy * (b * b - a * c) + TWO * a * thr
    if disc < ZERO:
        return disc > -F32(1e-3) * (TWO * a * thr + F32(1e-6))
    half = math.sqrt(disc) / a
    centre = mx + b * dy / a  # px = mx - dx with dx in -b dy / a +- half
    slack = half * F32(1e-3) + ROW_MARGIN + ONE
    return centre + half + slack >= F32(x0) and centre - half - slack <= F32(x0 + TILE)


@njit(inline="always", fastmath=FLAGS, error_model="numpy")
def _sigma(a, b, c, dx, dy):
    """The Mahalanobis half-distance; the PyTorch reference computes it with the same operations
    in the same order (keep them in step)."""
    return HALF * (a * dx * dx + c * dy * dy) + b * dx * dy


@njit(fastmath=FLAGS, error_model="numpy")
def _blend_span(p0, n, px, py, T, act, last, w, mx, my, a, b, c, o, thr, kk):
    """Blends one Gaussian into the pixels [p0, p0 + n) of a tile; returns 1 if any of them
    stopped. Branch-free so that it vectorises. (Offsets are unsigned and arrays are passed
    whole: numba then emits no negative-index checks, and no slice views, whose reference
    counting costs more than the arithmetic here.)"""
    stopped = np.int32(0)  # 1 once any pixel stopped (a max, which vectorises; a count does not)
    for i in range(n):
        j = p0 + i
        dx = mx - px[j]
        dy = my - py[j]
        sigma = _sigma(a, b, c, dx, dy)
        inc = (sigma >= ZERO) & (sigma <= thr) & (act[j] > ZERO)
        alpha = min(ALPHA_MAX, o * fast_exp(-sigma))
        Tj = T[j]
        nT = Tj * (ONE - alpha)
        stop = inc & (nT <= T_MIN)
        ae = alpha if inc & (nT > T_MIN) else ZERO
        w[j] = ae * Tj
        T[j] = Tj * (ONE - ae)
        last[j] = max(last[j], kk * np.int32(ae > ZERO))
        act[j] = min(act[j], np.float32(not stop))
        stopped = max(stopped, np.int32(stop))
    return stopped


@njit(fastmath=FLAGS, error_model="numpy")
def _axpy(p0, n, acc, f, w, v):
    """acc[f, p] += w[p] * v over the span."""
    for i in range(n):
        j = p0 + i
        acc[f, j] += w[j] * v


@njit(fastmath=True, error_model="numpy")
def _dot(p0, n, x, y, f):
    """sum of x[p] * y[f, p] over the span (reassociated, so it vectorises)."""
    s = ZERO
    for i in range(n):
        j = p0 + i
        s += x[j] * y[f, j]
    return s


@njit(fastmath=True, error_model="numpy")
def _sum_product(p0, n, x, y):
    s = ZERO
    for i in range(n):
        j = p0 + i
        s += x[j] * y[j]
    return s


@njit(inline="always")
def _tile_coords(t, n_tiles, tiles_x):
    cam = t // n_tiles
    ty = (t - cam * n_tiles) // tiles_x
    tx = t - cam * n_tiles - ty * tiles_x
    return cam, tx * TILE, ty * TILE


@njit(inline="always", fastmath=FLAGS, error_model="numpy")
def _pixel_centres(x0, y0):
    px = np.empty(TILE * TILE, np.float32)
    py = np.empty(TILE * TILE, np.float32)
    for r in range(TILE):
        for j in range(TILE):
            px[r * TILE + j] = F32(x0 + j) + HALF
            py[r * TILE + j] = F32(y0 + r) + HALF
    return px, py


@njit(parallel=True, fastmath=FLAGS, error_model="numpy", cache=True)
def rasterize_forward(gdata, feats, offsets, ids, width, height, tiles_x, tiles_y, err, out_err):
    """Front-to-back blending of every tile.

    Args:
        gdata: [C, N, 8] float32 packed records (see module docstring); feats: [C, N, F] float32;
        offsets, ids: from :func:`prepare`;
        err: [C, H, W] float32 per-pixel error to accumulate onto Gaussians, or an empty array;
        out_err: [n_pairs] float32 output, per (tile, Gaussian) pair the sum over the tile's pixels
            of blending weight * err (written only when err is not empty).
    Returns:
        out: [C, H, W, F] blended features; T: [C, H, W] final transmittance;
        last: [C, H, W] int32, per pixel the length of the prefix of its tile list that was blended.
    """
    C = gdata.shape[0]
    F = feats.shape[2]
    P = TILE * TILE
    n_tiles = tiles_x * tiles_y
    with_err = err.size > 0
    out = np.zeros((C, height, width, F), np.float32)
    out_T = np.ones((C, height, width), np.float32)
    out_last = np.zeros((C, height, width), np.int32)
    for t in prange(C * n_tiles):
        cam, x0, y0 = _tile_coords(t, n_tiles, tiles_x)
        start, end = offsets[t], offsets[t + 1]
        if start == end:
            continue
        px, py = _pixel_centres(x0, y0)
        T = np.ones(P, np.float32)
        acc = np.zeros((F, P), np.float32)
        last = np.zeros(P, np.int32)
        act = np.zeros(P, np.float32)
        errt = np.zeros(P, np.float32)
        w = np.zeros(P, np.float32)
        row_live = np.zeros(TILE, np.int32)
        nr, nc = min(TILE, height - y0), min(TILE, width - x0)
        for r in range(nr):
            row_live[r] = nc
            for j in range(nc):
                act[r * TILE + j] = ONE
                if with_err:
                    errt[r * TILE + j] = err[cam, y0 + r, x0 + j]
        live = nr * nc
        for k in range(start, end):
            if live == 0:
                break
            g = ids[k]
            mx, my = gdata[cam, g, 0], gdata[cam, g, 1]
            a, b, c = gdata[cam, g, 2], gdata[cam, g, 3], gdata[cam, g, 4]
            o, thr = gdata[cam, g, 5], gdata[cam, g, 6]
            r0, r1 = _row_span(my, gdata[cam, g, 7], y0)
            while r0 < r1 and (row_live[r0] == 0 or not _row_reaches(a, b, c, thr, mx, my, py[r0 * TILE], x0)):
                r0 += 1
            while r1 > r0 and (row_live[r1 - 1] == 0 or not _row_reaches(a, b, c, thr, mx, my, py[(r1 - 1) * TILE], x0)):
                r1 -= 1
            if r0 == r1:
                continue
            p0, n = np.uint64(r0 * TILE), np.uint64((r1 - r0) * TILE)
            kk = np.int32(k - start + 1)
            stopped = _blend_span(p0, n, px, py, T, act, last, w, mx, my, a, b, c, o, thr, kk)
            for f in range(F):
                _axpy(p0, n, acc, np.uint64(f), w, feats[cam, g, f])
            if with_err:
                out_err[k] = _sum_product(p0, n, w, errt)
            if stopped > 0:
                for r in range(r0, r1):
                    n = 0
                    for j in range(TILE):
                        n += act[r * TILE + j] > ZERO
                    live -= row_live[r] - n
                    row_live[r] = n
        for r in range(nr):
            for j in range(nc):
                out_T[cam, y0 + r, x0 + j] = T[r * TILE + j]
                out_last[cam, y0 + r, x0 + j] = last[r * TILE + j]
                for f in range(F):
                    out[cam, y0 + r, x0 + j, f] = acc[f, r * TILE + j]
    return out, out_T, out_last


NG = 8  # per-pair gradient slots before the features: a, b, c, mx, my, |mx|, |my|, opacity


@njit(fastmath=FLAGS, error_model="numpy")
def _unblend_span(p0, n, px, py, T, T_final, S, last, gA, fg, wgt_out, dLds, gO, mx, my, a, b, c, o, thr, kk):
    """Walks one Gaussian back out of a run of pixels (views): restores each pixel's
    transmittance before it, and writes the per-pixel dL/dsigma, dL/dopacity and the blending
    weight (for the feature gradients), over pixels [p0, p0 + n). Branch-free."""
    for i in range(n):
        j = p0 + i
        dx = mx - px[j]
        dy = my - py[j]
        sigma = _sigma(a, b, c, dx, dy)
        inc = (sigma >= ZERO) & (sigma <= thr) & (kk < last[j])
        e = fast_exp(-sigma)
        oe = o * e
        alpha = min(ALPHA_MAX, oe)
        rinv = ONE / (ONE - alpha)
        mf = np.float32(inc)
        T_before = T[j] * rinv if inc else T[j]
        dL_da = T_before * fg[j] - S[j] * rinv + gA[j] * T_final[j] * rinv
        wgt = alpha * T_before * mf
        S[j] += wgt * fg[j]
        T[j] = T_before
        g_live = mf * np.float32(oe <= ALPHA_MAX) * dL_da
        dLds[j] = -oe * g_live
        gO[j] = e * g_live
        wgt_out[j] = wgt


@njit(fastmath=FLAGS, error_model="numpy")
def _feature_dot(p0, n, fg, gF, feats, cam, g):
    """fg[p] = sum_f feats[cam, g, f] * gF[f, p] over the span."""
    F = gF.shape[0]
    v = feats[cam, g, 0]
    for i in range(n):
        j = p0 + i
        fg[j] = v * gF[0, j]
    for f in range(1, F):
        v = feats[cam, g, f]
        for i in range(n):
            j = p0 + i
            fg[j] += v * gF[f, j]


@njit(fastmath=True, error_model="numpy")
def _pair_grads(p0, n, px, py, dLds, gO, mx, my, a, b, c, out, k):
    """Sums the per-pixel terms of one Gaussian into out[0:8] (a, b, c, mx, my, |mx|, |my|, opacity)."""
    s0 = ZERO
    s1 = ZERO
    s2 = ZERO
    s3 = ZERO
    s4 = ZERO
    s5 = ZERO
    s6 = ZERO
    s7 = ZERO
    for i in range(n):
        j = p0 + i
        dx = mx - px[j]
        dy = my - py[j]
        g = dLds[j]
        gx = (a * dx + b * dy) * g
        gy = (b * dx + c * dy) * g
        s0 += HALF * dx * dx * g
        s1 += dx * dy * g
        s2 += HALF * dy * dy * g
        s3 += gx
        s4 += gy
        s5 += abs(gx)
        s6 += abs(gy)
        s7 += gO[j]
    out[k, 0] = s0
    out[k, 1] = s1
    out[k, 2] = s2
    out[k, 3] = s3
    out[k, 4] = s4
    out[k, 5] = s5
    out[k, 6] = s6
    out[k, 7] = s7


@njit(parallel=True, fastmath=FLAGS, error_model="numpy", cache=True)
def rasterize_backward(gdata, feats, offsets, ids, width, height, tiles_x, tiles_y, out_T, out_last, g_out, g_alpha):
    """Gradients of a loss with respect to every (tile, Gaussian) pair's inputs.

    Args:
        gdata, feats, offsets, ids, width, height, tiles_x, tiles_y: as in :func:`rasterize_forward`;
        out_T, out_last: its outputs; g_out: [C, H, W, F] dL/d(out); g_alpha: [C, H, W] dL/d(alpha)
            where alpha = 1 - T.
    Returns:
        [n_pairs, 8 + F] float32: per pair dL/d(a, b, c), dL/d(mx, my), sum over pixels of
        |dL/dmx| and |dL/dmy| (AbsGS), dL/d(opacity), dL/d(features).
    """
    C = gdata.shape[0]
    F = feats.shape[2]
    P = TILE * TILE
    n_tiles = tiles_x * tiles_y
    grads = np.zeros((ids.shape[0], NG + F), np.float32)
    for t in prange(C * n_tiles):
        cam, x0, y0 = _tile_coords(t, n_tiles, tiles_x)
        start, end = offsets[t], offsets[t + 1]
        if start == end:
            continue
        px, py = _pixel_centres(x0, y0)
        T = np.ones(P, np.float32)
        last = np.zeros(P, np.int32)
        gF = np.zeros((F, P), np.float32)
        gA = np.zeros(P, np.float32)
        S = np.zeros(P, np.float32)
        row_last = np.zeros(TILE, np.int32)
        for r in range(min(TILE, height - y0)):
            for j in range(min(TILE, width - x0)):
                p = r * TILE + j
                T[p] = out_T[cam, y0 + r, x0 + j]
                last[p] = out_last[cam, y0 + r, x0 + j]
                gA[p] = g_alpha[cam, y0 + r, x0 + j]
                for f in range(F):
                    gF[f, p] = g_out[cam, y0 + r, x0 + j, f]
                row_last[r] = max(row_last[r], last[p])
        T_final = T.copy()
        n_last = 0
        for r in range(TILE):
            n_last = max(n_last, row_last[r])
        fg = np.zeros(P, np.float32)
        wgt = np.zeros(P, np.float32)
        dLds = np.zeros(P, np.float32)
        gO = np.zeros(P, np.float32)
        for k in range(start + n_last - 1, start - 1, -1):
            g = ids[k]
            kk = np.int32(k - start)
            mx, my = gdata[cam, g, 0], gdata[cam, g, 1]
            a, b, c = gdata[cam, g, 2], gdata[cam, g, 3], gdata[cam, g, 4]
            o, thr = gdata[cam, g, 5], gdata[cam, g, 6]
            r0, r1 = _row_span(my, gdata[cam, g, 7], y0)
            while r0 < r1 and (row_last[r0] <= kk or not _row_reaches(a, b, c, thr, mx, my, py[r0 * TILE], x0)):
                r0 += 1
            while r1 > r0 and (row_last[r1 - 1] <= kk or not _row_reaches(a, b, c, thr, mx, my, py[(r1 - 1) * TILE], x0)):
                r1 -= 1
            if r0 == r1:
                continue
            p0, n = np.uint64(r0 * TILE), np.uint64((r1 - r0) * TILE)
            _feature_dot(p0, n, fg, gF, feats, cam, g)
            _unblend_span(p0, n, px, py, T, T_final, S, last, gA, fg, wgt, dLds, gO, mx, my, a, b, c, o, thr, kk)
            _pair_grads(p0, n, px, py, dLds, gO, mx, my, a, b, c, grads, k)
            for f in range(F):
                grads[k, NG + f] = _dot(p0, n, wgt, gF, np.uint64(f))
    return grads


@njit(parallel=True, cache=True)
def reduce_pairs(values, offsets, ids, n_cameras, n_gaussians, tiles_per_camera):
    """Sums per-pair rows [n_pairs, Q] into per-Gaussian rows [C, N, Q], in list order."""
    Q = values.shape[1]
    out = np.zeros((n_cameras, n_gaussians, Q), np.float32)
    for cam in prange(n_cameras):
        for k in range(offsets[cam * tiles_per_camera], offsets[(cam + 1) * tiles_per_camera]):
            g = ids[k]
            for q in range(Q):
                out[cam, g, q] += values[k, q]
    return out
