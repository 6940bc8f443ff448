"""Projection and SH maths (hypothesis), the kernel's fast exp, and the rasterizers against a
brute-force per-pixel renderer: forward, AbsGS gradients and pixel-error accumulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scene3d.bench.rasterize import random_scene
from scene3d.cameras import Cameras, quaternion_to_matrix
from scene3d.renderers.gaussians import (
    RasterSettings,
    accumulate_pixel_error,
    available_backends,
    rasterize,
    rgb_to_sh,
    sh_basis,
    sh_to_rgb,
)
from scene3d.renderers.gaussians.projection import gaussian_colors, project_gaussians, quat_scale_to_covar
from scene3d.renderers.gaussians.settings import ALPHA_MAX, ALPHA_MIN, T_MIN

CPU_BACKENDS = available_backends("cpu")
finite = dict(allow_nan=False, allow_infinity=False)


# ---------------------------------------------------------------------------------- projection maths
@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(-1, 1, **finite), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.2),
    st.lists(st.floats(1e-3, 10, **finite), min_size=3, max_size=3),
)
def test_covariance_has_the_scales_as_axes(q, s):
    q, s = torch.tensor([q], dtype=torch.float64), torch.tensor([s], dtype=torch.float64)
    cov = quat_scale_to_covar(q, s)[0]
    assert torch.allclose(cov, cov.T)
    R = quaternion_to_matrix(q)[0]
    assert torch.allclose(R.T @ cov @ R, torch.diag(s[0] ** 2), atol=1e-9 * float(s.max() ** 2) + 1e-12)


@settings(max_examples=50, deadline=None)
@given(
    st.floats(0.5, 20.0, **finite),  # depth
    st.floats(1e-3, 1.0, **finite),  # isotropic scale
    st.floats(20.0, 2000.0, **finite),  # focal
    st.floats(0.0, 1.0, **finite),  # eps2d
)
def test_isotropic_gaussian_on_axis(z, s, f, eps):
    cams = Cameras.create(torch.eye(4), f, f, 50.0, 40.0, 100, 80)
    proj = project_gaussians(
        torch.tensor([[0.0, 0.0, z]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.full((1, 3), s),
        torch.tensor([0.9]), cams, near=0.01, far=1e10, eps2d=eps, antialiased=True,
    )
    var = (f * s / z) ** 2 + eps
    assert torch.allclose(proj.means2d[0, 0], torch.tensor([50.0, 40.0]))
    assert torch.allclose(proj.conics[0, 0], torch.tensor([1 / var, 0.0, 1 / var]), rtol=1e-4)
    assert math.isclose(float(proj.depths[0, 0]), z, rel_tol=1e-6)
    comp = (f * s / z) ** 2 / var  # sqrt(det ratio) for a 2x2 isotropic covariance
    assert math.isclose(float(proj.opacities[0, 0]), 0.9 * comp, rel_tol=1e-4)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000))
def test_means2d_match_camera_projection(seed):
    scene = random_scene(50, 64, 48, seed=seed)
    g = torch.Generator().manual_seed(seed)
    w2c = torch.eye(4)
    w2c[:3, 3] = torch.rand(3, generator=g) * 0.2
    cams = Cameras.create(w2c, 60.0, 55.0, 31.0, 25.0, 64, 48)
    proj = project_gaussians(
        scene.means, scene.quats, scene.scales, scene.opacities, cams, near=0.01, far=1e10, eps2d=0.3, antialiased=False
    )
    uv, depth = cams.project(scene.means)
    assert torch.allclose(proj.means2d, uv, atol=1e-4)
    assert torch.allclose(proj.depths, depth)


def _textbook_projection(means, quats, scales, cams, eps2d):
    """EWA splatting as gsplat's torch reference writes it: J Sigma_c J^T with J at the clamped
    centre, then the blur; returns means2d [C, N, 2] and the blurred 2D covariance [C, N, 2, 2]."""
    W, t = cams.world_to_cam[:, :3, :3].double(), cams.world_to_cam[:, :3, 3].double()
    Sigma = quat_scale_to_covar(quats.double(), scales.double())
    m_c = torch.einsum("cij,nj->cni", W, means.double()) + t[:, None]
    S_c = torch.einsum("cij,njk,clk->cnil", W, Sigma, W)
    x, y, z = m_c.unbind(-1)
    fx, fy, cx, cy = (v.double()[:, None] for v in (cams.fx, cams.fy, cams.cx, cams.cy))
    w, h = float(cams.width[0]), float(cams.height[0])
    tx = z * torch.clamp(x / z, min=-(cx / fx + 0.15 * w / fx), max=(w - cx) / fx + 0.15 * w / fx)
    ty = z * torch.clamp(y / z, min=-(cy / fy + 0.15 * h / fy), max=(h - cy) / fy + 0.15 * h / fy)
    O = torch.zeros_like(z)
    J = torch.stack([fx / z, O, -fx * tx / z**2, O, fy / z, -fy * ty / z**2], -1).reshape(*z.shape, 2, 3)
    cov2d = J @ S_c @ J.transpose(-1, -2) + eps2d * torch.eye(2, dtype=torch.float64)
    return torch.stack([fx * x / z + cx, fy * y / z + cy], -1), cov2d


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 1.0, **finite))
def test_projection_matches_textbook_ewa(seed, eps2d):
    g = torch.Generator().manual_seed(seed)
    n = 64
    means = torch.randn(n, 3, generator=g) * torch.tensor([3.0, 3.0, 1.0]) + torch.tensor([0.0, 0.0, 4.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.5 + 0.01
    q = torch.nn.functional.normalize(torch.randn(2, 4, generator=g), dim=-1)
    w2c = torch.eye(4).repeat(2, 1, 1)
    w2c[:, :3, :3] = quaternion_to_matrix(q * torch.tensor([1.0, 0.1, 0.1, 0.1]))
    w2c[:, :3, 3] = torch.rand(2, 3, generator=g) * 0.5
    cams = Cameras.create(w2c, [50.0, 70.0], [55.0, 65.0], [32.0, 30.0], [24.0, 26.0], 64, 48)
    proj = project_gaussians(means, quats, scales, torch.full((n,), 0.7), cams, near=0.5, far=1e10, eps2d=eps2d, antialiased=False)
    m2d, cov2d = _textbook_projection(means, quats, scales, cams, eps2d)
    ok = proj.depths > 0.5
    assert torch.allclose(proj.means2d[ok].double(), m2d[ok], rtol=1e-5, atol=1e-3)
    conic = torch.linalg.inv(cov2d)
    got = torch.stack([proj.conics[..., 0], proj.conics[..., 1], proj.conics[..., 1], proj.conics[..., 2]], -1)
    assert torch.allclose(got[ok].double(), conic.reshape(*conic.shape[:2], 4)[ok], rtol=2e-3, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0.3, 50.0, **finite), st.floats(0.3, 50.0, **finite), st.floats(-0.99, 0.99, **finite),
    st.floats(1.0 / 255.0 + 1e-4, 1.0, **finite),
)
def test_radius_box_holds_every_reachable_pixel(sx, sy, rho, opacity):
    """Points where alpha reaches 1/255 (sigma = ln(255 o)) lie inside the radius box."""
    cov = torch.tensor([[sx * sx, rho * sx * sy], [rho * sx * sy, sy * sy]], dtype=torch.float64)
    conic = torch.linalg.inv(cov)
    thr = math.log(255.0 * opacity)
    extend = min(3.33, math.sqrt(2 * thr))
    rx, ry = math.ceil(extend * sx), math.ceil(extend * sy)
    t = torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64)
    # the ellipse 0.5 d^T conic d = thr is d = sqrt(2 thr) L u with cov = L L^T
    L = torch.linalg.cholesky(cov)
    d = math.sqrt(2 * thr) * (L @ torch.stack([torch.cos(t), torch.sin(t)]))
    assert torch.allclose(0.5 * (d * (conic @ d)).sum(0), torch.full_like(t, thr))
    assert d[0].abs().max() <= rx + 1e-9 and d[1].abs().max() <= ry + 1e-9


def test_culling_rules():
    cams = Cameras.create(torch.eye(4), 40.0, 40.0, 20.0, 15.0, 40, 30)
    means = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.005], [0.0, 0.0, 50.0], [30.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    opac = torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5 / 255])
    proj = project_gaussians(
        means, torch.tensor([[1.0, 0, 0, 0]]).expand(5, 4), torch.full((5, 3), 0.01), opac, cams,
        near=0.01, far=10.0, eps2d=0.3, antialiased=False,
    )
    # in view / nearer than near / farther than far / off screen / too transparent
    assert proj.visible[0].tolist() == [True, False, False, False, False]


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="numba is not installed")
@pytest.mark.parametrize("antialiased", [False, True])
def test_numba_projection_gradient_matches_autograd(antialiased):
    """The CPU backend's projection: the torch forward (identical values) with a hand-written
    numba backward, against autograd through the same code. Includes Gaussians off screen (their
    Jacobian clamped), behind the near plane, beyond the far plane and with zero scales."""
    from scene3d.renderers.gaussians.cpu_backend import project

    scene = random_scene(500, 64, 48, seed=3)
    means, scales = scene.means.clone(), scene.scales.clone()
    means[:20, 0] += 10.0
    means[20:30, 2] *= -1.0
    scales[30:40] = 0.0
    w2c = torch.eye(4).repeat(2, 1, 1)
    w2c[1, :3, :3] = quaternion_to_matrix(torch.tensor([0.95, 0.1, -0.2, 0.05]))
    w2c[1, :3, 3] = torch.tensor([0.3, -0.2, 0.5])
    cams = Cameras.create(w2c, [60.0, 70.0], [55.0, 65.0], [32.0, 30.0], [24.0, 26.0], 64, 48)
    results = []
    for fn in (project_gaussians, project):
        params = [t.clone().requires_grad_(True) for t in (means, scene.quats, scales, scene.opacities)]
        proj = fn(*params, cams, near=0.5, far=3.8, eps2d=0.3, antialiased=antialiased)
        g = torch.Generator().manual_seed(0)
        outputs = (proj.means2d, proj.conics, proj.depths, proj.opacities)
        sum((t * torch.randn(t.shape, generator=g)).sum() for t in outputs).backward()
        results.append(([t.detach() for t in outputs], [p.grad for p in params]))
    (ref_values, ref_grads), (values, grads) = results
    assert all(torch.equal(a, b) for a, b in zip(values, ref_values))
    for got, ref in zip(grads, ref_grads):
        assert torch.isfinite(got).all()
        assert (got - ref).abs().max() <= 1e-5 * ref.abs().max()


# ---------------------------------------------------------------------------------- SH
def _sphere(n: int = 20_000) -> torch.Tensor:
    """Fibonacci points: near-uniform directions for quadrature on the sphere."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + 5**0.5) * i
    r = torch.sqrt(1 - z * z)
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


