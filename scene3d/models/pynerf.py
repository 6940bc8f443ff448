"""PyNeRF (Turki et al., NeurIPS 2023): a pyramid of NeRF heads over one hash grid, each sample
routed to the heads that match its footprint.

Structure (the reference's defaults, hturki/pynerf): one shared multiresolution hash grid (16
levels of 4 features) read at each sample's centre; ``heads`` (8) density MLPs, each reading the
whole encoding and giving a density logit and a 15-wide geometry feature; one colour MLP on the
view direction's spherical harmonics (degree 3, 16 coefficients) and the blended geometry feature.

The level of a sample: its footprint ``w = t * sqrt(pixel area)`` (world units, along the unit
ray: our cone radius over 2 / sqrt(12)) against the grid's finest cell ``A / R`` (``A``: the side
the grid spans, the box's longest side, or 4 for the contracted ball of radius 2; ``R``: the grid's
maximum resolution) gives

    level = (heads - 1) - log2(w R / A),

so a sample twice as far (or an image at half the resolution) is one level coarser. The two heads
bracketing the level are blended linearly, on their raw outputs (logit and geometry feature) before
the activation; levels below 0 use head 0, levels from ``heads - 1`` up the finest head. During
training the lowest and highest level seen in each cell of a ``level_resolution``^3 grid over the
field's [0, 1]^3 coordinates are recorded; rendering clamps a sample's level to its cell's range
(cells never seen render with the finest head), so a view closer or farther than any training view
does not ask a head for a scale it never learned.

The ray path is Zip-NeRF's (:mod:`scene3d.models.zipnerf`): proposal rounds over their own
(non-pyramidal) hash grids, then the NeRF round; samples are interval centres instead of
hexagonal multisamples, and the data term is MSE. Multiscale data (``--multiscale``) weighs each
ray by its pixel's area (:attr:`~scene3d.data.training.Batch.weights`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from scene3d.models.base import Control
from scene3d.models.zipnerf import PRESETS as ZIP_PRESETS
from scene3d.models.zipnerf import ZipNeRFConfig, ZipNeRFModel, crop_share, grid_coordinates


@dataclass
class PyNeRFConfig(ZipNeRFConfig):
    """Hyperparameters of the pynerf representation. Defaults: the reference's 360 recipe (8 heads,
    a 16-level grid to 2048 with 2^20 tables, proposals of 256 and 96 samples then 48, batch 8192,
    lr 1e-2 with a cosine decay after a 512-step warm-up, 30k steps); ``--preset synthetic`` its
    Blender recipe, ``--preset cpu`` a small model for two CPU cores."""

    heads: int = 8
    """Density MLPs of the pyramid (1: a single head, the plain grid NeRF)."""
    grid_levels: int = 16
    grid_features: int = 4
    head_width: int = 64
    geo_features: int = 15
    colour_width: int = 128
    colour_depth: int = 2
    """Hidden layers of the colour MLP."""
    level_resolution: int = 128
    """Cells per axis of the grid that records the levels trained in each cell."""
    share_grid: bool = True
    """One hash grid read by every head (the reference's default); off: each head its own grid,
    head k's reaching resolution ``nerf_max_resolution / 2^(heads - 1 - k)`` with the shared grid's
    growth factor (its finest levels dropped), so a coarse head cannot see finer detail than its
    scale holds (the paper's pyramid of grids)."""
    data_loss: str = "mse"
    """``mse`` (the reference's) or ``charbonnier`` (Zip-NeRF's)."""
    distortion_space: str = "normalised"
    """Where the distortion loss measures: ``normalised`` distances (the reference's, through
    nerfstudio) or Zip-NeRF's ``curve`` of metric distances."""
    lr_schedule: str = "cosine"
    """``cosine`` (to 5% of lr_init after ``lr_delay_steps`` of linear warm-up) or ``exponential``
    (log-linear from lr_init to lr_final, as Zip-NeRF's without its warm-up)."""

    def __post_init__(self):
        if self.heads < 1 or self.grid_levels < 1 or self.level_resolution < 1:
            raise ValueError("pynerf needs at least one head, one grid level and one level cell")
        if self.data_loss not in ("mse", "charbonnier") or self.distortion_space not in ("normalised", "curve"):
            raise ValueError("data_loss must be mse or charbonnier, distortion_space normalised or curve")
        if self.lr_schedule not in ("cosine", "exponential"):
            raise ValueError(f"lr_schedule must be cosine or exponential, got {self.lr_schedule!r}")


_REFERENCE_360 = {
    "log2_table_size": 20,
    "nerf_max_resolution": 2048,
    "proposal_max_resolutions": (512, 2048),
    "proposal_samples": (256, 96),
    "proposal_features": 2,
    "nerf_samples": 48,
    "interlevel_mult": 1.0,
    "distortion_mult": 0.002,
    "hash_decay": 0.0,
    "box_hash_decay": 0.0,
    "lr_init": 1e-2,
    "lr_final": 5e-4,
    "lr_delay_steps": 512,
}

PRESETS = {
    "default": {"model": dict(_REFERENCE_360), "train": {"max_steps": 30_000}},
    "synthetic": {
        "model": {**_REFERENCE_360, "nerf_max_resolution": 65536, "nerf_samples": 96, "lr_init": 5e-3, "lr_final": 1e-4,
                  "lr_schedule": "exponential", "lr_delay_steps": 0},  # fmt: skip
        "train": {"max_steps": 50_000},
    },
    # two CPU cores, 20 minutes: the Zip-NeRF cpu preset's grids and sampling, a narrower colour
    # MLP. A step costs about 2/3 of a zipnerf cpu step (one sample per interval instead of six),
    # so the schedule is 6,500 steps to fill the same time; random backgrounds as zipnerf's cpu
    # preset (multiscale lego, 800 steps: 29.07 dB against 28.50 dB on white). Multiscale lego at
    # 800 steps also preferred the reference's MSE and normalised distortion (29.07 dB) to
    # Charbonnier and the curve (28.75 dB), and 16 NeRF samples with more steps to 32.
    "cpu": {
        "model": {**ZIP_PRESETS["cpu"]["model"], "hash_decay": 0.0, "box_hash_decay": 0.0, "interlevel_mult": 1.0, "distortion_mult": 0.002,
                  "colour_width": 64, "lr_schedule": "exponential", "lr_delay_steps": 300},  # fmt: skip
        "train": {"max_steps": 6500, "background_mode": "random"},
    },
}


def level_weights(level: Tensor, heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(lower head [M] int64, upper head [M] int64, the upper one's weight [M]) for continuous
    levels ``level`` [M]: heads floor(l) and floor(l) + 1 with weights 1 - frac and frac; below 0
    head 0 alone, from ``heads - 1`` up the finest head alone (weights always sum to 1)."""
    top = heads - 1
    clamped = level.clamp(0.0, float(top))
    lo = torch.floor(clamped).long().clamp(max=max(top - 1, 0))
    frac = (clamped - lo.to(clamped.dtype)).clamp(0.0, 1.0)
    hi = (lo + 1).clamp(max=top)
    return lo, hi, torch.where(hi == lo, torch.zeros_like(frac), frac)


def head_grid_levels(cfg: PyNeRFConfig) -> list[tuple[int, float]]:
    """(levels, maximum resolution) of each head's own grid: head k reaches ``R / 2^(heads - 1 - k)``
    (at least the grid's minimum resolution) with the levels of the full grid up to there, the
    coarsest at least."""
    full = float(cfg.nerf_max_resolution)
    growth = (full / cfg.min_resolution) ** (1.0 / max(cfg.grid_levels - 1, 1)) if cfg.grid_levels > 1 else 1.0
    out = []
    for k in range(cfg.heads):
        res = max(full / 2.0 ** (cfg.heads - 1 - k), float(cfg.min_resolution))
        n = cfg.grid_levels if growth <= 1.0 else min(cfg.grid_levels, 1 + int(math.floor(math.log(res / cfg.min_resolution) / math.log(growth) + 1e-6)))
        out.append((n, cfg.min_resolution * growth ** (n - 1)))
    return out


class PyramidField(nn.Module):
    """The NeRF round of PyNeRF: one hash grid, ``heads`` density MLPs blended by level, one colour MLP."""

    def __init__(self, cfg: PyNeRFConfig):
        super().__init__()
        from scene3d.renderers.rays.hashgrid import HashGrid, HashGridConfig

        def grid(levels: int, max_resolution: float) -> HashGrid:
            return HashGrid(HashGridConfig(levels=levels, features_per_level=cfg.grid_features, log2_table_size=cfg.log2_table_size,
                                           min_resolution=cfg.min_resolution, max_resolution=int(round(max_resolution)), backend=cfg.grid_backend))  # fmt: skip

        self.grid = grid(cfg.grid_levels, cfg.nerf_max_resolution) if cfg.share_grid else None
        self.head_grids = None if cfg.share_grid else nn.ModuleList(grid(n, r) for n, r in head_grid_levels(cfg))
        widths = [g.levels * cfg.grid_features for g in self.grids()] if not cfg.share_grid else [cfg.grid_levels * cfg.grid_features] * cfg.heads
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(width, cfg.head_width), nn.ReLU(), nn.Linear(cfg.head_width, 1 + cfg.geo_features)) for width in widths
        )
        layers, w = [], 16 + cfg.geo_features
        for _ in range(cfg.colour_depth):
            layers += [nn.Linear(w, cfg.colour_width), nn.ReLU()]
            w = cfg.colour_width
        self.colour = nn.Sequential(*layers, nn.Linear(w, 3))
        self.num_heads = cfg.heads
        self.max_resolution = float(cfg.nerf_max_resolution)
        self.density_bias = cfg.density_bias
        self.cells = int(cfg.level_resolution)
        self.register_buffer("level_min", torch.full((self.cells**3,), float(cfg.heads)))
        self.register_buffer("level_max", torch.full((self.cells**3,), -1.0))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def grids(self) -> tuple:
        """The hash grids this field reads (hash decay, reports)."""
        return (self.grid,) if self.grid is not None else tuple(self.head_grids)

    def levels(self, footprint: Tensor, extent: float) -> Tensor:
        """Continuous levels of samples whose footprints are ``footprint`` (world units) on a grid
        spanning ``extent``: ``(heads - 1) - log2(footprint R / extent)``."""
        return (self.num_heads - 1) - torch.log2(footprint.clamp_min(1e-12) * (self.max_resolution / extent))

    def cell_index(self, x01: Tensor) -> Tensor:
        c = (x01.clamp(0.0, 1.0) * self.cells).long().clamp(0, self.cells - 1)
        return (c[:, 0] * self.cells + c[:, 1]) * self.cells + c[:, 2]

    @torch.no_grad()
    def record(self, cells: Tensor, level: Tensor) -> None:
        """Widens each cell's trained level range to include ``level`` (running min and max)."""
        self.level_min.scatter_reduce_(0, cells, level.detach().to(self.level_min), reduce="amin")
        self.level_max.scatter_reduce_(0, cells, level.detach().to(self.level_max), reduce="amax")

    def clamp_to_trained(self, cells: Tensor, level: Tensor) -> Tensor:
        """``level`` held inside its cell's trained range (a cell never trained: the finest head)."""
        return torch.maximum(self.level_min[cells], torch.minimum(level, self.level_max[cells]))

    def forward(self, points: Tensor, scales: Tensor, dirs: Tensor | None = None, box: Tensor | None = None, *,
                crop: Tensor | None = None, record: bool = False, level: float | None = None, clamp: bool = True) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """(density [N, S], rgb [N, S, 3] or None) at interval centres ``points`` [N, S, 1, 3] whose
        footprints are ``scales`` [N, S, 1]. ``record``: training, widen the cells' level ranges;
        otherwise levels are clamped to them (unless ``clamp`` is off). ``level``: every sample at
        that level (the viewer's pyramid-level control)."""
        from scene3d.renderers.gaussians import sh_basis

        n, s = points.shape[:2]
        x = points.reshape(-1, 3)
        x01, inside, extent = grid_coordinates(x, box)
        if crop is not None:
            within = crop_share(points, crop).reshape(-1)
            inside = within if inside is None else inside * within
        x01 = x01.clamp(0.0, 1.0)
        feats = self.grid(x01) if self.grid is not None else None
        lvl = self.levels(scales.reshape(-1), extent)
        if level is not None:
            lvl = torch.full_like(lvl, float(level))
        elif record:
            self.record(self.cell_index(x01), lvl)
        elif clamp:
            lvl = self.clamp_to_trained(self.cell_index(x01), lvl)
        raw = self.blend(feats, lvl, x01)
        sigma = torch.exp(torch.clamp(raw[:, 0] + self.density_bias, max=30.0))
        if inside is not None:
            sigma = sigma * inside
        sigma = sigma.view(n, s)
        if dirs is None:
            return sigma, None
        sh = sh_basis(3, dirs)[:, None, :].expand(n, s, -1).reshape(n * s, -1)
        rgb = torch.sigmoid(self.colour(torch.cat([sh, raw[:, 1:]], dim=-1)))
        return sigma, (rgb * (1.0 + 2.0 * 1e-3) - 1e-3).view(n, s, 3)

    def blend(self, feats: Tensor | None, level: Tensor, x01: Tensor) -> Tensor:
        """[M, 1 + geo] the heads' raw outputs blended by ``level`` [M]; each head runs only on the
        samples it has weight for (two per sample at most), on the shared grid's features ``feats``
        or (None) its own grid's at ``x01``."""
        lo, hi, frac = level_weights(level, self.num_heads)
        out = None
        for k, head in enumerate(self.heads):
            w = torch.where(lo == k, 1.0 - frac, torch.zeros_like(frac)) + torch.where((hi == k) & (hi != lo), frac, torch.zeros_like(frac))
            idx = (w > 0).nonzero()[:, 0]
            if len(idx) == 0:
                continue
            part = head(feats[idx] if feats is not None else self.head_grids[k](x01[idx])) * w[idx, None]
            if out is None:
                out = torch.zeros(len(level), part.shape[1], device=level.device, dtype=part.dtype)
            out = out.index_add(0, idx, part)
        if out is None:  # no samples
            out = torch.zeros(len(level), self.heads[0][-1].out_features, device=level.device, dtype=x01.dtype)
        return out


class PyNeRFModel(ZipNeRFModel):
    """PyNeRF: Zip-NeRF's proposal rounds, then a pyramid of heads over one hash grid (module docstring)."""

    name = "pynerf"
    Config = PyNeRFConfig
    presets = PRESETS

    def make_nerf_field(self, cfg) -> nn.Module:
        return PyramidField(cfg)

    def interval_samples(self, origins, dirs, radii, tdist, stratified: bool, generator, last: bool) -> tuple[Tensor, Tensor]:
        """Interval centres, with the NeRF round's footprints ``t sqrt(pixel area)`` (the proposal
        rounds read their grids at full resolution: footprint 0)."""
        from scene3d.renderers.rays.pixels import _FOOTPRINT

        mid = 0.5 * (tdist[:, 1:] + tdist[:, :-1])
        points = (origins[:, None, :] + dirs[:, None, :] * mid[..., None])[:, :, None, :]
        scales = mid * (radii[:, None] / _FOOTPRINT) if last else torch.zeros_like(mid)
        return points, scales[..., None]

    def field_options(self, options: dict) -> dict:
        level = options.get("level")
        if level is None or float(level) < 0:
            return {}
        return {"level": float(np.clip(float(level), 0.0, self.cfg.heads - 1))}

    def forward(self, batch, step: int):
        return self.render_rays(batch.rays, background=batch.background, stratified=True, generator=batch.generator, field_options={"record": True})

    def learning_rate(self, step: int, max_steps: int) -> float:
        c = self.cfg
        if c.lr_schedule == "exponential":
            return super().learning_rate(step, max_steps)
        if step < c.lr_delay_steps:  # linear warm-up, then cosine to 5% (nerfstudio's cosine decay, as the reference)
            return c.lr_init * step / max(c.lr_delay_steps, 1)
        p = min(max((step - c.lr_delay_steps) / max(max_steps - c.lr_delay_steps, 1), 0.0), 1.0)
        return c.lr_init * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * p)))

    def data_loss(self, out, batch) -> Tensor:
        """MSE (the reference's), or Zip-NeRF's Charbonnier; rays weighted by ``batch.weights`` when given."""
        from scene3d.metrics import weighted_mean

        if self.cfg.data_loss == "charbonnier":
            return super().data_loss(out, batch)
        return weighted_mean((out.rgb - batch.target) ** 2, getattr(batch, "weights", None))

    def distortion_loss(self, out) -> Tensor:
        """mip-NeRF 360's distortion loss on normalised distances (nerfstudio's, which the reference
        uses), or Zip-NeRF's on its curve."""
        from scene3d.renderers.rays.proposal import distortion_loss

        if self.cfg.distortion_space == "curve":
            return super().distortion_loss(out)
        return distortion_loss(out.sdist, out.weights, curve=None, mult=self.cfg.distortion_mult)

    def trained_level_range(self) -> tuple[float, float] | None:
        """(lowest, highest) level recorded in any cell, or None before training."""
        f = self.nerf
        seen = f.level_max >= f.level_min
        if not bool(seen.any()):
            return None
        return float(f.level_min[seen].min()), float(f.level_max[seen].max())

    def stats(self) -> dict:
        out = super().stats()
        rng = self.trained_level_range()
        if rng is not None:
            out["trained_levels"] = [round(rng[0], 3), round(rng[1], 3)]
        return out

    def describe(self) -> str:
        return f"pynerf {self.cfg.heads} heads, {sum(p.numel() for p in self.parameters()) / 1e6:.1f}M parameters"

    def field_controls(self) -> list[Control]:
        return [Control("level", "Pyramid level", "slider", -1.0, -1.0, float(self.cfg.heads - 1), 0.25,
                        hint="-1: each sample's level from its footprint (clamped to what its cell trained); 0 .. heads-1: every sample at that level.")]  # fmt: skip
