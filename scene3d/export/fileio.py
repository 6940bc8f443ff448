"""Pieces every scene-file writer and reader shares: the model's arrays, checked, and whole-file reads.

A model is a dict of tensors in scene3d's convention (see :func:`model_arrays`). Writers put their
files in place with :func:`scene3d.atomic.atomic_write`, so a file is either complete or
untouched; readers raise :class:`~scene3d.errors.DataError` naming the file for every problem.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scene3d.errors import DataError
from scene3d.export.sh_rotation import sh_degree_from_rest


def model_arrays(params: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """The model's tensors as float32 numpy arrays, shapes checked, ``shN`` defaulting to empty.

    ``means`` [N, 3], ``quats`` [N, 4] (w, x, y, z, any norm), ``scales`` [N, 3] (log),
    ``opacities`` [N] (logit), ``sh0`` [N, 1, 3], ``shN`` [N, K-1, 3] with K-1 in {0, 3, 8, 15}.
    """
    missing = [k for k in ("means", "quats", "scales", "opacities", "sh0") if k not in params]
    if missing:
        raise ValueError(f"the model has no {', '.join(missing)}")
    arrays = {
        k: np.asarray(params[k].detach().cpu().to(torch.float32).numpy() if isinstance(params[k], Tensor) else params[k], np.float32)
        for k in ("means", "quats", "scales", "opacities", "sh0")
    }
    n = arrays["means"].shape[0]
    shN = params.get("shN")
    if shN is None:
        arrays["shN"] = np.zeros((n, 0, 3), np.float32)
    else:
        arrays["shN"] = np.asarray(shN.detach().cpu().to(torch.float32).numpy() if isinstance(shN, Tensor) else shN, np.float32)
    expected = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 1, 3)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise ValueError(f"{key} must have shape {list(shape)} for {n} Gaussians, got {list(arrays[key].shape)}")
    if arrays["shN"].ndim != 3 or arrays["shN"].shape[0] != n or arrays["shN"].shape[2] != 3:
        raise ValueError(f"shN must have shape [{n}, K-1, 3], got {list(arrays['shN'].shape)}")
    sh_degree_from_rest(arrays["shN"].shape[1])
    return arrays


def check_finite(arrays: dict[str, np.ndarray], where: str, what: str = "the file") -> None:
    """Refuse NaN and Inf (a writer must not produce a file other tools choke on)."""
    for key, a in arrays.items():
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        if bad:
            raise ValueError(f"{key} has {bad} non-finite (NaN or Inf) values {where}; refusing to write {what}")


def export_arrays(params: dict[str, Tensor], transform, what: str) -> dict[str, np.ndarray]:
    """What every writer starts from: the model's arrays (:func:`model_arrays`), with ``transform``
    applied when given (:func:`~scene3d.export.transform.transform_gaussians`), refusing NaN and
    Inf before and after the transform; ``what`` names the file in the messages ("the PLY")."""
    from scene3d.export.transform import transform_gaussians

    arrays = model_arrays(params)
    check_finite(arrays, "in the model", what)
    if transform is not None:
        arrays = model_arrays(transform_gaussians(params, transform))
        check_finite(arrays, "after applying the export transform", what)
    return arrays


def to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """float32 tensors from a reader's arrays (contiguous copies)."""
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}


def read_bytes(path: str | Path, what: str, max_bytes: int | None = None) -> bytes:
    """The whole file, or a DataError naming it (missing, a folder, unreadable, too large)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise DataError(path, f"is a folder, not {what}")
        if max_bytes is not None and size > max_bytes:
            raise DataError(path, f"is {size} bytes, more than the {max_bytes} this reader accepts for {what}")
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "does not exist") from None
    except IsADirectoryError:
        raise DataError(path, f"is a folder, not {what}") from None
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror or e})") from None
