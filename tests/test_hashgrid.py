"""The multiresolution hash grid: its layout and hash against tiny-cuda-nn's definitions, the
PyTorch twin against a slow loop-by-loop reference, the numba kernels against the twin (values and
both gradients), tiny-cuda-nn against the twin where it runs, and a small fit trained by Adam."""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from scene3d.renderers.rays.hashgrid import (
    HashGrid,
    HashGridConfig,
    coherent_prime_hash,
    grid_index,
    hash_grid_layout,
    hash_grid_numba,
    hash_grid_torch,
    resolve_hash_backend,
    tcnn_available,
)

SMALL = HashGridConfig(levels=4, features_per_level=2, log2_table_size=9, min_resolution=3, per_level_scale=2.0)
"""Scales 2, 5, 11, 23 (integers: points at 0 and 1 sit mid-cell and reach corner R, which wraps);
resolutions 3, 6, 12, 24; 2^9 = 512 entries: dense 27 -> 32 (padded), dense 216, hashed, hashed."""
CONFIGS = {
    "small": SMALL,
    "F1-geometric": HashGridConfig(levels=5, features_per_level=1, log2_table_size=10, min_resolution=4, max_resolution=40),
    "F4": HashGridConfig(levels=3, features_per_level=4, log2_table_size=8, min_resolution=5, per_level_scale=1.7),
    "F8": HashGridConfig(levels=2, features_per_level=8, log2_table_size=7, min_resolution=2, max_resolution=9),
}
TOL = 2e-5
"""Relative agreement of float32 implementations that sum the same terms in different orders."""


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, tol: float = TOL) -> None:
    """max |a - b| <= tol * max(1, max |b|)."""
    a, b = torch.as_tensor(a, dtype=torch.float64).cpu(), torch.as_tensor(b, dtype=torch.float64).cpu()
    assert a.shape == b.shape, f"{what}: shapes {tuple(a.shape)} and {tuple(b.shape)}"
    bound = tol * max(1.0, b.abs().max().item() if b.numel() else 0.0)
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= bound, f"{what} differs by {err:.3g} (tolerance {bound:.3g})"


def sample_points(n_random: int, seed: int = 0) -> torch.Tensor:
    """Random points in [0, 1]^3 plus hard ones: corners of the cube, the centre, x = 0.25 / 0.75
    (lattice faces of the levels whose scale is even), 0.5 (faces of odd scales), and
    x = 0.021739128977060318 (float32), where scale 23 (SMALL's level 3) gives 23 x + 0.5 =
    0.99999994 rounded once, as tcnn's fmaf does (cell 0), but 1.0 (cell 1) rounded twice."""
    g = torch.Generator().manual_seed(seed)
    special = torch.tensor(
        [[0, 0, 0], [1, 1, 1], [0, 1, 0.5], [0.5, 0.5, 0.5], [0.25, 0.75, 0.5], [1, 0, 0.25], [0.75, 0.25, 1], [0.021739128977060318, 0.3, 0.6]],
        dtype=torch.float32,
    )
    return torch.cat([special, torch.rand(n_random, 3, generator=g)])




