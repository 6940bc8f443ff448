"""Localized Points Management (Yang et al. 2025) on constructed cases: pairing, error regions,
triangulated zones, zone densification and the opacity calibration in front of zones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densify_cases import assert_adam_aligned, logit, model_from, prime_adam
from scene3d.cameras import Cameras, rigid_inverse
from scene3d.densify import STRATEGIES
from scene3d.densify.lpm import LPMStrategy, error_regions, match_descriptors, points_in_front, triangulate, view_pairs
from scene3d.errors import Scene3dError
from scene3d.render import look_at
from synthetic import ring_cameras


def test_registered():
    assert STRATEGIES["lpm"] is LPMStrategy


def test_views_pair_with_their_neighbours_on_a_ring():
    cams = ring_cameras(8, 64, 48)  # 45 degrees apart, all looking at the centre
    pairs = view_pairs(cams, list(range(8)), max_angle=60, max_pairs=3)
    for i in range(8):
        assert sorted(pairs[i]) == sorted({(i - 1) % 8, (i + 1) % 8})
    few = view_pairs(cams, list(range(8)), max_angle=100, max_pairs=1, seed=3)
    assert all(len(p) == 1 and p[0] != i for i, p in few.items())
    assert view_pairs(cams, [0, 2, 4], max_angle=60, max_pairs=3) == {0: [], 2: [], 4: []}


def test_one_error_blob_gives_one_region_noise_gives_none():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(96, 128, 3, generator=g) * 0.2 + 0.4
    rgb = gt.clone()
    rgb[30:70, 40:84] = 1.0 - rgb[30:70, 40:84]  # a badly wrong blob
    regions, mask = error_regions(rgb, gt)
    assert len(regions) == 1
    x0, y0, x1, y1 = regions[0]
    assert x0 <= 48 and x1 >= 80 and y0 <= 32 and y1 >= 64  # the patches inside the blob...
    assert x0 >= 32 and x1 <= 96 and y0 >= 16 and y1 <= 80  # ...and not much beyond it
    assert mask[40:60, 50:75].all() and not mask[:16].any()
    noisy = gt + (torch.rand(96, 128, 3, generator=g) - 0.5) * 0.02
    assert error_regions(noisy, gt)[0] == []


def test_triangulation_of_exact_correspondences():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(50, 3, generator=g, dtype=torch.float64) - 0.5
    o1, o2 = torch.tensor([-1.0, 0, -3], dtype=torch.float64), torch.tensor([1.0, 0.2, -3], dtype=torch.float64)
    p, valid = triangulate(o1.expand(50, 3), pts - o1, o2.expand(50, 3), pts - o2)
    assert valid.all() and torch.allclose(p, pts, atol=1e-4)
    # parallel rays and points behind a camera are refused
    _, valid = triangulate(o1[None], torch.tensor([[0.0, 0, 1]], dtype=torch.float64), o2[None], torch.tensor([[0.0, 0, 1]], dtype=torch.float64))
    assert not valid.any()
    _, valid = triangulate(o1[None], (o1 - pts[:1]), o2[None], (o2 - pts[:1]))
    assert not valid.any()


def test_mutual_matching():
    g = np.random.default_rng(0)
    d1 = g.normal(size=(40, 128)).astype(np.float32)
    perm = g.permutation(40)
    d2 = d1[perm] + g.normal(scale=0.01, size=(40, 128)).astype(np.float32)
    m = match_descriptors(d1, d2)
    assert len(m) == 40 and np.all(perm[m[:, 1]] == m[:, 0])


def camera_at(eye, target=(0.0, 0.0, 0.0), size=(320, 240), f=300.0) -> Cameras:
    c2w = torch.from_numpy(look_at(np.array(eye, dtype=np.float64), np.array(target, dtype=np.float64), np.array([0.0, 0.0, 1.0])))[None]
    return Cameras.create(rigid_inverse(c2w).float(), f, f, size[0] / 2, size[1] / 2, size[0], size[1])


def textured_patch(center, n=6000, size=0.6, seed=0):
    """Small opaque Gaussians with random colours on a square in the plane y = center[1]."""
    g = torch.Generator().manual_seed(seed)
    pts = (torch.rand(n, 3, generator=g) - 0.5) * size
    pts[:, 1] = 0
    return model_from(pts + torch.tensor(center), torch.full((n,), 0.006), torch.full((n,), 0.95), colors=torch.rand(n, 3, generator=g))


def test_zone_from_two_views_contains_the_true_location():
    """A textured patch is missing from the render in both views: the error region, matched across
    the two training images and triangulated, gives a 3D zone around the patch."""
    centre = torch.tensor([0.3, -0.2, 0.1])
    scene = textured_patch(centre.tolist())
    cam_a, cam_b = camera_at((0.0, -3.0, 0.8)), camera_at((1.2, -2.7, 0.8))
    with torch.no_grad():
        gt_a, gt_b = scene.render(cam_a).rgb[0], scene.render(cam_b).rgb[0]
    from scene3d.densify.lpm import sift_features

    to_gray = lambda im: (im.numpy() @ np.array([0.299, 0.587, 0.114]) * 255).astype(np.uint8)  # noqa: E731
    (k1, d1), (k2, d2) = sift_features(to_gray(gt_a)), sift_features(to_gray(gt_b))
    m = match_descriptors(d1, d2)
    assert len(m) >= 10
    regions, _ = error_regions(torch.full_like(gt_a, 0.5), gt_a)
    s = LPMStrategy(min_triangulation_angle=5.0)
    zones = s.zones_from_matches(cam_a, cam_b, torch.from_numpy(k1[m[:, 0]]), torch.from_numpy(k2[m[:, 1]]), regions)
    assert len(zones) >= 1
    tol = 0.03  # the triangulated points lie on the patch, so the plane's own thickness is tiny
    containing = [z for z in zones if torch.all(z[0] - tol <= centre) and torch.all(centre <= z[1] + tol)]
    assert containing, zones
    z = containing[0]
    extent = z[1] - z[0]
    assert extent[0] > 0.3 and extent[2] > 0.3  # it spans the patch...
    assert torch.all(extent < 1.0)  # ...and is not the whole scene


def test_calibration_lowers_only_gaussians_in_front_of_a_zone():
    centre = torch.tensor([0.0, 0.0, 0.0])
    cam = torch.tensor([0.0, -4.0, 0.0])
    means = [
        [0.0, 0.0, 0.0], [0.05, 0.0, 0.05], [0.0, 0.1, 0.0],  # inside the zone
        [0.0, -2.0, 0.0], [0.02, -1.0, 0.0],  # in front: between the camera and the zone
        [0.0, 2.0, 0.0],  # behind it
        [2.0, -2.0, 0.0], [0.0, -2.0, 1.5],  # off to the side
    ]
    model = model_from(means, [0.02] * 8, [0.9, 0.8, 0.7, 0.9, 0.85, 0.9, 0.9, 0.9])
    prime_adam(model)
    before = model.params["opacities"].detach().clone()
    zone = torch.stack([centre - 0.3, centre + 0.3])[None]
    s = LPMStrategy()
    in_front, inside = points_in_front(model.params["means"].detach(), cam, zone[0])
    assert in_front.tolist() == [False, False, False, True, True, False, False, False]
    assert inside.tolist() == [True, True, True, False, False, False, False, False]
    assert s.calibrate(model, cam, zone) == 2
    after = model.params["opacities"].detach()
    assert torch.allclose(torch.sigmoid(after[[3, 4]]), torch.tensor(0.01))
    keep = [0, 1, 2, 5, 6, 7]
    assert torch.equal(after[keep], before[keep])
    assert_adam_aligned(model)


def test_calibration_spares_transparent_gaussians_in_front():
    """Only in-front Gaussians at least as opaque as the zone's top 70% are reset."""
    model = model_from([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [0.0, -2.0, 0.0]], [0.02] * 3, [0.9, 0.8, 0.3])
    zone = torch.tensor([[[-0.3, -0.3, -0.3], [0.3, 0.3, 0.3]]])
    assert LPMStrategy().calibrate(model, torch.tensor([0.0, -4.0, 0.0]), zone) == 0


