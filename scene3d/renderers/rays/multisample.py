"""Zip-NeRF's hexagonal multisampling of conical frustums (camp_zipnerf's ``coord.hexify``, reached
through ``coord.compute_control_points`` with ``unscented_mip_basis='hexify'``).

A pixel's cone around ray ``o + t d`` has radius ``r t`` at parameter t (``r`` = :class:`Rays`'
``radii``). Each interval [t0, t1] of the cone (a conical frustum, its volume density growing as
t^2) is replaced by 6 points whose statistics match the frustum's:

- along the ray, with ``mu = (t0 + t1)/2`` and ``dl = (t1 - t0)/2``, point j = 0..5 sits at

      t_j = t0 + dl / (dl^2 + 3 mu^2) * (t1^2 + 2 mu^2 + (3/sqrt 7)(2j/5 - 1) sqrt((dl^2 - mu^2)^2 + 4 mu^4)).

  The factors (2j/5 - 1) are symmetric about 0 with mean square 7/15, so the t_j have the mean
  ``mu + 2 mu dl^2 / (3 mu^2 + dl^2)`` and the (population) variance
  ``(3/5) dl^2 ((dl^2 - mu^2)^2 + 4 mu^4) / (dl^2 + 3 mu^2)^2``: the first two moments of t over
  the frustum (mip-NeRF's mean and axial variance).
- across the ray, point j is at distance ``sqrt(1/2) r t_j`` from the axis (the root mean square
  radius of the disc of radius ``r t_j``), at angle ``theta_j`` in the plane spanned by
  :func:`perp_basis`, with ``theta = (pi/3) [0, 2, 4, 3, 5, 1]``. With this order the angles pair
  up so that the 6 points' mean lies on the axis whatever the radii (sum_j (a + b j) e^{i theta_j} = 0),
  and their mean squared distance from the axis, ``(r^2/2) mean_j t_j^2``, is the frustum's
  ``(r^2/2) E[t^2]``. Their covariance across the ray is isotropic only when the radii are equal:
  over a thick interval it is mildly anisotropic (eigenvalue ratio about 1.16 for [1, 1.5], 1.39
  for [0, 1], 1.004 for [1, 1.01]).
  Training (``stratified``) reverses the order of the 6 angles with probability 1/2 and adds a
  uniform rotation in [0, 2 pi), independently per interval; eval reverses every other interval
  (odd k) and rotates it by pi/6, deterministically.

Each point also gets the scale (standard deviation, scene units) of the Gaussian it stands for,
``sigma_j = 0.5 sqrt(1/2) r t_j`` (camp_zipnerf's ``MLP.unscented_scale_mult = 0.5`` times the
radial offset). It is the scale before the scene contraction; the caller multiplies it by
:func:`~scene3d.renderers.rays.contraction.contract_iso_scale` of the point.

t is measured along ``dirs`` (scene units when they are unit vectors, as :class:`Rays`' are); the
radial offset is ``sqrt(1/2) r t_j`` in scene units whatever |d|, as in camp_zipnerf.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

HEX_ANGLES = tuple(math.pi / 3.0 * k for k in (0, 2, 4, 3, 5, 1))
"""The 6 base angles (radians) of the hexagonal pattern, in camp_zipnerf's order."""

SCALE_MULT = 0.5
"""camp_zipnerf's ``MLP.unscented_scale_mult``: a multisample's scale is this times its radial offset."""


