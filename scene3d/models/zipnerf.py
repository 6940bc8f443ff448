"""Zip-NeRF (Barron et al., "Zip-NeRF: Anti-Aliased Grid-Based Neural Radiance Fields", ICCV 2023):
the ``zipnerf`` representation.

Rays are sampled in three rounds. Each starts from the previous round's histogram along the ray
(the first from one interval covering [near, far]) and draws new intervals from it in normalised
distance s (:mod:`scene3d.renderers.rays.proposal`; s maps to metric distance through the power
ladder of :mod:`scene3d.renderers.rays.stepfun`, so intervals stretch with distance and a ray may
run to ``far = 1e6`` in unbounded scenes). The first two rounds query small *proposal* fields that
only predict density; the last queries the NeRF, which also predicts colour. Each field is a
multiresolution hash grid (:mod:`scene3d.renderers.rays.hashgrid`) and a small MLP.

What makes it anti-aliased: an interval of a ray is a conical frustum (the ray's cone radius
``Rays.radii``), and its feature is the mean over 6 points placed in a hexagonal pattern that
matches the frustum's moments (:func:`~scene3d.renderers.rays.multisample.hexify`), each with a
scale ``sigma`` (its share of the cone's width). Points are contracted into a ball of radius 2
(mip-NeRF 360; :mod:`scene3d.renderers.rays.contraction`, the scale along with them) and mapped to
[0, 1]^3 for the grids. A level whose cells are finer than a point's scale cannot resolve it: its
features are multiplied by ``erf(1 / (sqrt(8) sigma N_l))`` (N_l the level's cells per unit), and a
per-level scale feature ``(2 w - 1) sqrt(1e-10 + mean(V_l^2))`` is appended, so the MLP knows how
much of each level it is seeing. All features are multiplied by 10 (the reference's
preconditioning: tables start in +-1e-5).

Training minimises Charbonnier's loss on the NeRF's colours, the anti-aliased interlevel losses
that make each proposal histogram bound the (blurred) NeRF histogram, the distortion loss on a
curved distance, and hash decay (half the mean square of each grid level's table), with Adam and
a log-linear learning rate after a sine warm-up.

Where this departs from the reference (camp_zipnerf): the grids use tiny-cuda-nn's layout and
hash (so a tcnn grid and the PyTorch/numba twins hold the same parameters) instead of the JAX
code's cell-centred grids and Teschner primes; t is distance along unit directions (the reference
measures along pinhole directions of length >= 1); densities are per unit distance of scene3d's
normalised frame (cameras inside the unit sphere).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scene3d.cameras import Cameras
from scene3d.models.base import Caps, Control, Representation, log_lerp

PRECONDITION = 10.0  # features are multiplied by this (the reference's preconditioning)
TABLE_INIT = 1e-5  # tables start uniform in +-TABLE_INIT


@dataclass
class ZipNeRFConfig:
    """Hyperparameters of the zipnerf representation. Defaults: camp_zipnerf's released
    single-GPU recipe for 360 scenes (batch 8192, 200k steps, lr 1.25e-3 -> 1.25e-4 after a
    20k-step warm-up); ``--preset cpu`` is a smaller model for two CPU cores (see PRESETS)."""

    # grids (one per round: two proposals, then the NeRF)
    log2_table_size: int = 21
    """T: hashed levels hold 2^T entries (levels whose vertices fit are dense)."""
    min_resolution: int = 16
    nerf_max_resolution: int = 8192
    nerf_features: int = 4
    proposal_max_resolutions: tuple[int, ...] = (512, 2048)
    proposal_features: int = 1
    grid_backend: str = "auto"
    """Hash grid backend: auto (tcnn on CUDA when installed, numba on the CPU), tcnn, numba, torch."""
    bounds: str = "auto"
    """``unbounded``: contract space into a ball of radius 2, rays run from ``near`` to ``far`` on
    the power ladder (the reference's 360 setting); ``box``: the grids span the dataset's box and
    rays sample it linearly between where they enter and leave it (the reference's Blender
    setting, with the grid fitted to the box); ``auto``: box for synthetic (Blender) scenes."""
    # sampling
    proposal_samples: tuple[int, ...] = (64, 64)
    nerf_samples: int = 32
    near: float = 0.0
    far: float = 1e6
    spacing: str = "power_ladder"
    """How s spreads over [near, far]: ``power_ladder`` (p = -1.5, premult 2; unbounded scenes) or
    ``linear`` (the reference's Blender setting; then pick a finite ``far``)."""
    anneal_slope: float = 10.0
    """Proposal weights are raised to ``bias(train fraction)`` (Schlick's bias with this slope) before resampling."""
    # networks
    density_width: int = 64
    bottleneck_width: int = 256
    view_width: int = 256
    view_depth: int = 3
    view_skip: int = 2
    """The view network's input is concatenated again after this many layers."""
    deg_view: int = 4
    density_bias: float = -1.0
    """Density is exp(raw + density_bias)."""
    # losses
    charbonnier_eps: float = 1e-3
    interlevel_mult: float = 0.01
    interlevel_blurs: tuple[float, ...] = (0.03, 0.003)
    distortion_mult: float = 0.01
    hash_decay: float = 0.1
    """Each grid level adds hash_decay * 0.5 * mean(V_l^2) (the reference's value for 360 scenes)."""
    box_hash_decay: float = 10.0
    """hash_decay for ``bounds = box`` (the reference's value for Blender scenes)."""
    # optimisation
    batch_rays: int = 8192
    lr_init: float = 1.25e-3
    lr_final: float = 1.25e-4
    lr_delay_steps: int = 20000
    lr_delay_mult: float = 1e-8
    adam_beta1: float = 0.9
    adam_beta2: float = 0.99
    adam_eps: float = 1e-15
    render_chunk: int = 4096
    """Rays per chunk when rendering whole images."""
    render_cull: float = 1e-3
    """Rendering whole images, a ray whose proposal histogram sums to less than this leaves the
    later rounds and shows the background (0: every ray runs every round)."""


PRESETS = {
    # random backgrounds: the reference's for 360 scenes; for Blender scenes (whose reference is
    # white) they leave no white haze to hide in empty space (1000 lego steps: 28.08 dB against
    # 26.44 dB on white)
    "default": {"train": {"max_steps": 200_000, "background_mode": "random"}},
    "cpu": {
        "model": {
            "log2_table_size": 17,
            "nerf_max_resolution": 1024,
            "proposal_max_resolutions": (128, 256),
            "proposal_samples": (32, 32),
            "nerf_samples": 16,
            "bottleneck_width": 64,
            "view_width": 64,
            "view_depth": 2,
            "view_skip": 1,
            "batch_rays": 1024,
            "lr_init": 1e-2,
            "lr_final": 1e-3,
            "lr_delay_steps": 300,
            # the reference's Blender decay (10) held lego back at this size: 26.61 dB after
            # 1000 steps against 28.08 dB with 360's 0.1
            "box_hash_decay": 0.1,
        },
        "train": {"max_steps": 4500, "background_mode": "random"},
    },
}


def _levels(min_res: int, max_res: int) -> int:
    """Levels from ``min_res`` to ``max_res`` doubling each time (the reference's grids)."""
    return max(1, int(round(math.log2(max_res / min_res))) + 1)


def grid_coordinates(x: Tensor, box: Tensor | None) -> tuple[Tensor, Tensor | None, float]:
    """(points ``x`` [M, 3] in the grid's [0, 1]^3 (unclamped), [M] 1.0 where inside the ``box`` or
    None without one, the side the grid spans): without a box the ball of radius 2 that contraction
    maps space into (side 4), with one the box itself (its longest side)."""
    from scene3d.renderers.rays.contraction import contract

    if box is None:
        return (contract(x) + 2.0) / 4.0, None, 4.0
    size = box[3:] - box[:3]
    x01 = (x - box[:3]) / size
    return x01, ((x01 >= 0.0) & (x01 <= 1.0)).all(dim=-1).to(x.dtype), float(size.max())


def crop_share(points: Tensor, crop: Tensor) -> Tensor:
    """[N, S] share of each interval's samples ``points`` [N, S, K, 3] inside ``crop`` [6] (lo, hi)."""
    return ((points >= crop[:3]) & (points <= crop[3:])).all(dim=-1).to(points.dtype).mean(dim=2)


def positional_encoding(x: Tensor, degrees: int) -> Tensor:
    """``[x, sin(2^k x), cos(2^k x) for k < degrees]`` (cos as a shifted sine), [.., 3 + 6 degrees]."""
    scales = 2.0 ** torch.arange(degrees, device=x.device, dtype=x.dtype)
    y = (x[..., None, :] * scales[:, None]).reshape(*x.shape[:-1], -1)
    return torch.cat([x, torch.sin(torch.cat([y, y + 0.5 * math.pi], dim=-1))], dim=-1)


def composite(tdist: Tensor, sigma: Tensor) -> Tensor:
    """Volume-rendering weights [N, S] of densities ``sigma`` [N, S] on intervals ``tdist`` [N, S+1]:
    ``w_i = (1 - exp(-sigma_i delta_i)) exp(-sum_{j<i} sigma_j delta_j)`` (log-space transmittance,
    as the reference's ``compute_alpha_weights``; no cumulative product to lose precision)."""
    delta = tdist[:, 1:] - tdist[:, :-1]
    thickness = sigma * delta
    alpha = 1.0 - torch.exp(-thickness)
    before = torch.cumsum(torch.cat([torch.zeros_like(thickness[:, :1]), thickness[:, :-1]], dim=1), dim=1)
    return alpha * torch.exp(-before)


class _Field(nn.Module):
    """One round's field: a hash grid read with Zip-NeRF's multisampled, downweighted features,
    a density MLP and (for the NeRF) a view-dependent colour MLP."""

    def __init__(self, cfg: ZipNeRFConfig, max_resolution: int, features: int, colour: bool):
        super().__init__()
        from scene3d.renderers.rays.hashgrid import HashGrid, HashGridConfig

        levels = _levels(cfg.min_resolution, max_resolution)
        self.grid = HashGrid(HashGridConfig(levels=levels, features_per_level=features, log2_table_size=cfg.log2_table_size,
                                            min_resolution=cfg.min_resolution, max_resolution=max_resolution, backend=cfg.grid_backend))  # fmt: skip
        with torch.no_grad():
            self.grid.params.mul_(TABLE_INIT / 1e-4)
        self.register_buffer("cells", torch.as_tensor(np.asarray(self.grid.layout.scales, dtype=np.float32)), persistent=False)
        width = levels * (features + 1)
        self.density = nn.Sequential(nn.Linear(width, cfg.density_width), nn.ReLU(), nn.Linear(cfg.density_width, 1))
        self.colour = colour
        self.density_bias = cfg.density_bias
        if colour:
            self.bottleneck = nn.Linear(cfg.density_width, cfg.bottleneck_width)
            view_in = cfg.bottleneck_width + 3 + 6 * cfg.deg_view
            layers, width_in = [], view_in
            for i in range(cfg.view_depth):
                if i == cfg.view_skip and i > 0:
                    width_in += view_in
                layers.append(nn.Linear(width_in, cfg.view_width))
                width_in = cfg.view_width
            self.view_layers = nn.ModuleList(layers)
            self.view_skip = cfg.view_skip
            self.rgb = nn.Linear(cfg.view_width, 3)
            self.deg_view = cfg.deg_view
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def features(self, points: Tensor, scales: Tensor, box: Tensor | None = None, levels_shown: int | None = None) -> tuple[Tensor, Tensor | None]:
        """[N, S, L (F + 1)] features of intervals from their multisamples ``points`` [N, S, K, 3]
        and ``scales`` [N, S, K] (scene units), and with a ``box`` [6] the [N, S] fraction of each
        interval's multisamples inside it (None without a box). Without a box, points are
        contracted into the ball of radius 2 (their scales with them), which maps onto the grid;
        with one, the box maps onto the grid (points outside clamp to its faces). ``levels_shown``
        (the viewer's "grid levels"): the finer levels read as if the footprint covered their
        cells (weight 0), i.e. the field as seen from far enough away that they blur out."""
        from scene3d.renderers.rays.contraction import contract_iso_scale

        n, s, k, _ = points.shape
        x = points.reshape(-1, 3)
        x01, inside, extent = grid_coordinates(x, box)
        scale = contract_iso_scale(x) if box is None else 1.0  # contraction shrinks footprints with the points
        sigma01 = scales.reshape(-1) * scale / extent
        if inside is not None:
            inside = inside.view(n, s, k).mean(dim=2)
        weight = torch.special.erf(1.0 / (math.sqrt(8.0) * sigma01[:, None] * self.cells[None, :]).clamp_min(1e-12))  # [M, L]
        if levels_shown is not None and levels_shown < weight.shape[1]:
            weight = torch.cat([weight[:, :levels_shown], torch.zeros_like(weight[:, levels_shown:])], dim=1)
        feats = self.grid(x01.clamp(0.0, 1.0), level_weights=weight)  # [M, L F]
        levels = self.grid.levels
        scale_feat = (2.0 * weight - 1.0) * torch.sqrt(1e-10 + self.grid.level_square_means())[None, :]
        feats = feats.view(n, s, k, levels, self.grid.features_per_level).mean(dim=2)  # averaged before joining: a 6x smaller cat
        scale_feat = scale_feat.view(n, s, k, levels, 1).mean(dim=2)
        return PRECONDITION * torch.cat([feats, scale_feat], dim=-1).view(n, s, levels * (self.grid.features_per_level + 1)), inside

    def grids(self) -> tuple:
        """The hash grids this field reads (hash decay)."""
        return (self.grid,)

    def forward(self, points: Tensor, scales: Tensor, dirs: Tensor | None = None, box: Tensor | None = None, *,
                levels_shown: int | None = None, crop: Tensor | None = None) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """(density [N, S] per unit distance, rgb [N, S, 3] or None) of the intervals; with a
        ``box`` (and a ``crop`` [6], rendering only), density is scaled by the share of each
        interval's multisamples inside it."""
        feats, inside = self.features(points, scales, box, levels_shown)
        if crop is not None:
            within = crop_share(points, crop)
            inside = within if inside is None else inside * within
        h = self.density[1](self.density[0](feats))
        raw = self.density[2](h)[..., 0]
        sigma = torch.exp(torch.clamp(raw + self.density_bias, max=30.0))
        if inside is not None:
            sigma = sigma * inside
        if not self.colour or dirs is None:
            return sigma, None
        b = self.bottleneck(h)
        enc = positional_encoding(dirs, self.deg_view)[:, None, :].expand(*b.shape[:2], -1)
        x0 = torch.cat([b, enc], dim=-1)
        x = x0
        for i, layer in enumerate(self.view_layers):
            if i == self.view_skip and i > 0:
                x = torch.cat([x, x0], dim=-1)
            x = F.relu(layer(x))
        rgb = torch.sigmoid(self.rgb(x))
        return sigma, rgb * (1.0 + 2.0 * 1e-3) - 1e-3


@dataclass
class ZipOutput:
    """What :meth:`ZipNeRFModel.render_rays` returns for N rays."""

    rgb: Tensor  # [N, 3] background composited
    alpha: Tensor  # [N, 1]
    depth: Tensor  # [N, 1]
    num_samples: int
    sdist: Tensor  # [N, S+1] the NeRF round's normalised edges
    tdist: Tensor  # [N, S+1] metric
    weights: Tensor  # [N, S]
    proposals: list = field(default_factory=list)  # (sdist, weights) of each proposal round


class ZipNeRFModel(Representation):
    """Zip-NeRF: proposal sampling over hash-grid fields with multisampled, anti-aliased features."""

    name = "zipnerf"
    Config = ZipNeRFConfig
    caps = Caps()
    presets = PRESETS

    def __init__(self, cfg: ZipNeRFConfig, box: Tensor | None = None):
        super().__init__()
        if len(cfg.proposal_max_resolutions) != len(cfg.proposal_samples) or len(cfg.interlevel_blurs) != len(cfg.proposal_samples):
            raise ValueError("proposal_max_resolutions, proposal_samples and interlevel_blurs need one entry per proposal round")
        if cfg.spacing not in ("power_ladder", "linear"):
            raise ValueError(f"spacing must be power_ladder or linear, got {cfg.spacing!r}")
        if cfg.bounds not in ("auto", "box", "unbounded"):
            raise ValueError(f"bounds must be auto, box or unbounded, got {cfg.bounds!r}")
        self.cfg = cfg
        if box is not None:
            box = torch.as_tensor(box, dtype=torch.float32).reshape(6)
            if not bool(torch.isfinite(box).all()) or not bool((box[3:] > box[:3]).all()):
                raise ValueError("the zipnerf box must be finite with max above min on every axis")
        self.register_buffer("box", box, persistent=False)
        self.proposals = nn.ModuleList([_Field(cfg, res, cfg.proposal_features, colour=False) for res in cfg.proposal_max_resolutions])
        self.nerf = self.make_nerf_field(cfg)
        self.train_frac = 1.0
        self.setup_optimizers()

    # ------------------------------------------------------------------ creation and state
    @classmethod
    def from_dataset(cls, dataset, cfg: ZipNeRFConfig, seed: int = 0) -> "ZipNeRFModel":
        from scene3d.models.slimmerf import scene_box

        bounds = cfg.bounds
        if bounds == "auto":
            bounds = "box" if dataset.format == "blender" and dataset.aabb is not None else "unbounded"
        box = scene_box(dataset, 1.0).reshape(6) if bounds == "box" else None
        torch.manual_seed(seed)
        return cls(cfg, box)

    @classmethod
    def from_state(cls, state: dict, cfg: ZipNeRFConfig) -> "ZipNeRFModel":
        box = state.get("box")
        if box is not None and (not isinstance(box, Tensor) or box.numel() != 6):
            raise ValueError("the zipnerf box must hold 6 numbers")
        model = cls(cfg, None if box is None else box.float().cpu())
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in state["params"].items()}
        if expected != got:
            missing = sorted(set(expected) ^ set(got)) or [k for k in expected if expected[k] != got[k]]
            raise ValueError(f"the zipnerf parameters do not match its configuration ({', '.join(missing[:3])})")
        model.load_state_dict({k: v.cpu() for k, v in state["params"].items()})
        return model

    def state(self) -> dict:
        return {"params": {k: v.detach().clone() for k, v in self.state_dict().items()}, "box": None if self.box is None else self.box.detach().cpu().clone()}

    @property
    def hash_decay(self) -> float:
        return self.cfg.box_hash_decay if self.box is not None else self.cfg.hash_decay

    # ------------------------------------------------------------------ hooks (PyNeRF overrides them)
    def make_nerf_field(self, cfg) -> nn.Module:
        """The NeRF round's field."""
        return _Field(cfg, cfg.nerf_max_resolution, cfg.nerf_features, colour=True)

    def interval_samples(self, origins, dirs, radii, tdist, stratified: bool, generator, last: bool) -> tuple[Tensor, Tensor]:
        """(points [N, S, K, 3], scales [N, S, K]) at which a round's field reads each interval:
        Zip-NeRF's six hexagonal multisamples and their footprints, every round."""
        from scene3d.renderers.rays.multisample import hexify

        return hexify(origins, dirs, radii, tdist, stratified=stratified, generator=generator)

    def field_options(self, options: dict) -> dict:
        """The NeRF field's keyword arguments for the viewer's ``options``: the grid levels read."""
        levels = self.nerf.grid.levels
        return {"levels_shown": None if options.get("levels") is None else int(np.clip(int(options["levels"]), 1, levels))}

    # ------------------------------------------------------------------ optimisation
    def make_optimizers(self) -> dict:
        c = self.cfg
        return {"all": torch.optim.Adam(self.parameters(), lr=c.lr_init, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_eps)}

    def learning_rate(self, step: int, max_steps: int) -> float:
        """Log-linear from ``lr_init`` to ``lr_final`` over training, times a sine warm-up from
        ``lr_delay_mult`` over ``lr_delay_steps`` (the reference's ``learning_rate_decay``)."""
        c = self.cfg
        lr = log_lerp(c.lr_init, c.lr_final, step, max_steps)
        if c.lr_delay_steps > 0:
            lr *= c.lr_delay_mult + (1 - c.lr_delay_mult) * math.sin(0.5 * math.pi * min(max(step / c.lr_delay_steps, 0.0), 1.0))
        return lr

    def schedule(self, step: int, max_steps: int) -> None:
        for group in self.optimizers["all"].param_groups:
            group["lr"] = self.learning_rate(step, max_steps)
        self.train_frac = min(max((step - 1) / max(max_steps - 1, 1), 0.0), 1.0)

    # ------------------------------------------------------------------ the ray path
    def render_rays(self, rays, *, background: Tensor | None = None, stratified: bool = False, generator: torch.Generator | None = None,
                    cull: float = 0.0, nerf_samples: int | None = None, field_options: dict | None = None, crop: Tensor | None = None) -> ZipOutput:  # fmt: skip
        """Renders N rays (unit directions with cone radii) through the three rounds.

        ``cull > 0`` (rendering only): a ray that misses the box, or whose proposal histogram
        holds less than ``cull`` in all, leaves the rounds and shows the background (the interlevel loss makes each
        proposal histogram bound the NeRF's, so its NeRF weights would sum to less than that);
        ``sdist``, ``tdist`` and ``weights`` of the output then hold the remaining rays only.
        The viewer's controls (rendering only): ``nerf_samples`` replaces the NeRF round's sample
        count, ``field_options`` go to the NeRF round's field (zipnerf: ``levels_shown`` blurs out the
        grid's finer levels), ``crop`` [6] (lo, hi) keeps
        density inside that box only."""
        from scene3d.renderers.rays.proposal import initial_sdist, resample_intervals, schlick_bias
        from scene3d.renderers.rays.stepfun import PowerLadder, construct_ray_warps

        c = self.cfg
        n = len(rays)
        dev = rays.origins.device
        origins, dirs = rays.origins, rays.dirs
        radii = rays.radii if rays.radii is not None else torch.zeros(n, device=dev)
        if self.box is None:
            near, far, spacing = torch.full((n,), c.near, device=dev), torch.full((n,), c.far, device=dev), PowerLadder() if c.spacing == "power_ladder" else None
        else:  # linear from where each ray enters the box to where it leaves (misses: empty)
            from scene3d.renderers.rays.aabb import ray_aabb

            near, far, hit = ray_aabb(origins, dirs, self.box, check=False)
            far, spacing = torch.where(hit, far, near + 1.0), None
        anneal = schlick_bias(self.train_frac, c.anneal_slope) if stratified else 1.0
        sdist, weights = initial_sdist(n, dev)
        live = None  # indices of the rays still rendered (None: all)
        proposals, samples = [], 0
        rounds = list(zip(self.proposals, c.proposal_samples)) + [(self.nerf, c.nerf_samples if nerf_samples is None else int(nerf_samples))]
        for i, (fld, count) in enumerate(rounds):
            if cull > 0:  # misses of the box, then rays whose last proposal is (nearly) empty
                keep = (weights.sum(dim=1) >= cull) if i > 0 else hit if self.box is not None else None
                if keep is not None and not bool(keep.all()):
                    idx = keep.nonzero()[:, 0]
                    live = idx if live is None else live[idx]
                    origins, dirs, radii, near, far, sdist, weights = (v[idx] for v in (origins, dirs, radii, near, far, sdist, weights))
                    if len(idx) == 0:  # nothing left to render: every ray shows the background
                        tdist, rgb = sdist, torch.zeros(0, 1, 3, device=dev)
                        break
            sdist = resample_intervals(sdist, weights, count, anneal=anneal if i > 0 else 1.0, stratified=stratified, generator=generator)
            tdist = construct_ray_warps(near, far, spacing).s_to_t(sdist)
            last = fld is self.nerf
            points, scales = self.interval_samples(origins, dirs, radii, tdist, stratified, generator, last)
            sigma, rgb = fld(points, scales, dirs if last else None, self.box, crop=crop, **((field_options or {}) if last else {}))
            weights = composite(tdist, sigma)
            samples += sigma.numel()
            if fld is not self.nerf:
                proposals.append((sdist, weights))
        acc = weights.sum(dim=1, keepdim=True)
        colour = (weights[..., None] * rgb).sum(dim=1)
        if background is not None:
            colour = colour + (1.0 - acc) * background.to(colour)
        mid = 0.5 * (tdist[:, 1:] + tdist[:, :-1])
        depth = (weights * mid).sum(dim=1, keepdim=True) / acc.clamp_min(1e-10)
        if live is not None:
            full = torch.zeros(n, 3, device=dev, dtype=colour.dtype)
            if background is not None:
                full[:] = background.to(full)
            full[live] = colour
            colour = full
            acc = torch.zeros(n, 1, device=dev, dtype=acc.dtype).index_copy_(0, live, acc)
            depth = torch.zeros(n, 1, device=dev, dtype=depth.dtype).index_copy_(0, live, depth)
        return ZipOutput(colour, acc, depth, samples, sdist, tdist, weights, proposals)

    def batch(self, data, step: int, generator: torch.Generator):
        return data.ray_batch(step, self.cfg.batch_rays, generator)

    def forward(self, batch, step: int):
        return self.render_rays(batch.rays, background=batch.background, stratified=True, generator=batch.generator)

    def data_loss(self, out: ZipOutput, batch) -> Tensor:
        """The data term: Charbonnier, each ray weighted by ``batch.weights`` when given."""
        from scene3d.renderers.rays.proposal import charbonnier_loss

        return charbonnier_loss(out.rgb, batch.target, self.cfg.charbonnier_eps, weights=getattr(batch, "weights", None))

    def distortion_loss(self, out: ZipOutput) -> Tensor:
        """Zip-NeRF's distortion loss, on its curve of metric distances."""
        from scene3d.renderers.rays.proposal import distortion_loss

        return distortion_loss(out.tdist, out.weights, mult=self.cfg.distortion_mult)

    def losses(self, out: ZipOutput, batch, step: int) -> dict[str, Tensor]:
        from scene3d.renderers.rays.proposal import interlevel_losses

        c = self.cfg
        terms = {"rgb": self.data_loss(out, batch)}
        terms["interlevel"] = sum(interlevel_losses(out.sdist, out.weights, out.proposals, c.interlevel_blurs, c.interlevel_mult))
        if c.distortion_mult > 0:
            terms["distortion"] = self.distortion_loss(out)
        if self.hash_decay > 0:
            decay = 0.0
            for fld in (*self.proposals, self.nerf):
                for grid in fld.grids():
                    for level in range(grid.levels):
                        decay = decay + 0.5 * grid.level_params(level).square().mean()
            terms["hash_decay"] = self.hash_decay * decay
        return terms

    # ------------------------------------------------------------------ rendering
    @torch.no_grad()
    def render(self, cameras: Cameras, *, background: Tensor | None = None, options: dict | None = None, crop=None):
        """Renders one camera's image, ``render_chunk`` rays at a time, on the deterministic
        (evaluation) path: centred interval samples and the alternating hexagon. ``options``: the
        viewer's controls (:meth:`controls`); ``crop``: (lo, hi), density outside is dropped."""
        from scene3d.renderers.rays import camera_rays
        from scene3d.renderers.rays.render import RayRenderOutput

        rays, h, w = camera_rays(cameras)
        step = max(1, int(self.cfg.render_chunk))
        o = options or {}
        kw = {"cull": float(o.get("cull", self.cfg.render_cull)),
              "nerf_samples": int(np.clip(int(o.get("nerf_samples", self.cfg.nerf_samples)), 1, 1024)),
              "field_options": self.field_options(o)}  # fmt: skip
        if crop is not None:
            kw["crop"] = torch.as_tensor(np.concatenate([np.asarray(crop[0], dtype=np.float32), np.asarray(crop[1], dtype=np.float32)]), device=rays.origins.device)
        outs = [self.render_rays(rays[i : i + step], background=background, **kw) for i in range(0, len(rays), step)]
        rgb = torch.cat([o.rgb for o in outs]).reshape(1, h, w, 3)
        alpha = torch.cat([o.alpha for o in outs]).reshape(1, h, w, 1)
        depth = torch.cat([o.depth for o in outs]).reshape(1, h, w, 1)
        return RayRenderOutput(rgb, alpha, depth, sum(o.num_samples for o in outs))

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict:
        return {"parameters": sum(p.numel() for p in self.parameters())}

    def describe(self) -> str:
        return f"zipnerf {sum(p.numel() for p in self.parameters()) / 1e6:.1f}M parameters"

    def controls(self) -> list[Control]:
        c = self.cfg
        return [
            Control("nerf_samples", "NeRF samples", "slider", c.nerf_samples, 4, max(128, c.nerf_samples), 4,
                    hint="Samples per ray in the last (coloured) round: fewer draw faster and blur depth."),
            Control("cull", "Cull below", "slider", c.render_cull, 0.0, 0.05, 0.001,
                    hint="Rays whose proposal weights sum to less than this show the background (faster; 0 renders every ray)."),
            *self.field_controls(),
        ]  # fmt: skip

    def field_controls(self) -> list[Control]:
        """The NeRF field's own viewer controls (their values reach it through :meth:`field_options`)."""
        levels = self.nerf.grid.levels
        return [Control("levels", "Grid levels", "slider", levels, 1, levels, 1,
                        hint="Hash-grid levels of the NeRF read: fewer show the field as its coarse levels hold it.")]  # fmt: skip

    def focus(self):
        return np.zeros(3), 0.5
