"""3DGS-MCMC (Kheradmand et al. 2024) on constructed cases: cap, relocation, noise, regularisers."""

from __future__ import annotations

import math

import pytest
import torch

from densify_cases import assert_adam_aligned, front_camera, model_from, prime_adam
from scene3d.densify import STRATEGIES
from scene3d.densify.base import StepContext
from scene3d.densify.mcmc import MCMCStrategy, relocation_update
from scene3d.errors import Scene3dError


def test_registered():
    assert STRATEGIES["mcmc"] is MCMCStrategy


@pytest.mark.parametrize("o", [0.05, 0.3, 0.7, 0.95])
@pytest.mark.parametrize("n", [1, 2, 5, 20])
def test_moment_matching_keeps_the_opacity(o, n):
    new_o, new_s = relocation_update(torch.tensor([o]), torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([n]))
    assert math.isclose(1 - (1 - float(new_o)) ** n, o, rel_tol=1e-5)
    if n == 1:
        assert torch.allclose(new_s, torch.tensor([[0.1, 0.2, 0.3]]))
    else:  # shared Gaussians get smaller, the more so the more opaque the source
        assert torch.all(new_s < torch.tensor([[0.1, 0.2, 0.3]]))


def scene_with_dead(n_dead: int, opacity: float = 0.6):
    """One visible Gaussian at the centre and ``n_dead`` invisible ones off to the side."""
    means = [[0.0, 0.0, 2.0]] + [[0.3 + 0.05 * k, 0.2, 2.0] for k in range(n_dead)]
    return model_from(means, [0.1] + [0.05] * n_dead, [opacity] + [0.001] * n_dead)


def render(model) -> torch.Tensor:
    with torch.no_grad():
        out = model.render(front_camera())
    return torch.cat([out.rgb, out.alpha], -1)[0]


@pytest.mark.parametrize("n_dead", [1, 3])
def test_relocation_preserves_the_render_to_first_order(n_dead):
    model = scene_with_dead(n_dead)
    before = render(model)
    torch.manual_seed(0)
    s = MCMCStrategy()
    s.initialize(model)
    assert s.relocate(model) == n_dead
    after = render(model)
    # the naive move: copy the source without the moment-matching update
    naive = scene_with_dead(n_dead)
    with torch.no_grad():
        for name, p in naive.params.items():
            p[1:] = p[0]
    copied = render(naive)
    err, err_naive = (after - before).abs().mean(), (copied - before).abs().mean()
    assert err < 0.2 * err_naive and (after - before).abs().max() < 0.08
    o = torch.sigmoid(model.params["opacities"])
    assert torch.allclose(o, o[0].expand_as(o)) and math.isclose(1 - float((1 - o.detach()).prod()), 0.6, rel_tol=1e-4)
    assert torch.allclose(model.params["means"], torch.tensor([0.0, 0.0, 2.0]).expand(n_dead + 1, 3))


def test_dead_are_relocated_live_ones_stay_and_adam_stays_aligned():
    torch.manual_seed(0)
    means = torch.tensor([[x, 0.0, 2.0] for x in (-0.4, -0.2, 0.0, 0.2, 0.4)])
    model = model_from(means, [0.05] * 5, [0.9, 0.001, 0.5, 0.003, 0.7])
    prime_adam(model)
    s = MCMCStrategy()
    s.initialize(model)
    live_means = model.params["means"][[0, 2, 4]].detach().clone()
    assert s.relocate(model) == 2
    assert torch.equal(model.params["means"][[0, 2, 4]], live_means)  # sources do not move
    for k in (1, 3):  # each dead one now sits on a live one
        assert any(torch.equal(model.params["means"][k], m) for m in live_means)
    assert torch.all(torch.sigmoid(model.params["opacities"]) > s.min_opacity)
    assert_adam_aligned(model)
    exp_avg = model.optimizers["means"].state[model.params["means"]]["exp_avg"]
    assert torch.all(exp_avg[[1, 3]] == 0)


