"""Property-based tests of pose conventions, distortion and ray generation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from scene3d.cameras import (
    CameraModel,
    Cameras,
    distort,
    llff_to_opencv_c2w,
    normalized_to_camera_dirs,
    opencv_to_opengl_c2w,
    opengl_to_opencv_c2w,
    quaternion_to_matrix,
    rigid_inverse,
    undistort,
)

torch.set_default_dtype(torch.float32)
finite = dict(allow_nan=False, allow_infinity=False)
quats = st.lists(st.floats(-1, 1, **finite), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.2)
vec3 = st.lists(st.floats(-10, 10, **finite), min_size=3, max_size=3)


def pose(q, t) -> torch.Tensor:
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] = quaternion_to_matrix(torch.tensor(q, dtype=torch.float64))
    T[:3, 3] = torch.tensor(t, dtype=torch.float64)
    return T


@given(quats)
def test_quaternion_gives_rotation(q):
    R = quaternion_to_matrix(torch.tensor(q, dtype=torch.float64))
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-9)
    assert math.isclose(float(torch.linalg.det(R)), 1.0, abs_tol=1e-9)


@given(quats, vec3)
def test_rigid_inverse(q, t):
    T = pose(q, t)
    assert torch.allclose(rigid_inverse(T) @ T, torch.eye(4, dtype=torch.float64), atol=1e-9)


@given(quats, vec3)
def test_opengl_opencv_round_trip_and_axes(q, t):
    c2w_gl = pose(q, t)
    c2w_cv = opengl_to_opencv_c2w(c2w_gl)
    assert torch.allclose(opencv_to_opengl_c2w(c2w_cv), c2w_gl, atol=1e-12)
    # Same centre; OpenCV forward (+z) is OpenGL's -z; OpenCV down (+y) is OpenGL's -y.
    assert torch.allclose(c2w_cv[:3, 3], c2w_gl[:3, 3])
    assert torch.allclose(c2w_cv[:3, 2], -c2w_gl[:3, 2])
    assert torch.allclose(c2w_cv[:3, 1], -c2w_gl[:3, 1])
    assert math.isclose(float(torch.linalg.det(c2w_cv[:3, :3])), 1.0, abs_tol=1e-9)


@given(quats, vec3)
def test_llff_conversion(q, t):
    """LLFF columns are (down, right, back): the converted camera looks along -back."""
    c2w_cv = pose(q, t)
    right, down, fwd = c2w_cv[:3, 0], c2w_cv[:3, 1], c2w_cv[:3, 2]
    llff = torch.stack([down, right, -fwd, c2w_cv[:3, 3]], dim=-1)
    assert torch.allclose(llff_to_opencv_c2w(llff), c2w_cv, atol=1e-12)


def test_known_opengl_camera_looks_down_minus_z():
    c2w_gl = torch.eye(4)
    c2w_gl[2, 3] = 5.0
    cams = Cameras.create(rigid_inverse(opengl_to_opencv_c2w(c2w_gl)), 100, 100, 50, 40, 100, 80)
    uv, depth = cams.project(torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    assert depth[0, 0] == pytest.approx(5.0)
    assert uv[0, 0].tolist() == pytest.approx([50.0, 40.0])
    # World +y is image up (smaller v) for an OpenGL camera with y up.
    assert uv[0, 1, 0] > 50 and uv[0, 1, 1] < 40


radtan = st.tuples(st.floats(-0.3, 0.3), st.floats(-0.1, 0.1), st.floats(-0.01, 0.01), st.floats(-0.01, 0.01))
fisheye = st.tuples(st.floats(-0.1, 0.1), st.floats(-0.02, 0.02), st.floats(-0.005, 0.005), st.floats(-0.001, 0.001))
points2 = st.lists(st.tuples(st.floats(-0.6, 0.6), st.floats(-0.6, 0.6)), min_size=1, max_size=20)


@given(radtan, points2)
def test_radtan_undistort_inverts_distort(params, pts):
    xy = torch.tensor(pts, dtype=torch.float64)
    dist = torch.tensor(params, dtype=torch.float64)
    model = torch.tensor(int(CameraModel.OPENCV))
    back = undistort(distort(xy, model, dist), model, dist)
    assert torch.allclose(back, xy, atol=1e-7)


@given(fisheye, points2)
def test_fisheye_undistort_inverts_distort(params, pts):
    xy = torch.tensor(pts, dtype=torch.float64) * 1.5
    dist = torch.tensor(params, dtype=torch.float64)
    model = torch.tensor(int(CameraModel.OPENCV_FISHEYE))
    back = undistort(distort(xy, model, dist), model, dist)
    assert torch.allclose(back, xy, atol=1e-7)


def test_fisheye_directions_beyond_ninety_degrees():
    """A fisheye pixel far from the centre maps to a ray pointing backwards (z < 0)."""
    theta = torch.tensor([2.0])  # ~115 degrees off-axis, equidistant with no distortion
    dirs = normalized_to_camera_dirs(torch.stack([theta, torch.zeros(1)], -1), torch.tensor(int(CameraModel.OPENCV_FISHEYE)), torch.zeros(4))
    assert dirs[0, 2] < 0 and torch.allclose(torch.atan2(dirs[0, 0], dirs[0, 2]), theta)


def random_cameras(seed: int, model: CameraModel, params) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, generator=g, dtype=torch.float64)
    w2c = pose(q.tolist(), (torch.randn(3, generator=g, dtype=torch.float64)).tolist())
    return Cameras.create(w2c, 300.0, 310.0, 160.5, 119.0, 320, 240, model, [params])


@settings(deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(list(CameraModel)), radtan)
def test_rays_project_back_to_their_pixels(seed, model, params):
    if model in (CameraModel.PINHOLE, CameraModel.SIMPLE_PINHOLE):
        params = (0, 0, 0, 0)
    if model is CameraModel.OPENCV_FISHEYE:
        params = tuple(p * 0.2 for p in params)
    else:
        # A real lens maps its whole image one-to-one: the radial polynomial must not fold back
        # before the image corner (normalised radius 0.66 here), or corner pixels have no ray at all.
        k1, k2 = params[0], params[1]
        r = torch.linspace(0, 2, 2001, dtype=torch.float64)
        f = r * (1 + k1 * r**2 + k2 * r**4)
        folds = torch.nonzero(torch.diff(f) <= 0)
        reach = f[: int(folds[0]) + 1].max() if len(folds) else f.max()
        assume(reach > 0.75)
    cams = random_cameras(seed, model, params)
    g = torch.Generator().manual_seed(seed + 1)
    uv = torch.rand(50, 2, generator=g) * torch.tensor([320.0, 240.0])
    origins, dirs = cams.generate_rays(0, uv)
    assert torch.allclose(torch.linalg.norm(dirs, dim=-1), torch.ones(50), atol=1e-5)
    depth = 0.5 + torch.rand(50, 1, generator=g) * 5
    uv_back, z = cams.project(origins + depth * dirs)
    assert (z > 0).all()
    assert torch.allclose(uv_back[0], uv, atol=2e-3)


def test_whole_image_rays_and_batched_indices_agree():
    cams = Cameras.cat([random_cameras(1, CameraModel.OPENCV, (0.1, 0.01, 0.001, 0.0)), random_cameras(2, CameraModel.PINHOLE, (0, 0, 0, 0))])
    o, d = cams.generate_rays(1)
    assert o.shape == (240, 320, 3) and d.shape == (240, 320, 3)
    uv = torch.tensor([[0.5, 0.5], [319.5, 239.5]])
    o2, d2 = cams.generate_rays(torch.tensor([1, 1]), uv)
    assert torch.allclose(d2[0], d[0, 0], atol=1e-6) and torch.allclose(d2[1], d[-1, -1], atol=1e-6)


@given(st.integers(1, 8))
def test_downscaled_intrinsics_keep_pixel_geometry(factor):
    """A world point lands on the same fraction of the image before and after downscaling."""
    cams = random_cameras(3, CameraModel.OPENCV, (0.05, 0.0, 0.0, 0.0))
    small = cams.downscaled(factor)
    pts = cams.generate_rays(0, torch.tensor([[100.0, 50.0], [10.0, 200.0]]))
    world = pts[0] + 3 * pts[1]
    uv_full, _ = cams.project(world)
    uv_small, _ = small.project(world)
    ratio = torch.stack([small.width.float() / cams.width.float(), small.height.float() / cams.height.float()], -1)
    assert torch.allclose(uv_small[0], uv_full[0] * ratio, atol=1e-3)


@given(quats, vec3, st.floats(0.1, 10))
def test_world_similarity_keeps_projections(q, t, s):
    cams = random_cameras(4, CameraModel.OPENCV, (0.05, 0.01, 0.0, 0.0))
    T = pose(q, t)
    T[:3, :3] *= s
    pts = cams.generate_rays(0, torch.tensor([[100.0, 50.0], [10.0, 200.0]]))
    world = (pts[0] + 2 * pts[1]).double()
    moved = world @ T[:3, :3].T + T[:3, 3]
    uv_a, za = cams.project(world.float())
    uv_b, zb = cams.transformed(T.float()).project(moved.float())
    assert torch.allclose(uv_a, uv_b, atol=5e-2)
    assert torch.allclose(za * s, zb, rtol=1e-3)


def test_cameras_moved_off_the_cpu_remember_their_host_copy():
    """Sizes and camera models are read on the host without waiting for the device: cameras moved
    to a device keep the CPU copy they came from, also through indexing (the meta device stands
    in for a GPU here: its tensors have shapes but no values)."""
    cams = Cameras.create(torch.eye(4).expand(3, 4, 4), 50.0, 50.0, 20.0, 15.0, [40, 40, 30], 30)
    moved = cams.to("meta")
    assert moved.world_to_cam.device.type == "meta" and moved.on_host() is cams
    one = moved[[2]]
    assert one.on_host().width.tolist() == [30] and moved.to("meta").on_host() is cams
    assert cams.on_host() is cams
