"""numba kernels of the ray path on the CPU, compiled on first use and cached on disk: the
tensor-decomposition features of :mod:`scene3d.renderers.rays.vm` and the occupied stretch of
each ray of :meth:`scene3d.renderers.rays.occupancy.OccupancyGrid.ray_spans`. They are defined at
module level so numba's cache finds them again in the next process (kernels made inside a function
were compiled anew each time, about 3.5 s)."""

import numpy as np
from numba import njit, prange


@njit(inline="always")
def _taps(coord, size):
    """(i0, i1, w0, w1) of a linear interpolation with align_corners; taps outside get weight 0."""
    f = (coord + np.float32(1.0)) * np.float32(0.5) * np.float32(size - 1)
    i0 = int(np.floor(f))
    t = np.float32(f - i0)
    w0, w1 = np.float32(1.0) - t, t
    i1 = i0 + 1
    if i0 < 0 or i0 >= size:
        w0 = np.float32(0.0)
        i0 = 0
    if i1 < 0 or i1 >= size:
        w1 = np.float32(0.0)
        i1 = 0
    return i0, i1, w0, w1


@njit(inline="always")
def _product(x, p0, p1, p2, l0, l1, l2, plane_index, c_count, out, offset, accumulate):
    if plane_index == 0:
        pl, ln, a, b, v = p0, l0, 0, 1, 2
    elif plane_index == 1:
        pl, ln, a, b, v = p1, l1, 0, 2, 1
    else:
        pl, ln, a, b, v = p2, l2, 1, 2, 0
    h, w = pl.shape[0], pl.shape[1]
    x0, x1, wx0, wx1 = _taps(x[a], w)
    y0, y1, wy0, wy1 = _taps(x[b], h)
    z0, z1, wz0, wz1 = _taps(x[v], ln.shape[0])
    w00, w01, w10, w11 = wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1
    total = np.float32(0.0)
    for c in range(c_count):
        m = w00 * pl[y0, x0, c] + w01 * pl[y0, x1, c] + w10 * pl[y1, x0, c] + w11 * pl[y1, x1, c]
        s = m * (wz0 * ln[z0, c] + wz1 * ln[z1, c])
        if accumulate:
            total += s
        else:
            out[offset + c] = s
    return total


@njit(parallel=True, fastmath=True, cache=True)
def vm_density(x, p0, p1, p2, l0, l1, l2, c_count):
    n = x.shape[0]
    out = np.empty(n, np.float32)
    dummy = np.empty(0, np.float32)
    for i in prange(n):
        acc = np.float32(0.0)
        for p in range(3):
            acc += _product(x[i], p0, p1, p2, l0, l1, l2, p, c_count, dummy, 0, True)
        out[i] = acc
    return out


@njit(parallel=True, fastmath=True, cache=True)
def vm_stacked(x, p0, p1, p2, l0, l1, l2, c_count):
    n = x.shape[0]
    out = np.empty((n, 3 * c_count), np.float32)
    for i in prange(n):
        for p in range(3):
            _product(x[i], p0, p1, p2, l0, l1, l2, p, c_count, out[i], p * c_count, False)
    return out


@njit(inline="always")
def _occupied(o, d, near, far, k, step, binary, r, box):
    ts = near + np.float32(k) * step
    te = min(ts + step, far)
    tm = np.float32(0.5) * (ts + te)
    idx = 0
    for axis in range(3):
        x = o[axis] + d[axis] * tm
        lo, hi = box[axis], box[axis + 3]
        if not (x >= lo and x <= hi):
            return False
        i = int(np.floor((x - lo) / (hi - lo) * np.float32(r)))
        i = min(max(i, 0), r - 1)
        idx = idx * r + i
    return binary[idx] != 0


@njit(parallel=True, cache=True)
def ray_spans(origins, dirs, near, far, steps, step, binary, r, box):
    n = origins.shape[0]
    first = np.empty(n, np.int64)
    last = np.empty(n, np.int64)
    for i in prange(n):
        s = steps[i]
        f = s
        for k in range(s):
            if _occupied(origins[i], dirs[i], near[i], far[i], k, step, binary, r, box):
                f = k
                break
        l_ = -1
        if f < s:
            for k in range(s - 1, f - 1, -1):
                if _occupied(origins[i], dirs[i], near[i], far[i], k, step, binary, r, box):
                    l_ = k
                    break
        if l_ < 0:
            first[i], last[i] = 1, 0
        else:
            first[i], last[i] = max(f - 1, 0), min(l_ + 1, s - 1)
    return first, last


@njit(parallel=True, cache=True)
def block_samples(origins, dirs, near, far, first, last, alive, start, block, step, binary, r, box, use_grid):
    """The intervals ``first + start .. first + start + block - 1`` of each alive ray: their
    bounds [A, block], midpoints [A, block, 3] and validity (before ``far``, within the ray's
    stretch, in an occupied cell when ``use_grid``), with the float32 operations of the torch
    path (``t = near + k step``, the last interval cut at ``far``)."""
    a = alive.shape[0]
    t0 = np.empty((a, block), np.float32)
    t1 = np.empty((a, block), np.float32)
    mids = np.empty((a, block, 3), np.float32)
    valid = np.zeros((a, block), np.bool_)
    for j in prange(a):
        i = alive[j]
        for c in range(block):
            k = first[i] + start + c
            ts = near[i] + np.float32(k) * step
            te = min(ts + step, far[i])
            tm = np.float32(0.5) * (ts + te)
            t0[j, c], t1[j, c] = ts, te
            for axis in range(3):
                mids[j, c, axis] = origins[i, axis] + dirs[i, axis] * tm
            if ts < far[i] and k <= last[i]:
                valid[j, c] = _occupied(origins[i], dirs[i], near[i], far[i], k, step, binary, r, box) if use_grid else True
    return t0, t1, mids, valid
