"""The registry of representations: name -> the class that carries its config, presets, default
strategy and capabilities (:class:`~scene3d.models.base.Representation`).

Adding a representation is one module plus one line in ``_BUILTIN`` below. Classes load lazily (a
model module imports torch), so listing names stays instant. Representations defined elsewhere
(a plugin package, a test) join with :func:`register`, or by naming their modules in the
``SCENE3D_PLUGINS`` environment variable (comma-separated; each is imported once and registers
itself), which also reaches ``scene3d`` commands run in a new process.
"""

from __future__ import annotations

import importlib
import os

from scene3d.errors import Scene3dError

_BUILTIN: dict[str, str] = {
    "3dgs": "scene3d.models.gaussians:GaussianModel",
    "slimmerf": "scene3d.models.slimmerf:SlimmeRFModel",
    "zipnerf": "scene3d.models.zipnerf:ZipNeRFModel",
    "pynerf": "scene3d.models.pynerf:PyNeRFModel",
    "scaffold": "scene3d.models.scaffold:ScaffoldModel",
}
DEFAULT_MODEL = "3dgs"
"""What ``scene3d train`` trains without ``--model``, and what the demo and ``bench densify`` use."""

_classes: dict[str, type] = {}
_plugins_loaded = False


def register(cls: type) -> type:
    """Adds a Representation subclass under its ``name`` (usable as a class decorator)."""
    from scene3d.models.base import Representation

    if not (isinstance(cls, type) and issubclass(cls, Representation)):
        raise TypeError(f"{cls!r} is not a Representation subclass")
    _classes[cls.name] = cls
    return cls


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module in filter(None, (m.strip() for m in os.environ.get("SCENE3D_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise Scene3dError(f"SCENE3D_PLUGINS names {module!r}, which cannot be imported ({e})") from None


def model_names() -> list[str]:
    """Every registered representation's name (built-ins first)."""
    _load_plugins()
    return list(dict.fromkeys([*_BUILTIN, *_classes]))


def check_model_name(name: str) -> str:
    if name not in model_names():
        raise Scene3dError(f"unknown model {name!r}; valid models: {', '.join(model_names())}")
    return name


def get_model(name: str) -> type:
    """The Representation class registered as ``name`` (imported on first use)."""
    check_model_name(name)
    if name not in _classes:
        module, attr = _BUILTIN[name].split(":")
        _classes[name] = getattr(importlib.import_module(module), attr)
    return _classes[name]


def gaussian_representation() -> type:
    """The representation that renders a :class:`~scene3d.models.base.GaussianSet` as it is (scene
    files evaluated, viewed or rendered)."""
    from scene3d.models.gaussians import GaussianModel

    return GaussianModel


def representation_for_gaussians(gaussians, device="cpu"):
    """A model holding exactly ``gaussians``, on ``device``."""
    return gaussian_representation().from_gaussians(gaussians.to(device))
