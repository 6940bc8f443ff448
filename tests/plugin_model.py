"""A representation defined outside the package, for the plugin test: a dense voxel grid of density
and colour (Plenoxels without spherical harmonics), trained by rays through the shared ray path,
baked to one Gaussian per occupied voxel. Importing this module registers it as ``toygrid``; CLI
runs in a new process find it through ``SCENE3D_PLUGINS=tests.plugin_model``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scene3d.models import register
from scene3d.models.base import Caps, Control, GaussianSet, Representation, focus_of_box
from scene3d.renderers.gaussians import rgb_to_sh
from scene3d.renderers.rays import OccupancySampler, render_image, render_rays


@dataclass
class ToyGridConfig:
    resolution: int = 20
    """Voxels per side."""
    batch_rays: int = 1024
    lr: float = 0.2
    samples_per_voxel: float = 2.0
    bake_alpha: float = 0.05
    """Voxels whose opacity across one voxel exceeds this become Gaussians."""


class ToyGrid(Representation):
    name = "toygrid"
    Config = ToyGridConfig
    caps = Caps(gaussians=True)
    presets = {"default": {"train": {"max_steps": 80, "save_every": 40}}, "tiny": {"train": {"max_steps": 20}, "model": {"resolution": 8}}}

    def __init__(self, cfg: ToyGridConfig, box: Tensor):
        super().__init__()
        self.cfg = cfg
        r = cfg.resolution
        self.register_buffer("box", torch.as_tensor(box, dtype=torch.float32).reshape(2, 3).clone())
        self.density = nn.Parameter(torch.full((1, 1, r, r, r), -1.0))
        self.colour = nn.Parameter(torch.zeros(1, 3, r, r, r))
        self.setup_optimizers()

    @property
    def voxel(self) -> float:
        return float((self.box[1] - self.box[0]).max()) / self.cfg.resolution

    @classmethod
    def from_dataset(cls, dataset, cfg, seed: int = 0):
        pts = dataset.points
        if pts is not None and len(pts) > 0:
            lo, hi = np.percentile(pts, 1, axis=0), np.percentile(pts, 99, axis=0)
            pad = 0.15 * (hi - lo).max()
            box = np.stack([lo - pad, hi + pad])
        else:
            box = np.array([[-1.0] * 3, [1.0] * 3])
        return cls(cfg, torch.from_numpy(box.astype(np.float32)))

    @classmethod
    def from_state(cls, state, cfg):
        model = cls(cfg, state["box"].cpu())
        model.density.data.copy_(state["density"])
        model.colour.data.copy_(state["colour"])
        return model

    def state(self) -> dict:
        return {"box": self.box.detach().cpu().clone(), "density": self.density.detach().clone(), "colour": self.colour.detach().clone()}

    def make_optimizers(self):
        return {"grid": torch.optim.Adam([self.density, self.colour], lr=self.cfg.lr)}

    def _lookup(self, grid: Tensor, pts: Tensor) -> Tensor:
        x = (pts - self.box[0]) / (self.box[1] - self.box[0]) * 2 - 1  # grid_sample wants (x, y, z) -> (W, H, D)
        return F.grid_sample(grid, x.view(1, -1, 1, 1, 3), align_corners=True).view(grid.shape[1], -1).T

    def field(self, density_scale: float = 1.0):
        def f(pts, dirs):
            sigma = F.softplus(self._lookup(self.density, pts)[:, 0]) * (density_scale * 4.0 / self.voxel)
            return sigma, torch.sigmoid(self._lookup(self.colour, pts))

        return f

    def _sampler(self, crop=None) -> OccupancySampler:
        box = self.box
        if crop is not None:
            lo = torch.maximum(box[0], torch.as_tensor(np.asarray(crop[0]), dtype=torch.float32, device=box.device))
            hi = torch.minimum(box[1], torch.as_tensor(np.asarray(crop[1]), dtype=torch.float32, device=box.device))
            box = torch.stack([lo, torch.maximum(hi, lo)])
        step = self.voxel / self.cfg.samples_per_voxel
        return OccupancySampler(box.reshape(-1), step_size=step, max_samples=int(math.ceil(2 * self.cfg.resolution * self.cfg.samples_per_voxel)))

    def batch(self, data, step, generator):
        return data.ray_batch(step, self.cfg.batch_rays, generator)

    def forward(self, batch, step):
        return render_rays(self.field(), batch.rays, sampler=self._sampler(), background=batch.background, stratified=True, generator=batch.generator)

    def losses(self, out, batch, step):
        tv = sum((g.diff(dim=d) ** 2).mean() for g in (self.density, self.colour) for d in (2, 3, 4))
        return {"rgb": torch.mean((out.rgb - batch.target) ** 2), "tv": 1e-3 * tv}

    @torch.no_grad()
    def render(self, cameras, *, background=None, options=None, crop=None):
        scale = float((options or {}).get("density_scale", 1.0))
        return render_image(self.field(scale), cameras, sampler=self._sampler(crop), background=background)

    def _voxel_alpha(self) -> tuple[Tensor, Tensor, Tensor]:
        """(alpha across one voxel [R^3], voxel centres [R^3, 3], colours [R^3, 3]), x fastest."""
        r = self.cfg.resolution
        axes = [torch.linspace(float(self.box[0, i]), float(self.box[1, i]), r, device=self.box.device) for i in range(3)]
        zz, yy, xx = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        centres = torch.stack([xx, yy, zz], -1).reshape(-1, 3)
        sigma = F.softplus(self.density.detach()).reshape(-1) * (4.0 / self.voxel)
        alpha = 1 - torch.exp(-sigma * self.voxel)
        return alpha, centres, torch.sigmoid(self.colour.detach()).reshape(3, -1).T

    def stats(self) -> dict:
        return {"occupied_voxels": int((self._voxel_alpha()[0] > self.cfg.bake_alpha).sum())}

    def controls(self):
        return [Control("density_scale", "Density scale", "slider", 1.0, 0.1, 2.0, 0.1)]

    def focus(self):
        return focus_of_box(self.box)

    def to_gaussians(self, crop=None) -> GaussianSet:
        alpha, centres, colours = self._voxel_alpha()
        keep = alpha > self.cfg.bake_alpha
        n = int(keep.sum())
        a = alpha[keep].clamp(1e-4, 1 - 1e-4)
        g = GaussianSet(
            means=centres[keep],
            quats=torch.tensor([1.0, 0.0, 0.0, 0.0], device=alpha.device).expand(n, 4).clone(),
            scales=torch.full((n, 3), math.log(self.voxel / 2), device=alpha.device),
            opacities=torch.log(a / (1 - a)),
            sh0=rgb_to_sh(colours[keep])[:, None, :],
            shN=torch.zeros(n, 0, 3, device=alpha.device),
        )
        return g if crop is None else g.subset(g.in_box(*crop))


register(ToyGrid)
