"""Model files: a trained representation saved with its configuration, loadable on its own.

The ``slimmerf`` format (``.slimmerf``) is this file holding a slimmable run truncated to a rank
(:meth:`~scene3d.models.base.Representation.slimmed_state`): fewer components, a smaller file, a
model of its own. The file is written with ``torch.save`` and read with ``weights_only=True``: a
dict of plain data and tensors (format tag, version, the representation's registry name, its
configuration, its state and the input -> normalised transform of the run), so loading one never
runs code from it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scene3d.errors import DataError, Scene3dError

FORMAT_TAG = "scene3d-slimmerf"
LEGACY_REPRESENTATION = "slimmerf"  # files of version 1 written before the tag named their model


def write_model_file(path, model, transform=None, rank: int | None = None) -> Path:
    """Writes ``model`` (truncated to ``rank``, default: all it trained) at ``path``, atomically.
    ``transform`` is the run's input -> normalised similarity, kept so the file can be compared
    with its dataset."""
    from scene3d.models.base import config_fields
    from scene3d.runs import save_torch_file

    if not model.caps.slimmable:
        raise Scene3dError(f"{path}: slimmed model files hold slimmable representations; the {model.name} one is not")
    rank = model.rank if rank is None else int(rank)
    if not 1 <= rank <= model.rank:
        raise Scene3dError(f"{path}: --rank {rank} is outside 1..{model.rank} (the rank it was trained to)")
    payload = {
        "format": FORMAT_TAG,
        "version": 1,
        "representation": model.name,
        "config": config_fields(model.cfg),
        "model": model.slimmed_state(rank),
        "transform": None if transform is None else torch.as_tensor(np.asarray(transform), dtype=torch.float64),
    }
    save_torch_file(payload, Path(path))
    return Path(path)


def read_model_file(path, device="cpu"):
    """(model on ``device``, input -> normalised transform or None) of a file :func:`write_model_file` wrote."""
    from scene3d.models import get_model
    from scene3d.models.base import config_from_fields
    from scene3d.runs import STATE_ERRORS, checkpoint_transform, load_torch_file, model_from_state, state_problem

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "does not exist")
    payload = load_torch_file(path, "scene3d model file")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise DataError(path, f"is not a {FORMAT_TAG} file")
    if payload.get("version") != 1:
        raise DataError(path, f"has unsupported version {str(payload.get('version'))[:40]!r}")
    name = payload.get("representation", LEGACY_REPRESENTATION)
    try:
        cls = get_model(str(name)[:80])
        cfg = config_from_fields(cls.Config, dict(payload["config"]))
    except Scene3dError as e:
        raise DataError(path, str(e)) from None
    except STATE_ERRORS as e:
        raise DataError(path, f"holds a malformed model ({state_problem(e)})") from None
    model = model_from_state(cls, payload.get("model"), cfg, path, cls.name)
    transform = None
    if payload.get("transform") is not None:
        transform = checkpoint_transform({"dataset": {"transform": payload["transform"]}}, path)
    return model.to(torch.device(device)), transform