# ---------------------------------------------------------------------- slow reference
def reference(x: np.ndarray, params: np.ndarray, config: HashGridConfig, grad_out: np.ndarray):
    """(features [M, L*F], dL/dparams, dL/dx) for L = sum(features * grad_out), point by point,
    level by level, corner by corner, from tcnn's definition with Python integers for the indices:
    s = exp2f(l log2f(b)) N_min - 1 (float32), R = ceil(s) + 1, T_l = min(R^3 rounded up to 8, 2^T),
    pos = float32(s x + 0.5), g = floor(pos), t = pos - g, dense entry x + y R + z R^2, hashed entry
    x ^ 2654435761 y ^ 805459861 z, both mod 2^32 then mod T_l."""
    F, L = config.features_per_level, config.levels
    m = x.shape[0]
    out = np.zeros((m, L * F))
    d_params = np.zeros(params.shape[0])
    d_x = np.zeros((m, 3))
    log2_b = np.float32(math.log2(float(np.float32(config.growth))))  # correctly rounded log2f
    offset = 0
    for lvl in range(L):
        s = np.float32(2.0 ** float(np.float32(lvl) * log2_b)) * np.float32(config.min_resolution) - np.float32(1.0)
        res = math.ceil(float(s)) + 1
        size = min(-(-(res**3) // 8) * 8, 2**config.log2_table_size)
        dense = res**3 <= 2**config.log2_table_size
        for i in range(m):
            pos = [float(np.float32(float(s) * float(x[i, d]) + 0.5)) for d in range(3)]
            cell = [math.floor(p) for p in pos]
            t = [p - c for p, c in zip(pos, cell)]
            for c in range(8):
                bits = [(c >> d) & 1 for d in range(3)]
                u = [(cell[d] + bits[d]) % 2**32 for d in range(3)]
                h = (u[0] + u[1] * res + u[2] * res * res) if dense else (u[0] ^ u[1] * 2654435761 ^ u[2] * 805459861)
                e = offset + (h % 2**32) % size
                factors = [t[d] if bits[d] else 1.0 - t[d] for d in range(3)]
                w = factors[0] * factors[1] * factors[2]
                v = params[e * F : (e + 1) * F].astype(np.float64)
                g = grad_out[i, lvl * F : (lvl + 1) * F].astype(np.float64)
                out[i, lvl * F : (lvl + 1) * F] += w * v
                d_params[e * F : (e + 1) * F] += w * g
                for d in range(3):  # d w / d x_d = s * (+-1) * (the other two factors)
                    others = [factors[k] for k in range(3) if k != d]
                    d_x[i, d] += float(s) * (1.0 if bits[d] else -1.0) * others[0] * others[1] * float(g @ v)
        offset += size
    assert offset * F == params.shape[0]
    return out, d_params, d_x


def run_backend(fn, x: torch.Tensor, params: torch.Tensor, layout, grad_out: torch.Tensor):
    """(features, dL/dparams, dL/dx) of ``fn(x, params, layout)`` for L = sum(features * grad_out)."""
    x = x.clone().requires_grad_(True)
    params = params.clone().requires_grad_(True)
    out = fn(x, params, layout)
    (out * grad_out).sum().backward()
    return out.detach(), params.grad, x.grad


def random_problem(config: HashGridConfig, n_random: int, seed: int = 0):
    layout = hash_grid_layout(config)
    g = torch.Generator().manual_seed(seed)
    x = sample_points(n_random, seed)
    params = torch.rand(layout.n_params, generator=g) * 2 - 1  # O(1) features: errors are not hidden by 1e-4 values
    grad_out = torch.randn(x.shape[0], layout.levels * layout.features, generator=g)
    return layout, x, params, grad_out


@pytest.mark.parametrize("name", CONFIGS)
def test_torch_twin_matches_slow_reference(name):
    config = CONFIGS[name]
    layout, x, params, grad_out = random_problem(config, 40)
    out, d_params, d_x = run_backend(hash_grid_torch, x, params, layout, grad_out)
    ref_out, ref_params, ref_x = reference(x.numpy(), params.numpy(), config, grad_out.numpy())
    assert_close(out, ref_out, "features")
    assert_close(d_params, ref_params, "dL/dparams")
    assert_close(d_x, ref_x, "dL/dx")


# ---------------------------------------------------------------------- numba vs torch
@pytest.mark.parametrize("name", CONFIGS)
def test_numba_matches_torch_twin(name):
    layout, x, params, grad_out = random_problem(CONFIGS[name], 3000, seed=1)
    out, d_params, d_x = run_backend(hash_grid_numba, x, params, layout, grad_out)
    ref_out, ref_params, ref_x = run_backend(hash_grid_torch, x, params, layout, grad_out)
    assert_close(out, ref_out, "features")
    assert_close(d_params, ref_params, "dL/dparams")
    assert_close(d_x, ref_x, "dL/dx")


def test_numba_matches_torch_outside_the_unit_cube():
    """Coordinates below 0 give negative lattice cells, taken mod 2^32 like tcnn's uint32 cast:
    both implementations wrap them the same way instead of failing."""
    layout, _, params, _ = random_problem(SMALL, 0)
    x = torch.tensor([[-0.2, 0.5, 0.5], [1.3, -0.9, 0.1], [-1.0, -1.0, -1.0], [2.0, 0.3, 1.7]])
    grad_out = torch.ones(4, layout.levels * layout.features)
    for a, b, what in zip(run_backend(hash_grid_numba, x, params, layout, grad_out), run_backend(hash_grid_torch, x, params, layout, grad_out), ("features", "dL/dparams", "dL/dx")):
        assert_close(a, b, what)


def test_numba_handles_few_points_and_params_only_gradients():
    """Fewer points than the kernels prefetch ahead, none at all, and no gradient wanted for x."""
    layout, x, params, grad_out = random_problem(SMALL, 0)
    for a, b, what in zip(run_backend(hash_grid_numba, x[:3], params, layout, grad_out[:3]), run_backend(hash_grid_torch, x[:3], params, layout, grad_out[:3]), ("features", "dL/dparams", "dL/dx")):
        assert_close(a, b, f"3 points: {what}")
    empty = hash_grid_numba(torch.zeros(0, 3), params, layout)
    assert empty.shape == (0, layout.levels * layout.features)
    p = params.clone().requires_grad_(True)
    hash_grid_numba(torch.rand(10, 3), p, layout).sum().backward()  # x needs no gradient: only the table's is made
    assert p.grad.shape == params.shape and p.grad.abs().sum() > 0


# ---------------------------------------------------------------------- layout and hash
def test_layout_follows_tcnn():
    lay = hash_grid_layout(SMALL)
    assert lay.scales == (2.0, 5.0, 11.0, 23.0)
    assert lay.resolutions == (3, 6, 12, 24)
    assert lay.dense == (True, True, False, False)
    assert lay.sizes == (32, 216, 512, 512)  # 27 rounded up to 8; 216 already; 2^9 for the hashed ones
    assert lay.offsets == (0, 32, 248, 760, 1272)
    assert lay.n_params == 1272 * 2


def test_layout_of_the_default_grid():
    """16 levels from 16 to 2048 vertices: b = 128^(1/15); levels with R^3 <= 2^19 are dense."""
    lay = hash_grid_layout(HashGridConfig())
    assert lay.resolutions[:6] == (16, 23, 31, 43, 59, 81) and lay.resolutions[-1] == 2048
    assert lay.dense == (True,) * 5 + (False,) * 11
    assert lay.sizes[:5] == (4096, 12168, 29792, 79512, 205384)  # 16^3, 23^3 = 12167, 31^3 = 29791, ... rounded up to 8
    assert lay.sizes[5:] == (2**19,) * 11
    assert lay.offsets == tuple(np.cumsum((0,) + lay.sizes))


def test_level_whose_cube_equals_the_table_is_dense():
    lay = hash_grid_layout(HashGridConfig(levels=3, min_resolution=8, per_level_scale=2.0, log2_table_size=12))
    assert lay.resolutions == (8, 16, 32)
    assert lay.dense == (True, True, False)  # 16^3 = 2^12 entries still fit
    assert lay.sizes == (512, 4096, 4096)


def test_hash_against_hand_computed_values():
    corners = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 2, 0], [3, 5, 7], [-1, 0, 0], [0, -1, 0]])
    expected = [
        0,
        1,  # x has the prime 1
        2654435761,  # 0x9E3779B1
        805459861,  # 0x30025795
        2922720805,  # 1 ^ 0x9E3779B1 ^ 0x30025795 = 0xAE352E25
        1013904226,  # 2 * 2654435761 = 5308871522 - 2^32
        1191511397,  # 3 ^ (13272178805 - 3 * 2^32 = 387276917) ^ (5638219027 - 2^32 = 1343251731)
        4294967295,  # -1 as uint32
        1640531535,  # 0xFFFFFFFF * 2654435761 mod 2^32 = 2^32 - 2654435761
    ]
    assert coherent_prime_hash(corners).tolist() == expected
    assert grid_index(corners, resolution=6, size=216, dense=False).tolist() == [v % 216 for v in expected]
    # dense: x + 6 y + 36 z mod 2^32, then mod 216; 3 + 30 + 252 = 285 = 69 mod 216; -1 wraps to
    # 2^32 - 1, and 2^32 = 184 mod 216 (0 mod 8, 2^14 = 22 mod 27), so -1 -> 183 and -6 -> 178
    assert grid_index(corners, resolution=6, size=216, dense=True).tolist() == [0, 1, 6, 36, 43, 12, 69, 183, 178]