def test_sh_basis_is_orthonormal():
    d = _sphere()
    Y = sh_basis(3, d)  # [n, 16]
    gram = Y.T @ Y * (4 * math.pi / len(d))
    assert torch.allclose(gram, torch.eye(16, dtype=torch.float64), atol=2e-3)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1, **finite), min_size=3, max_size=3))
def test_rgb_sh_round_trip(rgb):
    rgb = torch.tensor(rgb)
    assert torch.allclose(sh_to_rgb(rgb_to_sh(rgb)), rgb, atol=1e-6)
    cams = Cameras.create(torch.eye(4), 10.0, 10.0, 5.0, 5.0, 10, 10)
    colour = gaussian_colors(rgb_to_sh(rgb)[None, None, :], torch.tensor([[0.3, -0.2, 2.0]]), cams, None)
    assert torch.allclose(colour[0, 0], rgb, atol=1e-6)


# ---------------------------------------------------------------------------------- fast exp
@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="numba is not installed")
def test_fast_exp_is_accurate():
    from scene3d.renderers.gaussians._numba_kernels import fast_exp_array

    x = np.concatenate([np.linspace(-6.0, 0.0, 200_001), np.linspace(-80.0, -6.0, 20_001)]).astype(np.float32)
    got = fast_exp_array(x).astype(np.float64)
    rel = np.abs(got / np.exp(x.astype(np.float64)) - 1.0)
    assert rel[:200_001].max() < 3e-7, rel[:200_001].max()
    assert rel.max() < 1e-6, rel.max()
    assert fast_exp_array(np.array([0.0], np.float32))[0] == 1.0


