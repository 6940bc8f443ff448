"""``scene3d bench models SCENE [--models ...]``: representations trained on one scene with
the same seed, step limit and training-time budget, compared on the test split and as files.

The models default to every representation that bakes to Gaussians (3DGS and Scaffold-GS). Each
trains with its preset (``--presets``, one per model or one for all, ``cpu`` by default; the step-valued
schedule scaled to ``--max-steps`` when given), the same seed, image order, step limit and time
budget (evaluation and checkpoints are not counted). Per model: test PSNR and SSIM, primitives
(Gaussians, or anchors and the children they decode), the checkpoint's size, the exported PLY's
size and that PLY's own test PSNR and SSIM (for Scaffold-GS the baked Gaussians, what other tools
show). Output: a table (or ``--json`` records); ``OUTPUT/`` holds one run folder per model, its PLY,
``bench_models.json`` and ``bench_models.png``.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

from scene3d.errors import Scene3dError


def run_bench(scene: Path, output: Path, models: tuple[str, ...] = (), presets: tuple[str, ...] = ("cpu",),
              time_budget: float = 1200.0, max_steps: int = 0, downscale: int = 1, seed: int = 0, overwrite: bool = False) -> list[dict]:  # fmt: skip
    from rich.console import Console

    from scene3d.bench.densify import claim_run_folders, scale_schedule
    from scene3d.models import get_model, model_names
    from scene3d.train.cli import build_args_class

    models, presets = tuple(models) or tuple(m for m in model_names() if get_model(m).caps.gaussians), tuple(presets)
    if len(presets) == 1:
        presets = presets * len(models)
    if len(presets) != len(models):
        raise Scene3dError(f"--presets names {len(presets)} presets for {len(models)} models; give one per model (or one for all)")
    if len(set(models)) != len(models):
        raise Scene3dError(f"--models lists a model twice: {' '.join(models)}")
    if time_budget <= 0 and max_steps <= 0:
        raise Scene3dError("give a positive --time-budget or --max-steps")
    classes = {m: get_model(m) for m in models}
    output = Path(output)
    runs = claim_run_folders(output, models, overwrite)
    console = Console(stderr=True)
    rows = []
    for name, preset in zip(models, presets):
        cls = classes[name]
        args = build_args_class(name, cls.default_strategy, preset)(scene=Path(scene), output=runs[name])
        args.data.downscale = downscale
        if max_steps > 0:
            scale_schedule(args, max_steps, cls.schedule_fields)
        args.train.time_budget = time_budget
        args.train.seed = seed
        args.train.eval_every = 0
        with contextlib.redirect_stdout(sys.stderr):  # progress and messages stay off the results
            row = _train_and_export(name, preset, cls, args, scene, runs[name], output)
        rows.append(row)
        console.print(f"{name}: PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f}, {row['steps']} steps, checkpoint {row['checkpoint_bytes'] / 1e6:.1f} MB"
                      + (f", PLY {row['ply_bytes'] / 1e6:.1f} MB at {row['ply_psnr']:.2f} dB" if "ply_bytes" in row else ""))  # fmt: skip
    meta = {"scene": str(Path(scene).resolve()), "downscale": downscale, "time_budget": time_budget, "max_steps": max_steps, "seed": seed}
    output.mkdir(parents=True, exist_ok=True)
    (output / "bench_models.json").write_text(json.dumps({"settings": meta, "results": rows}, indent=2))
    plot(rows, output / "bench_models.png")
    return rows


def _train_and_export(name: str, preset: str, cls, args, scene: Path, run: Path, output: Path) -> dict:
    """One model's run, its PLY and their figures."""
    from scene3d.commands.export import export_command
    from scene3d.device import pick_device
    from scene3d.export.formats import open_file
    from scene3d.runs import CHECKPOINT
    from scene3d.train.evaluation import evaluate_model
    from scene3d.train.setup import create_trainer

    t0 = time.perf_counter()
    trainer = create_trainer(Path(scene), run, name, args.model, cls.default_strategy, args.strategy, args.data, args.train)
    res = trainer.fit()
    wall = time.perf_counter() - t0
    stats = trainer.model.stats()
    row = {"model": name, "preset": preset, "psnr": round(res["psnr"], 3), "ssim": round(res["ssim"], 4), "steps": int(res["steps"]), "stopped_by": res["stopped_by"],
           "train_seconds": res["train_seconds"], "wall_seconds": round(wall, 1), "checkpoint_bytes": (run / CHECKPOINT).stat().st_size,
           "num_gaussians": stats.get("num_gaussians"), "num_anchors": stats.get("num_anchors"), "num_children": stats.get("num_children"), "run": str(run)}  # fmt: skip
    if cls.caps.gaussians:
        ply = export_command(run, output / f"{name}.ply")
        dev = pick_device("auto")
        file_model, _ = open_file(ply, dev, transform=trainer.ds.transform)
        file_res = evaluate_model(file_model, trainer.ds, dev, args.train.background_mode)
        row.update({"ply_bytes": ply.stat().st_size, "ply_gaussians": int(file_res.get("num_gaussians", 0)), "ply_psnr": round(file_res["psnr"], 3), "ply_ssim": round(file_res["ssim"], 4)})
    return row


def plot(rows: list[dict], path: Path) -> None:
    """Test PSNR of each model and of its PLY, against the checkpoint's and the PLY's size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["checkpoint_bytes"] / 1e6, r["psnr"], marker="o")
        ax.annotate(f"{r['model']} checkpoint", (r["checkpoint_bytes"] / 1e6, r["psnr"]), fontsize=8)
        if "ply_bytes" in r:
            ax.scatter(r["ply_bytes"] / 1e6, r["ply_psnr"], marker="s")
            ax.annotate(f"{r['model']} PLY", (r["ply_bytes"] / 1e6, r["ply_psnr"]), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("size (MB)")
    ax.set_ylabel("test PSNR (dB)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(rows: list[dict], scene: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"bench models on {scene}")
    for col in ("model", "preset", "PSNR", "SSIM", "steps", "primitives", "checkpoint MB", "PLY MB", "PLY PSNR"):
        t.add_column(col)
    for r in rows:
        prims = f"{r['num_anchors']:,} anchors / {r['num_children']:,}" if r.get("num_anchors") is not None else f"{r.get('num_gaussians') or 0:,}"
        t.add_row(r["model"], r["preset"], f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", str(r["steps"]), prims, f"{r['checkpoint_bytes'] / 1e6:.1f}",
                  f"{r['ply_bytes'] / 1e6:.1f}" if "ply_bytes" in r else "-", f"{r['ply_psnr']:.2f}" if "ply_psnr" in r else "-")  # fmt: skip
    Console().print(t)
