"""Step functions along rays: spacing of normalised distance, histogram sampling, blurring, distortion.

A ray's samples are a step function: sorted edges ``t`` [N, S+1] and per-interval weights
``w`` [N, S] (the volume-rendering weights, summing to <= 1 on each ray). Edges are either metric
distances ``tdist`` (scene units along the ray direction) or normalised distances ``sdist`` in
[0, 1]; Zip-NeRF samples, blurs and compares histograms in s and renders in t.

Normalised distance (mip-NeRF 360 Eq. 11, camp_zipnerf's ``coord.construct_ray_warps``): with a
monotone spacing function g,

    s(t) = (g(t) - g(near)) / (g(far) - g(near)),     t(s) = g^-1(s g(far) + (1 - s) g(near)),

both clipped to [near, far]. Zip-NeRF's g is the power ladder with p = -1.5, premult = 2 (camp_zipnerf's
``math.power_ladder``)

    g(x) = sign(x) |p-1|/p ((|premult x| / |p-1| + 1)^p - 1),

which for those values is ``g(t) = (5/3)(1 - (1 + 0.8 t)^-1.5)``: slope 2 at 0 (linear near the
camera), bounded by 5/3 (so far = 1e6 is practical). With no spacing function (Blender,
``raydist_fn = None``) s is linear in t.

Sampling a histogram (camp_zipnerf's ``stepfun.sample`` / ``sample_intervals``): the CDF of the
weights is piecewise linear in s; its inverse at n sorted numbers u in [0, 1) gives n interval
*centres*, and the edges are the midpoints between neighbouring centres with the first and last
edge reflected about the first and last centre, clipped to a domain: n samples, n intervals.

All step functions are batched 2-D: [N, S+1] edges and [N, S] values, on any device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Protocol

import torch
from torch import Tensor

F32_EPS = float(torch.finfo(torch.float32).eps)
"""camp_zipnerf's ``eps`` for interlevel-loss denominators and sampling pads (about 1.19e-7)."""


def check_stepfun(t: Tensor, v: Tensor, t_name: str = "t", v_name: str = "w") -> None:
    assert t.ndim == 2, f"{t_name} must be [N, S+1], got {tuple(t.shape)}"
    assert v.ndim == 2 and v.shape[0] == t.shape[0] and v.shape[1] + 1 == t.shape[1], (
        f"{v_name} must be [{t.shape[0]}, {t.shape[1] - 1}] for {t_name} of shape {tuple(t.shape)}, got {tuple(v.shape)}"
    )


# --------------------------------------------------------------------------------------------
# Power ladder and ray warps


def _sign_one(x: Tensor) -> Tensor:
    """+1 for x >= 0, -1 below: a sign without a zero, so ``x * _sign_one(x)`` has slope 1 at 0."""
    return torch.where(x < 0, -torch.ones_like(x), torch.ones_like(x))


def power_ladder(x: Tensor, p: float = -1.5, premult: float = 1.0) -> Tensor:
    """Tukey's power ladder with a +1, as camp_zipnerf's ``math.power_ladder`` (elementwise).

    ``g(x) = sign(x) |p-1|/p ((|x premult|/|p-1| + 1)^p - 1)``; its slope at 0 is ``premult``.
    Limits: p = 1 is ``x premult``, p = 0 is ``sign(x) log1p(|x premult|)``, p = -inf is
    ``sign(x) (1 - exp(-|x premult|))``, p = +inf is ``sign(x) expm1(|x premult|)``. For p < 0 the
    output is bounded by ``(1 - p)/(-p)`` (:func:`power_ladder_max_output`).
    """
    x = x * premult
    sign = _sign_one(x)
    xs = x * sign  # |x| with slope 1 at 0
    if p == 1:
        y = xs
    elif p == 0:
        y = torch.log1p(xs)
    elif p == -math.inf:
        y = -torch.expm1(-xs)
    elif p == math.inf:
        y = torch.expm1(xs)
    else:
        q = abs(p - 1.0)
        y = (q / p) * ((xs / q + 1.0) ** p - 1.0)
    return sign * y


def power_ladder_max_output(p: float) -> float:
    """``sup_x power_ladder(x, p)``: ``(p - 1)/p`` for p < 0 (1 for p = -inf), inf for p >= 0."""
    if p >= 0:
        return math.inf
    if p == -math.inf:
        return 1.0
    return (p - 1.0) / p


