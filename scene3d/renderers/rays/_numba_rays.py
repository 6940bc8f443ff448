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


@njit(inline="always")
def _plane_line(xa, xb, xv, pl, ln, c_count):
    """sum over c < c_count of plane_c(xa, xb) * line_c(xv), as :func:`_product` accumulates it."""
    h, w = pl.shape[0], pl.shape[1]
    x0, x1, wx0, wx1 = _taps(xa, w)
    y0, y1, wy0, wy1 = _taps(xb, h)
    z0, z1, wz0, wz1 = _taps(xv, ln.shape[0])
    w00, w01, w10, w11 = wy0 * wx0, wy0 * wx1, wy1 * wx0, wy1 * wx1
    total = np.float32(0.0)
    for c in range(c_count):
        m = w00 * pl[y0, x0, c] + w01 * pl[y0, x1, c] + w10 * pl[y1, x0, c] + w11 * pl[y1, x1, c]
        total += m * (wz0 * ln[z0, c] + wz1 * ln[z1, c])
    return total


@njit(parallel=True, fastmath=True, cache=True)
def march_vm(origins, dirs, near, far, steps, step, levels, table, box, use_grid, lo, size, p0, p1, p2, l0, l1, l2, c_count, shift, scale,
             weight_threshold, early_stop, cap, heaviest):  # fmt: skip
    """Each ray marched front to back in one pass (see :func:`scene3d.renderers.rays.march.march_rays`):
    interval k spans ``[near + k step, min(near + (k + 1) step, far))``; an interval whose midpoint
    lies in an empty occupancy cell (``levels``/``table`` of
    :meth:`~scene3d.renderers.rays.occupancy.OccupancyGrid.levels`; level 0 is the grid) is skipped, and the march jumps to the first interval whose midpoint leaves the
    largest empty cell around it of any level (or to the one before, when that one's midpoint is
    within rounding of the cell's face, and the grid decides); elsewhere the VM
    density ``softplus(sum_p sum_{c < c_count} M^p_c l^p_c + shift) * scale`` is evaluated,
    composited, and the ray stops once its transmittance before a sample is ``early_stop`` or
    less (when ``early_stop > 0``). Samples whose weight exceeds ``weight_threshold`` are recorded
    for shading, at most ``cap`` per ray (``count`` says how many there were; more than ``cap``:
    the ray must be marched again by the caller); with ``heaviest``, a ray with none records its
    heaviest sample. Returns (midpoint t [N, cap], weight [N, cap],
    count [N], accumulated opacity [N], sum of w t [N], density evaluations [N])."""
    n = origins.shape[0]
    t_out = np.zeros((n, cap), np.float32)
    w_out = np.zeros((n, cap), np.float32)
    count = np.zeros(n, np.int64)
    acc = np.zeros(n, np.float32)
    dep = np.zeros(n, np.float32)
    evaluated = np.zeros(n, np.int64)
    half = np.float32(0.5)
    one = np.float32(1.0)
    two = np.float32(2.0)
    r = table[0, 1]
    n_levels = table.shape[0]
    margin = np.float32(1e-3) * step  # far above float32 rounding of t, far below an interval
    ext = np.empty(3, np.float32)
    for axis in range(3):
        ext[axis] = box[axis + 3] - box[axis]
    for i in prange(n):
        o = (origins[i, 0], origins[i, 1], origins[i, 2])
        d = (dirs[i, 0], dirs[i, 1], dirs[i, 2])
        t_near, t_far = near[i], far[i]
        transmittance = one
        a_sum = np.float32(0.0)
        d_sum = np.float32(0.0)
        best_w = np.float32(0.0)
        best_t = np.float32(0.0)
        k = 0
        while k < steps[i]:
            ts = t_near + np.float32(k) * step
            if not ts < t_far:
                break
            te = min(ts + step, t_far)
            tm = half * (ts + te)
            px, py, pz = o[0] + d[0] * tm, o[1] + d[1] * tm, o[2] + d[2] * tm
            if use_grid:
                if not (px >= box[0] and px <= box[3] and py >= box[1] and py <= box[4] and pz >= box[2] and pz <= box[5]):
                    k += 1
                    continue
                ix = min(max(int(np.floor((px - box[0]) / ext[0] * np.float32(r))), 0), r - 1)
                iy = min(max(int(np.floor((py - box[1]) / ext[1] * np.float32(r))), 0), r - 1)
                iz = min(max(int(np.floor((pz - box[2]) / ext[2] * np.float32(r))), 0), r - 1)
                if levels[(ix * r + iy) * r + iz] == 0:
                    level = 0  # the coarsest level whose cell here is still empty
                    while level + 1 < n_levels:
                        sh = level + 1
                        rr = table[sh, 1]
                        if levels[table[sh, 0] + ((ix >> sh) * rr + (iy >> sh)) * rr + (iz >> sh)] != 0:
                            break
                        level = sh
                    t_exit = np.float32(np.inf)  # where the ray leaves that cell
                    for axis in range(3):
                        i_a = (ix if axis == 0 else (iy if axis == 1 else iz)) >> level
                        cell = ext[axis] / np.float32(table[level, 1])
                        if d[axis] > 0:
                            t_exit = min(t_exit, (box[axis] + np.float32(i_a + 1) * cell - o[axis]) / d[axis])
                        elif d[axis] < 0:
                            t_exit = min(t_exit, (box[axis] + np.float32(i_a) * cell - o[axis]) / d[axis])
                    jump = k + 1
                    if t_exit < np.float32(np.inf):
                        j = int(np.ceil((t_exit - t_near) / step - half))  # the first interval whose midpoint is past the exit
                        if t_near + (np.float32(j) - half) * step > t_exit - margin:  # the one before ends at the face: let the grid decide
                            j -= 1
                        jump = max(jump, j)
                    k = jump
                    continue
            xa = (px - lo[0]) / size[0] * two - one
            xb = (py - lo[1]) / size[1] * two - one
            xc = (pz - lo[2]) / size[2] * two - one
            feat = _plane_line(xa, xb, xc, p0, l0, c_count) + _plane_line(xa, xc, xb, p1, l1, c_count) + _plane_line(xb, xc, xa, p2, l2, c_count)
            feat += shift
            sigma = (feat if feat > np.float32(20.0) else np.float32(np.log1p(np.exp(feat)))) * scale
            evaluated[i] += 1
            alpha = one - np.float32(np.exp(-sigma * (te - ts)))
            w = transmittance * alpha
            a_sum += w
            d_sum += w * tm
            if w > weight_threshold:
                c = count[i]
                if c < cap:
                    t_out[i, c] = tm
                    w_out[i, c] = w
                count[i] = c + 1
            elif w > best_w:
                best_w, best_t = w, tm
            transmittance *= one - alpha
            if early_stop > 0 and transmittance <= early_stop:
                break
            k += 1
        if heaviest and count[i] == 0 and best_w > 0:
            t_out[i, 0], w_out[i, 0], count[i] = best_t, best_w, 1
        acc[i] = a_sum
        dep[i] = d_sum
    return t_out, w_out, count, acc, dep, evaluated


