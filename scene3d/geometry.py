"""Rotation and rigid-transform maths: the one place scene3d converts quaternions, matrices and poses.

Conventions: quaternions are (w, x, y, z) and need not be unit on input (they are normalised);
rotation matrices act on column vectors; a pose is a [4, 4] matrix ``[[R, t], [0, 1]]``. The
torch functions work on batches ``[..., 4]`` / ``[..., 3, 3]`` / ``[..., 4, 4]`` in the input's
dtype; the numpy helpers (``quat_to_matrix``, ``matrix_to_quat``, ``slerp``, ``look_at``) take one
rotation or pose in float64 and exist for the viewer's and the camera paths' small numbers.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


# ---------------------------------------------------------------------------- torch, batched
def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Quaternions [..., 4] (w, x, y, z) -> rotation matrices [..., 3, 3]."""
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*q.shape[:-1], 3, 3)  # fmt: skip


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] (w, x, y, z) with ``w >= 0``.

    Each quaternion is computed from the largest of its four ``|q_i|`` candidates, so it is
    accurate for every rotation, half turns (``w`` near 0) included. Computed in float64.
    """
    m = R.to(torch.float64)
    trace = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    diag = torch.diagonal(m, dim1=-2, dim2=-1)
    cand = torch.stack([1 + trace, 1 + 2 * diag[..., 0] - trace, 1 + 2 * diag[..., 1] - trace, 1 + 2 * diag[..., 2] - trace], -1)  # 4 q_i^2
    i = torch.argmax(cand, dim=-1)
    S = 2 * torch.sqrt(torch.clamp(torch.gather(cand, -1, i[..., None])[..., 0], min=1e-300))  # = 4 |q_i|
    d21, d02, d10 = m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]
    s01, s02, s12 = m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1]
    options = torch.stack(
        [
            torch.stack([S / 4, d21 / S, d02 / S, d10 / S], -1),
            torch.stack([d21 / S, S / 4, s01 / S, s02 / S], -1),
            torch.stack([d02 / S, s01 / S, S / 4, s12 / S], -1),
            torch.stack([d10 / S, s02 / S, s12 / S, S / 4], -1),
        ],
        -2,
    )  # [..., 4 candidates, 4]
    q = torch.gather(options, -2, i[..., None, None].expand(*i.shape, 1, 4))[..., 0, :]
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def quaternion_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product ``a * b`` of quaternions [..., 4] (w, x, y, z); rotates by ``b`` then ``a``."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def rigid_inverse(T: Tensor) -> Tensor:
    """Inverse of rigid transforms [..., 4, 4] (rotation + translation)."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    out = torch.zeros_like(T)
    Rt = R.transpose(-1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3:] = -Rt @ t
    out[..., 3, 3] = 1.0
    return out


# ---------------------------------------------------------------------------- numpy, one at a time
def quat_to_matrix(wxyz) -> np.ndarray:
    """[3, 3] float64 rotation of one quaternion (w, x, y, z), any norm."""
    return quaternion_to_matrix(torch.as_tensor(np.asarray(wxyz, dtype=np.float64))).numpy()


def matrix_to_quat(R) -> np.ndarray:
    """Unit quaternion (w, x, y, z), ``w >= 0``, of one rotation matrix, float64."""
    return matrix_to_quaternion(torch.as_tensor(np.asarray(R, dtype=np.float64))).numpy()


def slerp(q0, q1, t: float) -> np.ndarray:
    """Spherical linear interpolation between unit quaternions, the shorter way round."""
    q0, q1 = np.asarray(q0, np.float64), np.asarray(q1, np.float64)
    dot = float(np.dot(q0, q1))
    if dot < 0:
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly equal: linear, renormalised
        q = q0 + t * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(min(dot, 1.0))
    return (math.sin((1 - t) * theta) * q0 + math.sin(t * theta) * q1) / math.sin(theta)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world [4, 4] at ``eye`` looking at ``target`` with image-up along ``up``."""
    fwd = target - eye
    fwd = fwd / np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    if np.linalg.norm(right) < 1e-8:
        right = np.cross(fwd, np.array([1.0, 0.0, 0.0]))
    right = right / np.linalg.norm(right)
    down = np.cross(fwd, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, fwd], -1)
    c2w[:3, 3] = eye
    return c2w
