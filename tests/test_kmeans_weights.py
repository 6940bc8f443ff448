"""Weighted k-means (scene3d.compress.kmeans with ``weights``): the weighted squared error is what
it minimises, on the flat and the two-level path."""

from __future__ import annotations

import pytest
import torch

from scene3d.compress import kmeans


def weighted_sse(x, w, c, labels) -> float:
    return float((w * ((x - c[labels]) ** 2).sum(1)).sum())


def test_one_cluster_is_the_weighted_mean():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    w = torch.tensor([1.0, 3.0, 0.0])
    c, labels = kmeans(x, 1, iterations=3, weights=w)
    torch.testing.assert_close(c[0], torch.tensor([0.75, 0.0]), atol=1e-5, rtol=0)  # the zero weight counts ~1e-6
    assert labels.tolist() == [0, 0, 0]


def scene(seed: int):
    """Two halves of 40 tight blobs each; the first half carries almost all the weight."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(80, 6, generator=g) * 4
    which = torch.arange(80).repeat_interleave(50)
    x = centres[which] + 0.05 * torch.randn(len(which), 6, generator=g)
    w = torch.where(which < 40, 1.0, 1e-3)
    return x, w, which


@pytest.mark.parametrize("flat_limit", [1 << 22, 1000])  # the flat path, and the two-level one
def test_weights_spend_clusters_on_heavy_points(flat_limit):
    x, w, which = scene(0)
    cw, lw = kmeans(x, 40, iterations=10, seed=0, weights=w, flat_limit=flat_limit)
    cu, lu = kmeans(x, 40, iterations=10, seed=0, flat_limit=flat_limit)
    # the weighted run finds the 40 heavy blobs (one cluster each); the unweighted one splits its
    # 40 clusters between both halves
    heavy = which < 40
    assert len(torch.unique(lw[heavy])) >= 38
    assert weighted_sse(x, w, cw, lw) < 0.2 * weighted_sse(x, w, cu, lu)
    # every label is the nearest centroid and every centroid is used
    assert torch.equal(torch.cdist(x, cw).argmin(1), lw) or flat_limit == 1000
    assert len(torch.unique(lw)) == cw.shape[0]


def test_uniform_weights_cluster_as_well_as_none():
    x, _, _ = scene(1)
    ones = torch.ones(len(x))
    c1, l1 = kmeans(x, 80, iterations=10, seed=3)
    c2, l2 = kmeans(x, 80, iterations=10, seed=3, weights=torch.full((x.shape[0],), 2.5))
    assert weighted_sse(x, ones, c2, l2) <= 1.1 * weighted_sse(x, ones, c1, l1)


@pytest.mark.parametrize("bad", [torch.ones(5), torch.tensor([1.0, -1.0, 1.0, 1.0]), torch.tensor([1.0, float("nan"), 1.0, 1.0])])
def test_bad_weights_are_refused(bad):
    with pytest.raises(ValueError, match="weights"):
        kmeans(torch.randn(4, 3), 2, weights=bad)
