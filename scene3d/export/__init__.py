"""Scene files: the format registry (:mod:`scene3d.export.formats`, light to import) and the
writers and readers of each format.

Models are trained in scene3d's normalised frame (``x_norm = dataset.transform @ x_input``);
``write_ply(path, params, transform=inv(dataset.transform))`` writes them where the user's cameras
are, with means, rotations, scales and view-dependent colour (SH) all mapped consistently. The
names below load their modules (which import torch) on first use, so listing formats stays instant.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "eval_sh": "scene3d.export.sh_rotation",
    "eval_sh_basis": "scene3d.export.sh_rotation",
    "rotate_sh": "scene3d.export.sh_rotation",
    "sh_rotation_matrices": "scene3d.export.sh_rotation",
    "ply_property_names": "scene3d.export.ply",
    "read_ply": "scene3d.export.ply",
    "write_ply": "scene3d.export.ply",
    "transform_gaussians": "scene3d.export.transform",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'scene3d.export' has no attribute {name!r}")
