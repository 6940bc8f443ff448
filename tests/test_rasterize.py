"""Gaussian rasterization: every backend through the same cases, edge cases, AbsGS gradients and
pixel-error accumulation against brute force, and the projection maths.

Backends are compared by :func:`assert_backends_agree` with the tolerances of ``TOLERANCES``: for
cpu against the torch reference, forward outputs within 1e-4 (depth: relative to its largest
value) and gradients within 1e-3 of the largest gradient of that tensor. The PyTorch reference is
slow, so its scenes stay small.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from conftest import shared_scene
from scene3d.bench.rasterize import GaussianScene, garden_scene, random_scene
from scene3d.cameras import Cameras
from scene3d.renderers.gaussians import RasterSettings, available_backends, rasterize

# (forward max abs error, forward mean abs error, gradient max error relative to the tensor's max)
TOLERANCES = {
    # same projection code and bit-identical reach decisions: only exp and summation order differ
    "cpu": (1e-4, 1e-6, 1e-3),
    # gsplat projects in CUDA and uses __expf, so a pixel-Gaussian pair right at alpha = 1/255 (or
    # at the 1e-4 transmittance stop) can fall on the other side: such a flip moves one pixel by up
    # to 1/255 of a colour. Not calibrated on hardware here (no GPU on the development machine).
    "gsplat": (5e-3, 1e-5, 1e-2),
}
CPU_BACKENDS = available_backends("cpu")
needs_numba = pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="numba is not installed")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
PARAM_NAMES = ("means", "quats", "scales", "opacities", "colors")


# ---------------------------------------------------------------------------------- helpers
def render(scene: GaussianScene, settings: RasterSettings, device: str = "cpu") -> dict:
    """Outputs and gradients of a fixed, pixel-weighted loss of rgb, alpha and depth."""
    params = scene.params(device)
    out = rasterize(*params, scene.cameras.to(device), settings)
    g = torch.Generator().manual_seed(1)
    w_rgb = torch.rand(out.rgb.shape, generator=g).to(device)
    w_alpha = torch.rand(out.alpha.shape, generator=g).to(device)
    loss = (out.rgb * w_rgb).sum() + (out.alpha * w_alpha).sum()
    if out.depth is not None:  # weighted by alpha so nearly empty pixels do not dominate
        loss = loss + 0.1 * (out.depth * out.alpha.detach()).sum()
    loss.backward()
    res = {"rgb": out.rgb, "alpha": out.alpha, "depth": out.depth, "radii": out.info.radii, "info": out.info}
    res.update({f"grad_{n}": p.grad for n, p in zip(PARAM_NAMES, params)})
    res["grad_means2d"] = out.info.means2d.grad
    return {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in res.items()}


def assert_backends_agree(a: dict, b: dict, backend: str = "cpu") -> None:
    """Compares the render ``a`` of ``backend`` with the reference render ``b``, with the
    tolerances of :data:`TOLERANCES` (the one place they live)."""
    fwd_atol, fwd_mean, grad_rtol = TOLERANCES[backend]
    for key in ("rgb", "alpha", "depth"):
        if a[key] is None:
            assert b[key] is None
            continue
        diff = (a[key] - b[key]).abs()
        scale = 1.0 if key != "depth" else max(1.0, b[key].abs().max().item())  # depth in scene units
        assert diff.max().item() <= fwd_atol * scale, f"{key} differs by {diff.max().item():.3g} (tolerance {fwd_atol})"
        assert diff.mean().item() <= fwd_mean * scale, f"{key} differs by {diff.mean().item():.3g} on average"
    assert torch.equal(a["radii"], b["radii"]), "radii differ"
    for key in [f"grad_{n}" for n in PARAM_NAMES] + ["grad_means2d"]:
        ga, gb = a[key], b[key]
        assert ga is not None and gb is not None, f"{key} missing"
        assert torch.isfinite(ga).all() and torch.isfinite(gb).all(), f"{key} is not finite"
        scale = max(gb.abs().max().item(), 1e-12)
        err = (ga - gb).abs().max().item() / scale
        assert err <= grad_rtol, f"{key} differs by {err:.3g} relative to its max {scale:.3g} (tolerance {grad_rtol})"


def small_garden() -> GaussianScene:
    """garden_points made affordable for the reference: 20,000 points seen at 1/6 resolution."""
    shared_scene("garden_points/test_garden.npz")
    scene = garden_scene(shared_scene("garden_points") / "test_garden.npz")
    keep = torch.randperm(len(scene.means), generator=torch.Generator().manual_seed(0))[:20_000]
    cams = scene.cameras.downscaled(6)
    return GaussianScene(
        "garden/6", scene.means[keep], scene.quats[keep], scene.scales[keep], scene.opacities[keep],
        scene.colors[keep], cams,
    )


CASES = {
    "rgb": lambda: (random_scene(300, 40, 30, seed=1), RasterSettings()),
    "sh0": lambda: (random_scene(300, 40, 30, seed=2, sh_degree=0), RasterSettings()),
    "sh1": lambda: (random_scene(300, 40, 30, seed=3, sh_degree=1), RasterSettings()),
    "sh2": lambda: (random_scene(300, 40, 30, seed=4, sh_degree=2), RasterSettings()),
    "sh3": lambda: (random_scene(300, 40, 30, seed=5, sh_degree=3), RasterSettings()),
    "sh3_as_deg1": lambda: (random_scene(300, 40, 30, seed=6, sh_degree=3), RasterSettings(sh_degree=1)),
    "antialiased": lambda: (random_scene(300, 40, 30, seed=7, std_px=(0.2, 4.0)), RasterSettings(antialiased=True)),
    "background": lambda: (random_scene(200, 40, 30, seed=8), RasterSettings(background=(0.2, 0.5, 0.9))),
    "near_far": lambda: (random_scene(300, 40, 30, seed=9), RasterSettings(near=2.5, far=3.5)),
    "no_depth": lambda: (random_scene(200, 40, 30, seed=10), RasterSettings(render_depth=False)),
    "dense": lambda: (random_scene(3000, 64, 48, seed=11), RasterSettings()),
    # thin, long, rotated ellipses (std 0.05-25 px per axis) stress which rows each one visits
    "elongated": lambda: (random_scene(400, 64, 48, seed=13, std_px=(0.05, 25.0)), RasterSettings()),
    "two_cameras": lambda: (_two_cameras(random_scene(300, 40, 30, seed=12)), RasterSettings()),
    "garden": lambda: (small_garden(), RasterSettings()),
}


def _two_cameras(scene: GaussianScene) -> GaussianScene:
    moved = torch.eye(4)
    moved[:3, 3] = torch.tensor([0.2, -0.1, 0.3])
    cams = Cameras.cat([scene.cameras, Cameras.create(moved, 36.0, 38.0, 21.0, 14.0, 40, 30)])
    return replace(scene, cameras=cams)


# ---------------------------------------------------------------------------------- backend agreement
BACKEND_PAIRS = [
    pytest.param("cpu", "torch", marks=needs_numba, id="cpu-vs-torch"),
    pytest.param("gsplat", "cpu", marks=[needs_cuda, needs_numba], id="gsplat-vs-cpu"),
]


@pytest.mark.parametrize("backend,reference", BACKEND_PAIRS)
@pytest.mark.parametrize("case", list(CASES))
def test_backends_agree(backend, reference, case):
    scene, settings = CASES[case]()
    ref = render(scene, replace(settings, backend=reference), "cpu")
    got = render(scene, replace(settings, backend=backend), "cuda" if backend == "gsplat" else "cpu")
    assert ref["alpha"].max() > 0.5, "the case should cover part of the image"
    assert_backends_agree(got, ref, backend)


# ---------------------------------------------------------------------------------- edge cases
ALL_CPU = pytest.mark.parametrize("backend", CPU_BACKENDS)


@ALL_CPU
def test_nothing_in_view(backend):
    scene = random_scene(50, 40, 30, seed=3)
    scene = replace(scene, means=scene.means + torch.tensor([100.0, 0.0, 0.0]))
    res = render(scene, RasterSettings(backend=backend, background=(0.1, 0.2, 0.3)))
    assert torch.allclose(res["rgb"], torch.tensor([0.1, 0.2, 0.3]).expand_as(res["rgb"]))
    assert (res["alpha"] == 0).all() and (res["depth"] == 0).all()
    assert (res["radii"] == 0).all() and not res["info"].visible.any()
    for n in PARAM_NAMES:
        assert (res[f"grad_{n}"] == 0).all()


@ALL_CPU
def test_behind_the_camera(backend):
    scene = random_scene(200, 40, 30, seed=4)
    behind = torch.arange(200) % 2 == 0
    means = scene.means.clone()
    means[behind, 2] *= -1.0
    res = render(replace(scene, means=means), RasterSettings(backend=backend))
    assert (res["radii"][0, behind] == 0).all()
    assert (res["grad_means"][behind] == 0).all() and (res["grad_scales"][behind] == 0).all()
    visible_only = render(
        GaussianScene("front", *(t[~behind] for t in (means, scene.quats, scene.scales, scene.opacities, scene.colors)),
                      scene.cameras),
        RasterSettings(backend=backend),
    )
    assert torch.allclose(res["rgb"], visible_only["rgb"], atol=1e-6)


@needs_numba
def test_zero_scales():
    scene = random_scene(200, 40, 30, seed=5)
    scales = scene.scales.clone()
    scales[::3] = 0.0
    scales[1::3, 0] = 0.0
    for aa in (False, True):
        got = render(replace(scene, scales=scales), RasterSettings(backend="cpu", antialiased=aa))
        ref = render(replace(scene, scales=scales), RasterSettings(backend="torch", antialiased=aa))
        assert_backends_agree(got, ref)
        if aa:  # with the Mip-Splatting filter a point has zero opacity
            assert (got["radii"][0, ::3] == 0).all()
        else:  # without it, the 0.3 px^2 blur still makes a point visible
            assert (got["radii"][0, ::3] > 0).any()


@ALL_CPU
def test_single_huge_gaussian(backend):
    cams = Cameras.create(torch.eye(4), 40.0, 40.0, 20.0, 15.0, 40, 30)
    scene = GaussianScene(
        "huge", torch.tensor([[0.05, -0.02, 1.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
        torch.tensor([[60.0, 40.0, 0.01]]), torch.tensor([0.8]), torch.tensor([[0.9, 0.4, 0.1]]), cams,
    )
    res = render(scene, RasterSettings(backend=backend))
    assert torch.allclose(res["alpha"], torch.full_like(res["alpha"], 0.8), atol=2e-3)
    assert torch.allclose(res["rgb"], 0.8 * torch.tensor([0.9, 0.4, 0.1]).expand_as(res["rgb"]), atol=2e-3)
    assert torch.allclose(res["depth"], torch.ones_like(res["depth"]), atol=1e-4)
    if backend == "cpu":
        assert_backends_agree(res, render(scene, RasterSettings(backend="torch")))


@needs_numba
def test_equal_depths_keep_index_order():
    """Gaussians at one depth blend in index order (a stable sort), as in the reference."""
    scene = random_scene(200, 40, 30, seed=21)
    means = scene.means.clone()
    means[:, 2] = means[:, 2].round(decimals=0)  # three depth planes, ~70 Gaussians on each
    means[:, :2] = means[:, :2] * 0.3  # crowd them so that they overlap
    scene = replace(scene, means=means)
    assert_backends_agree(render(scene, RasterSettings(backend="cpu")), render(scene, RasterSettings(backend="torch")))


@needs_numba
@pytest.mark.parametrize("size", [(17, 1), (1, 23), (33, 47), (16, 16), (50, 31)])
def test_sizes_not_multiple_of_tile(size):
    W, H = size
    scene = random_scene(150, W, H, seed=W * 100 + H, std_px=(0.5, 3.0))
    got = render(scene, RasterSettings(backend="cpu"))
    ref = render(scene, RasterSettings(backend="torch"))
    assert got["rgb"].shape == (1, H, W, 3)
    assert_backends_agree(got, ref)


def test_distorted_cameras_are_refused():
    scene = random_scene(10, 40, 30, seed=0)
    cams = Cameras.create(torch.eye(4), 40.0, 40.0, 20.0, 15.0, 40, 30, model=4, dist=[0.1, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="undistort"):
        rasterize(*scene.params(), cams, RasterSettings(backend="torch"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gsplat_without_cuda_is_a_clear_error():
    scene = random_scene(10, 40, 30, seed=0)
    with pytest.raises(RuntimeError, match="CUDA"):
        rasterize(*scene.params(), scene.cameras, RasterSettings(backend="gsplat"))


def test_auto_backend_on_cpu():
    scene = random_scene(20, 40, 30, seed=0)
    out = rasterize(*scene.params(requires_grad=False), scene.cameras)
    assert out.info.backend == ("cpu" if "cpu" in CPU_BACKENDS else "torch")


@ALL_CPU
def test_info_record(backend):
    scene = random_scene(100, 40, 30, seed=2)
    params = scene.params()
    out = rasterize(*params, scene.cameras, RasterSettings(backend=backend, absgrad=True))
    info = out.info
    assert info.means2d.shape == (1, 100, 2) and info.radii.shape == (1, 100) and info.depths.shape == (1, 100)
    assert info.radii.dtype == torch.int32 and info.visible.dtype == torch.bool
    assert (info.width, info.height, info.n_cameras) == (40, 30, 1)
    assert info.means2d_absgrad is None
    out.rgb.sum().backward()
    assert info.means2d.grad is not None and info.means2d.grad.shape == (1, 100, 2)
    assert info.means2d_absgrad.shape == (1, 100, 2)
    assert (info.means2d_absgrad >= info.means2d.grad.abs() - 1e-6).all()
    assert (info.means2d.grad[~info.visible] == 0).all()


def test_inputs_are_not_modified():
    scene = random_scene(100, 40, 30, seed=2)
    params = scene.params()
    before = [p.detach().clone() for p in params]
    for backend in CPU_BACKENDS:
        rasterize(*params, scene.cameras, RasterSettings(backend=backend, antialiased=True))
    assert all(torch.equal(a, b) for a, b in zip(before, params))


def test_shapes_are_checked():
    scene = random_scene(10, 40, 30, seed=0)
    means, quats, scales, opacities, colors = scene.params(requires_grad=False)
    with pytest.raises(AssertionError, match="quats"):
        rasterize(means, quats[:, :3], scales, opacities, colors, scene.cameras)
    with pytest.raises(AssertionError, match="SH"):
        rasterize(means, quats, scales, opacities, colors[:, None, :2], scene.cameras)
