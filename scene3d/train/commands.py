"""The eval, render, export and demo commands (their CLI signatures are in scene3d/cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from scene3d.errors import Scene3dError


def apply_rank(model, rank: int | None, source) -> None:
    """Slimming at test time: ``model`` renders with its first ``rank`` components."""
    if rank is None:
        return
    if not hasattr(model, "eval_rank"):
        raise Scene3dError(f"{source}: --rank slims rank-ordered models (slimmerf); this is a {getattr(model, 'name', '?')} model")
    if not 1 <= rank <= model.rank:
        raise Scene3dError(f"{source}: --rank {rank} is outside 1..{model.rank} (the rank it was trained to)")
    model.eval_rank = rank


def eval_command(target: Path, *, json_out: bool = False, device: str = "auto", rank: int | None = None) -> dict:
    from rich.console import Console

    from scene3d.train.run import load_run
    from scene3d.train.trainer import evaluate_model, pick_device

    spec, ds, model, state = load_run(target, device)
    apply_rank(model, rank, target)
    result = evaluate_model(model, ds, pick_device(device), spec.train_cfg.get("background_mode", "auto"))
    result.update({"step": int(state["step"]), "model": spec.model, "strategy": spec.strategy, "scene": spec.scene})
    if rank is not None:
        result["rank"] = rank
    if json_out:
        print(json.dumps(result))
    else:
        what = f"{result['num_gaussians']:,} primitives" if result.get("num_gaussians") is not None else f"rank {result.get('rank')}"
        Console().print(
            f"{target}: {result['eval_split']} split, {result['num_images']} images: PSNR {result['psnr']:.2f} dB, "
            f"SSIM {result['ssim']:.4f}, {what} (step {result['step']})"
        )
    return result


def render_command(run: Path, *, path: str = "test", output: Path | None = None, frames: int = 120, fps: int = 30, width: int | None = None, device: str = "auto", rank: int | None = None) -> Path:
    from rich.console import Console
    from rich.progress import track

    from scene3d.render import camera_path, render_frames, write_video
    from scene3d.train.run import load_run
    from scene3d.train.trainer import _composite, pick_device, save_pair

    spec, ds, model, _ = load_run(run, device)
    apply_rank(model, rank, run)
    dev = pick_device(device)
    bg = torch.tensor(ds.background, device=dev) if ds.format == "blender" else None
    if path == "test":
        folder = output or (Path(run) / "renders" / "test")
        indices = ds.test_indices or ds.train_indices
        for i in track(indices, description="rendering test views"):
            with torch.no_grad():
                pred = model.render(ds.cameras[i].to(dev), background=bg).rgb[0].clamp(0, 1)
            save_pair(folder, Path(ds.names[i]).stem, pred, _composite(ds, i, bg if bg is not None else torch.zeros(3, device=dev), dev)[0])
        Console().print(f"wrote {len(indices)} test renders (prediction | ground truth) to {folder}")
        return folder
    cams = camera_path(ds, path, frames=frames, width=width)
    out = output or (Path(run) / "renders" / f"{path}.mp4")
    write_video(track(render_frames(model, cams, dev, bg), total=len(cams), description=f"rendering {path}"), out, fps=fps)
    Console().print(f"wrote {len(cams)} frames to {out}")
    return out


def render_path_command(target: Path, path_file: Path, *, output: Path | None = None, width: int | None = None, height: int | None = None, mode: str = "rgb", device: str = "auto", rank: int | None = None) -> Path:
    """Renders a camera path saved by the viewer (input frame) for a run or a scene file."""
    from rich.console import Console
    from rich.progress import track

    from scene3d.render import render_camera_path
    from scene3d.train.trainer import pick_device
    from scene3d.viewer.camera import CameraPath
    from scene3d.viewer.target import load_target

    cam_path = CameraPath.load(path_file)
    dev = pick_device(device)
    target = load_target(Path(target), dev, max_thumbnails=0)
    apply_rank(target.model, rank, target.source)
    if output is None:
        folder = target.source / "renders" if target.kind == "run" else target.source.parent
        output = folder / f"{Path(path_file).stem}.mp4"
    if width is not None and height is None:
        height = max(2, round(cam_path.height * width / cam_path.width / 2) * 2)
    progress = lambda frames, n: track(frames, total=n, description=f"rendering {Path(path_file).name}")  # noqa: E731
    render_camera_path(target.model, cam_path, target.to_model, dev, Path(output), mode=mode, background=target.background, width=width, height=height, progress=progress)
    Console().print(f"wrote {cam_path.num_frames} frames ({width or cam_path.width}x{height or cam_path.height}, {cam_path.fps:g} fps) to {output}")
    return Path(output)


def model_from_scene_file(path: Path, ds, device: str = "auto"):
    """A GaussianModel from a scene file in the input frame (any format), moved into ``ds``'s
    normalised frame, ready to render with ``ds``'s cameras."""
    from scene3d.export.formats import read_scene
    from scene3d.models.config import GaussianConfig
    from scene3d.models.gaussians import GaussianModel
    from scene3d.train.trainer import pick_device

    params = read_scene(path, transform=np.asarray(ds.transform, dtype=np.float64))
    degree = int(round(float(np.sqrt(params["shN"].shape[1] + 1)))) - 1
    dev = pick_device(device)
    return GaussianModel({k: v.to(dev) for k, v in params.items()}, GaussianConfig(sh_degree=degree), scene_scale=1.0)


