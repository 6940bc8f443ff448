"""Creating a run folder for training, and loading a trained run back (eval, render, export)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from scene3d.data import load_dataset
from scene3d.data.config import DataConfig
from scene3d.errors import DataError, Scene3dError
from scene3d.models import MODELS, check_model_name, model_class
from scene3d.train import checkpoint as ckpt
from scene3d.train.config import TrainConfig
from scene3d.train.trainer import RunSpec, Trainer, pick_device


def strategy_classes() -> dict[str, type]:
    from scene3d.densify import STRATEGIES

    return STRATEGIES


def check_strategy_name(name: str) -> str:
    valid = strategy_classes()
    if name not in valid:
        raise Scene3dError(f"unknown strategy {name!r}; valid strategies: {', '.join(valid)}")
    return name


def prepare_dataset(scene: Path, data_cfg: DataConfig, model_name: str):
    ds = load_dataset(scene, data_cfg)
    if model_name in ("3dgs",):  # Gaussian rasterizers model pinhole cameras only
        from scene3d.data.undistort import undistort_dataset

        ds = undistort_dataset(ds)
    return ds


def _cfg_dict(cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items() if k != "state"}


def create_trainer(scene: Path, output: Path, model_name: str, model_cfg, strategy_name: str, strategy, data_cfg: DataConfig, train_cfg: TrainConfig) -> Trainer:
    """A trainer for a new run in ``output`` (or the run there, with ``train_cfg.resume``)."""
    check_model_name(model_name)
    check_strategy_name(strategy_name)
    if model_name != "3dgs" and strategy_name != "none":
        raise Scene3dError(f"--strategy {strategy_name} densifies Gaussians; the {model_name} model trains with --strategy none")
    latest = output / "checkpoints" / "latest.pt"
    if train_cfg.resume:
        if not latest.is_file():
            raise DataError(output, "has no checkpoint to resume from (checkpoints/latest.pt)")
        spec = RunSpec.from_yaml(output / "config.yaml")
        spec.train_cfg = _cfg_dict(train_cfg)
    else:
        if output.exists() and any(output.iterdir()):
            raise DataError(output, "already holds files; choose a new output folder or add --resume to continue the run")
        spec = RunSpec(str(Path(scene).resolve()), model_name, _cfg_dict(model_cfg), strategy_name, _cfg_dict(strategy), _cfg_dict(data_cfg), _cfg_dict(train_cfg))
    torch.manual_seed(train_cfg.seed)
    ds = prepare_dataset(Path(spec.scene), DataConfig(**{**spec.data_cfg, "background": tuple(spec.data_cfg["background"])}), model_name)
    cls = model_class(model_name)
    device = pick_device(train_cfg.device)
    if train_cfg.resume:
        state = ckpt.load(latest)
        model = cls.from_state(_to(state["model"], device), type(model_cfg)(**spec.model_cfg))
        strategy = strategy_classes()[spec.strategy](**spec.strategy_cfg)
        strategy.initialize(model)
        trainer = Trainer(spec, output, ds, model, strategy, train_cfg)
        trainer.restore(state)
    else:
        model = cls.from_dataset(ds, model_cfg, seed=train_cfg.seed)
        model.to(device)
        model.optimizers = model._make_optimizers()
        strategy.initialize(model)
        output.mkdir(parents=True, exist_ok=True)
        spec.to_yaml(output / "config.yaml")
        trainer = Trainer(spec, output, ds, model, strategy, train_cfg)
    return trainer


def _to(state, device):
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: _to(v, device) for k, v in state.items()}
    return state


def model_state(state: dict) -> dict:
    """A checkpoint's model state without the optimiser state (what viewing and evaluating need)."""
    return {k: v for k, v in state["model"].items() if k != "optimizers"}


def load_run(run_dir: Path, device: str = "auto", data_overrides: dict | None = None):
    """(spec, dataset, model) of a trained run folder, the model from checkpoints/latest.pt."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise DataError(run_dir, "does not exist")
    spec = RunSpec.from_yaml(run_dir / "config.yaml")
    state = ckpt.load(run_dir / "checkpoints" / "latest.pt")
    dev = pick_device(device)
    cfg_cls = MODELS[check_model_name(spec.model)]
    model = model_class(spec.model).from_state(_to(model_state(state), dev), cfg_cls(**spec.model_cfg))
    data_cfg = {**spec.data_cfg, **(data_overrides or {})}
    data_cfg["background"] = tuple(data_cfg["background"])
    ds = prepare_dataset(Path(spec.scene), DataConfig(**data_cfg), spec.model)
    return spec, ds, model, state
