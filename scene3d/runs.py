"""Run folders: the one reader and writer of what training leaves on disk.

A run folder holds ``config.yaml`` (a :class:`RunSpec`: everything needed to rebuild the run),
``checkpoints/latest.pt`` (written atomically), ``metrics.jsonl`` (one JSON object per line:
training lines and evaluation lines), ``renders/test/`` (predictions beside ground truth) and
``training_curve.png``; exports and benchmarks add their own files.

Checkpoints hold tensors and plain data only (``torch.save``'s zip archive: the tensors' bytes and
a pickle that may name nothing but tensors, numbers, strings, lists and dicts). They are read with
``torch.load(weights_only=True)``, whose unpickler refuses any other object, so opening a run never
runs code from it; the archive's declared sizes are checked against the file first, so a small file
cannot make the reader allocate more than the file holds. A checkpoint that holds anything else (one
written by another tool, or by code that pickled Python objects) is refused with one sentence, and so
is one that lacks what its model needs. :func:`open_run` reads a run's config and checkpoint once
and hands out what commands need from them: the model (on any device), the dataset it was trained
on (in the same normalised frame) and the frame's transform.
"""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scene3d.errors import DataError, Scene3dError

CONFIG = "config.yaml"
CHECKPOINT = Path("checkpoints") / "latest.pt"
METRICS = "metrics.jsonl"
CHECKPOINT_FORMAT = "scene3d-checkpoint"
MAX_CONFIG_BYTES = 1 << 20


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
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise DataError(path, f"is not a run configuration (over {MAX_CONFIG_BYTES >> 20} MiB)")
        try:
            data = yaml.safe_load(path.read_text())
            spec = RunSpec(**data)
        except Exception as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise DataError(path, f"is not a valid run configuration ({type(e).__name__}: {first})") from None
        for name in ("model_cfg", "strategy_cfg", "data_cfg", "train_cfg"):
            if not isinstance(getattr(spec, name), dict):
                raise DataError(path, f"is not a valid run configuration ({name} is not a mapping)")
        for name in ("scene", "model", "strategy"):
            if not isinstance(getattr(spec, name), str):
                raise DataError(path, f"is not a valid run configuration ({name} is not a string)")
        return spec


# ---------------------------------------------------------------------------- checkpoints
def save_torch_file(payload: dict, path: Path) -> None:
    """``torch.save`` of tensors and plain data to ``path``, atomically (read back with
    :func:`load_torch_file`)."""
    from scene3d.atomic import atomic_path

    with atomic_path(path) as tmp, open(tmp, "xb") as f:  # a Python file, so a full disk is an OSError
        torch.save(payload, f)


def save_checkpoint(payload: dict, path: Path) -> None:
    """A checkpoint of tensors and plain data at ``path``, atomically."""
    save_torch_file({"format": CHECKPOINT_FORMAT, "version": 2, **payload}, path)


def check_archive(path: Path, what: str) -> None:
    """Refuses a ``torch.save`` archive whose members declare more bytes than the file can hold.

    torch writes its members uncompressed, so their sizes add up to about the file's; a member that
    declares more (a compressed one, or a lying directory) would make the reader allocate what the
    file does not contain."""
    import zipfile

    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise DataError(path, f"is not a {what} (not the zip archive torch.save writes)") from None
    declared = sum(m.file_size for m in members)
    if any(m.compress_type != zipfile.ZIP_STORED for m in members) or declared > size:
        raise DataError(path, f"is not a {what} (its members declare {declared:,} bytes in a {size:,}-byte file)")


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