def inv_power_ladder(y: Tensor, p: float = -1.5, premult: float = 1.0) -> Tensor:
    """The inverse of :func:`power_ladder` (camp_zipnerf's ``math.inv_power_ladder``), elementwise.

    ``x = sign(y) |p-1| ((p/|p-1| |y| + 1)^(1/p) - 1) / premult``. For p < 0, |y| is first clipped
    to just below the bound :func:`power_ladder_max_output` (the inverse is infinite there), so
    every input maps to a finite x.
    """
    sign = _sign_one(y)
    ys = y * sign
    y_max = power_ladder_max_output(p)
    if math.isfinite(y_max):
        below = torch.nextafter(torch.tensor(y_max, dtype=y.dtype), torch.tensor(0.0, dtype=y.dtype))
        ys = torch.clamp(ys, max=float(below))
    if p == 1:
        x = ys
    elif p == 0:
        x = torch.expm1(ys)
    elif p == -math.inf:
        x = -torch.log1p(-ys)
    elif p == math.inf:
        x = torch.log1p(ys)
    else:
        q = abs(p - 1.0)
        x = q * ((p / q * ys + 1.0) ** (1.0 / p) - 1.0)
    return sign * x / premult


class Spacing(Protocol):
    """A monotone increasing spacing function g of ray distance and its inverse."""

    def __call__(self, t: Tensor) -> Tensor: ...

    def inverse(self, y: Tensor) -> Tensor: ...


@dataclass(frozen=True)
class PowerLadder:
    """:func:`power_ladder` with fixed ``p`` and ``premult`` (a :class:`Spacing`). The defaults are
    Zip-NeRF's ray spacing for unbounded scenes (``Model.raydist_fn`` in 360.gin)."""

    p: float = -1.5
    premult: float = 2.0

    def __call__(self, t: Tensor) -> Tensor:
        return power_ladder(t, self.p, self.premult)

    def inverse(self, y: Tensor) -> Tensor:
        return inv_power_ladder(y, self.p, self.premult)


@dataclass(frozen=True)
class RayWarp:
    """The bijection between metric distance t in [near, far] and normalised distance s in [0, 1]
    (see the module docstring); build it with :func:`construct_ray_warps`.

    ``near`` and ``far`` are [N, 1] (one per ray) or [1, 1]; ``t_to_s`` and ``s_to_t`` take
    [N, K] (or anything broadcasting against them) and return the same shape and dtype. The
    arithmetic runs in float64, so s = 1 maps to ``far`` even for far = 1e6 with float32 inputs.
    """

    near: Tensor
    far: Tensor
    spacing: Optional[Spacing]

    def _g(self, t: Tensor) -> Tensor:
        return t if self.spacing is None else self.spacing(t)

    def _g_inv(self, y: Tensor) -> Tensor:
        return y if self.spacing is None else self.spacing.inverse(y)

    def t_to_s(self, t: Tensor) -> Tensor:
        """Metric distances [N, K] -> normalised distances [N, K] in [0, 1]."""
        near, far = self.near.to(t.device), self.far.to(t.device)
        g_near, g_far = self._g(near), self._g(far)
        t64 = torch.minimum(torch.maximum(t.double(), near), far)
        return ((self._g(t64) - g_near) / (g_far - g_near)).to(t.dtype)

    def s_to_t(self, s: Tensor) -> Tensor:
        """Normalised distances [N, K] -> metric distances [N, K] in [near, far]."""
        near, far = self.near.to(s.device), self.far.to(s.device)
        g_near, g_far = self._g(near), self._g(far)
        s64 = s.double()
        t64 = self._g_inv(s64 * g_far + (1.0 - s64) * g_near)
        return torch.minimum(torch.maximum(t64, near), far).to(s.dtype)


