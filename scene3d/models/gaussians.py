"""3D Gaussian splatting (Kerbl et al. 2023): the ``3dgs`` representation.

Parameters (rows are Gaussians): ``means`` [N, 3], ``quats`` [N, 4] (w, x, y, z, unnormalised),
``scales`` [N, 3] (log), ``opacities`` [N] (logit), ``sh0`` [N, 1, 3] and ``shN`` [N, K-1, 3] SH
coefficients. One Adam per parameter (so densification can edit each), learning rates of the
original method, the position learning rate decaying exponentially by 100x over training.
"""

from __future__ import annotations

import math
import numpy as np
import torch
from torch import Tensor, nn

from scene3d.cameras import Cameras
from scene3d.models.config import GaussianConfig


def _knn_mean_distance(points: np.ndarray, k: int = 3) -> np.ndarray:
    from scipy.spatial import cKDTree

    if len(points) <= 1:
        return np.full(len(points), 0.01)
    dist, _ = cKDTree(points).query(points, k=min(k + 1, len(points)))
    return np.maximum(dist[:, 1:].mean(-1), 1e-7)


class GaussianModel(nn.Module):
    """A set of 3D Gaussians with SH colours, and their optimisers."""

    name = "3dgs"

    def __init__(self, params: dict[str, Tensor], cfg: GaussianConfig, scene_scale: float):
        super().__init__()
        self.cfg = cfg
        self.scene_scale = float(scene_scale)
        self.params = nn.ParameterDict({k: nn.Parameter(v.float().contiguous()) for k, v in params.items()})
        self.optimizers = self._make_optimizers()

    # ------------------------------------------------------------------ creation
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
        extent = cfg.random_init_extent * max(dataset.scene_radius(), 1e-3)
        lo, hi = -extent * np.ones(3), extent * np.ones(3)
        if dataset.aabb is not None:  # the scene box, where it is tighter than the camera region
            lo, hi = np.maximum(lo, dataset.aabb[0]), np.minimum(hi, dataset.aabb[1])
        pts = rng.uniform(lo, hi, size=(cfg.random_init, 3))
        return cls.from_points(pts, rng.uniform(size=(cfg.random_init, 3)), cfg, scene_scale)

    @classmethod
    def from_state(cls, state: dict, cfg: GaussianConfig) -> "GaussianModel":
        """Rebuilds a model saved by :meth:`state` (parameters, and optimiser state if present)."""
        model = cls(state["params"], cfg, state["scene_scale"])
        if "optimizers" in state:
            for name, opt in model.optimizers.items():
                opt.load_state_dict(state["optimizers"][name])
        return model

    def state(self, with_optimizers: bool = True) -> dict:
        out = {"params": {k: v.detach().clone() for k, v in self.params.items()}, "scene_scale": self.scene_scale}
        if with_optimizers:
            out["optimizers"] = {k: opt.state_dict() for k, opt in self.optimizers.items()}
        return out

    # ------------------------------------------------------------------ optimisation
    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
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

    def update_learning_rates(self, step: int, max_steps: int) -> None:
        """Exponential decay of the position learning rate from ``means_lr`` to ``means_lr_final``."""
        t = min(max(step / max(max_steps, 1), 0.0), 1.0)
        c = self.cfg
        lr = math.exp((1 - t) * math.log(c.means_lr) + t * math.log(c.means_lr_final)) * self.scene_scale
        for group in self.optimizers["means"].param_groups:
            group["lr"] = lr

    def active_sh_degree(self, step: int) -> int:
        return min(step // max(self.cfg.sh_degree_interval, 1), self.cfg.sh_degree)

    # ------------------------------------------------------------------ rendering
    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    def train_stats(self) -> dict:
        """What a training log line records about the model."""
        return {"num_gaussians": self.num_gaussians}

    def describe(self) -> str:
        return f"gaussians {self.num_gaussians:,}"

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

    def render(
        self,
        cameras: Cameras,
        *,
        sh_degree: int | None = None,
        background: Tensor | None = None,
        absgrad: bool = False,
        render_depth: bool = True,
    ):
        """Renders the Gaussians into ``cameras`` (one image size); returns a RenderOutput."""
        from scene3d.renderers.gaussians import RasterSettings, rasterize

        settings = RasterSettings(
            backend=self.cfg.backend,
            sh_degree=self.cfg.sh_degree if sh_degree is None else sh_degree,
            near=self.cfg.near,
            far=self.cfg.far,
            antialiased=self.cfg.antialiased,
            absgrad=absgrad,
            render_depth=render_depth,
        )
        a = self.activated()
        return rasterize(a["means"], a["quats"], a["scales"], a["opacities"], a["colors"], cameras, settings, background=background)

    # ------------------------------------------------------------------ viewer
    def viewer_controls(self):
        """The 3DGS controls the viewer shows (see scene3d.viewer.controls)."""
        from scene3d.viewer.controls import ViewerControl

        return [
            ViewerControl("scale", "Splat scale", "slider", 1.0, 0.05, 2.0, 0.05, hint="Multiplies every Gaussian's extent (as the original 3DGS viewer's scaling modifier)."),
            ViewerControl("min_opacity", "Min opacity", "slider", 0.0, 0.0, 0.99, 0.01, hint="Hides Gaussians below this opacity."),
        ]

    def crop_mask(self, lo, hi) -> Tensor:
        """[N] bool: Gaussians whose centre lies in the box [lo, hi] (model frame)."""
        m = self.params["means"].detach()
        lo = torch.as_tensor(lo, dtype=m.dtype, device=m.device)
        hi = torch.as_tensor(hi, dtype=m.dtype, device=m.device)
        return ((m >= lo) & (m <= hi)).all(-1)

    @torch.no_grad()
    def viewer_render(self, cameras: Cameras, *, sh_degree: int | None = None, background: Tensor | None = None, options: dict | None = None, crop=None):
        """A render for the viewer: :meth:`render` with the viewer's controls and crop box applied."""
        from scene3d.renderers.gaussians import RasterSettings, rasterize

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
        settings = RasterSettings(
            backend=self.cfg.backend,
            sh_degree=self.cfg.sh_degree if sh_degree is None else min(int(sh_degree), self.cfg.sh_degree),
            near=self.cfg.near,
            far=self.cfg.far,
            antialiased=self.cfg.antialiased,
            render_depth=True,
        )
        return rasterize(a["means"], a["quats"], a["scales"], a["opacities"], a["colors"], cameras, settings, background=background)

    def viewer_stats(self) -> dict:
        n = self.num_gaussians
        op = torch.sigmoid(self.params["opacities"].detach())
        return {
            "Gaussians": f"{n:,}",
            "SH degree": str(self.cfg.sh_degree),
            "opacity < 0.01": f"{int((op < 0.01).sum()):,}",
            "memory": f"{sum(p.numel() for p in self.params.values()) * 4 / 1e6:.1f} MB",
        }

    def export_params(self, crop=None) -> dict[str, Tensor]:
        """The parameters a scene file holds (on the CPU), optionally only those inside ``crop``."""
        params = {k: v.detach().cpu() for k, v in self.params.items()}
        if crop is not None:
            keep = self.crop_mask(*crop).cpu()
            params = {k: v[keep] for k, v in params.items()}
        return params
