"""Zip-NeRF's model-free ray path: scene contraction and its isotropic scale, power-ladder ray
warps, histogram sampling of interval centres, proposal resampling, the blurred interlevel loss,
distortion and Charbonnier losses, and hexagonal multisampling. Each is checked against a closed
form or a direct (slow) computation; everything runs on CPU in float64 unless a test says
otherwise, and all randomness comes from seeded generators."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scene3d.renderers.rays.contraction import contract, contract_iso_scale, inv_contract, track_isotropic
from scene3d.renderers.rays.multisample import HEX_ANGLES, hex_distances, hexify, perp_basis
from scene3d.renderers.rays.proposal import (
    charbonnier_loss,
    distortion_loss,
    initial_sdist,
    interlevel_loss,
    interlevel_losses,
    ray_samples,
    resample_intervals,
    resampling_logits,
    schlick_bias,
    train_fraction,
)
from scene3d.renderers.rays.stepfun import (
    PowerLadder,
    blur_and_resample_weights,
    construct_ray_warps,
    inv_power_ladder,
    lossfun_distortion,
    power_ladder,
    sample,
    sample_intervals,
)

F64 = torch.float64

# A fixed step function on [0, 1]: five bins, one of them empty.
EDGES = [0.0, 0.1, 0.3, 0.35, 0.7, 1.0]
WEIGHTS = [0.1, 0.3, 0.0, 0.4, 0.2]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _points(n: int, lo: float, hi: float, seed: int = 0) -> torch.Tensor:
    """n points [n, 3] in random directions with norms log-uniform in [lo, hi]."""
    g = _gen(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=F64), dim=-1)
    norms = torch.exp(torch.empty(n, dtype=F64).uniform_(math.log(lo), math.log(hi), generator=g))
    return dirs * norms[:, None]


def _histogram(n_rays: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.tensor(EDGES, dtype=F64).repeat(n_rays, 1)
    w = torch.tensor(WEIGHTS, dtype=F64).repeat(n_rays, 1)
    return t, w


def _bin_fractions(x: torch.Tensor) -> np.ndarray:
    """Fraction of the values of x in each bin of EDGES."""
    counts, _ = np.histogram(x.flatten().numpy(), bins=np.array(EDGES))
    return counts / x.numel()


# --------------------------------------------------------------------------------------------
# Contraction


def test_contract_is_identity_inside_the_unit_ball():
    x = _points(500, 1e-4, 0.999)
    assert torch.equal(contract(x), x)
    assert torch.equal(contract_iso_scale(x), torch.ones(500, dtype=F64))


def test_contract_maps_outside_into_the_shell_below_radius_two():
    x = _points(500, 1.001, 1e8, seed=1)
    z = contract(x)
    r, rz = x.norm(dim=-1), z.norm(dim=-1)
    assert bool((rz > 1).all()) and bool((rz < 2).all())
    torch.testing.assert_close(rz, 2.0 - 1.0 / r, rtol=1e-12, atol=0)
    torch.testing.assert_close(z / rz[:, None], x / r[:, None], rtol=1e-12, atol=1e-12)  # radial


def test_inv_contract_round_trips():
    x = _points(500, 1e-3, 1e4, seed=2)
    torch.testing.assert_close(inv_contract(contract(x)), x, rtol=1e-9, atol=0)
    z = _points(500, 1e-3, 1.999, seed=3)
    torch.testing.assert_close(contract(inv_contract(z)), z, rtol=1e-12, atol=1e-12)


def test_iso_scale_is_cube_root_of_the_autograd_jacobian_determinant():
    """The closed form (2|x|-1)^(2/3)/|x|^2 outside, 1 inside, equals |det J|^(1/3) with J from
    torch.autograd.functional.jacobian at each point, and track_isotropic's factor."""
    x = torch.cat([_points(20, 0.05, 0.95, seed=4), _points(40, 1.01, 1e3, seed=5)])
    dets = torch.stack([torch.linalg.det(torch.autograd.functional.jacobian(contract, p)) for p in x])
    expected = dets.abs() ** (1.0 / 3.0)
    torch.testing.assert_close(contract_iso_scale(x), expected, rtol=1e-10, atol=0)
    r = x.norm(dim=-1)
    closed = torch.where(r > 1, (2 * r - 1) ** (2 / 3) / r**2, torch.ones_like(r))
    torch.testing.assert_close(contract_iso_scale(x), closed, rtol=1e-12, atol=0)
    scale = torch.linspace(0.1, 2.0, len(x), dtype=F64)
    z, z_scale = track_isotropic(contract, x, scale)
    torch.testing.assert_close(z, contract(x))
    torch.testing.assert_close(z_scale, scale * expected, rtol=1e-10, atol=0)


