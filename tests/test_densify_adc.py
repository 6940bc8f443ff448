"""Each adaptive-density-control rule does what it claims, on constructed cases."""

from __future__ import annotations

import math

import pytest
import torch

from scene3d.densify import ops
from scene3d.densify.adc import ADCStrategy
from scene3d.models.gaussians import GaussianConfig, GaussianModel


def make_model(n: int = 4, scale: float = 0.001, opacity: float = 0.5) -> GaussianModel:
    cfg = GaussianConfig(sh_degree=1)
    pts = torch.stack([torch.arange(n, dtype=torch.float32), torch.zeros(n), torch.zeros(n)], -1).numpy()
    model = GaussianModel.from_points(pts, torch.full((n, 3), 128).numpy(), cfg, scene_scale=1.0)
    with torch.no_grad():
        model.params["scales"].fill_(math.log(scale))
        model.params["opacities"].fill_(math.log(opacity / (1 - opacity)))
    return model


def prime_adam(model: GaussianModel) -> None:
    """One optimiser step so every parameter has Adam moments to keep aligned."""
    loss = sum((p * (i + 1)).sum() for i, p in enumerate(model.params.values()))
    loss.backward()
    for opt in model.optimizers.values():
        opt.step()
        opt.zero_grad()


def adam_rows(model: GaussianModel, name: str) -> torch.Tensor:
    p = model.params[name]
    return model.optimizers[name].state[p]["exp_avg"]


def test_edit_keeps_optimizer_state_aligned():
    model = make_model(5)
    prime_adam(model)
    before = adam_rows(model, "means").clone()
    ops.remove(model.params, model.optimizers, torch.tensor([False, True, False, True, False]))
    assert model.num_gaussians == 3
    for name, p in model.params.items():
        opt = model.optimizers[name]
        assert opt.param_groups[0]["params"][0] is p
        assert opt.state[p]["exp_avg"].shape == p.shape
    assert torch.equal(adam_rows(model, "means"), before[[0, 2, 4]])
    ops.duplicate(model.params, model.optimizers, torch.tensor([True, False, False]))
    assert model.num_gaussians == 4 and torch.equal(model.params["means"][3], model.params["means"][0])
    assert torch.all(adam_rows(model, "means")[3] == 0)


def strategy_with_grads(model: GaussianModel, grads: list[float], **kw) -> ADCStrategy:
    s = ADCStrategy(**kw)
    s.initialize(model)
    s.state["grad2d"] = torch.tensor(grads)
    s.state["count"] = torch.ones(len(grads))
    return s


def test_small_high_gradient_gaussians_are_cloned():
    model = make_model(3, scale=0.001)
    s = strategy_with_grads(model, [0.001, 0.0, 0.0])
    counts = s.refine(model, step=600)
    assert counts == {"cloned": 1, "split": 0, "pruned": 0}
    assert model.num_gaussians == 4
    assert torch.equal(model.params["means"][3], model.params["means"][0])


def test_large_high_gradient_gaussians_are_split():
    model = make_model(3, scale=0.05)  # above grow_scale3d (0.01 x scene scale 1)
    torch.manual_seed(0)
    s = strategy_with_grads(model, [0.0, 0.001, 0.0])
    counts = s.refine(model, step=600)
    assert counts["split"] == 1 and counts["cloned"] == 0
    assert model.num_gaussians == 4  # one replaced in place by two halves
    scales = torch.exp(model.params["scales"])
    assert torch.allclose(scales[1], torch.full((3,), 0.05 / 1.6)) and torch.allclose(scales[3], torch.full((3,), 0.05 / 1.6))
    # The two halves are sampled around the original centre (x = 1), within a few sigmas.
    assert (model.params["means"][[1, 3], 0] - 1.0).abs().max() < 0.05 * 5


def test_low_opacity_pruned_and_large_pruned_only_after_reset():
    model = make_model(4, scale=0.001, opacity=0.5)
    with torch.no_grad():
        model.params["opacities"][0] = math.log(0.001 / 0.999)
        model.params["scales"][1] = math.log(0.5)  # larger than prune_scale3d x scene scale
    s = strategy_with_grads(model, [0.0] * 4)
    assert s.refine(model, step=1000)["pruned"] == 1  # before the first reset: only the transparent one
    assert model.num_gaussians == 3
    s = strategy_with_grads(model, [0.0] * 3)
    assert s.refine(model, step=3100)["pruned"] == 1
    assert torch.exp(model.params["scales"]).max() < 0.1


def test_opacity_reset_clamps_and_resets_moments():
    model = make_model(3, opacity=0.9)
    prime_adam(model)
    ADCStrategy().reset_opacity(model)
    op = torch.sigmoid(model.params["opacities"])
    assert torch.allclose(op, torch.full((3,), 0.01), atol=1e-6)
    assert torch.all(adam_rows(model, "opacities") == 0)


@pytest.mark.parametrize("revised", [False, True])
def test_revised_opacity_keeps_rendered_opacity(revised):
    """Two stacked copies with opacity o' = 1 - sqrt(1 - o) composite to the original o."""
    model = make_model(1, scale=0.001, opacity=0.6)
    s = strategy_with_grads(model, [1.0], revised_opacity=revised)
    s.refine(model, step=600)
    o = torch.sigmoid(model.params["opacities"]).detach()
    stacked = 1 - (1 - o[0]) * (1 - o[1])
    if revised:
        assert float(stacked) == pytest.approx(0.6, abs=1e-5)
    else:
        assert float(o[0]) == pytest.approx(0.6, abs=1e-6) and float(stacked) > 0.8


def test_growth_cap():
    model = make_model(6, scale=0.001)
    s = strategy_with_grads(model, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], max_gaussians=8)
    s.refine(model, step=600)
    assert model.num_gaussians == 8
    # The two highest-gradient Gaussians (4 and 5) were the ones cloned.
    assert torch.equal(model.params["means"][6:, 0].sort().values, torch.tensor([4.0, 5.0]))


def test_statistics_use_visible_views_and_ndc_units():
    from types import SimpleNamespace

    model = make_model(2)
    s = ADCStrategy()
    s.initialize(model)
    means2d = torch.zeros(1, 2, 2, requires_grad=True)
    means2d.grad = torch.tensor([[[2.0, 0.0], [5.0, 5.0]]])
    info = SimpleNamespace(means2d=means2d, means2d_absgrad=None, width=100, height=50, radii=torch.tensor([[3, 0]]))
    ctx = SimpleNamespace(render=SimpleNamespace(info=info), step=10, model=model)
    s.after_backward(ctx)
    assert s.state["grad2d"].tolist() == [pytest.approx(100.0), 0.0]  # 2 px-grad x width/2; invisible ignored
    assert s.state["count"].tolist() == [1.0, 0.0]
