"""Mapping a 3D Gaussian model through a similarity transform ``x' = s R x + t``.

scene3d trains in a normalised frame (``x_norm = T @ x_input``, ``T`` recorded per dataset); an
export maps the model back with ``T^-1`` so other tools show it where the user's cameras are.

Model layout (float32 tensors, as the 3DGS model stores them): ``means`` [N, 3], ``quats`` [N, 4]
(w, x, y, z, any norm), ``scales`` [N, 3] (log), ``opacities`` [N] (logit), ``sh0`` [N, 1, 3],
``shN`` [N, K-1, 3].
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from scene3d.export.sh_rotation import rotate_sh
from scene3d.geometry import matrix_to_quaternion, quaternion_multiply

GAUSSIAN_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def decompose_similarity(T) -> tuple[float, Tensor, Tensor]:
    """Split a 4x4 similarity ``[[s R, t], [0, 1]]`` into ``(s, R, t)`` (float64).

    ``R`` is returned as the nearest rotation to ``A / s`` so small rounding in ``T`` (a float32
    matrix, a product of several transforms) does not leak into the Gaussians.

    Raises:
        ValueError: ``T`` is not 4x4, not finite, has a projective last row, or its 3x3 part is not
            a positive scale times a rotation (shear, anisotropic scale, reflection).
    """
    T = T.detach().cpu().to(torch.float64) if isinstance(T, Tensor) else torch.from_numpy(np.asarray(T, dtype=np.float64))
    if T.shape != (4, 4):
        raise ValueError(f"transform must be 4x4, got {tuple(T.shape)}")
    if not torch.isfinite(T).all():
        raise ValueError("transform has non-finite entries")
    if not torch.allclose(T[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64), atol=1e-9):
        raise ValueError(f"transform's last row must be [0, 0, 0, 1], got {T[3].tolist()}")
    A = T[:3, :3]
    det = float(torch.linalg.det(A))
    if det <= 0:
        raise ValueError(f"transform's 3x3 part has determinant {det:.4g}; need a rotation times a positive scale")
    s = det ** (1.0 / 3.0)
    u, _, vt = torch.linalg.svd(A / s)
    R = u @ vt
    err = float(torch.linalg.norm(A / s - R))
    if err > 1e-4:
        raise ValueError(f"transform is not a similarity: its 3x3 part is {err:.2e} away from a scaled rotation")
    return s, R, T[:3, 3].clone()


def transform_gaussians(params: dict[str, Tensor], T) -> dict[str, Tensor]:
    """Apply the similarity ``x' = T x`` (``T = [[s R, t], [0, 1]]``) to a Gaussian model.

    * ``means' = s R means + t``
    * ``quats' = q(R) * quats``, normalised (the covariance becomes ``s^2 R Sigma R^T``)
    * ``scales' = scales + log(s)`` (log scales)
    * ``opacities``, ``sh0`` unchanged
    * ``shN`` rotated by ``R``: the colour seen along ``d`` before is the colour seen along ``R d``
      after (see :func:`~scene3d.export.sh_rotation.rotate_sh`).

    Arithmetic is done in float64 and cast back to each tensor's dtype. The input is not modified;
    keys other than the six above are passed through unchanged (as the same tensors).

    Args:
        params: the model (see the module docstring); ``shN`` may be absent (degree 0).
        T: [4, 4] similarity, numpy array or tensor.

    Returns:
        a new dict with the same keys.
    """
    missing = [k for k in ("means", "quats", "scales") if k not in params]
    if missing:
        raise ValueError(f"the model has no {', '.join(missing)}")
    s, R, t = decompose_similarity(T)
    out = dict(params)
    means = params["means"]
    if means.ndim != 2 or means.shape[1] != 3:
        raise ValueError(f"means must be [N, 3], got {tuple(means.shape)}")
    Rm, tm = R.to(means.device), t.to(means.device)
    out["means"] = (s * means.to(torch.float64) @ Rm.T + tm).to(means.dtype)

    quats = params["quats"]
    if quats.shape != (means.shape[0], 4):
        raise ValueError(f"quats must be [N, 4], got {tuple(quats.shape)}")
    q = quats.to(torch.float64)
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    q_new = quaternion_multiply(matrix_to_quaternion(R).to(q.device).expand_as(q), q)
    out["quats"] = (q_new / torch.linalg.norm(q_new, dim=-1, keepdim=True)).to(quats.dtype)

    scales = params["scales"]
    out["scales"] = (scales.to(torch.float64) + float(np.log(s))).to(scales.dtype)

    if "shN" in params:
        out["shN"] = rotate_sh(params["shN"].to(torch.float64), R).to(params["shN"].dtype)
    return out
