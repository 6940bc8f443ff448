"""What the viewer shows: a trained run or a scene file, loaded and checked before anything is served.

A run is shown in its normalised training frame, with its training cameras (when the dataset is
still where the run says); a scene file is shown in its own (input) frame. ``to_input`` maps the
shown frame to the input frame, so crops and camera paths are saved in the frame the data came in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from scene3d.errors import DataError, Scene3dError
from scene3d.models.base import focus_of_points

log = logging.getLogger(__name__)


@dataclass
class ViewTarget:
    model: object  # a Representation
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
        """A robust centre and size of the content: the model's own focus when it knows it, else
        the training cameras' (median and 90th-percentile distance)."""
        focus = self.model.focus()
        if focus is not None:
            return focus
        if self.cameras is not None and len(self.cameras) > 0:
            return focus_of_points(self.cameras.centers)
        return np.zeros(3), 1.0


def load_target(path: Path, device: torch.device, max_thumbnails: int = 400) -> ViewTarget:
    """Loads a run folder or a file (any format of the format registry); a missing or malformed
    target raises a Scene3dError."""
    path = Path(path)
    if not path.exists():
        from scene3d.export.formats import FORMATS

        suffixes = ", ".join(f.suffix for f in FORMATS.values())
        raise DataError(path, f"does not exist (give a run folder or a scene file: {suffixes})")
    if path.is_dir():
        return _load_run(path, device, max_thumbnails)
    return _load_file(path, device)


def _load_file(path: Path, device) -> ViewTarget:
    from scene3d.export.formats import open_file

    model, frame = open_file(path, device)
    to_input = np.eye(4) if frame is None else np.linalg.inv(np.asarray(frame, dtype=np.float64))
    info = {"file": path.name, "file size": f"{path.stat().st_size / 1e6:.2f} MB"}
    return ViewTarget(model, path, "file", to_input, output_dir=path.parent, info=info)


def _load_run(path: Path, device, max_thumbnails: int) -> ViewTarget:
    from scene3d.runs import open_run

    run = open_run(path)
    model = run.load_model(device)
    target = ViewTarget(model, path, "run", run.to_input, output_dir=path, info={"run": path.name, "model": run.spec.model, "strategy": run.spec.strategy, "step": run.step})
    try:
        ds = run.dataset()
    except Scene3dError as e:
        log.warning("training cameras not shown: %s", e)
        print(f"scene3d view: the training cameras are not shown ({e})")
        return target
    attach_cameras(target, ds, max_thumbnails, run.background_mode)
    return target


def attach_cameras(target: ViewTarget, ds, max_thumbnails: int = 400, background_mode: str = "auto") -> None:
    """Adds a dataset's training cameras (and small thumbnails) to ``target``."""
    idx = list(ds.train_indices)
    target.cameras = ds.cameras[idx]
    target.camera_names = [Path(ds.names[i]).name for i in idx]
    target.background = ds.background_for(background_mode) or (0.0, 0.0, 0.0)
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
