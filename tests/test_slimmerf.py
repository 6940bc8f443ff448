"""SlimmeRF: TRaIn, slimming (truncation equals masking), slimmed files, and the whole CLI path
(train, eval --rank, render --rank, export --format slimmerf, view) on a small synthetic scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scene3d.models.slimmerf import SlimmeRFConfig
from scene3d.export.model_file import read_model_file as load_slimmed, write_model_file
from scene3d.models.slimmerf import SlimmeRFModel, n_to_reso
from scene3d.renderers.rays import Rays
from tests.synthetic import ring_cameras

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def _model(rank: int = 4, full: int = 4, **kw) -> SlimmeRFModel:
    cfg = SlimmeRFConfig(rank=full, grid_init=16, occupancy_resolution=16, max_samples=64, **kw)
    torch.manual_seed(0)
    m = SlimmeRFModel(cfg, AABB, [16, 16, 16], rank=rank)
    with torch.no_grad():  # a field with structure: dense enough to render something
        for p in [*m.density_planes, *m.density_lines]:
            p.mul_(20.0)
        for p in [*m.app_planes, *m.app_lines]:
            p.mul_(5.0)
    return m


def _rays(n: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.0
    target = (torch.rand(n, 3, generator=g) - 0.5) * 0.8
    return origins, torch.nn.functional.normalize(target - origins, dim=-1)


def test_train_raises_the_rank_on_the_stated_condition():
    m = _model(rank=1, full=3, rank_upsilon=0.4, rank_cooldown=5)
    m.after_step(0, {"rgb": torch.tensor(1.0)})  # the first loss only records
    assert m.rank == 1
    m.after_step(10, {"rgb": torch.tensor(0.9)})  # |1.0 - 0.9| / 0.9 = 0.11 <= 0.4: no change
    assert m.rank == 1
    m.after_step(11, {"rgb": torch.tensor(0.5)})  # |0.9 - 0.5| / 0.5 = 0.8 > 0.4: rank 2
    assert m.rank == 2 and m.last_rank_step == 11
    m.after_step(12, {"rgb": torch.tensor(0.2)})  # the change is large but within the cooldown
    assert m.rank == 2
    m.after_step(17, {"rgb": torch.tensor(0.05)})  # |0.2 - 0.05| / 0.05 = 3 > 0.4, cooldown over: rank 3
    assert m.rank == 3
    m.after_step(40, {"rgb": torch.tensor(1.0)})
    m.after_step(50, {"rgb": torch.tensor(0.01)})  # full rank reached: stays
    assert m.rank == 3
    d, a = m.rank_masks(2)
    assert d.tolist() == pytest.approx([1.0, 1.0, m.cfg.rank_epsilon])  # above the rank: epsilon, not zero
    assert a.shape == (27,) and (a.reshape(3, 9)[:, :6] == 1).all() and (a.reshape(3, 9)[:, 6:] == m.cfg.rank_epsilon).all()


def test_truncating_to_rank_r_equals_training_time_masking():
    full = _model(rank=4, full=4)
    o, d = _rays()
    for r in (1, 2, 3):
        masked = full.render_rays(Rays(o, d), rank=r)
        slim = SlimmeRFModel.from_state(full.slimmed_state(r), full.cfg)
        assert slim.cfg.rank == r and slim.density_planes[0].shape[1] == r and slim.app_planes[0].shape[1] == 3 * r
        truncated = slim.render_rays(Rays(o, d))
        assert masked.alpha.max() > 0.1
        # equal up to what the epsilon-scaled components add
        assert torch.allclose(truncated.rgb, masked.rgb, atol=1e-4)
        assert torch.allclose(truncated.alpha, masked.alpha, atol=1e-4)
        # and slimming changes the render: rank r is not the full model
        assert not torch.allclose(masked.rgb, full.render_rays(Rays(o, d)).rgb, atol=1e-3)


def test_slimmed_file_is_smaller_and_loads_alone(tmp_path):
    m = _model(rank=4, full=4)
    T = np.diag([0.5, 0.5, 0.5, 1.0])
    full_file = write_model_file(tmp_path / "full.slimmerf", m, transform=T, rank=4)
    slim_file = write_model_file(tmp_path / "r1.slimmerf", m, transform=T, rank=1)
    # smaller by (about) the bytes of the dropped components; the shading MLP is kept whole
    dropped = sum(p.numel() for p in [*m.density_planes, *m.density_lines]) * 3 / 4 + sum(p.numel() for p in [*m.app_planes, *m.app_lines]) * 3 / 4
    dropped += m.basis.weight.numel() * 3 / 4
    assert full_file.stat().st_size - slim_file.stat().st_size >= 0.95 * 4 * dropped
    full_file.unlink()  # the slimmed file needs nothing else
    loaded, transform = load_slimmed(slim_file)
    assert np.allclose(transform, T) and loaded.rank == 1 and loaded.cfg.rank == 1
    o, d = _rays()
    assert torch.allclose(loaded.render_rays(Rays(o, d)).rgb, m.render_rays(Rays(o, d), rank=1).rgb, atol=1e-4)
    with pytest.raises(ValueError, match="rank"):
        m.slimmed_state(5)


def test_malformed_slimmed_files_are_refused(tmp_path):
    from scene3d.errors import DataError

    bad = tmp_path / "bad.slimmerf"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="bad.slimmerf"):
        load_slimmed(bad)
    torch.save({"format": "something-else"}, bad)
    with pytest.raises(DataError, match="not a scene3d-slimmerf"):
        load_slimmed(bad)
    with pytest.raises(DataError, match="does not exist"):
        load_slimmed(tmp_path / "missing.slimmerf")


def test_upsampling_and_shrinking_keep_the_field():
    m = _model(rank=4, full=4)
    pts = (torch.rand(2000, 3, generator=torch.Generator().manual_seed(1)) - 0.5) * 1.8
    dirs = torch.nn.functional.normalize(torch.randn(2000, 3), dim=-1)
    with torch.no_grad():
        before_sigma, before_rgb = m.density(pts), m.color(pts, dirs)
    step = m.step_size
    m.cfg.upsample_steps, m.cfg.grid_init, m.cfg.grid_final = (1,), 16, 32
    m.upsample(1)
    assert m.grid_size == n_to_reso(32**3, m.aabb) == [32, 32, 32]
    assert m.step_size == pytest.approx(step * 15 / 31)  # half a (new) voxel
    with torch.no_grad():
        after_sigma, after_rgb = m.density(pts), m.color(pts, dirs)
    # bilinear upsampling reproduces the field up to interpolation error (the knots move)
    assert ((after_sigma - before_sigma).abs() / before_sigma.abs().clamp_min(1.0)).median() < 0.05
    assert (after_rgb - before_rgb).abs().median() < 0.02
    # shrinking to a box holding everything occupied keeps the render where the rays are
    m._shrink(torch.tensor([[-0.6, -0.6, -0.6], [0.6, 0.6, 0.6]]))
    assert (m.aabb[0] <= -0.6 + 1e-5).all() and (m.aabb[1] >= 0.6 - 1e-5).all() and m.grid_size[0] < 32
    cams = ring_cameras(1, 24, 18)
    img = m.render(cams)
    assert img.rgb.shape == (1, 18, 24, 3) and img.depth.shape == (1, 18, 24, 1)


def test_viewer_rank_control():
    m = _model(rank=4, full=4)
    (control,) = m.controls()
    assert control.key == "rank" and control.max == 4
    cam = ring_cameras(1, 16, 12)
    a = m.render(cam, options={"rank": 1}).rgb
    b = m.render(cam, options={"rank": 4}).rgb
    assert torch.allclose(b, m.render(cam).rgb, atol=1e-6) and not torch.allclose(a, b, atol=1e-3)


def test_slimmerf_trains_evaluates_renders_and_exports_from_the_cli(slim_run, tmp_path, capsys):
    from scene3d.cli import main

    lines = [json.loads(line) for line in (slim_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r.get("split") == "train"]
    assert train[-1]["rank"] == 4  # upsilon 0: the rank grows after every cooldown
    assert train[-1]["grid"] != train[0]["grid"]  # upsampled
    assert train[-1]["psnr"] > train[0]["psnr"]
    capsys.readouterr()
    assert main(["eval", str(slim_run), "--json"]) == 0
    full = json.loads(capsys.readouterr().out)
    assert main(["eval", str(slim_run), "--json", "--rank", "1"]) == 0
    slim = json.loads(capsys.readouterr().out)
    assert slim["rank"] == 1 and slim["psnr"] != full["psnr"]
    assert main(["eval", str(slim_run), "--rank", "9"]) == 2  # beyond the trained rank
    assert main(["render", str(slim_run), "--rank", "2", "-o", str(tmp_path / "test_r2")]) == 0
    assert len(list((tmp_path / "test_r2").glob("*.png"))) > 0
    f1, f4 = tmp_path / "r1.slimmerf", tmp_path / "r4.slimmerf"
    assert main(["export", str(slim_run), "--format", "slimmerf", "--rank", "1", "-o", str(f1)]) == 0
    assert main(["export", str(slim_run), "-o", str(f4)]) == 0  # format from the name, full rank
    assert f1.stat().st_size < f4.stat().st_size
    capsys.readouterr()
    import yaml

    scene = yaml.safe_load((slim_run / "config.yaml").read_text())["scene"]
    assert main(["eval", str(f1), "--data", scene, "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert abs(from_file["psnr"] - slim["psnr"]) < 0.05  # the file at rank 1 == the run slimmed to rank 1
    assert main(["export", str(slim_run), "--format", "ply", "-o", str(tmp_path / "x.ply")]) == 2  # scene files hold Gaussians


def test_view_target_for_a_slimmerf_run_and_file(slim_run, tmp_path):
    from scene3d.viewer.target import load_target

    target = load_target(slim_run, torch.device("cpu"))
    assert target.model.name == "slimmerf" and target.cameras is not None
    f = write_model_file(tmp_path / "v.slimmerf", target.model, rank=2)
    t2 = load_target(f, torch.device("cpu"))
    assert t2.model.rank == 2 and t2.kind == "file"


def test_bench_slim_measures_the_curve(slim_run, capsys):
    from scene3d.cli import main

    capsys.readouterr()
    assert main(["bench", "slim", str(slim_run), "--ranks", "1", "2", "4", "--images", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["rows"]
    assert [r["rank"] for r in rows] == [1, 2, 4]
    sizes = [r["bytes"] for r in rows]
    assert sizes == sorted(sizes) and sizes[0] < sizes[-1]
    assert all(np.isfinite(r["psnr"]) for r in rows)
    assert (slim_run / "bench_slim.png").is_file()
