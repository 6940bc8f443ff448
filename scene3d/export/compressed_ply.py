"""The PlayCanvas / SuperSplat compressed PLY (``*.compressed.ply``): what SuperSplat exports, the
PlayCanvas engine loads, and PlayCanvas splat-transform reads and writes. 16 bytes per Gaussian
plus 1 per ``f_rest`` value (61 at degree 3), against 248 for the standard PLY at degree 3.

A binary little-endian PLY with two or three elements, written in this order::

    element chunk ceil(N/256)    float32, one row per 256 consecutive Gaussians:
        min_x min_y min_z max_x max_y max_z                      bounds of the means
        min_scale_x .. min_scale_z max_scale_x .. max_scale_z    bounds of the LOG scales
        min_r min_g min_b max_r max_g max_b                      bounds of the colour
                                                                 c = 0.5 + SH_C0 * f_dc
    element vertex N             uint32, one row per Gaussian:
        packed_position   x:11 | y:10 | z:11 bits (x highest), each the position within the
                          chunk's [min, max] on a uniform grid of 2^bits - 1 steps
        packed_rotation   2 | 10 | 10 | 10 bits, "smallest three": the top 2 bits are the index
                          (in rot_0..3 = w, x, y, z order) of the largest |component| of the unit
                          quaternion, made positive; the other three follow in order, each
                          v in [-1/sqrt2, 1/sqrt2] stored as round((v / sqrt2 + 0.5) * 1023)
        packed_scale      11 | 10 | 11 bits of the log scales within the chunk's bounds
        packed_color      r:8 | g:8 | b:8 | opacity:8 (r highest): colour within the chunk's
                          bounds, and sigmoid(opacity) * 255, rounded
    element sh N                 (only for SH degree > 0) uchar f_rest_0 .. f_rest_{3(K-1)-1},
                          CHANNEL-MAJOR like the standard PLY; byte b stands for -4 (b = 0),
                          +4 (b = 255), or (b + 0.5) / 32 - 4 otherwise.

Older files have 12 chunk properties (no colour bounds): the colour bytes are then c * 255 over
[0, 1]; :func:`read_compressed_ply` reads both, :func:`write_compressed_ply` writes 18.

The writer orders the Gaussians along a 3D Morton (Z-order) curve of their means before cutting
chunks, so each chunk covers a small region and its bounds are tight; reading returns them in
that (file) order. The bounds are written as float32 rounded outwards, so no value is clipped.

Quantisation bounds (decoded minus original, per component; ``range`` is the chunk's max - min of
that attribute, float32 rounding of the result aside):

* means, log scales: ``range / 4094`` on x and z (11 bits), ``range / 2046`` on y (10 bits)
* f_dc: ``range_c / 510 / SH_C0``, with ``range_c`` the chunk's range of ``c = 0.5 + SH_C0 f_dc``
* opacity: ``|sigmoid(decoded) - sigmoid(original)| <= 0.5 / 255``
* quats: normalised, and up to sign, ``|q_decoded - q| <= 2.5e-3``: each stored component is off by
  at most h = sqrt2 / 2046 = 6.9e-4, the rebuilt largest one (>= 1/2) by at most about 3 h, so
  |dq| <= sqrt(3 h^2 + 9 h^2) = 2 sqrt3 h = 2.4e-3 to first order
* f_rest: ``3 / 128`` for values in [-4, 4] (``1 / 64`` inside [-4 + 1/32, 4 - 1/32], the grid's
  middle); values outside [-4, 4] are clamped to it. The writer picks the nearest code; PlayCanvas
  truncates, which is within ``1 / 32``.

Clamping, compared with PlayCanvas: its decoder turns the opacity bytes 0 and 255 into logits of
-inf and +inf (and splat-transform writes them so into a standard PLY, which :func:`read_ply
<scene3d.export.ply.read_ply>` then refuses); :func:`read_compressed_ply` reads them as the logits
of 0.5/255 and 254.5/255 (within the 0.5/255 bound of anything that encodes to them), so the model
stays finite. splat-transform
clamps the log-scale bounds to [-20, 20] when writing; this writer does not (it refuses NaN/Inf
instead, and keeps finite values as they are). A zero quaternion is written as the identity.

Every problem with a file being read raises :class:`~scene3d.errors.DataError` naming the file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from numpy.lib.recfunctions import structured_to_unstructured
from torch import Tensor

from scene3d.errors import DataError
from scene3d.atomic import atomic_write
from scene3d.export.fileio import export_arrays, to_tensors
from scene3d.export.ply import _FORMATS, _MAX_HEADER_BYTES, _Element, _parse_header
from scene3d.export.sh_rotation import sh_degree_from_rest
from scene3d.export.transform import transform_gaussians

SH_C0 = 0.28209479177387814
CHUNK_SIZE = 256
CHUNK_PROPERTIES = (
    "min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
    "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z",
)  # fmt: skip
COLOR_PROPERTIES = ("min_r", "min_g", "min_b", "max_r", "max_g", "max_b")
VERTEX_PROPERTIES = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
_BITS_11_10_11 = (11, 10, 11)
_SQRT2 = math.sqrt(2.0)
_OPACITY_FLOOR = 0.5 / 255  # what the opacity bytes 0 and 255 read as (and 1 minus it)


def num_chunks(n: int) -> int:
    """Chunks of 256 for ``n`` Gaussians (``ceil(n / 256)``)."""
    return -(-n // CHUNK_SIZE)


def morton_order(means: np.ndarray) -> np.ndarray:
    """The order in which :func:`write_compressed_ply` stores Gaussians with these ``means`` [N, 3].

    The means are placed on a 2^21 grid over their bounding cube and sorted (stably) by the 63-bit
    Morton code interleaving the three grid coordinates.
    """
    means = np.asarray(means, np.float64)
    n = means.shape[0]
    if n < 2:
        return np.arange(n)
    lo = means.min(axis=0)
    extent = float((means.max(axis=0) - lo).max())
    if not extent > 0:
        return np.arange(n)
    cells = (1 << 21) - 1
    grid = np.clip(np.floor((means - lo) / extent * cells), 0, cells).astype(np.uint64)
    code = np.zeros(n, np.uint64)
    for bit in range(21):
        for axis in range(3):
            code |= ((grid[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(3 * bit + (2 - axis))
    return np.argsort(code, kind="stable")


# ---------------------------------------------------------------------------------------------
# Writing


def _chunk_bounds(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-chunk float32 ``(min, max)`` [C, D] of ``values`` [N, D] (float64), rounded outwards."""
    n = values.shape[0]
    padded = np.concatenate([values, np.repeat(values[-1:], num_chunks(n) * CHUNK_SIZE - n, axis=0)])
    blocks = padded.reshape(num_chunks(n), CHUNK_SIZE, values.shape[1])
    lo64, hi64 = blocks.min(axis=1), blocks.max(axis=1)
    lo, hi = lo64.astype(np.float32), hi64.astype(np.float32)
    lo = np.where(lo > lo64, np.nextafter(lo, np.float32(-np.inf)), lo)
    hi = np.where(hi < hi64, np.nextafter(hi, np.float32(np.inf)), hi)
    return lo, hi


