"""Inference marching (scene3d.renderers.rays.march) against the training renderer, and slimmed
SlimmeRF renders that skip the components above their rank."""

from __future__ import annotations

import math

import pytest
import torch

from scene3d.renderers.rays import OccupancyGrid, OccupancySampler, Rays, render_rays
from scene3d.renderers.rays.march import march_image, march_rays, tile_order
from scene_files import orbit_cameras

CENTRES = torch.tensor([[0.3, 0.0, 0.0], [-0.35, 0.2, 0.1], [0.0, -0.3, -0.3]])


def density(points):
    """Three dense blobs: rays through them become opaque well before they leave the box."""
    d2 = ((points[:, None, :] - CENTRES[None]) ** 2).sum(-1)
    return 400.0 * torch.exp(-d2 / (2 * 0.12**2)).sum(-1)


def color(points, dirs):
    return torch.sigmoid(torch.cat([points * 3.0, dirs[:, :1]], dim=1))[:, :3]


def _setup(early_grid: bool = True):
    aabb = [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]
    grid = OccupancyGrid(aabb, 32)
    grid.update(0, density, occ_thre=0.01, n=1, step_size=0.01, generator=torch.Generator().manual_seed(0))
    assert 0.01 < grid.occupied_fraction() < 0.5  # empty space is there to skip
    sampler = OccupancySampler(aabb, step_size=0.01, max_samples=400, grid=grid if early_grid else None)
    g = torch.Generator().manual_seed(1)
    origins = torch.randn(3000, 3, generator=g)
    origins = 2.5 * origins / origins.norm(dim=1, keepdim=True)
    targets = 0.5 * (torch.rand(3000, 3, generator=g) - 0.5)
    dirs = targets - origins
    return sampler, Rays(origins, dirs / dirs.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("with_grid", [True, False])
def test_marching_without_early_stop_equals_the_training_renderer(with_grid):
    sampler, rays = _setup(with_grid)
    bg = torch.tensor([1.0, 0.5, 0.0])
    ref = render_rays(density, rays, sampler=sampler, color=color, background=bg, weight_threshold=1e-4, backend="torch")
    out = march_rays(density, color, rays, sampler=sampler, background=bg, weight_threshold=1e-4, early_stop=0.0, block=16)
    assert out.num_samples == ref.num_samples  # the same intervals, every one of them
    torch.testing.assert_close(out.rgb, ref.rgb, atol=2e-6, rtol=0)
    torch.testing.assert_close(out.alpha, ref.alpha, atol=2e-6, rtol=0)
    torch.testing.assert_close(out.depth, ref.depth, atol=2e-5, rtol=0)


@pytest.mark.parametrize("early_stop", [1e-4, 1e-2])
def test_early_stop_changes_no_pixel_by_more_than_it_allows_and_saves_samples(early_stop):
    sampler, rays = _setup()
    bg = torch.tensor([1.0, 1.0, 1.0])
    full = march_rays(density, color, rays, sampler=sampler, background=bg, weight_threshold=1e-4, early_stop=0.0)
    fast = march_rays(density, color, rays, sampler=sampler, background=bg, weight_threshold=1e-4, early_stop=early_stop)
    assert (fast.rgb - full.rgb).abs().max() <= early_stop  # colours and background are at most 1
    assert (fast.alpha - full.alpha).abs().max() <= early_stop
    opaque = (full.alpha > 0.999).float().mean()
    assert opaque > 0.2  # the scene stops many rays
    assert fast.num_samples < 0.75 * full.num_samples, (fast.num_samples, full.num_samples)


@pytest.mark.parametrize("with_grid", [True, False])
def test_the_numba_block_sampler_equals_the_torch_path(monkeypatch, with_grid):
    import scene3d.renderers.rays.march as march

    sampler, rays = _setup(with_grid)
    fast = march_rays(density, color, rays, sampler=sampler, weight_threshold=1e-4, early_stop=1e-4)
    monkeypatch.setattr(march, "_fused_blocks", lambda *a: None)  # what runs on CUDA
    twin = march_rays(density, color, rays, sampler=sampler, weight_threshold=1e-4, early_stop=1e-4)
    assert fast.num_samples == twin.num_samples and fast.num_shaded == twin.num_shaded
    torch.testing.assert_close(fast.rgb, twin.rgb, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast.depth, twin.depth, atol=1e-5, rtol=0)


def test_the_block_size_changes_nothing():
    sampler, rays = _setup()
    outs = [march_rays(density, color, rays, sampler=sampler, weight_threshold=1e-4, early_stop=1e-4, block=b) for b in (1, 7, 64, 512)]
    for out in outs[1:]:
        torch.testing.assert_close(out.rgb, outs[0].rgb, atol=2e-6, rtol=0)


def test_ray_spans_cover_every_occupied_interval():
    from scene3d.renderers.rays import ray_aabb, sample_along_rays

    sampler, _ = _setup()
    g = torch.Generator().manual_seed(5)
    origins = torch.randn(4000, 3, generator=g)
    origins = 2.5 * origins / origins.norm(dim=1, keepdim=True)
    dirs = 1.6 * torch.rand(4000, 3, generator=g) - 0.8 - origins  # towards [-0.8, 0.8]^3: some rays miss every blob
    rays = Rays(origins, dirs / dirs.norm(dim=1, keepdim=True))
    near, far, _ = ray_aabb(rays.origins, rays.dirs, sampler.aabb)
    steps = torch.clamp(torch.ceil(torch.clamp(far - near, min=0) / sampler.step_size), max=sampler.max_samples).long()
    first, last = sampler.grid.ray_spans(rays.origins, rays.dirs, near, far, steps, sampler.step_size)
    dense = sample_along_rays(rays.origins, rays.dirs, near, far, sampler.step_size, sampler.max_samples)  # every interval, in order
    mids = rays.origins[:, None] + rays.dirs[:, None] * dense.midpoints[..., None]
    hit = sampler.grid.occupied(mids.reshape(-1, 3)).reshape(dense.valid.shape) & dense.valid
    k = torch.arange(hit.shape[1])[None].expand_as(hit)
    assert bool(((k >= first[:, None]) & (k <= last[:, None]))[hit].all())
    empty = ~hit.any(1)
    assert bool((first[empty] > last[empty]).all()) and 0.05 < float(empty.float().mean()) < 0.95
    assert bool((last[~empty] - first[~empty] + 1 <= steps[~empty]).all())


def test_tiles_cover_every_pixel_once():
    order = tile_order(70, 45, 16)
    assert sorted(order.tolist()) == list(range(70 * 45))
    first = order[:256]
    assert (first // 45).max() < 16 and (first % 45).max() < 16  # the first tile is the top-left 16 x 16


def test_an_image_marched_in_tiles_equals_rays_marched_at_once():
    sampler, _ = _setup()
    cam = orbit_cameras(1, radius=2.5, size=40)
    from scene3d.renderers.rays import camera_rays

    rays, h, w = camera_rays(cam)
    whole = march_rays(density, color, rays, sampler=sampler, weight_threshold=1e-4)
    image = march_image(density, color, cam, sampler=sampler, weight_threshold=1e-4, tile=16)
    torch.testing.assert_close(image.rgb.reshape(-1, 3), whole.rgb, atol=2e-6, rtol=0)
    assert image.num_samples == whole.num_samples


# ---------------------------------------------------------------------------- slimmed SlimmeRF
def _slimmerf(rank: int = 6):
    from scene3d.models.slimmerf import SlimmeRFConfig, SlimmeRFModel

    cfg = SlimmeRFConfig(rank=rank, grid_init=24, hidden=16, density_shift=-2.0, occupancy_resolution=16)
    model = SlimmeRFModel(cfg, torch.tensor([[-1.0, -1, -1], [1.0, 1, 1]]), [24, 25, 26], rank=rank)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g))
    model.update_occupancy(0)
    return model


