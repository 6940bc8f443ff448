"""mip-NeRF 360's scene contraction and how it rescales an isotropic Gaussian.

Unbounded scenes are squeezed into a ball of radius 2 before a grid is looked up (mip-NeRF 360,
Eq. 10, with the L2 norm, as camp_zipnerf's ``coord.contract``):

    contract(x) = x                                 for |x| <= 1,
    contract(x) = (2 - 1/|x|) x / |x|                for |x| > 1,

so the unit ball is left alone and the rest of space is folded radially into the shell
1 <= |z| < 2 (distance r > 1 lands at radius 2 - 1/r). The map is continuous with a continuous
first derivative at |x| = 1, and its inverse is ``x = z / (2|z| - |z|^2)`` for 1 < |z| < 2.

A Gaussian of isotropic scale sigma (standard deviation, scene units) at x is carried through
the warp by linearising it: its covariance becomes ``J J^T sigma^2`` with J the Jacobian at x.
Zip-NeRF keeps it isotropic by using the geometric mean of J's singular values,
``|det J|^(1/3)`` (camp_zipnerf's ``coord.track_isotropic``). For ``contract`` this factor has a
closed form (camp_zipnerf's ``coord.contract3_isoscale``). Outside the unit ball contract maps
radius r to ``g(r) = 2 - 1/r`` along the same direction, so J has the radial eigenvalue
``g'(r) = 1/r^2`` and the tangential eigenvalue ``g(r)/r = (2r - 1)/r^2`` twice, and

    |det J|^(1/3) = ((2|x| - 1)^2 / |x|^6)^(1/3) = (2|x| - 1)^(2/3) / |x|^2    for |x| > 1,

and 1 inside the unit ball. :func:`contract_iso_scale` computes it; :func:`track_isotropic` is the
general version for any warp (a Jacobian per point by autograd), which the tests use to check the
closed form.

All functions take points on the last axis ``[..., 3]`` and work on any device and float dtype.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def _check_points(x: Tensor, name: str) -> None:
    assert x.ndim >= 1 and x.shape[-1] == 3, f"{name} must be [..., 3], got {tuple(x.shape)}"


def contract(x: Tensor) -> Tensor:
    """Points ``x`` [..., 3] (scene units) -> contracted points [..., 3] inside the ball of radius 2.

    ``n = max(1, |x|^2)`` and ``contract(x) = x (2 sqrt(n) - 1) / n``: the identity inside the
    unit ball (n = 1), ``(2 - 1/|x|) x/|x|`` outside. Clamping n at 1 keeps the square root away
    from 0, so gradients are finite everywhere.
    """
    _check_points(x, "x")
    n = torch.clamp((x * x).sum(dim=-1, keepdim=True), min=1.0)
    return x * ((2.0 * torch.sqrt(n) - 1.0) / n)


def inv_contract(z: Tensor) -> Tensor:
    """The inverse of :func:`contract`: ``z`` [..., 3] with |z| < 2 -> points [..., 3].

    Inside the unit ball the identity; for 1 < |z| < 2, ``x = z / (2|z| - |z|^2)`` (which tends to
    infinity as |z| -> 2, so |z| >= 2 gives inf or negative nonsense: it is outside the range).
    """
    _check_points(z, "z")
    m = torch.clamp((z * z).sum(dim=-1, keepdim=True), min=1.0)
    return z / (2.0 * torch.sqrt(m) - m)


def contract_iso_scale(x: Tensor) -> Tensor:
    """The isotropic scale factor of :func:`contract` at ``x`` [..., 3] -> [...] (dimensionless).

    ``|det J(x)|^(1/3) = (2|x| - 1)^(2/3) / |x|^2`` for |x| > 1 and 1 inside the unit ball, computed
    as ``exp((2/3) log(2|x| - 1) - log |x|^2)`` with |x|^2 clamped at 1. Multiply a Gaussian's
    scale (standard deviation) at x by it to get the scale of the contracted Gaussian.
    """
    _check_points(x, "x")
    n = torch.clamp((x * x).sum(dim=-1), min=1.0)
    return torch.exp((2.0 / 3.0) * torch.log(2.0 * torch.sqrt(n) - 1.0) - torch.log(n))


def track_isotropic(fn: Callable[[Tensor], Tensor], mean: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
    """Pushes isotropic Gaussians (``mean`` [..., D], ``scale`` [...]) through a warp ``fn``.

    Linearises ``fn`` at each mean (a D x D Jacobian per point, by ``torch.func.jacrev`` under
    ``vmap``; ``fn`` must map one point [D] to one point [D] and be vmap-able) and returns
    ``(fn(mean) [..., D], scale * |det J|^(1/D) [...])``: the scale of an isotropic Gaussian whose
    volume matches the linearised one's. As camp_zipnerf's ``coord.track_isotropic``, with the
    determinant floored at the smallest normal float so its root has a finite gradient at 0.
    """
    assert mean.ndim >= 1, f"mean must be [..., D], got {tuple(mean.shape)}"
    assert scale.shape == mean.shape[:-1], f"scale must be {tuple(mean.shape[:-1])}, got {tuple(scale.shape)}"
    d = mean.shape[-1]
    flat = mean.reshape(-1, d)
    jac = torch.func.vmap(torch.func.jacrev(fn))(flat)  # [M, D, D]
    det = torch.clamp(torch.linalg.det(jac).abs(), min=torch.finfo(mean.dtype).tiny)
    factor = det ** (1.0 / d)
    return fn(mean), scale * factor.reshape(scale.shape)
