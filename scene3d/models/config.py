"""Hyperparameters of the representations (no heavy imports: the CLI is built from these)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


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
    antialiased: bool = False
    """Mip-Splatting's 2D filter with opacity compensation."""
    backend: Literal["auto", "gsplat", "cpu", "torch"] = "auto"
    """Rasterization backend."""
    near: float = 0.01
    far: float = 1e10


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
    shade_topk: int = 8
    """In training, each ray's heaviest samples are shaded whatever their weight (so the field
    learns from the first step, also on dark backgrounds)."""
    scene_box: float = 1.5
    """Half-size of the largest box modelled, in the normalised frame (cameras inside the unit
    sphere): the dataset's AABB clipped to it. Unbounded captures are modelled inside it."""
    backend: Literal["auto", "nerfacc", "torch"] = "auto"
    """Volume rendering: nerfacc's batched functions (CPU and CUDA) or the PyTorch twin."""
