"""``scene3d export RUN --format points``: any run's geometry as a coloured point cloud."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.runs import cli


def test_a_gaussian_run_exports_its_opaque_centres_in_the_input_frame(short_run, tmp_path):
    from scene3d.export.points import read_point_ply
    from scene3d.renderers.gaussians import sh_to_rgb
    from scene3d.runs import open_run

    run = open_run(short_run)
    g = run.load_model(torch.device("cpu")).to_gaussians()
    opacity = torch.sigmoid(g.opacities)
    threshold = round(float(opacity.median()), 4)  # about half the Gaussians pass
    out = tmp_path / "centres.ply"
    r = cli("export", str(short_run), "--format", "points", "-o", str(out), "--min-alpha", str(threshold))
    assert r.returncode == 0, r.stderr
    xyz, rgb = read_point_ply(out)
    keep = opacity >= threshold
    assert 0 < int(keep.sum()) < len(keep)  # the threshold separates some
    t = run.to_input
    want = g.means[keep].double().numpy() @ t[:3, :3].T + t[:3, 3]
    assert xyz.shape == want.shape
    np.testing.assert_allclose(xyz, want, atol=1e-4 * np.abs(want).max())
    np.testing.assert_array_equal(rgb, np.rint(sh_to_rgb(g.sh0[keep, 0]).clamp(0, 1).double().numpy() * 255))
    # thinned to --num-points, a seeded subset of the same points
    few = tmp_path / "few.ply"
    n = int(keep.sum()) // 2
    assert cli("export", str(short_run), "--format", "points", "-o", str(few), "--min-alpha", str(threshold), "--num-points", str(n)).returncode == 0
    sub, _ = read_point_ply(few)
    assert len(sub) == n and all((np.abs(xyz - p).max(1) == 0).any() for p in sub)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--num-points", "0"], "--num-points must be in 1.."),
        (["--min-alpha", "0"], "--min-alpha must be in (0, 1]"),
        (["--rank", "2"], "--rank truncates slimmable runs"),
    ],
)
def test_bad_point_cloud_options_are_one_sentence(short_run, tmp_path, args, words):
    out = tmp_path / "x.ply"
    r = cli("export", str(short_run), "--format", "points", "-o", str(out), *args)
    assert r.returncode == 2 and words in r.stderr and "Traceback" not in r.stderr and not out.exists(), r.stderr


def test_a_scene_file_is_refused_for_points_and_a_point_cloud_is_not_read_as_gaussians(short_run, tmp_path):
    scene = tmp_path / "scene.ply"
    assert cli("export", str(short_run), "-o", str(scene)).returncode == 0
    r = cli("export", str(scene), "--format", "points", "-o", str(tmp_path / "x.ply"))
    assert r.returncode == 2 and "give its run folder" in r.stderr and "Traceback" not in r.stderr
    cloud = tmp_path / "cloud.points.ply"
    assert cli("export", str(short_run), "-o", str(cloud), "--min-alpha", "0.01").returncode == 0  # the name says points
    r = cli("export", str(cloud), "-o", str(tmp_path / "y.spz"))
    assert r.returncode == 2 and "not a file of Gaussians" in r.stderr and "Traceback" not in r.stderr, r.stderr