# ---------------------------------------------------------------------------------- brute force
def brute_force_pixel(x, y, order, means2d, conics, opacities, feats):
    """One pixel blended front to back over every visible Gaussian (no tiles), with gsplat's
    rules written as literally as possible: (colour [F], alpha, [(gaussian, weight)]),
    differentiable in means2d."""
    px, py = x + 0.5, y + 0.5
    T = torch.tensor(1.0, dtype=torch.float64)
    out = torch.zeros(feats.shape[-1], dtype=torch.float64)
    ws = []
    for g in order:
        dx, dy = means2d[g, 0] - px, means2d[g, 1] - py
        a, b, c = conics[g]
        sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
        alpha = torch.clamp(opacities[g] * torch.exp(-sigma), max=ALPHA_MAX)
        if sigma < 0 or alpha < ALPHA_MIN:
            continue
        next_T = T * (1 - alpha)
        if next_T <= T_MIN:
            break
        ws.append((g, alpha * T))
        out = out + alpha * T * feats[g]
        T = next_T
    return out, 1 - T, ws


def _tiny_case(seed: int):
    scene = random_scene(12, 13, 11, seed=seed, std_px=(0.8, 3.0))
    proj = project_gaussians(
        scene.means, scene.quats, scene.scales, scene.opacities, scene.cameras,
        near=0.01, far=1e10, eps2d=0.3, antialiased=False,
    )
    m2d = proj.means2d[0].detach().double().requires_grad_(True)
    return scene, proj, m2d


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_forward_absgrad_and_error_against_brute_force(backend, seed):
    scene, proj, m2d = _tiny_case(seed)
    W, H = 13, 11
    feats = scene.colors.double()
    conics, opac = proj.conics[0].detach().double(), proj.opacities[0].detach().double()
    order = [int(i) for i in torch.argsort(proj.depths[0].detach(), stable=True) if proj.visible[0, i]]
    g = torch.Generator().manual_seed(seed)
    w_rgb, w_alpha = torch.rand(H, W, 3, generator=g).double(), torch.rand(H, W, generator=g).double()
    img, alpha = torch.zeros(H, W, 3, dtype=torch.float64), torch.zeros(H, W, dtype=torch.float64)
    absgrad, grad = torch.zeros_like(m2d), torch.zeros_like(m2d)
    weights = {}
    for y in range(H):
        for x in range(W):
            colour, a, weights[(y, x)] = brute_force_pixel(x, y, order, m2d, conics, opac, feats)
            img[y, x], alpha[y, x] = colour.detach(), a.detach()
            loss_p = (colour * w_rgb[y, x]).sum() + a * w_alpha[y, x]  # the loss terms of pixel p
            if loss_p.requires_grad:
                (g_p,) = torch.autograd.grad(loss_p, m2d)
                absgrad += g_p.abs()  # AbsGS: sum over pixels of |d loss_p / d means2d|
                grad += g_p

    params = scene.params()
    out = rasterize(*params, scene.cameras, RasterSettings(backend=backend, absgrad=True, render_depth=False))
    assert torch.allclose(out.rgb[0].double(), img, atol=1e-5)
    assert torch.allclose(out.alpha[0, ..., 0].double(), alpha, atol=1e-5)
    loss = (out.rgb[0] * w_rgb.float()).sum() + (out.alpha[0, ..., 0] * w_alpha.float()).sum()
    loss.backward()
    assert torch.allclose(out.info.means2d.grad[0].double(), grad, rtol=1e-4, atol=1e-5 * float(grad.abs().max()))
    got = out.info.means2d_absgrad[0].double()
    assert torch.allclose(got, absgrad, rtol=1e-4, atol=1e-5 * float(absgrad.abs().max()))
    assert (absgrad > grad.abs() + 1e-6).any(), "the case should have pixels pulling in opposite directions"

    # pixel-error accumulation: sum over pixels of weight * error
    err = torch.rand(1, H, W, generator=g)
    expect = torch.zeros(len(scene.means), dtype=torch.float64)
    for (y, x), ws in weights.items():
        for gi, w in ws:
            expect[gi] += float(w.detach()) * float(err[0, y, x])
    got_err = accumulate_pixel_error(
        scene.means, scene.quats, scene.scales, scene.opacities, scene.cameras, err, RasterSettings(backend=backend)
    )
    assert got_err.shape == (1, len(scene.means))
    assert torch.allclose(got_err[0].double(), expect, atol=1e-5)


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="numba is not installed")
def test_error_accumulation_backends_agree():
    scene = random_scene(2000, 64, 48, seed=3)
    err = torch.rand(1, 48, 64, generator=torch.Generator().manual_seed(0))
    args = (scene.means, scene.quats, scene.scales, scene.opacities, scene.cameras, err)
    got = accumulate_pixel_error(*args, RasterSettings(backend="cpu"))
    ref = accumulate_pixel_error(*args, RasterSettings(backend="torch"))
    assert torch.allclose(got, ref, atol=1e-4)
    # the weights of a Gaussian sum to its contribution to alpha: with error 1 everywhere the
    # total equals the summed alpha of the image
    ones = accumulate_pixel_error(*args[:-1], torch.ones_like(err), RasterSettings(backend="cpu"))
    alpha = rasterize(*scene.params(requires_grad=False), scene.cameras, RasterSettings(backend="cpu")).alpha
    assert math.isclose(float(ones.sum()), float(alpha.sum()), rel_tol=1e-4)
