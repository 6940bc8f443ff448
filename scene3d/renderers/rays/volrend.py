"""Volume rendering of samples along rays (the emission-absorption model of NeRF).

Ray i crosses intervals ``[t_k, t_k + delta_k]`` of constant density ``sigma_k`` and colour
``c_k``. The opacity of an interval, the transmittance before it and its weight are

    alpha_k = 1 - exp(-sigma_k delta_k),
    T_k = prod_{j<k} (1 - alpha_j) = exp(-sum_{j<k} sigma_j delta_j),
    w_k = T_k alpha_k,

and the ray's colour, opacity and expected depth are

    rgb = sum_k w_k c_k + (1 - alpha) bg,    alpha = sum_k w_k,
    depth = sum_k w_k (t_k + t_k + delta_k) / 2 / max(alpha, 1e-10).

Two implementations with one signature: :func:`volume_render` calls nerfacc's batched
``render_weight_from_density`` and ``accumulate_along_rays`` (plain PyTorch inside, so it runs on
any device; nerfacc is imported on first use), :func:`volume_render_reference` writes the
equations above with an exclusive cumulative product. Tests compare values and gradients.
"""

from __future__ import annotations

import functools
import logging
from typing import Literal, Optional

import torch
from torch import Tensor

log = logging.getLogger(__name__)

RenderBackend = Literal["auto", "nerfacc", "torch"]
DEPTH_EPS = 1e-10


@functools.cache
def nerfacc_available() -> bool:
    try:
        import nerfacc  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache
def _announce(choice: str, reason: str) -> None:
    log.info("volume rendering backend: %s (%s)", choice, reason)


def resolve_backend(backend: RenderBackend) -> str:
    """The backend "auto" stands for (nerfacc when it imports, else torch), or ``backend`` once checked."""
    if backend == "auto":
        choice, reason = ("nerfacc", "installed") if nerfacc_available() else ("torch", "nerfacc not installed")
        _announce(choice, reason)
        return choice
    if backend == "nerfacc" and not nerfacc_available():
        raise RuntimeError("backend='nerfacc' needs nerfacc: pip install nerfacc==0.5.3")
    if backend not in ("nerfacc", "torch"):
        raise ValueError(f"unknown volume rendering backend {backend!r}; choose auto, nerfacc or torch")
    return backend


def _check(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, rgbs: Tensor, background: Optional[Tensor]) -> None:
    assert t_starts.ndim == 2, f"t_starts must be [N, S], got {tuple(t_starts.shape)}"
    n, s = t_starts.shape
    assert t_ends.shape == (n, s), f"t_ends must be [{n}, {s}], got {tuple(t_ends.shape)}"
    assert sigmas.shape == (n, s), f"sigmas must be [{n}, {s}], got {tuple(sigmas.shape)}"
    assert rgbs.ndim == 3 and rgbs.shape[:2] == (n, s), f"rgbs must be [{n}, {s}, C], got {tuple(rgbs.shape)}"
    if background is not None:
        c = rgbs.shape[2]
        assert background.shape in ((c,), (n, c)), f"background must be [{c}] or [{n}, {c}], got {tuple(background.shape)}"


def _finish(
    rgb: Tensor, alpha: Tensor, depth_sum: Tensor, background: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    depth = depth_sum / torch.clamp(alpha, min=DEPTH_EPS)
    if background is not None:
        rgb = rgb + (1.0 - alpha) * background.to(rgb)
    return rgb, depth


def volume_render(
    t_starts: Tensor,  # [N, S]
    t_ends: Tensor,  # [N, S]
    sigmas: Tensor,  # [N, S] densities (>= 0)
    rgbs: Tensor,  # [N, S, C] colours (C = 3 for RGB)
    background: Optional[Tensor] = None,  # [C] or [N, C]; None: nothing behind (black)
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Composites samples along rays with nerfacc.

    Returns:
        rgb [N, C], alpha [N, 1], depth [N, 1], weights [N, S]; differentiable w.r.t. ``sigmas``,
        ``rgbs`` and ``background`` (not the interval bounds).
    """
    _check(t_starts, t_ends, sigmas, rgbs, background)
    from nerfacc import accumulate_along_rays, render_weight_from_density

    weights, _, _ = render_weight_from_density(t_starts, t_ends, sigmas)
    rgb = accumulate_along_rays(weights, rgbs)
    alpha = accumulate_along_rays(weights, None)
    depth_sum = accumulate_along_rays(weights, (0.5 * (t_starts + t_ends))[..., None])
    rgb, depth = _finish(rgb, alpha, depth_sum, background)
    return rgb, alpha, depth, weights


def volume_render_reference(
    t_starts: Tensor,  # [N, S]
    t_ends: Tensor,  # [N, S]
    sigmas: Tensor,  # [N, S]
    rgbs: Tensor,  # [N, S, C]
    background: Optional[Tensor] = None,  # [C] or [N, C]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The PyTorch twin of :func:`volume_render`: the equations of the module docstring."""
    _check(t_starts, t_ends, sigmas, rgbs, background)
    alphas = 1.0 - torch.exp(-sigmas * (t_ends - t_starts))
    survive = torch.cat([torch.ones_like(alphas[:, :1]), 1.0 - alphas[:, :-1]], dim=1)
    trans = torch.cumprod(survive, dim=1)
    weights = trans * alphas
    rgb = (weights[..., None] * rgbs).sum(dim=1)
    alpha = weights.sum(dim=1, keepdim=True)
    depth_sum = (weights * 0.5 * (t_starts + t_ends)).sum(dim=1, keepdim=True)
    rgb, depth = _finish(rgb, alpha, depth_sum, background)
    return rgb, alpha, depth, weights


def volume_render_fn(backend: RenderBackend = "auto"):
    """:func:`volume_render` or :func:`volume_render_reference` as ``backend`` says."""
    return volume_render if resolve_backend(backend) == "nerfacc" else volume_render_reference
