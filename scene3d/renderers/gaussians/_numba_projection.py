"""Hand-written backward of :func:`scene3d.renderers.gaussians.projection.project_gaussians`, for
the CPU backend.

The forward values always come from the torch code (run without autograd), so every backend sees
bit-identical projected Gaussians; only the gradient is computed here, in float64, by recomputing
the forward per (camera, Gaussian). It replaces autograd's walk over the ~600 small tensor
operations of the projection, which dominates on small scenes.

Notation (per camera c and Gaussian n): q the quaternion, R(q/|q|) the rotation, M = R S, W and t
the camera rotation and translation, (X, Y, Z) = W m + t, J the pinhole Jacobian at the clamped
(u, v) = (X/Z, Y/Z), T = J W (2x3), A = T M, the 2D covariance A A^T + eps2d I with entries
(a, b, c), the conic (c, -b, a) / det and, in antialiased mode, the opacity times
sqrt(det(A A^T) / det).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(inline="always")
def _rotation(w, x, y, z, R):
    R[0, 0] = 1 - 2 * (y * y + z * z)
    R[0, 1] = 2 * (x * y - w * z)
    R[0, 2] = 2 * (x * z + w * y)
    R[1, 0] = 2 * (x * y + w * z)
    R[1, 1] = 1 - 2 * (x * x + z * z)
    R[1, 2] = 2 * (y * z - w * x)
    R[2, 0] = 2 * (x * z - w * y)
    R[2, 1] = 2 * (y * z + w * x)
    R[2, 2] = 1 - 2 * (x * x + y * y)


@njit(inline="always")
def _rotation_vjp(w, x, y, z, G):
    """d(sum G * R) / d(w, x, y, z) for the unit quaternion (w, x, y, z)."""
    gw = 2 * (-z * G[0, 1] + y * G[0, 2] + z * G[1, 0] - x * G[1, 2] - y * G[2, 0] + x * G[2, 1])
    gx = 2 * (y * G[0, 1] + z * G[0, 2] + y * G[1, 0] - w * G[1, 2] + z * G[2, 0] + w * G[2, 1]) - 4 * x * (
        G[1, 1] + G[2, 2]
    )
    gy = 2 * (x * G[0, 1] + w * G[0, 2] + x * G[1, 0] + z * G[1, 2] - w * G[2, 0] + z * G[2, 1]) - 4 * y * (
        G[0, 0] + G[2, 2]
    )
    gz = 2 * (-w * G[0, 1] + x * G[0, 2] + w * G[1, 0] + y * G[1, 2] + x * G[2, 0] + y * G[2, 1]) - 4 * z * (
        G[0, 0] + G[1, 1]
    )
    return gw, gx, gy, gz


@njit(inline="always", error_model="numpy")
def _backward_one(
    n, means, quats, scales, opacities, viewmats, intrinsics, width, height, near, far, eps2d, antialiased,
    g_means2d, g_conics, g_depths, g_opacities, out_m, out_q, out_s, out_o, R, M, T, A, gA, gT, gM, gR, gm,
):
    """The gradient of one Gaussian, summed over the cameras (scratch arrays passed in)."""
    C = viewmats.shape[0]
    gM[:, :] = 0.0
    gm[:] = 0.0
    qw, qx, qy, qz = float(quats[n, 0]), float(quats[n, 1]), float(quats[n, 2]), float(quats[n, 3])
    qn = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
    w, x, y, z = qw / qn, qx / qn, qy / qn, qz / qn
    _rotation(w, x, y, z, R)
    s0, s1, s2 = float(scales[n, 0]), float(scales[n, 1]), float(scales[n, 2])
    for j in range(3):
        M[j, 0], M[j, 1], M[j, 2] = R[j, 0] * s0, R[j, 1] * s1, R[j, 2] * s2
    mx, my, mz = float(means[n, 0]), float(means[n, 1]), float(means[n, 2])
    o = float(opacities[n])
    g_o = 0.0
    for cam in range(C):
        X = viewmats[cam, 0, 0] * mx + viewmats[cam, 0, 1] * my + viewmats[cam, 0, 2] * mz + viewmats[cam, 0, 3]
        Y = viewmats[cam, 1, 0] * mx + viewmats[cam, 1, 1] * my + viewmats[cam, 1, 2] * mz + viewmats[cam, 1, 3]
        Z = viewmats[cam, 2, 0] * mx + viewmats[cam, 2, 1] * my + viewmats[cam, 2, 2] * mz + viewmats[cam, 2, 3]
        in_depth = near <= Z <= far
        Zs = Z if in_depth else 1.0
        fx, fy, cx, cy = float(intrinsics[cam, 0]), float(intrinsics[cam, 1]), float(intrinsics[cam, 2]), float(intrinsics[cam, 3])
        lim_xp = (width - cx) / fx + 0.15 * width / fx
        lim_xn = cx / fx + 0.15 * width / fx
        lim_yp = (height - cy) / fy + 0.15 * height / fy
        lim_yn = cy / fy + 0.15 * height / fy
        xz, yz = X / Zs, Y / Zs
        u_free = -lim_xn < xz < lim_xp
        v_free = -lim_yn < yz < lim_yp
        u = min(max(xz, -lim_xn), lim_xp)
        v = min(max(yz, -lim_yn), lim_yp)
        gx, gy = fx / Zs, fy / Zs
        for k in range(3):
            T[0, k] = gx * (viewmats[cam, 0, k] - u * viewmats[cam, 2, k])
            T[1, k] = gy * (viewmats[cam, 1, k] - v * viewmats[cam, 2, k])
        for i in range(2):
            for k in range(3):
                A[i, k] = T[i, 0] * M[0, k] + T[i, 1] * M[1, k] + T[i, 2] * M[2, k]
        a0 = A[0, 0] ** 2 + A[0, 1] ** 2 + A[0, 2] ** 2
        b0 = A[0, 0] * A[1, 0] + A[0, 1] * A[1, 1] + A[0, 2] * A[1, 2]
        c0 = A[1, 0] ** 2 + A[1, 1] ** 2 + A[1, 2] ** 2
        det_orig = a0 * c0 - b0 * b0
        a, c = a0 + eps2d, c0 + eps2d
        det = a * c - b0 * b0
        det_ok = det > 0
        ds = det if det_ok else 1.0

        # opacity (and the antialiasing compensation)
        G_op = float(g_opacities[cam, n])
        G_det_orig, G_ds = 0.0, 0.0
        if antialiased:
            r = det_orig / ds
            comp = math.sqrt(r) if r > 0 else 0.0
            g_o += G_op * comp
            if r > 0:
                G_r = G_op * o * 0.5 / comp
                G_det_orig = G_r / ds
                G_ds = -G_r * det_orig / (ds * ds)
        else:
            g_o += G_op
        # conic = (c, -b, a) / ds
        G0, G1, G2 = float(g_conics[cam, n, 0]), float(g_conics[cam, n, 1]), float(g_conics[cam, n, 2])
        G_c, G_b, G_a = G0 / ds, -G1 / ds, G2 / ds
        G_ds += -(G0 * c - G1 * b0 + G2 * a) / (ds * ds)
        G_det = G_ds if det_ok else 0.0
        G_a += G_det * c
        G_c += G_det * a
        G_b += -2.0 * b0 * G_det
        G_a0 = G_a + G_det_orig * c0
        G_c0 = G_c + G_det_orig * a0
        G_b0 = G_b - 2.0 * b0 * G_det_orig
        for k in range(3):
            gA[0, k] = 2.0 * A[0, k] * G_a0 + A[1, k] * G_b0
            gA[1, k] = 2.0 * A[1, k] * G_c0 + A[0, k] * G_b0
        for i in range(2):
            for j in range(3):
                gT[i, j] = gA[i, 0] * M[j, 0] + gA[i, 1] * M[j, 1] + gA[i, 2] * M[j, 2]
        for j in range(3):
            for k in range(3):
                gM[j, k] += T[0, j] * gA[0, k] + T[1, j] * gA[1, k]
        # T = diag(gx, gy) (viewmats[cam, :2] - (u, v) viewmats[cam, 2])
        G_gx = G_gy = G_u = G_v = 0.0
        for k in range(3):
            G_gx += gT[0, k] * (viewmats[cam, 0, k] - u * viewmats[cam, 2, k])
            G_gy += gT[1, k] * (viewmats[cam, 1, k] - v * viewmats[cam, 2, k])
            G_u -= gT[0, k] * gx * viewmats[cam, 2, k]
            G_v -= gT[1, k] * gy * viewmats[cam, 2, k]
        G_X, G_Y = 0.0, 0.0
        G_Zs = -(G_gx * fx + G_gy * fy) / (Zs * Zs)
        if u_free:
            G_X += G_u / Zs
            G_Zs -= G_u * X / (Zs * Zs)
        if v_free:
            G_Y += G_v / Zs
            G_Zs -= G_v * Y / (Zs * Zs)
        # means2d = (fx X, fy Y) / Zs + (cx, cy)
        Gmx, Gmy = float(g_means2d[cam, n, 0]), float(g_means2d[cam, n, 1])
        G_X += Gmx * fx / Zs
        G_Y += Gmy * fy / Zs
        G_Zs -= (Gmx * fx * X + Gmy * fy * Y) / (Zs * Zs)
        G_Z = float(g_depths[cam, n]) + (G_Zs if in_depth else 0.0)
        for d in range(3):
            gm[d] += viewmats[cam, 0, d] * G_X + viewmats[cam, 1, d] * G_Y + viewmats[cam, 2, d] * G_Z
    # M = R S
    for j in range(3):
        gR[j, 0], gR[j, 1], gR[j, 2] = gM[j, 0] * s0, gM[j, 1] * s1, gM[j, 2] * s2
    for k in range(3):
        out_s[n, k] = gM[0, k] * R[0, k] + gM[1, k] * R[1, k] + gM[2, k] * R[2, k]
    gw, gx_, gy_, gz_ = _rotation_vjp(w, x, y, z, gR)
    dot = w * gw + x * gx_ + y * gy_ + z * gz_  # through q / |q|
    out_q[n, 0] = (gw - w * dot) / qn
    out_q[n, 1] = (gx_ - x * dot) / qn
    out_q[n, 2] = (gy_ - y * dot) / qn
    out_q[n, 3] = (gz_ - z * dot) / qn
    for d in range(3):
        out_m[n, d] = gm[d]
    out_o[n] = g_o


@njit(parallel=True, cache=True, error_model="numpy")
def projection_backward(
    means, quats, scales, opacities, viewmats, intrinsics, width, height, near, far, eps2d, antialiased,
    g_means2d, g_conics, g_depths, g_opacities,
):
    """Gradients of the projection.

    Args:
        means [N, 3], quats [N, 4], scales [N, 3], opacities [N]: the inputs (float32);
        viewmats [C, 4, 4] world-to-camera; intrinsics [C, 4] (fx, fy, cx, cy);
        g_means2d [C, N, 2], g_conics [C, N, 3], g_depths [C, N], g_opacities [C, N]: gradients
        of the outputs (float32).
    Returns:
        dL/d means [N, 3], quats [N, 4], scales [N, 3], opacities [N] (float32).
    """
    N, C = means.shape[0], viewmats.shape[0]
    out_m = np.zeros((N, 3), np.float32)
    out_q = np.zeros((N, 4), np.float32)
    out_s = np.zeros((N, 3), np.float32)
    out_o = np.zeros(N, np.float32)
    chunk = 256
    for first in prange((N + chunk - 1) // chunk):
        R = np.empty((3, 3))  # scratch, allocated once per chunk of Gaussians
        M = np.empty((3, 3))
        T = np.empty((2, 3))
        A = np.empty((2, 3))
        gA = np.empty((2, 3))
        gT = np.empty((2, 3))
        gM = np.empty((3, 3))
        gR = np.empty((3, 3))
        gm = np.empty(3)
        for n in range(first * chunk, min(N, (first + 1) * chunk)):
            _backward_one(
                n, means, quats, scales, opacities, viewmats, intrinsics, width, height, near, far, eps2d,
                antialiased, g_means2d, g_conics, g_depths, g_opacities, out_m, out_q, out_s, out_o,
                R, M, T, A, gA, gT, gM, gR, gm,
            )
    return out_m, out_q, out_s, out_o
