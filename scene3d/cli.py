"""The ``scene3d`` command: one entry point with subcommands, built by tyro.

Every subcommand imports its heavy modules inside its function, so ``scene3d --help`` is instant.
User errors (:class:`~scene3d.errors.Scene3dError`) print one sentence and exit with status 2;
``--debug`` (anywhere on the command line) shows the full traceback instead.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Literal

import tyro

from scene3d.data.config import DataConfig
from scene3d.data.sfm import ProcessConfig
from scene3d.errors import Scene3dError
from scene3d.export.formats import format_names
from scene3d.models import DEFAULT_MODEL

Flat = tyro.conf.arg(name="")  # a nested config whose fields appear as top-level flags


def process(
    images: tyro.conf.Positional[Path],
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))],
    cfg: Annotated[ProcessConfig, Flat] = ProcessConfig(),
) -> None:
    """Structure from motion on a captured image folder: camera poses and sparse points (pycolmap, CPU).

    Writes OUTPUT/images/, OUTPUT/sparse/0/ (a COLMAP model that `scene3d info` and `scene3d train`
    read) and OUTPUT/process_summary.json.
    """
    from scene3d.data.sfm import run_process

    run_process(images, output, cfg)


def info(
    scene: tyro.conf.Positional[Path],
    json_out: Annotated[bool, tyro.conf.arg(name="json")] = False,
    data: Annotated[DataConfig, Flat] = DataConfig(),
) -> None:
    """What a user checks before training: format, cameras, split, sparse points, image size."""
    from scene3d.data import load_dataset
    from scene3d.data.summary import dataset_summary, print_summary

    summary = dataset_summary(load_dataset(scene, data))
    if json_out:
        print(json.dumps(summary))
    else:
        print_summary(summary)


def train(
    scene: tyro.conf.Positional[Path],
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))],
    model: str = DEFAULT_MODEL,
    strategy: str = "adc",
    preset: str = "default",
) -> None:
    """Trains a representation on a scene: `scene3d train SCENE -o RUN [--model 3dgs] [--strategy adc]`.

    Run `scene3d train --help` for every option; `--model NAME --help` and `--strategy NAME --help`
    show that model's and strategy's fields (set as --model.FIELD and --strategy.FIELD).
    """
    raise AssertionError("handled by scene3d.train.cli")  # pragma: no cover


def eval(
    target: tyro.conf.Positional[Path],
    data: Annotated[Path | None, tyro.conf.arg(metavar="SCENE")] = None,
    json_out: Annotated[bool, tyro.conf.arg(name="json")] = False,
    device: str = "auto",
    rank: int | None = None,
    cfg: Annotated[DataConfig, Flat] = DataConfig(),
) -> None:
    """Test-split metrics (PSNR, SSIM) of a trained run, or of a scene file against a dataset:
    `scene3d eval RUN` or `scene3d eval FILE --data SCENE [--downscale N]`.

    Args:
        target: a run folder, or a scene file (.ply, .splat, .compressed.ply, .spz, .sog).
        data: the dataset a scene file is compared with (its test split; options as for `scene3d info`).
        json_out: print one JSON object.
        device: auto, cpu or cuda.
        rank: slim a slimmerf run to this rank at test time (no retraining).
    """
    from scene3d.commands.evaluate import eval_command, eval_file_command

    if target.is_dir() or not target.exists():
        if data is not None:
            raise Scene3dError(f"{target}: --data is for scene files; a run is evaluated on the dataset it was trained on")
        eval_command(target, json_out=json_out, device=device, rank=rank)
    else:
        if data is None:
            raise Scene3dError(f"{target}: a scene file is evaluated against a dataset; add --data SCENE (and --downscale as in training)")
        eval_file_command(target, data, cfg, json_out=json_out, device=device)


def render(
    target: tyro.conf.Positional[Path],
    path: str = "test",
    output: Annotated[Path | None, tyro.conf.arg(aliases=("-o",))] = None,
    frames: int = 120,
    fps: int = 30,
    width: int | None = None,
    height: int | None = None,
    mode: Literal["rgb", "depth", "alpha"] = "rgb",
    device: str = "auto",
    rank: int | None = None,
) -> None:
    """Renders a run: its test views (PNGs beside the ground truth), an orbit or spiral to an mp4,
    or a camera path saved by the viewer (`--path PATH.json`, also for scene files).

    Args:
        target: a run folder (or, with a camera-path file, a scene file).
        path: test, orbit, spiral, or a camera-path JSON file saved by `scene3d view`.
        output: the folder (test) or mp4 file to write.
        frames: frames of an orbit or spiral.
        fps: frame rate of an orbit or spiral (a camera path has its own).
        width: video width (default: the training images' or the camera path's).
        height: video height of a camera path (default: the path's).
        mode: rgb, depth (colour-mapped) or alpha, for camera paths.
        device: auto, cpu or cuda.
        rank: slim a slimmerf run to this rank at test time (no retraining).
    """
    from scene3d.commands.render import render_command, render_path_command
    from scene3d.render import check_video_settings

    check_video_settings(frames, fps, width, height)
    if path.lower().endswith(".json"):
        render_path_command(target, Path(path), output=output, width=width, height=height, mode=mode, device=device, rank=rank)
        return
    if path not in ("test", "orbit", "spiral"):
        raise Scene3dError(f"--path {path}: give test, orbit, spiral or a camera-path .json file")
    render_command(target, path=path, output=output, frames=frames, fps=fps, width=width, device=device, rank=rank)


def export(
    target: tyro.conf.Positional[Path],
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))],
    format: Literal[tuple(format_names())] | None = None,  # type: ignore[valid-type]
    rank: int | None = None,
    sog_sh_iterations: int = 10,
    sog_sh_palette: int | None = None,
    sog_layout: Literal["auto", "morton", "plas"] = "auto",
    sog_position_bits: int = 16,
    sog_weighted: bool = True,
    prune_below: float | None = None,
    num_points: int = 1_000_000,
    min_alpha: float = 0.5,
    device: str = "auto",
) -> None:
    """Writes a trained run (in the input data's coordinate frame) or converts a scene file to a
    format other tools open: ply, splat, compressed-ply, spz, sog (default: from OUTPUT's name), or
    any run's geometry as a coloured point cloud (--format points).

    Args:
        target: a run folder or a scene file.
        output: the file to write (.ply, .splat, .compressed.ply, .spz, .sog, .slimmerf for a slimmable run, or any name with --format points).
        format: the format (default: the one OUTPUT's name says); slimmerf writes a slimmable run (truncated with --rank) as a file that loads on its own.
        rank: for model files (slimmerf): keep the first RANK components (default: all).
        sog_sh_iterations: k-means iterations for sog's higher-SH palette.
        sog_sh_palette: most entries of sog's higher-SH palette (default 8192; 0: splat-transform's rule, up to 65536).
        sog_layout: sog's grid layout: morton (Z-order of positions), plas (self-organising sort), or auto: plas for runs trained with --compress-grid, morton otherwise.
        sog_position_bits: precision of sog's 16-bit positions, 8..16 (13: a smaller file, on fox at no measurable PSNR cost).
        sog_weighted: for a run: cluster sog's higher SH weighted by each Gaussian's contribution to the training views.
        prune_below: for a run: drop the Gaussians that contribute fewer pixels than this to all training views together (e.g. 1).
        num_points: for points: at most this many points (a NeRF is sampled with about twice as many rays over its training views).
        min_alpha: for points: keep pixels (NeRFs) or Gaussians at least this opaque.
        device: where a run's model is loaded and weighed (auto, cpu or cuda).
    """
    from scene3d.commands.export import export_command
    from scene3d.export.formats import format_of_path, get_format

    fmt = get_format(format) if format is not None else format_of_path(output)
    options = {"sh_iterations": sog_sh_iterations, "sh_palette": sog_sh_palette, "layout": sog_layout, "position_bits": sog_position_bits} if fmt.name == "sog" else {}
    if fmt.kind == "points":
        options = {"num_points": num_points, "min_alpha": min_alpha}
    export_command(target, output, fmt.name, prune_below=prune_below, weighted=sog_weighted, rank=rank, device=device, **options)


def view(
    target: tyro.conf.Positional[Path],
    host: str = "127.0.0.1",
    port: int = 8080,
    device: str = "auto",
    up: Literal["auto", "+x", "+y", "+z", "-x", "-y", "-z"] = "auto",
    output_dir: Path | None = None,
) -> None:
    """Opens a trained run or a scene file in the web viewer (viser), rendered on this machine:
    `scene3d view RUN` or `scene3d view FILE`, then open the printed URL.

    The page never names a path here: crop exports, camera paths and videos go to the output folder
    under names the viewer makes (exports/crop-NNN.*, camera_paths/path-NNN.json, renders/path-NNN.mp4).

    Args:
        target: a run folder or a scene file (.ply, .splat, .compressed.ply, .spz, .sog).
        host: interface to listen on; 127.0.0.1 keeps the viewer private to this machine (0.0.0.0 serves every interface, and anyone reaching it can view the scene and write exports into the output folder).
        port: port to listen on (the next free one is taken when it is busy).
        device: auto, cpu or cuda.
        up: the scene's up axis; auto takes the training cameras' mean up direction (+z for scene files).
        output_dir: where the page's exports, camera paths and videos go (default: the run folder, or the scene file's folder).
    """
    from scene3d.viewer.server import view_command

    view_command(target, host=host, port=port, device=device, up=up, output_dir=output_dir)


def demo(
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("runs/demo"),
    max_steps: int = 3000,
    time_budget: float = 420.0,
) -> None:
    """The whole pipeline on the embedded default scene: train 3DGS, evaluate, export, summarise."""
    from scene3d.commands.demo import demo_command

    demo_command(output, max_steps=max_steps, time_budget=time_budget)


def bench_rasterize(
    json_out: Annotated[bool, tyro.conf.arg(name="json")] = False,
    repeats: int = 5,
    torch_on_garden: bool = False,
) -> None:
    """Forward and forward+backward times of each Gaussian rasterization backend on 10k Gaussians
    at 128x128 and on garden_points (648x420, 3 cameras).

    Args:
        json_out: print a JSON list of records instead of a table.
        repeats: timed runs per measurement (the median is reported), after one warm-up.
        torch_on_garden: also time the PyTorch reference on garden (slow, tens of GB).
    """
    from scene3d.bench.rasterize import main as run_bench

    run_bench(as_json=json_out, repeats=repeats, torch_on_garden=torch_on_garden)


def bench_densify(
    scene: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="SCENE")],
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("runs/bench_densify"),
    strategies: tuple[str, ...] = ("adc", "pixel-error", "lpm", "mcmc"),
    time_budget: float = 600.0,
    max_steps: int = 3000,
    preset: str = "short",
    downscale: int = 1,
    cap_max: int = -1,
    seed: int = 0,
    overwrite: bool = False,
    model: str | None = None,
    json_out: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """Trains 3DGS with every densification strategy on SCENE under the same time budget and
    prints test PSNR, SSIM, Gaussian count, steps and times (plots in OUTPUT/bench_densify.png).

    Args:
        scene: a scene folder (any format `scene3d info` reads).
        output: folder for one run per strategy, bench_densify.json and bench_densify.png.
        strategies: the strategies to compare.
        time_budget: training seconds per strategy (evaluation excluded).
        max_steps: step limit per strategy; the preset's schedule is scaled to it (the time budget may end a run earlier).
        preset: training preset shared by all strategies (see `scene3d train --help`).
        downscale: image downscale factor.
        cap_max: primitive budget of the strategies that have one; -1: ADC's final count (ADC runs first); 0: each strategy's own default.
        seed: seed shared by every run.
        overwrite: replace runs already in OUTPUT.
        model: the densifiable representation to train (default: the default model, 3dgs).
        json_out: print JSON records instead of a table.
    """
    from scene3d.bench.densify import print_table, run_bench

    rows = run_bench(scene, output, strategies, time_budget, max_steps, preset, downscale, cap_max, seed, overwrite, model)
    if json_out:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, scene)


def bench_export(
    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")],
    output: Annotated[Path | None, tyro.conf.arg(aliases=("-o",))] = None,
    formats: tuple[Literal[tuple(format_names("gaussians"))], ...] = tuple(format_names("gaussians")),  # type: ignore[valid-type]
    reference: bool = True,
    sog_sh_iterations: int = 10,
    sog_sh_palette: int | None = None,
    sog_layout: Literal["auto", "morton", "plas"] = "auto",
    sog_position_bits: int = 16,
    sog_weighted: bool = True,
    prune_below: float | None = None,
    reference_iterations: int | None = None,
    device: str = "auto",
    json_out: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """Writes a trained run in every scene-file format, reads each back and prints size, ratio to
    PLY, write and read time, and the test PSNR/SSIM of the decoded scene (plot in OUTPUT/bench_export.png).

    Args:
        run: a trained 3dgs run folder.
        output: folder for the files, bench_export.json and bench_export.png (default: RUN/bench_export).
        formats: the formats to measure.
        reference: also measure the SOG that PlayCanvas splat-transform makes from our PLY (when installed).
        sog_sh_iterations: k-means iterations for the higher-SH palette (ours and splat-transform's).
        sog_sh_palette: most entries of our sog's higher-SH palette (default 8192; 0: splat-transform's rule).
        sog_layout: our sog's grid layout: morton, plas, or auto (plas for runs trained with --compress-grid).
        sog_position_bits: precision of our sog's 16-bit positions, 8..16.
        sog_weighted: cluster our sog's higher SH weighted by each Gaussian's contribution to the training views.
        prune_below: first drop the Gaussians that contribute fewer pixels than this to the training views (every format; ratios stay to the whole model's PLY).
        reference_iterations: splat-transform's k-means iterations (default: --sog-sh-iterations). Without
            a GPU each one takes about 18 min for 160k Gaussians and its 65,536-entry palette.
        device: auto, cpu or cuda.
        json_out: print JSON records instead of a table.
    """
    from scene3d.bench.export import print_table, run_bench

    sog_options = {"sh_iterations": sog_sh_iterations, "sh_palette": sog_sh_palette, "layout": sog_layout, "position_bits": sog_position_bits}
    rows = run_bench(run, output, formats, reference, sog_options, device, reference_iterations, prune_below, sog_weighted)
    if json_out:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, run)


def bench_view(
    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")],
    size: int = 512,
    frames: int = 30,
    train_steps: int = 300,
    device: str = "auto",
    json_out: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """Viewer speed: server render time per frame (rgb and depth) at SIZE x SIZE from the training
    cameras' poses, and the training slowdown of `--viewer` with no browser connected (RUN/bench_view.json).

    Args:
        run: a trained run folder.
        size: frame width and height in pixels.
        frames: timed frames per render mode (after one warm-up frame).
        train_steps: steps trained without, with and again without the live viewer (0: skip).
        device: auto, cpu or cuda.
        json_out: print JSON instead of a table.
    """
    from scene3d.bench.view import print_result, run_bench

    result = run_bench(run, size, frames, train_steps, device)
    if json_out:
        print(json.dumps(result, indent=2))
    else:
        print_result(result)


def bench_slim(
    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")],
    ranks: tuple[int, ...] = (1, 2, 4, 8, 12, 16),
    images: int = 0,
    device: str = "auto",
    json_out: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """The slimming curve of a slimmerf run: for each rank, the run written truncated to it
    (`--format slimmerf`), loaded alone and evaluated: size on disk and test PSNR (RUN/bench_slim.png).

    Args:
        run: a trained slimmerf run folder.
        ranks: the ranks to keep (those above the trained rank are skipped).
        images: evaluate on this many evenly spaced test views (0: all).
        device: auto, cpu or cuda.
        json_out: print JSON instead of a table.
    """
    from scene3d.bench.slim import print_table, run_bench

    result = run_bench(run, ranks, images, device)
    if json_out:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


def bench_train_step(
    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")],
    steps: int = 50,
    warmup: int = 5,
    rounds: int = 3,
    backend: Literal["auto", "gsplat", "cpu", "torch"] | None = None,
    log_every: int = 20,
    device: str = "auto",
    json_out: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """The trainer's step time against a bare loop (rasterize forward and backward, loss, Adam
    step) on the same Gaussians (RUN's checkpoint), cameras, images and backend; densification off.

    Args:
        run: a trained run of a Gaussian representation.
        steps: timed steps per measurement.
        warmup: untimed steps before each measurement.
        rounds: measurements of each (alternated); the median is reported.
        backend: rasterization backend (default: the run's).
        log_every: the trainer's log interval (its one synchronisation with the host).
        device: auto, cpu or cuda.
        json_out: print one JSON object (backend, num_gaussians, trainer_ms, bare_ms, ratio, ...).
    """
    from scene3d.bench.train_step import main as run_bench

    run_bench(run, as_json=json_out, steps=steps, warmup=warmup, rounds=rounds, device=device, backend=backend, log_every=log_every)


def bench_rays(
    run: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")],
    ranks: tuple[int, ...] = (16, 8, 4, 2, 1),
    images: int = 10,
    viewer_size: int = 256,
    steps: int = 20,
    warmup: int = 3,
    rounds: int = 3,
    device: str = "auto",
    json_out: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """What a ray model (a NeRF run) costs: seconds per test view, samples per pixel and PSNR per
    rank (slimmable models), a viewer frame's time, and training steps per second.

    Args:
        run: a trained run of a ray representation (slimmerf).
        ranks: ranks to render at besides the trained one (slimmable models; others render once).
        images: evenly spaced test views timed per rank.
        viewer_size: side of the square viewer frame timed, in pixels.
        steps: training steps per timing.
        warmup: untimed training steps before each timing.
        rounds: training timings; the median is reported.
        device: auto, cpu or cuda.
        json_out: print one JSON object instead of a table.
    """
    from scene3d.bench.rays import print_table, run_bench

    result = run_bench(run, ranks, images, viewer_size, steps, warmup, rounds, device)
    if json_out:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)


def bench_models(
    scene: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="SCENE")],
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("runs/bench_models"),
    models: tuple[str, ...] = (),
    presets: tuple[str, ...] = ("cpu",),
    time_budget: float = 1200.0,
    max_steps: int = 0,
    downscale: int = 1,
    seed: int = 0,
    overwrite: bool = False,
    json_out: Annotated[bool, tyro.conf.arg(name="json")] = False,
) -> None:
    """Trains each representation on SCENE with the same seed, step limit and time budget and
    prints test PSNR, SSIM, steps, primitives, checkpoint size, exported PLY size and the PLY's own
    test PSNR (plot in OUTPUT/bench_models.png).

    Args:
        scene: a scene folder (any format `scene3d info` reads).
        output: folder for one run and one PLY per model, bench_models.json and bench_models.png.
        models: the representations to compare (default: every one that bakes to Gaussians, 3dgs and scaffold).
        presets: one preset per model, or one for all (each model's two-CPU-core recipe by default).
        time_budget: training seconds per model (evaluation excluded).
        max_steps: step limit shared by every model, each preset's schedule scaled to it (0: each preset's own).
        downscale: image downscale factor.
        seed: seed shared by every run.
        overwrite: replace runs already in OUTPUT.
        json_out: print JSON records instead of a table.
    """
    from scene3d.bench.models import print_table, run_bench

    rows = run_bench(scene, output, models, presets, time_budget, max_steps, downscale, seed, overwrite)
    if json_out:
        print(json.dumps(rows, indent=2))
    else:
        print_table(rows, scene)


BENCH_COMMANDS = {"rasterize": bench_rasterize, "models": bench_models, "densify": bench_densify, "export": bench_export, "view": bench_view, "slim": bench_slim, "train-step": bench_train_step,
                  "rays": bench_rays}  # fmt: skip


def bench(name: tyro.conf.Positional[Literal[tuple(BENCH_COMMANDS)]]) -> None:  # type: ignore[valid-type]
    """Benchmarks: `scene3d bench rasterize` (rasterizer backends), `scene3d bench densify SCENE`
    (densification strategies at the same time budget), `scene3d bench export RUN` (scene-file
    formats: size against quality), `scene3d bench view RUN` (viewer frame time, live-viewer
    overhead), `scene3d bench slim RUN` (slimmable runs: rank -> size -> PSNR), `scene3d bench
    train-step RUN` (the trainer's step against a bare loop). `scene3d bench NAME --help` for options."""
    raise AssertionError("handled by main")  # pragma: no cover


COMMANDS = {
    "process": process,
    "info": info,
    "train": train,
    "eval": eval,
    "render": render,
    "export": export,
    "view": view,
    "demo": demo,
    "bench": bench,
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args and args[0] == "train":
            from scene3d.train.cli import train_main

            train_main(args[1:])
            return 0
        if args and args[0] == "bench":
            tyro.extras.subcommand_cli_from_dict(BENCH_COMMANDS, prog="scene3d bench", description=bench.__doc__, args=args[1:])
            return 0
        tyro.extras.subcommand_cli_from_dict(
            COMMANDS,
            prog="scene3d",
            description="3D scene reconstruction: photos in, a scene you can fly through and ship out. Add --debug for tracebacks.",
            args=args,
        )
    except Scene3dError as e:
        if debug:
            raise
        print(f"scene3d: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a read or write the file system refused, outside the atomic writer
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"scene3d: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scene3d: interrupted", file=sys.stderr)
        return 130
    return 0

