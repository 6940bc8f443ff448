"""The antimatter15/splat ``.splat`` file: 32 bytes per Gaussian, no header, no view-dependent colour.

Read by the antimatter15 WebGL viewer, PlayCanvas splat-transform and SuperSplat, most web splat
viewers and gsplat.js. Each Gaussian is one little-endian record::

    offset  type        field
     0      float32 x3  position x, y, z
    12      float32 x3  scale (the actual scales, ``exp`` of the model's log scales)
    24      uint8   x4  colour R, G, B = round(clamp(0.5 + SH_C0 * f_dc, 0, 1) * 255),
                        A = round(sigmoid(opacity) * 255)
    28      uint8   x4  rotation w, x, y, z of the normalised quaternion, each round(q * 128 + 128)
                        clamped to 0..255

The file size is 32 times the number of Gaussians. :func:`write_splat` orders the Gaussians by
importance, ``exp(sum of log scales) * sigmoid(opacity)``, largest first, as the format's writers do
(viewers that stream the file draw the big, opaque Gaussians first). ``shN`` is not stored.

What a write + read round trip keeps (the bounds the tests assert; the Gaussians come back in the
writer's order):

* ``means``: exactly (float32).
* ``scales`` (log): up to float32 rounding of ``exp`` and ``log``:
  ``|error| <= SPLAT_LOG_SCALE_TOL * (1 + |log scale|)`` while the scale is a normal float32
  (log scale above about -87).
* colour ``0.5 + SH_C0 * sh0`` clamped to [0, 1]: within ``SPLAT_COLOUR_TOL = 0.5 / 255``.
* ``sigmoid(opacities)``: within ``SPLAT_ALPHA_TOL = 0.5 / 255`` (the reader keeps the decoded alpha
  in [0.5/255, 1 - 0.5/255] so the logit is finite).
* ``quats``: the normalised quaternion up to sign, within ``SPLAT_QUAT_TOL`` (L2). Each stored
  component is off by at most 0.5/128 (1/128 for a component of exactly +1, where 256 clamps to
  255), so the stored vector is off by at most ``e = sqrt(3 * 0.5^2 + 1) / 128`` and its direction by
  at most ``asin(e)``.
* ``shN``: dropped; the reader returns degree 0 (``shN`` of shape [N, 0, 3]).

Every problem with a file being read raises :class:`~scene3d.errors.DataError` naming the file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from torch import Tensor

from scene3d.errors import DataError
from scene3d.atomic import atomic_write
from scene3d.export.fileio import export_arrays, read_bytes, to_tensors
from scene3d.export.transform import transform_gaussians

SH_C0 = 0.28209479177387814
BYTES_PER_GAUSSIAN = 32
SPLAT_LOG_SCALE_TOL = 2.0**-22
SPLAT_COLOUR_TOL = 0.5 / 255
SPLAT_ALPHA_TOL = 0.5 / 255
SPLAT_QUAT_TOL = math.asin(math.sqrt(3 * 0.5**2 + 1.0) / 128)  # ~0.0103

_RECORD = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)), ("rotation", "u1", (4,))])
assert _RECORD.itemsize == BYTES_PER_GAUSSIAN


def splat_importance_order(log_scales: np.ndarray, opacities: np.ndarray) -> np.ndarray:
    """Indices sorting Gaussians by ``exp(sum log scales) * sigmoid(opacity)``, largest first.

    Computed as a log (``sum log scales - softplus(-opacity)``) so huge or tiny Gaussians neither
    overflow nor tie at 0; the sort is stable, so equal importances keep the model's order.
    """
    log_importance = log_scales.astype(np.float64).sum(axis=1) - np.logaddexp(0.0, -opacities.astype(np.float64))
    return np.argsort(-log_importance, kind="stable")


# ---------------------------------------------------------------------------------------------
# Writing


def write_splat(path: str | Path, params: dict[str, Tensor], transform=None) -> Path:
    """Write a Gaussian model as an antimatter15 ``.splat`` file (view-dependent colour is dropped).

    Args:
        path: output file; its folder is created if needed. Written through a temporary file and
            renamed into place, so it is either complete or untouched.
        params: the model: ``means`` [N, 3], ``quats`` [N, 4] (w, x, y, z), ``scales`` [N, 3] (log),
            ``opacities`` [N] (logit), ``sh0`` [N, 1, 3], ``shN`` [N, K-1, 3] (ignored).
        transform: optional [4, 4] similarity applied first (:func:`transform_gaussians`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: a tensor has the wrong shape; a value is NaN or Inf; the model is empty (a
            ``.splat`` file cannot hold zero Gaussians); a quaternion has length 0; a scale
            overflows or underflows float32 when exponentiated (the message names the attribute).
    """
    path = Path(path)
    arrays = export_arrays(params, transform, "the .splat file")
    n = arrays["means"].shape[0]
    if n == 0:
        raise ValueError("the model has no Gaussians; a .splat file cannot hold an empty model")

    with np.errstate(over="ignore", under="ignore"):
        scales = np.exp(arrays["scales"].astype(np.float64)).astype(np.float32)
    bad = int(np.count_nonzero((scales == 0) | ~np.isfinite(scales)))
    if bad:
        raise ValueError(
            f"scales has {bad} log scales whose exp is 0 or Inf in float32 (outside about -103..88); "
            "refusing to write the .splat file"
        )
    quats = arrays["quats"].astype(np.float64)
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"quats has {int(np.count_nonzero(norms == 0))} zero-length quaternions; refusing to write the .splat file")
    quats = quats / norms

    alpha = 1.0 / (1.0 + np.exp(-arrays["opacities"].astype(np.float64)))
    colour = np.clip(0.5 + SH_C0 * arrays["sh0"].reshape(n, 3).astype(np.float64), 0.0, 1.0)
    rgba = np.rint(np.concatenate([colour, alpha[:, None]], axis=1) * 255.0)

    records = np.empty(n, _RECORD)
    records["position"] = arrays["means"]
    records["scale"] = scales
    records["rgba"] = np.clip(rgba, 0, 255).astype(np.uint8)
    records["rotation"] = np.clip(np.rint(quats * 128.0 + 128.0), 0, 255).astype(np.uint8)
    records = records[splat_importance_order(arrays["scales"], arrays["opacities"])]

    atomic_write(path, records.tobytes())
    return path


# ---------------------------------------------------------------------------------------------
# Reading


def read_splat(path: str | Path, transform=None) -> dict[str, Tensor]:
    """Read an antimatter15 ``.splat`` file.

    Args:
        path: the file: 32-byte records, no header (see the module docstring).
        transform: optional [4, 4] similarity applied after reading (:func:`transform_gaussians`).

    Returns:
        float32 tensors ``means`` [N, 3], ``quats`` [N, 4] (normalised, w, x, y, z), ``scales``
        [N, 3] (log), ``opacities`` [N] (logit, finite), ``sh0`` [N, 1, 3], ``shN`` [N, 0, 3].

    Raises:
        DataError: the file is missing, a folder, empty, not a multiple of 32 bytes long, or holds
            NaN/Inf positions or scales, or scales that are not positive.
    """
    path = Path(path)
    data = read_bytes(path, "a .splat file")
    if not data:
        raise DataError(path, "is empty; a .splat file holds 32 bytes per Gaussian")
    if data.startswith(b"ply\n") or data.startswith(b"ply\r\n"):
        raise DataError(path, "is a PLY file, not a .splat file; read it as .ply")
    if len(data) % BYTES_PER_GAUSSIAN:
        raise DataError(
            path,
            f"is {len(data)} bytes long, not a multiple of 32 (a .splat file holds 32 bytes per "
            f"Gaussian): it is truncated or not a .splat file",
        )
    records = np.frombuffer(data, _RECORD)
    n = records.shape[0]

    for field, what in (("position", "positions"), ("scale", "scales")):
        bad = int(records[field].size - np.count_nonzero(np.isfinite(records[field])))
        if bad:
            raise DataError(path, f"has {bad} non-finite (NaN or Inf) values in its {what}")
    bad = int(np.count_nonzero(records["scale"] <= 0))
    if bad:
        raise DataError(path, f"has {bad} scales that are zero or negative; .splat scales are positive")

    rgba = records["rgba"].astype(np.float64) / 255.0
    alpha = np.clip(rgba[:, 3], SPLAT_ALPHA_TOL, 1.0 - SPLAT_ALPHA_TOL)
    quats = (records["rotation"].astype(np.float64) - 128.0) / 128.0
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    zero = norms[:, 0] == 0
    quats[zero] = (1.0, 0.0, 0.0, 0.0)  # all four bytes 128: no rotation stored, take the identity
    norms[zero] = 1.0

    arrays = {
        "means": records["position"],
        "quats": quats / norms,
        "scales": np.log(records["scale"].astype(np.float64)),
        "opacities": np.log(alpha) - np.log1p(-alpha),
        "sh0": ((rgba[:, :3] - 0.5) / SH_C0).reshape(n, 1, 3),
        "shN": np.zeros((n, 0, 3), np.float32),
    }
    tensors = to_tensors(arrays)
    return tensors if transform is None else transform_gaussians(tensors, transform)