# ---------------------------------------------------------------------- module
def test_module_level_weights_and_square_means():
    torch.manual_seed(0)
    grid = HashGrid(SMALL)
    with torch.no_grad():
        grid.params.uniform_(-1, 1)
    x = torch.rand(50, 3)
    w = torch.rand(50, SMALL.levels, requires_grad=True)
    plain = grid(x)
    weighted = grid(x, level_weights=w)
    assert plain.shape == (50, 8) and plain.dtype == torch.float32
    assert_close(weighted, (plain.view(50, 4, 2) * w[..., None]).view(50, 8), "weighted features")
    weighted.sum().backward()
    assert_close(w.grad, plain.view(50, 4, 2).sum(-1).detach(), "dL/dweights")
    means = grid.level_square_means()
    assert means.shape == (4,) and not means.requires_grad
    for lvl in range(4):
        assert grid.level_params(lvl).shape == (grid.layout.sizes[lvl], 2)
        assert_close(means[lvl], grid.level_params(lvl).detach().square().mean(), f"level {lvl} mean square")


def test_module_init_and_state_dict_key():
    grid = HashGrid(SMALL)
    assert list(grid.state_dict()) == ["params"]  # tcnn's Encoding names its one parameter the same
    assert grid.params.dtype == torch.float32 and grid.params.abs().max() <= 1e-4