@njit(inline="always")
def _sincos_pi(u):
    """(sin(pi u), cos(pi u)) of a float32 u: u reduced to r = u - round(u) in [-1/2, 1/2], then
    Taylor polynomials in pi r to x^11 and x^12 (error below 6e-8 there), the sign of round(u)'s
    parity restored. Plain arithmetic, so the loop around it vectorises."""
    n = np.floor(u + np.float32(0.5))
    x = (u - n) * np.float32(np.pi)
    x2 = x * x
    s = x * (np.float32(1.0) + x2 * (np.float32(-1.0 / 6.0) + x2 * (np.float32(1.0 / 120.0) + x2 * (np.float32(-1.0 / 5040.0)
             + x2 * (np.float32(1.0 / 362880.0) + x2 * np.float32(-1.0 / 39916800.0))))))  # fmt: skip
    c = np.float32(1.0) + x2 * (np.float32(-0.5) + x2 * (np.float32(1.0 / 24.0) + x2 * (np.float32(-1.0 / 720.0) + x2 * (np.float32(1.0 / 40320.0)
        + x2 * (np.float32(-1.0 / 3628800.0) + x2 * np.float32(1.0 / 479001600.0))))))  # fmt: skip
    sign = np.float32(1.0) - np.float32(2.0) * np.float32(np.int64(n) & 1)
    return s * sign, c * sign


@njit(parallel=True, fastmath=True, cache=True)
def shading_inputs(feat, dirs, feat_freqs, dir_freqs):
    """The input rows of TensoRF's shading network for features [N, F] seen along directions
    [N, 3]: ``[feat, dirs, sin(feat_j pi 2^f), cos(feat_j pi 2^f), sin(dir_j pi 2^f), cos(dir_j
    pi 2^f)]`` with each sine and cosine block ordered (j, f) -> j * freqs + f, as
    :func:`scene3d.models.slimmerf.positional_encoding` lays them out. Each row's sines and
    cosines come from one reduction (:func:`_sincos_pi`) and the double-angle formulas."""
    n, a = feat.shape
    out = np.empty((n, a + 3 + 2 * a * feat_freqs + 6 * dir_freqs), np.float32)
    two = np.float32(2.0)
    for i in prange(n):
        for j in range(a):
            out[i, j] = feat[i, j]
        for j in range(3):
            out[i, a + j] = dirs[i, j]
        base = a + 3
        for j in range(a):
            s, c = _sincos_pi(feat[i, j])
            for f in range(feat_freqs):
                out[i, base + j * feat_freqs + f] = s
                out[i, base + a * feat_freqs + j * feat_freqs + f] = c
                s, c = two * s * c, c * c - s * s
        base = a + 3 + 2 * a * feat_freqs
        for j in range(3):
            s, c = _sincos_pi(dirs[i, j])
            for f in range(dir_freqs):
                out[i, base + j * dir_freqs + f] = s
                out[i, base + 3 * dir_freqs + j * dir_freqs + f] = c
                s, c = two * s * c, c * c - s * s
    return out
