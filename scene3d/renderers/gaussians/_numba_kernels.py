"""Numba kernels of the CPU rasterizer: packing and tile binning, forward blending, the
hand-written backward, and the per-Gaussian accumulation of a pixel-error map.

Inputs. Gaussians arrive already projected (by the torch code in ``projection.py``), per camera:
centre (mx, my), conic (a, b, c), opacity and ``log_threshold = ln(255 opacity)``, depth, and the
features to blend ``feats[c, n, :F]`` (F a multiple of 4). A pixel centre p = (j + 0.5, i + 0.5)
sees Gaussian n with ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy``, ``dx = mx - px``,
``dy = my - py``, and is reached iff ``0 <= sigma <= log_threshold`` (gsplat's test
``opacity exp(-sigma) >= 1/255``, done in exponent space so that the PyTorch reference makes
bit-identical decisions). Then ``alpha = min(0.999, opacity exp(-sigma))``, and front-to-back
blending stops (exclusively) once the transmittance would fall to 1e-4 or below.

Work layout (see PERF-NOTES):

- :func:`prepare` sorts each camera's visible Gaussians by depth and fills per-tile lists
  (count, prefix sum, fill in depth order), so each 16x16 tile's list is front to back.
- Tiles run in parallel (``prange``). A tile's 256 pixels are stored as two strips of 16 rows x 8
  columns, one AVX2 vector per strip row. For each Gaussian, :func:`_strip_rows` finds in closed
  form the rows of each strip its reachable ellipse touches, and the blend runs over that
  contiguous run of pixels: a branch-free loop with a polynomial exp (:func:`fast_exp`) that the
  compiler vectorises. Rows whose pixels have all stopped are skipped; a tile stops once all its
  pixels have. float32 throughout: constants are float32 so nothing is promoted to float64.
- Backward (:func:`rasterize_backward`): each tile's list is walked back to front from the last
  Gaussian any pixel blended; each pixel's transmittance is recovered from its final value,
  ``T_i = T_{i+1} / (1 - alpha_i)`` (as 3DGS does). Sums over a tile's pixels go to one slot per
  (tile, Gaussian) pair and are reduced per Gaussian in list order (:func:`reduce_pairs`), so
  results do not depend on the thread schedule.

Floating point. The kernels are compiled with fast-math flags that allow vectorisation but neither
reassociation nor FMA contraction (except inside :func:`fast_exp` and the reductions, which decide
nothing), so ``sigma`` is computed with exactly the operations and roundings of the PyTorch
reference: forward, backward, error accumulation and the reference agree bit for bit on which
Gaussian reaches which pixel. ``error_model="numpy"`` drops numba's division-by-zero checks,
which would otherwise stop the loops from vectorising.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

TILE = 16
# Vectorisable without changing any rounding: no 'reassoc', no 'contract' (see the docstring).
FLAGS = {"nnan", "ninf", "nsz", "arcp"}

F32 = np.float32
ZERO = F32(0.0)
HALF = F32(0.5)
ONE = F32(1.0)
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
ROW_MARGIN = 0.01
# A tile's 256 pixels are stored as two strips of 16 rows x 8 columns (one AVX2 vector per row
# of a strip): pixel (row r, column j) is at ((j // 8) * 16 + r) * 8 + j % 8. A Gaussian is
# blended into a contiguous run of rows of each strip it reaches.
STRIP = 8


@intrinsic
def _bits_to_f32(typingctx, bits):
    """Reinterprets an int32 bit pattern as a float32 (vectorises to a no-op)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _f32_to_bits(typingctx, x):
    """Reinterprets a float32 as its int32 bit pattern."""
    sig = types.int32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

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


@njit(inline="always")
def _f32_sort_key(x):
    """uint32 whose order is the order of the float32 x (sign-magnitude to two's complement)."""
    bits = np.uint32(_f32_to_bits(x))
    return bits ^ np.uint32(0xFFFFFFFF) if bits >> np.uint32(31) else bits | np.uint32(0x80000000)


