"""SlimmeRF (Yuan & Zhao, "SlimmeRF: Slimmable Radiance Fields", 3DV 2024): the ``slimmerf``
representation.

The field is TensoRF's vector-matrix (VM) decomposition (Chen et al. 2022). For each of the three
axis-aligned planes p (XY, XZ, YZ) and the complementary axis line, component c contributes
``M_c^p(u, v) * v_c^p(w)``; the density feature is the sum over planes and R components, the
appearance feature the 3 x 3R products mapped by a linear basis to ``app_dim`` channels, which a
small MLP (with frequency encodings of the feature and of the view direction) turns into colour.
Density is ``softplus(feature + density_shift) * distance_scale`` per unit of distance in a 3-unit
box (NeRF-synthetic's), i.e. scaled by 3 / the box's mean edge in scene3d's normalised frame.

Tensorial Rank Incrementation (TRaIn): training starts at rank (1, 3) (density, appearance) and
adds (1, 3) whenever the relative change of the batch loss between consecutive steps exceeds
``rank_upsilon`` (at most once every ``rank_cooldown`` steps). Components above the current rank
are multiplied by ``rank_epsilon`` rather than zeroed, so they keep learning (slowly) before they
are switched on. Because components are ordered by when they were switched on, the first r of them
form a model of rank r on their own: slimming at test time keeps the first r density and 3r
appearance components (and the basis columns that read them), with no retraining.

Where this departs from the reference code: the mask scales each component's plane x line product
once (the reference masks both factors, i.e. scales by epsilon squared); the sampler skips empty
space with an occupancy grid refreshed every ``occupancy_every`` steps (nerfacc-style) from the
start, and TensoRF's alpha mask is that grid rebuilt at ``alpha_mask_steps`` (the first also
shrinks the box to the occupied region); the appearance network runs only where the rendering
weight exceeds ``weight_threshold``, as TensoRF does. Sync-free training steps (``sync_free``, on
CUDA) read each step's loss ``readout_lag`` steps late: TRaIn raises the rank on the steps the
reference would (for the same losses, its cooldown counted from them), and the new rank is used
from that many steps later.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scene3d.cameras import Cameras
from scene3d.device import LaggedReadout
from scene3d.models.base import Caps, Control, Representation, focus_of_box
from scene3d.renderers.rays.static import Capacity

@dataclass
class SlimmeRFConfig:
    """Hyperparameters of the slimmerf representation (SlimmeRF, Yuan & Zhao 3DV 2024: TensoRF's
    vector-matrix decomposition trained with Tensorial Rank Incrementation). Defaults: the
    reference code's NeRF-synthetic recipe (30k steps); ``--preset cpu`` fits two CPU cores."""

    rank: int = 16
    """R: density components per plane at full rank (appearance has 3R)."""
    init_rank: int = 1
    """Rank at the start (density 1, appearance 3)."""
    rank_inc: int = 1
    """Rank added at each incrementation (density 1, appearance 3)."""
    rank_upsilon: float = 0.4
    """TRaIn: the rank grows when the relative change of the batch loss between consecutive
    steps exceeds this (the reference code's upsilon)."""
    rank_cooldown: int = 100
    """Fewest steps between two rank incrementations."""
    rank_epsilon: float = 1e-6
    """Components above the current rank are multiplied by this (not zeroed, so they still learn)."""
    prefix_prob: float = 0.0
    """Nested training (not in the paper): the probability that a step draws a rank from 1 to the
    current one (uniform) and, when it is below the current rank, trains only that prefix of the
    components, so every prefix stays a model of its own after later components are switched on.
    TRaIn ignores those steps' losses. 0 is the reference."""
    app_dim: int = 27
    """Width of the appearance feature the shading MLP reads."""
    grid_init: int = 128
    """Voxels per side at the start (N_voxel_init = grid_init^3)."""
    grid_final: int = 300
    """Voxels per side after the last upsampling."""
    upsample_steps: tuple[int, ...] = (2000, 3000, 4000, 5500, 7000)
    """Steps the grids are upsampled at (voxel counts log-spaced from init to final)."""
    alpha_mask_steps: tuple[int, ...] = (2000, 4000)
    """Steps the alpha mask is rebuilt at; the first also shrinks the box to what is occupied."""
    alpha_mask_threshold: float = 1e-4
    """Voxels whose alpha (over one step) stays below this are empty."""
    occupancy_every: int = 16
    """Steps between occupancy-grid refreshes (the sampler skips empty cells)."""
    occupancy_resolution: int = 128
    """Cells per side of the occupancy grid."""
    step_ratio: float = 0.5
    """Sampling step along rays, in voxels."""
    max_samples: int = 1024
    """Most samples per ray."""
    batch_rays: int = 4096
    """Rays per training step."""
    lr_grid: float = 0.02
    lr_network: float = 1e-3
    lr_decay_ratio: float = 0.1
    """Learning rates decay exponentially to this fraction at the last step."""
    lr_upsample_reset: bool = True
    """Reset the learning rates to their initial values after each upsampling."""
    l1_weight_initial: float = 8e-5
    """L1 on the density components until the first alpha mask."""
    l1_weight_rest: float = 4e-5
    tv_weight_density: float = 0.0
    tv_weight_app: float = 0.0
    density_shift: float = -10.0
    """Added to the density feature before softplus (empty space starts at ~zero density)."""
    distance_scale: float = 25.0
    view_pe: int = 2
    fea_pe: int = 2
    hidden: int = 128
    weight_threshold: float = 1e-4
    """Samples whose rendering weight is below this skip the appearance network."""
    render_weight_threshold: float = 5e-3
    """Rendering (not training) evaluates colour only where a sample's weight exceeds this, and
    gives the weight of the samples below it the mean colour of the ray's shaded samples
    (``fill_unshaded`` of :func:`~scene3d.renderers.rays.march.march_rays`). The reference shades
    every sample above ``weight_threshold``; on lego (200x200, cpu preset, every fourth test view)
    shading above 1e-3 scores 31.52 dB with 160k samples shaded per view, above 5e-3 with the fill
    31.52 dB with 98k (without the fill 1e-2 loses 0.33 dB, with it 0.04)."""
    render_skip_alpha: float = 3e-3
    """Rendering (not training) skips the space where no sample can be more opaque than this: an
    occupancy grid built for the rendered rank from the largest density in each cell of the VM
    lattice (:meth:`render_occupancy`; exact, not sampled). On lego (cpu preset) 1e-4 to 1e-2 all
    score the same to 0.001 dB; 3e-3 evaluates 0.43M densities per 200x200 view where the
    training grid's 0.60M."""
    early_stop: float = 1e-4
    """Rendering (not training) stops a ray once its transmittance falls to this: each pixel
    changes by at most this fraction of the colour behind it."""
    shade_topk: int = 8
    """In training, each ray's heaviest samples are shaded whatever their weight (so the field
    learns from the first step, also on dark backgrounds)."""
    scene_box: float = 1.5
    """Half-size of the largest box modelled, in the normalised frame (cameras inside the unit
    sphere): the dataset's AABB clipped to it. Unbounded captures are modelled inside it."""
    backend: Literal["auto", "nerfacc", "torch"] = "auto"
    """Volume rendering: nerfacc's batched functions (CPU and CUDA) or the PyTorch twin."""
    sync_free: Literal["auto", "on", "off"] = "auto"
    """Training steps that never wait for the device (:mod:`scene3d.renderers.rays.static`):
    samples on a fixed lattice compacted into buffers whose sizes follow counts the host reads
    ``readout_lag`` steps later, and TRaIn decided on losses read as late. ``auto``: on every
    device but the CPU (where reading a value is free, as the engine's ``host_sync_is_free``
    says); ``on``: also on the CPU (tests); ``off``: never."""
    sample_capacity: int = 0
    """Sync-free training: the first size of the buffer of sample points (0: the whole lattice,
    rays x samples per ray, so nothing is dropped before counts are read). It then follows 1.25x
    the largest recent count; samples beyond it are dropped and counted (``samples_dropped`` in
    the training metrics)."""
    readout_lag: int = 2
    """Sync-free training: steps between a step and the host's reading of its loss and sample
    counts. TRaIn and the buffer sizes act on a step's numbers this many steps later."""