def _quantise(values: np.ndarray, lo: np.ndarray, hi: np.ndarray, bits) -> np.ndarray:
    """Values [N, D] on a uniform grid of 2^bits - 1 steps over their chunk's [lo, hi] [C, D]."""
    n = values.shape[0]
    chunk = np.arange(n) // CHUNK_SIZE
    lo64, hi64 = lo[chunk].astype(np.float64), hi[chunk].astype(np.float64)
    span = hi64 - lo64
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(span > 0, (values - lo64) / span, 0.0)
    top = (1 << np.asarray(bits, np.int64)) - 1
    return np.clip(np.floor(t * top + 0.5), 0, top).astype(np.uint32)


def _pack_rotations(quats: np.ndarray) -> np.ndarray:
    q = quats.astype(np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))
    largest = np.argmax(np.abs(q), axis=1)
    rows = np.arange(q.shape[0])
    q = q * np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]
    # the three others, in their rot_0..3 order
    others = np.array([[j for j in range(4) if j != i] for i in range(4)])[largest]
    small = np.take_along_axis(q, others, axis=1)
    codes = np.clip(np.floor((small / _SQRT2 + 0.5) * 1023 + 0.5), 0, 1023).astype(np.uint32)
    return (largest.astype(np.uint32) << 30) | (codes[:, 0] << 20) | (codes[:, 1] << 10) | codes[:, 2]


def _sh_value(codes: np.ndarray) -> np.ndarray:
    """What SH bytes stand for (float32, exact: multiples of 1/64)."""
    v = (codes.astype(np.float32) + np.float32(0.5)) / np.float32(32) - np.float32(4)
    return np.where(codes == 0, np.float32(-4), np.where(codes == 255, np.float32(4), v))