def eval_file_command(path: Path, scene: Path, data_cfg, *, json_out: bool = False, device: str = "auto") -> dict:
    """Test-split metrics of a scene file (ply, splat, spz, sog, ...) against ``scene``'s images."""
    from rich.console import Console

    from scene3d.train.run import prepare_dataset
    from scene3d.train.trainer import evaluate_model, pick_device

    if Path(path).name.endswith(".slimmerf"):
        from scene3d.models.slimmerf import load_slimmed

        ds = prepare_dataset(Path(scene), data_cfg, "slimmerf")
        model, transform = load_slimmed(path, pick_device(device))
        if transform is None or not np.allclose(transform, ds.transform, atol=1e-4):
            raise Scene3dError(f"{path}: was trained in another normalised frame than {scene} gives with these data options (use the run's --downscale and data options)")
    else:
        ds = prepare_dataset(Path(scene), data_cfg, "3dgs")
        model = model_from_scene_file(Path(path), ds, device)
    result = evaluate_model(model, ds, pick_device(device))
    result.update({"file": str(path), "scene": str(scene), "bytes": Path(path).stat().st_size})
    if json_out:
        print(json.dumps(result))
    else:
        Console().print(
            f"{path}: {result['eval_split']} split of {scene}, {result['num_images']} images: PSNR {result['psnr']:.2f} dB, "
            f"SSIM {result['ssim']:.4f}, " + (f"{result['num_gaussians']:,} Gaussians, " if result.get("num_gaussians") is not None else "") + f"{result['bytes'] / 1e6:.2f} MB"
        )
    return result


def run_params_in_input_frame(run: Path) -> tuple[dict, np.ndarray]:
    """(params, normalised -> input transform) of a run's latest checkpoint; refuses non-Gaussian runs."""
    from scene3d.train import checkpoint as ckpt
    from scene3d.train.trainer import RunSpec

    run = Path(run)
    if not run.exists():
        raise Scene3dError(f"{run}: does not exist")
    spec = RunSpec.from_yaml(run / "config.yaml")
    state = ckpt.load(run / "checkpoints" / "latest.pt")
    if spec.model != "3dgs":
        raise Scene3dError(f"{run}: is a {spec.model} run; scene files hold Gaussians (3dgs runs)")
    return checkpoint_params_in_input_frame(state)


def check_sog_options(options: dict) -> None:
    """Refuses SOG options out of range before any work is done (one sentence naming the flag)."""
    bits, palette = options.get("position_bits", 16), options.get("sh_palette")
    if not 8 <= int(bits) <= 16:
        raise Scene3dError(f"--sog-position-bits must be in 8..16, got {bits}")
    if palette is not None and not 0 <= int(palette) <= 65536:
        raise Scene3dError(f"--sog-sh-palette must be in 0..65536 (0: splat-transform's rule), got {palette}")
    if int(options.get("sh_iterations", 10)) < 1:
        raise Scene3dError(f"--sog-sh-iterations must be at least 1, got {options['sh_iterations']}")


def weigh_and_prune(run: Path, params: dict, prune_below: float | None, weighted: bool, device: str = "auto") -> tuple[dict, object]:
    """(params without the Gaussians contributing fewer than ``prune_below`` pixels to the run's
    training views, their contributions for weighting or None). Contributions are computed only
    when needed; a run whose data cannot be loaded is refused for pruning and exported unweighted."""
    from rich.console import Console

    from scene3d.compress.importance import prune_below as prune, run_contributions

    if prune_below is None and not weighted:
        return params, None
    console = Console(stderr=True)
    try:
        contrib = run_contributions(run, device)
    except Scene3dError as e:
        if prune_below is not None:
            raise
        console.print(f"note: the SOG palette is clustered unweighted ({e})")
        return params, None
    if prune_below is not None:
        params, contrib = prune(run, params, contrib, prune_below, console)
    return params, (contrib if weighted else None)


def checkpoint_params_in_input_frame(state: dict) -> tuple[dict, np.ndarray]:
    """(params on the CPU, normalised -> input transform) of a loaded checkpoint."""
    to_input = np.linalg.inv(np.asarray(state["dataset"]["transform"], dtype=np.float64))
    params = {k: v.detach().cpu() for k, v in state["model"]["params"].items()}
    return params, to_input