def load_torch_file(path: Path, what: str, allowed_globals=()):
    """What ``torch.save`` put in ``path``, on the CPU, read with ``weights_only`` (tensors and plain
    data; never code) after :func:`check_archive`; ``what`` names the file kind in the messages
    ("scene3d checkpoint"); ``allowed_globals`` are further classes allowed by name."""
    path = Path(path)
    check_archive(path, what)
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        name = _refused_global(str(e))
        raise DataError(
            path,
            "holds Python objects besides tensors and plain data"
            + (f" ({name})" if name else "")
            + ", which scene3d never unpickles because loading them could run code; it was not written by this"
            " scene3d (retrain, or re-save it with the scene3d that wrote it)",
        ) from None
    except Exception as e:  # truncated or corrupt
        raise DataError(path, f"is not a readable {what} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's contents (on the CPU); never unpickles code (``weights_only``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    state = load_torch_file(path, "scene3d checkpoint", _numpy_globals())
    if not isinstance(state, dict) or not {"step", "model", "dataset"} <= set(state):
        raise DataError(path, "is not a scene3d checkpoint (step, model or dataset missing)")
    if not isinstance(state["step"], int) or isinstance(state["step"], bool) or state["step"] < 0:
        raise DataError(path, "is not a scene3d checkpoint (its step is not a non-negative integer)")
    if not isinstance(state["model"], dict) or not isinstance(state["dataset"], dict):
        raise DataError(path, "is not a scene3d checkpoint (its model or dataset entry is not a mapping)")
    return state


def _refused_global(message: str) -> str | None:
    """The name torch's weights-only unpickler refused, from its message."""
    import re

    m = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", message)
    return m.group(1) if m else None


STATE_ERRORS = (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError, AssertionError)
"""What reading a checkpoint's entries raises when they are missing or of the wrong kind or shape."""


def state_problem(e: Exception) -> str:
    """A few words on what was wrong with a checkpoint's entries, from the error reading them."""
    if isinstance(e, KeyError):
        return f"{e} is missing"
    first = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def model_from_state(cls, state, cfg, path: Path, name: str):
    """``cls.from_state(state, cfg)``; a state that lacks what the model needs is one sentence."""
    try:
        return cls.from_state(state, cfg)
    except STATE_ERRORS as e:
        raise DataError(path, f"does not hold a {name} model ({state_problem(e)})") from None


def checkpoint_transform(state: dict, path: Path) -> np.ndarray:
    """The checkpoint's [4, 4] input -> normalised transform, checked: finite and invertible."""
    try:
        t = np.asarray(torch.as_tensor(state["dataset"]["transform"]).double().numpy(), dtype=np.float64)
    except STATE_ERRORS:
        raise DataError(path, "is not a scene3d checkpoint (its dataset transform is missing or not a matrix)") from None
    if t.shape != (4, 4) or not np.isfinite(t).all() or abs(np.linalg.det(t[:3, :3])) < 1e-12:
        raise DataError(path, "is not a scene3d checkpoint (its dataset transform is not a finite invertible 4x4 matrix)")
    return t


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
def data_config(values: dict, overrides: dict | None = None, source: Path | None = None):
    """A DataConfig from a run's saved ``data_cfg`` (and overrides); ``source`` (the config file)
    is named if the values are not a data configuration."""
    from scene3d.data.config import DataConfig

    merged = {**values, **(overrides or {})}
    try:
        if "background" in merged:
            merged["background"] = tuple(merged["background"])
        return DataConfig(**merged)
    except TypeError as e:
        raise DataError(source or Path(CONFIG), f"is not a valid run configuration (data_cfg: {e})") from None


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
        return checkpoint_transform(self.checkpoint, self.path / CHECKPOINT)

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
        model = model_from_state(self.model_class, self.checkpoint["model"], self.model_config(), self.path / CHECKPOINT, self.spec.model)
        return model.to(torch.device(device))

    def dataset(self, overrides: dict | None = None):
        """The dataset the run was trained on, loaded as it was (its --downscale, split, frame)."""
        return prepare_dataset(Path(self.spec.scene), data_config(self.spec.data_cfg, overrides, self.path / CONFIG), self.model_class)


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
    state = load_checkpoint(latest)
    checkpoint_transform(state, latest)  # every command reads it; refused here, once, if unusable
    return Run(path, spec, state)


def to_device(state, device):
    """``state`` (nested dicts, lists and tensors) with every tensor on ``device``."""
    if isinstance(state, torch.Tensor):
        return state.to(device)
    if isinstance(state, dict):
        return {k: to_device(v, device) for k, v in state.items()}
    if isinstance(state, list):
        return [to_device(v, device) for v in state]
    return state