def _quantise_sh(values: np.ndarray) -> np.ndarray:
    """The byte whose value (:func:`_sh_value`) is nearest to each of ``values`` (float32)."""
    # bytes 1..254 sit at the centres of a 1/32 grid; 0 and 255 at -4 and +4, 1.5/32 from their neighbours
    codes = np.clip(np.floor((values + np.float32(4)) * np.float32(32)), 1, 254)
    codes = np.where(values < np.float32(-4 + 0.75 / 32), 0, codes)
    codes = np.where(values > np.float32(4 - 0.75 / 32), 255, codes)
    return codes.astype(np.uint8)


def write_compressed_ply(path: str | Path, params: dict[str, Tensor], transform=None) -> Path:
    """Write a Gaussian model as a PlayCanvas / SuperSplat compressed PLY.

    Args:
        path: output file (by convention ``*.compressed.ply``); its folder is created if needed. It
            is written to a temporary file beside it and renamed into place.
        params: the model: ``means`` [N, 3], ``quats`` [N, 4] (w, x, y, z), ``scales`` [N, 3] (log),
            ``opacities`` [N] (logit), ``sh0`` [N, 1, 3], ``shN`` [N, K-1, 3] (optional for degree 0).
        transform: optional [4, 4] similarity applied first (:func:`transform_gaussians`).

    Returns:
        ``path`` as a :class:`~pathlib.Path`. The Gaussians are stored in :func:`morton_order`, and
        quantised within the bounds the module docstring states.

    Raises:
        ValueError: a tensor has the wrong shape, or a value is NaN or Inf (the message names it).
    """
    path = Path(path)
    arrays = export_arrays(params, transform, "the compressed PLY")
    n, num_rest = arrays["means"].shape[0], arrays["shN"].shape[1]
    sh_degree_from_rest(num_rest)

    order = morton_order(arrays["means"])
    means = arrays["means"][order].astype(np.float64)
    scales = arrays["scales"][order].astype(np.float64)
    colors = 0.5 + SH_C0 * arrays["sh0"][order].reshape(n, 3).astype(np.float64)
    opacities = arrays["opacities"][order].astype(np.float64)
    chunk_table = np.zeros((num_chunks(n), 18), np.float32)
    vertex_table = np.zeros((n, 4), np.uint32)
    if n:
        bounds = [_chunk_bounds(a) for a in (means, scales, colors)]
        for j, (lo, hi) in enumerate(bounds):
            chunk_table[:, 6 * j : 6 * j + 3], chunk_table[:, 6 * j + 3 : 6 * j + 6] = lo, hi
        p = _quantise(means, *bounds[0], _BITS_11_10_11)
        s = _quantise(scales, *bounds[1], _BITS_11_10_11)
        c = _quantise(colors, *bounds[2], (8, 8, 8))
        sigmoid = 0.5 * (1.0 + np.tanh(0.5 * opacities))  # no overflow for large |logit|
        alpha = np.clip(np.floor(sigmoid * 255 + 0.5), 0, 255).astype(np.uint32)
        vertex_table[:, 0] = (p[:, 0] << 21) | (p[:, 1] << 11) | p[:, 2]
        vertex_table[:, 1] = _pack_rotations(arrays["quats"][order])
        vertex_table[:, 2] = (s[:, 0] << 21) | (s[:, 1] << 11) | s[:, 2]
        vertex_table[:, 3] = (c[:, 0] << 24) | (c[:, 1] << 16) | (c[:, 2] << 8) | alpha

    lines = ["ply", "format binary_little_endian 1.0", "comment written by scene3d", f"element chunk {num_chunks(n)}"]
    lines += [f"property float {name}" for name in CHUNK_PROPERTIES + COLOR_PROPERTIES]
    lines += [f"element vertex {n}"] + [f"property uint {name}" for name in VERTEX_PROPERTIES]
    body = [chunk_table.astype("<f4").tobytes(), vertex_table.astype("<u4").tobytes()]
    if num_rest:
        lines += [f"element sh {n}"] + [f"property uchar f_rest_{i}" for i in range(3 * num_rest)]
        channel_major = arrays["shN"][order].transpose(0, 2, 1).reshape(n, 3 * num_rest)
        body.append(_quantise_sh(channel_major).tobytes())
    header = ("\n".join(lines) + "\nend_header\n").encode("ascii")

    def write(f) -> None:
        f.write(header)
        for part in body:
            f.write(part)

    atomic_write(path, write)
    return path


