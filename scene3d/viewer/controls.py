"""Representation-specific viewer controls.

A representation lists its own controls (``viewer_controls()``) and takes their values back in
``viewer_render(cameras, ..., options)``, so the viewer builds the GUI without knowing the model:
Gaussians offer a splat scale and an opacity floor, a NeRF with ranks offers its rank, and so on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ViewerControl:
    key: str  # the name viewer_render receives it under
    label: str
    kind: Literal["slider", "checkbox", "dropdown"]
    default: Any
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: tuple[str, ...] = ()
    hint: str | None = None