def sog_layout_for(target: Path) -> str:
    """The SOG grid layout that compresses a target best: ``plas`` for a run trained with
    ``--compress-grid`` (its attributes were smoothed along that sort), ``morton`` otherwise (on
    models trained without it, Z-order of the positions gave slightly smaller files than PLAS)."""
    from scene3d.train.trainer import RunSpec

    target = Path(target)
    if target.is_dir() and (target / "config.yaml").is_file():
        return "plas" if RunSpec.from_yaml(target / "config.yaml").train_cfg.get("compress_grid") else "morton"
    return "morton"


def export_command(target: Path, output: Path, format: str | None = None, *, prune_below: float | None = None,
                   weighted: bool = True, device: str = "auto", **options) -> Path:  # fmt: skip
    """Writes a run (in the input data's frame) or converts a scene file, as ``format`` (default:
    what ``output``'s name says).

    For a run, ``prune_below`` drops the Gaussians that contribute fewer pixels than that to the
    training views, and ``weighted`` clusters a SOG's higher SH weighted by those contributions
    (:mod:`scene3d.compress.importance`; when the run's data cannot be loaded the SOG is written
    unweighted, with a note)."""
    from rich.console import Console

    from scene3d.export.formats import format_of_path, get_format, read_scene

    target, output = Path(target), Path(output)
    if format == "slimmerf" or (format is None and output.name.endswith(".slimmerf")):
        return export_slimmed(target, output, options.get("rank"))
    fmt = get_format(format) if format is not None else format_of_path(output)
    if fmt.name == "sog":
        check_sog_options(options)
    if prune_below is not None and not target.is_dir():
        raise Scene3dError(f"{target}: --prune-below needs a run folder (its training views weigh the Gaussians), not a scene file")
    if target.is_dir():
        params, to_input = run_params_in_input_frame(target)
        weighted = weighted and fmt.name == "sog" and params["shN"].shape[1] > 0  # the weights serve the SH palette
        params, weights = weigh_and_prune(target, params, prune_below, weighted, device)
        if weights is not None:
            options = {**options, "weights": weights}
    else:
        params, to_input = read_scene(target), None
    if options.get("layout") == "auto":
        options = {**options, "layout": sog_layout_for(target)}
    fmt.write(output, params, transform=to_input, **options)
    n = params["means"].shape[0]
    Console().print(f"wrote {n:,} Gaussians to {output} as {fmt.name} ({output.stat().st_size / 1e6:.2f} MB, input coordinate frame)")
    return output


def export_slimmed(run: Path, output: Path, rank: int | None) -> Path:
    """A slimmerf run truncated to ``rank`` (default: its full rank) as a file that loads alone."""
    from rich.console import Console

    from scene3d.models.slimmerf import save_slimmed
    from scene3d.train.run import load_run

    if not run.is_dir():
        raise Scene3dError(f"{run}: --format slimmerf writes a trained slimmerf run; give its run folder")
    spec, _, model, state = load_run(run, "cpu")
    if spec.model != "slimmerf":
        raise Scene3dError(f"{run}: is a {spec.model} run; --format slimmerf needs a slimmerf run")
    rank = model.rank if rank is None else rank
    if not 1 <= rank <= model.rank:
        raise Scene3dError(f"{run}: --rank {rank} is outside 1..{model.rank} (the rank it was trained to)")
    save_slimmed(model, rank, output, transform=state["dataset"]["transform"])
    Console().print(f"wrote {run} at rank {rank} (of {model.rank}) to {output} ({output.stat().st_size / 1e6:.2f} MB)")
    return output


def demo_command(output: Path, *, max_steps: int = 3000, time_budget: float = 420.0) -> dict:
    """Embedded default scene -> train (3dgs, demo preset) -> eval -> export -> summary."""
    from rich.console import Console
    from rich.table import Table

    from scene3d.train.cli import build_args_class, run_training

    scene = Path(__file__).resolve().parents[2] / "data" / "default_scene"
    if not (scene / "transforms.json").is_file():
        raise Scene3dError(f"the embedded default scene is missing at {scene}; run scripts/make_default_scene.py")
    output = Path(output)
    cls = build_args_class("3dgs", "adc", "demo")
    args = cls(scene=scene, output=output)
    args.train.max_steps = max_steps
    args.train.time_budget = time_budget
    if output.exists() and any(output.iterdir()):
        raise Scene3dError(f"{output} already holds files; choose another folder with -o")
    result = run_training(scene, output, "3dgs", args.model, "adc", args.strategy, args.data, args.train)
    ply = export_command(output, output / "scene.ply")
    # the file to ship: a SOG of the Gaussians that show in the training views, scored on the test views
    sog = export_command(output, output / "scene.sog", prune_below=1.0, position_bits=13)
    from scene3d.train.run import load_run
    from scene3d.train.trainer import evaluate_model, pick_device

    spec, ds, _, _ = load_run(output)
    sog_metrics = evaluate_model(model_from_scene_file(sog, ds), ds, pick_device("auto"), spec.train_cfg.get("background_mode", "auto"))
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
    (output / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return result