# --------------------------------------------------------------------------------------------
# Power ladder and ray warps


def test_power_ladder_matches_its_closed_form_for_zipnerf_spacing():
    """p = -1.5, premult = 2: g(t) = (5/3)(1 - (1 + 0.8 t)^-1.5), slope 2 at 0, limit 5/3."""
    t = torch.tensor([0.0, 1e-3, 0.1, 1.0, 2.5, 10.0, 1e3, 1e6], dtype=F64)
    g = PowerLadder()
    torch.testing.assert_close(g(t), (5 / 3) * (1 - (1 + 0.8 * t) ** -1.5), rtol=1e-12, atol=1e-15)
    t0 = torch.zeros(1, dtype=F64, requires_grad=True)
    (slope,) = torch.autograd.grad(g(t0).sum(), t0)
    assert slope.item() == pytest.approx(2.0)
    assert g(torch.tensor([1e15], dtype=F64)).item() == pytest.approx(5 / 3, rel=1e-12)
    torch.testing.assert_close(g(-t), -g(t))  # odd
    # The distortion curve: p = -0.25, premult = 1e4 is 5 (1 - (1 + 8000 t)^-0.25).
    torch.testing.assert_close(power_ladder(t, -0.25, 1e4), 5 * (1 - (1 + 8000 * t) ** -0.25), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "p, premult, x_max",
    # p = -inf is 1 - exp(-x): it saturates in float64 long before 1e3, so it is checked up to 10.
    [(-1.5, 2.0, 1e3), (-0.25, 1e4, 1e3), (0.0, 1.0, 1e3), (1.0, 3.0, 1e3), (0.5, 2.0, 1e3), (2.0, 1.0, 1e3), (-math.inf, 1.0, 10.0)],
)
def test_power_ladder_inverse_round_trips(p, premult, x_max):
    x = torch.cat([torch.zeros(1, dtype=F64), torch.logspace(-4, math.log10(x_max), 50, dtype=F64)])
    x = torch.cat([-x.flip(0), x])
    torch.testing.assert_close(inv_power_ladder(power_ladder(x, p, premult), p, premult), x, rtol=1e-8, atol=1e-12)


def test_power_ladder_special_cases():
    x = torch.linspace(-3, 3, 13, dtype=F64)
    torch.testing.assert_close(power_ladder(x, 1.0, 2.0), 2 * x)
    torch.testing.assert_close(power_ladder(x, 0.0), torch.sign(x) * torch.log1p(x.abs()))
    torch.testing.assert_close(power_ladder(x, -math.inf), torch.sign(x) * -torch.expm1(-x.abs()))
    # Beyond its bound the inverse is clipped to a finite value.
    assert bool(torch.isfinite(inv_power_ladder(torch.tensor([5 / 3, 2.0], dtype=F64), -1.5, 2.0)).all())


