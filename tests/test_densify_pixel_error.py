"""Pixel-error densification with a budget (Rota Bulò et al. 2024) on constructed cases."""

from __future__ import annotations

import pytest
import torch

from densify_cases import H, W, assert_adam_aligned, front_camera, model_from, prime_adam
from scene3d.cameras import Cameras
from scene3d.densify import STRATEGIES
from scene3d.densify.pixel_error import PixelErrorStrategy
from scene3d.errors import Scene3dError


def mirrored_pair():
    """Two identical Gaussians at z = 2, one left of the optical axis, one right."""
    return model_from([[-0.5, 0.0, 2.0], [0.5, 0.0, 2.0]], [0.08, 0.08], [0.8, 0.8])


def left_half_error(high: float = 1.0, low: float = 0.05) -> torch.Tensor:
    e = torch.full((1, H, W), low)
    e[..., : W // 2] = high
    return e


def test_registered():
    assert STRATEGIES["pixel-error"] is PixelErrorStrategy


def test_high_error_region_scores_higher():
    model = mirrored_pair()
    s = PixelErrorStrategy()
    s.initialize(model)
    s.accumulate(model, front_camera(), left_half_error())
    score = s.state["score"]
    assert score[0] > 5 * score[1] > 0  # the left Gaussian covers the high-error half
    # mirrored error, mirrored ranking
    s.initialize(model)
    s.accumulate(model, front_camera(), left_half_error().flip(-1))
    assert s.state["score"][1] > 5 * s.state["score"][0]


def test_score_is_the_max_over_views_not_the_sum():
    model = mirrored_pair()
    s = PixelErrorStrategy()
    s.initialize(model)
    high = s.accumulate(model, front_camera(), left_half_error())[0]
    low = s.accumulate(model, front_camera(), torch.full((1, H, W), 0.05))[0]
    assert torch.allclose(s.state["score"], torch.maximum(high, low))
    assert not torch.allclose(s.state["score"], high + low)


def test_error_maps():
    s = PixelErrorStrategy()
    gt = torch.rand(1, H, W, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(s.error_map(gt, gt), torch.zeros(1, H, W), atol=1e-4)
    noisy = gt.clone()
    noisy[:, :, : W // 2] = torch.rand(1, H, W // 2, 3, generator=torch.Generator().manual_seed(1))
    e = s.error_map(noisy, gt)
    assert e[..., : W // 2 - 6].mean() > 0.5 and e[..., W // 2 + 6 :].max() < 1e-3
    l1 = PixelErrorStrategy(error="l1").error_map(noisy, gt)
    assert torch.allclose(l1, (noisy - gt).abs().mean(-1))


def test_count_never_exceeds_the_budget_and_best_scores_grow_first():
    g = torch.Generator().manual_seed(0)
    n = 50
    model = model_from(torch.randn(n, 3, generator=g) * 0.1 + torch.tensor([0, 0, 2.0]), torch.full((n,), 0.002), torch.full((n,), 0.9))
    prime_adam(model)
    s = PixelErrorStrategy(cap_max=180, refine_start=0, refine_stop=1000, refine_every=100, budget_ramp=0.5, reset_every=0, grow_threshold=0.1)
    s.initialize(model)
    counts = []
    for step in range(100, 1000, 100):
        s.state["score"] = torch.linspace(1.0, 2.0, model.num_gaussians)  # every Gaussian is a candidate
        before = model.num_gaussians
        s.refine(model, step)
        assert model.num_gaussians <= s.budget(step) <= 180
        counts.append(model.num_gaussians)
        if step == 100:  # the budget allows 26 more (50 + 130 x 100 / 500): all of them grew
            assert model.num_gaussians == s.budget(100) == 76 and before == 50
    assert counts[-1] == 180 and counts == sorted(counts)
    assert_adam_aligned(model)


def test_budget_ramps_from_initial_count_to_cap():
    s = PixelErrorStrategy(cap_max=1000, refine_start=100, refine_stop=1100, budget_ramp=0.5)
    s.state = {"initial_count": 200}
    assert s.budget(0) == 200 and s.budget(100) == 200
    assert s.budget(350) == 600 and s.budget(600) == 1000 and s.budget(5000) == 1000


def test_highest_scores_are_chosen_when_the_budget_binds():
    model = model_from([[x, 0.0, 2.0] for x in (-0.6, -0.2, 0.2, 0.6)], [0.002] * 4, [0.9] * 4)
    s = PixelErrorStrategy(cap_max=6, refine_start=0, refine_stop=100, budget_ramp=0.01, reset_every=0, grow_threshold=0.5)
    s.initialize(model)
    s.state["score"] = torch.tensor([0.7, 3.0, 0.1, 2.0])
    s.refine(model, 50)
    assert model.num_gaussians == 6
    new_means = model.params["means"][4:, 0].sort().values
    assert torch.allclose(new_means, torch.tensor([-0.2, 0.6]))  # clones of the two best


def alpha_of(model) -> torch.Tensor:
    with torch.no_grad():
        return model.render(front_camera()).alpha[0, ..., 0]


@pytest.mark.parametrize("opacity", [0.3, 0.6, 0.9])
def test_clone_with_correction_keeps_rendered_opacity(opacity):
    base = model_from([[0.0, 0.0, 2.0]], [0.1], [opacity])
    before = alpha_of(base)
    corrected = model_from([[0.0, 0.0, 2.0]], [0.1], [opacity])
    PixelErrorStrategy().clone(corrected, torch.tensor([True]))
    plain = model_from([[0.0, 0.0, 2.0]], [0.1], [opacity])
    PixelErrorStrategy(revised_opacity=False).clone(plain, torch.tensor([True]))
    assert corrected.num_gaussians == plain.num_gaussians == 2
    # exact at the centre (1 - (1 - o')^2 = o), and much closer than plain copies everywhere
    centre = (H // 2, W // 2)
    assert abs(alpha_of(corrected)[centre] - before[centre]) < 0.02
    assert alpha_of(plain)[centre] - before[centre] > 0.05
    err_corrected = (alpha_of(corrected) - before).abs().sum()
    err_plain = (alpha_of(plain) - before).abs().sum()
    assert err_corrected < 0.5 * err_plain
    o = torch.sigmoid(corrected.params["opacities"])
    assert torch.allclose(1 - (1 - o[0]) * (1 - o[1]), torch.tensor(opacity), atol=1e-5)


def test_split_halves_get_the_corrected_opacity():
    model = model_from([[0.0, 0.0, 2.0]], [0.5], [0.7])
    PixelErrorStrategy().split(model, torch.tensor([True]))
    o = torch.sigmoid(model.params["opacities"])
    assert model.num_gaussians == 2 and torch.allclose(1 - (1 - o).prod(), torch.tensor(0.7), atol=1e-5)


def test_training_hooks_score_then_densify():
    """The hooks: scores accumulate from renders, a round densifies within the budget and restarts them."""
    from scene3d.densify.base import StepContext

    model = mirrored_pair()
    cams = front_camera()
    s = PixelErrorStrategy(cap_max=3, refine_start=0, refine_stop=100, refine_every=2, budget_ramp=0.01, reset_every=0, grow_threshold=0.01, error="l1")
    s.initialize(model)
    with torch.no_grad():
        gt = model.render(cams).rgb.clone()
    gt[:, :, : W // 2] = 1.0  # the left Gaussian's half is badly wrong, the right one is exact
    for step in (1, 2):
        out = model.render(cams)
        s.after_backward(StepContext(step=step, max_steps=100, model=model, render=out, gt=gt, cameras=cams, camera_indices=[0]))
    assert model.num_gaussians == 3 and s.state["last_counts"]["cloned"] + s.state["last_counts"]["split"] == 1
    assert model.params["means"][2, 0] < 0  # the copy is of the left Gaussian
    assert torch.all(s.state["score"] == 0) and len(s.state["score"]) == 3


def test_bad_hyperparameters():
    with pytest.raises(Scene3dError, match="cap-max"):
        PixelErrorStrategy(cap_max=0)
    with pytest.raises(Scene3dError, match="budget-ramp"):
        PixelErrorStrategy(budget_ramp=0)
