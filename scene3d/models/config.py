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
