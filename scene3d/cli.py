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
    model: str = "3dgs",
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
    json_out: Annotated[bool, tyro.conf.arg(name="json")] = False,
    device: str = "auto",
) -> None:
    """Test-split metrics (PSNR, SSIM) of a trained run."""
    from scene3d.train.commands import eval_command

    eval_command(target, json_out=json_out, device=device)


def render(
    run: tyro.conf.Positional[Path],
    path: Literal["test", "orbit", "spiral"] = "test",
    output: Annotated[Path | None, tyro.conf.arg(aliases=("-o",))] = None,
    frames: int = 120,
    fps: int = 30,
    width: int | None = None,
    device: str = "auto",
) -> None:
    """Renders a run: the test views (PNGs beside the ground truth) or an orbit/spiral path to an mp4."""
    from scene3d.train.commands import render_command

    render_command(run, path=path, output=output, frames=frames, fps=fps, width=width, device=device)


def export(
    run: tyro.conf.Positional[Path],
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))],
    format: Literal["ply"] = "ply",
) -> None:
    """Exports a trained scene to a file other tools open, in the input data's coordinate frame."""
    from scene3d.train.commands import export_command

    export_command(run, output, format)


def demo(
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("runs/demo"),
    max_steps: int = 3000,
    time_budget: float = 420.0,
) -> None:
    """The whole pipeline on the embedded default scene: train 3DGS, evaluate, export, summarise."""
    from scene3d.train.commands import demo_command

    demo_command(output, max_steps=max_steps, time_budget=time_budget)


def bench(
    name: tyro.conf.Positional[Literal["rasterize"]],
    json_out: Annotated[bool, tyro.conf.arg(name="json")] = False,
    repeats: int = 5,
    torch_on_garden: bool = False,
) -> None:
    """Benchmarks. rasterize: forward and forward+backward times of each Gaussian rasterization
    backend on 10k Gaussians at 128x128 and on garden_points (648x420, 3 cameras).

    Args:
        name: which benchmark to run.
        json_out: print a JSON list of records instead of a table.
        repeats: timed runs per measurement (the median is reported), after one warm-up.
        torch_on_garden: also time the PyTorch reference on garden (slow, tens of GB).
    """
    if name == "rasterize":
        from scene3d.bench.rasterize import main as run_bench

        run_bench(as_json=json_out, repeats=repeats, torch_on_garden=torch_on_garden)


COMMANDS = {
    "process": process,
    "info": info,
    "train": train,
    "eval": eval,
    "render": render,
    "export": export,
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
    except KeyboardInterrupt:
        print("scene3d: interrupted", file=sys.stderr)
        return 130
    return 0