@njit(cache=True)
def _radix_argsort(keys):
    """Stable argsort of uint32 keys (three 11-bit LSD passes)."""
    n = keys.shape[0]
    order = np.arange(n)
    tmp = np.empty(n, np.int64)
    for shift in (0, 11, 22):
        counts = np.zeros(2049, np.int64)
        for i in range(n):
            counts[((keys[order[i]] >> np.uint32(shift)) & np.uint32(2047)) + 1] += 1
        for b in range(2048):
            counts[b + 1] += counts[b]
        for i in range(n):
            d = (keys[order[i]] >> np.uint32(shift)) & np.uint32(2047)
            tmp[counts[d]] = order[i]
            counts[d] += 1
        order, tmp = tmp, order
    return order


@njit(parallel=True, cache=True, error_model="numpy")
def prepare(packed, radii_xy, tiles_x, tiles_y):
    """Packs the kernels' records and bins them into per-tile lists sorted front to back.

    Args:
        packed: [C, N, 8] float32 (mx, my, a, b, c, opacity, log_threshold, depth);
        radii_xy: [C, N, 2] int32 (0 = culled).
    Returns:
        gdata: [C, N, 13] float32 records: the first 7 fields of ``packed``, then the geometry
            of the reachable ellipse (sigma <= log_threshold) used to pick the rows to visit:
            its y and x half-extents ``ey = sqrt(2 thr cov_yy)``, ``ex = sqrt(2 thr cov_xx)``,
            and, with u = x - mx and v = y - my, the constants of its lower and upper boundary
            ``v = -kb u -+ sqrt(kv2 u^2 + kv3)`` and the u of its topmost point ``ut`` (the
            bottommost is at -ut);
        offsets: [C * tiles_y * tiles_x + 1] int64, tile t's list is ids[offsets[t]:offsets[t+1]];
        ids: [n_pairs] int32 Gaussian indices (within their camera), each list sorted by depth
            (ties by index, as a stable sort).
    """
    C, N = packed.shape[0], packed.shape[1]
    n_tiles = tiles_x * tiles_y
    gdata = np.empty((C, N, 13), np.float32)
    for flat in prange(C * N):
        cam, n = flat // N, flat % N
        for q in range(7):
            gdata[cam, n, q] = packed[cam, n, q]
        a, b, c = float(packed[cam, n, 2]), float(packed[cam, n, 3]), float(packed[cam, n, 4])
        thr = max(float(packed[cam, n, 6]), 0.0)
        det = max(a * c - b * b, 1e-30)
        a_safe, c_safe = max(a, 1e-30), max(c, 1e-30)
        ey = math.sqrt(2.0 * thr * max(a, 0.0) / det)
        gdata[cam, n, 7] = np.float32(ey * 1.001 + 1e-3)
        gdata[cam, n, 8] = np.float32(math.sqrt(2.0 * thr * max(c, 0.0) / det) * 1.001 + 1e-3)
        gdata[cam, n, 9] = np.float32(b / c_safe)
        gdata[cam, n, 10] = np.float32((b * b - a * c) / (c_safe * c_safe))
        gdata[cam, n, 11] = np.float32(2.0 * thr / c_safe)
        gdata[cam, n, 12] = np.float32(b * ey / a_safe)
    counts = np.zeros((C, n_tiles), np.int64)
    order = np.empty((C, N), np.int64)
    n_visible = np.zeros(C, np.int64)
    for cam in prange(C):
        visible = np.empty(N, np.int64)
        nv = 0
        for n in range(N):
            if radii_xy[cam, n, 0] > 0 and radii_xy[cam, n, 1] > 0:
                visible[nv] = n
                nv += 1
        keys = np.empty(nv, np.uint32)
        for k in range(nv):
            keys[k] = _f32_sort_key(packed[cam, visible[k], 7])
        by_depth = _radix_argsort(keys)
        for k in range(nv):
            n = visible[by_depth[k]]
            order[cam, k] = n
            x0, x1, y0, y1 = _tile_rect(packed[cam, n, 0], packed[cam, n, 1], radii_xy[cam, n, 0], radii_xy[cam, n, 1], tiles_x, tiles_y)
            for ty in range(y0, y1):
                for tx in range(x0, x1):
                    counts[cam, ty * tiles_x + tx] += 1
        n_visible[cam] = nv
    offsets = np.zeros(C * n_tiles + 1, np.int64)
    offsets[1:] = np.cumsum(counts.ravel())
    ids = np.empty(offsets[-1], np.int32)
    for cam in prange(C):
        pos = offsets[cam * n_tiles : (cam + 1) * n_tiles].copy()
        for k in range(n_visible[cam]):
            n = order[cam, k]
            x0, x1, y0, y1 = _tile_rect(packed[cam, n, 0], packed[cam, n, 1], radii_xy[cam, n, 0], radii_xy[cam, n, 1], tiles_x, tiles_y)
            for ty in range(y0, y1):
                for tx in range(x0, x1):
                    t = ty * tiles_x + tx
                    ids[pos[t]] = n
                    pos[t] += 1
    return gdata, offsets, ids