# ---------------------------------------------------------------------------------------------
# Reading


def _layout(path: Path, fmt: str, elements: list[_Element]) -> tuple[_Element, _Element, _Element | None]:
    """The chunk, vertex and (optional) sh elements, checked against the compressed-PLY schema."""
    names = [e.name for e in elements]
    by_name = {e.name: e for e in elements}
    vertex, chunk, sh = by_name.get("vertex"), by_name.get("chunk"), by_name.get("sh")
    if vertex is not None and chunk is None and not any(name.startswith("packed_") for name, _ in vertex.props):
        raise DataError(path, "is a standard PLY, not a compressed one (it has no 'chunk' element); read it as a .ply")
    if chunk is None:
        raise DataError(path, "has no 'chunk' element, so it is not a compressed splat PLY")
    if vertex is None:
        raise DataError(path, "has no 'vertex' element, so it holds no Gaussians")
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise DataError(path, f"declares the element {duplicated[0]!r} more than once")
    if fmt == "ascii":
        raise DataError(path, "is an ascii PLY; a compressed splat PLY is binary")
    if any(e.has_list for e in elements):
        raise DataError(path, "has list properties, which a compressed splat PLY never has")

    def require(element: _Element, wanted, code: str, type_name: str) -> None:
        types = dict(element.props)
        missing = [name for name in wanted if name not in types]
        if missing:
            raise DataError(path, f"lacks the {element.name} properties {', '.join(missing)} that a compressed splat PLY needs")
        wrong = [name for name in wanted if types[name] != code]
        if wrong:
            raise DataError(path, f"stores {', '.join(wrong)} as another type than {type_name}, unlike a compressed splat PLY")

    require(chunk, CHUNK_PROPERTIES, "f4", "float")
    present = {name for name, _ in chunk.props}
    if present & set(COLOR_PROPERTIES):
        require(chunk, COLOR_PROPERTIES, "f4", "float")
    require(vertex, VERTEX_PROPERTIES, "u4", "uint")
    if chunk.count != num_chunks(vertex.count):
        raise DataError(
            path,
            f"declares {chunk.count} chunks for {vertex.count} Gaussians; a compressed splat PLY has "
            f"one per 256 ({num_chunks(vertex.count)})",
        )
    if sh is not None:
        if sh.count != vertex.count:
            raise DataError(path, f"declares {sh.count} rows of SH for {vertex.count} Gaussians")
        rest = [name for name, _ in sh.props if name.startswith("f_rest_")]
        if len(rest) not in (9, 24, 45):
            raise DataError(path, f"has {len(rest)} f_rest properties; a compressed splat PLY has 9, 24 or 45 (SH degree 1 to 3)")
        require(sh, [f"f_rest_{i}" for i in range(len(rest))], "u1", "uchar")
    return chunk, vertex, sh


def _lerp(lo: np.ndarray, hi: np.ndarray, t: np.ndarray) -> np.ndarray:
    return lo * (1.0 - t) + hi * t


def _unpack_unorm(packed: np.ndarray, shift: int, bits: int) -> np.ndarray:
    return ((packed >> np.uint32(shift)) & np.uint32((1 << bits) - 1)).astype(np.float64) / ((1 << bits) - 1)