def test_ray_warps_power_ladder_between_near_zero_and_far_1e6():
    warp = construct_ray_warps(0.0, 1e6)
    s = torch.tensor([[0.0, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0]], dtype=F64)
    t = warp.s_to_t(s)
    # t = g^-1(s g(far)) with g^-1(y) = ((1 - 0.6 y)^(-2/3) - 1) / 0.8
    y = s * (5 / 3) * (1 - (1 + 0.8 * 1e6) ** -1.5)
    # (near s = 1 the inverse is ill-conditioned: 1 - 0.6 y is about 1e-9 there, hence 1e-8)
    torch.testing.assert_close(t, ((1 - 0.6 * y) ** (-2 / 3) - 1) / 0.8, rtol=1e-8, atol=0)
    torch.testing.assert_close(t[0, 1:6], torch.tensor([0.264, 0.734, 1.90, 4.55, 25.7], dtype=F64), rtol=1e-2, atol=0)
    assert t[0, 0].item() == 0.0 and t[0, -1].item() == pytest.approx(1e6, rel=1e-9)
    torch.testing.assert_close(warp.t_to_s(t), s, rtol=0, atol=1e-9)
    # float32 in, float32 out, still reaching far.
    t32 = warp.s_to_t(s.float())
    assert t32.dtype == torch.float32 and t32[0, -1].item() == pytest.approx(1e6)


def test_ray_warps_linear_without_spacing_per_ray():
    near = torch.tensor([2.0, 1.0], dtype=F64)
    far = torch.tensor([6.0, 3.0], dtype=F64)
    warp = construct_ray_warps(near, far, spacing=None)
    s = torch.linspace(0, 1, 9, dtype=F64).repeat(2, 1)
    t = warp.s_to_t(s)
    torch.testing.assert_close(t, near[:, None] + s * (far - near)[:, None])
    torch.testing.assert_close(warp.t_to_s(t), s)
    # Distances outside [near, far] are clipped.
    assert warp.t_to_s(torch.tensor([[0.0, 9.0], [0.0, 9.0]], dtype=F64)).tolist() == [[0.0, 1.0], [0.0, 1.0]]


# --------------------------------------------------------------------------------------------
# Sampling a histogram


def test_stratified_centres_reproduce_the_histogram():
    """4000 rays x 16 single-jittered centres (64000 draws) fall into the bins in proportion to
    their weights within 0.01 (a binomial fraction from 64000 independent draws has standard
    deviation <= 0.002, and the stratification only lowers it); the empty bin gets none, and in a
    bin the centres are spread uniformly (their mean is the bin's middle within 0.005)."""
    t, w = _histogram(4000)
    centres = sample(t, torch.log(w), 16, stratified=True, generator=_gen(1), deterministic_center=True)
    assert centres.shape == (4000, 16)
    np.testing.assert_allclose(_bin_fractions(centres), WEIGHTS, atol=0.01)
    assert int(((centres > 0.3) & (centres < 0.35)).sum()) == 0
    in_bin = centres[(centres > 0.35) & (centres < 0.7)]
    assert in_bin.mean().item() == pytest.approx(0.525, abs=0.005)
    assert bool((centres.diff(dim=-1) >= 0).all())


def test_eval_centres_are_the_quantiles_of_equal_mass_slices():
    t, w = _histogram(1)
    n = 10
    centres = sample(t, torch.log(w), n, deterministic_center=True)[0]
    eps = torch.finfo(F64).eps
    u = np.linspace(0.5 / n, 1 - 0.5 / n - eps, n)
    cdf = np.concatenate([[0.0], np.cumsum(WEIGHTS)])
    expected = []
    for uk in u:  # the quantile: inside the non-empty bin whose CDF range holds u, linearly
        k = next(k for k in range(5) if WEIGHTS[k] > 0 and cdf[k] <= uk < cdf[k + 1])
        expected.append(EDGES[k] + (uk - cdf[k]) / WEIGHTS[k] * (EDGES[k + 1] - EDGES[k]))
    np.testing.assert_allclose(centres.numpy(), expected, atol=1e-12)