@njit(inline="always", error_model="numpy")
def _strip_rows(gdata, cam, g, x0, y0, strip, row_count, floor):
    """Rows [r0, r1) of one strip of a tile that the Gaussian's reachable ellipse can touch
    (conservatively, in float64 with margins), less the rows at either end whose ``row_count``
    is not above ``floor`` (rows with no live pixel, or nothing left to walk back)."""
    mx, my = float(gdata[cam, g, 0]), float(gdata[cam, g, 1])
    ey, ex = float(gdata[cam, g, 7]), float(gdata[cam, g, 8])
    xs = x0 + strip * STRIP
    uL = xs + 0.5 - ROW_MARGIN - mx  # the strip's pixel centres, relative to the centre
    uR = xs + STRIP - 0.5 + ROW_MARGIN - mx
    if uR < -ex or uL > ex:
        return 0, 0
    kb, kv2, kv3, ut = float(gdata[cam, g, 9]), float(gdata[cam, g, 10]), float(gdata[cam, g, 11]), float(gdata[cam, g, 12])
    tol = 1e-5 * kv3 + 1e-6
    # topmost point within the slab: the ellipse's own top if its u lies in [uL, uR], else the
    # lower boundary at the nearer edge (the boundary is convex); likewise for the bottom
    u = min(max(ut, uL), uR)
    top = -ey if u == ut else -kb * u - math.sqrt(max(kv2 * u * u + kv3 + tol, 0.0))
    u = min(max(-ut, uL), uR)
    bottom = ey if u == -ut else -kb * u + math.sqrt(max(kv2 * u * u + kv3 + tol, 0.0))
    r0 = min(max(int(math.ceil(my + top - y0 - 0.5 - ROW_MARGIN)), 0), TILE)
    r1 = max(min(int(math.floor(my + bottom - y0 - 0.5 + ROW_MARGIN)) + 1, TILE), r0)
    while r0 < r1 and row_count[strip, r0] <= floor:
        r0 += 1
    while r1 > r0 and row_count[strip, r1 - 1] <= floor:
        r1 -= 1
    return r0, r1


@njit(fastmath=FLAGS, error_model="numpy")
def _sigma(a, b, c, dx, dy):
    """The Mahalanobis half-distance; the PyTorch reference computes it with the same operations
    in the same order (keep them in step). Not inlined by numba: LLVM inlines it and keeps these
    strict flags even inside loops compiled with reassociation."""
    return HALF * (a * dx * dx + c * dy * dy) + b * dx * dy


