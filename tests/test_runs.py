"""Run folders (scene3d.runs), the device-resident training data, the engine seam, every built-in
model evaluated on every available device, and `scene3d bench train-step`."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from scene3d.errors import DataError
from scene3d.runs import CHECKPOINT, load_checkpoint, open_run
from tests.runs import cli

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])]


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoints_hold_only_tensors_and_plain_data(short_run):
    state = torch.load(short_run / CHECKPOINT, map_location="cpu", weights_only=True)  # no allow-list needed
    assert state["format"] == "scene3d-checkpoint" and state["version"] == 2
    assert set(state["optimizers"]) == {"means", "quats", "scales", "opacities", "sh0", "shN"}
    run = open_run(short_run)
    assert run.step == 40 and run.transform.shape == (4, 4) and np.allclose(run.transform @ run.to_input, np.eye(4))


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(short_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "model": _Exploit(marker), "dataset": {}}, run / CHECKPOINT)
    with pytest.raises(DataError, match=r"holds Python objects besides tensors and plain data \((posix|os)\.system\), which scene3d never unpickles"):
        load_checkpoint(run / CHECKPOINT)
    for command in ("eval", "export", "view"):
        r = cli(command, str(run), *(["-o", str(tmp_path / "x.ply")] if command == "export" else []))
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert [ln for ln in r.stderr.splitlines() if ln.startswith("scene3d: error:")] == [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert "latest.pt" in r.stderr and "never unpickles" in r.stderr
    assert not marker.exists()
    assert not (tmp_path / "x.ply").exists()


def test_an_archive_declaring_more_than_the_file_holds_is_refused_before_reading(tmp_path):
    """A 100 MB member deflated into a small file: refused from the zip directory, nothing inflated."""
    import tracemalloc
    import zipfile

    path = tmp_path / "latest.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\0" * (100 << 20))
    assert path.stat().st_size < 200_000
    tracemalloc.start()
    with pytest.raises(DataError, match=r"latest.pt: is not a scene3d checkpoint \(its members declare 104,857,600 bytes in a"):
        load_checkpoint(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2 << 20
    path.write_bytes(b"\x80\x02}q\x00." + b"\0" * 100)  # a legacy (non-zip) pickle
    with pytest.raises(DataError, match="not the zip archive torch.save writes"):
        load_checkpoint(path)


def _edited_run(short_run: Path, tmp_path: Path, edit) -> Path:
    """A copy of short_run whose checkpoint went through ``edit(state)``."""
    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    state = load_checkpoint(run / CHECKPOINT)
    edit(state)
    torch.save(state, run / CHECKPOINT)
    return run


def _one_error(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("scene3d: error:"), err
    return err[0]


@pytest.mark.parametrize(
    "edit, command, message",
    [
        (lambda s: s["model"]["params"].pop("means"), "eval", "does not hold a 3dgs model ('means' is missing)"),
        (lambda s: s["model"]["params"].update(means=torch.zeros(3)), "export", "does not hold a 3dgs model ("),
        (lambda s: s["dataset"].pop("transform"), "export", "dataset transform is missing"),
        (lambda s: s["dataset"].update(transform=torch.full((4, 4), float("nan"))), "eval", "not a finite invertible 4x4 matrix"),
        (lambda s: s.update(step="forty"), "eval", "its step is not a non-negative integer"),
        (lambda s: s.pop("strategy"), "resume", "cannot be resumed from ('strategy' is missing)"),
        (lambda s: s["rng"].pop("torch"), "resume", "cannot be resumed from ('torch' is missing)"),
    ],
)
def test_a_checkpoint_with_missing_or_wrong_entries_is_one_sentence(short_run, tmp_path, capsys, edit, command, message):
    from scene3d.cli import main

    run = _edited_run(short_run, tmp_path, edit)
    args = {
        "eval": ["eval", str(run)],
        "export": ["export", str(run), "-o", str(tmp_path / "out.ply")],
        "resume": ["train", str(_default_scene()), "-o", str(run), "--resume", "--max-steps", "42", "--downscale", "4"],
    }[command]
    capsys.readouterr()
    assert main(args) == 2
    line = _one_error(capsys)
    assert "latest.pt" in line and message in line, line
    assert not (tmp_path / "out.ply").exists()


def test_a_checkpoint_declaring_a_huge_grid_is_refused_before_allocating_it(slim_run, tmp_path, capsys):
    """A rank-16 grid of 100k^3 would be terabytes: its size is checked against the tensors held."""
    import resource

    from scene3d.cli import main

    run = tmp_path / "run"
    shutil.copytree(slim_run, run)
    state = load_checkpoint(run / CHECKPOINT)
    state["model"]["grid_size"] = [100_000] * 3
    torch.save(state, run / CHECKPOINT)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    assert "does not hold a slimmerf model (ValueError: density_planes.0 is" in _one_error(capsys)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: no grid was made


@pytest.mark.parametrize(
    "config, message",
    [
        ("scene: [unclosed", "is not a valid run configuration (ParserError: "),
        ("x" * (1 << 20) + "y", "is not a run configuration (over 1 MiB)"),
        ("scene: s\nmodel: 3dgs\nmodel_cfg: {}\nstrategy: adc\nstrategy_cfg: {}\ndata_cfg: {bogus: 1}\ntrain_cfg: {}", "data_cfg: DataConfig.__init__() got an unexpected keyword argument 'bogus'"),
        ("scene: 5\nmodel: 3dgs\nmodel_cfg: {}\nstrategy: adc\nstrategy_cfg: {}\ndata_cfg: {}\ntrain_cfg: {}", "(scene is not a string)"),
    ],
)
def test_a_malformed_run_configuration_is_one_sentence(short_run, tmp_path, capsys, config, message):
    from scene3d.cli import main

    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    (run / "config.yaml").write_text(config)
    capsys.readouterr()
    assert main(["render", str(run), "-o", str(tmp_path / "r")]) == 2
    line = _one_error(capsys)
    assert "config.yaml" in line and message in line, line


def _default_scene() -> Path:
    from tests.runs import DEFAULT_SCENE

    return DEFAULT_SCENE


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_resume_takes_the_runs_model_refuses_another_and_clears_a_killed_writers_files(slim_run, tmp_path, capsys):
    from scene3d.cli import main
    from scene3d.runs import RunSpec

    run = tmp_path / "run"
    shutil.copytree(slim_run, run)
    scene = RunSpec.from_yaml(run / "config.yaml").scene
    capsys.readouterr()
    assert main(["train", scene, "-o", str(run), "--resume", "--model", "3dgs", "--max-steps", "152"]) == 2
    assert "was trained with --model slimmerf; resume it with --model slimmerf (or without --model)" in _one_error(capsys)
    stale = run / "checkpoints" / f".latest.pt.{_dead_pid()}.0badcafe.tmp.pt"
    live = run / "checkpoints" / f".latest.pt.{os.getpid()}.0badcafe.tmp.pt"
    stale.write_bytes(b"half a checkpoint")
    live.write_bytes(b"being written")
    assert main(["train", scene, "-o", str(run), "--resume", "--max-steps", "152"]) == 0  # no --model: the run's own
    assert load_checkpoint(run / CHECKPOINT)["step"] == 152
    assert not stale.exists() and live.exists()


def _limited_file_size(limit: int):
    def apply():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_failed_write_is_one_sentence_and_keeps_what_was_there(short_run, tmp_path):
    import subprocess
    import sys

    folder = tmp_path / "a_folder.ply"
    folder.mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    for target, reason in ((folder, "is a directory"), (tmp_path / "a_file" / "scene.ply", "a_file is not a directory")):
        r = cli("export", str(short_run), "-o", str(target))
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip() == f"scene3d: error: {target}: could not be written ({reason})"
    out = tmp_path / "scene.ply"
    out.write_text("the previous export")
    r = subprocess.run([sys.executable, "-m", "scene3d", "export", str(short_run), "-o", str(out)], capture_output=True, text=True,
                       timeout=300, preexec_fn=_limited_file_size(20_000))  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip() == f"scene3d: error: {out}: could not be written (file too large)", r.stderr
    assert out.read_text() == "the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "a_folder.ply", "scene.ply"]  # no temporary left


def test_an_os_error_outside_the_atomic_writer_is_one_sentence(monkeypatch, capsys):
    import errno

    from scene3d import cli as cli_module

    def refuse() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/metrics.jsonl")

    monkeypatch.setitem(cli_module.COMMANDS, "info", refuse)
    capsys.readouterr()
    assert cli_module.main(["info"]) == 2
    assert _one_error(capsys) == "scene3d: error: /runs/x/metrics.jsonl: No space left on device"


@pytest.mark.parametrize("option, value, message", [("--frames", "1000000000", "--frames 1000000000 is outside 1..36,000"),
                                                    ("--fps", "0", "--fps 0 is outside"), ("--width", "100000", "--width 100000 is outside 8..8192")])  # fmt: skip
def test_video_settings_are_bounded_before_rendering(short_run, tmp_path, capsys, option, value, message):
    from scene3d.cli import main

    capsys.readouterr()
    assert main(["render", str(short_run), "--path", "orbit", option, value, "-o", str(tmp_path / "o.mp4")]) == 2
    assert message in _one_error(capsys)
    assert not (tmp_path / "o.mp4").exists()


def test_checkpoints_of_version_1_still_load_and_resume(short_run, tmp_path):
    """Before the representation interface, checkpoints held numpy arrays (transform, numpy's RNG
    state) and each model's optimiser state inside its state; such runs still open and resume."""
    from scene3d.runs import RunSpec, data_config
    from scene3d.densify import STRATEGIES
    from scene3d.models.gaussians import GaussianConfig
    from scene3d.train.config import TrainConfig
    from scene3d.train.setup import create_trainer

    run = tmp_path / "run"
    shutil.copytree(short_run, run)
    new = load_checkpoint(run / CHECKPOINT)
    old = {
        "step": new["step"], "elapsed": new["elapsed"], "strategy": new["strategy"], "spec": new["spec"],
        "model": {**new["model"], "optimizers": new["optimizers"]},
        "rng": {"torch": new["rng"]["torch"], "numpy": np.random.get_state(), "python": new["rng"]["python"]},
        "dataset": {"transform": new["dataset"]["transform"].numpy(), "downscale": new["dataset"]["downscale"]},
    }  # fmt: skip
    torch.save(old, run / CHECKPOINT)
    assert open_run(run).load_model().num_gaussians == new["model"]["params"]["means"].shape[0]
    spec = RunSpec.from_yaml(run / "config.yaml")
    trainer = create_trainer(Path(spec.scene), run, "3dgs", GaussianConfig(**spec.model_cfg), "adc", STRATEGIES["adc"](), data_config(spec.data_cfg),
                             TrainConfig(max_steps=44, resume=True, save_every=0))  # fmt: skip
    assert trainer.step == 40
    exp_avg = trainer.model.optimizers["means"].state[trainer.model.params["means"]]["exp_avg"]
    assert torch.equal(exp_avg, new["optimizers"]["means"]["state"][0]["exp_avg"])  # the optimiser state came back
    trainer.fit()
    assert load_checkpoint(run / CHECKPOINT)["version"] == 2