def test_sample_intervals_builds_edges_around_the_centres():
    t, w = _histogram(3)
    n = 8
    centres = sample(t, torch.log(w), n, deterministic_center=True)
    edges = sample_intervals(t, torch.log(w), n)
    assert edges.shape == (3, n + 1)
    torch.testing.assert_close(edges[:, 1:-1], 0.5 * (centres[:, 1:] + centres[:, :-1]))
    torch.testing.assert_close(edges[:, 0], torch.clamp(2 * centres[:, 0] - edges[:, 1], 0, 1))
    torch.testing.assert_close(edges[:, -1], torch.clamp(2 * centres[:, -1] - edges[:, -2], 0, 1))
    assert bool((edges.diff(dim=-1) >= 0).all()) and float(edges.min()) >= 0 and float(edges.max()) <= 1


def test_resampled_intervals_are_equal_mass_slices_around_the_centres():
    """A proposal round (anneal 1) draws its centres as :func:`sample` does with the same
    generator, and an interior interval whose centre and both neighbouring centres lie in one bin
    of the histogram (where the density is constant) holds exactly 1/n of the mass, so the new
    intervals re-express the histogram as n equal-mass slices. (Intervals that straddle a bin edge
    smear mass across it; one straddling the empty bin bridges it.)"""
    t, w = _histogram(500)
    n = 32
    new = resample_intervals(t, w, n, stratified=True, generator=_gen(2))
    assert new.shape == (500, n + 1) and not new.requires_grad
    centres = sample(t, torch.log(w), n, stratified=True, generator=_gen(2), deterministic_center=True)
    torch.testing.assert_close(new[:, 1:-1], 0.5 * (centres[:, 1:] + centres[:, :-1]))
    mass = blur_and_resample_weights(new, t, w, 0.0)  # the histogram's mass in each new interval
    bin_of = torch.searchsorted(torch.tensor(EDGES[1:-1], dtype=F64), centres)
    same_bin = (bin_of[:, :-2] == bin_of[:, 1:-1]) & (bin_of[:, 1:-1] == bin_of[:, 2:])
    assert float(same_bin.double().mean()) > 0.7
    torch.testing.assert_close(mass[:, 1:-1][same_bin], torch.full_like(mass[:, 1:-1][same_bin], 1.0 / n), rtol=0, atol=1e-12)


def test_annealing_flattens_the_histogram():
    """Sampling follows w^anneal normalised: anneal 0.5 gives sqrt(w)/sum sqrt(w); anneal 0 gives
    every non-empty interval the same mass, the zero-weight one included."""
    t, w = _histogram(4000)
    for anneal, target in [(0.5, np.sqrt(WEIGHTS) / np.sqrt(WEIGHTS).sum()), (0.0, np.full(5, 0.2))]:
        logits = resampling_logits(t, w, anneal)
        centres = sample(t, logits, 16, stratified=True, generator=_gen(3), deterministic_center=True)
        np.testing.assert_allclose(_bin_fractions(centres), target, atol=0.01)


def test_resampling_logits_exclude_empty_intervals_and_schlick_bias():
    sdist = torch.tensor([[0.0, 0.5, 0.5, 1.0]], dtype=F64)
    w = torch.tensor([[0.5, 0.2, 0.0]], dtype=F64)
    logits = resampling_logits(sdist, w, anneal=0.0)
    assert logits[0, 1].item() == -math.inf and logits[0, 0].item() == 0.0 and logits[0, 2].item() == 0.0
    assert schlick_bias(0.0) == 0.0 and schlick_bias(1.0) == 1.0
    assert schlick_bias(0.5) == pytest.approx(5 / 5.5)
    assert train_fraction(1, 101) == 0.0 and train_fraction(51, 101) == 0.5 and train_fraction(500, 101) == 1.0


