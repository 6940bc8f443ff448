"""Pixel-error driven densification with a primitive budget (Rota Bulò, Porzi and Kontschieder,
"Revising Densification in Gaussian Splatting", ECCV 2024).

ADC ranks Gaussians by the norm of their view-space positional gradient, which is small wherever
gradients of neighbouring pixels cancel. This strategy ranks them by the rendering error they are
responsible for instead:

- a per-pixel auxiliary error ``E`` is computed from each training render (``1 - SSIM``, averaged
  over the colour channels, or the L1 error), with no gradient;
- ``E`` is distributed onto the Gaussians through their blending weights: a Gaussian's share in one
  view is ``sum_p w_i(p) E(p)`` (``accumulate_pixel_error``), and its score is the maximum of that
  share over the views rendered since the last densification round;
- every ``refine_every`` steps in the densification window, Gaussians whose score exceeds
  ``grow_threshold`` are cloned (small) or split (large), highest score first, within the
  primitive budget; both results of a clone or split get the corrected opacity
  ``alpha' = 1 - sqrt(1 - alpha)``, so two overlapping copies render like the original;
- the budget: after round ``t`` the scene may hold ``N0 + (cap_max - N0) * r(t)`` Gaussians, where
  ``r`` rises linearly from 0 at ``refine_start`` to 1 at ``budget_ramp`` of the window and ``N0``
  is the initial count. ``cap_max`` is never exceeded.

Pruning and opacity resets follow ADC (``prune_opa``, ``reset_every``). Deviations from the paper:
the score is computed in a separate no-grad pass through our rasterizer (the paper folds it into
the backward pass), optionally only every ``score_every`` steps to save time on CPUs; the budget's
growth curve is linear (the paper only fixes the cap); the score is a sum over pixels, so
``grow_threshold`` depends on the image resolution (in practice the budget decides which
Gaussians grow, the threshold only stops growth where nothing is wrong).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from scene3d.densify import ops
from scene3d.densify.adc import ADCStrategy, _limit
from scene3d.densify.base import StepContext
from scene3d.errors import Scene3dError


@dataclass
class PixelErrorStrategy(ADCStrategy):
    """Hyperparameters of pixel-error densification (schedule fields as ADC's)."""

    cap_max: int = 1_000_000
    """The primitive budget: the most Gaussians the scene may ever hold."""
    budget_ramp: float = 0.75
    """Fraction of the densification window after which the whole budget may be used."""
    grow_threshold: float = 0.5
    """Error score (sum over pixels of blending weight x error, max over views) above which a
    Gaussian is densified."""
    error: Literal["ssim", "l1"] = "ssim"
    """Per-pixel auxiliary error: 1 - SSIM (structural, as the paper) or the L1 colour error."""
    score_every: int = 1
    """Compute the error scores every N steps (1: every step)."""
    revised_opacity: bool = True
    """Give both results of a clone or split opacity 1 - sqrt(1 - o) (the paper's correction)."""

    def __post_init__(self) -> None:
        if self.cap_max <= 0:
            raise Scene3dError(f"--strategy.cap-max must be positive, got {self.cap_max}")
        if not 0 < self.budget_ramp <= 1:
            raise Scene3dError(f"--strategy.budget-ramp must be in (0, 1], got {self.budget_ramp}")
        if self.score_every < 1:
            raise Scene3dError(f"--strategy.score-every must be at least 1, got {self.score_every}")
        if self.grow_threshold < 0:
            raise Scene3dError(f"--strategy.grow-threshold must not be negative, got {self.grow_threshold}")

    def initialize(self, model) -> None:
        n0 = self.state.get("initial_count", model.num_gaussians) if self.state else model.num_gaussians
        self.state = {"score": torch.zeros(model.num_gaussians, device=model.params["means"].device), "initial_count": int(n0), "last_counts": {}}

    # ------------------------------------------------------------------ the budget
    def budget(self, step: int) -> int:
        """How many Gaussians the scene may hold after a densification round at ``step``."""
        n0 = int(self.state.get("initial_count", 0))
        window = max(self.refine_stop - self.refine_start, 1) * self.budget_ramp
        r = min(max((step - self.refine_start) / window, 0.0), 1.0)
        return int(min(self.cap_max, max(n0, n0 + (self.cap_max - n0) * r)))

    # ------------------------------------------------------------------ the score
    def error_map(self, rgb: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """[C, H, W] per-pixel auxiliary error of renders ``rgb`` against ``gt`` ([C, H, W, 3])."""
        from scene3d.metrics import ssim_map

        rgb, gt = rgb.detach().clamp(0, 1), gt.detach()
        if self.error == "l1":
            return (rgb - gt).abs().mean(-1)
        return (1.0 - ssim_map(rgb, gt, padding=True)).mean(-1).clamp_min(0)

    @torch.no_grad()
    def accumulate(self, model, cameras, error: torch.Tensor) -> torch.Tensor:
        """Adds one batch of views to the running max score; returns the per-view scores [C, N]."""
        from scene3d.renderers.gaussians import RasterSettings, accumulate_pixel_error

        a = model.activated()
        settings = RasterSettings(backend=model.cfg.backend, near=model.cfg.near, far=model.cfg.far, antialiased=model.cfg.antialiased)
        per_view = accumulate_pixel_error(a["means"], a["quats"], a["scales"], a["opacities"], cameras, error, settings)
        score = self.state["score"]
        if score.shape[0] != per_view.shape[1]:
            score = torch.zeros(per_view.shape[1], device=per_view.device)
        self.state["score"] = torch.maximum(score, per_view.max(0).values)
        return per_view

    def after_backward(self, ctx: StepContext) -> None:
        step = ctx.step
        if step >= self.refine_stop:
            return
        if step % self.score_every == 0:
            self.accumulate(ctx.model, ctx.cameras, self.error_map(ctx.render.rgb, ctx.gt))
        if step > self.refine_start and step % self.refine_every == 0:
            counts = self.refine(ctx.model, step)
            n0 = self.state["initial_count"]
            self.initialize(ctx.model)
            self.state.update(initial_count=n0, last_counts=counts)
        if self.reset_every > 0 and step > 0 and step % self.reset_every == 0:
            self.reset_opacity(ctx.model)

    # ------------------------------------------------------------------ the round
    @torch.no_grad()
    def refine(self, model, step: int) -> dict[str, int]:
        """Prunes, then clones or splits the highest-scoring Gaussians within the budget."""
        prune = self.prune_candidates(model, step)
        n_prune = int(prune.sum())
        score = self.state["score"]
        if n_prune:  # pruning first frees budget for growth in the same round
            ops.remove(model.params, model.optimizers, prune)
            score = score[~prune]
        high = score > self.grow_threshold
        small = torch.exp(model.params["scales"]).max(-1).values <= self.grow_scale3d * model.scene_scale
        room = max(self.budget(step) - model.num_gaussians, 0)
        clone_mask, split_mask = _limit(high & small, high & ~small, score, room)
        n_clone, n_split = int(clone_mask.sum()), int(split_mask.sum())
        if n_clone:
            self.clone(model, clone_mask)
        if n_split:
            split_mask = torch.cat([split_mask, torch.zeros(n_clone, dtype=torch.bool, device=split_mask.device)])
            self.split(model, split_mask)
        return {"cloned": n_clone, "split": n_split, "pruned": n_prune, "budget": self.budget(step)}