PRESETS: dict[str, dict] = {
    # The reference code's NeRF-synthetic recipe: 30k steps of 4096 rays, grids 128^3 -> 300^3.
    "default": {},
    "cpu": {
        # What two CPU cores train in about 20 minutes (lego at 200x200): half the rays per
        # step, smaller grids and network, the schedule compressed; the rank grows about every
        # 75 steps (the batch loss of 2048 rays changes by more than 5% between most steps).
        "train": {"max_steps": 3000, "time_budget": 1200.0},
        "model": {
            "batch_rays": 2048,
            "grid_init": 64,
            "grid_final": 200,
            "upsample_steps": (300, 600, 1000, 1500, 2000),
            "alpha_mask_steps": (300, 1000),
            "occupancy_resolution": 64,
            "step_ratio": 0.75,
            "hidden": 64,
            "rank_upsilon": 0.05,
            "rank_cooldown": 75,
            # Half the steps train a random prefix: rank 4 of 16 keeps 29.5 of 31.4 dB on lego
            # (6 dB lower without; see the README's bench slim figures).
            "prefix_prob": 0.5,
        },
    },
}


MAT_MODES = ((0, 1), (0, 2), (1, 2))  # plane p spans these axes (u -> width, v -> height)
VEC_MODES = (2, 1, 0)  # ... and its line runs along this one


def n_to_reso(n_voxels: float, aabb: Tensor) -> list[int]:
    """Grid size per axis holding about ``n_voxels`` cubic voxels in the box."""
    size = (aabb[1] - aabb[0]).double()
    voxel = (size.prod() / n_voxels) ** (1.0 / 3.0)
    return [max(int(v), 2) for v in (size / voxel).round().tolist()]


def positional_encoding(x: Tensor, freqs: int) -> Tensor:
    bands = (2.0 ** torch.arange(freqs, device=x.device, dtype=x.dtype)) * math.pi
    y = (x[..., None] * bands).reshape(*x.shape[:-1], -1)
    return torch.cat([torch.sin(y), torch.cos(y)], dim=-1)


def _check_state_shapes(cfg: SlimmeRFConfig, state: dict) -> None:
    """Refuses (ValueError) a state whose declared grid size, rank or MLP widths do not match the
    tensors it holds: the model is built from those numbers before the tensors are loaded, so a
    state declaring a huge grid must not get that far. What the tensors hold, the file held."""
    gs = [int(g) for g in state["grid_size"]]
    R, params = cfg.rank, state["params"]
    if len(gs) != 3 or min(gs) < 1 or not 1 <= int(state["rank"]) <= R:
        raise ValueError(f"grid size {gs} or rank {state['rank']} is not a rank <= {R} grid")
    n_in = cfg.app_dim + 3 + 2 * cfg.fea_pe * cfg.app_dim + 2 * cfg.view_pe * 3
    expected = {"basis.weight": (cfg.app_dim, 9 * R), "mlp.0.weight": (cfg.hidden, n_in), "mlp.2.weight": (cfg.hidden, cfg.hidden), "mlp.4.weight": (3, cfg.hidden)}
    for i, (a, b) in enumerate(MAT_MODES):
        expected[f"density_planes.{i}"] = (1, R, gs[b], gs[a])
        expected[f"app_planes.{i}"] = (1, 3 * R, gs[b], gs[a])
    for i, v in enumerate(VEC_MODES):
        expected[f"density_lines.{i}"] = (1, R, gs[v], 1)
        expected[f"app_lines.{i}"] = (1, 3 * R, gs[v], 1)
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"{name} is {list(params[name].shape)}, not the {list(shape)} its grid size, rank and widths declare")
    occ = state.get("occupancy")
    if occ is not None and occ["state"]["density"].numel() != int(occ["resolution"]) ** 3:
        raise ValueError(f"the occupancy grid's density does not hold {int(occ['resolution'])}^3 cells")