def test_resample_intervals_is_reproducible_and_eval_is_deterministic():
    sdist, w = initial_sdist(5, dtype=F64)
    a = resample_intervals(sdist, w, 8, anneal=0.3, stratified=True, generator=_gen(7))
    b = resample_intervals(sdist, w, 8, anneal=0.3, stratified=True, generator=_gen(7))
    c = resample_intervals(sdist, w, 8, anneal=0.3, stratified=True, generator=_gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    e = resample_intervals(sdist, w, 8)
    torch.testing.assert_close(e, torch.linspace(0, 1, 9, dtype=F64).repeat(5, 1), rtol=0, atol=1e-12)
    weights = torch.full((5, 8), 1 / 8, dtype=F64, requires_grad=True)
    assert not resample_intervals(e, weights, 4).requires_grad
    samples = ray_samples(2 * e, e)
    assert samples.t_starts.shape == (5, 8) and bool(samples.valid.all()) and samples.extras["sdist"] is e


# --------------------------------------------------------------------------------------------
# Blurred resampling and the interlevel loss


def test_blur_and_resample_weights_against_numerical_convolution():
    """The blurred density is (C(x + r) - C(x - r)) / (2r) with C the histogram's CDF; integrating
    it by the midpoint rule on 400000 cells per query interval agrees within 1e-6."""
    t, w = _histogram(1)
    tq = torch.tensor([[-0.05, 0.0, 0.08, 0.12, 0.31, 0.33, 0.36, 0.69, 0.72, 0.99, 1.04]], dtype=F64)
    cdf = np.concatenate([[0.0], np.cumsum(WEIGHTS)])
    for r in (0.03, 0.003):
        got = blur_and_resample_weights(tq, t, w, r)[0].numpy()
        edges = tq[0].numpy()
        expected = []
        for a, b in zip(edges[:-1], edges[1:]):
            x = a + (np.arange(400000) + 0.5) * (b - a) / 400000
            dens = (np.interp(x + r, EDGES, cdf) - np.interp(x - r, EDGES, cdf)) / (2 * r)
            expected.append(dens.sum() * (b - a) / 400000)
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert got.sum() == pytest.approx(1.0, abs=1e-12)  # tq spans [0 - r, 1 + r]: nothing lost
    # r = 0 is plain resampling of the histogram.
    got0 = blur_and_resample_weights(tq, t, w, 0.0)[0].numpy()
    np.testing.assert_allclose(got0, np.diff(np.interp(tq[0].numpy(), EDGES, cdf)), atol=1e-12)


def _peak_histogram(n_rays: int, lo: float, hi: float, mass: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``mass`` in [lo, hi], the rest spread over the outside proportionally to length."""
    rest = (1.0 - mass) / (1.0 - (hi - lo))
    t = torch.tensor([0.0, lo, hi, 1.0], dtype=F64).repeat(n_rays, 1)
    w = torch.tensor([rest * lo, mass, rest * (1.0 - hi)], dtype=F64).repeat(n_rays, 1)
    return t, w


def test_interlevel_loss_is_zero_when_the_proposal_covers_the_nerf_histogram():
    # The NeRF mass sits in [0.50, 0.51]; blurred by 0.03 it spans [0.47, 0.54].
    nerf = _peak_histogram(4, 0.50, 0.51)
    covering = _peak_histogram(4, 0.40, 0.60)
    assert interlevel_loss(*nerf, *covering, 0.03).item() < 1e-6
    # Equal histograms: blurring a uniform histogram only moves mass out past its ends.
    s = torch.linspace(0, 1, 9, dtype=F64).repeat(4, 1)
    w = torch.full((4, 8), 1 / 8, dtype=F64)
    for r in (0.03, 0.003):
        assert interlevel_loss(s, w, s, w, r).item() < 1e-6
    # A proposal that misses the NeRF mass is penalised.
    assert interlevel_loss(*nerf, *_peak_histogram(4, 0.60, 0.80), 0.03).item() > 1.0


def test_interlevel_loss_decreases_as_the_proposal_approaches():
    """The proposal moves from uniform (on 20 bins) to the histogram that just holds the blurred
    NeRF mass, as the mixture (1 - a) uniform + a target for a = 0 .. 1: the loss falls strictly
    and reaches 0 at a = 1. The NeRF mass is [0.495, 0.505]; blurred by 0.03 it spans
    [0.465, 0.535], half on each side of 0.5, i.e. in bins [0.45, 0.5] and [0.5, 0.55]."""
    nerf = _peak_histogram(2, 0.495, 0.505)
    prop_t = torch.linspace(0, 1, 21, dtype=F64).repeat(2, 1)
    uniform = torch.full((2, 20), 1 / 20, dtype=F64)
    target = torch.zeros(2, 20, dtype=F64)
    target[:, 9:11] = 0.5
    losses = [interlevel_loss(*nerf, prop_t, (1 - a) * uniform + a * target, 0.03).item() for a in np.linspace(0, 1, 11)]
    assert all(x > y for x, y in zip(losses, losses[1:])), losses
    assert losses[0] > 1e-3 and losses[-1] < 1e-6  # a = 0: 0.01 * 2 (0.5 - 0.05)^2 / 0.05 / 20 = 0.00405


def test_interlevel_loss_gradient_reaches_only_the_proposal():
    nerf_t, nerf_w = _peak_histogram(3, 0.50, 0.51)
    nerf_w.requires_grad_(True)
    prop_t, prop_w = _peak_histogram(3, 0.30, 0.40, mass=0.9)
    prop_w.requires_grad_(True)
    losses = interlevel_losses(nerf_t, nerf_w, [(prop_t, prop_w), (prop_t, prop_w)])
    assert len(losses) == 2 and losses[0] > losses[1] > 0  # the wider blur reaches farther
    sum(losses).backward()
    assert nerf_w.grad is None and prop_w.grad is not None and float(prop_w.grad.abs().sum()) > 0


# --------------------------------------------------------------------------------------------
# Distortion and Charbonnier


def _distortion_double_sum(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    out = []
    for tr, wr in zip(t.tolist(), w.tolist()):
        m = [(a + b) / 2 for a, b in zip(tr[:-1], tr[1:])]
        inter = sum(wi * wj * abs(mi - mj) for wi, mi in zip(wr, m) for wj, mj in zip(wr, m))
        intra = sum(wi * wi * (b - a) for wi, a, b in zip(wr, tr[:-1], tr[1:])) / 3
        out.append(inter + intra)
    return torch.tensor(out, dtype=F64)


def test_distortion_matches_the_direct_double_sum():
    g = _gen(11)
    t = torch.sort(torch.rand(6, 13, generator=g, dtype=F64) * 5, dim=-1).values
    t[:, 4] = t[:, 3]  # an empty interval
    w = torch.rand(6, 12, generator=g, dtype=F64)
    w = w / w.sum(dim=-1, keepdim=True) * 0.9
    torch.testing.assert_close(lossfun_distortion(t, w), _distortion_double_sum(t, w), rtol=1e-12, atol=1e-14)
    # A uniform histogram on [0, 1] has E|x - y| = 1/3.
    s = torch.linspace(0, 1, 17, dtype=F64)[None]
    assert lossfun_distortion(s, torch.full((1, 16), 1 / 16, dtype=F64)).item() == pytest.approx(1 / 3)


def test_distortion_loss_on_the_curved_distance():
    """Zip-NeRF's loss: 0.01 times the mean over rays of the double sum on c = 5 (1 - (1 + 8000 t)^-0.25)."""
    g = _gen(12)
    t = torch.sort(torch.rand(4, 9, generator=g, dtype=F64) * 3, dim=-1).values
    w = torch.softmax(torch.randn(4, 8, generator=g, dtype=F64), dim=-1)
    c = 5 * (1 - (1 + 8000 * t) ** -0.25)
    expected = 0.01 * _distortion_double_sum(c, w).mean()
    torch.testing.assert_close(distortion_loss(t, w), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(distortion_loss(t, w, curve=None, mult=1.0), _distortion_double_sum(t, w).mean())


def test_charbonnier_loss_formula():
    pred = torch.tensor([[0.2, 0.5, 0.9], [0.0, 1.0, 0.3]], dtype=F64)
    target = torch.tensor([[0.2, 0.4, 0.1], [1.0, 1.0, 0.35]], dtype=F64)
    d = (pred - target).flatten().tolist()
    expected = sum(math.sqrt(x * x + 1e-6) for x in d) / len(d)
    assert charbonnier_loss(pred, target).item() == pytest.approx(expected, rel=1e-12)
    assert charbonnier_loss(target, target).item() == pytest.approx(1e-3)


# --------------------------------------------------------------------------------------------
# Hexagonal multisampling


def _hex_setup(n_rays: int = 5, n_edges: int = 9, seed: int = 20):
    g = _gen(seed)
    origins = torch.randn(n_rays, 3, generator=g, dtype=F64)
    dirs = torch.nn.functional.normalize(torch.randn(n_rays, 3, generator=g, dtype=F64), dim=-1)
    radii = 0.001 + 0.05 * torch.rand(n_rays, generator=g, dtype=F64)
    # Thin and thick intervals, one starting at 0.
    tdist = torch.sort(torch.rand(n_rays, n_edges, generator=g, dtype=F64) ** 2 * 10, dim=-1).values
    tdist[:, 0] = 0.0
    return origins, dirs, radii, tdist


@pytest.mark.parametrize("stratified", [False, True])
def test_hexify_matches_the_frustum_moments(stratified):
    """Per interval, with density proportional to t^2 on [t0, t1] (the frustum's volume):
    - the 6 points' mean lies on the ray at the frustum's E[t] = (3/4)(t1^4 - t0^4)/(t1^3 - t0^3);
    - the population variance of their t_j is the frustum's Var[t] = (3/5)(t1^5 - t0^5)/(t1^3 - t0^3) - E[t]^2;
    - each lies sqrt(1/2) r t_j from the axis, so their mean squared distance from the axis is the
      frustum's, E[(r t)^2 / 2] = (r^2/2) E[t^2];
    - scales are half those distances."""
    origins, dirs, radii, tdist = _hex_setup()
    points, scales = hexify(origins, dirs, radii, tdist, stratified=stratified, generator=_gen(21))
    assert points.shape == (5, 8, 6, 3) and scales.shape == (5, 8, 6)
    rel = points - origins[:, None, None, :]
    t = (rel * dirs[:, None, None, :]).sum(-1)
    perp = rel - t[..., None] * dirs[:, None, None, :]
    t0, t1 = tdist[:, :-1], tdist[:, 1:]
    mean_t = 0.75 * (t1**4 - t0**4) / (t1**3 - t0**3)
    mean_t2 = 0.6 * (t1**5 - t0**5) / (t1**3 - t0**3)
    torch.testing.assert_close(t.mean(-1), mean_t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(t.var(-1, unbiased=False), mean_t2 - mean_t**2, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(perp.mean(-2), torch.zeros_like(perp.mean(-2)), rtol=0, atol=1e-12)
    dist = perp.norm(dim=-1)
    torch.testing.assert_close(dist, math.sqrt(0.5) * radii[:, None, None] * t, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close((dist**2).mean(-1), 0.5 * radii[:, None] ** 2 * mean_t2, rtol=1e-9, atol=1e-14)
    torch.testing.assert_close(scales, 0.5 * dist, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(t, hex_distances(tdist), rtol=1e-10, atol=1e-12)


def _angles(origins, dirs, points):
    """Angle of each point around its ray in the perp_basis frame, [N, S, 6] in [0, 2 pi)."""
    b1, b2 = perp_basis(dirs)
    rel = points - origins[:, None, None, :]
    x = (rel * b1[:, None, None, :]).sum(-1)
    y = (rel * b2[:, None, None, :]).sum(-1)
    return torch.remainder(torch.atan2(y, x), 2 * math.pi)


def _same_angle(a, b):
    return torch.remainder(a - b + math.pi, 2 * math.pi) - math.pi


def test_hexify_eval_pattern_is_deterministic_and_alternating():
    origins, dirs, radii, tdist = _hex_setup()
    tdist[:, 0] = 0.5  # keep every point off the axis so its angle is defined
    p1, s1 = hexify(origins, dirs, radii, tdist)
    p2, s2 = hexify(origins, dirs, radii, tdist)
    assert torch.equal(p1, p2) and torch.equal(s1, s2)
    theta = _angles(origins, dirs, p1)
    base = torch.tensor(HEX_ANGLES, dtype=F64)
    even = _same_angle(theta[:, 0::2], base)
    odd = _same_angle(theta[:, 1::2], base.flip(0) + math.pi / 6)
    assert float(even.abs().max()) < 1e-9 and float(odd.abs().max()) < 1e-9


def test_hexify_training_pattern_is_random_reproducible_and_hexagonal():
    origins, dirs, radii, tdist = _hex_setup(n_rays=40, n_edges=11)
    tdist[:, 0] = 0.5
    a, _ = hexify(origins, dirs, radii, tdist, stratified=True, generator=_gen(5))
    b, _ = hexify(origins, dirs, radii, tdist, stratified=True, generator=_gen(5))
    c, _ = hexify(origins, dirs, radii, tdist, stratified=True, generator=_gen(6))
    ev, _ = hexify(origins, dirs, radii, tdist)
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, ev)
    # Each interval is the base hexagon, possibly reversed, turned by one angle.
    theta = _angles(origins, dirs, a)
    base = torch.tensor(HEX_ANGLES, dtype=F64)
    rel = theta - theta[..., :1]
    fwd = _same_angle(rel, base - base[0]).abs().amax(-1) < 1e-9
    rev = _same_angle(rel, base.flip(0) - base[-1]).abs().amax(-1) < 1e-9
    assert bool((fwd | rev).all())
    assert 0.3 < float(rev.double().mean()) < 0.7  # flipped with probability 1/2 (400 intervals)
    turn = _same_angle(theta[..., 0], torch.where(rev, base[-1], base[0]))
    assert float(turn.std()) > 1.0  # rotations spread over the circle (uniform: std pi/sqrt(3) = 1.81)


def test_perp_basis_is_orthonormal_including_directions_along_z():
    dirs = torch.cat([
        torch.nn.functional.normalize(torch.randn(20, 3, generator=_gen(30), dtype=F64), dim=-1),
        torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [1e-9, 0.0, 1.0]], dtype=F64),
    ])
    b1, b2 = perp_basis(dirs)
    for u, v in [(b1, b2), (b1, dirs), (b2, dirs)]:
        torch.testing.assert_close((u * v).sum(-1), torch.zeros(len(dirs), dtype=F64), rtol=0, atol=1e-7)
    torch.testing.assert_close(b1.norm(dim=-1), torch.ones(len(dirs), dtype=F64))
    torch.testing.assert_close(torch.cross(b1, b2, dim=-1), dirs, rtol=0, atol=1e-7)


def test_public_entry_points_assert_shapes():
    t, w = _histogram(2)
    with pytest.raises(AssertionError):
        sample(t, w[:, :-1], 4)
    with pytest.raises(AssertionError):
        interlevel_loss(t, w, t[:1], w[:1], 0.03)
    with pytest.raises(AssertionError):
        hexify(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), torch.zeros(2, 5))
    with pytest.raises(AssertionError):
        contract(torch.zeros(4, 2))
