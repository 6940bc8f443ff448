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
from scene3d.models import MODELS, check_model_name
from scene3d.train.config import TrainConfig

# Presets: overrides of the defaults, per model. "default" is the original method's recipe.
PRESETS: dict[str, dict[str, dict]] = {
    "3dgs": {
        "default": {},
        "fast": {
            # A 7k-step recipe for CPUs and quick looks: the original schedule compressed.
            "train": {"max_steps": 7000},
            "model": {"sh_degree_interval": 500},
            "strategy": {"refine_start": 250, "refine_stop": 5000, "refine_every": 100, "reset_every": 2000},
        },
        "short": {
            # 3k steps: what two CPU cores train in 10-20 minutes at 1/4 resolution (benchmarks).
            "train": {"max_steps": 3000},
            "model": {"sh_degree_interval": 500},
            # MCMC grows 5% per round in the 30k recipe; 20 rounds need more to reach a cap.
            "strategy": {"refine_start": 200, "refine_stop": 2200, "refine_every": 100, "reset_every": 1500, "grow_rate": 0.2},
        },
        "demo": {
            # The embedded scene in a few minutes on two CPU cores.
            "train": {"max_steps": 3000, "save_every": 500},
            "model": {"sh_degree": 1, "sh_degree_interval": 500},
            "strategy": {"refine_start": 200, "refine_stop": 2200, "refine_every": 100, "reset_every": 1500, "max_gaussians": 60_000},
            "data": {"downscale": 2},
        },
    },
    "slimmerf": {
        # The reference code's NeRF-synthetic recipe: 30k steps of 4096 rays, grids 128^3 -> 300^3.
        "default": {},
        "cpu": {
            # What two CPU cores train in about 20 minutes (lego at 200x200): half the rays per
            # step, smaller grids and network, the schedule compressed; the rank grows about every
            # 75 steps (the batch loss of 2048 rays changes by more than 5% between most steps).
            "train": {"max_steps": 3000, "time_budget": 1200.0},
            "model": {
                "batch_rays": 2048,
                "grid_init": 64,
                "grid_final": 200,
                "upsample_steps": (300, 600, 1000, 1500, 2000),
                "alpha_mask_steps": (300, 1000),
                "occupancy_resolution": 64,
                "step_ratio": 0.75,
                "hidden": 64,
                "rank_upsilon": 0.05,
                "rank_cooldown": 75,
            },
        },
    },
}


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


def build_args_class(model_name: str, strategy_name: str, preset: str):
    from scene3d.train.run import check_strategy_name, strategy_classes

    check_model_name(model_name)
    check_strategy_name(strategy_name)
    presets = PRESETS.get(model_name, {"default": {}})
    if preset not in presets:
        raise Scene3dError(f"unknown preset {preset!r} for model {model_name}; valid presets: {', '.join(presets)}")
    over = presets[preset]
    model_cls = MODELS[model_name]
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
    from scene3d.train.run import strategy_classes

    lines = [
        "Trains a representation on a scene folder (any format `scene3d info` reads) into RUN.",
        f"Models (--model): {', '.join(MODELS)}. Strategies (--strategy): {', '.join(strategy_classes())}.",
        "Presets (--preset): " + "; ".join(f"{m}: {', '.join(p)}" for m, p in PRESETS.items()) + ".",
        "Writes RUN/config.yaml, checkpoints/, metrics.jsonl, renders/test/ and training_curve.png.",
    ]
    return "\n".join(lines)


def train_main(argv: list[str]) -> dict:
    args = list(argv)
    from scene3d.models import DEFAULT_STRATEGY

    model_name = _pop_option(args, "--model", "3dgs")
    strategy_name = _pop_option(args, "--strategy", DEFAULT_STRATEGY.get(model_name, "none"))
    preset = _pop_option(args, "--preset", "default")
    cls = build_args_class(model_name, strategy_name, preset)
    parsed = tyro.cli(cls, args=args, prog="scene3d train", description=describe())
    return run_training(parsed.scene, parsed.output, model_name, parsed.model, strategy_name, parsed.strategy, parsed.data, parsed.train)


def run_training(scene, output, model_name, model_cfg, strategy_name, strategy, data_cfg, train_cfg) -> dict:
    from rich.console import Console

    from scene3d.train.run import create_trainer

    console = Console()
    trainer = create_trainer(Path(scene), Path(output), model_name, model_cfg, strategy_name, strategy, data_cfg, train_cfg)
    ds = trainer.ds
    console.print(
        f"[bold]scene3d train[/] {model_name} + {strategy_name} on {ds.root} ({ds.format}, {len(ds.train_indices)} train / "
        f"{len(ds.test_indices)} test images at {int(ds.cameras.width[0])}x{int(ds.cameras.height[0])}), "
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
