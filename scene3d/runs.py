"""Run folders: the one reader and writer of what training leaves on disk.

A run folder holds ``config.yaml`` (a :class:`RunSpec`: everything needed to rebuild the run),
``checkpoints/latest.pt`` (written atomically), ``metrics.jsonl`` (one JSON object per line:
training lines and evaluation lines), ``renders/test/`` (predictions beside ground truth) and
``training_curve.png``; exports and benchmarks add their own files.

Checkpoints hold tensors and plain data only and are read with ``torch.load(weights_only=True)``,
so opening a run never runs code from it. :func:`open_run` reads a run's config and checkpoint once
and hands out what commands need from them: the model (on any device), the dataset it was trained
on (in the same normalised frame) and the frame's transform.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scene3d.errors import DataError, Scene3dError

CONFIG = "config.yaml"
CHECKPOINT = Path("checkpoints") / "latest.pt"
METRICS = "metrics.jsonl"
CHECKPOINT_FORMAT = "scene3d-checkpoint"


@dataclass
class RunSpec:
    """What a run is made of; written to config.yaml."""

    scene: str
    model: str
    model_cfg: dict
    strategy: str
    strategy_cfg: dict
    data_cfg: dict
    train_cfg: dict

    def to_yaml(self, path: Path) -> None:
        import yaml

        from scene3d.atomic import atomic_write

        atomic_write(path, yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))

    @staticmethod
    def from_yaml(path: Path) -> "RunSpec":
        import yaml

        if not path.is_file():
            raise DataError(path.parent, "is not a scene3d run folder (config.yaml not found)")
        try:
            data = yaml.safe_load(path.read_text())
            spec = RunSpec(**data)
        except Exception as e:
            raise DataError(path, f"is not a valid run configuration ({type(e).__name__}: {e})") from None
        for name in ("model_cfg", "strategy_cfg", "data_cfg", "train_cfg"):
            if not isinstance(getattr(spec, name), dict):
                raise DataError(path, f"is not a valid run configuration ({name} is not a mapping)")
        return spec


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(payload: dict, path: Path) -> None:
    """``torch.save`` of tensors and plain data to ``path``, atomically."""
    from scene3d.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, "version": 2, **payload}, tmp)


def _numpy_globals() -> list:
    """What checkpoints written before version 2 need besides tensors: numpy arrays and their
    dtypes (array data, no code), allowed by name for ``weights_only`` loading."""
    allowed = [np.ndarray, np.dtype]
    for mod, name in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
        try:
            allowed.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    allowed += [type(np.dtype(t)) for t in (np.float64, np.float32, np.uint32, np.int64, np.uint8)]
    return allowed


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's contents (on the CPU); never unpickles code (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, foreign, or holding objects other than tensors and plain data
        raise DataError(path, f"is not a readable scene3d checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not {"step", "model", "dataset"} <= set(state):
        raise DataError(path, "is not a scene3d checkpoint (step, model or dataset missing)")
    return state


def rng_state() -> dict:
    """The global random generators' states as tensors and plain data."""
    import random

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    import random

    torch.set_rng_state(state["torch"])
    npy = state["numpy"]
    if isinstance(npy, dict):
        np.random.set_state((npy["kind"], np.asarray(npy["keys"].numpy(), dtype=np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    else:  # version 1: numpy's own tuple
        np.random.set_state(npy)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


# ---------------------------------------------------------------------------- datasets
def data_config(values: dict, overrides: dict | None = None):
    """A DataConfig from a run's saved ``data_cfg`` (and overrides)."""
    from scene3d.data.config import DataConfig

    merged = {**values, **(overrides or {})}
    if "background" in merged:
        merged["background"] = tuple(merged["background"])
    return DataConfig(**merged)


def prepare_dataset(scene: Path, data_cfg, model_cls):
    """The dataset as ``model_cls`` trains on it: distorted cameras undistorted to pinhole images
    when the representation renders pinhole cameras only."""
    from scene3d.data import load_dataset

    ds = load_dataset(Path(scene), data_cfg)
    if model_cls.caps.pinhole_only:
        from scene3d.data.undistort import undistort_dataset

        ds = undistort_dataset(ds)
    return ds


# ---------------------------------------------------------------------------- runs
@dataclass
class Run:
    """A trained run folder, its config and latest checkpoint read once (see :func:`open_run`)."""

    path: Path
    spec: RunSpec
    checkpoint: dict

    @property
    def step(self) -> int:
        return int(self.checkpoint["step"])

    @property
    def transform(self) -> np.ndarray:
        """[4, 4] float64: the input frame -> the normalised frame the model lives in."""
        return np.asarray(torch.as_tensor(self.checkpoint["dataset"]["transform"]).double().numpy(), dtype=np.float64)

    @property
    def to_input(self) -> np.ndarray:
        """[4, 4] float64: the model's frame -> the input data's frame (what exports write in)."""
        return np.linalg.inv(self.transform)

    @property
    def model_class(self) -> type:
        from scene3d.models import get_model

        return get_model(self.spec.model)

    @property
    def background_mode(self) -> str:
        return str(self.spec.train_cfg.get("background_mode", "auto"))

    def model_config(self):
        from scene3d.models.base import config_from_fields

        try:
            return config_from_fields(self.model_class.Config, self.spec.model_cfg)
        except TypeError as e:
            raise DataError(self.path / CONFIG, f"does not configure a {self.spec.model} model ({e})") from None

    def load_model(self, device="cpu"):
        """The trained model, on ``device``."""
        cfg = self.model_config()
        try:
            model = self.model_class.from_state(self.checkpoint["model"], cfg)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as e:
            raise DataError(self.path / CHECKPOINT, f"does not hold a {self.spec.model} model ({type(e).__name__}: {e})") from None
        return model.to(torch.device(device))

    def dataset(self, overrides: dict | None = None):
        """The dataset the run was trained on, loaded as it was (its --downscale, split, frame)."""
        return prepare_dataset(Path(self.spec.scene), data_config(self.spec.data_cfg, overrides), self.model_class)


def open_run(path: Path) -> Run:
    """Reads a run folder's config and latest checkpoint; a missing or malformed run is one sentence."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "does not exist")
    if not path.is_dir():
        raise DataError(path, "is not a run folder")
    spec = RunSpec.from_yaml(path / CONFIG)
    from scene3d.models import check_model_name

    try:
        check_model_name(spec.model)
    except Scene3dError as e:
        raise DataError(path / CONFIG, str(e)) from None
    latest = path / CHECKPOINT
    if not latest.is_file():
        raise DataError(path, "has no checkpoint yet (checkpoints/latest.pt); train it first")
    return Run(path, spec, load_checkpoint(latest))


def to_device(state, device):
    """``state`` (nested dicts, lists and tensors) with every tensor on ``device``."""
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: to_device(v, device) for k, v in state.items()}
    if isinstance(state, list):
        return [to_device(v, device) for v in state]
    return state
