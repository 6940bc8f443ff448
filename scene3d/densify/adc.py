"""Adaptive density control of the original 3D Gaussian splatting (Kerbl et al. 2023).

Every ``refine_every`` steps between ``refine_start`` and ``refine_stop``:
- Gaussians whose average view-space positional gradient exceeds ``grow_grad2d`` are densified:
  small ones (max scale <= ``grow_scale3d`` x scene scale) are cloned, large ones split in two
  (samples drawn from the Gaussian, scales divided by 1.6);
- Gaussians with opacity below ``prune_opa`` are pruned, and after the first opacity reset also
  those larger than ``prune_scale3d`` x scene scale.
Every ``reset_every`` steps all opacities are clamped to at most 2 x ``prune_opa``.

The 2D gradient is measured in normalised device units, as the original (pixel gradient times
half the image size), averaged over the views where the Gaussian was visible. ``absgrad`` uses
the absolute-gradient accumulation of AbsGS instead (use a larger ``grow_grad2d``, e.g. 0.0008);
``revised_opacity`` gives clones and split halves opacity 1 - sqrt(1 - o) (Rota Bulò et al. 2024).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from scene3d.cameras import quaternion_to_matrix
from scene3d.densify import ops
from scene3d.densify.base import StepContext, Strategy


@dataclass
class ADCStrategy(Strategy):
    """Hyperparameters of adaptive density control (defaults: the original method's)."""

    refine_start: int = 500
    """First step at which Gaussians are densified or pruned."""
    refine_stop: int = 15_000
    """No densification from this step on."""
    refine_every: int = 100
    """Steps between densification rounds."""
    reset_every: int = 3000
    """Steps between opacity resets (0 disables them)."""
    grow_grad2d: float = 0.0002
    """Average view-space gradient above which a Gaussian is densified."""
    grow_scale3d: float = 0.01
    """Gaussians up to this size (x scene scale) are cloned, larger ones are split."""
    prune_opa: float = 0.005
    """Gaussians less opaque than this are pruned."""
    prune_scale3d: float = 0.1
    """After the first opacity reset, Gaussians larger than this (x scene scale) are pruned."""
    split_factor: float = 1.6
    """Scales of split Gaussians are divided by this."""
    use_absgrad: bool = False
    """Rank by accumulated absolute gradients (AbsGS)."""
    revised_opacity: bool = False
    """Give clones and split halves opacity 1 - sqrt(1 - o) so the rendered opacity is kept."""
    max_gaussians: int = 0
    """Stop growing beyond this many Gaussians (0: no limit)."""

    @property
    def absgrad(self) -> bool:
        return self.use_absgrad

    def initialize(self, model) -> None:
        n = model.num_gaussians
        dev = model.params["means"].device
        self.state = {"grad2d": torch.zeros(n, device=dev), "count": torch.zeros(n, device=dev), "last_counts": {}}

    # ------------------------------------------------------------------ statistics
    def _accumulate(self, ctx: StepContext) -> None:
        info = ctx.render.info
        grads = info.means2d_absgrad if self.use_absgrad else info.means2d.grad
        if grads is None:
            return
        grads = grads.detach().clone()
        grads[..., 0] *= info.width / 2.0
        grads[..., 1] *= info.height / 2.0
        visible = info.radii > 0  # [C, N]
        norms = torch.linalg.norm(grads, dim=-1) * visible  # [C, N]
        self.state["grad2d"] += norms.sum(0)
        self.state["count"] += visible.sum(0).float()

    def after_backward(self, ctx: StepContext) -> None:
        step = ctx.step
        if step >= self.refine_stop:
            return
        self._accumulate(ctx)
        if step > self.refine_start and step % self.refine_every == 0:
            counts = self.refine(ctx.model, step)
            self.initialize(ctx.model)  # statistics restart for the new set of Gaussians
            self.state["last_counts"] = counts
        if self.reset_every > 0 and step > 0 and step % self.reset_every == 0:
            self.reset_opacity(ctx.model)

    # ------------------------------------------------------------------ the rules
    @torch.no_grad()
    def refine(self, model, step: int) -> dict[str, int]:
        """One densification round: clone, split, prune. Returns how many of each."""
        grads = self.state["grad2d"] / self.state["count"].clamp_min(1)
        high = self.densify_candidates(model, grads)
        max_scale = torch.exp(model.params["scales"]).max(-1).values
        small = max_scale <= self.grow_scale3d * model.scene_scale
        clone_mask = high & small
        split_mask = high & ~small
        if self.max_gaussians:
            room = max(self.max_gaussians - model.num_gaussians, 0)
            clone_mask, split_mask = _limit(clone_mask, split_mask, grads, room)
        n_clone, n_split = int(clone_mask.sum()), int(split_mask.sum())
        if n_clone:
            self.clone(model, clone_mask)
        split_mask = torch.cat([split_mask, torch.zeros(n_clone, dtype=torch.bool, device=split_mask.device)])
        if n_split:
            self.split(model, split_mask)
        prune = self.prune_candidates(model, step)
        n_prune = int(prune.sum())
        if n_prune:
            ops.remove(model.params, model.optimizers, prune)
        return {"cloned": n_clone, "split": n_split, "pruned": n_prune}

    def densify_candidates(self, model, grads: torch.Tensor) -> torch.Tensor:
        """[N] Gaussians to clone or split, given their average view-space gradients."""
        return grads > self.grow_grad2d

    def prune_candidates(self, model, step: int) -> torch.Tensor:
        """[N] Gaussians to remove after growth: too transparent, or (after a reset) too large."""
        prune = torch.sigmoid(model.params["opacities"]) < self.prune_opa
        if self.reset_every > 0 and step > self.reset_every:
            prune |= torch.exp(model.params["scales"]).max(-1).values > self.prune_scale3d * model.scene_scale
        return prune

    def _revise(self, logit_opacity: torch.Tensor) -> torch.Tensor:
        o = torch.sigmoid(logit_opacity)
        o = 1.0 - torch.sqrt((1.0 - o).clamp_min(0))
        o = o.clamp(1e-6, 1 - 1e-6)
        return torch.log(o / (1 - o))

    def clone(self, model, mask: torch.Tensor) -> None:
        """Appends a copy of each selected Gaussian (revised opacity applied to both if enabled)."""
        if self.revised_opacity:
            idx = mask.nonzero().squeeze(-1)
            ops.set_rows(model.params, model.optimizers, "opacities", idx, self._revise(model.params["opacities"][idx]), reset_state=False)
        ops.duplicate(model.params, model.optimizers, mask)

    def split(self, model, mask: torch.Tensor) -> None:
        """Replaces each selected Gaussian by two samples of it with scales / ``split_factor``."""
        p = model.params
        idx = mask.nonzero().squeeze(-1)
        scales = torch.exp(p["scales"][idx])
        R = quaternion_to_matrix(p["quats"][idx])
        offsets = torch.einsum("nij,snj->sni", R, torch.randn(2, len(idx), 3, device=scales.device) * scales)
        new = {}
        for name, value in p.items():
            rows = value[idx]
            new[name] = torch.cat([rows, rows])
        new["means"] = (p["means"][idx][None] + offsets).reshape(-1, 3)
        new["scales"] = torch.log(scales / self.split_factor).repeat(2, 1)
        if self.revised_opacity:
            new["opacities"] = self._revise(p["opacities"][idx]).repeat(2)
        ops.append(p, model.optimizers, new, replace_idx=idx)

    @torch.no_grad()
    def reset_opacity(self, model) -> None:
        """Clamps every opacity to at most 2 x ``prune_opa`` (and resets its Adam moments)."""
        cap = 2.0 * self.prune_opa
        logit_cap = math.log(cap / (1 - cap))
        op = model.params["opacities"]
        idx = torch.arange(len(op), device=op.device)
        ops.set_rows(model.params, model.optimizers, "opacities", idx, op.clamp_max(logit_cap))


def _limit(clone_mask: torch.Tensor, split_mask: torch.Tensor, score: torch.Tensor, room: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keeps the highest-scoring candidates so that growth adds at most ``room`` Gaussians."""
    cand = (clone_mask | split_mask).nonzero().squeeze(-1)
    if len(cand) <= room:
        return clone_mask, split_mask
    keep = cand[torch.argsort(score[cand], descending=True)[:room]]
    sel = torch.zeros_like(clone_mask)
    sel[keep] = True
    return clone_mask & sel, split_mask & sel
