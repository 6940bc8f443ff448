"""Similarity alignment: exact recovery, noise, reflections, and camera pose agreement."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scene3d.align import camera_pose_agreement, rotation_angle_deg, umeyama


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random [3, 3] rotation (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def axis_angle(axis: np.ndarray, degrees: float) -> np.ndarray:
    """[3, 3] rotation by ``degrees`` about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = np.radians(degrees)
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


similarities = st.tuples(
    st.integers(0, 2**32 - 1),  # seed for points and rotation
    st.integers(3, 60),  # number of points
    st.floats(0.01, 100.0),  # scale
    st.floats(-1e3, 1e3),  # translation magnitude
)


@settings(max_examples=200, deadline=None)
@given(similarities)
def test_umeyama_recovers_an_exact_similarity(params):
    seed, n, scale, shift = params
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(n, 3)) * rng.uniform(0.1, 10.0)
    rotation, translation = random_rotation(rng), rng.normal(size=3) * shift
    dst = scale * src @ rotation.T + translation

    s, r, t = umeyama(src, dst)
    assert s == pytest.approx(scale, rel=1e-8)
    assert np.allclose(r, rotation, atol=1e-8)
    assert np.linalg.det(r) == pytest.approx(1.0)
    assert np.allclose(s * src @ r.T + t, dst, atol=1e-7 * (1 + np.abs(dst).max()))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(20, 200), st.floats(1e-4, 1e-2))
def test_umeyama_with_small_noise_has_small_error(seed, n, sigma):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(n, 3))
    rotation, translation, scale = random_rotation(rng), rng.normal(size=3), rng.uniform(0.5, 2.0)
    dst = scale * src @ rotation.T + translation + rng.normal(size=(n, 3)) * sigma

    s, r, t = umeyama(src, dst)
    assert abs(s / scale - 1) < 20 * sigma
    assert rotation_angle_deg(r, rotation) < np.degrees(20 * sigma)
    residual = np.linalg.norm(s * src @ r.T + t - dst, axis=1)
    assert residual.mean() < 3 * sigma


def test_umeyama_never_returns_a_reflection():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(30, 3))
    mirrored = src * np.array([1.0, 1.0, -1.0])  # no rotation maps src onto this exactly
    s, r, _ = umeyama(src, mirrored)
    assert np.linalg.det(r) == pytest.approx(1.0)
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert 0 < s < 1


def test_umeyama_without_scale_is_rigid():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(10, 3))
    rotation = random_rotation(rng)
    s, r, t = umeyama(src, 3.0 * src @ rotation.T + 1.0, with_scale=False)
    assert s == 1.0 and np.allclose(r, rotation, atol=1e-8)


@pytest.mark.parametrize(
    "src, dst",
    [
        (np.zeros((2, 3)), np.zeros((2, 3))),  # too few points
        (np.ones((5, 3)), np.zeros((5, 3))),  # all source points coincide
        (np.zeros((5, 2)), np.zeros((5, 2))),  # not 3D
        (np.full((4, 3), np.nan), np.zeros((4, 3))),
    ],
)
def test_umeyama_rejects_degenerate_input(src, dst):
    with pytest.raises(ValueError):
        umeyama(src, dst)


def test_rotation_angle_is_accurate_for_tiny_and_large_angles():
    for degrees in (1e-6, 0.25, 90.0, 179.9):
        assert rotation_angle_deg(np.eye(3), axis_angle([1, 2, 3], degrees)) == pytest.approx(degrees, rel=1e-6)


def make_poses(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 4, 4] random camera-to-world poses."""
    c2w = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        c2w[i, :3, :3] = random_rotation(rng)
    c2w[:, :3, 3] = rng.normal(size=(n, 3)) * 2.0
    return c2w


def test_pose_agreement_is_zero_up_to_a_similarity():
    rng = np.random.default_rng(2)
    dst = make_poses(rng, 12)
    rotation, scale, translation = random_rotation(rng), 0.3, rng.normal(size=3)
    # src = dst seen in another world frame: x_src = scale * R x_dst + t.
    src = dst.copy()
    src[:, :3, :3] = rotation @ dst[:, :3, :3]
    src[:, :3, 3] = scale * dst[:, :3, 3] @ rotation.T + translation

    result = camera_pose_agreement(src, dst)
    assert result["num_cameras"] == 12
    assert result["scale"] == pytest.approx(1 / scale)
    assert result["centre_error_max"] < 1e-9 and result["rotation_error_deg_max"] < 1e-6
    radius = np.linalg.norm(dst[:, :3, 3] - dst[:, :3, 3].mean(0), axis=1).max()
    assert result["scene_radius"] == pytest.approx(radius)


def test_pose_agreement_reports_a_perturbed_camera():
    rng = np.random.default_rng(3)
    dst = make_poses(rng, 20)
    src = dst.copy()
    src[5, :3, :3] = src[5, :3, :3] @ axis_angle([0, 0, 1], 2.0)  # rolled 2 degrees about its optical axis
    result = camera_pose_agreement(src, dst)
    assert result["rotation_error_deg_max"] == pytest.approx(2.0, abs=1e-6)
    assert result["rotation_error_deg_median"] < 1e-6
    assert result["centre_error_max"] < 1e-9

    src[7, :3, 3] += np.array([0.0, 0.0, 0.1])  # moved one centre: small errors spread over all cameras
    result = camera_pose_agreement(src, dst)
    assert 0.05 < result["centre_error_max"] < 0.1
    assert result["centre_error_rel_max"] == pytest.approx(result["centre_error_max"] / result["scene_radius"])


def test_pose_agreement_accepts_3x4_and_rejects_mismatched_shapes():
    poses = make_poses(np.random.default_rng(4), 5)
    assert camera_pose_agreement(poses[:, :3], poses[:, :3])["centre_error_max"] < 1e-9
    with pytest.raises(ValueError):
        camera_pose_agreement(poses, poses[:4])