def test_zone_lowers_the_gradient_threshold_and_balances_the_count():
    means = [[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [5.0, 0.0, 0.0], [6.0, 0.0, 0.0], [7.0, 0.0, 0.0]]
    model = model_from(means, [0.001] * 5, [0.9, 0.9, 0.9, 0.05, 0.5], scene_scale=10.0)
    prime_adam(model)
    s = LPMStrategy(reset_every=0)
    s.initialize(model)
    thr = s.grow_grad2d
    s.state["grad2d"] = torch.tensor([0.7, 0.7, 0.1, 0.1, 0.1]) * thr  # both between half and full threshold
    s.state["count"] = torch.ones(5)
    s._zones = torch.tensor([[[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]]])
    counts = s.refine(model, 1000)
    assert counts["cloned"] == 1 and counts["zone_densified"] == 1
    # the one in the zone was cloned; the least opaque Gaussian was pruned to keep the count
    assert model.num_gaussians == 5
    m = model.params["means"].detach()
    assert int((m.norm(dim=-1) < 0.01).sum()) == 2 and not torch.any((m - torch.tensor([6.0, 0, 0])).norm(dim=-1) < 0.01)
    assert_adam_aligned(model)
    # without a zone nothing passes the full threshold
    s.initialize(model)
    s._zones = None
    s.state["grad2d"] = torch.full((5,), 0.7 * thr)
    s.state["count"] = torch.ones(5)
    assert s.refine(model, 1000)["cloned"] == 0


def test_bad_hyperparameters():
    with pytest.raises(Scene3dError, match="zone-grad-factor"):
        LPMStrategy(zone_grad_factor=2.0)
    with pytest.raises(Scene3dError, match="pair-angle"):
        LPMStrategy(pair_angle=0)