def perp_basis(dirs: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit vectors [N, 3] perpendicular to ``dirs`` [N, 3] and to each other (camp_zipnerf's
    ``coord.construct_perp_basis``): ``b1 = normalize(d x z)``, where z = (0, 0, 1), or
    ``normalize(d x (1, 1, 1))`` when every component of d x z is below float32 epsilon (d nearly
    along z), and ``b2 = normalize(d x b1)``; (b1, b2, d) is right-handed."""
    assert dirs.ndim == 2 and dirs.shape[1] == 3, f"dirs must be [N, 3], got {tuple(dirs.shape)}"
    cross_z = torch.cross(dirs, dirs.new_tensor([0.0, 0.0, 1.0]).expand_as(dirs), dim=-1)
    cross_1 = torch.cross(dirs, dirs.new_tensor([1.0, 1.0, 1.0]).expand_as(dirs), dim=-1)
    degenerate = (cross_z.abs() < torch.finfo(torch.float32).eps).all(dim=-1, keepdim=True)
    b1 = torch.nn.functional.normalize(torch.where(degenerate, cross_1, cross_z), dim=-1)
    b2 = torch.nn.functional.normalize(torch.cross(dirs, b1, dim=-1), dim=-1)
    return b1, b2


def hex_distances(tdist: Tensor) -> Tensor:
    """The 6 distances t_j [N, S, 6] along the ray of each interval of ``tdist`` [N, S+1] (the
    formula of the module docstring, increasing in j). Zero-width intervals at t = 0 give t_j = 0."""
    assert tdist.ndim == 2 and tdist.shape[1] >= 2, f"tdist must be [N, S+1] with S >= 1, got {tuple(tdist.shape)}"
    t0, t1 = tdist[:, :-1, None], tdist[:, 1:, None]
    mu = 0.5 * (t0 + t1)
    dl = 0.5 * (t1 - t0)
    tiny = torch.finfo(tdist.dtype).tiny
    step = torch.arange(6, device=tdist.device, dtype=tdist.dtype) * 0.4 - 1.0
    spread = torch.sqrt(torch.clamp((dl * dl - mu * mu) ** 2 + 4.0 * mu**4, min=tiny))
    scale = dl / torch.clamp(dl * dl + 3.0 * mu * mu, min=tiny)
    return t0 + scale * (t1 * t1 + 2.0 * mu * mu + (3.0 / math.sqrt(7.0)) * step * spread)


def hex_angles(
    n_rays: int,
    n_intervals: int,
    *,
    stratified: bool = False,
    generator: Optional[torch.Generator] = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The angles [N, S, 6] (radians, not wrapped to [0, 2 pi)) of the 6 multisamples of each
    interval: :data:`HEX_ANGLES`, reversed and rotated per interval as the module docstring says.
    ``stratified`` draws flips then rotations from ``generator`` (on its device), [N, S] each."""
    base = torch.tensor(HEX_ANGLES, device=device, dtype=dtype).expand(n_rays, n_intervals, 6)
    if stratified:
        gen_device = generator.device if generator is not None else device
        flip = torch.rand(n_rays, n_intervals, generator=generator, device=gen_device) < 0.5
        turn = torch.rand(n_rays, n_intervals, generator=generator, device=gen_device) * (2.0 * math.pi)
        flip, turn = flip.to(device), turn.to(device=device, dtype=dtype)
    else:
        flip = (torch.arange(n_intervals, device=device) % 2 == 1).expand(n_rays, n_intervals)
        turn = flip.to(dtype) * (math.pi / 6.0)
    return torch.where(flip[..., None], base.flip(-1), base) + turn[..., None]


def hexify(
    origins: Tensor,  # [N, 3]
    dirs: Tensor,  # [N, 3]
    radii: Tensor,  # [N] cone radius per unit t
    tdist: Tensor,  # [N, S+1] sorted interval edges (metric)
    *,
    stratified: bool = False,
    generator: Optional[torch.Generator] = None,
) -> tuple[Tensor, Tensor]:
    """The 6 hexagonal multisamples of every interval of every ray (see the module docstring).

    Returns:
        points [N, S, 6, 3]: ``o + t_j d + sqrt(1/2) r t_j (cos(theta_j) b1 + sin(theta_j) b2)``;
        scales [N, S, 6]: ``0.5 sqrt(1/2) r t_j`` (scene units, before contraction).
    Differentiable w.r.t. origins, dirs, radii and tdist (Zip-NeRF's tdist carries no gradient).
    """
    n = origins.shape[0]
    assert origins.shape == (n, 3) and dirs.shape == (n, 3), f"origins and dirs must be [N, 3], got {tuple(origins.shape)}, {tuple(dirs.shape)}"
    assert radii.shape == (n,), f"radii must be [{n}], got {tuple(radii.shape)}"
    assert tdist.ndim == 2 and tdist.shape[0] == n and tdist.shape[1] >= 2, f"tdist must be [{n}, S+1] with S >= 1, got {tuple(tdist.shape)}"
    t = hex_distances(tdist)  # [N, S, 6]
    theta = hex_angles(n, t.shape[1], stratified=stratified, generator=generator, device=tdist.device, dtype=tdist.dtype)
    offset = math.sqrt(0.5) * radii[:, None, None] * t
    b1, b2 = perp_basis(dirs)
    cx, cy = offset * torch.cos(theta), offset * torch.sin(theta)
    points = (
        origins[:, None, None, :]
        + dirs[:, None, None, :] * t[..., None]
        + b1[:, None, None, :] * cx[..., None]
        + b2[:, None, None, :] * cy[..., None]
    )
    return points, SCALE_MULT * offset
