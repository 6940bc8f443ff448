"""``scene3d bench rays RUN``: what a ray model (a NeRF) costs to render and to train.

For a trained run of a ray representation (SlimmeRF today; every model that renders by rays):

* **render**, per rank for slimmable models (the full rank and each smaller one asked for): the
  seconds per test view over ``--images`` evenly spaced test views (the same code ``scene3d eval``
  and ``render`` run), the field's density evaluations per pixel, and test PSNR on those views;
* **viewer frame**: one frame at ``--viewer-size`` x ``--viewer-size`` pixels from the first test
  camera (its intrinsics scaled), as the viewer renders it, median of three;
* **training**: steps per second of the run's own trainer continuing from its checkpoint (its
  batch of rays, forward, losses, backward, optimiser, schedule), median of ``--rounds`` timings of
  ``--steps`` steps after a warm-up, the checkpoint's model copied so the run is not touched.

The device is synchronised around each timing. ``--json`` prints one record; the table goes to
stdout otherwise.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from scene3d.errors import Scene3dError


def _scaled_camera(camera, side: int):
    """``camera`` (one) with its image resized to side x side pixels (intrinsics scaled per axis)."""
    from scene3d.cameras import Cameras

    c = camera.on_host()
    sx, sy = side / float(c.width[0]), side / float(c.height[0])
    return Cameras.create(c.world_to_cam, c.fx * sx, c.fy * sy, c.cx * sx, c.cy * sy, side, side).to(camera.device)


def run_bench(run: Path, ranks: tuple[int, ...] = (16, 8, 4, 2, 1), images: int = 10, viewer_size: int = 256, steps: int = 20,
              warmup: int = 3, rounds: int = 3, device: str = "auto") -> dict:  # fmt: skip
    from rich.console import Console

    from scene3d.densify.base import Strategy
    from scene3d.metrics import psnr
    from scene3d.train.evaluation import target_image
    from scene3d.runs import open_run
    from scene3d.train.config import TrainConfig
    from scene3d.train.engine import SingleDevice
    from scene3d.train.trainer import Trainer

    if images < 1 or steps < 1 or rounds < 1 or warmup < 0 or not 16 <= viewer_size <= 4096:
        raise Scene3dError("--images, --steps and --rounds must be at least 1, --warmup at least 0 and --viewer-size 16 to 4096")
    console = Console(stderr=True)
    run_ = open_run(Path(run))
    cls = run_.model_class
    if cls.caps.densifiable or cls.caps.gaussians:
        raise Scene3dError(f"{run}: is a {run_.spec.model} run; bench rays measures ray representations (bench rasterize and train-step cover Gaussians)")
    engine = SingleDevice(device)
    dev = engine.device
    model = run_.load_model(dev)
    ds = run_.dataset()
    views = ds.test_indices or ds.train_indices
    keep = sorted(set(np.linspace(0, len(views) - 1, min(images, len(views))).round().astype(int).tolist()))
    views = [views[i] for i in keep]
    colour = ds.background_for(run_.background_mode)
    bg = None if colour is None else torch.tensor(colour, device=dev)
    trained_rank = model.rank if model.caps.slimmable else None
    rank_list = [r for r in dict.fromkeys((trained_rank, *ranks)) if r is not None and 1 <= r <= trained_rank] if trained_rank else [None]

    def render(camera, rank):
        out = model.render(camera, background=bg, options=None if rank is None else {"rank": rank})
        engine.synchronize()
        return out

    rows = []
    viewer_cam = _scaled_camera(ds.cameras[views[0]], viewer_size)
    for rank in rank_list:
        seconds, samples, scores, pixels = [], 0, [], 0
        render(ds.cameras[views[0]].to(dev), rank)  # warm-up: first calls allocate
        for i in views:
            cam = ds.cameras[i].to(dev)
            engine.synchronize()
            t0 = time.perf_counter()
            out = render(cam, rank)
            seconds.append(time.perf_counter() - t0)
            samples += out.num_samples
            pixels += out.rgb.shape[1] * out.rgb.shape[2]
            scores.append(float(psnr(out.rgb.clamp(0, 1), target_image(ds, i, bg, dev))))
        frame = []
        for _ in range(3):
            engine.synchronize()
            t0 = time.perf_counter()
            render(viewer_cam, rank)
            frame.append(time.perf_counter() - t0)
        row = {"rank": rank, "seconds_per_view": statistics.mean(seconds), "samples_per_pixel": samples / max(pixels, 1),
               "psnr": statistics.mean(scores), "viewer_frame_seconds": statistics.median(frame), "views": len(views)}  # fmt: skip
        rows.append(row)
        console.print(f"rank {rank if rank is not None else '-':>2}: {row['seconds_per_view']:.3f} s per view, {row['samples_per_pixel']:.1f} samples per pixel, "
                      f"{row['psnr']:.2f} dB on {len(views)} views; viewer frame {viewer_size}x{viewer_size}: {row['viewer_frame_seconds']:.3f} s")  # fmt: skip

    cfg = run_.model_config()
    start = run_.step
    with tempfile.TemporaryDirectory() as tmp:
        train_cfg = TrainConfig(max_steps=start + (warmup + steps) * rounds + 10, save_every=0, eval_every=0, log_every=10**9,
                                seed=int(run_.spec.train_cfg.get("seed", 0)), device=str(dev), background_mode=run_.background_mode)  # fmt: skip
        trainer = Trainer(run_.spec, Path(tmp), ds, engine.place(cls.from_state(run_.checkpoint["model"], cfg)), Strategy(), train_cfg, engine)
        trainer.step = start
        timings = []
        for _ in range(rounds):
            for _ in range(warmup):
                trainer.advance()
            engine.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                trainer.advance()
            engine.synchronize()
            timings.append(steps / (time.perf_counter() - t0))
    steps_per_second = statistics.median(timings)
    console.print(f"training: {steps_per_second:.2f} steps per second (median of {rounds} x {steps} steps)")
    return {"run": str(run), "model": run_.spec.model, "device": str(dev), "image_size": [int(ds.cameras.width[views[0]]), int(ds.cameras.height[views[0]])],
            "viewer_size": viewer_size, "rows": rows, "train_steps_per_second": steps_per_second}  # fmt: skip


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    w, h = result["image_size"]
    table = Table(title=f"bench rays: {result['run']} ({result['model']}, {result['device']}, {w}x{h} views)")
    for col in ("rank", "s / view", "samples / px", "PSNR dB", f"viewer frame {result['viewer_size']}px s"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row("-" if r["rank"] is None else str(r["rank"]), f"{r['seconds_per_view']:.3f}", f"{r['samples_per_pixel']:.1f}", f"{r['psnr']:.2f}",
                      f"{r['viewer_frame_seconds']:.3f}")  # fmt: skip
    Console().print(table)
    Console().print(f"training: {result['train_steps_per_second']:.2f} steps per second")
