"""Scaffold-GS: frustum filtering, the children's parameter maths, growing and pruning, the
checkpoint, baking into plain Gaussians, and a small scene learned on the CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from scene3d.cameras import Cameras


def _model(anchors, **kw):
    from scene3d.models.scaffold import ScaffoldConfig, ScaffoldModel

    cfg = ScaffoldConfig(**{"n_offsets": 4, "feat_dim": 8, "hidden": 8, **kw})
    return ScaffoldModel(torch.as_tensor(anchors, dtype=torch.float32), cfg, voxel_size=0.1, scene_scale=1.0)


def _camera(width=64, height=48, f=50.0) -> Cameras:
    # at the origin looking down +z (OpenCV), identity pose
    return Cameras.create(world_to_cam=torch.eye(4)[None], fx=f, fy=f, cx=width / 2, cy=height / 2, width=width, height=height)


def test_anchors_outside_the_frustum_are_skipped():
    # in front and centred; behind the camera; far off to the side; just outside the image but
    # with a footprint (offset scale) wide enough to reach into it
    model = _model([[0.0, 0.0, 2.0], [0.0, 0.0, -2.0], [10.0, 0.0, 2.0], [1.5, 0.0, 2.0]])
    with torch.no_grad():
        model.params["scaling"][:, :3] = math.log(0.01)
        model.params["scaling"][3, :3] = math.log(0.3)
    assert model.visible_anchors(_camera()).tolist() == [True, False, False, True]
    with torch.no_grad():
        model.params["scaling"][3, :3] = math.log(0.01)
    assert model.visible_anchors(_camera()).tolist() == [True, False, False, False]


def test_children_sit_at_anchor_plus_scaled_offset_with_activated_mlp_outputs():
    model = _model([[0.0, 0.0, 2.0], [0.2, 0.1, 3.0]])
    k = model.cfg.n_offsets
    with torch.no_grad():
        model.params["offsets"].copy_(torch.randn(2, k, 3))
        model.params["scaling"].copy_(torch.log(torch.rand(2, 6) * 0.1 + 0.01))
        model.params["feats"].copy_(torch.randn(2, 8))
    idx = torch.tensor([0, 1])
    dirs = torch.nn.functional.normalize(model.params["anchors"], dim=-1)
    g = model.decode(idx, dirs, model.params["anchors"].norm(dim=-1))
    s = torch.exp(model.params["scaling"])
    torch.testing.assert_close(g["means"], model.params["anchors"][:, None] + model.params["offsets"] * s[:, None, :3])
    x = torch.cat([model.params["feats"], dirs], dim=-1)
    cov = model.mlp_cov(x).view(2, k, 7)
    torch.testing.assert_close(g["scales"], s[:, None, 3:] * torch.sigmoid(cov[..., :3]))
    torch.testing.assert_close(g["quats"], cov[..., 3:] / cov[..., 3:].norm(dim=-1, keepdim=True))
    torch.testing.assert_close(g["opacity"], torch.tanh(model.mlp_opacity[:3](x)).view(2, k))
    assert float(g["colours"].detach().min()) >= 0 and float(g["colours"].detach().max()) <= 1
    # the render keeps exactly the children with positive opacity, with the colours of this view
    out, vis, opacity, flat = model.neural_gaussians(_camera())
    positive = (g["opacity"] > 0).reshape(-1)
    assert vis.tolist() == [0, 1] and flat.tolist() == positive.nonzero()[:, 0].tolist()
    torch.testing.assert_close(out["opacities"], g["opacity"].reshape(-1)[positive])
    torch.testing.assert_close(out["colors"], g["colours"].reshape(-1, 3)[positive])


def _growth_model():
    # voxel 0.1: level 0 cells are 1.6 wide, level 1 0.4, level 2 0.1
    model = _model([[0.0, 0.0, 0.0], [3.2, 0.0, 0.0]], update_interval=10, grad_threshold=1e-3)
    with torch.no_grad():
        model.params["scaling"][:, :3] = 0.0  # offsets in scene units
        model.params["offsets"][0] = torch.tensor([[0.05, 0.0, 0.0], [1.6, 0.0, 0.0], [1.6, 0.41, 0.0], [3.2, 0.0, 0.0]])
        model.params["feats"][0] = torch.arange(8.0)
    return model


def test_growing_adds_anchors_at_each_level_where_none_exists():
    model = _growth_model()
    k = model.cfg.n_offsets
    grads = torch.zeros(2 * k)
    judged = torch.ones(2 * k, dtype=torch.bool)
    grads[:k] = 1.5e-3  # above level 0's threshold (1e-3) only
    gen = torch.Generator().manual_seed(0)
    model.grow(grads, judged, generator=torch.Generator().manual_seed(0))
    lucky = torch.rand(2 * k, generator=gen) > 0.5
    new = model.params["anchors"][2:]
    # level 0 (1.6 cells): child 0 (0.05) lies in the cell of anchor 0, child 3 (3.2) in anchor 1's;
    # children 1 and 2 (1.6 and 1.6, 0.41) fall in the empty cell (1, 0, 0): one anchor, if either was drawn
    expect = [[1.6, 0.0, 0.0]] if bool(lucky[1] | lucky[2]) else []
    torch.testing.assert_close(new, torch.tensor(expect).view(-1, 3))
    if expect:
        assert torch.equal(model.params["feats"][2], torch.arange(8.0))  # the largest feature of its makers
        torch.testing.assert_close(model.params["scaling"][2], torch.full((6,), math.log(1.6)))
        assert model.params["offsets"][2].abs().max() == 0
        assert model.offset_grad.shape == (3 * k,) and model.opacity_accum.shape == (3,)
    # with gradients above every level's threshold, finer anchors appear only in empty cells of their level
    model = _growth_model()
    grads[:k] = 1.0
    model.grow(grads, judged, generator=torch.Generator().manual_seed(3))
    for anchor in model.params["anchors"][2:]:
        sizes = [0.1 * 16 / 4**i for i in range(3)]
        assert any(torch.allclose(anchor / s, torch.round(anchor / s), atol=1e-4) for s in sizes)
    cells = torch.round(model.params["anchors"] / 0.1).long()
    assert len(torch.unique(cells, dim=0)) == len(cells)
    assert len(model.params["anchors"]) > 3 and model.params["offsets"].shape == (len(cells), k, 3)


def test_pruning_drops_faint_anchors_with_their_optimiser_rows():
    model = _model([[0.0, 0.0, 2.0], [0.5, 0.0, 2.0], [1.0, 0.0, 2.0]], update_interval=10, min_opacity=0.1)
    k = model.cfg.n_offsets
    with torch.no_grad():
        model.params["feats"].copy_(torch.arange(3.0)[:, None].expand(3, 8))
    opt = model.optimizers["feats"]
    model.params["feats"].grad = torch.ones_like(model.params["feats"])
    opt.step()
    # seen in 10 views: anchor 1 faint (0.05 per view), anchors 0 and 2 bright; anchor 2 seen too rarely to judge
    model.anchor_demon.copy_(torch.tensor([10.0, 10.0, 5.0]))
    model.opacity_accum.copy_(torch.tensor([5.0, 0.5, 0.0]))
    model.offset_denom.fill_(0)
    grown, pruned = model.adjust_anchors()
    assert (grown, pruned) == (0, 1)
    torch.testing.assert_close(model.params["anchors"][:, 0], torch.tensor([0.0, 1.0]))
    assert opt.state[model.params["feats"]]["exp_avg"].shape == (2, 8)
    assert model.anchor_demon.tolist() == [0.0, 5.0] and model.offset_grad.shape == (2 * k,)


@pytest.fixture(scope="module")
def sc_run(tmp_path_factory) -> Path:
    from scene3d.cli import main
    from tests.synthetic import write_synthetic_scene

    root = tmp_path_factory.mktemp("scaffold")
    scene = write_synthetic_scene(root / "scene", n_views=16, width=48, height=32)
    out = root / "run"
    assert main(["train", str(scene), "-o", str(out), "--model", "scaffold", "--max-steps", "300", "--model.start-stat", "20",
                 "--model.update-from", "50", "--model.update-interval", "25", "--model.update-until", "250", "--log-every", "50"]) == 0  # fmt: skip
    return out


def test_scaffold_learns_a_small_scene_and_grows(sc_run):
    records = [json.loads(line) for line in (sc_run / "metrics.jsonl").read_text().splitlines()]
    test = [r for r in records if r.get("split") == "test"][-1]
    assert test["psnr"] > 28.0
    train = [r for r in records if r.get("split") == "train"]
    assert train[-1]["num_anchors"] > train[0]["num_anchors"]


def test_scaffold_checkpoint_round_trip_and_baked_gaussians_render_close(sc_run, tmp_path):
    from scene3d.runs import open_run
    from scene3d.metrics import psnr
    from scene3d.models import representation_for_gaussians

    run = open_run(sc_run)
    model = run.load_model(torch.device("cpu"))
    ds = run.dataset()
    again = type(model).from_state(model.state(), model.cfg)
    cam = ds.cameras[ds.train_indices[0]]
    torch.testing.assert_close(again.render(cam).rgb, model.render(cam).rgb)
    baked = representation_for_gaussians(model.to_gaussians())
    bg = torch.ones(3)
    gaps = []
    for i in ds.train_indices:
        neural = model.render(ds.cameras[i], background=bg).rgb.clamp(0, 1)
        plain = baked.render(ds.cameras[i], background=bg).rgb.clamp(0, 1)
        gaps.append(float(psnr(plain, neural)))
    assert np.mean(gaps) > 35.0  # the baked render matches the neural one to 35 dB on the training views


def test_scaffold_exports_files_other_tools_open(sc_run, tmp_path):
    from scene3d.cli import main
    from scene3d.export.ply import read_ply
    from tests.splat_transform import run_splat_transform

    assert main(["export", str(sc_run), "-o", str(tmp_path / "s.ply")]) == 0
    ours = read_ply(tmp_path / "s.ply")
    assert ours["shN"].shape[1] == 15 and len(ours["means"]) > 100
    run_splat_transform(str(tmp_path / "s.ply"), str(tmp_path / "x.ply"))
    theirs = read_ply(tmp_path / "x.ply")
    torch.testing.assert_close(theirs["means"], ours["means"])


def test_strategies_refuse_scaffold(tmp_path):
    from tests.runs import cli
    from tests.synthetic import write_synthetic_scene

    scene = write_synthetic_scene(tmp_path / "scene", n_views=4, width=16, height=16)
    r = cli("train", str(scene), "-o", str(tmp_path / "run"), "--model", "scaffold", "--strategy", "mcmc", "--max-steps", "1")
    assert r.returncode == 2 and "--strategy none" in r.stderr + r.stdout


def test_bench_models_compares_3dgs_and_scaffold_as_runs_and_files(tmp_path, capsys):
    from scene3d.cli import main
    from tests.synthetic import write_synthetic_scene

    scene = write_synthetic_scene(tmp_path / "scene", n_views=8, width=32, height=24)
    out = tmp_path / "bench"
    assert main(["bench", "models", str(scene), "-o", str(out), "--models", "3dgs", "scaffold", "--max-steps", "30", "--time-budget", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == ["3dgs", "scaffold"] and [r["steps"] for r in rows] == [30, 30]
    for r in rows:
        assert r["checkpoint_bytes"] == (out / r["model"] / "checkpoints" / "latest.pt").stat().st_size
        assert r["ply_bytes"] == (out / f"{r['model']}.ply").stat().st_size
    assert rows[0]["ply_psnr"] == pytest.approx(rows[0]["psnr"], abs=0.01)  # 3dgs's PLY is the model itself
    assert rows[1]["num_children"] == rows[1]["num_anchors"] * 10
    assert abs(rows[1]["ply_psnr"] - rows[1]["psnr"]) < 1.0
    assert (out / "bench_models.png").stat().st_size > 0


def test_scaffold_resume_after_growth_equals_uninterrupted(tmp_path):
    from scene3d.data.config import DataConfig
    from scene3d.densify import STRATEGIES
    from scene3d.models.scaffold import ScaffoldConfig
    from scene3d.train.config import TrainConfig
    from scene3d.train.setup import create_trainer
    from tests.synthetic import write_synthetic_scene

    scene = write_synthetic_scene(tmp_path / "scene", n_views=6, width=32, height=24)
    cfg = ScaffoldConfig(n_offsets=4, feat_dim=8, hidden=8, start_stat=2, update_from=5, update_interval=6, update_until=40, grad_threshold=1e-6)

    def trainer(out, resume=False):
        return create_trainer(scene, out, "scaffold", cfg, "none", STRATEGIES["none"](), DataConfig(), TrainConfig(max_steps=30, save_every=0, log_every=5, resume=resume))

    straight = trainer(tmp_path / "a")
    n0 = straight.model.num_anchors
    straight.fit()
    assert straight.model.num_anchors != n0  # it grew (or pruned) on the way
    interrupted = trainer(tmp_path / "b")
    for _ in range(13):  # past two growth rounds
        interrupted.train_step()
    interrupted.save()
    del interrupted
    resumed = trainer(tmp_path / "b", resume=True)
    assert resumed.step == 13
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