def construct_ray_warps(near: Tensor | float, far: Tensor | float, spacing: Optional[Spacing] = PowerLadder()) -> RayWarp:
    """The s <-> t maps between ``near`` and ``far`` ([N] per ray, or one float each), as
    camp_zipnerf's ``coord.construct_ray_warps``. ``spacing=None`` makes s linear in t (Zip-NeRF's
    Blender setting); the default is the power ladder p = -1.5, premult = 2 (its 360 setting,
    used with near = 0, far = 1e6)."""
    device = near.device if isinstance(near, Tensor) else far.device if isinstance(far, Tensor) else None
    near_t = torch.as_tensor(near, dtype=torch.float64, device=device)
    far_t = torch.as_tensor(far, dtype=torch.float64, device=device)
    assert near_t.ndim <= 1 and far_t.ndim <= 1, f"near and far must be [N] or scalars, got {tuple(near_t.shape)}, {tuple(far_t.shape)}"
    near_t, far_t = torch.broadcast_tensors(near_t.reshape(-1, 1), far_t.reshape(-1, 1))
    assert bool((far_t > near_t).all()), "far must exceed near on every ray"
    return RayWarp(near_t, far_t, spacing)


# --------------------------------------------------------------------------------------------
# Histograms: pdf, cdf, inversion and sampling


def weight_to_pdf(t: Tensor, w: Tensor) -> Tensor:
    """Weights [N, S] per interval of edges ``t`` [N, S+1] -> densities [N, S] (w / width; 0 for
    intervals narrower than the smallest normal float), as camp_zipnerf's ``stepfun.weight_to_pdf``."""
    check_stepfun(t, w)
    dt = t.diff(dim=-1)
    tiny = torch.finfo(dt.dtype).tiny
    return torch.where(dt < tiny, torch.zeros_like(w), w / torch.clamp(dt, min=tiny))


def integrate_weights(w: Tensor) -> Tensor:
    """Weights [N, S] (summing to 1) -> CDF at the edges [N, S+1]: 0 first, exactly 1 last, the
    running sums in between capped at 1 (camp_zipnerf's ``stepfun.integrate_weights``)."""
    assert w.ndim == 2, f"w must be [N, S], got {tuple(w.shape)}"
    inner = torch.clamp(torch.cumsum(w[:, :-1], dim=-1), max=1.0)
    return torch.cat([torch.zeros_like(w[:, :1]), inner, torch.ones_like(w[:, :1])], dim=-1)


