"""``scene3d demo``: the embedded default scene -> train -> eval -> export (ply and a pruned SOG,
scored on the test views) -> a summary of where everything is."""

from __future__ import annotations

import json
from pathlib import Path

from scene3d.errors import Scene3dError

DEFAULT_SCENE = Path(__file__).resolve().parents[2] / "data" / "default_scene"


def demo_command(output: Path, *, max_steps: int = 3000, time_budget: float = 420.0) -> dict:
    from rich.console import Console
    from rich.table import Table

    from scene3d.atomic import atomic_write
    from scene3d.commands.export import export_command
    from scene3d.export.formats import open_file
    from scene3d.device import pick_device
    from scene3d.models import DEFAULT_MODEL, get_model
    from scene3d.runs import open_run
    from scene3d.train.cli import build_args_class, run_training
    from scene3d.train.evaluation import evaluate_model

    scene = DEFAULT_SCENE
    if not (scene / "transforms.json").is_file():
        raise Scene3dError(f"the embedded default scene is missing at {scene}; run scripts/make_default_scene.py")
    output = Path(output)
    strategy = get_model(DEFAULT_MODEL).default_strategy
    cls = build_args_class(DEFAULT_MODEL, strategy, "demo")
    args = cls(scene=scene, output=output)
    args.train.max_steps = max_steps
    args.train.time_budget = time_budget
    if output.exists() and any(output.iterdir()):
        raise Scene3dError(f"{output} already holds files; choose another folder with -o")
    result = run_training(scene, output, DEFAULT_MODEL, args.model, strategy, args.strategy, args.data, args.train)
    run = open_run(output)  # read once for both exports and the SOG's score
    ply = export_command(run, output / "scene.ply")
    # the file to ship: a SOG of the Gaussians that show in the training views, scored on the test views
    sog = export_command(run, output / "scene.sog", prune_below=1.0, position_bits=13)
    ds = run.dataset()
    dev = pick_device("auto")
    sog_model, _ = open_file(sog, dev, transform=ds.transform)
    sog_metrics = evaluate_model(sog_model, ds, dev, run.background_mode)
    table = Table(title="scene3d demo", show_header=False)
    table.add_row("scene", str(scene))
    table.add_row("steps", f"{result['steps']} ({result['train_seconds']} s)")
    table.add_row(f"{result['eval_split']} PSNR / SSIM", f"{result['psnr']:.2f} dB / {result['ssim']:.4f}")
    table.add_row("Gaussians", f"{result['num_gaussians']:,}")
    table.add_row("run folder", str(output))
    table.add_row("test renders", str(output / "renders" / "test"))
    table.add_row("training curve", str(output / "training_curve.png"))
    table.add_row("exported scene", f"{ply} ({ply.stat().st_size / 1e6:.2f} MB)")
    ratio = ply.stat().st_size / sog.stat().st_size
    table.add_row("compressed scene", f"{sog} ({sog.stat().st_size / 1e6:.2f} MB, {ratio:.1f}x smaller, {sog_metrics['num_gaussians']:,} Gaussians, "
                  f"{sog_metrics['psnr']:.2f} dB)")  # fmt: skip
    table.add_row("next", f"scene3d view {sog}   |   scene3d render {output} --path orbit")
    Console().print(table)
    summary = {**result, "ply": str(ply), "sog": str(sog), "sog_psnr": sog_metrics["psnr"], "sog_num_gaussians": sog_metrics["num_gaussians"], "sog_ratio": ratio}
    atomic_write(output / "demo_summary.json", json.dumps(summary, indent=2))
    return result
