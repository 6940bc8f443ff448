"""The ray path of NeRF-style models: pixel batches, box clipping, occupancy grid, ray marching,
volume rendering (nerfacc against its PyTorch twin) and whole-ray / whole-image rendering of
analytic fields whose answers are known in closed form."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from scene3d.cameras import Cameras, CameraModel
from scene3d.renderers.rays import (
    OccupancyGrid,
    nerfacc_available,
    OccupancySampler,
    Rays,
    camera_rays,
    pixel_rays,
    ray_aabb,
    render_image,
    render_rays,
    sample_along_rays,
    sample_pixels,
    volume_render,
    volume_render_reference,
)
from tests.synthetic import ring_cameras

BOX = (-1.0, -1.0, -1.0, 1.0, 1.0, 1.0)
RENDERERS = {"nerfacc": volume_render, "torch": volume_render_reference}
BACKENDS = [
    pytest.param("nerfacc", marks=pytest.mark.skipif(not nerfacc_available(), reason="nerfacc is not installed")),
    "torch",
]
TOL = {"fwd_atol": 1e-10, "grad_atol": 1e-9}
"""Backend agreement in float64 (the two compute the same sums in different orders)."""


def assert_close(a: torch.Tensor, b: torch.Tensor, atol: float, what: str) -> None:
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= atol, f"{what} differs by {err:.3g} (tolerance {atol})"


def random_intervals(n: int, s: int, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    deltas = 0.01 + 0.1 * torch.rand(n, s, generator=g, dtype=dtype)
    ends = 1.0 + torch.cumsum(deltas, dim=1)
    starts = ends - deltas * (0.5 + 0.5 * torch.rand(n, s, generator=g, dtype=dtype))  # gaps between intervals
    sigmas = torch.rand(n, s, generator=g, dtype=dtype) * 20.0
    sigmas[torch.rand(n, s, generator=g) < 0.2] = 0.0
    sigmas[0] = 1e4  # saturated ray: transmittance underflows to zero
    rgbs = torch.rand(n, s, 3, generator=g, dtype=dtype)
    bg = torch.rand(3, generator=g, dtype=dtype)
    return starts, ends, sigmas, rgbs, bg


# ---------------------------------------------------------------------- volume rendering
@pytest.mark.skipif(not nerfacc_available(), reason="nerfacc is not installed")
@pytest.mark.parametrize("with_background", [False, True])
def test_volume_render_backends_agree_values_and_gradients(with_background):
    starts, ends, sigmas, rgbs, bg = random_intervals(48, 24)
    g = torch.Generator().manual_seed(1)
    up = [torch.randn(48, k, generator=g, dtype=torch.float64) for k in (3, 1, 1)]
    results = {}
    for name, fn in RENDERERS.items():
        s, c, b = sigmas.clone().requires_grad_(), rgbs.clone().requires_grad_(), bg.clone().requires_grad_()
        rgb, alpha, depth, weights = fn(starts, ends, s, c, b if with_background else None)
        loss = (rgb * up[0]).sum() + (alpha * up[1]).sum() + (depth * up[2]).sum() + weights.sum()
        loss.backward()
        results[name] = (rgb, alpha, depth, weights, s.grad, c.grad, b.grad if with_background else torch.zeros(3))
    labels = ("rgb", "alpha", "depth", "weights", "d sigmas", "d rgbs", "d background")
    for label, a, b in zip(labels, results["nerfacc"], results["torch"]):
        assert torch.isfinite(a).all(), label
        assert_close(a, b, TOL["fwd_atol"] if not label.startswith("d ") else TOL["grad_atol"], label)


@pytest.mark.parametrize("backend", BACKENDS)
def test_volume_render_known_answers(backend):
    fn = RENDERERS[backend]
    starts = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    ends = starts + 0.1
    colours = torch.tensor([[0.1, 0.2, 0.3], [0.9, 0.5, 0.1], [0.4, 0.4, 0.4]]).expand(3, 3, 3)
    sigmas = torch.tensor([[0.0, 1e5, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    bg = torch.tensor([0.0, 1.0, 0.5])
    rgb, alpha, depth, weights = fn(starts, ends, sigmas, colours, bg)
    # one opaque sample: its colour and the middle of its interval
    torch.testing.assert_close(rgb[0], colours[0, 1])
    assert alpha[0].item() == pytest.approx(1.0)
    assert depth[0].item() == pytest.approx(2.05)
    torch.testing.assert_close(weights[0], torch.tensor([0.0, 1.0, 0.0]))
    # nothing: the background, alpha 0, depth 0
    torch.testing.assert_close(rgb[1], bg)
    assert alpha[1].item() == 0.0 and depth[1].item() == 0.0
    # one translucent interval: alpha = 1 - exp(-sigma delta)
    a = 1 - math.exp(-0.5)
    assert alpha[2].item() == pytest.approx(a, rel=1e-6)
    torch.testing.assert_close(rgb[2], a * colours[2, 2] + (1 - a) * bg)
    assert depth[2].item() == pytest.approx(3.05, rel=1e-6)


# ---------------------------------------------------------------------- ray / box
def test_ray_aabb_cases():
    o = torch.tensor(
        [
            [0.0, 0.0, 0.0],  # inside
            [-3.0, 0.0, 0.0],  # outside, hits (axis-parallel)
            [-3.0, 2.0, 0.0],  # outside, misses (axis-parallel)
            [-3.0, 1.0, 0.0],  # axis-parallel along the plane of a face: touches the box
            [3.0, 0.0, 0.0],  # box behind the ray
            [-3.0, -3.0, -3.0],  # diagonal, through the corners
            [0.0, 0.0, 0.0],  # zero direction
        ]
    )
    d = torch.tensor(
        [[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [1.0, 1.0, 1.0], [0.0, 0, 0]]
    )
    d = torch.where(d.norm(dim=-1, keepdim=True) > 0, d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12), d)
    near, far, hit = ray_aabb(o, d, BOX)
    assert hit.tolist() == [True, True, False, True, False, True, False]
    s3 = math.sqrt(3.0)
    torch.testing.assert_close(near, torch.tensor([0.0, 2.0, 0.0, 2.0, 0.0, 2 * s3, 0.0]))
    torch.testing.assert_close(far, torch.tensor([1.0, 4.0, 0.0, 4.0, 0.0, 4 * s3, 0.0]))
    near, far, hit = ray_aabb(o[:2], d[:2], BOX, near_min=2.5)
    assert hit.tolist() == [False, True]
    assert near[1].item() == 2.5 and far[1].item() == 4.0


def test_ray_aabb_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    n = 300
    box = torch.tensor([-1.0, -0.5, -0.8, 1.2, 0.7, 0.6], dtype=torch.float64)
    o = (torch.rand(n, 3, generator=g, dtype=torch.float64) - 0.5) * 6.0
    centre, half = (box[:3] + box[3:]) / 2, (box[3:] - box[:3]) / 2
    target = centre + (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * half * 1.6
    d = target - o  # aimed near the box, so about half the rays hit
    d[: n // 3, 0] = 0.0  # axis-parallel rays: parallel to the x faces ...
    o[: n // 3, 0] = target[: n // 3, 0]
    d[n // 3 : n // 2, 1:] = 0.0  # ... and along x
    o[n // 3 : n // 2, 1:] = target[n // 3 : n // 2, 1:]
    d = d / d.norm(dim=-1, keepdim=True)
    near, far, hit = ray_aabb(o, d, box)
    step = 2e-3
    t = torch.arange(0.0, 12.0, step, dtype=torch.float64)
    p = o[:, None] + d[:, None] * t[None, :, None]
    inside = ((p >= box[:3]) & (p <= box[3:])).all(dim=-1)
    any_inside = inside.any(dim=1)
    assert any_inside.sum() > 50 and (~any_inside).sum() > 50
    assert bool((any_inside <= hit).all()), "a ray with points in the box must hit"
    long_hits = hit & (far - near > 4 * step)
    assert bool((long_hits <= any_inside).all()), "a hit must have points in the box"
    big = torch.tensor(float("inf"), dtype=torch.float64)
    t_first = torch.where(inside, t, big).amin(dim=1)
    t_last = torch.where(inside, t, -big).amax(dim=1)
    assert_close(near[any_inside], t_first[any_inside], step, "near")
    assert_close(far[any_inside], t_last[any_inside], step, "far")
    assert bool((near[hit] >= 0).all())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ray_aabb_nerfacc_matches_torch_on_cuda():
    from scene3d.renderers.rays.aabb import nerfacc_cuda_available

    if not nerfacc_cuda_available():  # checked here: it may JIT-compile nerfacc's extension
        pytest.skip("nerfacc's CUDA extension does not load")
    g = torch.Generator().manual_seed(4)
    n = 2000
    o = (torch.rand(n, 3, generator=g) - 0.5) * 6.0
    d = torch.randn(n, 3, generator=g)
    d[:200, 2] = 0.0
    d = d / d.norm(dim=-1, keepdim=True)
    o, d = o.cuda(), d.cuda()
    for near_min in (0.0, 1.5):
        ref = ray_aabb(o, d, BOX, near_min, backend="torch")
        got = ray_aabb(o, d, BOX, near_min, backend="nerfacc")
        assert (got[2] == ref[2]).float().mean() > 0.999
        both = got[2] & ref[2]
        assert_close(got[0][both], ref[0][both], 1e-4, "near")
        assert_close(got[1][both], ref[1][both], 1e-4, "far")


# ---------------------------------------------------------------------- marching
def test_sample_along_rays_spacing_and_bounds():
    n = 5
    o = torch.zeros(n, 3)
    d = torch.tensor([[1.0, 0.0, 0.0]]).expand(n, 3)
    near = torch.tensor([0.0, 0.5, 1.0, 0.0, 0.3])
    far = torch.tensor([1.0, 0.93, 1.0, 0.0, 2.3])  # one empty ray, one miss (0, 0)
    step = 0.1
    s = sample_along_rays(o, d, near, far, step, max_samples=100)
    counts = s.valid.sum(dim=1).tolist()
    assert counts == [10, 5, 0, 0, 20]
    assert s.t_starts.shape == (n, 20)
    v = s.valid
    assert bool((s.t_starts[v] >= near[:, None].expand_as(v)[v] - 1e-6).all())
    assert bool((s.t_ends[v] <= far[:, None].expand_as(v)[v] + 1e-6).all())
    assert bool((s.t_ends[v] > s.t_starts[v]).all())
    both = v[:, 1:] & v[:, :-1]
    torch.testing.assert_close(s.t_starts.diff(dim=1)[both], torch.full((int(both.sum()),), step))
    assert s.t_ends[1, 4].item() == pytest.approx(0.93)  # the last interval is cut at far
    assert bool((s.t_ends[~v] == s.t_starts[~v]).all()), "invalid entries are empty intervals"
    capped = sample_along_rays(o, d, near, far, step, max_samples=7)
    assert capped.t_starts.shape == (n, 7) and capped.valid.sum(dim=1).tolist() == [7, 5, 0, 0, 7]


def test_sample_along_rays_stratified_jitter():
    n = 200
    o, d = torch.zeros(n, 3), torch.tensor([[0.0, 0.0, 1.0]]).expand(n, 3)
    near, far = torch.full((n,), 0.2), torch.full((n,), 1.2)
    step = 0.05
    plain = sample_along_rays(o, d, near, far, step, 1000)
    a = sample_along_rays(o, d, near, far, step, 1000, stratified=True, generator=torch.Generator().manual_seed(0))
    b = sample_along_rays(o, d, near, far, step, 1000, stratified=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.t_starts, b.t_starts)
    offset = a.t_starts[:, 0] - near
    assert bool((offset >= 0).all()) and bool((offset < step).all())
    assert offset.std() > step / 5, "the jitter differs between rays"
    assert not torch.equal(a.t_starts, plain.t_starts)
    both = a.valid[:, 1:] & a.valid[:, :-1]
    torch.testing.assert_close(a.t_starts.diff(dim=1)[both], torch.full((int(both.sum()),), step))
    assert bool((a.t_ends[a.valid] <= 1.2 + 1e-6).all())


def test_sample_along_rays_skips_empty_cells():
    grid = OccupancyGrid(BOX, resolution=8)
    grid.binary.zero_()
    grid.binary[4:6] = True  # the slab 0 <= x <= 0.5
    o = torch.tensor([[-2.0, 0.1, 0.1], [-2.0, 0.7, -0.3], [0.0, -2.0, 0.3]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    near, far, _ = ray_aabb(o, d, BOX)
    step = 0.01
    full = sample_along_rays(o, d, near, far, step, 1000)
    kept = sample_along_rays(o, d, near, far, step, 1000, grid=grid)
    two = sample_along_rays(o[:2], d[:2], near[:2], far[:2], step, 1000, grid=grid)
    assert two.t_starts.shape[1] <= 51 < full.t_starts.shape[1] / 3, "the sparse grid keeps S small"
    for i in range(2):
        x = (o[i, 0] + kept.midpoints[i][kept.valid[i]]).numpy()
        assert (x >= 0).all() and (x <= 0.5).all()
        expected = full.midpoints[i][full.valid[i]]
        expected = expected[((o[i, 0] + expected) >= 0) & ((o[i, 0] + expected) <= 0.5)]
        torch.testing.assert_close(kept.midpoints[i][kept.valid[i]], expected)
    # the ray along y at x = 0 stays in the occupied slab all the way
    assert int(kept.valid[2].sum()) == int(full.valid[2].sum())


# ---------------------------------------------------------------------- occupancy grid
CENTRE = torch.tensor([0.2, -0.1, 0.0])
RADIUS = 0.35


def sphere_density(points: torch.Tensor) -> torch.Tensor:
    return torch.where((points - CENTRE).norm(dim=-1) < RADIUS, 100.0, 0.0)


def test_occupancy_grid_finds_a_sphere():
    grid = OccupancyGrid(BOX, resolution=16)
    assert grid.occupied_fraction() == 1.0, "a new grid is fully occupied"
    g = torch.Generator().manual_seed(0)
    calls = []

    def density(p):
        calls.append(p.shape[0])
        return sphere_density(p)

    for step in range(64):
        grid.update(step, density, warmup_steps=32, n=16, step_size=0.01, chunk=1000, generator=g)
    assert len(calls) > 4 and max(calls) <= 1000, "evaluated in chunks"
    assert not grid.update(5, density, n=16)
    r = grid.resolution
    idx = torch.arange(r)
    ii, jj, kk = torch.meshgrid(idx, idx, idx, indexing="ij")
    lo = torch.stack([ii, jj, kk], dim=-1) * grid.cell_size + grid.aabb[:3]
    hi = lo + grid.cell_size
    nearest = torch.maximum(torch.minimum(CENTRE, hi), lo)  # point of the cell closest to the centre
    corners = torch.stack([torch.where(torch.tensor(c, dtype=torch.bool), hi, lo) for c in
                           [(a, b, e) for a in (0, 1) for b in (0, 1) for e in (0, 1)]])
    fully_inside = ((corners - CENTRE).norm(dim=-1) < RADIUS).all(dim=0)
    outside = (nearest - CENTRE).norm(dim=-1) > RADIUS
    assert fully_inside.any()
    assert bool(grid.binary[fully_inside].all()), "cells inside the sphere are occupied"
    assert not bool(grid.binary[outside].any()), "cells away from the sphere are empty"
    pts = torch.stack([CENTRE, torch.tensor([0.9, 0.9, 0.9]), torch.tensor([-0.9, 0.8, -0.7]), torch.tensor([3.0, 0.0, 0.0])])
    assert grid.occupied(pts).tolist() == [True, False, False, False]
    assert 0 < grid.occupied_fraction() < 0.05

    copy = OccupancyGrid(BOX, resolution=16)
    copy.load_state_dict(grid.state_dict())
    assert torch.equal(copy.binary, grid.binary) and torch.equal(copy.density, grid.density)
    copy.mark_all()
    assert bool(copy.occupied(pts[:3]).all()) and not bool(copy.occupied(pts[3:]).any())


def test_occupancy_grid_after_warmup_measures_a_quarter_plus_occupied():
    grid = OccupancyGrid(BOX, resolution=8)
    g = torch.Generator().manual_seed(0)
    grid.update(0, sphere_density, warmup_steps=1, generator=g)  # warm-up: every cell
    occupied = int(grid.binary.sum())
    seen = []
    grid.update(16, lambda p: (seen.append(p.shape[0]), sphere_density(p))[1], warmup_steps=1, generator=g)
    # a random quarter of the cells (repeats drawn once) together with every occupied cell
    assert max(occupied, 0.8 * grid.num_cells // 4) <= seen[0] <= grid.num_cells // 4 + occupied


# ---------------------------------------------------------------------- rendering rays
COLOUR = torch.tensor([0.2, 0.6, 0.9])
BG = torch.tensor([1.0, 0.0, 1.0])


class SphereField:
    """A solid ball of density 1000 and one colour (a parameter, for gradients); records its inputs."""

    def __init__(self, radius: float = 0.5):
        self.radius = radius
        self.colour = COLOUR.clone().requires_grad_()
        self.points: list[torch.Tensor] = []

    def __call__(self, points, dirs):
        assert points.shape == dirs.shape
        self.points.append(points.detach())
        sigma = torch.where(points.norm(dim=-1) < self.radius, 1000.0, 0.0)
        return sigma, self.colour.expand(points.shape[0], 3)


def sphere_rays():
    o = torch.tensor([[0.0, 0.0, -3.0], [0.1, -0.05, -3.0], [0.0, 0.8, -3.0], [0.0, 3.0, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    return o, d


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("use_grid", [False, True])
def test_render_rays_solid_sphere(backend, use_grid):
    field = SphereField()
    grid = None
    if use_grid:
        grid = OccupancyGrid(BOX, resolution=16)
        g = torch.Generator().manual_seed(0)
        for step in range(8):  # several jittered looks catch the cells the surface only clips
            grid.update(step, lambda p: torch.where(p.norm(dim=-1) < 0.5, 1000.0, 0.0), n=1, step_size=0.005, generator=g)
    o, d = sphere_rays()
    out = render_rays(field, Rays(o, d), sampler=OccupancySampler(BOX, 0.005, 1000, grid), background=BG, backend=backend)
    assert out.rgb.shape == (4, 3) and out.alpha.shape == (4, 1) and out.depth.shape == (4, 1)
    # through the centre: the ball's colour, opaque, at the distance of its surface
    torch.testing.assert_close(out.rgb[:2], COLOUR.expand(2, 3), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.alpha[:2], torch.ones(2, 1), atol=1e-4, rtol=0)
    surface = 3.0 - torch.sqrt(0.25 - (o[:2, :2] ** 2).sum(dim=-1))
    torch.testing.assert_close(out.depth[:2, 0], surface, atol=0.006, rtol=0)
    # past the ball (inside the box) and past the box: the background
    torch.testing.assert_close(out.rgb[2:], BG.expand(2, 3))
    assert out.alpha[2:].abs().max().item() == 0.0
    # the field saw only valid samples, all inside the box (and in occupied cells)
    pts = torch.cat(field.points)
    assert pts.shape[0] == out.num_samples == out.samples.num_valid
    assert bool((pts.abs() <= 1.0 + 1e-6).all())
    if use_grid:
        assert bool(grid.occupied(pts).all())
        assert out.num_samples < 500, "empty space is skipped"
    else:
        assert out.num_samples > 1100
    out.rgb[:2].sum().backward()
    torch.testing.assert_close(field.colour.grad, torch.full((3,), 2.0), atol=1e-3, rtol=0)


def test_render_rays_gradients_reach_the_field():
    g = torch.Generator().manual_seed(0)
    o = torch.tensor([[0.0, 0.0, -3.0]]).expand(8, 3) + torch.randn(8, 3, generator=g) * torch.tensor([0.3, 0.3, 0.0])
    d = torch.tensor([[0.0, 0.0, 1.0]]).expand(8, 3)
    log_sigma = torch.tensor(0.0, requires_grad=True)

    def field(points, dirs):
        sigma = torch.exp(log_sigma) * torch.ones(points.shape[0])
        return sigma, torch.sigmoid(points)

    out = render_rays(field, Rays(o, d), sampler=OccupancySampler(BOX, 0.05, 100), backend="torch")
    out.alpha.sum().backward()
    assert log_sigma.grad is not None and log_sigma.grad.item() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_render_rays_without_samples_gives_the_background(backend):
    field = SphereField()
    o = torch.tensor([[0.0, 3.0, -3.0], [5.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    out = render_rays(field, Rays(o, d), sampler=OccupancySampler(BOX, 0.01, 100), background=BG, backend=backend)
    assert out.num_samples == 0 and field.points == [], "the field is not called"
    torch.testing.assert_close(out.rgb, BG.expand(2, 3))
    assert out.alpha.abs().max().item() == 0.0 and out.depth.abs().max().item() == 0.0


def fog_field():
    """A soft ball (density falling with radius) with a position-dependent, differentiable colour."""
    tint = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    density = lambda p: 6.0 * torch.relu(1.0 - p.norm(dim=-1))  # noqa: E731
    color = lambda p, d: torch.sigmoid(p * 2.0 + tint + 0.1 * d)  # noqa: E731
    return density, color, tint


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_stage_shading_without_threshold_equals_one_stage(backend):
    density, color, _ = fog_field()
    g = torch.Generator().manual_seed(1)
    o = torch.tensor([[0.0, 0.0, -3.0]]).expand(16, 3) + torch.randn(16, 3, generator=g) * torch.tensor([0.4, 0.4, 0.0])
    d = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, 1.0]]) + torch.randn(16, 3, generator=g) * 0.05, dim=-1)
    kw = dict(sampler=OccupancySampler(BOX, 0.02, 400), background=BG, backend=backend)
    one = render_rays(lambda p, v: (density(p), color(p, v)), Rays(o, d), **kw)
    two = render_rays(density, Rays(o, d), color=color, **kw)
    assert two.num_samples == one.num_samples > 0
    torch.testing.assert_close(two.rgb, one.rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(two.alpha, one.alpha)


def test_two_stage_shading_shades_only_heavy_samples():
    density, color, tint = fog_field()
    o = torch.tensor([[0.0, 0.0, -3.0], [0.3, -0.2, -3.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    kw = dict(sampler=OccupancySampler(BOX, 0.02, 400), backend="torch")
    seen = []

    def counting_color(p, v):
        seen.append(p.shape[0])
        return color(p, v)

    threshold = 0.01
    two = render_rays(density, Rays(o, d), color=counting_color, weight_threshold=threshold, **kw)
    # the same image by hand: colour only where the (density-only) weight passes the threshold
    full = render_rays(lambda p, v: (density(p), color(p, v)), Rays(o, d), **kw)
    valid = full.samples.valid
    heavy = valid & (full.weights > threshold)
    assert 0 < seen[0] == int(heavy.sum()) < int(valid.sum())
    mid = full.samples.midpoints
    pts = o[:, None] + d[:, None] * mid[..., None]
    rgbs = torch.where(heavy[..., None], color(pts, d[:, None].expand_as(pts)), torch.zeros(()))
    expected = (full.weights[..., None] * rgbs).sum(1)
    torch.testing.assert_close(two.rgb, expected, atol=1e-5, rtol=0)
    # training: each ray's heaviest samples are shaded even above every weight
    seen.clear()
    g = torch.Generator().manual_seed(0)
    topk = render_rays(density, Rays(o, d), color=counting_color, weight_threshold=2.0, shade_topk=3, stratified=True, generator=g, **kw)
    assert seen == [6]
    topk.rgb.sum().backward()
    assert tint.grad is not None and tint.grad.abs().sum() > 0


# ---------------------------------------------------------------------- pixels
def mixed_size_cameras() -> Cameras:
    big = ring_cameras(3, 40, 30)
    small = ring_cameras(2, 8, 6, seed=1)
    small = replace(small, model=torch.full((2,), int(CameraModel.OPENCV)), dist=torch.tensor([[0.1, -0.02, 0.001, 0.002]] * 2))
    return Cameras.cat([big, small])


def test_sample_pixels_covers_images_of_different_sizes():
    cams = mixed_size_cameras()
    indices = [0, 3, 4]
    g = torch.Generator().manual_seed(0)
    cam, x, y = sample_pixels(cams, indices, 30000, g)
    assert cam.dtype == x.dtype == y.dtype == torch.int64 and cam.shape == (30000,)
    assert set(cam.tolist()) == set(indices)
    share = torch.bincount(cam, minlength=5).float() / 30000
    torch.testing.assert_close(share[indices], torch.full((3,), 1 / 3), atol=0.02, rtol=0)
    assert bool((x >= 0).all() and (y >= 0).all())
    assert bool((x < cams.width[cam]).all() and (y < cams.height[cam]).all())
    for c in (3, 4):  # small images: every pixel drawn
        m = cam == c
        assert len(set(zip(x[m].tolist(), y[m].tolist()))) == 48
    m = cam == 0
    assert x[m].max() == 39 and y[m].max() == 29 and x[m].min() == 0 and y[m].min() == 0
    again = sample_pixels(cams, indices, 30000, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((cam, x, y), again))


def test_pixel_rays_match_generate_rays():
    cams = mixed_size_cameras()
    cam, x, y = sample_pixels(cams, [1, 2, 3, 4], 500, torch.Generator().manual_seed(1))
    rays = pixel_rays(cams, cam, x, y)
    o, d = rays.origins, rays.dirs
    assert o.shape == d.shape == (500, 3) and rays.radii.shape == (500,)
    for c in range(1, 5):
        m = cam == c
        full_o, full_d = cams.generate_rays(c)
        torch.testing.assert_close(o[m], full_o[y[m], x[m]])
        torch.testing.assert_close(d[m], full_d[y[m], x[m]], atol=1e-5, rtol=0)


def test_cone_radii_are_the_pixel_footprint():
    """A pinhole camera's ray through the image centre: pixels are 1/f apart there, so the cone
    radius per unit distance is 2/sqrt(12)/f; towards the corners the direction spacing shrinks
    by cos^2 of the angle off the axis (horizontally and vertically alike for square pixels)."""
    cam = ring_cameras(1, 40, 30)  # f = 0.9 * 40 = 36 px
    f = float(cam.fx[0])
    centre = pixel_rays(cam, torch.tensor([0]), torch.tensor([20]), torch.tensor([15]))
    torch.testing.assert_close(centre.radii, torch.tensor([2 / 12**0.5 / f]), rtol=2e-3, atol=0)
    corner = pixel_rays(cam, torch.tensor([0]), torch.tensor([0]), torch.tensor([0]))
    u, v = (0.5 - 20) / f, (0.5 - 15) / f
    cos2 = 1 / (1 + u * u + v * v)
    # across the corner the spacing is cos^2 (radial) and cos (tangential) of 1/f: their mean lies between
    assert 2 / 12**0.5 / f * cos2 * 0.95 < float(corner.radii) < 2 / 12**0.5 / f * cos2**0.5
    rays, h, w = camera_rays(cam)
    assert (h, w) == (30, 40) and len(rays) == 1200
    torch.testing.assert_close(rays.radii[15 * 40 + 20], centre.radii[0])


# ---------------------------------------------------------------------- rendering images
def test_render_image_constant_field_and_chunking():
    cam = ring_cameras(1, 16, 12)
    sigma, colour, bg = 2.0, torch.tensor([0.3, 0.5, 0.7]), torch.tensor([0.0, 0.0, 1.0])

    def field(points, dirs):
        return torch.full((points.shape[0],), sigma), colour.expand(points.shape[0], 3)

    kw = dict(sampler=OccupancySampler(BOX, 0.02, 1000), background=bg)
    img = render_image(field, cam, **kw)
    assert img.rgb.shape == (1, 12, 16, 3) and img.alpha.shape == (1, 12, 16, 1) and img.depth.shape == (1, 12, 16, 1)
    o, d = cam.generate_rays(0)
    near, far, hit = ray_aabb(o.reshape(-1, 3), d.reshape(-1, 3), BOX)
    assert hit.any() and (~hit).any(), "the image shows the box and the space around it"
    alpha = (1 - torch.exp(-sigma * (far - near))).reshape(1, 12, 16, 1)  # intervals tile [near, far] exactly
    torch.testing.assert_close(img.alpha, alpha, atol=1e-5, rtol=0)
    torch.testing.assert_close(img.rgb, alpha * colour + (1 - alpha) * bg, atol=1e-5, rtol=0)
    depth = img.depth.reshape(-1)
    assert bool((depth[hit] > near[hit]).all() and (depth[hit] < far[hit]).all())
    chunked = render_image(field, cam, chunk=37, **kw)
    for a, b in ((img.rgb, chunked.rgb), (img.alpha, chunked.alpha), (img.depth, chunked.depth)):
        torch.testing.assert_close(a, b)
    assert chunked.num_samples == img.num_samples
    with torch.no_grad():
        assert not render_image(SphereField(radius=0.8), cam, chunk=50, **kw).rgb.requires_grad
    assert render_image(SphereField(radius=0.8), cam, chunk=50, **kw).rgb.requires_grad
