"""numba kernels of the multiresolution hash grid (:mod:`scene3d.renderers.rays.hashgrid`) on the
CPU: the forward lookup and both halves of its backward pass, compiled on first use and cached on
disk (module-level kernels, so numba's cache finds them in the next process).

Every kernel takes the grid as the arrays of
:attr:`~scene3d.renderers.rays.hashgrid.HashGridLayout.arrays`: ``offsets`` [L+1] int64 (level l's
features are ``params[offsets[l] F : offsets[l+1] F]``), ``scales`` [L] float32, ``resolutions``
[L] int64 and ``dense`` [L] bool, and follows tiny-cuda-nn's arithmetic: ``pos = fma(s, x, 0.5)``
rounded once to float32 (done in float64, where the product of two float32 is exact), ``g =
floor(pos)``, ``t = pos - g``; corner c (bit d set: ``g_d + 1`` with weight ``t_d``, else ``g_d``
with ``1 - t_d``) has weight ``w_c = (w_x w_y) w_z``; its entry is, in uint32 arithmetic,
``x + y R + z R^2`` (dense levels) or ``x ^ y 2654435761 ^ z 805459861`` (hashed), ``% size``.

Work split, chosen by measurement (100k points, 16 levels x 2 features, 2^19 entries: 12.8
million scattered table reads per pass, half of the time waiting for memory):

* forward and input gradient: level after level, chunks of points in parallel. One level's
  table (4 MiB when hashed) stays in cache while every point reads it; the features go to a
  level-major buffer [L, M, F] (contiguous writes), transposed to [M, L*F] at the end.
* table gradient: levels in parallel. A level's region of the gradient belongs to the one thread
  that fills it, so the scatter-add needs neither atomics nor per-thread copies of the table:
  with points split between threads instead, each into its own full-size gradient summed at the
  end, the pass took 43 ms instead of 20 ms on 2 threads (zeroing and summing threads x n_params
  floats). It reads dL/dout level-major (contiguous). Numba's static schedule (each thread a
  contiguous share of the levels) measured as fast as a dynamic one and as any level order: a
  level costs about the same whether dense or hashed (M x 8 scattered additions).
* every pass computes the corners of the point ``PREFETCH`` ahead and prefetches their entries
  (a ring of ``PREFETCH`` points' corners): the forward ran 1.8x faster than waiting on each load.
* the caller allocates the big arrays with numpy, which asks for huge pages (allocated by numba,
  the 48 MiB gradient cost 25 ms of page faults per step; by numpy, 5 ms).
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import cgutils, types
from numba.extending import intrinsic

MASK32 = np.uint64(0xFFFFFFFF)
PRIME_Y = np.uint64(2654435761)
PRIME_Z = np.uint64(805459861)
PREFETCH = 8
"""Points whose corners are computed (and their entries prefetched) ahead of the one being read."""
CHUNK = 1024
"""Points per parallel work item of the point-parallel passes."""


@intrinsic
def _prefetch(typingctx, arr, idx):
    """``llvm.prefetch`` of ``arr[idx]`` (read, high locality): a hint, no effect on results."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, i32, i32, i32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [cgutils.voidptr_t], fnty)
        builder.call(fn, [builder.bitcast(ptr, cgutils.voidptr_t), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _cell(x, scale):
    """(uint32 cell g as uint64, fraction t in [0, 1)) of one coordinate: ``pos = fma(scale, x, 0.5)``
    in float32, ``g = floor(pos)`` cast like tcnn's ``(uint32_t)(int)`` (two's complement mod 2^32)."""
    pos = np.float32(np.float64(scale) * np.float64(x) + 0.5)
    g = np.floor(pos)
    return np.uint64(np.int64(g) & 0xFFFFFFFF), pos - g


@njit(inline="always")
def _wrap(h, size):
    """``h % size`` of a dense index without a division when the coordinates are in [0, R]: the
    index is then below twice the size."""
    if h < size:
        return np.int64(h)
    if h < size + size:
        return np.int64(h - size)
    return np.int64(h % size)


@njit(inline="always")
def _corners(x, y, z, scale, res, size, dense):
    """Entries (int64, 8) and weights (float32, 8) of the corners of the cell holding (x, y, z), and
    the fractions (tx, ty, tz). Corner c has bit 0 for x, 1 for y, 2 for z (tcnn's order)."""
    gx, tx = _cell(x, scale)
    gy, ty = _cell(y, scale)
    gz, tz = _cell(z, scale)
    su = np.uint64(size)
    one = np.uint64(1)
    if dense:
        r = np.uint64(res)
        r2 = r * r
        x0, x1 = gx, gx + one
        y0, y1 = gy * r, (gy + one) * r
        z0, z1 = gz * r2, (gz + one) * r2
        e = (
            _wrap((x0 + y0 + z0) & MASK32, su), _wrap((x1 + y0 + z0) & MASK32, su),
            _wrap((x0 + y1 + z0) & MASK32, su), _wrap((x1 + y1 + z0) & MASK32, su),
            _wrap((x0 + y0 + z1) & MASK32, su), _wrap((x1 + y0 + z1) & MASK32, su),
            _wrap((x0 + y1 + z1) & MASK32, su), _wrap((x1 + y1 + z1) & MASK32, su),
        )  # fmt: skip
    else:
        x0, x1 = gx, (gx + one) & MASK32
        y0, y1 = (gy * PRIME_Y) & MASK32, (((gy + one) & MASK32) * PRIME_Y) & MASK32
        z0, z1 = (gz * PRIME_Z) & MASK32, (((gz + one) & MASK32) * PRIME_Z) & MASK32
        k = su - one  # a hashed level holds 2^T entries: % is a mask
        e = (
            np.int64((x0 ^ y0 ^ z0) & k), np.int64((x1 ^ y0 ^ z0) & k), np.int64((x0 ^ y1 ^ z0) & k), np.int64((x1 ^ y1 ^ z0) & k),
            np.int64((x0 ^ y0 ^ z1) & k), np.int64((x1 ^ y0 ^ z1) & k), np.int64((x0 ^ y1 ^ z1) & k), np.int64((x1 ^ y1 ^ z1) & k),
        )  # fmt: skip
    f1 = np.float32(1.0)
    wx0, wy0, wz0 = f1 - tx, f1 - ty, f1 - tz
    w = (
        wx0 * wy0 * wz0, tx * wy0 * wz0, wx0 * ty * wz0, tx * ty * wz0,
        wx0 * wy0 * tz, tx * wy0 * tz, wx0 * ty * tz, tx * ty * tz,
    )  # fmt: skip
    return e, w, tx, ty, tz


@njit(inline="always")
def _stage(ring_e, ring_w, slot, x, j, scale, res, size, dense, table, n_features):
    """Corners of point j into row ``slot`` of the rings (``ring_e``: 8 offsets ``e_c F`` into the
    level's table; ``ring_w``: 8 weights, then tx, ty, tz) and prefetch of their entries."""
    e, w, tx, ty, tz = _corners(x[j, 0], x[j, 1], x[j, 2], scale, res, size, dense)
    for c in range(8):
        off = e[c] * n_features
        ring_e[slot, c] = off
        ring_w[slot, c] = w[c]
        _prefetch(table, off)
    ring_w[slot, 8] = tx
    ring_w[slot, 9] = ty
    ring_w[slot, 10] = tz


@njit(parallel=True, fastmath=True, cache=True)
def grid_forward(x, params, offsets, scales, resolutions, dense, n_features, per_level, out):
    """Fills ``out`` [M, L*F] with the features of points ``x`` [M, 3]: column ``l F + f`` is
    ``sum_c w_c params[(offsets[l] + e_c) F + f]``; ``per_level`` [L, M, F] is scratch."""
    m = x.shape[0]
    n_levels = scales.shape[0]
    n_chunks = (m + CHUNK - 1) // CHUNK
    for lvl in range(n_levels):
        scale, res, dn = scales[lvl], resolutions[lvl], dense[lvl]
        size = offsets[lvl + 1] - offsets[lvl]
        table = params[offsets[lvl] * n_features : offsets[lvl + 1] * n_features]
        for chunk in prange(n_chunks):
            lo, hi = chunk * CHUNK, min(chunk * CHUNK + CHUNK, m)
            ring_e = np.empty((PREFETCH, 8), np.int64)
            ring_w = np.empty((PREFETCH, 11), np.float32)
            for j in range(lo, min(lo + PREFETCH, hi)):
                _stage(ring_e, ring_w, j % PREFETCH, x, j, scale, res, size, dn, table, n_features)
            for i in range(lo, hi):
                slot = i % PREFETCH
                for f in range(n_features):
                    acc = np.float32(0.0)
                    for c in range(8):
                        acc += ring_w[slot, c] * table[ring_e[slot, c] + f]
                    per_level[lvl, i, f] = acc
                if i + PREFETCH < hi:
                    _stage(ring_e, ring_w, slot, x, i + PREFETCH, scale, res, size, dn, table, n_features)
    for i in prange(m):
        for lvl in range(n_levels):
            for f in range(n_features):
                out[i, lvl * n_features + f] = per_level[lvl, i, f]


@njit(parallel=True, cache=True)
def level_major(grad_out, out):
    """Fills ``out`` [L, M, F] with dL/dout [M, L*F] (each level's gradients contiguous)."""
    n_levels, m, n_features = out.shape
    for i in prange(m):
        for lvl in range(n_levels):
            for f in range(n_features):
                out[lvl, i, f] = grad_out[i, lvl * n_features + f]


@njit(parallel=True, fastmath=True, cache=True)
def grid_backward_params(x, grad_lmf, offsets, scales, resolutions, dense, n_features, grad):
    """Fills ``grad`` [n_params] with dL/dparams from dL/dout level-major ``grad_lmf`` [L, M, F]:
    ``w_c dL/dout[i, l F + f]`` added at each corner's entry. Levels run in parallel, each thread
    zeroing and filling only the regions of its levels."""
    m = x.shape[0]
    n_levels = scales.shape[0]
    for lvl in prange(n_levels):
        scale, res, dn = scales[lvl], resolutions[lvl], dense[lvl]
        size = offsets[lvl + 1] - offsets[lvl]
        table = grad[offsets[lvl] * n_features : offsets[lvl + 1] * n_features]
        for q in range(table.shape[0]):
            table[q] = 0.0
        ring_e = np.empty((PREFETCH, 8), np.int64)
        ring_w = np.empty((PREFETCH, 11), np.float32)
        for j in range(min(PREFETCH, m)):
            _stage(ring_e, ring_w, j, x, j, scale, res, size, dn, table, n_features)
        for i in range(m):
            slot = i % PREFETCH
            for f in range(n_features):
                g = grad_lmf[lvl, i, f]
                for c in range(8):
                    table[ring_e[slot, c] + f] += ring_w[slot, c] * g
            if i + PREFETCH < m:
                _stage(ring_e, ring_w, slot, x, i + PREFETCH, scale, res, size, dn, table, n_features)


@njit(inline="always")
def _dot(table, offset, grad_lmf, lvl, i, n_features):
    """``sum_f dL/dout[i, l F + f] table[offset + f]``."""
    s = np.float32(0.0)
    for f in range(n_features):
        s += grad_lmf[lvl, i, f] * table[offset + f]
    return s


@njit(parallel=True, fastmath=True, cache=True)
def grid_backward_x(x, params, grad_lmf, offsets, scales, resolutions, dense, n_features, grad_x):
    """Adds dL/dx to ``grad_x`` [M, 3] (zeros on entry), from dL/dout level-major ``grad_lmf`` [L, M, F]: with ``s_c = sum_f dL/dout[i,
    l F + f] V_c[f]`` at corner c, ``dL/dx = sum_l s_l sum_{edges along x} (s_right - s_left) w_y w_z``
    (likewise y, z), tcnn's difference form of the trilinear derivative. ``floor`` contributes
    nothing (its jump is ignored, as in tcnn)."""
    m = x.shape[0]
    n_levels = scales.shape[0]
    n_chunks = (m + CHUNK - 1) // CHUNK
    f1 = np.float32(1.0)
    for lvl in range(n_levels):
        scale, res, dn = scales[lvl], resolutions[lvl], dense[lvl]
        size = offsets[lvl + 1] - offsets[lvl]
        table = params[offsets[lvl] * n_features : offsets[lvl + 1] * n_features]
        for chunk in prange(n_chunks):
            lo, hi = chunk * CHUNK, min(chunk * CHUNK + CHUNK, m)
            ring_e = np.empty((PREFETCH, 8), np.int64)
            ring_w = np.empty((PREFETCH, 11), np.float32)
            for j in range(lo, min(lo + PREFETCH, hi)):
                _stage(ring_e, ring_w, j % PREFETCH, x, j, scale, res, size, dn, table, n_features)
            for i in range(lo, hi):
                r = i % PREFETCH
                s0 = _dot(table, ring_e[r, 0], grad_lmf, lvl, i, n_features)
                s1 = _dot(table, ring_e[r, 1], grad_lmf, lvl, i, n_features)
                s2 = _dot(table, ring_e[r, 2], grad_lmf, lvl, i, n_features)
                s3 = _dot(table, ring_e[r, 3], grad_lmf, lvl, i, n_features)
                s4 = _dot(table, ring_e[r, 4], grad_lmf, lvl, i, n_features)
                s5 = _dot(table, ring_e[r, 5], grad_lmf, lvl, i, n_features)
                s6 = _dot(table, ring_e[r, 6], grad_lmf, lvl, i, n_features)
                s7 = _dot(table, ring_e[r, 7], grad_lmf, lvl, i, n_features)
                tx, ty, tz = ring_w[r, 8], ring_w[r, 9], ring_w[r, 10]
                ux, uy, uz = f1 - tx, f1 - ty, f1 - tz
                dx = (s1 - s0) * uy * uz + (s3 - s2) * ty * uz + (s5 - s4) * uy * tz + (s7 - s6) * ty * tz
                dy = (s2 - s0) * ux * uz + (s3 - s1) * tx * uz + (s6 - s4) * ux * tz + (s7 - s5) * tx * tz
                dz = (s4 - s0) * ux * uy + (s5 - s1) * tx * uy + (s6 - s2) * ux * ty + (s7 - s3) * tx * ty
                grad_x[i, 0] += scale * dx
                grad_x[i, 1] += scale * dy
                grad_x[i, 2] += scale * dz
                if i + PREFETCH < hi:
                    _stage(ring_e, ring_w, r, x, i + PREFETCH, scale, res, size, dn, table, n_features)
