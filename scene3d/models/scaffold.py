"""Scaffold-GS (Lu et al., CVPR 2024): anchor-based neural Gaussians, the ``scaffold`` representation.

Anchors sit at the centres of occupied voxels of the sparse points and never move. Each holds a
feature ``feats`` [N, 32], ``k`` offsets ``offsets`` [N, k, 3] and a log-scale ``scaling`` [N, 6]
(the first three scale the offsets, the last three are its children's base scale). For a view,
anchors outside the camera's frustum are skipped; for the rest three small MLPs (one hidden layer
of ``hidden`` units, ReLU) read the feature and the unit direction from the camera centre (and, with
``use_distance``, the distance) and give the k children's opacities (tanh; a child at or below 0 is
dropped for this view), colours (sigmoid RGB) and covariances (scale = base scale x sigmoid,
rotation a normalised quaternion). A child sits at ``anchor + offset x scaling[:3]``. The children
are rasterised by the Gaussian backends with their view's colours as plain features.

Training is the reference's: L1 + 0.2 D-SSIM + ``volume_lambda`` x the mean volume of the kept
children; exponential learning-rate schedules for the offsets and each MLP. The representation
grows itself (:meth:`ScaffoldModel.after_step`): from ``start_stat`` on, each child's view-space
gradient norm (gsplat's normalisation, as ``--strategy adc``) and each anchor's opacity are
accumulated; every ``update_interval`` steps in [``update_from``, ``update_until``) children whose
mean gradient passes a threshold spawn anchors on three voxel levels (``update_init_factor`` /
``update_hierarchy_factor``^i voxels; thresholds doubling and keep probabilities 1/2, 3/4, 7/8 from
coarse to fine), each new anchor taking the largest feature among the children that made it, and
none where an anchor of that level exists; anchors whose accumulated opacity stays below
``min_opacity`` per view are pruned.

:meth:`ScaffoldModel.to_gaussians` bakes the children into plain 3DGS Gaussians (positions exact;
opacity, scale and rotation averaged over the training views that see each anchor; colour as
degree-3 SH fitted by least squares to the MLP's colours over those views), so every scene format
and ``eval FILE`` take it.
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
class ScaffoldConfig:
    """Hyperparameters of the scaffold representation (defaults: the reference's, hkust/Scaffold-GS)."""

    voxel_size: float = 0.0
    """Anchor voxel size (scene units after normalisation); 0: the median nearest-neighbour distance of the sparse points."""
    feat_dim: int = 32
    """Anchor feature width."""
    n_offsets: int = 10
    """Children (neural Gaussians) per anchor."""
    hidden: int = 32
    """Hidden units of each MLP's one hidden layer."""
    use_distance: bool = False
    """The MLPs also read the distance from the camera (the reference's add_*_dist)."""
    random_init: int = 100_000
    """Random points (voxelised into anchors) when the dataset has no sparse points."""
    random_init_extent: float = 1.5
    offset_lr: float = 0.01
    """Offsets' learning rate (times the scene scale), decaying exponentially to offset_lr_final."""
    offset_lr_final: float = 0.0001
    feature_lr: float = 0.0075
    scaling_lr: float = 0.007
    mlp_opacity_lr: float = 0.002
    mlp_opacity_lr_final: float = 0.00002
    mlp_cov_lr: float = 0.004
    mlp_cov_lr_final: float = 0.004
    mlp_color_lr: float = 0.008
    mlp_color_lr_final: float = 0.00005
    ssim_lambda: float = 0.2
    volume_lambda: float = 0.01
    """Weight of the mean volume (product of the three scales) of the kept children."""
    start_stat: int = 500
    """First step whose gradients and opacities count towards growing and pruning."""
    update_from: int = 1500
    update_interval: int = 100
    update_until: int = 15_000
    grad_threshold: float = 0.0002
    success_threshold: float = 0.8
    """Children seen in fewer than half this share of an interval's steps (anchors: this share) are not judged."""
    min_opacity: float = 0.005
    """Anchors whose children's summed opacity per view stays below this are pruned."""
    update_depth: int = 3
    update_init_factor: int = 16
    update_hierarchy_factor: int = 4
    bake_views: int = 64
    """Training views (at most) over which :meth:`to_gaussians` averages each anchor's children."""
    backend: Literal["auto", "gsplat", "cpu", "torch"] = "auto"
    near: float = 0.01
    far: float = 1e10

    def __post_init__(self):
        if self.feat_dim < 1 or self.n_offsets < 1 or self.hidden < 1 or self.update_depth < 1:
            raise ValueError("feat_dim, n_offsets, hidden and update_depth must be at least 1")
        if not (self.voxel_size >= 0 and math.isfinite(self.voxel_size)):
            raise ValueError(f"voxel_size must be 0 (automatic) or a positive size, got {self.voxel_size}")


PRESETS: dict[str, dict] = {
    "default": {"train": {"max_steps": 30_000}},
    # two CPU cores, 20 minutes: the reference's growth rhythm compressed to 4,000 steps
    "cpu": {
        "train": {"max_steps": 4000},
        # 25,000 random points where the scene has none (fox: 23k anchors, 0.28 s a step at 1/4 size, against 0.51 s for 100,000)
        "model": {"start_stat": 200, "update_from": 500, "update_interval": 100, "update_until": 3000, "random_init": 25_000},
    },
}

GROWTH_STATS = ("opacity_accum", "anchor_demon", "offset_grad", "offset_denom")


def _mlp(cfg: ScaffoldConfig, out: int, last: nn.Module | None) -> nn.Sequential:
    layers = [nn.Linear(cfg.feat_dim + 3 + int(cfg.use_distance), cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, out)]
    return nn.Sequential(*layers, *([last] if last is not None else []))


def voxelize(points: np.ndarray, voxel: float) -> np.ndarray:
    """The centres of the voxels of size ``voxel`` that hold any of ``points`` [P, 3] (sorted, unique)."""
    return (np.unique(np.round(np.asarray(points, np.float64) / voxel), axis=0) * voxel).astype(np.float32)


def median_nn_distance(points: np.ndarray) -> float:
    from scipy.spatial import cKDTree

    pts = np.asarray(points, np.float64)
    if len(pts) < 2:
        return 0.01
    d, _ = cKDTree(pts).query(pts, k=2)
    return float(max(np.median(d[:, 1]), 1e-6))


class ScaffoldModel(Representation):
    """Anchors with features, offsets and scales, three MLPs that decode them per view (module docstring)."""

    name = "scaffold"
    Config = ScaffoldConfig
    caps = Caps(pinhole_only=True, gaussians=True)
    default_strategy = "none"
    presets = PRESETS
    schedule_fields = ("start_stat", "update_from", "update_interval", "update_until")

    def __init__(self, anchors: Tensor, cfg: ScaffoldConfig, voxel_size: float, scene_scale: float, *, init_scale: Tensor | None = None):
        super().__init__()
        self.cfg = cfg
        self.voxel_size = float(voxel_size)
        self.scene_scale = float(scene_scale)
        n, k = anchors.shape[0], cfg.n_offsets
        if init_scale is None:
            init_scale = torch.full((n,), self.voxel_size)
        self.params = nn.ParameterDict({
            "anchors": nn.Parameter(anchors.float().contiguous(), requires_grad=False),
            "offsets": nn.Parameter(torch.zeros(n, k, 3)),
            "feats": nn.Parameter(torch.zeros(n, cfg.feat_dim)),
            "scaling": nn.Parameter(torch.log(init_scale.float().clamp_min(1e-7))[:, None].repeat(1, 6)),
        })  # fmt: skip
        self.mlp_opacity = _mlp(cfg, k, nn.Tanh())
        self.mlp_cov = _mlp(cfg, 7 * k, None)
        self.mlp_color = _mlp(cfg, 3 * k, nn.Sigmoid())
        for key in GROWTH_STATS:
            self.register_buffer(key, torch.zeros(n * (k if key.startswith("offset") else 1)))
        self.register_buffer("views", torch.zeros(0, 7), persistent=False)  # set_views
        self._last = None  # what the last training render needs for the growth statistics
        self.setup_optimizers()

    # ------------------------------------------------------------------ creation and state
    @classmethod
    def from_points(cls, points: np.ndarray, cfg: ScaffoldConfig, scene_scale: float) -> "ScaffoldModel":
        voxel = cfg.voxel_size if cfg.voxel_size > 0 else median_nn_distance(points)
        anchors = voxelize(points, voxel)
        from scene3d.models.gaussians import _knn_mean_distance

        return cls(torch.from_numpy(anchors), cfg, voxel, scene_scale, init_scale=torch.from_numpy(_knn_mean_distance(anchors).astype(np.float32)))

    @classmethod
    def from_dataset(cls, dataset, cfg: ScaffoldConfig, seed: int = 0) -> "ScaffoldModel":
        """Anchors from the dataset's sparse points, or from random points in the scene's bounds."""
        model = cls._from_dataset(dataset, cfg, seed)
        model.set_views(dataset.cameras[dataset.train_indices])
        return model

    @classmethod
    def _from_dataset(cls, dataset, cfg: ScaffoldConfig, seed: int) -> "ScaffoldModel":
        scene_scale = dataset.scene_radius() * 1.1
        if dataset.points is not None and len(dataset.points) > 0:
            return cls.from_points(dataset.points, cfg, scene_scale)
        return cls.from_points(random_scene_points(dataset, cfg.random_init, cfg.random_init_extent, np.random.default_rng(seed)), cfg, scene_scale)

    @classmethod
    def from_state(cls, state: dict, cfg: ScaffoldConfig) -> "ScaffoldModel":
        p = state["params"]
        n, k = p["anchors"].shape[0], cfg.n_offsets
        shapes = {"anchors": (n, 3), "offsets": (n, k, 3), "feats": (n, cfg.feat_dim), "scaling": (n, 6)}
        for key, shape in shapes.items():
            if tuple(p[key].shape) != shape:
                raise ValueError(f"{key} must be {list(shape)} for {n} anchors, got {list(p[key].shape)}")
        voxel, scale = float(state["voxel_size"]), float(state["scene_scale"])
        if not (math.isfinite(voxel) and voxel > 0 and math.isfinite(scale) and scale > 0):
            raise ValueError("voxel_size and scene_scale must be positive numbers")
        model = cls(p["anchors"].cpu(), cfg, voxel, scale)
        try:
            model.load_state_dict({**{f"params.{k}": v for k, v in p.items()}, **state["modules"]})
        except RuntimeError as e:
            raise ValueError(f"the MLPs and statistics do not match this configuration ({str(e).splitlines()[0]})") from None
        views = torch.as_tensor(state.get("views", torch.zeros(0, 7))).float().cpu()
        if views.ndim != 2 or views.shape[1] != 7 or not bool(torch.isfinite(views).all()):
            raise ValueError("views must be a finite [V, 7] tensor")
        model.views = views
        model.setup_optimizers()
        return model

    def state(self) -> dict:
        modules = {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("params.")}
        return {"params": {k: v.detach().clone() for k, v in self.params.items()}, "modules": modules,
                "views": self.views.detach().clone(), "voxel_size": self.voxel_size, "scene_scale": self.scene_scale}  # fmt: skip

    # ------------------------------------------------------------------ optimisation
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.cfg
        opts = {
            "offsets": torch.optim.Adam([{"params": [self.params["offsets"]], "lr": c.offset_lr * self.scene_scale, "name": "offsets"}], eps=1e-15),
            "feats": torch.optim.Adam([{"params": [self.params["feats"]], "lr": c.feature_lr, "name": "feats"}], eps=1e-15),
            "scaling": torch.optim.Adam([{"params": [self.params["scaling"]], "lr": c.scaling_lr, "name": "scaling"}], eps=1e-15),
        }
        for name, lr in (("mlp_opacity", c.mlp_opacity_lr), ("mlp_cov", c.mlp_cov_lr), ("mlp_color", c.mlp_color_lr)):
            opts[name] = torch.optim.Adam(getattr(self, name).parameters(), lr=lr, eps=1e-15)
        return opts

    def schedule(self, step: int, max_steps: int) -> None:
        """Exponential decays (the reference's get_expon_lr_func without delay) over the run."""
        c = self.cfg
        for name, a, b, mult in (("offsets", c.offset_lr, c.offset_lr_final, self.scene_scale), ("mlp_opacity", c.mlp_opacity_lr, c.mlp_opacity_lr_final, 1.0),
                                 ("mlp_cov", c.mlp_cov_lr, c.mlp_cov_lr_final, 1.0), ("mlp_color", c.mlp_color_lr, c.mlp_color_lr_final, 1.0)):  # fmt: skip
            lr = log_lerp(a, b, step, max_steps) * mult
            for group in self.optimizers[name].param_groups:
                group["lr"] = lr

    def batch(self, data, step: int, generator: torch.Generator):
        return data.image_batch(step)

    # ------------------------------------------------------------------ the neural Gaussians
    @property
    def num_anchors(self) -> int:
        return int(self.params["anchors"].shape[0])

    @torch.no_grad()
    def visible_anchors(self, camera: Cameras) -> Tensor:
        """[N] bool: anchors whose footprint (their offset scale, 3.33 sigma) reaches ``camera``'s image."""
        from scene3d.renderers.gaussians.projection import project_gaussians

        a = self.params["anchors"]
        quats = torch.zeros(len(a), 4, device=a.device)
        quats[:, 0] = 1.0
        proj = project_gaussians(a, quats, torch.exp(self.params["scaling"][:, :3]), torch.ones(len(a), device=a.device), camera,
                                 near=self.cfg.near, far=self.cfg.far, eps2d=0.3, antialiased=False)  # fmt: skip
        return proj.radii[0] > 0

    def decode(self, idx: Tensor, directions: Tensor, distances: Tensor) -> dict[str, Tensor]:
        """The children of anchors ``idx`` [V] seen along ``directions`` [V, 3] (unit, from the
        camera) at ``distances`` [V]: means [V, k, 3], opacity [V, k] (tanh, may be <= 0),
        colours [V, k, 3], scales [V, k, 3] and quats [V, k, 4] (normalised)."""
        p, k = self.params, self.cfg.n_offsets
        x = torch.cat([p["feats"][idx], directions] + ([distances[:, None]] if self.cfg.use_distance else []), dim=-1)
        v = len(idx)
        opacity = self.mlp_opacity(x).view(v, k)
        colours = self.mlp_color(x).view(v, k, 3)
        cov = self.mlp_cov(x).view(v, k, 7)
        scaling = torch.exp(p["scaling"][idx])  # [V, 6]
        means = p["anchors"][idx][:, None, :] + p["offsets"][idx] * scaling[:, None, :3]
        scales = scaling[:, None, 3:] * torch.sigmoid(cov[..., :3])
        quats = torch.nn.functional.normalize(cov[..., 3:], dim=-1)
        return {"means": means, "opacity": opacity, "colours": colours, "scales": scales, "quats": quats}

    def neural_gaussians(self, camera: Cameras) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        """(the children ``camera`` renders as rasterizer inputs, the visible anchors [V], their
        opacities [V, k], the kept children's flat indices into anchors x k)."""
        vis = self.visible_anchors(camera).nonzero()[:, 0]
        centre = camera.centers[0].to(self.params["anchors"])
        rel = self.params["anchors"][vis] - centre
        dist = rel.norm(dim=-1).clamp_min(1e-9)
        g = self.decode(vis, rel / dist[:, None], dist)
        keep = (g["opacity"] > 0).reshape(-1)
        k = self.cfg.n_offsets
        flat = (vis[:, None] * k + torch.arange(k, device=vis.device)[None, :]).reshape(-1)[keep]
        out = {"means": g["means"].reshape(-1, 3)[keep], "quats": g["quats"].reshape(-1, 4)[keep], "scales": g["scales"].reshape(-1, 3)[keep],
               "opacities": g["opacity"].reshape(-1)[keep], "colors": g["colours"].reshape(-1, 3)[keep]}  # fmt: skip
        return out, vis, g["opacity"], flat

    def raster_settings(self, **overrides):
        from scene3d.renderers.gaussians import RasterSettings

        return RasterSettings(**{**dict(backend=self.cfg.backend, near=self.cfg.near, far=self.cfg.far), **overrides})

    def _render_one(self, camera: Cameras, background: Tensor | None, render_depth: bool, absgrad: bool = False, crop=None, scale: float = 1.0):
        from scene3d.renderers.gaussians import rasterize

        g, vis, opacity, flat = self.neural_gaussians(camera)
        if crop is not None:
            inside = points_in_box(g["means"], *crop)
            g = {k: v[inside] for k, v in g.items()}
        out = rasterize(g["means"], g["quats"], g["scales"] * scale, g["opacities"], g["colors"], camera,
                        self.raster_settings(render_depth=render_depth, absgrad=absgrad), background=background)  # fmt: skip
        return out, g, vis, opacity, flat

    def forward(self, batch, step: int):
        assert len(batch.cameras) == 1, "scaffold trains on one view per step"
        out, g, vis, opacity, flat = self._render_one(batch.cameras, batch.background, render_depth=False, absgrad=bool(getattr(batch, "absgrad", False)))
        self._last = (out.info, vis, opacity.detach(), flat, step)
        out.volume = g["scales"].prod(dim=-1)
        return out

    def losses(self, out, batch, step: int) -> dict[str, Tensor]:
        terms = {"rgb": photometric_loss(out.rgb, batch.target, self.cfg.ssim_lambda, batch.mask)}
        if self.cfg.volume_lambda > 0 and out.volume.numel():
            terms["volume"] = self.cfg.volume_lambda * out.volume.mean()
        return terms

    # ------------------------------------------------------------------ growing and pruning
    def after_step(self, step: int, losses: dict[str, Tensor]) -> None:
        c = self.cfg
        if self._last is None:
            return
        info, vis, opacity, flat, seen = self._last
        self._last = None
        if seen != step or step >= c.update_until:
            return
        if step > c.start_stat:
            self.accumulate(info, vis, opacity, flat)
        if step > c.update_from and step % c.update_interval == 0:
            self.adjust_anchors()

    @torch.no_grad()
    def accumulate(self, info, vis: Tensor, opacity: Tensor, flat: Tensor) -> None:
        """Adds a render's statistics: each visible anchor's summed child opacity and one view, and
        each rendered child's view-space gradient norm (pixels, gsplat's normalisation) and one view."""
        self.opacity_accum[vis] += opacity.clamp_min(0).sum(dim=1)
        self.anchor_demon[vis] += 1
        grads = info.means2d.grad
        if grads is None:
            return
        g = grads[0].detach().clone()
        g[:, 0] *= info.width / 2.0
        g[:, 1] *= info.height / 2.0
        seen = info.radii[0] > 0
        self.offset_grad.index_add_(0, flat[seen], torch.linalg.norm(g[seen], dim=-1))
        self.offset_denom.index_add_(0, flat[seen], torch.ones_like(flat[seen], dtype=self.offset_denom.dtype))

    @torch.no_grad()
    def adjust_anchors(self) -> tuple[int, int]:
        """Grows anchors where children's mean gradients are high, prunes the faint ones, and resets
        the statistics of what was judged. Returns (grown, pruned)."""
        c, k = self.cfg, self.cfg.n_offsets
        grads = torch.where(self.offset_denom > 0, self.offset_grad / self.offset_denom.clamp_min(1), torch.zeros_like(self.offset_grad))
        judged = self.offset_denom > c.update_interval * c.success_threshold * 0.5
        grown = self.grow(grads, judged)
        pad = self.num_anchors * k - len(judged)
        judged = torch.cat([judged, judged.new_zeros(pad)])
        self.offset_grad[judged] = 0
        self.offset_denom[judged] = 0
        reset = self.anchor_demon > c.update_interval * c.success_threshold  # seen often enough to judge (new anchors: never yet)
        prune = (self.opacity_accum < c.min_opacity * self.anchor_demon) & reset
        self.opacity_accum[reset] = 0
        self.anchor_demon[reset] = 0
        pruned = int(prune.sum())
        if pruned:
            self.remove_anchors(prune)
        return grown, pruned

    def children_positions(self) -> Tensor:
        p = self.params
        return (p["anchors"][:, None, :] + p["offsets"] * torch.exp(p["scaling"][:, None, :3])).reshape(-1, 3)

    @torch.no_grad()
    def grow(self, grads: Tensor, judged: Tensor, generator: torch.Generator | None = None) -> int:
        """New anchors from children (flat indices) whose mean gradient ``grads`` passes each level's
        threshold (the reference's three levels, coarse to fine); returns how many were added."""
        c, k = self.cfg, self.cfg.n_offsets
        n_start = len(grads) // k
        total = 0
        for i in range(c.update_depth):
            threshold = c.grad_threshold * (c.update_hierarchy_factor // 2) ** i
            lucky = torch.rand(len(grads), generator=generator, device=grads.device) > 0.5 ** (i + 1)
            cand = (grads >= threshold) & judged & lucky
            grown_rows = self.num_anchors - n_start
            cand = torch.cat([cand, cand.new_zeros(grown_rows * k)])
            size = self.voxel_size * c.update_init_factor / (c.update_hierarchy_factor**i)
            if not bool(cand.any()):
                continue
            cells = torch.round(self.children_positions()[cand] / size).long()
            unique, inverse = torch.unique(cells, dim=0, return_inverse=True)
            existing = torch.round(self.params["anchors"] / size).long()
            both, both_inv = torch.unique(torch.cat([existing, unique]), dim=0, return_inverse=True)
            occupied = torch.zeros(len(both), dtype=torch.bool, device=grads.device)
            occupied[both_inv[: len(existing)]] = True
            fresh = ~occupied[both_inv[len(existing):]]
            if not bool(fresh.any()):
                continue
            parent_feats = self.params["feats"].repeat_interleave(k, dim=0)[cand]
            feats = torch.full((len(unique), c.feat_dim), -torch.inf, device=grads.device)
            feats.scatter_reduce_(0, inverse[:, None].expand(-1, c.feat_dim), parent_feats, reduce="amax")
            new = unique[fresh].float() * size
            self.append_anchors(new, feats[fresh], math.log(size))
            total += len(new)
        return total

    def append_anchors(self, anchors: Tensor, feats: Tensor, log_scale: float) -> None:
        from scene3d.densify.ops import append

        m, k = len(anchors), self.cfg.n_offsets
        rows = {"anchors": anchors, "offsets": anchors.new_zeros(m, k, 3), "feats": feats, "scaling": anchors.new_full((m, 6), log_scale)}
        append(self.params, self.optimizers, rows)
        for key in GROWTH_STATS:
            buf = getattr(self, key)
            setattr(self, key, torch.cat([buf, buf.new_zeros(m * (k if key.startswith("offset") else 1))]))

    def remove_anchors(self, mask: Tensor) -> None:
        from scene3d.densify.ops import remove

        remove(self.params, self.optimizers, mask)
        keep = ~mask
        self.opacity_accum, self.anchor_demon = self.opacity_accum[keep], self.anchor_demon[keep]
        child_keep = keep.repeat_interleave(self.cfg.n_offsets)
        self.offset_grad, self.offset_denom = self.offset_grad[child_keep], self.offset_denom[child_keep]

    # ------------------------------------------------------------------ rendering
    @torch.no_grad()
    def render(self, cameras: Cameras, *, background: Tensor | None = None, options: dict | None = None, crop=None):
        """Renders the neural Gaussians of each camera; ``options``: ``scale`` (multiplies every child's extent)."""
        from scene3d.renderers.gaussians.settings import RenderOutput

        scale = float((options or {}).get("scale", 1.0))
        outs = [self._render_one(cameras[i : i + 1], background, render_depth=True, crop=crop, scale=scale)[0] for i in range(len(cameras))]
        if len(outs) == 1:
            return outs[0]
        return RenderOutput(torch.cat([o.rgb for o in outs]), torch.cat([o.alpha for o in outs]), torch.cat([o.depth for o in outs]), outs[0].info)

    # ------------------------------------------------------------------ reporting and the viewer
    def stats(self) -> dict:
        return {"num_anchors": self.num_anchors, "num_children": self.num_anchors * self.cfg.n_offsets}

    def describe(self) -> str:
        return f"scaffold {self.num_anchors:,} anchors"

    def viewer_stats(self) -> dict[str, str]:
        n = sum(p.numel() for p in self.parameters())
        return {"anchors": f"{self.num_anchors:,}", "children per anchor": str(self.cfg.n_offsets), "voxel size": f"{self.voxel_size:.4g}",
                "memory": f"{n * 4 / 1e6:.1f} MB"}  # fmt: skip

    def controls(self) -> list[Control]:
        return [Control("scale", "Splat scale", "slider", 1.0, 0.05, 2.0, 0.05, hint="Multiplies every neural Gaussian's extent.")]

    def focus(self):
        return focus_of_points(self.params["anchors"])

    # ------------------------------------------------------------------ export
    def set_views(self, cameras: Cameras) -> None:
        """Keeps (at most ``bake_views`` of) the training views as centre, forward axis and the cosine
        of the half diagonal field of view: what :meth:`to_gaussians` averages each anchor over."""
        step = max(1, math.ceil(len(cameras) / max(self.cfg.bake_views, 1)))
        cams = cameras[torch.arange(0, len(cameras), step)]
        c2w = cams.cam_to_world.float()
        half = torch.sqrt((cams.width.float() / 2) ** 2 + (cams.height.float() / 2) ** 2) / torch.minimum(cams.fx, cams.fy).float()
        self.views = torch.cat([c2w[:, :3, 3], c2w[:, :3, 2], torch.cos(torch.atan(half))[:, None]], dim=1).to(self.params["anchors"])

    @torch.no_grad()
    def to_gaussians(self, crop=None, chunk: int = 2048) -> GaussianSet:
        """The children as plain 3DGS Gaussians: positions exact; opacity, scale and rotation averaged
        over the kept training views that see each anchor (all of them where none does); colours as
        degree-3 SH fitted by (lightly ridge-regularised) least squares to the MLP's colours over
        those views; children whose opacity is at or below 0 in every such view are dropped."""
        from scene3d.renderers.gaussians import sh_basis

        p, k = self.params, self.cfg.n_offsets
        if self.num_anchors == 0:
            zero = p["anchors"].new_zeros
            return GaussianSet(zero(0, 3), zero(0, 4), zero(0, 3), zero(0), zero(0, 1, 3), zero(0, 15, 3))
        views = self.views if len(self.views) else torch.tensor([[0.0, 0.0, -1.0, 0.0, 0.0, 1.0, -1.0]], device=p["anchors"].device)
        nv = len(views)
        parts: dict[str, list[Tensor]] = {key: [] for key in ("means", "quats", "scales", "opacities", "sh")}
        ridge = torch.full((16,), 1e-3, device=views.device)
        ridge[0] = 1e-6
        for start in range(0, self.num_anchors, chunk):
            idx = torch.arange(start, min(start + chunk, self.num_anchors), device=views.device)
            a = len(idx)
            rel = p["anchors"][idx][:, None, :] - views[None, :, :3]  # [a, V, 3]
            dist = rel.norm(dim=-1).clamp_min(1e-9)
            d = rel / dist[..., None]
            sees = (d * views[None, :, 3:6]).sum(-1) > views[None, :, 6]
            sees[~sees.any(dim=1)] = True
            g = self.decode(idx.repeat_interleave(nv), d.reshape(-1, 3), dist.reshape(-1))
            w = sees.float()[..., None]  # [a, V, 1]
            count = w.sum(dim=1)  # [a, 1]
            op = (g["opacity"].view(a, nv, k).clamp_min(0) * w).sum(1) / count  # [a, k]
            scales = (g["scales"].view(a, nv, k, 3) * w[..., None]).sum(1) / count[..., None]
            q = g["quats"].view(a, nv, k, 4)
            ref = q[torch.arange(a), sees.float().argmax(dim=1)]  # [a, k, 4] one seen view's rotation
            q = q * torch.sign((q * ref[:, None]).sum(-1, keepdim=True) + 1e-12)
            quats = torch.nn.functional.normalize((q * w[..., None]).sum(1), dim=-1)
            basis = sh_basis(3, d.reshape(-1, 3)).view(a, nv, 16) * w  # rows of unseen views zeroed
            lhs = basis.transpose(1, 2) @ basis + torch.diag(ridge)[None] * count[..., None]
            target = (g["colours"].view(a, nv, k * 3) - 0.5) * w
            coeffs = torch.linalg.solve(lhs, basis.transpose(1, 2) @ target).view(a, 16, k, 3).permute(0, 2, 1, 3)  # [a, k, 16, 3]
            parts["means"].append(g["means"].view(a, nv, k, 3)[:, 0].reshape(-1, 3))
            parts["quats"].append(quats.reshape(-1, 4))
            parts["scales"].append(scales.reshape(-1, 3))
            parts["opacities"].append(op.reshape(-1))
            parts["sh"].append(coeffs.reshape(-1, 16, 3))
        cat = {key: torch.cat(v) for key, v in parts.items()}
        keep = cat["opacities"] > 0
        if crop is not None:
            keep = keep & points_in_box(cat["means"], *crop)
        op = cat["opacities"][keep].clamp(1e-6, 1 - 1e-6)
        sh = cat["sh"][keep]
        return GaussianSet(cat["means"][keep], cat["quats"][keep], torch.log(cat["scales"][keep].clamp_min(1e-10)), torch.log(op / (1 - op)),
                           sh[:, :1].contiguous(), sh[:, 1:].contiguous())  # fmt: skip