def sorted_interp(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear interpolation per row: ``x`` [N, K] into the sorted knots ``xp`` [N, M] with
    values ``fp`` [N, M]. Outside [xp_0, xp_M-1] the end values repeat; where knots repeat (a flat
    CDF over empty bins) the last of the equal knots is used, so empty intervals are skipped."""
    assert x.ndim == 2 and xp.ndim == 2 and xp.shape == fp.shape and x.shape[0] == xp.shape[0], (
        f"x [N, K], xp and fp [N, M] expected, got {tuple(x.shape)}, {tuple(xp.shape)}, {tuple(fp.shape)}"
    )
    m = xp.shape[1]
    idx = torch.searchsorted(xp.contiguous(), x.contiguous(), right=True)
    i0 = torch.clamp(idx - 1, min=0)
    i1 = torch.clamp(idx, max=m - 1)
    x0, x1 = xp.gather(1, i0), xp.gather(1, i1)
    f0, f1 = fp.gather(1, i0), fp.gather(1, i1)
    frac = torch.clamp((x - x0) / torch.clamp(x1 - x0, min=F32_EPS**2), 0.0, 1.0)
    return f0 + frac * (f1 - f0)


def invert_cdf(u: Tensor, t: Tensor, w_logits: Tensor) -> Tensor:
    """Positions [N, K] where the CDF of the histogram (``t`` [N, S+1], weights
    ``softmax(w_logits)`` [N, S]) reaches ``u`` [N, K] in [0, 1) (camp_zipnerf's ``stepfun.invert_cdf``)."""
    check_stepfun(t, w_logits, v_name="w_logits")
    cw = integrate_weights(torch.softmax(w_logits, dim=-1))
    return sorted_interp(u, cw, t)


def sample(
    t: Tensor,  # [N, S+1] sorted edges
    w_logits: Tensor,  # [N, S] logits of the interval weights
    num_samples: int,
    *,
    stratified: bool = False,
    generator: Optional[torch.Generator] = None,
    single_jitter: bool = True,
    deterministic_center: bool = False,
) -> Tensor:
    """Draws ``num_samples`` positions [N, n] from a histogram by inverting its CDF, as
    camp_zipnerf's ``stepfun.sample``.

    The CDF is inverted at sorted numbers u in [0, 1):
    - ``stratified`` (training): ``u_k = k (1 - u_max)/(n - 1) + jitter``, k = 0..n-1, with
      ``u_max = eps + (1 - eps)/n`` and jitter uniform in [0, (1 - u_max)/(n - 1) - eps): one
      jitter per ray when ``single_jitter`` (the n draws stay evenly spaced), else one per sample.
      ``generator`` (its device is where the numbers are drawn) makes it reproducible.
    - otherwise (eval): evenly spaced u, ``linspace(1/(2n), 1 - 1/(2n) - eps, n)`` with
      ``deterministic_center`` (the centres of n equal-mass slices), else ``linspace(0, 1 - eps, n)``.
    ``eps`` is the machine epsilon of ``t``'s dtype.
    """
    check_stepfun(t, w_logits, v_name="w_logits")
    n_rays = t.shape[0]
    assert num_samples >= 1, f"num_samples must be >= 1, got {num_samples}"
    eps = float(torch.finfo(t.dtype).eps)
    if stratified:
        assert num_samples >= 2, f"stratified sampling needs num_samples >= 2, got {num_samples}"
        u_max = eps + (1.0 - eps) / num_samples
        max_jitter = (1.0 - u_max) / (num_samples - 1) - eps
        base = torch.linspace(0.0, 1.0 - u_max, num_samples, device=t.device, dtype=t.dtype)
        gen_device = generator.device if generator is not None else t.device
        jitter = torch.rand(n_rays, 1 if single_jitter else num_samples, generator=generator, device=gen_device)
        u = base + jitter.to(t) * max_jitter
    else:
        lo, hi = (0.5 / num_samples, 1.0 - 0.5 / num_samples - eps) if deterministic_center else (0.0, 1.0 - eps)
        u = torch.linspace(lo, hi, num_samples, device=t.device, dtype=t.dtype).expand(n_rays, num_samples)
    return invert_cdf(u, t, w_logits)


def sample_intervals(
    t: Tensor,  # [N, S+1]
    w_logits: Tensor,  # [N, S]
    num_samples: int,
    *,
    stratified: bool = False,
    generator: Optional[torch.Generator] = None,
    single_jitter: bool = True,
    domain: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """Draws ``num_samples`` intervals from a histogram: edges [N, n+1], sorted, inside ``domain``
    (camp_zipnerf's ``stepfun.sample_intervals``).

    Draws n centres c with :func:`sample` (``deterministic_center=True``), then takes as edges the
    midpoints ``(c_k + c_k+1)/2`` between neighbours, plus ``2 c_0 - mid_0`` in front and
    ``2 c_n-1 - mid_n-2`` behind (the outer midpoints reflected about the outer centres), all clipped
    to ``domain``. Clipped edges may coincide, giving empty intervals.
    """
    assert num_samples >= 2, f"num_samples must be >= 2, got {num_samples}"
    centres = sample(
        t, w_logits, num_samples, stratified=stratified, generator=generator,
        single_jitter=single_jitter, deterministic_center=True,
    )
    mid = 0.5 * (centres[:, 1:] + centres[:, :-1])
    first = 2.0 * centres[:, :1] - mid[:, :1]
    last = 2.0 * centres[:, -1:] - mid[:, -1:]
    return torch.clamp(torch.cat([first, mid, last], dim=-1), domain[0], domain[1])


# --------------------------------------------------------------------------------------------
# Blurring a histogram and resampling it onto other edges


def _cdf_integral(y: Tensor, t: Tensor, w: Tensor, cdf: Tensor, gk: Tensor) -> Tensor:
    """G(y) = integral from -inf to y of the histogram's CDF, at ``y`` [N, K] (see
    :func:`blur_and_resample_weights`); ``cdf`` and ``gk`` are C and G at the edges [N, S+1]."""
    s = w.shape[1]
    k = torch.clamp(torch.searchsorted(t.contiguous(), y.contiguous(), right=True) - 1, 0, s - 1)
    t0 = t.gather(1, k)
    dt = (t[:, 1:] - t[:, :-1]).gather(1, k)
    inside = torch.minimum(torch.clamp(y - t0, min=0.0), dt)
    ratio = inside / torch.clamp(dt, min=torch.finfo(dt.dtype).tiny)
    g = gk.gather(1, k) + cdf.gather(1, k) * inside + 0.5 * w.gather(1, k) * inside * ratio
    return g + cdf[:, -1:] * torch.clamp(y - t[:, -1:], min=0.0)


def blur_and_resample_weights(tq: Tensor, t: Tensor, w: Tensor, halfwidth: float) -> Tensor:
    """Blurs the histogram (``t`` [N, S+1], ``w`` [N, S]) with a box of half-width ``halfwidth``
    (units of t) and returns its mass in each interval of ``tq`` [N, Q+1]: [N, Q], >= 0
    (camp_zipnerf's ``stepfun.blur_and_resample_weights``).

    The histogram's density is a step function; convolved with the box ``1/(2r)`` on [-r, r] it is
    piecewise linear, and its integral is ``B(x) = (G(x + r) - G(x - r)) / (2r)``, where C is the
    histogram's piecewise-linear CDF and G its piecewise-quadratic integral,
    ``G(y) = G(t_k) + C(t_k)(y - t_k) + w_k (y - t_k)^2 / (2 (t_k+1 - t_k))`` on interval k (0 before
    t_0, growing with slope C(t_S) after t_S). The result is ``max(0, B(tq_j+1) - B(tq_j))``; r = 0
    resamples the unblurred histogram (B = C). Mass blurred outside [tq_0, tq_Q] is dropped.

    camp_zipnerf builds the blurred density's knots (``linspline.blur_stepfun``) and integrates
    them; this evaluates the same B in closed form, in float64 (the difference of two G's loses
    about log10(1/r) digits), and keeps the mass of zero-width intervals, which CAMP's pdf drops.
    Differentiable w.r.t. ``w``, ``t`` and ``tq``; the result has ``w``'s dtype.
    """
    check_stepfun(t, w)
    assert tq.ndim == 2 and tq.shape[0] == t.shape[0] and tq.shape[1] >= 2, (
        f"tq must be [{t.shape[0]}, Q+1] with Q >= 1, got {tuple(tq.shape)}"
    )
    assert halfwidth >= 0, f"halfwidth must be >= 0, got {halfwidth}"
    t64, w64, tq64 = t.double(), w.double(), tq.double()
    cdf = torch.cat([torch.zeros_like(w64[:, :1]), torch.cumsum(w64, dim=-1)], dim=-1)
    gk = torch.cat([torch.zeros_like(w64[:, :1]), torch.cumsum(t64.diff(dim=-1) * 0.5 * (cdf[:, :-1] + cdf[:, 1:]), dim=-1)], dim=-1)
    if halfwidth > 0:
        big_b = (_cdf_integral(tq64 + halfwidth, t64, w64, cdf, gk) - _cdf_integral(tq64 - halfwidth, t64, w64, cdf, gk)) / (2.0 * halfwidth)
    else:
        big_b = sorted_interp(tq64, t64, cdf)
    return torch.clamp(big_b.diff(dim=-1), min=0.0).to(w.dtype)


# --------------------------------------------------------------------------------------------
# Distortion


def lossfun_distortion(t: Tensor, w: Tensor) -> Tensor:
    """mip-NeRF 360's distortion of each ray's histogram (``t`` [N, S+1] sorted, ``w`` [N, S]) -> [N].

    ``L = sum_i sum_j w_i w_j |m_i - m_j| + (1/3) sum_i w_i^2 (t_i+1 - t_i)`` with m the interval
    midpoints: the double integral of ``w(x) w(y) |x - y|`` for the step function's weight spread
    uniformly over each interval (camp_zipnerf's ``stepfun.lossfun_distortion``). Because m is
    sorted, the double sum is computed in O(S) as ``2 sum_i w_i (m_i W_i - M_i)``, with W_i and M_i
    the sums of w_j and w_j m_j over j < i. Units: t (weights are dimensionless).
    """
    check_stepfun(t, w)
    m = 0.5 * (t[:, 1:] + t[:, :-1])
    zero = torch.zeros_like(w[:, :1])
    w_before = torch.cat([zero, torch.cumsum(w, dim=-1)[:, :-1]], dim=-1)
    wm_before = torch.cat([zero, torch.cumsum(w * m, dim=-1)[:, :-1]], dim=-1)
    inter = 2.0 * (w * (m * w_before - wm_before)).sum(dim=-1)
    intra = (w * w * t.diff(dim=-1)).sum(dim=-1) / 3.0
    return inter + intra
