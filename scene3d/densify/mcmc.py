"""3D Gaussian splatting as Markov chain Monte Carlo (Kheradmand et al., NeurIPS 2024).

The Gaussians are treated as samples of a distribution whose updates are stochastic-gradient
Langevin steps; densification and pruning become moves that keep that distribution:

- relocation: every ``refine_every`` steps in the refinement window, "dead" Gaussians (opacity at
  most ``min_opacity``) are moved onto live ones drawn with probability proportional to opacity.
  A source chosen ``n`` times ends up shared by ``n + 1`` identical Gaussians whose opacity and
  scale follow the paper's moment matching, so the sum renders like the source did:
  ``o' = 1 - (1 - o)^(1/(n+1))`` and ``s' = s * o / sum_{i=1}^{n+1} sum_{k=0}^{i-1} C(i-1, k)
  (-1)^k o'^(k+1) / sqrt(k+1)``;
- growth: in the same rounds ``grow_rate`` x N new Gaussians are added by the same move (sampled
  by opacity), never more than the hard cap ``cap_max``;
- noise: after every optimiser step the means get Gaussian noise shaped by each covariance and
  scaled by ``noise_lr`` x the current position learning rate x a steep sigmoid of (1 - opacity),
  so nearly transparent Gaussians explore and opaque ones stay put;
- regularisers: ``opacity_reg`` x mean opacity + ``scale_reg`` x mean scale, which push unneeded
  Gaussians to become transparent (and get relocated).

Pure torch, so the same code runs on CPU and CUDA (gsplat's version uses CUDA kernels for the
relocation and the noise). Relocation and growth run after the optimisers stepped, as gsplat does;
the noise is injected at every step, including after the refinement window (as the paper's
Langevin dynamics and gsplat). The model's own initialisation is kept (the paper starts from
opacity 0.5 and larger scales; the regularisers shrink what is not needed either way). Adam moments
of every row the moves touch are reset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from scene3d.cameras import quaternion_to_matrix
from scene3d.densify import ops
from scene3d.densify.base import StepContext, Strategy
from scene3d.errors import Scene3dError

MAX_SHARE = 51  # most Gaussians one source can be split into in one move (the moment-matching sum is alternating: float64 stays exact up to here)


def _binomial_table(n: int) -> Tensor:
    table = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for k in range(i + 1):
            table[i, k] = math.comb(i, k)
    return table


_BINOMS = _binomial_table(MAX_SHARE)


def relocation_update(opacities: Tensor, scales: Tensor, shares: Tensor) -> tuple[Tensor, Tensor]:
    """Opacity [M] and scales [M, 3] (actual values) for ``shares`` [M] identical Gaussians that
    together replace one Gaussian each (moment matching of Kheradmand et al., Eq. 9)."""
    n = shares.clamp(1, MAX_SHARE).to(torch.float64)
    o = opacities.to(torch.float64).clamp(1e-6, 1 - 1e-6)
    new_o = 1.0 - torch.pow(1.0 - o, 1.0 / n)
    i = torch.arange(1, MAX_SHARE + 1, dtype=torch.float64, device=o.device)  # i = 1..MAX
    k = torch.arange(0, MAX_SHARE, dtype=torch.float64, device=o.device)  # k = 0..MAX-1
    binoms = _BINOMS.to(o.device)  # [i-1, k]
    sign = torch.where(k % 2 == 0, 1.0, -1.0)
    powers = new_o[:, None] ** (k[None] + 1) / torch.sqrt(k[None] + 1)  # [M, K]
    inner = (binoms[None] * (sign * powers)[:, None, :]).sum(-1)  # [M, I]: sum over k <= i-1
    denom = (inner * (i[None] <= n[:, None])).sum(-1)
    coeff = o / denom
    return new_o.to(opacities.dtype), (coeff[:, None] * scales.to(torch.float64)).to(scales.dtype)


@dataclass
class MCMCStrategy(Strategy):
    """Hyperparameters of 3DGS-MCMC (defaults: gsplat's)."""

    cap_max: int = 1_000_000
    """Hard cap on the number of Gaussians."""
    grow_rate: float = 0.05
    """Each refinement round adds this fraction of the current count (up to cap_max)."""
    refine_start: int = 500
    """First step of relocation and growth."""
    refine_stop: int = 25_000
    """No relocation or growth from this step on (the noise continues)."""
    refine_every: int = 100
    """Steps between relocation-and-growth rounds."""
    min_opacity: float = 0.005
    """Gaussians at most this opaque are dead and get relocated."""
    noise_lr: float = 5e5
    """Scale of the position noise, relative to the position learning rate."""
    opacity_reg: float = 0.01
    """Weight of the mean-opacity regulariser."""
    scale_reg: float = 0.01
    """Weight of the mean-scale regulariser."""

    def __post_init__(self) -> None:
        if self.cap_max <= 0:
            raise Scene3dError(f"--strategy.cap-max must be positive, got {self.cap_max}")
        if self.grow_rate < 0:
            raise Scene3dError(f"--strategy.grow-rate must not be negative, got {self.grow_rate}")
        if not 0 <= self.min_opacity < 1:
            raise Scene3dError(f"--strategy.min-opacity must be in [0, 1), got {self.min_opacity}")
        if self.refine_every < 1:
            raise Scene3dError(f"--strategy.refine-every must be at least 1, got {self.refine_every}")

    def initialize(self, model) -> None:
        self.state = {"last_counts": {}}

    # ------------------------------------------------------------------ hooks
    def extra_loss(self, ctx: StepContext) -> Tensor | None:
        p = ctx.model.params
        loss = None
        if self.opacity_reg > 0:
            loss = self.opacity_reg * torch.sigmoid(p["opacities"]).mean()
        if self.scale_reg > 0:
            s = self.scale_reg * torch.exp(p["scales"]).mean()
            loss = s if loss is None else loss + s
        return loss

    def after_step(self, ctx: StepContext) -> None:
        step, model = ctx.step, ctx.model
        if self.refine_start < step < self.refine_stop and step % self.refine_every == 0:
            moved = self.relocate(model)
            added = self.grow(model)
            self.state["last_counts"] = {"relocated": moved, "added": added}
        self.inject_noise(model, model.optimizers["means"].param_groups[0]["lr"])

    # ------------------------------------------------------------------ moves
    def _sample(self, model, candidates: Tensor, count: int) -> Tensor:
        """``count`` indices drawn from ``candidates`` with probability proportional to opacity."""
        probs = torch.sigmoid(model.params["opacities"].detach()[candidates]).clamp_min(1e-12)
        return candidates[torch.multinomial(probs, count, replacement=True)]

    @torch.no_grad()
    def _moment_match(self, model, sampled: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Unique sources among ``sampled`` and their new logit opacities and log scales."""
        p = model.params
        sources, counts = torch.unique(sampled, return_counts=True)
        new_o, new_s = relocation_update(torch.sigmoid(p["opacities"][sources]), torch.exp(p["scales"][sources]), counts + 1)
        new_o = new_o.clamp(self.min_opacity, 1 - 1e-6)
        return sources, torch.log(new_o / (1 - new_o)), torch.log(new_s.clamp_min(1e-12))

    @torch.no_grad()
    def relocate(self, model) -> int:
        """Moves every dead Gaussian onto a live one (sampled by opacity). Returns how many moved."""
        p = model.params
        dead = torch.sigmoid(p["opacities"]) <= self.min_opacity
        n_dead = int(dead.sum())
        alive = (~dead).nonzero().squeeze(-1)
        if n_dead == 0 or len(alive) == 0:
            return 0
        sampled = self._sample(model, alive, n_dead)
        sources, logit_o, log_s = self._moment_match(model, sampled)
        dead_idx = dead.nonzero().squeeze(-1)

        def param_fn(name: str, t: Tensor) -> Tensor:
            t = t.clone()
            if name == "opacities":
                t[sources] = logit_o
            elif name == "scales":
                t[sources] = log_s
            t[dead_idx] = t[sampled]  # after the update, so the copies share it
            return t

        touched = torch.cat([sources, dead_idx])

        def state_fn(_: str, s: Tensor) -> Tensor:
            s = s.clone()
            s[touched] = 0
            return s

        ops.edit_gaussians(p, model.optimizers, param_fn, state_fn)
        return n_dead

    @torch.no_grad()
    def grow(self, model) -> int:
        """Adds ``grow_rate`` x N Gaussians (at most up to ``cap_max``) by the same move."""
        n = model.num_gaussians
        n_new = max(0, min(self.cap_max, int(math.floor((1 + self.grow_rate) * n))) - n)
        if n_new == 0:
            return 0
        p = model.params
        sampled = self._sample(model, torch.arange(n, device=p["means"].device), n_new)
        sources, logit_o, log_s = self._moment_match(model, sampled)

        def param_fn(name: str, t: Tensor) -> Tensor:
            t = t.clone()
            if name == "opacities":
                t[sources] = logit_o
            elif name == "scales":
                t[sources] = log_s
            return torch.cat([t, t[sampled]])

        def state_fn(_: str, s: Tensor) -> Tensor:
            s = s.clone()
            s[sources] = 0
            return torch.cat([s, torch.zeros_like(s[sampled])])

        ops.edit_gaussians(p, model.optimizers, param_fn, state_fn)
        return n_new

    @torch.no_grad()
    def inject_noise(self, model, lr_means: float) -> None:
        """means += noise_lr x lr x sigmoid(100 (1 - o - 0.995)) x Sigma eps, eps ~ N(0, I)."""
        if self.noise_lr == 0 or model.num_gaussians == 0:
            return
        p = model.params
        o = torch.sigmoid(p["opacities"])
        gate = torch.sigmoid(100.0 * ((1.0 - o) - (1.0 - self.min_opacity)))
        R = quaternion_to_matrix(p["quats"])
        s2 = torch.exp(2 * p["scales"])
        cov = R @ (s2[:, :, None] * R.transpose(1, 2))
        eps = torch.randn_like(p["means"])
        noise = torch.einsum("nij,nj->ni", cov, eps) * (gate * self.noise_lr * lr_means)[:, None]
        p["means"].add_(noise)
