"""Real spherical harmonics of degree 0-3, with the basis and constants of 3DGS and gsplat.

Coefficients are laid out [..., K, 3] with K = (degree + 1)^2, band by band; the colour of a
Gaussian seen along unit direction d is ``sum_k basis_k(d) coeffs[k]`` plus 0.5, clamped at 0
(see :func:`sh_to_color`). ``rgb_to_sh`` / ``sh_to_rgb`` convert a plain colour to and from the
degree-0 coefficient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """K = (degree + 1)^2 coefficients per colour channel."""
    return (degree + 1) ** 2


def sh_degree_of(num_bases: int) -> int:
    """The degree whose basis has exactly ``num_bases`` functions (1, 4, 9 or 16)."""
    degree = math.isqrt(num_bases) - 1
    if degree < 0 or (degree + 1) ** 2 != num_bases or degree > 3:
        raise ValueError(f"SH coefficients must have 1, 4, 9 or 16 bases, got {num_bases}")
    return degree


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Basis functions at unit directions ``dirs`` [..., 3] -> [..., (degree + 1)^2]."""
    assert 0 <= degree <= 3, f"SH degree must be 0-3, got {degree}"
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            SH_C2[0] * x * y,
            SH_C2[1] * y * z,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * x * z,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * x * y * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Evaluates SH of ``degree`` along ``dirs`` [..., 3] (any length) with ``coeffs`` [..., K, 3].

    Only the first (degree + 1)^2 coefficients are used. Returns [..., 3] (without the +0.5).
    """
    k = num_sh_bases(degree)
    assert coeffs.shape[-2] >= k, f"degree {degree} needs {k} SH coefficients, got {coeffs.shape[-2]}"
    unit = dirs / torch.linalg.norm(dirs, dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(degree, unit)  # [..., k]
    return torch.einsum("...k,...kc->...c", basis, coeffs[..., :k, :])


def sh_to_color(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colour of SH coefficients seen along ``dirs``: ``max(SH + 0.5, 0)``, as gsplat does."""
    return torch.clamp_min(spherical_harmonics(degree, dirs, coeffs) + 0.5, 0.0)


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """Degree-0 coefficient [..., 3] whose colour is ``rgb`` in every direction."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh0: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_sh`."""
    return sh0 * SH_C0 + 0.5
