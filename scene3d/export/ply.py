"""The standard 3D Gaussian Splatting PLY: what the original 3DGS code, gsplat, nerfstudio,
SuperSplat, PlayCanvas splat-transform and the SIBR viewer all read and write.

One ``vertex`` element, one float32 row per Gaussian, properties in this order (written by
:func:`write_ply`; :func:`read_ply` parses the header and accepts any order and extra properties)::

    x y z                 mean
    nx ny nz              normals, always 0 (kept for the original viewer)
    f_dc_0..2             DC SH coefficient per colour channel
    f_rest_0..3(K-1)-1    higher SH coefficients, CHANNEL-MAJOR: all K-1 of red, then green, then
                          blue (``shN`` [N, K-1, 3] transposed to [N, 3, K-1] and flattened)
    opacity               logit of the opacity
    scale_0..2            log of the scales
    rot_0..3              rotation quaternion (w, x, y, z), not necessarily normalised

Binary little-endian is written; binary little/big-endian and ascii are read. Every problem with
a file being read raises :class:`~scene3d.errors.DataError` naming the file.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scene3d.errors import DataError
from scene3d.atomic import atomic_write
from scene3d.export.fileio import export_arrays
from scene3d.export.sh_rotation import sh_degree_from_rest
from scene3d.export.transform import transform_gaussians

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": None}
_MAX_HEADER_BYTES = 1 << 20
_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3")  # fmt: skip
_F_REST = re.compile(r"f_rest_(0|[1-9][0-9]*)")  # "f_rest_07" is not f_rest_7


def ply_property_names(degree: int) -> list[str]:
    """The vertex properties :func:`write_ply` writes for SH ``degree`` (62 for degree 3)."""
    num_rest = 3 * ((degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(num_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


# ---------------------------------------------------------------------------------------------
# Writing


def write_ply(path: str | Path, params: dict[str, Tensor], transform=None) -> Path:
    """Write a Gaussian model as a standard binary little-endian 3DGS PLY.

    Args:
        path: output file; its folder is created if needed. The file is written to a temporary
            file in the same folder and renamed into place, so it is either complete or untouched.
        params: the model: ``means`` [N, 3], ``quats`` [N, 4] (w, x, y, z), ``scales`` [N, 3] (log),
            ``opacities`` [N] (logit), ``sh0`` [N, 1, 3], ``shN`` [N, K-1, 3] (optional for degree 0).
        transform: optional [4, 4] similarity applied first (:func:`transform_gaussians`); for an
            export this is the normalised -> input map, ``inv(dataset.transform)``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: a tensor has the wrong shape, or a value is NaN or Inf (the message names it).
    """
    path = Path(path)
    arrays = export_arrays(params, transform, "the PLY")
    n, num_rest = arrays["means"].shape[0], arrays["shN"].shape[1]
    names = ply_property_names(sh_degree_from_rest(num_rest))

    columns = [
        arrays["means"],
        np.zeros((n, 3), np.float32),
        arrays["sh0"].reshape(n, 3),
        arrays["shN"].transpose(0, 2, 1).reshape(n, 3 * num_rest),  # channel-major, as the original
        arrays["opacities"].reshape(n, 1),
        arrays["scales"],
        arrays["quats"],
    ]
    table = np.ascontiguousarray(np.concatenate(columns, axis=1), dtype="<f4")
    rows = table.view(np.dtype([(name, "<f4") for name in names])).reshape(n)
    header = "".join(
        ["ply\n", "format binary_little_endian 1.0\n", f"element vertex {n}\n"]
        + [f"property float {name}\n" for name in names]
        + ["end_header\n"]
    ).encode("ascii")

    atomic_write(path, header + rows.tobytes())
    return path


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class _Element:
    name: str
    count: int
    props: list[tuple[str, str]] = field(default_factory=list)  # (name, numpy type code)
    has_list: bool = False

    def dtype(self, byte_order: str) -> np.dtype:
        return np.dtype([(name, byte_order + code) for name, code in self.props])


def _parse_header(path: Path, head: bytes) -> tuple[str, list[_Element], int]:
    """``(format, elements, body offset)`` from the first bytes of the file."""
    if not (head.startswith(b"ply\n") or head.startswith(b"ply\r\n")):
        raise DataError(path, "is not a PLY file (it does not start with the line 'ply')")
    end = re.search(rb"\nend_header[ \t]*\r?\n", head)
    if end is None:
        raise DataError(path, "has no 'end_header' line: the PLY header is truncated or corrupt")
    try:
        lines = head[: end.start()].decode("ascii").splitlines()[1:]
    except UnicodeDecodeError:
        raise DataError(path, "has a PLY header that is not ASCII text") from None

    fmt = None
    elements: list[_Element] = []
    for number, raw in enumerate(lines, start=2):
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        bad = DataError(path, f"has a malformed PLY header line {number}: {raw.strip()[:80]!r}")
        if words[0] == "format":
            if len(words) != 3 or fmt is not None:
                raise bad
            if words[1] not in _FORMATS or words[2] != "1.0":
                raise DataError(path, f"has the unsupported PLY format {' '.join(words[1:])[:60]!r}")
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise bad
            elements.append(_Element(words[1], int(words[2])))
        elif words[0] == "property":
            if not elements:
                raise bad
            if len(words) == 5 and words[1] == "list":
                if words[2] not in _PLY_TYPES or words[3] not in _PLY_TYPES:
                    raise bad
                elements[-1].has_list = True
            elif len(words) == 3 and words[1] in _PLY_TYPES:
                if any(name == words[2] for name, _ in elements[-1].props):
                    raise DataError(path, f"declares the property {words[2]!r} twice in element {elements[-1].name!r}")
                elements[-1].props.append((words[2], _PLY_TYPES[words[1]]))
            else:
                raise bad
        else:
            raise bad
    if fmt is None:
        raise DataError(path, "has no 'format' line in its PLY header")
    return fmt, elements, end.end()


def _find_vertex(path: Path, elements: list[_Element]) -> int:
    index = next((i for i, e in enumerate(elements) if e.name == "vertex"), None)
    if index is None:
        raise DataError(path, "has no 'vertex' element, so it holds no Gaussians")
    vertex = elements[index]
    if any(name.startswith("packed_") for name, _ in vertex.props):
        raise DataError(path, "is a compressed splat PLY (SuperSplat / PlayCanvas); decompress it to a standard 3DGS PLY first")
    if any(e.has_list for e in elements[: index + 1]):
        raise DataError(path, "has list properties in or before the vertex element, which a 3DGS PLY never has")
    return index


def _read_binary(path: Path, f, size: int, byte_order: str, elements: list[_Element], index: int, body: int) -> np.ndarray:
    vertex = elements[index]
    dtype = vertex.dtype(byte_order)
    start = body + sum(e.count * e.dtype(byte_order).itemsize for e in elements[:index])
    needed = vertex.count * dtype.itemsize
    available = size - start
    if available < needed:
        raise DataError(
            path,
            f"is truncated: the header declares {vertex.count} vertices ({needed} bytes) "
            f"but only {max(available, 0)} bytes of vertex data follow",
        )
    later = elements[index + 1 :]
    if not any(e.has_list for e in later):
        extra = available - needed - sum(e.count * e.dtype(byte_order).itemsize for e in later)
        if extra < 0:
            raise DataError(path, f"is truncated: {-extra} bytes of the elements after 'vertex' are missing")
        if extra > 0:
            raise DataError(
                path,
                f"has {extra} bytes more than its header declares; "
                f"the vertex count {vertex.count} is inconsistent with the file size",
            )
    f.seek(start)
    data = f.read(needed)
    if len(data) != needed:
        raise DataError(path, "is truncated: the file ended while reading the vertex data")
    return np.frombuffer(data, dtype=dtype, count=vertex.count)


def _read_ascii(path: Path, f, elements: list[_Element], index: int, body: int) -> np.ndarray:
    f.seek(body)
    try:
        tokens = f.read().decode("ascii").split()
    except UnicodeDecodeError:
        raise DataError(path, "has non-ASCII bytes in the body of an ascii PLY") from None
    vertex = elements[index]
    start = sum(e.count * len(e.props) for e in elements[:index])
    needed = vertex.count * len(vertex.props)
    if len(tokens) - start < needed:
        raise DataError(path, f"is truncated: the header declares {vertex.count} vertices but the file holds fewer values")
    later = elements[index + 1 :]
    if not any(e.has_list for e in later):
        extra = len(tokens) - start - needed - sum(e.count * len(e.props) for e in later)
        if extra != 0:
            raise DataError(path, f"holds {abs(extra)} values {'more' if extra > 0 else 'fewer'} than its header declares")
    try:
        table = np.array(tokens[start : start + needed], dtype=np.float64).reshape(vertex.count, len(vertex.props))
    except ValueError:
        raise DataError(path, "has a value in its vertex data that is not a number") from None
    rows = np.empty(vertex.count, dtype=[(name, "<f8") for name, _ in vertex.props])
    for j, (name, _) in enumerate(vertex.props):
        rows[name] = table[:, j]
    return rows


def _vertex_layout(path: Path, vertex: _Element) -> int:
    """Check the vertex element has the 3DGS properties; returns the number of ``f_rest_*``."""
    present = {name for name, _ in vertex.props}
    missing = [name for name in _REQUIRED if name not in present]
    if missing:
        looks_like_points = "f_dc_0" in missing and "red" in present
        hint = " (it looks like a coloured point cloud, not a Gaussian splat model)" if looks_like_points else ""
        raise DataError(
            path,
            f"lacks the properties {', '.join(missing)} that a 3DGS PLY needs "
            f"(x, y, z, f_dc_0..2, opacity, scale_0..2, rot_0..3){hint}",
        )
    rest_ids = sorted(int(m.group(1)) for name in present if (m := _F_REST.fullmatch(name)))
    if len(rest_ids) not in (0, 9, 24, 45):
        raise DataError(
            path, f"has {len(rest_ids)} f_rest properties; a 3DGS PLY has 0, 9, 24 or 45 (SH degree 0 to 3)"
        )
    if rest_ids != list(range(len(rest_ids))):
        raise DataError(path, f"has f_rest properties that are not numbered 0 to {len(rest_ids) - 1}")
    return len(rest_ids)


_INF_LOGIT = 20.0
"""What an infinite opacity logit reads as (sigmoid(20) = 1 - 2e-9): PlayCanvas splat-transform
writes -inf and +inf for fully transparent and fully opaque Gaussians decoded from 8-bit files."""


def _columns(path: Path, rows: np.ndarray, names: list[str], what: str, allow_inf: bool = False) -> np.ndarray:
    """[N, len(names)] float32 from the named fields; refuses NaN and Inf (with ``allow_inf``,
    +-Inf become +-``_INF_LOGIT``)."""
    out = np.empty((rows.shape[0], len(names)), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # doubles beyond float32 become Inf, refused below
        for j, name in enumerate(names):
            out[:, j] = rows[name]
    if allow_inf:
        out[np.isposinf(out)] = _INF_LOGIT
        out[np.isneginf(out)] = -_INF_LOGIT
    bad = int(out.size - np.count_nonzero(np.isfinite(out)))
    if bad:
        raise DataError(path, f"has {bad} non-finite (NaN or Inf) values in {what}")
    return out


def read_ply(path: str | Path, transform=None) -> dict[str, Tensor]:
    """Read a standard 3DGS PLY (written by scene3d, gsplat, the original 3DGS, nerfstudio, ...).

    Args:
        path: the file; binary little/big-endian or ascii PLY whose ``vertex`` element has ``x, y,
            z, f_dc_0..2, opacity, scale_0..2, rot_0..3`` and 0, 9, 24 or 45 ``f_rest_*`` (the SH
            degree follows from their count). Property order is free; other properties are ignored.
        transform: optional [4, 4] similarity applied after reading (:func:`transform_gaussians`),
            e.g. ``dataset.transform`` to bring an input-frame model into the normalised frame.

    Returns:
        float32 tensors ``means`` [N, 3], ``quats`` [N, 4] (as stored), ``scales`` [N, 3] (log),
        ``opacities`` [N] (logit), ``sh0`` [N, 1, 3], ``shN`` [N, K-1, 3].

    Raises:
        DataError: the file is missing, not a PLY, truncated, inconsistent, lacks a required
            property, or holds NaN/Inf values (except an infinite opacity logit, which reads as
            +-20: fully opaque or transparent, as PlayCanvas splat-transform writes them).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            fmt, elements, body = _parse_header(path, f.read(_MAX_HEADER_BYTES))
            index = _find_vertex(path, elements)
            num_f_rest = _vertex_layout(path, elements[index])
            if fmt == "ascii":
                rows = _read_ascii(path, f, elements, index, body)
            else:
                rows = _read_binary(path, f, size, _FORMATS[fmt], elements, index, body)
    except FileNotFoundError:
        raise DataError(path, "does not exist") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, not a PLY file") from None
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror or e})") from None

    n, num_rest = rows.shape[0], num_f_rest // 3
    f_rest = _columns(path, rows, [f"f_rest_{i}" for i in range(num_f_rest)], "f_rest_*")
    params = {
        "means": _columns(path, rows, ["x", "y", "z"], "x, y, z"),
        "quats": _columns(path, rows, ["rot_0", "rot_1", "rot_2", "rot_3"], "rot_*"),
        "scales": _columns(path, rows, ["scale_0", "scale_1", "scale_2"], "scale_*"),
        "opacities": _columns(path, rows, ["opacity"], "opacity", allow_inf=True).reshape(n),
        "sh0": _columns(path, rows, ["f_dc_0", "f_dc_1", "f_dc_2"], "f_dc_*").reshape(n, 1, 3),
        "shN": np.ascontiguousarray(f_rest.reshape(n, 3, num_rest).transpose(0, 2, 1)),
    }
    tensors = {key: torch.from_numpy(value) for key, value in params.items()}
    return tensors if transform is None else transform_gaussians(tensors, transform)
