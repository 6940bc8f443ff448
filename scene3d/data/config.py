"""Dataset-loading options (kept free of heavy imports so the CLI builds instantly)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DataConfig:
    """How a dataset is loaded (shared by every command that reads a scene)."""

    downscale: int = 1
    """Load images at 1/N resolution (cached on disk after the first use)."""
    multiscale: bool = False
    """Also train and test on every image at 1/2, 1/4 and 1/8 of the loaded size (mip-NeRF's
    multiscale convention: intrinsics divided, images area-averaged; ray models weigh each pixel by
    its area in the full image; eval reports PSNR per scale and their mean)."""
    scale_sampling: Literal["balanced", "area", "image"] = "balanced"
    """Multiscale datasets, how ray batches draw the scales: ``balanced``, each scale as often as
    the others and its pixels alike, unweighted; ``area``, every pixel alike, each weighed by its
    area f^2 (mip-NeRF's; the same expected loss as ``balanced``, with 1/85 of the rays at 1/8
    instead of a quarter, so far noisier there); ``image``, each image as often, weighed by area
    (PyNeRF's, which favours the small scales)."""
    test_every: int = 8
    """Without explicit split lists, every N-th image (0, N, 2N, ...) is a test image."""
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    """Colour that RGBA images (Blender synthetic) are composited on."""
    normalize: bool = True
    """Centre, orient (up = +z) and scale the scene so the cameras fit in a unit sphere."""
    remove_outliers: bool = True
    """Drop isolated sparse points (open3d statistical outlier removal)."""
    load_masks: bool = True
    """Use per-image masks when the dataset provides them."""
    allow_outside_paths: bool = False
    """Let a scene's files (images, masks, point clouds) lie outside the scene folder (through .. or symlinks); off, a scene can only make scene3d read inside its own folder."""