def _unpack_rotations(packed: np.ndarray) -> np.ndarray:
    small = np.stack([(_unpack_unorm(packed, shift, 10) - 0.5) * _SQRT2 for shift in (20, 10, 0)], axis=1)
    largest = (packed >> np.uint32(30)).astype(np.int64)
    big = np.sqrt(np.maximum(0.0, 1.0 - (small**2).sum(axis=1)))
    q = np.empty((packed.shape[0], 4), np.float64)
    q[np.arange(q.shape[0]), largest] = big
    others = np.array([[j for j in range(4) if j != i] for i in range(4)])[largest]
    np.put_along_axis(q, others, small, axis=1)
    # a valid file gives unit quaternions already; a corrupt one (three "smallest" with squares
    # summing past 1) would not, and is made unit here
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def read_compressed_ply(path: str | Path, transform=None) -> dict[str, Tensor]:
    """Read a PlayCanvas / SuperSplat compressed PLY (SuperSplat, splat-transform, scene3d).

    Args:
        path: the file; binary PLY with ``chunk`` and ``vertex`` elements and an optional ``sh``
            element (see the module docstring). Chunk bounds with or without colour are accepted.
        transform: optional [4, 4] similarity applied after reading (:func:`transform_gaussians`).

    Returns:
        float32 tensors ``means`` [N, 3], ``quats`` [N, 4] (unit, largest component positive),
        ``scales`` [N, 3] (log), ``opacities`` [N] (logit, finite), ``sh0`` [N, 1, 3], ``shN``
        [N, K-1, 3], in the file's order.

    Raises:
        DataError: the file is missing, not a compressed PLY, truncated or longer than declared,
            has a chunk count that does not match the vertex count, or has NaN/Inf chunk bounds.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            fmt, elements, body = _parse_header(path, f.read(_MAX_HEADER_BYTES))
            chunk, vertex, sh = _layout(path, fmt, elements)
            byte_order = _FORMATS[fmt]
            expected = body + sum(e.count * e.dtype(byte_order).itemsize for e in elements)
            if size < expected:
                raise DataError(
                    path,
                    f"is truncated: its header declares {vertex.count} Gaussians in {expected} bytes, "
                    f"but the file has {size}",
                )
            if size > expected:
                raise DataError(path, f"has {size - expected} bytes more than its header declares ({vertex.count} Gaussians)")
            f.seek(body)
            data = f.read(expected - body)
    except FileNotFoundError:
        raise DataError(path, "does not exist") from None
    except IsADirectoryError:
        raise DataError(path, "is a folder, not a PLY file") from None
    except OSError as e:
        raise DataError(path, f"cannot be read ({e.strerror or e})") from None
    if len(data) != expected - body:
        raise DataError(path, "is truncated: the file ended while reading it")

    tables, offset = {}, 0
    for e in elements:
        dtype = e.dtype(byte_order)
        if e.name in ("chunk", "vertex", "sh"):
            tables[e.name] = np.frombuffer(data, dtype=dtype, count=e.count, offset=offset)
        offset += e.count * dtype.itemsize
    chunks, rows = tables["chunk"], tables["vertex"]
    n = vertex.count

    has_color = "min_r" in chunks.dtype.names
    bound_names = CHUNK_PROPERTIES + (COLOR_PROPERTIES if has_color else ())
    bounds = np.stack([chunks[name].astype(np.float64) for name in bound_names], axis=1)
    bad = int(bounds.size - np.count_nonzero(np.isfinite(bounds)))
    if bad:
        raise DataError(path, f"has {bad} non-finite (NaN or Inf) chunk bounds")
    per_row = bounds[np.arange(n) // CHUNK_SIZE]

    def unpack3(name: str, column: int) -> np.ndarray:
        packed = rows[name].astype(np.uint32)
        t = np.stack([_unpack_unorm(packed, 21, 11), _unpack_unorm(packed, 11, 10), _unpack_unorm(packed, 0, 11)], axis=1)
        return _lerp(per_row[:, column : column + 3], per_row[:, column + 3 : column + 6], t)

    color_bytes = rows["packed_color"].astype(np.uint32)
    t = np.stack([_unpack_unorm(color_bytes, shift, 8) for shift in (24, 16, 8)], axis=1)
    colors = _lerp(per_row[:, 12:15], per_row[:, 15:18], t) if has_color else t
    alpha = np.clip(_unpack_unorm(color_bytes, 0, 8), _OPACITY_FLOOR, 1.0 - _OPACITY_FLOOR)

    if sh is not None:
        num_f_rest = sum(1 for name, _ in sh.props if name.startswith("f_rest_"))
        codes = structured_to_unstructured(tables["sh"][[f"f_rest_{i}" for i in range(num_f_rest)]])
        f_rest = _sh_value(np.arange(256))[codes.reshape(n, num_f_rest)]
        shN = f_rest.reshape(n, 3, num_f_rest // 3).transpose(0, 2, 1)
    else:
        shN = np.zeros((n, 0, 3))

    out = {
        "means": unpack3("packed_position", 0),
        "quats": _unpack_rotations(rows["packed_rotation"].astype(np.uint32)),
        "scales": unpack3("packed_scale", 6),
        "opacities": np.log(alpha / (1.0 - alpha)),
        "sh0": ((colors - 0.5) / SH_C0).reshape(n, 1, 3),
        "shN": shN,
    }
    with np.errstate(over="ignore"):
        out = {key: value.astype(np.float32) for key, value in out.items()}
    for key in ("means", "scales", "sh0"):
        if not np.isfinite(out[key]).all():
            raise DataError(path, f"has chunk bounds so large that its {key} decode beyond the float32 range")
    tensors = to_tensors(out)
    return tensors if transform is None else transform_gaussians(tensors, transform)