def test_a_rank_r_render_equals_the_full_model_with_the_components_above_r_removed():
    model, r = _slimmerf(), 2
    cam = orbit_cameras(1, radius=2.5, size=24)
    slim = model.render(cam, options={"rank": r})
    R = model.cfg.rank
    with torch.no_grad():  # the same model with the components above r set to zero, at full rank
        for planes, width in ((model.density_planes, 1), (model.density_lines, 1), (model.app_planes, 3), (model.app_lines, 3)):
            for p in planes:
                p[:, width * r :] = 0
    full = model.render(cam, options={"rank": R})
    torch.testing.assert_close(slim.rgb, full.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(slim.depth, full.depth, atol=1e-4, rtol=0)


def test_rank_r_rendering_evaluates_no_component_above_r(monkeypatch):
    """Counted: the numba path copies and reads only the first r density and 3r appearance
    channels; the grid_sample path samples only those channels."""
    import scene3d.models.slimmerf as slimmerf
    import scene3d.renderers.rays.vm as vm

    model = _slimmerf()
    cam = orbit_cameras(1, radius=2.5, size=16)
    copied: list[int] = []
    original_copy = vm.channels_last

    def counting_copy(planes, lines, channels):
        grids = original_copy(planes, lines, channels)
        copied.extend(a.shape[-1] for a in (*grids[0], *grids[1]))
        return grids

    monkeypatch.setattr(vm, "channels_last", counting_copy)
    sampled: list[int] = []
    original_sample = slimmerf.F.grid_sample

    def counting_sample(grid, coords, **kw):
        sampled.append(grid.shape[1])
        return original_sample(grid, coords, **kw)

    monkeypatch.setattr(slimmerf.F, "grid_sample", counting_sample)
    pts = torch.rand(500, 3) * 2 - 1
    dirs = torch.nn.functional.normalize(torch.randn(500, 3), dim=1)
    for r in (1, 3, 6):
        copied.clear()
        model.render(cam, options={"rank": r})
        assert sorted(set(copied)) == [r, 3 * r] and not sampled  # the CPU render reads channels-last copies only
        model.density(pts, r, 0.0)
        model.color(pts, dirs, r, 0.0)
        assert sorted(set(sampled)) == [r, 3 * r]
        sampled.clear()
    assert math.isclose(model.cfg.early_stop, 1e-4)


def test_the_numba_vm_kernels_equal_grid_sample():
    from scene3d.renderers.rays import vm

    g = torch.Generator().manual_seed(0)
    planes = [torch.randn(1, 48, 30 + p, 40 - p, generator=g) for p in range(3)]
    lines = [torch.randn(1, 48, 25 + 3 * p, 1, generator=g) for p in range(3)]
    x = torch.rand(5000, 3, generator=g) * 2 - 1
    x[:6] = torch.tensor([[-1.0, -1, -1], [1, 1, 1], [1, -1, 1], [0.99999, 1, -1], [1.2, 0, 0], [0, -1.5, 0.3]])  # faces, corners, outside
    for channels in (1, 12, 48):
        grids = vm.channels_last(planes, lines, channels)
        torch.testing.assert_close(vm.vm_density_features(grids, x), vm.vm_density_features_torch(planes, lines, x, channels), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vm.vm_stacked_features(grids, x), vm.vm_stacked_features_torch(planes, lines, x, channels), atol=1e-5, rtol=1e-5)


def test_slimmerf_renders_the_same_through_the_kernels_and_grid_sample(monkeypatch):
    import scene3d.models.slimmerf as slimmerf

    model = _slimmerf()
    cam = orbit_cameras(1, radius=2.5, size=24)
    fast = model.render(cam, options={"rank": 4})
    monkeypatch.setattr(slimmerf, "_numba_available", lambda: False)
    twin = model.render(cam, options={"rank": 4})
    torch.testing.assert_close(fast.rgb, twin.rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.alpha, twin.alpha, atol=1e-5, rtol=0)


def test_bench_rays_reports_every_rank_and_training_speed(slim_run):
    import json

    from tests.runs import cli

    r = cli("bench", "rays", str(slim_run), "--images", "2", "--ranks", "2", "1", "--viewer-size", "32", "--steps", "2", "--warmup", "0",
            "--rounds", "1", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert [row["rank"] for row in result["rows"]] == [4, 2, 1]  # the trained rank first
    for row in result["rows"]:
        assert row["views"] == 2 and row["seconds_per_view"] > 0 and row["viewer_frame_seconds"] > 0
        assert 0 < row["samples_per_pixel"] < 96  # bounded by the model's max samples per ray
    assert result["rows"][0]["psnr"] > 16 and result["train_steps_per_second"] > 0
    assert result["image_size"] == [40, 30] and result["model"] == "slimmerf"


def test_prefix_training_renders_random_prefixes_and_trai_n_ignores_their_losses():
    from scene3d.models.slimmerf import SlimmeRFConfig

    model = _slimmerf()
    model.cfg = SlimmeRFConfig(**{**model.cfg.__dict__, "prefix_prob": 0.5, "rank_upsilon": 0.1, "rank_cooldown": 0, "occupancy_every": 0})
    model.current_rank = 4
    seen = []

    class Batch:
        rays = Rays(torch.tensor([[0.0, 0.0, -2.5]]).repeat(8, 1), torch.tensor([[0.0, 0.0, 1.0]]).repeat(8, 1))
        background = None
        generator = torch.Generator().manual_seed(0)

    for step in range(200):
        model.forward(Batch, step)
        seen.append(model.train_rank)
        model.train_rank = None
    prefixes = [r for r in seen if r is not None]
    assert 0.3 < len(prefixes) / len(seen) < 0.45 and sorted(set(prefixes)) == [1, 2, 3]  # 0.5 x 3/4 of the steps, below the current rank 4
    model.last_loss = 1.0
    model.train_rank = 2
    model.after_step(10, {"rgb": torch.tensor(5.0)})  # a prefix step's loss jumps: no rank change
    assert model.current_rank == 4 and model.last_loss == 1.0 and model.train_rank is None
    model.after_step(11, {"rgb": torch.tensor(5.0)})  # the same jump on a full step: TRaIn adds a rank
    assert model.current_rank == 5 and model.last_loss == 5.0


# ---------------------------------------------------------------------------- the one-pass VM marcher
def _vm_setup():
    """A random slimmerf model whose density is also given as a VMDensity, and camera rays."""
    from scene3d.renderers.rays import camera_rays

    model = _slimmerf()
    with torch.no_grad():
        for plane in model.density_planes:
            plane.mul_(2.0)
    model.cfg = type(model.cfg)(**{**model.cfg.__dict__, "density_shift": -4.0})
    density, color, vm = model.render_fields(4)
    grid = model.occupancy
    r = grid.resolution
    centres = torch.stack(torch.meshgrid(*[(torch.arange(r) + 0.5) / r * 2 - 1] * 3, indexing="ij"), -1).reshape(-1, 3)
    opacity = density(centres) * model.step_size
    grid.binary.copy_((opacity > opacity.quantile(0.8)).reshape(r, r, r))  # the densest fifth (the grid need not be conservative here)
    sampler = model._ray_options(4, 0.0, None)["sampler"]
    rays, _, _ = camera_rays(orbit_cameras(1, radius=2.5, size=40))
    return model, density, color, vm, sampler, rays


@pytest.mark.parametrize("early_stop,cap,fill", [(0.0, 32, False), (1e-4, 32, True), (1e-2, 1, False), (1e-4, 2, True)])
def test_the_one_pass_vm_marcher_equals_the_block_path(early_stop, cap, fill):
    """The numba pass (density inside the loop, empty cells skipped in strides of the coarsest empty
    level) against the block path with the same density as a function. A small ``cap`` sends the
    rays with more samples to shade back to the block path."""
    model, density, color, vm, sampler, rays = _vm_setup()
    assert 0.05 < sampler.grid.occupied_fraction() < 0.9  # there is empty space to skip
    kw = dict(sampler=sampler, background=torch.tensor([1.0, 0.5, 0.0]), weight_threshold=1e-3, early_stop=early_stop, fill_unshaded=fill)
    fast = march_rays(density, color, rays, vm=vm, cap=cap, **kw)
    block = march_rays(density, color, rays, **kw)
    torch.testing.assert_close(fast.rgb, block.rgb, atol=2e-5, rtol=0)
    torch.testing.assert_close(fast.alpha, block.alpha, atol=2e-5, rtol=0)
    torch.testing.assert_close(fast.depth, block.depth, atol=2e-4, rtol=0)
    assert abs(fast.num_shaded - block.num_shaded) <= 2  # a weight within rounding of the threshold may fall either side
    if early_stop == 0:  # every interval in an occupied cell, and no other, is evaluated
        assert fast.num_samples == block.num_samples


def test_the_coarse_occupancy_levels_hold_any_occupied_cell_below():
    sampler, _ = _setup()
    grid = sampler.grid
    flat, table = grid.levels()
    assert table[:, 1].tolist() == [32, 16, 8, 4, 2, 1]
    fine = torch.from_numpy(flat[: 32**3].copy()).reshape(32, 32, 32).bool()
    assert torch.equal(fine, grid.binary)
    for (offset, res), (_, finer) in zip(table[1:], table[:-1]):
        level = torch.from_numpy(flat[offset : offset + res**3].copy()).reshape(res, res, res).bool()
        assert torch.equal(level, fine.reshape(res, 32 // res, res, 32 // res, res, 32 // res).any(5).any(3).any(1))
    assert flat[table[-1, 0]] == 1
    grid.binary.zero_()  # a changed grid is seen
    assert grid.levels()[0].sum() == 0


def test_filling_unshaded_weight_gives_the_shaded_mean_colour():
    sampler, rays = _setup()
    grey = lambda points, dirs: torch.full((points.shape[0], 3), 0.3)  # noqa: E731
    kw = dict(sampler=sampler, background=torch.tensor([1.0, 1.0, 1.0]), early_stop=1e-4)
    every = march_rays(density, grey, rays, weight_threshold=0.0, **kw)
    filled = march_rays(density, grey, rays, weight_threshold=0.05, fill_unshaded=True, **kw)
    dropped = march_rays(density, grey, rays, weight_threshold=0.05, **kw)
    assert filled.num_shaded < 0.5 * every.num_shaded
    torch.testing.assert_close(filled.rgb, every.rgb, atol=1e-5, rtol=0)  # one colour: the fill is exact
    assert (every.rgb - dropped.rgb).abs().max() > 0.01  # dropping the weight darkens pixels
    every_c = march_rays(density, color, rays, weight_threshold=0.0, **kw)
    filled_c = march_rays(density, color, rays, weight_threshold=0.05, fill_unshaded=True, **kw)
    dropped_c = march_rays(density, color, rays, weight_threshold=0.05, **kw)
    assert (filled_c.rgb - every_c.rgb).abs().mean() < 0.25 * (dropped_c.rgb - every_c.rgb).abs().mean()


# ---------------------------------------------------------------------------- exact render occupancy
def _blobby_slimmerf():
    """A slimmerf model whose density components are separate Gaussian blobs (plane bump times line
    bump) in empty space."""
    model = _slimmerf()
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for plane, line in zip(model.density_planes, model.density_lines):
            _, c, h, w = plane.shape
            yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            zz = torch.linspace(-1, 1, line.shape[2])
            for k in range(c):
                cu, cv, cw = (torch.rand(3, generator=g) * 1.4 - 0.7).tolist()
                plane[0, k] = 12.0 * torch.exp(-((xx - cu) ** 2 + (yy - cv) ** 2) / (2 * 0.15**2))
                line[0, k, :, 0] = torch.exp(-((zz - cw) ** 2) / (2 * 0.15**2))
    model.cfg = type(model.cfg)(**{**model.cfg.__dict__, "density_shift": -8.0, "render_skip_alpha": 0.05})
    return model


def test_covering_marks_every_cell_that_overlaps_an_occupied_one():
    g = torch.Generator().manual_seed(4)
    cells = torch.rand(23, 17, 30, generator=g) > 0.97
    box = torch.tensor([-1.0, -0.5, 0.0, 1.0, 0.5, 3.0])
    grid = OccupancyGrid.covering(cells, box, 8)
    pts = box[:3] + torch.rand(200_000, 3, generator=g) * (box[3:] - box[:3])
    ijk = ((pts - box[:3]) / (box[3:] - box[:3]) * torch.tensor(cells.shape)).long().clamp(max=torch.tensor(cells.shape) - 1)
    inside_occupied = cells[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    assert bool(grid.occupied(pts)[inside_occupied].all())
    assert 0.2 < grid.occupied_fraction() < 0.9  # and not everything


@pytest.mark.parametrize("rank", [2, 6])
def test_the_render_grid_is_exact_no_point_denser_than_its_limit_lies_in_an_empty_cell(rank):
    model = _blobby_slimmerf()
    grid = model.render_occupancy(rank)
    g = torch.Generator().manual_seed(rank)
    pts = torch.rand(300_000, 3, generator=g) * 2 - 1
    with torch.no_grad():
        alpha = 1 - torch.exp(-model.density(pts, rank, 0.0) * model.step_size)
    dense = alpha > model.cfg.render_skip_alpha
    assert 0.01 < float(dense.float().mean()) < 0.5
    assert bool(grid.occupied(pts)[dense].all())  # conservative: the trilinear maximum is at a corner
    assert grid.occupied_fraction() < 0.6  # and still skips space
    assert model.render_occupancy(rank) is grid  # kept while nothing changes
    with torch.no_grad():
        model.density_planes[0].mul_(0.5)
    assert model.render_occupancy(rank) is not grid  # a changed density gets a new grid
