"""Representations trained by the one trainer. ``MODELS`` maps a name to its config class; the
model class itself (which imports torch) is loaded by :func:`model_class`."""

from __future__ import annotations

from scene3d.errors import Scene3dError
from scene3d.models.config import GaussianConfig, SlimmeRFConfig

MODELS: dict[str, type] = {"3dgs": GaussianConfig, "slimmerf": SlimmeRFConfig}
# The strategy a model trains with when --strategy is not given (densification is for Gaussians).
DEFAULT_STRATEGY: dict[str, str] = {"3dgs": "adc", "slimmerf": "none"}


def check_model_name(name: str) -> str:
    if name not in MODELS:
        raise Scene3dError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    return name


def model_class(name: str):
    check_model_name(name)
    if name == "slimmerf":
        from scene3d.models.slimmerf import SlimmeRFModel

        return SlimmeRFModel
    from scene3d.models.gaussians import GaussianModel

    return GaussianModel
