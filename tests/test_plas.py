"""Self-organising Gaussian grids: the PLAS sort, its quality measure, features and smoothness loss."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from scene3d.compress.plas import (
    grid_neighbour_distance,
    grid_shape,
    grid_smoothness_loss,
    sog_features,
    sort_into_grid,
    to_grid,
)
from tests.scene_files import random_model


def colour_field(h: int, w: int) -> torch.Tensor:
    """A smooth RGB image [h, w, 3] in [0, 1] (the 'known arrangement')."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([0.5 + 0.5 * torch.sin(3 * xx + 1), 0.5 + 0.5 * torch.cos(2.5 * yy + xx), xx * yy], -1)


def shuffled(values: torch.Tensor, seed: int = 1) -> torch.Tensor:
    return values[torch.randperm(values.shape[0], generator=torch.Generator().manual_seed(seed))]


def png_size(grid: torch.Tensor) -> int:
    """Lossless PNG bytes of an RGB grid in [0, 1], quantised to 8 bits."""
    img = (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="PNG", compress_level=9)
    return buf.tell()


def check_order(order: torch.Tensor, n: int, shape) -> None:
    h, w = shape
    assert order.dtype == torch.int64 and order.shape == (h * w,)
    assert torch.equal(order[:n].sort().values, torch.arange(n)), "every Gaussian exactly once"
    assert bool((order[n:] == -1).all()), "-1 only in the trailing padding"


# ---------------------------------------------------------------------------------------- layout
@pytest.mark.parametrize("n", [1, 3, 4, 5, 17, 100, 1000, 1024, 4097, 200_000, 1_000_003])
def test_grid_shape(n):
    h, w = grid_shape(n)
    assert w % 4 == 0 and h * w >= n
    assert h * w - n < w, "at most one partial row"
    assert math.sqrt(n) <= w < math.sqrt(n) + 4 and h <= w, "near square, SOG's width"


def test_grid_shape_zero_and_empty_sort():
    assert grid_shape(0) == (0, 0)
    assert sort_into_grid(torch.zeros(0, 3)).numel() == 0


def test_neighbour_distance_of_known_grids():
    assert grid_neighbour_distance(torch.zeros(4, 8, 3)) == 0.0
    ramp = torch.arange(8.0).expand(4, 8)[..., None]  # steps of 1 along x, 0 along y
    assert grid_neighbour_distance(ramp) == pytest.approx(4 * 7 / (4 * 7 + 3 * 8))
    valid = torch.ones(4, 8, dtype=torch.bool)
    valid[:, 4:] = False
    assert grid_neighbour_distance(ramp, valid) == pytest.approx(4 * 3 / (4 * 3 + 3 * 4))


def test_box_mean_target_matches_brute_force():
    from scene3d.compress.plas import _box_mean

    g = torch.Generator().manual_seed(0)
    grid = torch.randn(9, 13, 2, generator=g, dtype=torch.float64)
    valid = torch.ones(9, 13, dtype=torch.bool)
    valid[-1, 5:] = False
    for mask in (None, valid):
        x = grid if mask is None else grid * mask[..., None]
        v = torch.ones(9, 13, dtype=torch.bool) if mask is None else mask
        for ry, rx in [(1, 2), (3, 3), (4, 6), (20, 20), (0, 5)]:
            want = torch.zeros_like(x)
            for i in range(9):
                for j in range(13):
                    win = (slice(max(i - ry, 0), i + ry + 1), slice(max(j - rx, 0), j + rx + 1))
                    want[i, j] = (x[win] * v[win][..., None]).sum((0, 1)) / v[win].sum()
            got = _box_mean(x, mask, ry, rx)
            assert torch.allclose(got[v], want[v], atol=1e-12), (mask is None, ry, rx)


# ---------------------------------------------------------------------------------------- sorting
def test_sort_recovers_a_smooth_field():
    field = colour_field(64, 64)
    known = grid_neighbour_distance(field)
    values = shuffled(field.reshape(-1, 3))
    before = grid_neighbour_distance(values.reshape(64, 64, 3))
    order = sort_into_grid(values, shape=(64, 64))
    check_order(order, 4096, (64, 64))
    grid, _ = to_grid(values, order, (64, 64))
    after = grid_neighbour_distance(grid)
    assert after < before / 15, (before, after)
    assert after < 1.5 * known, (known, after)
    # the practical criterion: the sorted image is a much smaller PNG (the known one: ~0.15)
    assert png_size(grid) < 0.6 * png_size(values.reshape(64, 64, 3))