@njit(fastmath=FLAGS, error_model="numpy")
def _blend_span(p0, n, px, py, T, last, w, acc, f0, f1, f2, f3, mx, my, a, b, c, o, thr, kk):
    """Blends one Gaussian (list position ``kk``, 1-based, as a float32) into the pixels
    [p0, p0 + n) of a tile, accumulating its first four feature channels (f0..f3) into acc[0:4]
    and writing the weights to w; returns 1 if any pixel stopped.

    A pixel that has stopped keeps its transmittance negated (the sign is the "done" flag, so no
    separate mask is loaded and stored); ``last`` is float32 for the same reason: every store in
    the loop is unconditional and 32-bit, so it vectorises without masked stores. (Offsets are
    unsigned and arrays are passed whole: numba then emits no negative-index checks, and no slice
    views, whose reference counting costs more than the arithmetic here.)"""
    stopped = np.int32(0)  # 1 once any pixel stopped (a max, which vectorises; a count does not)
    for i in range(n):
        j = p0 + i
        dx = mx - px[j]
        dy = my - py[j]
        sigma = _sigma(a, b, c, dx, dy)
        Tj = T[j]
        inc = (sigma >= ZERO) & (sigma <= thr) & (Tj > ZERO)
        alpha = min(ALPHA_MAX, o * fast_exp(-sigma))
        nT = Tj * (ONE - alpha)
        stop = inc & (nT <= T_MIN)
        use = inc & (nT > T_MIN)
        ae = alpha if use else ZERO
        wj = ae * Tj
        w[j] = wj
        acc[0, j] += wj * f0
        acc[1, j] += wj * f1
        acc[2, j] += wj * f2
        acc[3, j] += wj * f3
        T[j] = -Tj if stop else Tj * (ONE - ae)
        last[j] = max(last[j], kk if use else ZERO)
        stopped = max(stopped, np.int32(stop))
    return stopped


@njit(fastmath=FLAGS, error_model="numpy")
def _axpy4(p0, n, acc, f, w, v0, v1, v2, v3):
    """acc[f + q, p] += w[p] * v_q over the span, for q = 0..3."""
    for i in range(n):
        j = p0 + i
        wj = w[j]
        acc[f, j] += wj * v0
        acc[f + 1, j] += wj * v1
        acc[f + 2, j] += wj * v2
        acc[f + 3, j] += wj * v3


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


