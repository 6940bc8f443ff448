"""``scene3d train``: the command line is built from the chosen model's and strategy's dataclasses.

``--model NAME``, ``--strategy NAME`` and ``--preset NAME`` are read first; tyro then builds the
parser from those classes, so ``--model.FIELD`` and ``--strategy.FIELD`` offer exactly the chosen
model's and strategy's hyperparameters, and ``--help`` documents them.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Annotated

import tyro

from scene3d.data.config import DataConfig
from scene3d.errors import Scene3dError
from scene3d.models import DEFAULT_MODEL, get_model, model_names
from scene3d.train.config import TrainConfig


def _pop_option(args: list[str], flag: str, default: str) -> str:
    """Removes ``flag VALUE`` or ``flag=VALUE`` from args and returns VALUE."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
            del args[i : i + 2]
            return value
        if a.startswith(flag + "="):
            del args[i]
            return a.split("=", 1)[1]
    return default


def _peek_option(args: list[str], flags: tuple[str, ...]) -> str | None:
    """The value of the first of ``flags`` in args (``flag VALUE`` or ``flag=VALUE``), left in place."""
    for i, a in enumerate(args):
        for flag in flags:
            if a == flag and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(flag + "="):
                return a.split("=", 1)[1]
    return None


def _resumed_choices(args: list[str]) -> dict[str, str]:
    """With ``--resume``, the model and strategy the run folder was trained with: resuming needs no
    ``--model``/``--strategy``, and the options offered are that run's."""
    output = _peek_option(args, ("--output", "-o"))
    if "--resume" not in args or output is None:
        return {}
    from scene3d.runs import CONFIG, RunSpec

    config = Path(output) / CONFIG
    if not config.is_file():
        return {}
    spec = RunSpec.from_yaml(config)
    return {"--model": spec.model, "--strategy": spec.strategy}


def build_args_class(model_name: str, strategy_name: str, preset: str):
    """The tyro dataclass of ``scene3d train`` for one model, strategy and preset (whose overrides
    become the defaults)."""
    from scene3d.train.setup import check_strategy_name, strategy_classes

    presets = get_model(model_name).presets
    check_strategy_name(strategy_name)
    if preset not in presets:
        raise Scene3dError(f"unknown preset {preset!r} for model {model_name}; valid presets: {', '.join(presets)}")
    over = presets[preset]
    model_cls = get_model(model_name).Config
    strat_cls = strategy_classes()[strategy_name]
    strat_over = {k: v for k, v in over.get("strategy", {}).items() if k in {f.name for f in dataclasses.fields(strat_cls) if f.init}}
    defaults = {
        "model": model_cls(**over.get("model", {})),
        "strategy": strat_cls(**strat_over),
        "data": DataConfig(**over.get("data", {})),
        "train": TrainConfig(**over.get("train", {})),
    }
    Flat = tyro.conf.arg(name="")
    return dataclasses.make_dataclass(
        "TrainArgs",
        [
            ("scene", tyro.conf.Positional[Path]),
            ("output", Annotated[Path, tyro.conf.arg(aliases=("-o",))]),
            ("model", model_cls, dataclasses.field(default_factory=lambda: defaults["model"])),
            ("strategy", strat_cls, dataclasses.field(default_factory=lambda: defaults["strategy"])),
            ("data", Annotated[DataConfig, Flat], dataclasses.field(default_factory=lambda: defaults["data"])),
            ("train", Annotated[TrainConfig, Flat], dataclasses.field(default_factory=lambda: defaults["train"])),
        ],
    )


def describe() -> str:
    from scene3d.train.setup import strategy_classes

    lines = [
        "Trains a representation on a scene folder (any format `scene3d info` reads) into RUN.",
        f"Models (--model): {', '.join(model_names())}. Strategies (--strategy): {', '.join(strategy_classes())}.",
        "Presets (--preset): " + "; ".join(f"{m}: {', '.join(get_model(m).presets)}" for m in model_names()) + ".",
        "Writes RUN/config.yaml, checkpoints/, metrics.jsonl, renders/test/ and training_curve.png.",
    ]
    return "\n".join(lines)


def train_main(argv: list[str]) -> dict:
    args = list(argv)
    resumed = _resumed_choices(args)
    model_name = _pop_option(args, "--model", resumed.get("--model", DEFAULT_MODEL))
    strategy_name = _pop_option(args, "--strategy", resumed.get("--strategy") or get_model(model_name).default_strategy)
    preset = _pop_option(args, "--preset", "default")
    cls = build_args_class(model_name, strategy_name, preset)
    parsed = tyro.cli(cls, args=args, prog="scene3d train", description=describe())
    return run_training(parsed.scene, parsed.output, model_name, parsed.model, strategy_name, parsed.strategy, parsed.data, parsed.train)


def run_training(scene, output, model_name, model_cfg, strategy_name, strategy, data_cfg, train_cfg) -> dict:
    from rich.console import Console

    from scene3d.train.setup import create_trainer

    console = Console()
    trainer = create_trainer(Path(scene), Path(output), model_name, model_cfg, strategy_name, strategy, data_cfg, train_cfg)
    ds = trainer.ds
    scales = "" if ds.scale_factors is None else f" and 1/{', 1/'.join(str(f) for f in sorted(set(ds.scale_factors)) if f > 1)} of it ({ds.scale_sampling} scale sampling)"
    console.print(
        f"[bold]scene3d train[/] {model_name} + {strategy_name} on {ds.root} ({ds.format}, {len(ds.train_indices)} train / "
        f"{len(ds.test_indices)} test images at {int(ds.cameras.width[0])}x{int(ds.cameras.height[0])}{scales}), "
        f"{trainer.model.describe()} at the start, device {trainer.device}"
        + (f", resuming at step {trainer.step}" if train_cfg.resume else "")
    )
    viewer = None
    if train_cfg.viewer:
        from scene3d.viewer.server import start_live_viewer

        viewer = start_live_viewer(trainer, train_cfg.viewer_host, train_cfg.viewer_port)
        trainer.viewer = viewer
        console.print(f"live viewer at [link]{viewer.url}[/link] (pause and resume training there)")
    try:
        result = trainer.fit()
        console.print(
            f"[bold green]done[/]: {result['steps']} steps in {result['train_seconds']} s ({result['stopped_by']}); "
            f"{result['eval_split']} PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}, {trainer.model.describe()} -> {output}"
        )
        if viewer is not None and train_cfg.viewer_wait:
            viewer.training = {**viewer.training, "finished": True}
            console.print(f"training finished; the viewer stays at {viewer.url} until Ctrl+C")
            try:
                while True:
                    time.sleep(1.0)
            except KeyboardInterrupt:
                pass
    finally:
        if viewer is not None:
            viewer.stop()
    return result