class SlimmeRFModel(Representation):
    """A TensoRF-VM field with a current rank, trained by rays."""

    name = "slimmerf"
    Config = SlimmeRFConfig
    caps = Caps(slimmable=True)
    presets = PRESETS

    def __init__(self, cfg: SlimmeRFConfig, aabb: Tensor, grid_size: list[int], rank: int | None = None):
        super().__init__()
        self.cfg = cfg
        R = cfg.rank
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone())
        # TensoRF's distance_scale assumes NeRF-synthetic's 3-unit box; scaling by the box we model
        # (fixed at creation, kept through shrinking) makes densities mean the same in any frame.
        self.density_scale = cfg.distance_scale * 3.0 / float((self.aabb[1] - self.aabb[0]).mean())
        self.grid_size = [int(g) for g in grid_size]
        self.current_rank = int(cfg.init_rank if rank is None else rank)
        g = torch.Generator().manual_seed(0)

        def planes(n):
            return nn.ParameterList([nn.Parameter(0.1 * torch.randn(1, n, self.grid_size[b], self.grid_size[a], generator=g)) for a, b in MAT_MODES])

        def lines(n):
            return nn.ParameterList([nn.Parameter(0.1 * torch.randn(1, n, self.grid_size[v], 1, generator=g)) for v in VEC_MODES])

        self.density_planes, self.density_lines = planes(R), lines(R)
        self.app_planes, self.app_lines = planes(3 * R), lines(3 * R)
        self.basis = nn.Linear(3 * 3 * R, cfg.app_dim, bias=False)
        n_in = cfg.app_dim + 3 + 2 * cfg.fea_pe * cfg.app_dim + 2 * cfg.view_pe * 3
        self.mlp = nn.Sequential(nn.Linear(n_in, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU(inplace=True), nn.Linear(cfg.hidden, 3))
        nn.init.constant_(self.mlp[-1].bias, 0.0)
        self.occupancy = None  # an OccupancyGrid once training or loading made one
        self.eval_rank: int | None = None  # slimming at test time: render() uses this rank
        self.step_size = self._step_size()
        self.last_loss: float | None = None
        self._readout = LaggedReadout(cfg.readout_lag)  # sync-free steps: (loss, counts) on their way to the host
        self._capacity = Capacity(cfg.sample_capacity or None, name="slimmerf sample buffer")
        self._shade_capacity = Capacity(cfg.sample_capacity or None, name="slimmerf shading buffer")
        self._in_flight: tuple | None = None  # the sync-free forward's (counts, sizes) until after_step
        self.train_rank: int | None = None  # the prefix this training step renders (None: the current rank)
        self.last_rank_step = -10**9
        self.upsample_index = 0
        self.lr_reset_step = 0
        self.l1_weight = cfg.l1_weight_initial
        self.setup_optimizers()  # made again where the engine places the model

    # ------------------------------------------------------------------ creation and state
    @classmethod
    def from_dataset(cls, dataset, cfg: SlimmeRFConfig, seed: int = 0) -> "SlimmeRFModel":
        aabb = scene_box(dataset, cfg.scene_box)
        torch.manual_seed(seed)
        return cls(cfg, aabb, n_to_reso(cfg.grid_init**3, aabb))

    @classmethod
    def from_state(cls, state: dict, cfg: SlimmeRFConfig) -> "SlimmeRFModel":
        if int(state.get("full_rank", cfg.rank)) != cfg.rank:  # a slimmed file: its own width
            cfg = SlimmeRFConfig(**{**asdict(cfg), "rank": int(state["full_rank"])})
        _check_state_shapes(cfg, state)  # before allocating what the numbers declare
        model = cls(cfg, state["aabb"].cpu(), state["grid_size"], rank=int(state["rank"]))
        model.density_scale = float(state.get("density_scale", model.density_scale))
        model.load_state_dict({k: v.cpu() for k, v in state["params"].items()})
        model.upsample_index = int(state.get("upsample_index", 0))
        model.lr_reset_step = int(state.get("lr_reset_step", 0))
        model.last_rank_step = int(state.get("last_rank_step", -10**9))
        model.l1_weight = float(state.get("l1_weight", cfg.l1_weight_initial))
        if state.get("occupancy") is not None:
            from scene3d.renderers.rays import OccupancyGrid

            occ = state["occupancy"]
            model.occupancy = OccupancyGrid(occ["state"]["aabb"].cpu(), int(occ["resolution"]))
            model.occupancy.load_state_dict({k: v.cpu() for k, v in occ["state"].items()})
        model.step_size = model._step_size()
        return model

    def state(self) -> dict:
        out = {
            "params": {k: v.detach().clone() for k, v in self.state_dict().items() if k != "aabb" and not k.startswith("occupancy.")},
            "aabb": self.aabb.detach().cpu().clone(),
            "grid_size": list(self.grid_size),
            "rank": self.current_rank,
            "full_rank": self.cfg.rank,
            "density_scale": self.density_scale,
            "upsample_index": self.upsample_index,
            "lr_reset_step": self.lr_reset_step,
            "last_rank_step": self.last_rank_step,
            "l1_weight": self.l1_weight,
            "occupancy": None if self.occupancy is None else {"resolution": self.occupancy.resolution, "state": {k: v.detach().clone() for k, v in self.occupancy.state_dict().items()}},
        }
        return out

    def load_state_dict(self, state_dict, strict: bool = True):  # noqa: D102 - the aabb buffer is kept apart
        state_dict = {k: v for k, v in dict(state_dict).items() if not k.startswith("occupancy.")}
        state_dict.setdefault("aabb", self.aabb)
        if self.occupancy is not None:  # a submodule once made; its state travels apart
            state_dict.update({f"occupancy.{k}": v for k, v in self.occupancy.state_dict().items()})
        return super().load_state_dict(state_dict, strict=strict)

    def slimmed_state(self, rank: int) -> dict:
        """A state holding only the first ``rank`` density and 3 rank appearance components: a model
        of that rank on its own, smaller on disk (no optimiser state)."""
        R = self.cfg.rank
        if not 1 <= rank <= R:
            raise ValueError(f"rank must be between 1 and {R}, got {rank}")
        keep = torch.cat([torch.arange(p * 3 * R, p * 3 * R + 3 * rank) for p in range(3)])
        params = {}
        for k, v in self.state_dict().items():
            if k == "aabb" or k.startswith("occupancy."):
                continue
            v = v.detach().clone()
            if k.startswith("density_"):
                v = v[:, :rank].clone()
            elif k.startswith("app_planes") or k.startswith("app_lines"):
                v = v[:, : 3 * rank].clone()
            elif k == "basis.weight":
                v = v[:, keep].clone()
            params[k] = v
        state = self.state()
        state.update(params=params, rank=min(self.current_rank, rank), full_rank=rank)
        return state

    # ------------------------------------------------------------------ optimisation
    def _grid_params(self):
        return [*self.density_planes, *self.density_lines, *self.app_planes, *self.app_lines]

    def make_optimizers(self) -> dict:
        c = self.cfg
        groups = [{"params": self._grid_params(), "lr": c.lr_grid, "name": "grid"}, {"params": [*self.basis.parameters(), *self.mlp.parameters()], "lr": c.lr_network, "name": "network"}]
        return {"all": torch.optim.Adam(groups, betas=(0.9, 0.99))}

    def schedule(self, step: int, max_steps: int) -> None:
        """Exponential decay to ``lr_decay_ratio`` over training, restarted at each upsampling."""
        c = self.cfg
        factor = c.lr_decay_ratio ** (max(step - self.lr_reset_step, 0) / max(max_steps, 1))
        for group in self.optimizers["all"].param_groups:
            group["lr"] = (c.lr_grid if group["name"] == "grid" else c.lr_network) * factor

    def _set_step_size(self) -> None:
        """A new sampling step (the grid or the box changed): a ray crosses more samples when it
        is shorter, so the sync-free buffers grow by as much at once, before counts tell."""
        old, self.step_size = self.step_size, self._step_size()
        for buffer in (self._capacity, self._shade_capacity):
            buffer.scale(old / self.step_size)

    def _step_size(self) -> float:
        units = (self.aabb[1] - self.aabb[0]) / (torch.tensor(self.grid_size, dtype=torch.float32, device=self.aabb.device) - 1)
        return float(units.mean()) * self.cfg.step_ratio

    def num_samples(self) -> int:
        """Most samples a ray needs: the box's diagonal over the step (at most ``max_samples``).
        The diagonal is read once per box (training asks every step)."""
        key = (self.aabb.data_ptr(), self.aabb._version)
        if getattr(self, "_diagonal", (None,))[0] != key:
            self._diagonal = (key, float(torch.linalg.norm(self.aabb[1] - self.aabb[0])))
        return int(min(self.cfg.max_samples, math.ceil(self._diagonal[1] / self.step_size) + 1))

    # ------------------------------------------------------------------ rank
    def rank_masks(self, rank: int | None = None, epsilon: float | None = None) -> tuple[Tensor, Tensor]:
        """Per-component factors: 1 up to the rank, ``epsilon`` above (density [R], appearance [3 x 3R])."""
        R = self.cfg.rank
        r = self.current_rank if rank is None else max(0, min(int(rank), R))
        eps = self.cfg.rank_epsilon if epsilon is None else epsilon
        dev = self.aabb.device
        d = torch.full((R,), eps, device=dev)
        d[:r] = 1.0
        a = torch.full((3 * R,), eps, device=dev)
        a[: 3 * r] = 1.0
        return d, a.repeat(3)

    def after_step(self, step: int, losses: dict[str, Tensor]) -> None:
        """TRaIn (on this step's photometric loss; a sync-free step's is read ``readout_lag`` steps
        later), the occupancy grid, the alpha mask and the upsampling schedule."""
        c = self.cfg
        if self._in_flight is not None:
            self._read_later(step, losses["rgb"])
        elif getattr(self, "train_rank", None) is not None:
            self.train_rank = None  # a prefix step: its loss is not comparable with the full model's (TRaIn skips it)
        else:
            self._rank_increment(step, float(losses["rgb"]))  # TRaIn decides on the host: one synchronisation per step
        done = step + 1
        if c.occupancy_every and done % c.occupancy_every == 0:
            self.update_occupancy(done)
        if done in c.alpha_mask_steps:
            self.update_alpha_mask(shrink=done == c.alpha_mask_steps[0])
        if done in c.upsample_steps:
            self.upsample(done)

    def _read_later(self, step: int, loss: Tensor) -> None:
        """Queues this sync-free step's loss and sample counts for the host, and acts on those of
        the step ``readout_lag`` back: TRaIn as :meth:`_rank_increment` on its loss (unless it
        trained a prefix), the buffer sizes on its counts. Nothing here waits for the device."""
        counts, points, shade, limit = self._in_flight
        self._in_flight = None
        values = torch.stack([loss.detach().double(), counts.points.double(), counts.shaded.double()])
        self._readout.push(step, values, (self.train_rank is not None, points, shade, limit))
        self.train_rank = None
        for at, (loss_at, n_points, n_shaded), (prefix, points_at, shade_at, limit_at) in self._readout.due(step):
            if not prefix:
                self._rank_increment(at, float(loss_at))
            self._capacity.observe(at, int(n_points), points_at, limit_at)
            self._shade_capacity.observe(at, int(n_shaded), shade_at, limit_at)

    def _rank_increment(self, step: int, loss: float) -> None:
        c = self.cfg
        if self.last_loss is not None and self.current_rank < c.rank and step - self.last_rank_step > c.rank_cooldown:
            if abs(self.last_loss - loss) / max(loss, 1e-12) > c.rank_upsilon:
                self.current_rank = min(self.current_rank + c.rank_inc, c.rank)
                self.last_rank_step = step
        self.last_loss = loss

    # ------------------------------------------------------------------ features
    def _coords(self, pts: Tensor) -> tuple[Tensor, Tensor]:
        # columns picked one by one: indexing by a list makes a tensor of it, copied from the host
        x = (pts - self.aabb[0]) / (self.aabb[1] - self.aabb[0]) * 2 - 1
        plane = torch.stack([torch.stack([x[:, a], x[:, b]], dim=-1) for a, b in MAT_MODES]).view(3, -1, 1, 2)
        line = torch.stack([x[:, v] for v in VEC_MODES])
        line = torch.stack([torch.zeros_like(line), line], dim=-1).view(3, -1, 1, 2)
        return plane, line

    @staticmethod
    def _sample(params, coords: Tensor, p: int, channels: int | None = None) -> Tensor:
        grid = params[p] if channels is None else params[p][:, :channels]  # a leading-channel slice: no copy
        return F.grid_sample(grid, coords[p : p + 1], align_corners=True).view(grid.shape[1], -1)

    def _kept(self, rank: int | None) -> int:
        return self.current_rank if rank is None else max(1, min(int(rank), self.cfg.rank))

    def density(self, pts: Tensor, rank: int | None = None, epsilon: float | None = None) -> Tensor:
        """sigma [M] (per unit of normalised distance) at points [M, 3]. Components above ``rank``
        are scaled by ``epsilon`` (training); with ``epsilon=0`` they are not evaluated at all
        (rendering a slimmed model)."""
        plane, line = self._coords(pts)
        feat = torch.zeros(pts.shape[0], device=pts.device)
        if epsilon == 0:
            r = self._kept(rank)
            for p in range(3):
                feat = feat + (self._sample(self.density_planes, plane, p, r) * self._sample(self.density_lines, line, p, r)).sum(0)
        else:
            d_mask, _ = self.rank_masks(rank, epsilon)
            for p in range(3):
                prod = self._sample(self.density_planes, plane, p) * self._sample(self.density_lines, line, p)
                feat = feat + (prod * d_mask[:, None]).sum(0)
        return F.softplus(feat + self.cfg.density_shift) * self.density_scale

    def color(self, pts: Tensor, dirs: Tensor, rank: int | None = None, epsilon: float | None = None) -> Tensor:
        """rgb [M, 3] at points [M, 3] seen along unit directions [M, 3] (``rank`` and ``epsilon``
        as in :meth:`density`)."""
        plane, line = self._coords(pts)
        if epsilon == 0:
            r, R = self._kept(rank), self.cfg.rank
            feats = [self._sample(self.app_planes, plane, p, 3 * r) * self._sample(self.app_lines, line, p, 3 * r) for p in range(3)]
            keep = torch.cat([torch.arange(p * 3 * R, p * 3 * R + 3 * r, device=pts.device) for p in range(3)])
            app = F.linear(torch.cat(feats).T, self.basis.weight[:, keep])
        else:
            _, a_mask = self.rank_masks(rank, epsilon)
            feats = [self._sample(self.app_planes, plane, p) * self._sample(self.app_lines, line, p) for p in range(3)]
            app = self.basis((torch.cat(feats) * a_mask[:, None]).T)
        return self._shade_features(app, dirs)

    def _shade_features(self, app: Tensor, dirs: Tensor) -> Tensor:
        c = self.cfg
        x = torch.cat([app, dirs, positional_encoding(app, c.fea_pe), positional_encoding(dirs, c.view_pe)], dim=-1)
        return torch.sigmoid(self.mlp(x))

    def render_fields(self, rank: int):
        """(density, colour, VM density or None) for rendering at ``rank``: only its components are
        evaluated. On the CPU they run the numba VM kernels (:mod:`scene3d.renderers.rays.vm`) over
        channels-last copies of the grids made here, kept while the grids are unchanged (one copy,
        of the last rank asked for), and the density is also given
        as a :class:`~scene3d.renderers.rays.march.VMDensity`, so the marcher evaluates it inside
        its own loop; elsewhere the ``grid_sample`` path of :meth:`density` and :meth:`color`."""
        r, R = self._kept(rank), self.cfg.rank
        if self.aabb.device.type != "cpu" or not _numba_available():
            return (lambda pts: self.density(pts, r, 0.0)), (lambda pts, dirs: self.color(pts, dirs, r, 0.0)), None
        from scene3d.renderers.rays.march import VMDensity
        from scene3d.renderers.rays.vm import channels_last, vm_density_features, vm_stacked_features

        grids = [*self.density_planes, *self.density_lines, *self.app_planes, *self.app_lines]
        key = (r, tuple((g.data_ptr(), g._version) for g in grids))  # the copies last until a parameter changes (a training step)
        cached = getattr(self, "_channels_last", None)
        if cached is None or cached[0] != key:
            cached = key, channels_last(self.density_planes, self.density_lines, r), channels_last(self.app_planes, self.app_lines, 3 * r)
            self._channels_last = cached
        density_grids, app_grids = cached[1], cached[2]
        keep = torch.cat([torch.arange(p * 3 * R, p * 3 * R + 3 * r) for p in range(3)])
        basis = self.basis.weight.detach()[:, keep].contiguous()
        lo, size = self.aabb[0], self.aabb[1] - self.aabb[0]

        def density(pts: Tensor) -> Tensor:
            feat = vm_density_features(density_grids, (pts - lo) / size * 2 - 1)
            return F.softplus(feat + self.cfg.density_shift) * self.density_scale

        from scene3d.renderers.rays._numba_rays import shading_inputs

        layers = [(m.weight.detach(), m.bias.detach()) for m in self.mlp if isinstance(m, nn.Linear)]

        def color(pts: Tensor, dirs: Tensor) -> Tensor:  # _shade_features, its sines and cosines in one numba pass
            app = F.linear(vm_stacked_features(app_grids, (pts - lo) / size * 2 - 1), basis)
            h = torch.from_numpy(shading_inputs(app.numpy(), np.ascontiguousarray(dirs.to(torch.float32).numpy()), self.cfg.fea_pe, self.cfg.view_pe))
            for i, (weight, bias) in enumerate(layers):
                h = torch.addmm(bias, h, weight.T)
                h = h.relu_() if i + 1 < len(layers) else h.sigmoid_()
            return h

        return density, color, VMDensity(density_grids, lo, size, float(self.cfg.density_shift), float(self.density_scale))

    @torch.no_grad()
    def render_occupancy(self, rank: int):
        """The occupancy grid renders skip empty space with, for the density at ``rank``, kept while
        the density grids are unchanged. Exact, unlike the training grid's sampled moving maximum:
        on a cell of the VM lattice (``grid_size`` points per axis, ``align_corners``) each
        component is a bilinear plane times a linear line, so the density feature is trilinear
        there and its largest value is at one of the cell's 8 corners. The feature at every
        lattice point is three contractions of planes with lines (no interpolation), its cell
        maxima three pairwise maxima; a lattice cell is occupied when the softplus density of that
        maximum is more opaque over one step than ``render_skip_alpha`` or than the mean cell
        (so a field that is still a faint haze everywhere is not skipped), and the grid returned (a
        power of two per axis, about half the lattice's cells) marks every cell overlapping an
        occupied one (:meth:`~scene3d.renderers.rays.occupancy.OccupancyGrid.covering`)."""
        from scene3d.renderers.rays import OccupancyGrid

        r = self._kept(rank)
        params = [*self.density_planes, *self.density_lines, self.aabb]
        key = (r, self.step_size, self.cfg.render_skip_alpha, tuple((t.data_ptr(), t._version) for t in params))
        cached = getattr(self, "_render_grid", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        planes = [pl.detach()[0, :r].float() for pl in self.density_planes]  # [r, H, W]
        lines = [li.detach()[0, :r, :, 0].float() for li in self.density_lines]  # [r, L]
        feat = torch.einsum("cyx,cz->xyz", planes[0], lines[0])  # MAT_MODES / VEC_MODES: (x, y | z), (x, z | y), (y, z | x)
        feat += torch.einsum("czx,cy->xyz", planes[1], lines[1])
        feat += torch.einsum("czy,cx->xyz", planes[2], lines[2])
        for axis in range(3):  # the largest corner of each cell
            n = feat.shape[axis]
            feat = torch.maximum(feat.narrow(axis, 0, n - 1), feat.narrow(axis, 1, n - 1))
        # sigma * step above this: more opaque than the limit, or than the mean cell while the field is
        # still a faint haze everywhere (the training grid's rule), whose many faint samples add up
        typical = float((F.softplus(feat[::4, ::4, ::4] + self.cfg.density_shift) * self.density_scale * self.step_size).mean())
        thickness = min(-math.log1p(-self.cfg.render_skip_alpha), typical)
        y = thickness / (self.density_scale * self.step_size)  # softplus(feature + shift) above this
        limit = y + math.log(-math.expm1(-y)) - self.cfg.density_shift  # softplus^-1(y) - shift
        resolution = 1 << max(3, min(8, math.ceil(math.log2(max(self.grid_size) / 2))))
        grid = OccupancyGrid.covering(feat > limit, self.aabb.reshape(-1), resolution)
        self._render_grid = (key, grid)
        return grid

    # ------------------------------------------------------------------ rendering
    def _ray_options(self, rank: int | None, epsilon: float | None, crop) -> dict:
        """The shared ray renderer's arguments for this model (two-stage shading, rank masks)."""
        from scene3d.renderers.rays import OccupancySampler

        aabb = self.aabb.reshape(-1)
        if crop is not None:
            lo = torch.maximum(self.aabb[0], torch.as_tensor(np.asarray(crop[0]), dtype=torch.float32, device=aabb.device))
            hi = torch.minimum(self.aabb[1], torch.as_tensor(np.asarray(crop[1]), dtype=torch.float32, device=aabb.device))
            aabb = torch.cat([lo, torch.maximum(hi, lo)])
        return dict(
            field=lambda pts: self.density(pts, rank, epsilon), color=lambda pts, dirs: self.color(pts, dirs, rank, epsilon),
            sampler=OccupancySampler(aabb, step_size=self.step_size, max_samples=self.num_samples(), grid=self.occupancy),
            weight_threshold=self.cfg.weight_threshold, shade_topk=self.cfg.shade_topk, backend=self.cfg.backend,
        )  # fmt: skip

    def render_rays(self, rays, *, background: Tensor | None = None, rank: int | None = None, epsilon: float | None = None,
                    stratified: bool = False, generator: torch.Generator | None = None, crop=None):
        """Volume-renders :class:`~scene3d.renderers.rays.Rays`; returns a RayOutput (rgb, alpha, depth)."""
        from scene3d.renderers.rays import render_rays

        return render_rays(rays=rays, background=background, stratified=stratified, generator=generator, **self._ray_options(rank, epsilon, crop))

    @torch.no_grad()
    def render(self, cameras: Cameras, *, background: Tensor | None = None, options: dict | None = None, crop=None):
        """Renders one camera's whole image, marched front to back a tile at a time (empty space
        skipped, opaque rays stopped: :func:`~scene3d.renderers.rays.march.march_image`); returns
        rgb, alpha, depth [1, H, W, .]. ``options["rank"]`` slims the render (capped at the rank
        trained, and at :meth:`use_rank`'s): the components above it are not evaluated."""
        from scene3d.renderers.rays.march import march_image

        rank = self.current_rank if self.eval_rank is None else min(self.eval_rank, self.current_rank)
        if options and options.get("rank") is not None:
            rank = min(int(options["rank"]), rank)
        density, color, vm = self.render_fields(rank)
        sampler = self._ray_options(rank, 0.0, crop)["sampler"]
        sampler.grid = self.render_occupancy(rank)
        return march_image(density, color, cameras, sampler=sampler, background=background,
                           weight_threshold=self.cfg.render_weight_threshold, fill_unshaded=True, early_stop=self.cfg.early_stop, vm=vm)  # fmt: skip

    # ------------------------------------------------------------------ training by rays
    def batch(self, data, step: int, generator: torch.Generator):
        return data.ray_batch(step, self.cfg.batch_rays, generator)

    def forward(self, batch, step: int):
        self.train_rank = None
        if self.cfg.prefix_prob > 0 and self.current_rank > 1:
            # the step's generator lives on the host (the engine's), so reading its draw waits for nothing
            u = torch.rand(2, generator=batch.generator, device=batch.generator.device).tolist()
            rank = 1 + min(int(u[1] * self.current_rank), self.current_rank - 1)  # 1 .. current
            if u[0] < self.cfg.prefix_prob and rank < self.current_rank:
                self.train_rank = rank
        if self.sync_free:
            return self._forward_static(batch)
        return self.render_rays(batch.rays, background=batch.background, rank=self.train_rank, stratified=True, generator=batch.generator)

    @property
    def sync_free(self) -> bool:
        """Whether training steps take the sync-free path (``cfg.sync_free``)."""
        mode = self.cfg.sync_free
        return mode == "on" or (mode == "auto" and self.aabb.device.type != "cpu")

    def _forward_static(self, batch):
        """The training render of :meth:`render_rays` with every shape fixed on the host
        (:func:`~scene3d.renderers.rays.static.render_rays_static`): the lattice of
        :meth:`num_samples` per ray, buffers sized by :attr:`_capacity` and :attr:`_shade_capacity`."""
        from scene3d.renderers.rays.aabb import ray_aabb
        from scene3d.renderers.rays.sampling import sample_lattice
        from scene3d.renderers.rays.static import render_rays_static

        rays, rank = batch.rays, self.train_rank
        per_ray = self.num_samples()
        near, far, _ = ray_aabb(rays.origins.detach(), rays.dirs.detach(), self.aabb.reshape(-1), check=False)  # the box was checked when made
        samples = sample_lattice(rays.origins, rays.dirs, near, far, self.step_size, per_ray, self.occupancy, stratified=True, generator=batch.generator)
        limit = len(rays) * per_ray
        points = self._capacity.use(limit)
        shade = min(self._shade_capacity.use(limit), points)
        out, counts = render_rays_static(lambda p: self.density(p, rank), lambda p, d: self.color(p, d, rank), rays, samples,
                                         capacity=points, shade_capacity=shade, background=batch.background, backend=self.cfg.backend,
                                         weight_threshold=self.cfg.weight_threshold, shade_topk=self.cfg.shade_topk)  # fmt: skip
        self._in_flight = (counts, points, shade, limit)
        return out

    def losses(self, out, batch, step: int) -> dict[str, Tensor]:
        """MSE on the rays, L1 on the (rank-masked) density components, and TV when its weights are set."""
        c = self.cfg
        from scene3d.metrics import weighted_mean

        terms = {"rgb": weighted_mean((out.rgb - batch.target) ** 2, getattr(batch, "weights", None))}
        d_mask, _ = self.rank_masks()
        if self.l1_weight > 0:
            l1 = sum((pl.abs().mean(dim=(0, 2, 3)) * d_mask).sum() / d_mask.numel() + (li.abs().mean(dim=(0, 2, 3)) * d_mask).sum() / d_mask.numel()
                     for pl, li in zip(self.density_planes, self.density_lines))  # fmt: skip
            terms["l1"] = self.l1_weight * l1
        tv = None
        for weight, planes in ((c.tv_weight_density, self.density_planes), (c.tv_weight_app, self.app_planes)):
            if weight > 0:
                term = weight * sum(_tv(pl) for pl in planes) * 1e-2
                tv = term if tv is None else tv + term
        if tv is not None:
            terms["tv"] = tv
        return terms

    # ------------------------------------------------------------------ schedule
    @torch.no_grad()
    def update_occupancy(self, step: int) -> None:
        from scene3d.renderers.rays import OccupancyGrid

        if self.occupancy is None:
            res = self.cfg.occupancy_resolution
            self.occupancy = OccupancyGrid(self.aabb.reshape(-1).clone(), res).to(self.aabb.device)
        self.occupancy.update(step, lambda p: self.density(p), occ_thre=self._occ_threshold(), n=1, step_size=self.step_size)

    def _occ_threshold(self) -> float:
        """The alpha-mask threshold as optical thickness over one sampling step."""
        return -math.log(1.0 - self.cfg.alpha_mask_threshold)

    @torch.no_grad()
    def dense_alpha(self, grid_size: list[int] | None = None) -> tuple[Tensor, Tensor]:
        """(alpha over one sampling step [X, Y, Z] at voxel centres of the box, those points)."""
        gs = grid_size or self.grid_size
        axes = [torch.linspace(float(self.aabb[0, i]), float(self.aabb[1, i]), gs[i], device=self.aabb.device) for i in range(3)]
        pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
        flat = pts.reshape(-1, 3)
        sig = torch.cat([self.density(flat[i : i + 65536]) for i in range(0, flat.shape[0], 65536)])
        return (1 - torch.exp(-sig * self.step_size)).reshape(gs), pts

    @torch.no_grad()
    def update_alpha_mask(self, shrink: bool) -> None:
        """TensoRF's alpha mask: the occupancy grid rebuilt from the dense alpha; on the first call
        the box shrinks to the occupied region (the grids are cropped, not resampled)."""
        gs = [min(g, 256) for g in self.grid_size]
        alpha, pts = self.dense_alpha(gs)
        occupied = alpha > self.cfg.alpha_mask_threshold
        if not occupied.any():
            return
        if shrink:
            sel = pts[occupied]
            lo, hi = sel.min(0).values, sel.max(0).values
            pad = (self.aabb[1] - self.aabb[0]) / torch.tensor(gs, device=pts.device, dtype=torch.float32)
            self._shrink(torch.stack([torch.maximum(lo - pad, self.aabb[0]), torch.minimum(hi + pad, self.aabb[1])]))
            self.l1_weight = self.cfg.l1_weight_rest
        from scene3d.renderers.rays import OccupancyGrid

        self.occupancy = OccupancyGrid(self.aabb.reshape(-1).clone(), self.cfg.occupancy_resolution).to(self.aabb.device)
        self.occupancy.update(0, lambda p: self.density(p), occ_thre=self._occ_threshold(), n=1, step_size=self.step_size)  # step 0: every cell

    @torch.no_grad()
    def _shrink(self, new_aabb: Tensor) -> None:
        units = (self.aabb[1] - self.aabb[0]) / (torch.tensor(self.grid_size, device=self.aabb.device, dtype=torch.float32) - 1)
        lo = torch.floor((new_aabb[0] - self.aabb[0]) / units).long().clamp(min=0)
        hi = torch.minimum(torch.ceil((new_aabb[1] - self.aabb[0]) / units).long() + 1, torch.tensor(self.grid_size, device=lo.device))
        lo_l, hi_l = lo.tolist(), hi.tolist()
        for params in (self.density_planes, self.app_planes):
            for p, (a, b) in enumerate(MAT_MODES):
                params[p] = nn.Parameter(params[p].data[..., lo_l[b] : hi_l[b], lo_l[a] : hi_l[a]].contiguous())
        for params in (self.density_lines, self.app_lines):
            for p, v in enumerate(VEC_MODES):
                params[p] = nn.Parameter(params[p].data[..., lo_l[v] : hi_l[v], :].contiguous())
        self.aabb.copy_(torch.stack([self.aabb[0] + lo.float() * units, self.aabb[0] + (hi - 1).float() * units]))
        self.grid_size = [h - l for l, h in zip(lo_l, hi_l)]
        self._set_step_size()
        self.optimizers = self.make_optimizers()

    @torch.no_grad()
    def upsample(self, step: int) -> None:
        c = self.cfg
        counts = np.exp(np.linspace(np.log(c.grid_init**3), np.log(c.grid_final**3), len(c.upsample_steps) + 1))[1:]
        if self.upsample_index >= len(counts):
            return
        res = n_to_reso(float(counts[self.upsample_index]), self.aabb)
        self.upsample_index += 1
        for params in (self.density_planes, self.app_planes):
            for p, (a, b) in enumerate(MAT_MODES):
                params[p] = nn.Parameter(F.interpolate(params[p].data, size=(res[b], res[a]), mode="bilinear", align_corners=True))
        for params in (self.density_lines, self.app_lines):
            for p, v in enumerate(VEC_MODES):
                params[p] = nn.Parameter(F.interpolate(params[p].data, size=(res[v], 1), mode="bilinear", align_corners=True))
        self.grid_size = res
        self._set_step_size()
        if c.lr_upsample_reset:
            self.lr_reset_step = step
        self.optimizers = self.make_optimizers()

    # ------------------------------------------------------------------ slimming
    @property
    def rank(self) -> int:
        return self.current_rank

    def use_rank(self, rank: int | None) -> None:
        self.eval_rank = None if rank is None else int(rank)

    # ------------------------------------------------------------------ reporting and the viewer
    def stats(self) -> dict:
        """Rank and grid; after sync-free steps also the sample buffer's size and what did not fit
        in it or in the shading buffer (totals over the steps read so far, ``readout_lag`` behind)."""
        out = {"rank": self.current_rank, "grid": "x".join(str(g) for g in self.grid_size)}
        if self.sync_free and self._capacity.size is not None:
            out.update(sample_buffer=self._capacity.size, samples_dropped=self._capacity.dropped, shading_dropped=self._shade_capacity.dropped)
        return out

    def describe(self) -> str:
        dropped = self._capacity.dropped + self._shade_capacity.dropped
        shown = f"rank {self.current_rank}/{self.cfg.rank}"
        if self.eval_rank is not None and self.eval_rank < self.current_rank:
            shown = f"rank {self.eval_rank} (of {self.current_rank}/{self.cfg.rank})"
        return f"{shown}  grid {'x'.join(str(g) for g in self.grid_size)}" + (f"  dropped {dropped}" if dropped else "")

    def controls(self) -> list[Control]:
        return [Control("rank", "Rank", "slider", self.cfg.rank, 1, self.cfg.rank, 1, hint="Slimming: render with only the first r components (no retraining).")]

    def viewer_stats(self) -> dict[str, str]:
        n = sum(p.numel() for p in self.parameters())
        return {"rank": f"{self.current_rank} / {self.cfg.rank}", "grid": " x ".join(str(g) for g in self.grid_size), "parameters": f"{n:,}", "memory": f"{n * 4 / 1e6:.1f} MB"}

    def focus(self):
        return focus_of_box(self.aabb)


@functools.cache
def _numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _tv(x: Tensor) -> Tensor:
    return (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()


def scene_box(dataset, half_size: float) -> Tensor:
    """The modelled box in the normalised frame: the dataset's AABB clipped to a cube of
    ``half_size`` (cameras lie inside the unit sphere), or that cube when there is no AABB."""
    cube = np.array([[-half_size] * 3, [half_size] * 3], np.float32)
    if dataset.aabb is not None:
        a = np.asarray(dataset.aabb, np.float32)
        box = np.stack([np.maximum(a[0], cube[0]), np.minimum(a[1], cube[1])])
        if (box[1] > box[0]).all():
            return torch.from_numpy(box)
    return torch.from_numpy(cube)
