"""What the viewer shows: a trained run or a scene file, loaded and checked before anything is served.

A run is shown in its normalised training frame, with its training cameras (when the dataset is
still where the run says); a scene file is shown in its own (input) frame. ``to_input`` maps the
shown frame to the input frame, so crops and camera paths are saved in the frame the data came in.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scene3d.errors import DataError, Scene3dError

log = logging.getLogger(__name__)


@dataclass
class ViewTarget:
    model: object  # a representation with render(), viewer_controls(), viewer_render(), viewer_stats()
    source: Path
    kind: str  # "run" or "file"
    to_input: np.ndarray  # [4, 4] shown frame -> input frame
    cameras: object | None = None  # training Cameras in the shown frame, or None
    camera_names: list[str] = field(default_factory=list)
    thumbnails: list[np.ndarray] = field(default_factory=list)  # uint8 [h, w, 3] per camera
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    up: str = "+z"
    output_dir: Path = Path(".")  # where videos, paths and crops go by default
    info: dict = field(default_factory=dict)  # what the stats panel shows besides the model's own

    @property
    def to_model(self) -> np.ndarray:
        return np.linalg.inv(self.to_input)

    def scene_center_and_radius(self) -> tuple[np.ndarray, float]:
        """A robust centre and size of the content (median and 90th-percentile distance of the
        model's points when it has them, else of the training cameras)."""
        pts = None
        params = getattr(self.model, "params", None)
        if params is not None and "means" in params:
            pts = params["means"].detach().float().cpu().numpy()
        if (pts is None or len(pts) == 0) and self.cameras is not None:
            pts = self.cameras.centers.cpu().numpy()
        if pts is None or len(pts) == 0:
            return np.zeros(3), 1.0
        center = np.median(pts, axis=0)
        radius = float(np.percentile(np.linalg.norm(pts - center, axis=-1), 90)) if len(pts) > 1 else 1.0
        return center, max(radius, 1e-3)


def load_target(path: Path, device: torch.device, max_thumbnails: int = 400) -> ViewTarget:
    """Loads a run folder or scene file; a missing or malformed target raises a Scene3dError."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "does not exist (give a run folder or a scene file: .ply, .splat, .compressed.ply, .spz, .sog)")
    if path.is_dir():
        return _load_run(path, device, max_thumbnails)
    return _load_file(path, device)


def _load_file(path: Path, device) -> ViewTarget:
    if path.name.endswith(".slimmerf"):
        from scene3d.models.slimmerf import load_slimmed

        model, transform = load_slimmed(path, device)
        to_input = np.eye(4) if transform is None else np.linalg.inv(np.asarray(transform, dtype=np.float64))
        info = {"file": path.name, "file size": f"{path.stat().st_size / 1e6:.2f} MB"}
        return ViewTarget(model, path, "file", to_input, output_dir=path.parent, info=info, up="+z")
    from scene3d.export.formats import read_scene
    from scene3d.models.config import GaussianConfig
    from scene3d.models.gaussians import GaussianModel

    params = read_scene(path)
    n = int(params["means"].shape[0])
    if n == 0:
        raise DataError(path, "holds no Gaussians")
    degree = int(round(math.sqrt(params["shN"].shape[1] + 1))) - 1
    model = GaussianModel({k: v.to(device) for k, v in params.items()}, GaussianConfig(sh_degree=degree), scene_scale=1.0)
    info = {"file": path.name, "file size": f"{path.stat().st_size / 1e6:.2f} MB"}
    return ViewTarget(model, path, "file", np.eye(4), output_dir=path.parent, info=info)


def _load_run(run: Path, device, max_thumbnails: int) -> ViewTarget:
    from scene3d.models import MODELS, check_model_name, model_class
    from scene3d.train import checkpoint as ckpt
    from scene3d.train.trainer import RunSpec

    spec = RunSpec.from_yaml(run / "config.yaml")
    latest = run / "checkpoints" / "latest.pt"
    if not latest.is_file():
        raise DataError(run, "has no checkpoint yet (checkpoints/latest.pt); train it first or view a scene file")
    state = ckpt.load(latest)
    try:
        cfg = MODELS[check_model_name(spec.model)](**spec.model_cfg)
        from scene3d.train.run import _to, model_state

        model = model_class(spec.model).from_state(_to(model_state(state), device), cfg)
    except (KeyError, TypeError) as e:
        raise DataError(latest, f"does not hold a {spec.model} model ({type(e).__name__}: {e})") from None
    to_input = np.linalg.inv(np.asarray(state["dataset"]["transform"], dtype=np.float64))
    target = ViewTarget(model, run, "run", to_input, output_dir=run, info={"run": run.name, "model": spec.model, "strategy": spec.strategy, "step": int(state["step"])})
    try:
        ds = _dataset_of(spec, state)
    except Scene3dError as e:
        log.warning("training cameras not shown: %s", e)
        print(f"scene3d view: the training cameras are not shown ({e})")
        return target
    attach_cameras(target, ds, max_thumbnails)
    return target


def _dataset_of(spec, state):
    from scene3d.data.config import DataConfig
    from scene3d.train.run import prepare_dataset

    data_cfg = {**spec.data_cfg, "background": tuple(spec.data_cfg["background"])}
    return prepare_dataset(Path(spec.scene), DataConfig(**data_cfg), spec.model)


def attach_cameras(target: ViewTarget, ds, max_thumbnails: int = 400) -> None:
    """Adds a dataset's training cameras (and small thumbnails) to ``target``."""
    idx = list(ds.train_indices)
    target.cameras = ds.cameras[idx]
    target.camera_names = [Path(ds.names[i]).name for i in idx]
    target.background = tuple(float(c) for c in ds.background) if ds.format == "blender" else (0.0, 0.0, 0.0)
    thumbs = []
    for j, i in enumerate(idx[:max_thumbnails]):
        try:
            thumbs.append(_thumbnail(ds.image_uint8(i)))
        except Scene3dError:
            thumbs.append(None)
    target.thumbnails = thumbs


def _thumbnail(img: np.ndarray, size: int = 96) -> np.ndarray:
    from PIL import Image

    im = Image.fromarray(img[..., :3] if img.shape[-1] >= 3 else np.repeat(img, 3, -1))
    im.thumbnail((size, size))
    return np.asarray(im)