def test_sort_is_deterministic_for_a_seed():
    values = shuffled(colour_field(16, 16).reshape(-1, 3))
    threads = torch.get_num_threads()
    a = sort_into_grid(values, shape=(16, 16), seed=3)
    assert torch.get_num_threads() == threads, "the sort restores torch's thread count"
    b = sort_into_grid(values, shape=(16, 16), seed=3, num_threads=None)
    c = sort_into_grid(values, shape=(16, 16), seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("n, shape", [(1000, None), (700, (20, 36)), (1, None), (3, None), (6, (2, 4)), (50, (5, 11))])
def test_sort_pads_when_n_is_not_the_grid_size(n, shape):
    values = shuffled(colour_field(32, 32).reshape(-1, 3))[:n]
    order = sort_into_grid(values, shape=shape)
    shape = grid_shape(n) if shape is None else shape
    check_order(order, n, shape)
    if n >= 700:
        grid, valid = to_grid(values, order, shape)
        start = torch.full((shape[0] * shape[1],), -1, dtype=torch.long)
        start[:n] = torch.arange(n)
        before = grid_neighbour_distance(*to_grid(values, start, shape))
        assert grid_neighbour_distance(grid, valid) < before / 4


def test_sort_rejects_a_small_grid():
    with pytest.raises(ValueError):
        sort_into_grid(torch.zeros(10, 2), shape=(3, 3))


def test_sort_effort_knobs(capsys):
    values = shuffled(colour_field(32, 32).reshape(-1, 3))
    before = grid_neighbour_distance(values.reshape(32, 32, 3))
    full = sort_into_grid(values, shape=(32, 32), verbose=True)
    full_rounds = int(capsys.readouterr().out.strip().splitlines()[-1].split("(")[1].split()[0])
    for cap in (1, 60):
        quick = sort_into_grid(values, shape=(32, 32), max_rounds=cap, verbose=True)
        rounds = int(capsys.readouterr().out.strip().splitlines()[-1].split("(")[1].split()[0])
        assert rounds <= cap < full_rounds
        check_order(quick, 1024, (32, 32))
    assert grid_neighbour_distance(to_grid(values, quick, (32, 32))[0]) < before / 3
    assert grid_neighbour_distance(to_grid(values, full, (32, 32))[0]) < grid_neighbour_distance(
        to_grid(values, quick, (32, 32))[0])
    with pytest.raises(ValueError):
        sort_into_grid(values, max_rounds=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sort_on_cuda():
    values = shuffled(colour_field(32, 32).reshape(-1, 3))[:1000]
    order = sort_into_grid(values.cuda())
    assert order.device.type == "cuda"
    check_order(order.cpu(), 1000, grid_shape(1000))
    grid, valid = to_grid(values, order.cpu(), grid_shape(1000))
    assert grid_neighbour_distance(grid, valid) < 1.6 * grid_neighbour_distance(colour_field(32, 32))


# ---------------------------------------------------------------------------------------- features
def test_sog_features():
    params = random_model(500, seed=2)
    f = sog_features(params)
    assert f.shape == (500, 14) and not f.requires_grad
    assert torch.allclose(f.mean(0), torch.zeros(14), atol=1e-4)
    for sl in (slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 13), slice(13, 14)):  # one scale per attribute
        assert f[:, sl].pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-3)
    # q and -q are the same rotation, so they get the same features
    flipped = dict(params, quats=-params["quats"])
    assert torch.allclose(sog_features(flipped), f, atol=1e-6)
    assert sog_features(params, weights={"means": 2.0}).shape == (500, 3)


def test_sort_model_features_end_to_end():
    params = random_model(1000, seed=0)
    params["means"] = params["means"] * 0 + torch.linspace(-1, 1, 1000)[:, None]  # a line: sortable
    f = sog_features(params, weights={"means": 1.0, "sh0": 0.0})
    order = sort_into_grid(f)
    check_order(order, 1000, grid_shape(1000))
    start = torch.full_like(order, -1)
    start[:1000] = torch.arange(1000)
    before = grid_neighbour_distance(*to_grid(shuffled(f), start, grid_shape(1000)))
    assert grid_neighbour_distance(*to_grid(f, order, grid_shape(1000))) < before / 4


