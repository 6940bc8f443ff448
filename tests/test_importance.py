"""Gaussian contributions to the training views (scene3d.compress.importance), and their use at
export: weighted SOG palettes and ``--prune-below``."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from scene3d.compress.importance import gaussian_contributions
from scene3d.export import read_ply
from tests.runs import cli
from tests.synthetic import known_gaussians, ring_cameras


def model_of(g: dict, degree: int = 1):
    from scene3d.models.gaussians import GaussianConfig, GaussianModel
    from scene3d.renderers.gaussians import rgb_to_sh

    n = g["means"].shape[0]
    params = {
        "means": g["means"], "quats": g["quats"], "scales": g["scales"].log(), "opacities": torch.logit(g["opacities"]),
        "sh0": rgb_to_sh(g["colors"])[:, None, :], "shN": 0.1 * torch.randn(n, (degree + 1) ** 2 - 1, 3, generator=torch.Generator().manual_seed(1)),
    }  # fmt: skip
    return GaussianModel(params, GaussianConfig(sh_degree=degree, backend="cpu"), scene_scale=1.0)


def test_contributions_add_up_to_the_rendered_alpha():
    """sum_i T_i alpha_i over the Gaussians is each pixel's accumulated alpha, so the contributions
    sum to the alpha images' total; a Gaussian nobody sees contributes nothing."""
    g = known_gaussians(200)
    far_away = {k: v.clone() for k, v in g.items()}
    model = model_of(g)
    cams = ring_cameras(3, 48, 40)
    contrib = gaussian_contributions(model.to_gaussians(), cams, progress=False)
    assert contrib.shape == (200,) and bool((contrib >= 0).all())
    total_alpha = sum(float(model.render(cams[[i]], background=torch.zeros(3)).alpha.detach().sum()) for i in range(3))
    assert float(contrib.sum()) == pytest.approx(total_alpha, rel=1e-4)
    # move one Gaussian far behind every camera's back: it drops to zero, the others keep theirs
    far_away["means"][7] = torch.tensor([0.0, 0.0, 1e4])
    moved = gaussian_contributions(model_of(far_away).to_gaussians(), cams, progress=False)
    assert moved[7] == 0 and contrib[7] > 0


def test_an_occluded_gaussian_contributes_little():
    g = known_gaussians(2)
    cams = ring_cameras(1, 48, 40)
    centre = cams.centers[0]
    ahead = -centre / centre.norm()  # towards the origin
    g["means"] = torch.stack([centre + 2.0 * ahead, centre + 3.0 * ahead])  # the same line of sight
    g["scales"] = torch.tensor([[0.8] * 3, [0.3] * 3])  # the front one covers the back one
    g["opacities"] = torch.tensor([0.99, 0.99])
    contrib = gaussian_contributions(model_of(g).to_gaussians(), cams, progress=False)
    alone = gaussian_contributions(model_of({k: v[1:] for k, v in g.items()}).to_gaussians(), cams, progress=False)
    assert contrib[0] > 20 * contrib[1] and alone[0] > 10 * contrib[1]  # measured 147x and 15x


