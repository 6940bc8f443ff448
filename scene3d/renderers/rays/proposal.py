"""Zip-NeRF's proposal resampling and losses, model-free (camp_zipnerf's ``models.Model.__call__``
sampling loop and ``loss_utils``), in plain PyTorch.

The model owns the loop: every ray starts as one interval ``sdist = [0, 1]`` with weight 1; each
round turns the previous level's histogram (sdist [N, S+1], weights [N, S]) into new intervals
with :func:`resample_intervals` (64, 64, then 32 in Zip-NeRF), maps them to metric distances with
a :class:`~scene3d.renderers.rays.stepfun.RayWarp`, multisamples them
(:func:`~scene3d.renderers.rays.multisample.hexify`), queries that level's field and volume-renders
the new weights. Sampling is annealed, ``w^anneal`` with ``anneal = schlick_bias(train_frac, 10)``
(near 0 early: nearly uniform over the non-empty intervals; 1 at the end), and carries no gradient.

Losses:
- :func:`interlevel_loss`: each proposal histogram must bound the NeRF histogram blurred by a box
  of half-width 0.03 (first proposal) or 0.003 (second) in s, weight 0.01
  (camp_zipnerf's ``loss_utils.spline_interlevel_loss``);
- :func:`distortion_loss`: mip-NeRF 360's distortion on the NeRF level, computed on a curved
  distance ``power_ladder(t, p=-0.25, premult=1e4) = 5 (1 - (1 + 8000 t)^-0.25)``, weight 0.01
  (camp_zipnerf's ``loss_utils.distortion_loss`` with 360.gin's ``distortion_loss_target='tdist'``
  and ``distortion_loss_curve_fn``);
- :func:`charbonnier_loss`: the data term ``mean(sqrt((x - y)^2 + 1e-3^2))``.

Why not nerfacc's ``PropNetEstimator`` (nerfacc 0.5, ``estimators/prop_net.py``): it provides the
loop driver (calling the proposal density functions, inverse-CDF sampling in a CUDA kernel with
one jitter per ray, the s -> t map and a gradient-update schedule for the proposals) and an
interlevel loss. But it samples interval *edges* from each CDF, not Zip-NeRF's centres-then-
midpoints; its s -> t maps are only uniform or 1/t (so near must be > 0, not Zip-NeRF's power
ladder with near = 0); its loss is mip-NeRF 360's unblurred outer-bound loss, not the
anti-aliased blurred one; it has no annealing; and distortion and multisampling are left to the
caller. Only the CDF inversion would be shared, and here it is a few lines of ``searchsorted``
that run on CPU as well, so these functions do without it.

Units: s is normalised distance in [0, 1]; t is distance along the ray direction (scene units for
unit directions, as :class:`~scene3d.renderers.rays.pixels.Rays` has them). camp_zipnerf's t is
measured along the unnormalised pinhole direction (z-depth, |d| >= 1), so with the same near/far
its spacing and its curved distortion see t scaled by |d| (about 1 at the image centre, up to
roughly 1.2-1.4 in the corners of common fields of view).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from scene3d.metrics import weighted_mean
from scene3d.renderers.rays.sampling import RaySamples
from scene3d.renderers.rays.stepfun import (
    F32_EPS,
    PowerLadder,
    Spacing,
    check_stepfun,
    blur_and_resample_weights,
    lossfun_distortion,
    sample_intervals,
)

ANNEAL_SLOPE = 10.0
"""camp_zipnerf's ``Model.anneal_slope``."""
INTERLEVEL_BLURS = (0.03, 0.003)
"""Pulse half-widths (in s) of the interlevel loss, one per proposal level (``spline_interlevel_params``)."""
INTERLEVEL_MULT = 0.01
DISTORTION_MULT = 0.01
DISTORTION_CURVE = PowerLadder(p=-0.25, premult=1e4)
"""The curve distortion is measured in: ``5 (1 - (1 + 8000 t)^-0.25)`` (t in scene units)."""
CHARBONNIER_EPS = 1e-3


