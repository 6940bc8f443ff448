"""Densification strategies: which Gaussians to add, split and remove during training."""

from __future__ import annotations

from scene3d.densify.adc import ADCStrategy
from scene3d.densify.base import StepContext, Strategy
from scene3d.densify.lpm import LPMStrategy
from scene3d.densify.mcmc import MCMCStrategy
from scene3d.densify.pixel_error import PixelErrorStrategy

STRATEGIES: dict[str, type[Strategy]] = {
    "adc": ADCStrategy,
    "pixel-error": PixelErrorStrategy,
    "lpm": LPMStrategy,
    "mcmc": MCMCStrategy,
    "none": Strategy,
}