@njit(inline="always")
def _pix(r, j):
    """Index of the tile pixel at row r, column j (strip layout)."""
    return ((j // STRIP) * TILE + r) * STRIP + j % STRIP


@njit(inline="always", fastmath=FLAGS, error_model="numpy")
def _pixel_centres(x0, y0):
    px = np.empty(TILE * TILE, np.float32)
    py = np.empty(TILE * TILE, np.float32)
    for r in range(TILE):
        for j in range(TILE):
            px[_pix(r, j)] = F32(x0 + j) + HALF
            py[_pix(r, j)] = F32(y0 + r) + HALF
    return px, py


@njit(parallel=True, fastmath=FLAGS, error_model="numpy", cache=True)
def rasterize_forward(gdata, feats, offsets, ids, width, height, tiles_x, tiles_y, err, out_err):
    """Front-to-back blending of every tile.

    Args:
        gdata: [C, N, 13] float32 records from :func:`prepare`; feats: [C, N, F] float32, F a
            multiple of 4 (pad with zeros);
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
        T = np.full(P, -ONE, np.float32)  # pixels outside the image count as stopped
        acc = np.zeros((F, P), np.float32)
        last = np.zeros(P, np.float32)
        errt = np.zeros(P, np.float32)
        w = np.zeros(P, np.float32)
        row_live = np.zeros((2, TILE), np.int32)  # live pixels per strip row
        nr, nc = min(TILE, height - y0), min(TILE, width - x0)
        for r in range(nr):
            for j in range(nc):
                T[_pix(r, j)] = ONE
                row_live[j // STRIP, r] += 1
                if with_err:
                    errt[_pix(r, j)] = err[cam, y0 + r, x0 + j]
        live = nr * nc
        for k in range(start, end):
            if live == 0:
                break
            g = ids[k]
            mx, my = gdata[cam, g, 0], gdata[cam, g, 1]
            a, b, c = gdata[cam, g, 2], gdata[cam, g, 3], gdata[cam, g, 4]
            o, thr = gdata[cam, g, 5], gdata[cam, g, 6]
            kk = F32(k - start + 1)
            werr = ZERO
            for strip in range(2):
                r0, r1 = _strip_rows(gdata, cam, g, x0, y0, strip, row_live, 0)
                if r0 == r1:
                    continue
                p0, n = np.uint64((strip * TILE + r0) * STRIP), np.uint64((r1 - r0) * STRIP)
                stopped = _blend_span(
                    p0, n, px, py, T, last, w, acc,
                    feats[cam, g, 0], feats[cam, g, 1], feats[cam, g, 2], feats[cam, g, 3],
                    mx, my, a, b, c, o, thr, kk,
                )
                for f in range(4, F, 4):
                    v0, v1, v2, v3 = feats[cam, g, f], feats[cam, g, f + 1], feats[cam, g, f + 2], feats[cam, g, f + 3]
                    _axpy4(p0, n, acc, np.uint64(f), w, v0, v1, v2, v3)
                if with_err:
                    werr += _sum_product(p0, n, w, errt)
                if stopped > 0:
                    for r in range(r0, r1):
                        alive = 0
                        for j in range(STRIP):
                            alive += T[(strip * TILE + r) * STRIP + j] > ZERO
                        live -= row_live[strip, r] - alive
                        row_live[strip, r] = alive
            if with_err:
                out_err[k] = werr
        for r in range(nr):
            for j in range(nc):
                p = _pix(r, j)
                out_T[cam, y0 + r, x0 + j] = abs(T[p])
                out_last[cam, y0 + r, x0 + j] = np.int32(last[p])
                for f in range(F):
                    out[cam, y0 + r, x0 + j, f] = acc[f, p]
    return out, out_T, out_last


NG = 8  # per-pair gradient slots before the features: a, b, c, mx, my, |mx|, |my|, opacity


@njit(fastmath=True, error_model="numpy")
def _unblend_span(p0, n, px, py, T, T_final, S, last, gA, gF, fg_rest, f0, f1, f2, f3, wgt_out, mx, my, a, b, c, o, thr, kk, out):
    """Walks one Gaussian (list position ``kk``, 0-based, float32) back out of the pixels
    [p0, p0 + n): restores each pixel's transmittance before it, and adds this Gaussian's
    gradient sums to out[0:12]: dL/d(a, b, c), dL/d(mx, my), sum |dL/dmx|, sum |dL/dmy|,
    dL/dopacity and dL/d(first four feature channels). dL/d(pixel) . features is fg_rest
    (channels from 4 on) plus f0..f3 against gF[0:4]. The weights go to ``wgt_out`` (for channels
    beyond four).

    Compiled with reassociation so that the sums vectorise; ``_sigma`` keeps strict flags, so
    which pixels the Gaussian reaches is decided exactly as in the forward pass.
    """
    s0 = ZERO
    s1 = ZERO
    s2 = ZERO
    s3 = ZERO
    s4 = ZERO
    s5 = ZERO
    s6 = ZERO
    s7 = ZERO
    s8 = ZERO
    s9 = ZERO
    s10 = ZERO
    s11 = ZERO
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
        g0, g1, g2, g3 = gF[0, j], gF[1, j], gF[2, j], gF[3, j]
        fg = fg_rest[j] + f0 * g0 + f1 * g1 + f2 * g2 + f3 * g3
        dL_da = T_before * fg - S[j] * rinv + gA[j] * T_final[j] * rinv
        wgt = alpha * T_before * mf
        S[j] += wgt * fg
        T[j] = T_before
        wgt_out[j] = wgt
        g_live = mf * np.float32(oe <= ALPHA_MAX) * dL_da
        dLds = -oe * g_live
        gx = (a * dx + b * dy) * dLds
        gy = (b * dx + c * dy) * dLds
        s0 += HALF * dx * dx * dLds
        s1 += dx * dy * dLds
        s2 += HALF * dy * dy * dLds
        s3 += gx
        s4 += gy
        s5 += abs(gx)
        s6 += abs(gy)
        s7 += e * g_live
        s8 += wgt * g0
        s9 += wgt * g1
        s10 += wgt * g2
        s11 += wgt * g3
    out[0] += s0
    out[1] += s1
    out[2] += s2
    out[3] += s3
    out[4] += s4
    out[5] += s5
    out[6] += s6
    out[7] += s7
    out[8] += s8
    out[9] += s9
    out[10] += s10
    out[11] += s11


@njit(fastmath=FLAGS, error_model="numpy")
def _feature_dot_rest(p0, n, fg, gF, feats, cam, g):
    """fg[p] = sum over channels f >= 4 of feats[cam, g, f] * gF[f, p] over the span."""
    F = gF.shape[0]
    for i in range(n):
        fg[p0 + i] = ZERO
    for f in range(4, F):
        v = feats[cam, g, f]
        for i in range(n):
            j = p0 + i
            fg[j] += v * gF[f, j]


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
        last = np.zeros(P, np.float32)  # float32, like kk below, so the comparison vectorises
        gF = np.zeros((F, P), np.float32)
        gA = np.zeros(P, np.float32)
        S = np.zeros(P, np.float32)
        row_last = np.zeros((2, TILE), np.int32)  # per strip row, the longest blended prefix
        for r in range(min(TILE, height - y0)):
            for j in range(min(TILE, width - x0)):
                p = _pix(r, j)
                T[p] = out_T[cam, y0 + r, x0 + j]
                last[p] = out_last[cam, y0 + r, x0 + j]
                gA[p] = g_alpha[cam, y0 + r, x0 + j]
                for f in range(F):
                    gF[f, p] = g_out[cam, y0 + r, x0 + j, f]
                row_last[j // STRIP, r] = max(row_last[j // STRIP, r], out_last[cam, y0 + r, x0 + j])
        T_final = T.copy()
        n_last = 0
        for strip in range(2):
            for r in range(TILE):
                n_last = max(n_last, row_last[strip, r])
        fg = np.zeros(P, np.float32)
        wgt = np.zeros(P, np.float32)
        sums = np.zeros(NG + F, np.float32)
        for k in range(start + n_last - 1, start - 1, -1):
            g = ids[k]
            kk = k - start
            mx, my = gdata[cam, g, 0], gdata[cam, g, 1]
            a, b, c = gdata[cam, g, 2], gdata[cam, g, 3], gdata[cam, g, 4]
            o, thr = gdata[cam, g, 5], gdata[cam, g, 6]
            touched = False
            for strip in range(2):
                r0, r1 = _strip_rows(gdata, cam, g, x0, y0, strip, row_last, kk)
                if r0 == r1:
                    continue
                p0, n = np.uint64((strip * TILE + r0) * STRIP), np.uint64((r1 - r0) * STRIP)
                if F > 4:
                    _feature_dot_rest(p0, n, fg, gF, feats, cam, g)
                if not touched:
                    sums[:] = ZERO
                    touched = True
                _unblend_span(
                    p0, n, px, py, T, T_final, S, last, gA, gF, fg,
                    feats[cam, g, 0], feats[cam, g, 1], feats[cam, g, 2], feats[cam, g, 3],
                    wgt, mx, my, a, b, c, o, thr, F32(kk), sums,
                )
                for f in range(4, F):
                    sums[NG + f] += _dot(p0, n, wgt, gF, np.uint64(f))
            if touched:
                for q in range(NG + F):
                    grads[k, q] = sums[q]
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