def train_fraction(step: int, max_steps: int) -> float:
    """camp_zipnerf's ``train_frac``: ``clip((step - 1)/(max_steps - 1), 0, 1)`` (steps count from 1)."""
    assert max_steps >= 2, f"max_steps must be >= 2, got {max_steps}"
    return min(max((step - 1) / (max_steps - 1), 0.0), 1.0)


def schlick_bias(x: float, slope: float = ANNEAL_SLOPE) -> float:
    """Schlick's bias ``s x / ((s - 1) x + 1)`` on [0, 1]: 0 -> 0, 1 -> 1, slope s at 0 (fast rise)."""
    return slope * x / ((slope - 1.0) * x + 1.0)


def resampling_logits(sdist: Tensor, weights: Tensor, anneal: float = 1.0, padding: float = 0.0) -> Tensor:
    """Logits [N, S] of the annealed histogram ``(w + padding)^anneal`` of ``weights`` [N, S] on
    ``sdist`` [N, S+1]: ``anneal log(max(w + padding, tiny))``, and -inf for empty intervals
    (s_k+1 <= s_k) so they are never sampled. The floor keeps ``anneal = 0`` from giving 0 * -inf."""
    check_stepfun(sdist, weights, "sdist", "weights")
    tiny = torch.finfo(weights.dtype).tiny
    logits = anneal * torch.log(torch.clamp(weights + padding, min=tiny))
    return torch.where(sdist[:, 1:] > sdist[:, :-1], logits, torch.full_like(logits, -torch.inf))


def resample_intervals(
    sdist: Tensor,  # [N, S+1] previous level's normalised edges
    weights: Tensor,  # [N, S] previous level's weights
    num_samples: int,
    *,
    anneal: float = 1.0,
    stratified: bool = False,
    generator: Optional[torch.Generator] = None,
    padding: float = 0.0,
) -> Tensor:
    """One proposal round: new normalised edges [N, n+1] in [0, 1], without gradient.

    Samples n interval centres from ``(weights + padding)^anneal`` (:func:`resampling_logits`)
    and builds n intervals around them (:func:`~scene3d.renderers.rays.stepfun.sample_intervals`,
    single jitter per ray when ``stratified``, centres of equal-mass slices otherwise).
    """
    check_stepfun(sdist, weights, "sdist", "weights")
    with torch.no_grad():
        logits = resampling_logits(sdist.detach(), weights.detach(), anneal, padding)
        return sample_intervals(sdist.detach(), logits, num_samples, stratified=stratified, generator=generator, domain=(0.0, 1.0))