# ---------------------------------------------------------------------------------------- loss
def grid_model(h: int, w: int, noise: float, n: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """A model whose attributes (in grid order 0..n-1) vary smoothly over an h x w grid, plus noise."""
    n = h * w if n is None else n
    g = torch.Generator().manual_seed(seed)
    field = colour_field(h, w).reshape(-1, 3)[:n]
    rnd = lambda *s: noise * torch.randn(*s, generator=g)  # noqa: E731
    quats = torch.cat([torch.ones(n, 1), 0.3 * field], 1) + rnd(n, 4)
    return {
        "means": field * 2 - 1 + rnd(n, 3),
        "quats": quats,
        "scales": -3 + field + rnd(n, 3),
        "opacities": field[:, 0] * 2 - 1 + rnd(n),
        "sh0": (field - 0.5)[:, None, :] + rnd(n, 1, 3),
        "shN": torch.zeros(n, 15, 3),
    }


def identity_order(n: int, shape) -> torch.Tensor:
    order = torch.full((shape[0] * shape[1],), -1, dtype=torch.long)
    order[:n] = torch.arange(n)
    return order


def test_smoothness_loss_zero_for_a_constant_grid():
    n, shape = 90, (8, 12)  # with 6 empty cells, which must not count
    params = {
        "means": torch.full((n, 3), 0.3),
        "quats": torch.tensor([[0.9, 0.1, 0.2, 0.3]]).repeat(n, 1),
        "scales": torch.full((n, 3), -4.0),
        "opacities": torch.full((n,), 1.5),
        "sh0": torch.full((n, 1, 3), 0.2),
        "shN": torch.zeros(n, 15, 3),
    }
    loss = grid_smoothness_loss(params, identity_order(n, shape), shape)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("loss_fn", ["huber", "mse"])
def test_smoothness_loss_orders_noise_and_smooths(loss_fn):
    shape = (24, 24)
    order = identity_order(570, shape)
    smooth = grid_smoothness_loss(grid_model(*shape, noise=0.0, n=570), order, shape, loss=loss_fn)
    noisy_params = {k: v.clone().requires_grad_(True) for k, v in grid_model(*shape, noise=0.3, n=570).items()}
    noisy = grid_smoothness_loss(noisy_params, order, shape, loss=loss_fn)
    assert noisy.item() > 5 * smooth.item()
    # shuffling the layout of the smooth model makes it rough too
    rough = grid_smoothness_loss(grid_model(*shape, noise=0.0, n=570), shuffled(order[:570]).tolist() + [-1] * 6, shape)
    assert rough.item() > 5 * smooth.item()
    # the gradient points towards smoothing: a small step against it lowers the loss
    noisy.backward()
    for k in ("means", "quats", "scales", "opacities", "sh0"):
        assert noisy_params[k].grad is not None and noisy_params[k].grad.abs().sum() > 0, k
    assert noisy_params["shN"].grad is None or noisy_params["shN"].grad.abs().sum() == 0
    with torch.no_grad():
        norm = math.sqrt(sum(float(v.grad.pow(2).sum()) for v in noisy_params.values() if v.grad is not None))
        stepped = {k: v - 0.05 * v.grad / norm if v.grad is not None else v for k, v in noisy_params.items()}
    after = grid_smoothness_loss(stepped, order, shape, loss=loss_fn)
    assert after.item() < noisy.item()


def test_smoothness_loss_through_a_model_and_a_sort():
    """End to end: sort a noisy model, the loss of the sorted layout is far below the shuffled one."""
    params = grid_model(24, 24, noise=0.05)
    perm = torch.randperm(576, generator=torch.Generator().manual_seed(0))
    params = {k: v[perm] for k, v in params.items()}
    shuffled_order = identity_order(576, (24, 24))
    order = sort_into_grid(sog_features(params), shape=(24, 24))
    assert grid_smoothness_loss(params, order, (24, 24)) < 0.5 * grid_smoothness_loss(params, shuffled_order, (24, 24))


def test_to_grid_fills_empty_cells():
    values = torch.arange(6.0)[:, None].requires_grad_(True)
    grid, valid = to_grid(values, torch.tensor([5, 4, 3, 2, 1, 0, -1, -1]), (2, 4), fill=-7.0)
    assert grid[..., 0].tolist() == [[5, 4, 3, 2], [1, 0, -7, -7]]
    assert valid.tolist() == [[True] * 4, [True, True, False, False]]
    grid.sum().backward()
    assert values.grad[:, 0].tolist() == [1.0] * 6
    np.testing.assert_equal(grid_shape(6), (2, 4))
