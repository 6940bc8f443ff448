"""Similarity alignment of point sets and camera trajectories (numpy).

:func:`umeyama` finds the scale, rotation and translation that best map one point set onto another
(Umeyama 1991, least squares, never a reflection). :func:`camera_pose_agreement` uses it to compare
two estimates of the same cameras (for example SfM poses against a capture's ``transforms.json``),
which agree only up to a similarity because SfM fixes neither scale nor world frame.
"""

from __future__ import annotations

import numpy as np


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity minimising ``sum ||dst_i - (s R src_i + t)||^2``.

    Args:
        src: [N, 3] points, N >= 3, not all on one line.
        dst: [N, 3] corresponding points.
        with_scale: estimate the scale ``s``; otherwise ``s = 1`` (a rigid transform).

    Returns:
        ``(s, R, t)``: float scale, [3, 3] rotation with det +1, [3] translation, so that
        ``dst ≈ s * src @ R.T + t``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"umeyama needs two [N, 3] arrays of the same shape, got {src.shape} and {dst.shape}")
    if len(src) < 3:
        raise ValueError(f"umeyama needs at least 3 point pairs, got {len(src)}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("umeyama got non-finite coordinates")

    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    src_var = float((src_c**2).sum(axis=1).mean())
    if src_var <= 1e-300:
        raise ValueError("umeyama got source points that all coincide")

    cov = dst_c.T @ src_c / len(src)  # [3, 3]
    u, d, vt = np.linalg.svd(cov)
    sign = np.ones(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # the best orthogonal map is a reflection: flip the weakest axis
        sign[2] = -1.0
    rotation = (u * sign) @ vt
    scale = float((d * sign).sum() / src_var) if with_scale else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return scale, rotation, translation


def rotation_angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees of the rotation taking ``a`` to ``b``; both [..., 3, 3], result [...]."""
    rel = np.swapaxes(a, -1, -2) @ b
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    axis = np.stack([rel[..., 2, 1] - rel[..., 1, 2], rel[..., 0, 2] - rel[..., 2, 0], rel[..., 1, 0] - rel[..., 0, 1]], -1)
    sin = np.linalg.norm(axis, axis=-1) / 2.0
    return np.degrees(np.arctan2(sin, cos))  # accurate near 0 and 180 degrees, unlike arccos alone


def camera_pose_agreement(src_c2w: np.ndarray, dst_c2w: np.ndarray) -> dict[str, float]:
    """How well two sets of camera poses agree after the best similarity maps ``src`` onto ``dst``.

    Both inputs are [N, 4, 4] (or [N, 3, 4]) OpenCV camera-to-world matrices (x right, y down, z
    forward; convert OpenGL/Blender/NeRF poses by right-multiplying ``diag(1, -1, -1, 1)``), listing
    the same N >= 3 cameras in the same order. Camera centres are aligned with :func:`umeyama`; the
    rotation found is also applied to the ``src`` camera orientations before comparing them.

    Returns a dict of floats: ``num_cameras``, ``scale`` (of the src-to-dst similarity),
    ``scene_radius`` (largest distance of a dst centre from their mean), ``centre_error_{mean,median,max}``
    (dst units), ``centre_error_rel_{mean,median,max}`` (divided by the radius) and
    ``rotation_error_deg_{mean,median,max}``.
    """
    src_c2w = np.asarray(src_c2w, dtype=np.float64)
    dst_c2w = np.asarray(dst_c2w, dtype=np.float64)
    if src_c2w.shape[1:] not in ((4, 4), (3, 4)) or src_c2w.shape != dst_c2w.shape:
        shapes = f"{src_c2w.shape} and {dst_c2w.shape}"
        raise ValueError(f"camera_pose_agreement needs two [N, 4, 4] arrays of the same shape, got {shapes}")
    src_centres, dst_centres = src_c2w[:, :3, 3], dst_c2w[:, :3, 3]
    scale, rotation, translation = umeyama(src_centres, dst_centres)

    aligned = scale * src_centres @ rotation.T + translation
    centre_error = np.linalg.norm(aligned - dst_centres, axis=1)
    radius = float(np.linalg.norm(dst_centres - dst_centres.mean(axis=0), axis=1).max())
    rotation_error = rotation_angle_deg(rotation @ src_c2w[:, :3, :3], dst_c2w[:, :3, :3])

    result: dict[str, float] = {"num_cameras": len(src_c2w), "scale": scale, "scene_radius": radius}
    for name, values in (
        ("centre_error", centre_error),
        ("centre_error_rel", centre_error / radius if radius > 0 else np.full_like(centre_error, np.inf)),
        ("rotation_error_deg", rotation_error),
    ):
        result[f"{name}_mean"] = float(values.mean())
        result[f"{name}_median"] = float(np.median(values))
        result[f"{name}_max"] = float(values.max())
    return result
