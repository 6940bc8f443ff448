"""Making a trainer: a new run folder, or the run there continued (``--resume``)."""

from __future__ import annotations

from pathlib import Path

import torch

from scene3d.atomic import remove_stale_temporaries
from scene3d.errors import DataError, Scene3dError
from scene3d.models import get_model
from scene3d.models.base import config_fields, config_from_fields
from scene3d.runs import CHECKPOINT, CONFIG, STATE_ERRORS, RunSpec, data_config, load_checkpoint, model_from_state, prepare_dataset, state_problem
from scene3d.train.config import TrainConfig
from scene3d.train.engine import SingleDevice
from scene3d.train.trainer import Trainer


def strategy_classes() -> dict[str, type]:
    from scene3d.densify import STRATEGIES

    return STRATEGIES


def check_strategy_name(name: str) -> str:
    valid = strategy_classes()
    if name not in valid:
        raise Scene3dError(f"unknown strategy {name!r}; valid strategies: {', '.join(valid)}")
    return name


def create_trainer(scene: Path, output: Path, model_name: str, model_cfg, strategy_name: str, strategy, data_cfg, train_cfg: TrainConfig,
                   engine: SingleDevice | None = None) -> Trainer:  # fmt: skip
    """A trainer for a new run in ``output`` (or the run there, with ``train_cfg.resume``)."""
    cls = get_model(model_name)
    check_strategy_name(strategy_name)
    if strategy_name != "none" and not cls.caps.densifiable:
        raise Scene3dError(f"--strategy {strategy_name} densifies Gaussians; the {model_name} representation trains with --strategy none")
    engine = engine or SingleDevice(train_cfg.device)
    output = Path(output)
    latest = output / CHECKPOINT
    state = None
    if train_cfg.resume:
        if not latest.is_file():
            raise DataError(output, "has no checkpoint to resume from (checkpoints/latest.pt)")
        spec = RunSpec.from_yaml(output / CONFIG)
        for what, given, saved in (("model", model_name, spec.model), ("strategy", strategy_name, spec.strategy)):
            if given != saved:
                raise DataError(output, f"was trained with --{what} {saved}; resume it with --{what} {saved} (or without --{what})")
        spec.train_cfg = config_fields(train_cfg)
        remove_stale_temporaries(latest.parent)
        state = load_checkpoint(latest)
    else:
        if output.exists() and any(output.iterdir()):
            raise DataError(output, "already holds files; choose a new output folder or add --resume to continue the run")
        spec = RunSpec(str(Path(scene).resolve()), model_name, config_fields(model_cfg), strategy_name, config_fields(strategy), config_fields(data_cfg), config_fields(train_cfg))
    torch.manual_seed(train_cfg.seed)
    ds = prepare_dataset(Path(spec.scene), data_config(spec.data_cfg, source=output / CONFIG), cls)
    if state is not None:
        try:
            model_cfg = config_from_fields(cls.Config, spec.model_cfg)
        except TypeError as e:
            raise DataError(output / CONFIG, f"does not configure a {spec.model} model ({e})") from None
        model = model_from_state(cls, state["model"], model_cfg, latest, spec.model)
        strategy = strategy_classes()[spec.strategy](**spec.strategy_cfg)
    else:
        model = cls.from_dataset(ds, model_cfg, seed=train_cfg.seed)
    engine.place(model)
    if model.caps.densifiable:
        strategy.initialize(model)
    if state is None and engine.is_writer:
        output.mkdir(parents=True, exist_ok=True)
        spec.to_yaml(output / CONFIG)
    trainer = Trainer(spec, output, ds, model, strategy, train_cfg, engine)
    if state is not None:
        try:
            trainer.restore(state)
        except STATE_ERRORS as e:
            raise DataError(latest, f"cannot be resumed from ({state_problem(e)})") from None
    return trainer