def initial_sdist(n_rays: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """The histogram every ray starts from: sdist [N, 2] = [0, 1] and weights [N, 1] = 1."""
    return torch.tensor([0.0, 1.0], device=device, dtype=dtype).repeat(n_rays, 1), torch.ones(n_rays, 1, device=device, dtype=dtype)


def ray_samples(tdist: Tensor, sdist: Tensor) -> RaySamples:
    """The intervals of ``tdist`` [N, S+1] as :class:`RaySamples` (all valid; empty ones render
    transparent), with ``extras['sdist']`` for the losses."""
    assert tdist.ndim == 2 and sdist.shape == tdist.shape, f"tdist and sdist must both be [N, S+1], got {tuple(tdist.shape)}, {tuple(sdist.shape)}"
    starts, ends = tdist[:, :-1].contiguous(), tdist[:, 1:].contiguous()
    valid = torch.ones(starts.shape, dtype=torch.bool, device=tdist.device)
    return RaySamples(starts, ends, valid, extras={"sdist": sdist})


def interlevel_loss(
    sdist: Tensor,  # [N, S+1] NeRF level
    weights: Tensor,  # [N, S] NeRF level (no gradient flows into it)
    prop_sdist: Tensor,  # [N, P+1] proposal level
    prop_weights: Tensor,  # [N, P] proposal level
    blur_halfwidth: float,
    mult: float = INTERLEVEL_MULT,
) -> Tensor:
    """The anti-aliased interlevel loss of one proposal level (scalar), as camp_zipnerf's
    ``loss_utils.spline_interlevel_loss``.

    The NeRF histogram (stop-gradient) is blurred by a box of half-width ``blur_halfwidth`` (in s)
    and resampled onto the proposal edges (:func:`~scene3d.renderers.rays.stepfun.blur_and_resample_weights`),
    giving ``w_blur`` [N, P]; wherever the proposal weight falls short of it the loss grows:

        mult * mean over rays and intervals of max(0, w_blur - wp)^2 / (wp + eps),    eps = 1.19e-7.

    It is 0 when the proposal bounds the blurred NeRF mass in every interval; gradients reach
    ``prop_weights`` only.
    """
    check_stepfun(sdist, weights, "sdist", "weights")
    check_stepfun(prop_sdist, prop_weights, "prop_sdist", "prop_weights")
    assert prop_sdist.shape[0] == sdist.shape[0], f"both levels need the same rays, got {sdist.shape[0]} and {prop_sdist.shape[0]}"
    w_blur = blur_and_resample_weights(prop_sdist.detach(), sdist.detach(), weights.detach(), blur_halfwidth)
    shortfall = torch.clamp(w_blur - prop_weights, min=0.0)
    return mult * (shortfall * shortfall / (prop_weights + F32_EPS)).mean()


def interlevel_losses(
    sdist: Tensor,
    weights: Tensor,
    proposals: Sequence[tuple[Tensor, Tensor]],
    blurs: Sequence[float] = INTERLEVEL_BLURS,
    mult: float = INTERLEVEL_MULT,
) -> list[Tensor]:
    """:func:`interlevel_loss` for each proposal level ``(prop_sdist, prop_weights)``, in sampling
    order, with the half-widths ``blurs`` (one per level): a list of scalars to add to the loss."""
    assert len(blurs) == len(proposals), f"need one blur per proposal level, got {len(blurs)} for {len(proposals)}"
    return [interlevel_loss(sdist, weights, ps, pw, blur, mult) for (ps, pw), blur in zip(proposals, blurs)]


def distortion_loss(
    tdist: Tensor,  # [N, S+1] NeRF level, metric
    weights: Tensor,  # [N, S]
    curve: Optional[Spacing] = DISTORTION_CURVE,
    mult: float = DISTORTION_MULT,
) -> Tensor:
    """Zip-NeRF's distortion loss (scalar): ``mult * mean over rays of
    lossfun_distortion(curve(tdist), weights)``.

    With the default curve the edges are first mapped to ``c = 5 (1 - (1 + 8000 t)^-0.25)``
    (power ladder p = -0.25, premult 1e4; steep near the camera, bounded by 5), and mip-NeRF 360's
    ``sum_ij w_i w_j |c_mid_i - c_mid_j| + (1/3) sum_i w_i^2 (c_i+1 - c_i)`` is taken in c. ``curve=None``
    measures in t directly; passing sdist with ``curve=None`` gives mip-NeRF 360's original loss.
    Gradients reach ``weights`` (and ``tdist`` if it has any).
    """
    check_stepfun(tdist, weights, "tdist", "weights")
    c = tdist if curve is None else curve(tdist)
    return mult * lossfun_distortion(c, weights).mean()


def charbonnier_loss(pred: Tensor, target: Tensor, eps: float = CHARBONNIER_EPS, weights: Tensor | None = None) -> Tensor:
    """``mean(sqrt((pred - target)^2 + eps^2))`` over all elements (camp_zipnerf's ``'charb'`` data
    loss, ``charb_padding = 0.001``): L1-like for large errors, smooth at 0. ``weights`` [N] (one per
    row): the weighted mean over rows instead (multiscale data)."""
    assert pred.shape == target.shape, f"pred and target must have the same shape, got {tuple(pred.shape)}, {tuple(target.shape)}"
    diff = pred - target
    return weighted_mean(torch.sqrt(diff * diff + eps * eps), weights)
