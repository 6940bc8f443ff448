"""3D Gaussian splatting (Kerbl et al. 2023): the ``3dgs`` representation.

Parameters (rows are Gaussians): ``means`` [N, 3], ``quats`` [N, 4] (w, x, y, z, unnormalised),
``scales`` [N, 3] (log), ``opacities`` [N] (logit), ``sh0`` [N, 1, 3] and ``shN`` [N, K-1, 3] SH
coefficients. One Adam per parameter (so densification can edit each), learning rates of the
original method, the position learning rate decaying exponentially by 100x over training. It
trains on whole images with the original loss, (1 - lambda) L1 + lambda D-SSIM, and is
densifiable: the strategies of :mod:`scene3d.densify` grow and prune its rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from scene3d.cameras import Cameras
from scene3d.metrics import photometric_loss
from scene3d.models.base import Caps, Control, GaussianSet, Representation, focus_of_points, log_lerp, points_in_box, random_scene_points


@dataclass
class GaussianConfig:
    """Hyperparameters of the 3dgs representation (defaults: the original method's)."""

    sh_degree: int = 3
    """Largest SH degree; bands are switched on one at a time every ``sh_degree_interval`` steps."""
    sh_degree_interval: int = 1000
    """Steps between raising the active SH degree."""
    init_opacity: float = 0.1
    """Opacity of the initial Gaussians."""
    init_scale: float = 1.0
    """Initial scales are this times the mean distance to the 3 nearest points."""
    random_init: int = 100_000
    """Number of random Gaussians when the dataset has no sparse points."""
    random_init_extent: float = 1.5
    """Random Gaussians fill a cube of this half-size times the scene radius."""
    means_lr: float = 1.6e-4
    """Initial position learning rate (times the scene scale)."""
    means_lr_final: float = 1.6e-6
    """Final position learning rate (times the scene scale), reached at the last step."""
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20
    ssim_lambda: float = 0.2
    """Loss = (1 - lambda) L1 + lambda (1 - SSIM)."""
    antialiased: bool = False
    """Mip-Splatting's 2D filter with opacity compensation."""
    backend: Literal["auto", "gsplat", "cpu", "torch"] = "auto"
    """Rasterization backend."""
    near: float = 0.01
    far: float = 1e10


PRESETS: dict[str, dict] = {
    "default": {},
    "fast": {
        # A 7k-step recipe for CPUs and quick looks: the original schedule compressed.
        "train": {"max_steps": 7000},
        "model": {"sh_degree_interval": 500},
        "strategy": {"refine_start": 250, "refine_stop": 5000, "refine_every": 100, "reset_every": 2000},
    },
    "short": {
        # 3k steps: what two CPU cores train in 10-20 minutes at 1/4 resolution (benchmarks).
        "train": {"max_steps": 3000},
        "model": {"sh_degree_interval": 500},
        # MCMC grows 5% per round in the 30k recipe; 20 rounds need more to reach a cap.
        "strategy": {"refine_start": 200, "refine_stop": 2200, "refine_every": 100, "reset_every": 1500, "grow_rate": 0.2},
    },
    "demo": {
        # The embedded scene in a few minutes on two CPU cores.
        "train": {"max_steps": 3000, "save_every": 500},
        "model": {"sh_degree": 1, "sh_degree_interval": 500},
        "strategy": {"refine_start": 200, "refine_stop": 2200, "refine_every": 100, "reset_every": 1500, "max_gaussians": 60_000},
        "data": {"downscale": 2},
    },
}


PRESETS["cpu"] = PRESETS["short"]  # the two-CPU-core recipe every representation offers under this name (bench models)


def _knn_mean_distance(points: np.ndarray, k: int = 3) -> np.ndarray:
    from scipy.spatial import cKDTree

    if len(points) <= 1:
        return np.full(len(points), 0.01)
    dist, _ = cKDTree(points).query(points, k=min(k + 1, len(points)))
    return np.maximum(dist[:, 1:].mean(-1), 1e-7)


class GaussianModel(Representation):
    """A set of 3D Gaussians with SH colours, and their optimisers."""

    name = "3dgs"
    Config = GaussianConfig
    caps = Caps(pinhole_only=True, densifiable=True, gaussians=True)
    presets = PRESETS
    default_strategy = "adc"
    schedule_fields = ("sh_degree_interval",)

    def __init__(self, params: dict[str, Tensor], cfg: GaussianConfig, scene_scale: float):
        super().__init__()
        self.cfg = cfg
        self.scene_scale = float(scene_scale)
        self.params = nn.ParameterDict({k: nn.Parameter(v.float().contiguous()) for k, v in params.items()})
        self.setup_optimizers()  # made again where the engine places the model

    # ------------------------------------------------------------------ creation and state
    @classmethod
    def from_points(cls, points: np.ndarray, colors: np.ndarray, cfg: GaussianConfig, scene_scale: float) -> "GaussianModel":
        """Gaussians at ``points`` [P, 3] with ``colors`` [P, 3] (uint8 or float in [0, 1])."""
        from scene3d.renderers.gaussians import rgb_to_sh

        pts = np.asarray(points, dtype=np.float32)
        col = np.asarray(colors, dtype=np.float32)
        if col.max() > 1.0:
            col = col / 255.0
        n = len(pts)
        scales = np.log(_knn_mean_distance(pts) * cfg.init_scale)[:, None].repeat(3, 1)
        quats = np.zeros((n, 4), np.float32)
        quats[:, 0] = 1.0
        k = (cfg.sh_degree + 1) ** 2
        params = {
            "means": torch.from_numpy(pts),
            "quats": torch.from_numpy(quats),
            "scales": torch.from_numpy(scales.astype(np.float32)),
            "opacities": torch.full((n,), math.log(cfg.init_opacity / (1 - cfg.init_opacity))),
            "sh0": rgb_to_sh(torch.from_numpy(col))[:, None, :],
            "shN": torch.zeros(n, k - 1, 3),
        }
        return cls(params, cfg, scene_scale)

    @classmethod
    def from_dataset(cls, dataset, cfg: GaussianConfig, seed: int = 0) -> "GaussianModel":
        """Initialised from the dataset's sparse points, or random points when it has none."""
        scene_scale = dataset.scene_radius() * 1.1
        if dataset.points is not None and len(dataset.points) > 0:
            return cls.from_points(dataset.points, dataset.point_colors, cfg, scene_scale)
        rng = np.random.default_rng(seed)
        pts = random_scene_points(dataset, cfg.random_init, cfg.random_init_extent, rng)
        return cls.from_points(pts, rng.uniform(size=(cfg.random_init, 3)), cfg, scene_scale)

    @classmethod
    def from_gaussians(cls, gaussians: GaussianSet) -> "GaussianModel":
        """A model holding exactly ``gaussians`` (a scene file's), rendered as they were trained."""
        cfg = GaussianConfig(sh_degree=gaussians.sh_degree, antialiased=gaussians.antialiased)
        return cls(gaussians.params(), cfg, scene_scale=1.0)

    @classmethod
    def from_state(cls, state: dict, cfg: GaussianConfig) -> "GaussianModel":
        params = GaussianSet.from_params(state["params"]).params()  # names, kinds and shapes checked
        scene_scale = float(state["scene_scale"])
        if not math.isfinite(scene_scale) or scene_scale <= 0:
            raise ValueError(f"scene_scale {scene_scale} is not a positive number")
        return cls({k: v.cpu() for k, v in params.items()}, cfg, scene_scale)

    def state(self) -> dict:
        return {"params": {k: v.detach().clone() for k, v in self.params.items()}, "scene_scale": self.scene_scale}

    # ------------------------------------------------------------------ optimisation
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.cfg
        lrs = {
            "means": c.means_lr * self.scene_scale,
            "quats": c.quats_lr,
            "scales": c.scales_lr,
            "opacities": c.opacities_lr,
            "sh0": c.sh0_lr,
            "shN": c.shN_lr,
        }
        return {k: torch.optim.Adam([{"params": [self.params[k]], "lr": lr, "name": k}], eps=1e-15) for k, lr in lrs.items()}

    def schedule(self, step: int, max_steps: int) -> None:
        """Exponential decay of the position learning rate from ``means_lr`` to ``means_lr_final``."""
        lr = log_lerp(self.cfg.means_lr, self.cfg.means_lr_final, step, max_steps) * self.scene_scale
        for group in self.optimizers["means"].param_groups:
            group["lr"] = lr

    def active_sh_degree(self, step: int) -> int:
        return min(step // max(self.cfg.sh_degree_interval, 1), self.cfg.sh_degree)

    def batch(self, data, step: int, generator: torch.Generator):
        return data.image_batch(step)

    def forward(self, batch, step: int):
        return self.rasterize(self.activated(), batch.cameras, self.raster_settings(sh_degree=self.active_sh_degree(step), absgrad=batch.absgrad, render_depth=False),
                              batch.background)  # fmt: skip

    def losses(self, out, batch, step: int) -> dict[str, Tensor]:
        return {"rgb": photometric_loss(out.rgb, batch.target, self.cfg.ssim_lambda, batch.mask)}

    # ------------------------------------------------------------------ rendering
    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def sh_coeffs(self) -> Tensor:
        return torch.cat([self.params["sh0"], self.params["shN"]], dim=1)

    def activated(self) -> dict[str, Tensor]:
        """Actual scales and opacities (exp / sigmoid of the stored parameters)."""
        p = self.params
        return {
            "means": p["means"],
            "quats": p["quats"],
            "scales": torch.exp(p["scales"]),
            "opacities": torch.sigmoid(p["opacities"]),
            "colors": self.sh_coeffs,
        }

    def raster_settings(self, **overrides):
        """The rasterizer settings of this model (backend, near/far, anti-aliasing), with ``overrides``."""
        from scene3d.renderers.gaussians import RasterSettings

        base = dict(backend=self.cfg.backend, sh_degree=self.cfg.sh_degree, near=self.cfg.near, far=self.cfg.far, antialiased=self.cfg.antialiased)
        return RasterSettings(**{**base, **overrides})

    @staticmethod
    def rasterize(a: dict[str, Tensor], cameras: Cameras, settings, background: Tensor | None):
        from scene3d.renderers.gaussians import rasterize

        return rasterize(a["means"], a["quats"], a["scales"], a["opacities"], a["colors"], cameras, settings, background=background)

    @torch.no_grad()
    def render(self, cameras: Cameras, *, background: Tensor | None = None, options: dict | None = None, crop=None):
        """Renders the Gaussians into ``cameras``; ``options``: ``sh_degree``, ``scale`` (multiplies
        every extent, as the original viewer's scaling modifier), ``min_opacity`` (hides fainter ones)."""
        options = options or {}
        a = self.activated()
        keep = None
        if crop is not None:
            keep = self.crop_mask(*crop)
        floor = float(options.get("min_opacity", 0.0))
        if floor > 0:
            above = a["opacities"] > floor
            keep = above if keep is None else keep & above
        if keep is not None:
            a = {k: v[keep] for k, v in a.items()}
        scale = float(options.get("scale", 1.0))
        if scale != 1.0:
            a["scales"] = a["scales"] * scale
        degree = min(int(options.get("sh_degree", self.cfg.sh_degree)), self.cfg.sh_degree)
        return self.rasterize(a, cameras, self.raster_settings(sh_degree=degree, render_depth=True), background)

    def crop_mask(self, lo, hi) -> Tensor:
        """[N] bool: Gaussians whose centre lies in the box [lo, hi] (model frame)."""
        return points_in_box(self.params["means"], lo, hi)

    # ------------------------------------------------------------------ reporting and the viewer
    def stats(self) -> dict:
        return {"num_gaussians": self.num_gaussians}

    def describe(self) -> str:
        return f"gaussians {self.num_gaussians:,}"

    def controls(self) -> list[Control]:
        return [
            Control("sh_degree", "SH degree", "slider", self.cfg.sh_degree, 0, max(self.cfg.sh_degree, 1), 1, hint="Highest band of view-dependent colour drawn."),
            Control("scale", "Splat scale", "slider", 1.0, 0.05, 2.0, 0.05, hint="Multiplies every Gaussian's extent (as the original 3DGS viewer's scaling modifier)."),
            Control("min_opacity", "Min opacity", "slider", 0.0, 0.0, 0.99, 0.01, hint="Hides Gaussians below this opacity."),
        ]

    def viewer_stats(self) -> dict[str, str]:
        op = torch.sigmoid(self.params["opacities"].detach())
        return {
            "Gaussians": f"{self.num_gaussians:,}",
            "SH degree": str(self.cfg.sh_degree),
            "opacity < 0.01": f"{int((op < 0.01).sum()):,}",
            "memory": f"{sum(p.numel() for p in self.params.values()) * 4 / 1e6:.1f} MB",
        }

    def focus(self):
        return focus_of_points(self.params["means"])

    # ------------------------------------------------------------------ export
    def to_gaussians(self, crop=None) -> GaussianSet:
        g = GaussianSet.from_params({k: v.detach() for k, v in self.params.items()}, antialiased=self.cfg.antialiased)
        return g if crop is None else g.subset(self.crop_mask(*crop))
