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
    from scene3d.atomic import atomic_path
    from scene3d.models.base import config_fields

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
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_model_file(path, device="cpu"):
    """(model on ``device``, input -> normalised transform or None) of a file :func:`write_model_file` wrote."""
    from scene3d.models import get_model
    from scene3d.models.base import config_from_fields

    path = Path(path)
    if not path.is_file():
        raise DataError(path, "does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(path, f"is not a model file ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise DataError(path, f"is not a {FORMAT_TAG} file")
    if payload.get("version") != 1:
        raise DataError(path, f"has unsupported version {payload.get('version')!r}")
    name = payload.get("representation", LEGACY_REPRESENTATION)
    try:
        cls = get_model(str(name))
        model = cls.from_state(payload["model"], config_from_fields(cls.Config, dict(payload["config"])))
    except Scene3dError as e:
        raise DataError(path, str(e)) from None
    except (KeyError, TypeError, RuntimeError, ValueError, AttributeError, IndexError) as e:
        raise DataError(path, f"holds a malformed model ({type(e).__name__}: {e})") from None
    t = payload.get("transform")
    return model.to(torch.device(device)), (None if t is None else np.asarray(t.double().numpy()))