def test_auto_backend_on_cpu_is_numba_and_announced_once(caplog):
    from scene3d.renderers.rays import hashgrid

    hashgrid._announce.cache_clear()
    with caplog.at_level(logging.INFO, logger="scene3d.renderers.rays.hashgrid"):
        assert resolve_hash_backend("auto", torch.device("cpu")) == "numba"
        assert resolve_hash_backend("auto", torch.device("cpu")) == "numba"
    lines = [r.getMessage() for r in caplog.records if r.name == "scene3d.renderers.rays.hashgrid"]
    assert len(lines) == 1 and "numba" in lines[0], lines
    if not tcnn_available():
        assert "tiny-cuda-nn not installed" in lines[0]


def test_explicit_backends_check_the_device():
    assert resolve_hash_backend("torch", torch.device("cpu")) == "torch"
    with pytest.raises(RuntimeError, match="tiny-cuda-nn"):
        resolve_hash_backend("tcnn", torch.device("cpu"))
    with pytest.raises(ValueError, match="CPU"):
        resolve_hash_backend("numba", torch.device("cuda"))
    with pytest.raises(ValueError, match="features_per_level"):
        HashGridConfig(features_per_level=3)


def test_backends_agree_through_the_module():
    torch.manual_seed(0)
    a, b = HashGrid(HashGridConfig(levels=6, log2_table_size=12, max_resolution=128, backend="numba")), HashGrid(HashGridConfig(levels=6, log2_table_size=12, max_resolution=128, backend="torch"))
    b.load_state_dict(a.state_dict())
    x = torch.rand(500, 3)
    assert_close(a(x), b(x), "module features")


# ---------------------------------------------------------------------- tiny-cuda-nn and CUDA
def _tcnn_runs() -> bool:
    return torch.cuda.is_available() and tcnn_available()


@pytest.mark.cuda
@pytest.mark.skipif(not _tcnn_runs(), reason="needs a CUDA device and tiny-cuda-nn")
def test_tcnn_matches_torch_twin():
    for name, config in CONFIGS.items():
        torch.manual_seed(0)
        tc = HashGrid(replace(config, backend="tcnn")).cuda()
        tw = HashGrid(replace(config, backend="torch")).cuda()
        with torch.no_grad():
            tc.params.uniform_(-1, 1)
        tw.load_state_dict(tc.state_dict())
        x = sample_points(4000).cuda()
        grad_out = torch.randn(x.shape[0], tc.output_dim, device="cuda")
        results = []
        for grid in (tc, tw):
            xi = x.clone().requires_grad_(True)
            grid.zero_grad()
            out = grid(xi)
            (out * grad_out).sum().backward()
            results.append((out.detach(), grid.params.grad.clone(), xi.grad))
        for a, b, what in zip(*results, ("features", "dL/dparams", "dL/dx")):
            assert_close(a, b, f"{name}: tcnn {what}", tol=1e-4)  # tcnn's fp32 atomics sum in another order


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_twin_on_cuda_matches_numba():
    layout, x, params, grad_out = random_problem(SMALL, 2000)
    on_cuda = run_backend(hash_grid_torch, x.cuda(), params.cuda(), layout, grad_out.cuda())
    on_cpu = run_backend(hash_grid_numba, x, params, layout, grad_out)
    for a, b, what in zip(on_cuda, on_cpu, ("features", "dL/dparams", "dL/dx")):
        assert_close(a, b, what)


# ---------------------------------------------------------------------- training
def test_grid_with_a_linear_head_fits_a_smooth_function():
    """Adam on CPU (the numba backend) fits f(x) = sin(2 pi x) cos(2 pi y) + z^2 to a mean squared
    error below 2e-4 on held-out points (the function's variance is about 0.34; 300 steps reach
    about 2e-5)."""
    torch.manual_seed(0)
    grid = HashGrid(HashGridConfig(levels=8, features_per_level=2, log2_table_size=14, min_resolution=4, max_resolution=64))
    head = torch.nn.Linear(grid.output_dim, 1)
    opt = torch.optim.Adam([{"params": grid.parameters(), "lr": 3e-2}, {"params": head.parameters(), "lr": 1e-2}], eps=1e-15)

    def target(p):
        return torch.sin(2 * math.pi * p[:, 0]) * torch.cos(2 * math.pi * p[:, 1]) + p[:, 2] ** 2

    g = torch.Generator().manual_seed(1)
    for _ in range(300):
        x = torch.rand(4096, 3, generator=g)
        loss = (head(grid(x))[:, 0] - target(x)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.rand(20000, 3, generator=g)
    with torch.no_grad():
        mse = (head(grid(x))[:, 0] - target(x)).square().mean().item()
    assert mse < 2e-4, f"held-out MSE {mse:.3g}"