def test_cap_holds_and_growth_rate():
    torch.manual_seed(0)
    n = 100
    model = model_from(torch.rand(n, 3) * 0.2 + torch.tensor([0, 0, 2.0]), torch.full((n,), 0.02), torch.rand(n) * 0.8 + 0.1)
    prime_adam(model)
    s = MCMCStrategy(cap_max=130, grow_rate=0.1)
    s.initialize(model)
    assert s.grow(model) == 10 and model.num_gaussians == 110
    counts = []
    for _ in range(8):
        before = model.num_gaussians
        added = s.grow(model)
        assert added == min(int(0.1 * before), 130 - before)
        counts.append(model.num_gaussians)
        assert model.num_gaussians <= 130
    assert counts[-1] == 130
    assert_adam_aligned(model)


def test_growth_keeps_the_render_to_first_order():
    torch.manual_seed(1)
    model = model_from([[0.0, 0.0, 2.0], [0.3, 0.1, 2.5]], [0.1, 0.08], [0.7, 0.4])
    before = render(model)
    MCMCStrategy(grow_rate=1.0).grow(model)
    assert model.num_gaussians == 4
    assert (render(model) - before).abs().mean() < 0.01


def test_noise_moves_transparent_gaussians_not_opaque_ones():
    torch.manual_seed(0)
    n = 200
    means = torch.zeros(n, 3)
    model = model_from(means, torch.full((n,), 0.1), torch.cat([torch.full((n // 2,), 0.9), torch.full((n // 2,), 0.002)]))
    s = MCMCStrategy()
    s.inject_noise(model, lr_means=1.6e-4)
    moved = model.params["means"].detach().norm(dim=-1)
    assert moved[n // 2 :].mean() > 1e-3 and moved[: n // 2].max() < 1e-6 * moved[n // 2 :].mean() + 1e-12
    still = model_from(means, torch.full((n,), 0.1), torch.full((n,), 0.002))
    MCMCStrategy(noise_lr=0).inject_noise(still, lr_means=1.6e-4)
    assert torch.all(still.params["means"] == 0)


def test_noise_follows_the_covariance():
    torch.manual_seed(0)
    n = 2000
    model = model_from(torch.zeros(n, 3), torch.full((n,), 0.1), torch.full((n,), 0.001))
    with torch.no_grad():
        model.params["scales"][:, 0] = math.log(0.5)  # long along x
    MCMCStrategy().inject_noise(model, lr_means=1e-5)
    spread = model.params["means"].detach().std(0)
    assert spread[0] > 10 * spread[1] and spread[0] > 10 * spread[2]


def test_regularisers():
    model = model_from([[0.0, 0.0, 2.0], [0.1, 0.0, 2.0]], [0.1, 0.2], [0.3, 0.8])
    s = MCMCStrategy(opacity_reg=0.02, scale_reg=0.5)
    ctx = StepContext(step=0, max_steps=10, model=model, render=None, gt=None, cameras=None, camera_indices=[])
    loss = s.extra_loss(ctx)
    assert math.isclose(float(loss), 0.02 * 0.55 + 0.5 * 0.15, rel_tol=1e-5)
    loss.backward()
    assert model.params["opacities"].grad.abs().sum() > 0 and model.params["scales"].grad.abs().sum() > 0
    assert MCMCStrategy(opacity_reg=0, scale_reg=0).extra_loss(ctx) is None


def test_after_step_runs_rounds_in_the_window_only():
    torch.manual_seed(0)
    model = scene_with_dead(2)
    s = MCMCStrategy(refine_start=10, refine_stop=30, refine_every=10, grow_rate=0.5, noise_lr=0)
    s.initialize(model)
    ctx = lambda step: StepContext(step=step, max_steps=50, model=model, render=None, gt=None, cameras=None, camera_indices=[])  # noqa: E731
    s.after_step(ctx(10))
    assert model.num_gaussians == 3
    s.after_step(ctx(20))
    assert s.state["last_counts"] == {"relocated": 2, "added": 1} and model.num_gaussians == 4
    s.after_step(ctx(30))
    assert model.num_gaussians == 4


def test_bad_hyperparameters():
    with pytest.raises(Scene3dError, match="cap-max"):
        MCMCStrategy(cap_max=-1)
    with pytest.raises(Scene3dError, match="min-opacity"):
        MCMCStrategy(min_opacity=1.5)