# ---------------------------------------------------------------------------- training data
@dataclass
class _RGBAScene:
    """The slice of a SceneDataset the training data reads: three RGBA images of two sizes."""

    cameras: object
    images: list
    train_indices: list = field(default_factory=lambda: [0, 1, 2])
    background: tuple = (0.2, 0.4, 0.6)
    format: str = "blender"

    def image_uint8(self, i):
        return self.images[i]

    def mask(self, i):
        return None

    def background_for(self, mode):
        from scene3d.data.dataset import SceneDataset

        return SceneDataset.background_for(self, mode)


def _rgba_scene() -> _RGBAScene:
    from scene3d.cameras import Cameras
    from tests.synthetic import ring_cameras

    cams = Cameras.cat([ring_cameras(2, 12, 10), ring_cameras(1, 7, 5, seed=3)])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(int(cams.height[i]), int(cams.width[i]), 4), dtype=np.uint8) for i in range(3)]
    return _RGBAScene(cams, images)


def _composite(rgba: np.ndarray, bg) -> torch.Tensor:
    img = torch.from_numpy(rgba.copy()).float() / 255.0
    return img[..., :3] * img[..., 3:] + torch.tensor(bg, dtype=torch.float32) * (1 - img[..., 3:])


def test_training_data_batches_are_the_datasets_pixels():
    from scene3d.data.training import TrainingData, image_for_step, step_generator
    from scene3d.renderers.rays import pixel_rays, sample_pixels

    ds = _rgba_scene()
    data = TrainingData(ds, torch.device("cpu"), "auto", seed=3, progress=False)
    for step in range(6):  # whole images, in the seeded epoch order, on the scene's background
        b = data.image_batch(step)
        i = image_for_step(ds.train_indices, 3, step)
        assert b.camera_indices == [i] and b.target.shape == (1, *ds.images[i].shape[:2], 3)
        torch.testing.assert_close(b.target[0], _composite(ds.images[i], ds.background), atol=0, rtol=0)
        torch.testing.assert_close(b.background, torch.tensor(ds.background))
    g = step_generator(3, 7)
    rb = data.ray_batch(7, 300, g)
    cam, x, y = sample_pixels(ds.cameras, ds.train_indices, 300, step_generator(3, 7))  # the same draws
    want = torch.stack([_composite(ds.images[c], ds.background)[yy, xx] for c, xx, yy in zip(cam.tolist(), x.tolist(), y.tolist())])
    torch.testing.assert_close(rb.target, want, atol=0, rtol=0)
    rays = pixel_rays(ds.cameras, cam, x, y)
    torch.testing.assert_close(rb.rays.dirs, rays.dirs)
    torch.testing.assert_close(rb.rays.radii, rays.radii)
    assert rb.generator is g and torch.equal(rb.ray_cameras, cam)
    # random backgrounds: a colour per step, the same for a step whatever else was drawn
    rnd = TrainingData(ds, torch.device("cpu"), "random", seed=3, progress=False)
    a, b = rnd.image_batch(4), rnd.image_batch(4)
    assert torch.equal(a.background, b.background) and not torch.equal(a.background, rnd.image_batch(5).background)
    i = a.camera_indices[0]
    torch.testing.assert_close(a.target[0], _composite(ds.images[i], a.background.tolist()), atol=1e-6, rtol=0)
    # opaque images look the same on any colour: random mode keeps them on auto's background
    opaque = _RGBAScene(ds.cameras, [img[..., :3].copy() for img in ds.images], format="colmap")
    rnd = TrainingData(opaque, torch.device("cpu"), "random", seed=3, progress=False)
    assert rnd.image_batch(4).background is None and rnd.ray_batch(4, 10, step_generator(3, 4)).background is None
    opaque.format = "blender"  # a Blender scene without alpha: its own colour, every step
    rnd = TrainingData(opaque, torch.device("cpu"), "random", seed=3, progress=False)
    assert rnd.image_batch(4).background.tolist() == rnd.image_batch(5).background.tolist() == pytest.approx(list(opaque.background))