def test_export_prunes_and_weighs(short_run, tmp_path, monkeypatch):
    from scene3d.compress.importance import run_contributions

    contrib = run_contributions(short_run, progress=False)
    threshold = float(torch.quantile(contrib, 0.3)) + 1e-3
    r = cli("export", str(short_run), "-o", str(tmp_path / "p.ply"), "--prune-below", str(threshold))
    assert r.returncode == 0, r.stderr
    assert "pruned" in r.stderr
    kept = read_ply(tmp_path / "p.ply")
    assert kept["means"].shape[0] == int((contrib >= threshold).sum()) < contrib.shape[0]
    # weighted (default) and unweighted SOG palettes: both valid files of every Gaussian
    for flag, name in (("--sog-weighted", "w.sog"), ("--no-sog-weighted", "u.sog")):
        r = cli("export", str(short_run), "-o", str(tmp_path / name), flag)
        assert r.returncode == 0, r.stderr
        with zipfile.ZipFile(tmp_path / name) as zf:
            assert json.loads(zf.read("meta.json"))["count"] == contrib.shape[0]
    # the contributions reach the palette's k-means (in process, to see its arguments)
    import scene3d.export.sog as sog_module
    from scene3d.commands.export import export_command

    seen = []
    real_kmeans = sog_module.kmeans

    def spy(vectors, k, **kw):
        seen.append(kw.get("weights"))
        return real_kmeans(vectors, k, **kw)

    monkeypatch.setattr(sog_module, "kmeans", spy)
    export_command(short_run, tmp_path / "w2.sog", "sog")
    export_command(short_run, tmp_path / "u2.sog", "sog", weighted=False)
    assert seen[1] is None and seen[0] is not None
    torch.testing.assert_close(seen[0].cpu().double(), contrib.double(), rtol=1e-5, atol=1e-6)
    # pruning needs the run's views: a scene file is refused, as is pruning everything
    r = cli("export", str(tmp_path / "p.ply"), "-o", str(tmp_path / "x.sog"), "--prune-below", "1")
    assert r.returncode != 0 and "needs a run folder" in r.stderr and not (tmp_path / "x.sog").exists()
    r = cli("export", str(short_run), "-o", str(tmp_path / "y.sog"), "--prune-below", "1e12")
    assert r.returncode != 0 and "nothing would be left" in r.stderr and not (tmp_path / "y.sog").exists()
    for flag, value, words in (("--sog-position-bits", "20", "8..16"), ("--sog-sh-palette", "70000", "0..65536")):
        r = cli("export", str(short_run), "-o", str(tmp_path / "z.sog"), flag, value)
        assert r.returncode != 0 and words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "z.sog").exists()


def test_weighted_palette_favours_gaussians_that_show(tmp_path):
    """Half the Gaussians are out of sight, their SH from many prototypes; the visible half's SH
    come from 32. A 64-entry palette weighted by contribution keeps the visible SH nearly exact;
    unweighted, it spreads over both halves."""
    from scene3d.export.sog import morton_order, read_sog, write_sog

    n = 3000
    g = known_gaussians(n)
    g["means"][n // 2 :] = torch.tensor([0.0, 0.0, 1e4])  # behind every camera
    model = model_of(g, degree=2)
    gen = torch.Generator().manual_seed(2)
    seen, unseen = 0.3 * torch.randn(32, 8, 3, generator=gen), 0.3 * torch.randn(300, 8, 3, generator=gen)
    shn = torch.cat([seen[torch.randint(0, 32, (n // 2,), generator=gen)], unseen[torch.randint(0, 300, (n - n // 2,), generator=gen)]])
    model.params["shN"].data.copy_(shn + 0.002 * torch.randn(n, 8, 3, generator=gen))
    cams = ring_cameras(4, 48, 40)
    contrib = gaussian_contributions(model.to_gaussians(), cams, progress=False)
    assert bool((contrib[n // 2 :] == 0).all()) and bool((contrib[: n // 2] > 0).any())
    params = {k: v.detach() for k, v in model.params.items()}
    errors = {}
    seq = morton_order(params["means"])  # the default grid order the file holds the Gaussians in
    for name, weights in (("unweighted", None), ("weighted", contrib)):
        dec = read_sog(write_sog(tmp_path / f"{name}.sog", params, sh_palette=64, weights=weights))
        per_gaussian = ((dec["shN"] - params["shN"][seq]) ** 2).sum(dim=(1, 2))
        errors[name] = float((contrib[seq] * per_gaussian).sum() / contrib.sum())
    assert errors["weighted"] < 0.1 * errors["unweighted"], errors
    with pytest.raises(ValueError, match="weights"):
        write_sog(tmp_path / "bad.sog", params, weights=torch.ones(5))
