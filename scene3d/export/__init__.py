"""Exporting trained Gaussian models: the standard 3DGS PLY, mapped back to the input frame.

Models are trained in scene3d's normalised frame (``x_norm = dataset.transform @ x_input``);
``write_ply(path, params, transform=inv(dataset.transform))`` writes them where the user's cameras
are, with means, rotations, scales and view-dependent colour (SH) all mapped consistently.
"""

from scene3d.export.ply import ply_property_names, read_ply, write_ply
from scene3d.export.sh_rotation import eval_sh, eval_sh_basis, rotate_sh, sh_rotation_matrices
from scene3d.export.transform import transform_gaussians

__all__ = [
    "eval_sh",
    "eval_sh_basis",
    "ply_property_names",
    "read_ply",
    "rotate_sh",
    "sh_rotation_matrices",
    "transform_gaussians",
    "write_ply",
]
