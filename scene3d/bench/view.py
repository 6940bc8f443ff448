"""``scene3d bench view RUN``: how fast the viewer renders, and what the live viewer costs training.

1. Server render time per frame at SIZE x SIZE: the viewer's own render path (the representation's
   ``render`` with the viewer's options, the render mode, the depth the browser composites with) from the training
   cameras' poses, one warm-up frame, then ``frames`` timed frames; plus the JPEG encoding viser
   does before sending. Median, 90th percentile and frames per second.
2. Training with ``--viewer`` and no browser: the same steps (same seed, so the same work) trained
   without and with the live viewer serving; the ratio of the step times is the overhead.
"""

from __future__ import annotations

import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def render_times(run: Path, size: int, frames: int, device: str, modes=("rgb", "depth")) -> list[dict]:
    from PIL import Image

    from scene3d.device import pick_device
    from scene3d.geometry import look_at, matrix_to_quat
    from scene3d.viewer.camera import camera_pose, viewer_camera
    from scene3d.viewer.server import ViewerServer
    from scene3d.viewer.target import load_target

    dev = pick_device(device)
    target = load_target(run, dev, max_thumbnails=0)
    viewer = ViewerServer(target, port=8090, device=dev)  # viser moves to the next port when busy
    rows = []
    try:
        if target.cameras is not None:
            poses = [camera_pose(target.cameras, i % len(target.cameras))[:3] for i in range(frames + 1)]
        else:
            center, radius = target.scene_center_and_radius()
            poses = []
            for k in range(frames + 1):
                a = 2 * np.pi * k / (frames + 1)
                eye = center + 2.5 * radius * np.array([np.cos(a), np.sin(a), 0.5])
                c2w = look_at(eye, center, np.array([0.0, 0.0, 1.0]))
                poses.append((matrix_to_quat(c2w[:3, :3]), c2w[:3, 3], np.radians(50.0)))
        for mode in modes:
            times, encode = [], []
            for k, (wxyz, pos, fov) in enumerate(poses):
                cams = viewer_camera(wxyz, pos, fov, size, size)
                t0 = time.perf_counter()
                image, _ = viewer.render_image(cams, mode=mode, with_depth=True)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                t1 = time.perf_counter()
                Image.fromarray(image).save(io.BytesIO(), format="JPEG", quality=92)
                t2 = time.perf_counter()
                if k > 0:  # the first frame warms up
                    times.append(t1 - t0)
                    encode.append(t2 - t1)
            rows.append(
                {
                    "mode": mode,
                    "size": f"{size}x{size}",
                    "frames": len(times),
                    "median_ms": 1000 * statistics.median(times),
                    "p90_ms": 1000 * float(np.percentile(times, 90)),
                    "fps": 1.0 / statistics.median(times),
                    "jpeg_ms": 1000 * statistics.median(encode),
                    "primitives": int(target.model.stats().get("num_gaussians", 0)),
                    "device": str(dev),
                }
            )
    finally:
        viewer.stop()
    return rows


def training_overhead(run: Path, steps: int, device: str) -> dict:
    """Seconds per step for ``steps`` steps of the run's recipe, without and with the live viewer."""
    from scene3d.models import get_model
    from scene3d.models.base import config_from_fields
    from scene3d.runs import CONFIG, RunSpec, data_config
    from scene3d.train.config import TrainConfig
    from scene3d.train.setup import create_trainer, strategy_classes
    from scene3d.viewer.server import start_live_viewer

    spec = RunSpec.from_yaml(Path(run) / CONFIG)
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in ("without viewer", "with viewer", "without viewer (again)"):
            model_cfg = config_from_fields(get_model(spec.model).Config, spec.model_cfg)
            strategy = strategy_classes()[spec.strategy](**spec.strategy_cfg)
            data_cfg = data_config(spec.data_cfg)
            train = TrainConfig(max_steps=steps, save_every=0, eval_every=0, seed=int(spec.train_cfg.get("seed", 0)), device=device)
            out = Path(tmp) / label.replace(" ", "_").replace("(", "").replace(")", "")
            trainer = create_trainer(Path(spec.scene), out, spec.model, model_cfg, spec.strategy, strategy, data_cfg, train)
            viewer = start_live_viewer(trainer, port=8091) if label == "with viewer" else None
            trainer.viewer = viewer
            try:
                t0 = time.perf_counter()
                while trainer.step < steps:  # the fit loop without the final evaluation
                    trainer.timed_step()
                result[label] = (time.perf_counter() - t0) / steps
            finally:
                if viewer is not None:
                    viewer.stop()
    base = 0.5 * (result["without viewer"] + result["without viewer (again)"])
    return {"steps": steps, **{f"{k} s/step": v for k, v in result.items()}, "overhead": result["with viewer"] / base - 1.0}


def run_bench(run: Path, size: int = 512, frames: int = 30, train_steps: int = 300, device: str = "auto") -> dict:
    rows = render_times(Path(run), size, frames, device)
    overhead = training_overhead(Path(run), train_steps, device) if train_steps > 0 else None
    result = {"run": str(run), "render": rows, "training": overhead}
    (Path(run) / "bench_view.json").write_text(json.dumps(result, indent=2))
    return result


def print_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"viewer render time: {result['run']}")
    for col in ("mode", "size", "frames", "primitives", "median ms", "p90 ms", "fps", "jpeg ms", "device"):
        table.add_column(col, justify="right")
    for r in result["render"]:
        table.add_row(r["mode"], r["size"], str(r["frames"]), f"{r['primitives']:,}", f"{r['median_ms']:.0f}", f"{r['p90_ms']:.0f}", f"{r['fps']:.1f}", f"{r['jpeg_ms']:.1f}", r["device"])
    console = Console()
    console.print(table)
    t = result.get("training")
    if t:
        console.print(
            f"training, {t['steps']} steps: {t['without viewer s/step'] * 1000:.0f} / {t['without viewer (again) s/step'] * 1000:.0f} ms per step without the viewer, "
            f"{t['with viewer s/step'] * 1000:.0f} ms with it (no browser): overhead {100 * t['overhead']:+.1f}%"
        )