def test_engine_streams_differ_by_rank_and_rank_0_is_the_single_device_stream():
    from scene3d.data.training import step_generator
    from scene3d.train.engine import SingleDevice

    e = SingleDevice("cpu")
    assert e.is_writer and e.world_size == 1 and e.host_sync_is_free
    assert torch.equal(torch.rand(4, generator=e.generator(5, 9)), torch.rand(4, generator=step_generator(5, 9)))
    assert not torch.equal(torch.rand(4, generator=step_generator(5, 9, stream=1)), torch.rand(4, generator=step_generator(5, 9)))


# ---------------------------------------------------------------------------- every model, every device
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("which", ["short_run", "slim_run"])
def test_every_model_evaluates_renders_and_exports_on_every_device(which, device, request, tmp_path, capsys):
    from scene3d.cli import main

    run = request.getfixturevalue(which)
    capsys.readouterr()
    assert main(["eval", str(run), "--json", "--device", device]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert abs(result["psnr"] - metrics[-1]["psnr"]) < (1e-4 if device == "cpu" else 0.05)  # what training measured
    assert main(["render", str(run), "--device", device, "-o", str(tmp_path / "test")]) == 0
    assert len(list((tmp_path / "test").glob("*.png"))) == result["num_images"]
    out = tmp_path / ("scene.ply" if which == "short_run" else "scene.slimmerf")
    assert main(["export", str(run), "-o", str(out), "--device", device]) == 0
    assert out.stat().st_size > 1000


# ---------------------------------------------------------------------------- bench train-step
def test_bench_train_step_compares_the_trainer_with_a_bare_loop(short_run, capsys):
    from scene3d.cli import main

    capsys.readouterr()
    assert main(["bench", "train-step", str(short_run), "--steps", "4", "--warmup", "1", "--rounds", "1", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    n = open_run(short_run).load_model().num_gaussians
    assert result["backend"] == "cpu" and result["num_gaussians"] == n and result["strategy"] == "none"
    assert result["trainer_ms"] > 0 and result["bare_ms"] > 0 and result["ratio"] == pytest.approx(result["trainer_ms"] / result["bare_ms"])
    assert main(["bench", "train-step", str(short_run), "--steps", "0"]) == 2


def test_the_training_curve_skips_lines_it_cannot_read(tmp_path):
    from scene3d.train.plots import _records, plot_training_curve

    metrics = tmp_path / "metrics.jsonl"
    good = [{"step": 10, "loss": 0.5, "psnr": 12.0, "num_gaussians": 100}, {"step": 20, "loss": 0.25, "psnr": 15.0, "num_gaussians": 120}]
    lines = [json.dumps(good[0]), "not json", "[" * 100_000 + "]" * 100_000, '{"step": "x", "loss": 1, "psnr": 2}', "[1, 2]",
             json.dumps(good[1]), json.dumps({"split": "test", "step": 20, "psnr": 14.0})]  # fmt: skip
    metrics.write_text("\n".join(lines))
    train, test = _records(metrics)
    assert train == good and test == [{"split": "test", "step": 20, "psnr": 14.0}]
    out = plot_training_curve(metrics, tmp_path / "curve.png")
    assert out.stat().st_size > 5000 and sorted(p.name for p in tmp_path.iterdir()) == ["curve.png", "metrics.jsonl"]
