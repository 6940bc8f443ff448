"""Training 3DGS: recovering a known scene, exact resume, faults, and the CLI end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from scene3d.data.config import DataConfig
from scene3d.densify.adc import ADCStrategy
from scene3d.densify.base import Strategy
from scene3d.errors import Scene3dError
from scene3d.models.gaussians import GaussianConfig
from scene3d.runs import load_checkpoint
from scene3d.train.config import TrainConfig
from scene3d.train.setup import create_trainer
from scene3d.train.trainer import TrainingDiverged
from synthetic import write_synthetic_scene
from tests.runs import cli


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_synthetic_scene(tmp_path_factory.mktemp("synthetic"))


def quick(scene: Path, out: Path, steps: int, strategy: Strategy | None = None, **train) -> "object":
    model = GaussianConfig(sh_degree=1, sh_degree_interval=100, backend="cpu")
    strat = strategy or ADCStrategy(refine_start=50, refine_stop=steps * 3 // 4, refine_every=50, reset_every=0)
    cfg = TrainConfig(max_steps=steps, save_every=train.pop("save_every", 0), log_every=10, **train)
    return create_trainer(scene, out, "3dgs", model, "adc" if isinstance(strat, ADCStrategy) else "none", strat, DataConfig(), cfg)


def test_recovers_a_scene_rendered_from_known_gaussians(scene, tmp_path):
    trainer = quick(scene, tmp_path / "run", 900)
    result = trainer.fit()
    assert result["eval_split"] == "test" and result["num_images"] == 3
    assert result["psnr"] > 27.0, result  # held-out views
    assert result["ssim"] > 0.85
    for name in ("config.yaml", "metrics.jsonl", "training_curve.png", "checkpoints/latest.pt"):
        assert (tmp_path / "run" / name).is_file()
    assert len(list((tmp_path / "run" / "renders" / "test").glob("*.png"))) == 3
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["split"] == "test" and any(ln["split"] == "train" for ln in lines)


def test_resume_equals_uninterrupted(scene, tmp_path):
    torch.manual_seed(0)
    straight = quick(scene, tmp_path / "a", 120)
    straight.fit()
    interrupted = quick(scene, tmp_path / "b", 120)
    for _ in range(70):
        interrupted.train_step()
    interrupted.save()  # as the periodic checkpoint would; the process then dies
    del interrupted
    resumed = quick(scene, tmp_path / "b", 120, resume=True)
    assert resumed.step == 70
    resumed.fit()
    a, b = straight.model.params, resumed.model.params
    assert a["means"].shape == b["means"].shape and a["means"].shape[0] != 400  # densification happened
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name


class NanAfter(Strategy):
    """Makes the loss NaN from a given step on (a fault injected for the test)."""

    def extra_loss(self, ctx):
        return torch.tensor(float("nan")) if ctx.step >= 25 else None


def test_nan_loss_stops_with_message_and_keeps_last_good_checkpoint(scene, tmp_path):
    trainer = quick(scene, tmp_path / "run", 100, strategy=NanAfter(), save_every=10)
    with pytest.raises(TrainingDiverged, match="step 25.*last good checkpoint"):
        trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "latest.pt")
    assert state["step"] == 20
    assert all(torch.isfinite(v).all() for v in state["model"]["params"].values())


def test_out_of_memory_says_what_to_lower(scene, tmp_path, monkeypatch):
    trainer = quick(scene, tmp_path / "run", 10)

    def boom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 99999999999 bytes")

    monkeypatch.setattr(trainer.model, "forward", boom)
    with pytest.raises(Scene3dError, match="ran out of memory.*--downscale.*max-gaussians"):
        trainer.fit()


def test_refuses_to_overwrite_a_run(scene, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("keep me")
    with pytest.raises(Scene3dError, match="already holds files"):
        quick(scene, tmp_path / "run", 10)
    assert (tmp_path / "run" / "x").read_text() == "keep me"


@pytest.mark.parametrize("flag, name, valid", [("--model", "nerfy", "3dgs"), ("--strategy", "magic", "adc")])
def test_unknown_names_list_the_valid_ones(scene, tmp_path, flag, name, valid):
    result = cli("train", str(scene), "-o", str(tmp_path / "r"), flag, name)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert name in result.stderr and valid in result.stderr


def test_cli_train_eval_export_render(scene, tmp_path):
    from scene3d.export import read_ply
    from scene3d.data import load_dataset
    from scene3d.renderers.gaussians import RasterSettings, rasterize

    run = tmp_path / "run"
    r = cli("train", str(scene), "-o", str(run), "--max-steps", "150", "--model.sh-degree", "1", "--strategy.refine-start", "50", "--strategy.refine-every", "50")
    assert r.returncode == 0, r.stderr
    ev = cli("eval", str(run), "--json")
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads(ev.stdout)
    assert {"psnr", "ssim", "num_gaussians"} <= set(metrics) and metrics["psnr"] > 15

    ply = tmp_path / "scene.ply"
    assert cli("export", str(run), "--format", "ply", "-o", str(ply)).returncode == 0
    # Read back in the input frame, map into the training frame and render: identical images.
    ds = load_dataset(scene)
    back = read_ply(ply, transform=ds.transform)
    state = load_checkpoint(run / "checkpoints" / "latest.pt")
    orig = state["model"]["params"]
    cams = ds.cameras[ds.test_indices]

    def draw(p):
        colors = torch.cat([p["sh0"], p["shN"]], 1)
        return rasterize(p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]), colors, cams, RasterSettings(backend="cpu")).rgb

    assert torch.allclose(draw(back), draw(orig), atol=2e-3)

    # The exported file, evaluated against the dataset, scores what the run scores.
    ev_file = cli("eval", str(ply), "--data", str(scene), "--json")
    assert ev_file.returncode == 0, ev_file.stderr
    file_metrics = json.loads(ev_file.stdout)
    assert abs(file_metrics["psnr"] - metrics["psnr"]) < 0.01 and file_metrics["num_gaussians"] == metrics["num_gaussians"]
    no_data = cli("eval", str(ply))
    assert no_data.returncode == 2 and "--data" in no_data.stderr

    video = tmp_path / "orbit.mp4"
    r = cli("render", str(run), "--path", "orbit", "--frames", "8", "-o", str(video))
    assert r.returncode == 0, r.stderr
    import imageio.v3 as iio

    frames = iio.imread(video)
    assert frames.shape[0] == 8 and frames.shape[-1] == 3 and frames.std() > 1
