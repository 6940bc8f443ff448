"""Trainer options (free of heavy imports, so the CLI builds instantly)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """How training runs, whatever the representation."""

    max_steps: int = 30_000
    """Number of optimisation steps (one training image per step)."""
    time_budget: float = 0.0
    """Stop cleanly after this many seconds of training and evaluate (0: no limit)."""
    seed: int = 0
    """Seed of every random choice (image order, backgrounds, initialisation, splits)."""
    eval_every: int = 0
    """Evaluate on the test split every N steps (0: only at the end)."""
    save_every: int = 1000
    """Write a checkpoint every N steps (and always at the end)."""
    ssim_lambda: float = 0.2
    """Loss = (1 - lambda) L1 + lambda (1 - SSIM)."""
    background_mode: Literal["auto", "white", "black", "random"] = "auto"
    """Background colour: auto uses the dataset's (white for Blender scenes) and black otherwise;
    random draws one per step behind images with alpha (targets composited on the same colour;
    datasets without alpha keep auto's)."""
    device: str = "auto"
    """torch device; auto picks cuda when available, else cpu."""
    log_every: int = 20
    """Write a training line to metrics.jsonl every N steps."""
    resume: bool = False
    """Continue from RUN/checkpoints/latest.pt (exactly where it stopped)."""
    compress_grid: bool = False
    """Self-organising Gaussian grid training (Morgenstern et al. 2024, Gaussians only): from
    ``grid_start`` the Gaussians are sorted into a 2D grid (PLAS) and a grid-smoothness loss pulls
    each one's attributes towards its grid neighbours', so `scene3d export --format sog` compresses
    better. Re-sorted every ``grid_sort_every`` steps and whenever the count changed."""
    grid_weight: float = 1.0
    """Weight of the grid-smoothness loss (the paper's lambda_neighbour)."""
    grid_start: int = -1
    """Step the grid training starts at; -1: when densification stops (the strategy's refine_stop)."""
    grid_sort_every: int = 1000
    """Re-sort the grid every N steps (sorting 200k Gaussians takes about 30 s on one CPU core)."""
    viewer: bool = False
    """Serve the live web viewer (viser) while training: the model as it trains, with pause/resume
    and the current step, loss, PSNR and primitive count. Rendering happens only while a browser is
    connected."""
    viewer_host: str = "127.0.0.1"
    """Interface the viewer listens on (0.0.0.0: every interface)."""
    viewer_port: int = 8080
    """Port of the viewer (the next free one is taken when it is busy)."""
    viewer_wait: bool = True
    """After training, keep the viewer up until Ctrl+C."""
