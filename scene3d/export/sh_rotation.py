"""Real spherical harmonics (the 3DGS / gsplat basis) and their rotation.

The basis is the one the original 3D Gaussian Splatting code (``sh_utils.eval_sh``) and gsplat
(``_torch_impl._eval_sh_bases_fast``) evaluate: real SH of bands ``l = 0..3`` in their standard
order, so a Gaussian's colour seen along the unit direction ``d`` is
``sum_k sh[k] * Y_k(d) + 0.5``.

Rotating a scene by ``R`` must not change what any viewer sees, so the coefficients of band ``l``
are mixed by a ``(2l+1) x (2l+1)`` matrix ``D_l(R)`` chosen such that, for every direction ``d``,
``eval(D(R) c, R d) == eval(c, d)``. Each band spans a rotation-invariant space, so ``D_l`` is found
exactly (up to rounding) from the basis itself: with the band's basis evaluated as row vectors on a
fixed spread of directions ``E`` (``[M, 2l+1]``, full column rank),

    Y_l(R^T e) = Y_l(e) @ D_l   for every e   =>   D_l = pinv(Y_l(E)) @ Y_l(E R).

No Wigner-D recurrences, and the result follows whatever sign conventions the basis has.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from scene3d.renderers.gaussians.sh import sh_basis

MAX_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """Number of SH coefficients ``K = (degree + 1)^2`` of bands ``0..degree``."""
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"SH degree must be 0..{MAX_DEGREE}, got {degree}")
    return (degree + 1) ** 2


def sh_degree_from_rest(num_rest: int) -> int:
    """SH degree of a model with ``num_rest = K - 1`` higher-order coefficients (0, 3, 8 or 15)."""
    degree = math.isqrt(num_rest + 1) - 1
    if (degree + 1) ** 2 != num_rest + 1 or degree > MAX_DEGREE:
        raise ValueError(f"{num_rest} higher-order SH coefficients is not 0, 3, 8 or 15")
    return degree


def eval_sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Real SH basis of bands ``0..degree`` at the directions ``dirs``.

    Args:
        degree: 0..3.
        dirs: [..., 3] directions, normalised here (the polynomials below are the SH only on the
            unit sphere).

    Returns:
        [..., K] with ``K = (degree + 1)^2``, in the order of the 3DGS coefficient arrays.
    """
    if dirs.shape[-1] != 3:
        raise ValueError(f"dirs must be [..., 3], got {tuple(dirs.shape)}")
    num_sh_bases(degree)  # validates the degree
    return sh_basis(degree, dirs / torch.linalg.norm(dirs, dim=-1, keepdim=True))


def eval_sh(coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Colour ``sum_k coeffs[k] * Y_k(dir) + 0.5``.

    Args:
        coeffs: [..., K, C] coefficients of bands ``0..degree`` (``K = (degree + 1)^2``).
        dirs: [..., 3] viewing directions (normalised here), broadcastable against ``coeffs``.

    Returns:
        [..., C].
    """
    degree = sh_degree_from_rest(coeffs.shape[-2] - 1)
    basis = eval_sh_basis(degree, dirs.to(coeffs.dtype))  # [..., K]
    return (basis.unsqueeze(-1) * coeffs).sum(dim=-2) + 0.5


def _fibonacci_sphere(n: int) -> Tensor:
    """``n`` nearly uniformly spread unit directions [n, 3] (float64)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = torch.sqrt(1.0 - z * z)
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


# 64 spread directions: the basis of each band on them has full rank and a condition number near 1.
_SAMPLE_DIRS = _fibonacci_sphere(64)


@functools.cache
def _band_pinvs() -> tuple[np.ndarray, ...]:
    """``pinv(Y_l(E))`` [2l+1, M] of each band ``l = 0..3`` on the fixed directions (computed once)."""
    basis = eval_sh_basis(MAX_DEGREE, _SAMPLE_DIRS).numpy()
    return tuple(np.linalg.pinv(basis[:, l * l : (l + 1) ** 2]) for l in range(MAX_DEGREE + 1))


def _check_rotation(R: Tensor) -> Tensor:
    R = torch.as_tensor(R).detach().cpu().to(torch.float64)
    if R.shape != (3, 3):
        raise ValueError(f"R must be [3, 3], got {tuple(R.shape)}")
    if not torch.isfinite(R).all():
        raise ValueError("R has non-finite entries")
    err = torch.linalg.norm(R.T @ R - torch.eye(3, dtype=torch.float64))
    if err > 1e-4 or torch.linalg.det(R) < 0:
        raise ValueError(f"R is not a rotation (|R^T R - I| = {err:.2e}, det = {torch.linalg.det(R):.4f})")
    return R


def sh_rotation_matrices(R: Tensor, degree: int) -> list[Tensor]:
    """Per-band SH rotation matrices for the rotation ``R``.

    Args:
        R: [3, 3] rotation (det +1) mapping old-frame directions to new-frame directions.
        degree: highest band, 0..3.

    Returns:
        ``[D_0, ..., D_degree]``, ``D_l`` of shape [2l+1, 2l+1] (float64, orthogonal; ``D_0 = [[1]]``),
        such that the band-``l`` coefficients ``D_l @ c`` seen from ``R d`` give the colour that ``c``
        gives from ``d``.
    """
    R = _check_rotation(R)
    num_sh_bases(degree)
    # Tiny products are done in numpy: torch's threaded GEMM costs milliseconds per call on a busy CPU.
    rotated_dirs = _SAMPLE_DIRS.numpy() @ R.numpy()  # row e becomes R^T e
    basis_rotated = eval_sh_basis(degree, torch.from_numpy(rotated_dirs)).numpy()  # [M, K]
    pinvs = _band_pinvs()
    return [torch.from_numpy(pinvs[l] @ basis_rotated[:, l * l : (l + 1) ** 2]) for l in range(degree + 1)]


def rotate_sh(shN: Tensor, R: Tensor) -> Tensor:
    """Rotate the higher-order SH coefficients of Gaussians by ``R``.

    Args:
        shN: [N, K-1, C] coefficients of bands ``1..degree`` (``K - 1`` = 0, 3, 8 or 15).
        R: [3, 3] rotation applied to the scene.

    Returns:
        [N, K-1, C], same dtype and device, such that for every direction ``d``
        ``eval_sh([sh0, result], R d) == eval_sh([sh0, shN], d)``. The DC band is invariant.
    """
    if shN.ndim != 3:
        raise ValueError(f"shN must be [N, K-1, C], got {tuple(shN.shape)}")
    degree = sh_degree_from_rest(shN.shape[1])
    mats = sh_rotation_matrices(R, degree)
    out = torch.empty_like(shN)
    for band in range(1, degree + 1):
        lo, hi = band * band - 1, (band + 1) ** 2 - 1
        D = mats[band].to(dtype=shN.dtype, device=shN.device)
        out[:, lo:hi] = D @ shN[:, lo:hi]  # [2l+1, 2l+1] @ [N, 2l+1, C]
    return out
