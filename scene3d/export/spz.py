"""Niantic's ``.spz``: quantised Gaussians in one gzip stream (versions 1 to 3).

Read by Niantic's spz library, PlayCanvas splat-transform and SuperSplat, and many web viewers.
After gunzip, a 16-byte little-endian header::

    uint32 magic            0x5053474e ("NGSP")
    uint32 version          1, 2 or 3 (4 is a different, zstd-based layout; see below)
    uint32 numPoints
    uint8  shDegree         0..4 (scene3d models hold 0..3)
    uint8  fractionalBits   fractional bits of the fixed-point positions
    uint8  flags            0x1: trained with antialiasing; 0x2: extension records follow the data
    uint8  reserved

then the attributes, each for all points before the next (``N`` = numPoints)::

    positions  N x 3 x 3 bytes  signed 24-bit little-endian fixed point, value = int / 2^fractionalBits
                                (version 1: N x 3 float16)
    alphas     N bytes          round(sigmoid(opacity) * 255)
    colours    N x 3 bytes      round(f_dc * 0.15 * 255 + 127.5), clamped to 0..255
    scales     N x 3 bytes      round((log scale + 10) * 16), clamped to 0..255
    rotations  versions 1-2: N x 3 bytes: x, y, z of the unit quaternion with w >= 0, each
                   round(q * 127.5 + 127.5); w = sqrt(1 - x^2 - y^2 - z^2)
               version 3: N x 4 bytes, one little-endian uint32 "smallest three": bits 30-31 the
                   index (in x, y, z, w order) of the component of largest magnitude, made positive
                   and not stored; then the other three in increasing index order, 10 bits each
                   from bit 29 down: a sign bit and a 9-bit magnitude round(|q_i| / sqrt(1/2) * 511)
    sh         N x (K-1) x 3 bytes, coefficient-major with the colour channel fastest (the layout of
               ``shN``): 128 + round(c * 128), in buckets of 2^(8 - bits) steps (bits: 5 for band 1,
               4 for bands 2 and 3 unless chosen otherwise); decoded as (byte - 128) / 128

and, with flag 0x2, extension records ``[uint32 type][uint32 byteLength][payload]`` up to the end.

Coordinates: spz stores Gaussians in the RUB convention (x right, y up, z back; OpenGL/three.js),
while 3DGS PLY files and scene3d models use RDF (x right, y down, z forward; OpenCV). The writer maps
RDF to RUB and the reader maps back: ``y`` and ``z`` change sign, the quaternion ``(w, x, y, z)``
becomes ``(w, x, -y, -z)``, and each SH coefficient changes sign when its basis polynomial is odd in
an odd number of the flipped axes. This is what Niantic's library and PlayCanvas splat-transform do
(``from: RDF`` when writing, ``to: RDF`` when reading), so a PLY -> spz -> PLY trip through any of
them keeps the Gaussians where they were. The ``SPZ_ADOBE_coordinate_system`` extension (type
0xADBE0003), which labels data stored in another convention, is honoured for the eight axis-flip
conventions; the eight rotated ones are refused.

Version 4 (a 32-byte plain header starting "NGSP", then zstd-compressed streams) is recognised and
refused with a clear message: zstd is not available to scene3d. splat-transform writes version 3
with ``--spz-version 3``.

What a :func:`write_spz` + :func:`read_spz` round trip keeps (the bounds the tests assert):

* ``means``: within half a fixed-point step, ``0.5 / 2^fractionalBits`` per coordinate;
  ``SPZ_POSITION_TOL`` = 2^-13 with the 12 fractional bits written whenever every ``|coordinate|`` is
  below 2048 (fewer bits, so coarser steps, only for larger scenes).
* ``scales`` (log): within ``SPZ_LOG_SCALE_TOL`` = 1/32 inside the representable [-10, 5.9375];
  values outside are clamped to it.
* ``sh0``: within ``SPZ_SH0_TOL`` = 0.5 / (0.15 * 255) inside [-3.33, 3.33] (a colour
  ``0.5 + SH_C0 * sh0`` within 0.0037).
* ``sigmoid(opacities)``: within ``SPZ_ALPHA_TOL`` = 0.5/255 for alphas in [0.5/255, 1 - 0.5/255];
  the writer stores at least 1 and at most 254 (so no reader turns the byte into an infinite
  logit), which puts alphas outside that range within 1/255.
* ``quats``: the normalised quaternion up to sign, within ``SPZ_QUAT_TOL_V3`` (L2) in version 3:
  each stored component is off by at most ``d = sqrt(1/2) * 0.5 / 511``, and the rebuilt largest
  component, at least 1/2, turns an error ``e`` of the other three into one of at most ``2 e``
  (to first order), so the bound is ``2 * sqrt(3) * d`` plus rounding. Version 2 keeps each of x,
  y, z within ``0.5 / 127.5`` and rebuilds w, so its error grows as ``1/|w|``
  (``SPZ_QUAT_TOL_V2 / |w|``).
* ``shN``: within half a bucket, ``2^(8 - bits) / 256`` (1/32 for band 1, 1/16 for bands 2-3 by
  default) inside [-1, 1 - 2^(8 - bits) / 128]; outside, clamped to it.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
from torch import Tensor

from scene3d.errors import DataError
from scene3d.atomic import atomic_write
from scene3d.export.fileio import export_arrays, read_bytes, to_tensors
from scene3d.export.sh_rotation import sh_degree_from_rest
from scene3d.export.transform import transform_gaussians

SPZ_MAGIC = 0x5053474E  # b"NGSP" little-endian
HEADER = struct.Struct("<IIIBBBB")
FLAG_ANTIALIASED = 0x1
FLAG_EXTENSIONS = 0x2
READ_VERSIONS = (1, 2, 3)
WRITE_VERSIONS = (2, 3)
FRACTIONAL_BITS = 12
COLOUR_SCALE = 0.15
SH1_BITS = 5
SH_REST_BITS = 4
SH_C0 = 0.28209479177387814

SPZ_POSITION_TOL = 0.5 / 2**FRACTIONAL_BITS
SPZ_LOG_SCALE_TOL = 0.5 / 16
SPZ_SH0_TOL = 0.5 / (COLOUR_SCALE * 255)
SPZ_ALPHA_TOL = 0.5 / 255
SPZ_QUAT_TOL_V3 = 2 * math.sqrt(3) * math.sqrt(0.5) * 0.5 / 511 + 1e-5
SPZ_QUAT_TOL_V2 = math.sqrt(3) * 0.5 / 127.5


def spz_sh_tolerance(bits: int) -> float:
    """Round-trip bound of an SH coefficient written with ``bits`` bits: half a bucket."""
    return 2.0 ** (8 - bits) / 256


_COORDINATE_SYSTEM_EXTENSION = 0xADBE0003
_MAX_EXTENSION_BYTES = 1 << 20
# Deflate can expand data about 1032:1, so a tiny file may declare millions of Gaussians
# and inflate to gigabytes. Real spz files inflate 2 to 4 times (quantised attributes are nearly
# random bytes); a file declaring more than this many inflated bytes per compressed byte is
# refused before anything is inflated or allocated.
MAX_INFLATION = 16
# Which axes each SH basis function of bands 1-3 (3DGS order) is odd in: its sign under an axis flip.
_SH_ODD_AXES = ("y", "z", "x", "xy", "yz", "", "xz", "", "y", "xyz", "y", "z", "x", "z", "x")
_RUB_FROM_RDF = (1.0, -1.0, -1.0)
_COORDINATE_NAMES = ("LDB", "RDB", "LUB", "RUB", "LDF", "RDF", "LUF", "RUF",
                     "LFD", "RFD", "LFU", "RFU", "LBD", "RBD", "LBU", "RBU")  # fmt: skip


def flip_axes(means: np.ndarray, quats: np.ndarray, shN: np.ndarray, signs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Change the sign of some axes: ``signs`` = (sx, sy, sz), each +1 or -1.

    Means are multiplied by ``signs``; a quaternion (w, x, y, z) becomes (w, sy sz x, sx sz y,
    sx sy z) (the covariance ``M Sigma M`` with ``M = diag(signs)``, also when ``M`` is a mirror);
    an SH coefficient changes sign when its basis polynomial is odd in an odd number of flipped axes.
    """
    sx, sy, sz = (float(s) for s in signs)
    axis = {"x": sx, "y": sy, "z": sz}
    q_signs = np.array([1.0, sy * sz, sx * sz, sx * sy])
    sh_signs = np.array([math.prod(axis[a] for a in odd) for odd in _SH_ODD_AXES[: shN.shape[1]]])
    return means * np.array([sx, sy, sz]), quats * q_signs, shN * sh_signs[None, :, None]


# ---------------------------------------------------------------------------------------------
# Writing


def _fractional_bits(means: np.ndarray) -> int:
    largest = float(np.abs(means).max(initial=0.0))
    for bits in range(FRACTIONAL_BITS, -1, -1):
        if round(largest * 2.0**bits) <= 2**23 - 1:
            return bits
    raise ValueError(
        f"means has a coordinate of magnitude {largest:.4g}, beyond the +-8388607 that spz's 24-bit "
        "fixed-point positions can hold; refusing to write the spz file"
    )


def _pack_positions(means: np.ndarray, bits: int) -> np.ndarray:
    fixed = np.rint(means.astype(np.float64) * 2.0**bits).astype(np.int64) & 0xFFFFFF
    little = fixed.astype("<u4").view(np.uint8).reshape(-1, 3, 4)
    return np.ascontiguousarray(little[:, :, :3]).reshape(-1)


def _pack_quats_smallest_three(xyzw: np.ndarray) -> np.ndarray:
    n = xyzw.shape[0]
    largest = np.argmax(np.abs(xyzw), axis=1)
    rows = np.arange(n)
    q = np.where(xyzw[rows, largest][:, None] < 0, -xyzw, xyzw)
    magnitude = np.minimum(np.rint(np.abs(q) / math.sqrt(0.5) * 511.0), 511).astype(np.uint32)
    fields = magnitude | ((q < 0).astype(np.uint32) << 9)
    word = largest.astype(np.uint32)
    for i in range(4):
        keep = largest != i
        word = np.where(keep, (word << 10) | fields[:, i], word)
    return word.astype("<u4").view(np.uint8)


def _pack_quats_first_three(xyzw: np.ndarray) -> np.ndarray:
    q = np.where(xyzw[:, 3:4] < 0, -xyzw, xyzw)
    return np.clip(np.rint(q[:, :3] * 127.5 + 127.5), 0, 255).astype(np.uint8).reshape(-1)


def _pack_sh(shN: np.ndarray, sh1_bits: int, sh_rest_bits: int) -> np.ndarray:
    out = np.empty(shN.shape, np.uint8)
    for k in range(shN.shape[1]):
        bucket = 2 ** (8 - (sh1_bits if k < 3 else sh_rest_bits))
        top = 128 + bucket * (127 // bucket)  # the largest multiple of the bucket that fits a byte
        steps = np.rint(shN[:, k, :].astype(np.float64) * 128.0 / bucket)
        out[:, k, :] = np.clip(128.0 + steps * bucket, 0, top).astype(np.uint8)
    return out.reshape(-1)


def write_spz(
    path: str | Path,
    params: dict[str, Tensor],
    transform=None,
    version: int = 3,
    *,
    sh1_bits: int = SH1_BITS,
    sh_rest_bits: int = SH_REST_BITS,
) -> Path:
    """Write a Gaussian model as a Niantic ``.spz`` file (gzip, version 3 by default).

    Args:
        path: output file; its folder is created if needed. Written through a temporary file and
            renamed into place, so it is either complete or untouched.
        params: the model in scene3d's (RDF) convention: ``means`` [N, 3], ``quats`` [N, 4]
            (w, x, y, z), ``scales`` [N, 3] (log), ``opacities`` [N] (logit), ``sh0`` [N, 1, 3],
            ``shN`` [N, K-1, 3] (optional for degree 0).
        transform: optional [4, 4] similarity applied first (:func:`transform_gaussians`).
        version: 3 (smallest-three rotations, the default) or 2 (older readers; coarser rotations).
        sh1_bits: bits kept of each band-1 SH byte (1..8; 5 as Niantic's and PlayCanvas's writers).
        sh_rest_bits: bits kept of each band-2 and band-3 SH byte (1..8; default 4).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: a tensor has the wrong shape; a value is NaN or Inf; the model is empty; a
            quaternion has length 0; a position is too far out for 24-bit fixed point; or an
            unsupported version or bit count was asked for.
    """
    path = Path(path)
    if version not in WRITE_VERSIONS:
        raise ValueError(f"spz version {version} cannot be written; choose one of {', '.join(map(str, WRITE_VERSIONS))}")
    for name, bits in (("sh1_bits", sh1_bits), ("sh_rest_bits", sh_rest_bits)):
        if not (isinstance(bits, int) and 1 <= bits <= 8):
            raise ValueError(f"{name} must be an integer 1..8, got {bits!r}")
    arrays = export_arrays(params, transform, "the spz file")
    n = arrays["means"].shape[0]
    if n == 0:
        raise ValueError("the model has no Gaussians; spz readers refuse a file without any")
    degree = sh_degree_from_rest(arrays["shN"].shape[1])

    quats = arrays["quats"].astype(np.float64)
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError(f"quats has {int(np.count_nonzero(norms == 0))} zero-length quaternions; refusing to write the spz file")
    means, quats, shN = flip_axes(arrays["means"].astype(np.float64), quats / norms, arrays["shN"], _RUB_FROM_RDF)
    xyzw = quats[:, [1, 2, 3, 0]]
    bits = _fractional_bits(means)

    alpha = 1.0 / (1.0 + np.exp(-arrays["opacities"].astype(np.float64)))
    colours = arrays["sh0"].reshape(n, 3).astype(np.float64) * (COLOUR_SCALE * 255.0) + 127.5
    log_scales = (arrays["scales"].astype(np.float64) + 10.0) * 16.0
    rotations = _pack_quats_smallest_three(xyzw) if version >= 3 else _pack_quats_first_three(xyzw)

    body = [
        HEADER.pack(SPZ_MAGIC, version, n, degree, bits, 0, 0),
        _pack_positions(means, bits).tobytes(),
        np.clip(np.rint(alpha * 255.0), 1, 254).astype(np.uint8).tobytes(),
        np.clip(np.rint(colours), 0, 255).astype(np.uint8).tobytes(),
        np.clip(np.rint(log_scales), 0, 255).astype(np.uint8).tobytes(),
        rotations.tobytes(),
        _pack_sh(shN, sh1_bits, sh_rest_bits).tobytes(),
    ]
    atomic_write(path, gzip.compress(b"".join(body), compresslevel=6, mtime=0))
    return path


# ---------------------------------------------------------------------------------------------
# Reading


def _bytes_per_point(version: int, degree: int) -> int:
    positions = 6 if version == 1 else 9
    rotations = 4 if version >= 3 else 3
    return positions + 1 + 3 + 3 + rotations + ((degree + 1) ** 2 - 1) * 3


def _gunzip(path: Path, data: bytes) -> bytes:
    """The decompressed spz stream, never inflating more than the header says it holds."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        head = inflater.decompress(data, HEADER.size)
        if len(head) < HEADER.size:
            raise DataError(path, "is truncated: its gzip stream ends before the 16-byte spz header")
        magic, version, n, degree, bits, flags, _ = HEADER.unpack(head)
        if magic != SPZ_MAGIC:
            raise DataError(path, f"is gzip-compressed but not an spz file (its header starts 0x{magic:08x}, not 'NGSP')")
        if version not in READ_VERSIONS:
            raise DataError(
                path, f"has spz version {version}; scene3d reads gzip-compressed spz versions {', '.join(map(str, READ_VERSIONS))}"
            )
        if n == 0:
            raise DataError(path, "declares no Gaussians (numPoints is 0)")
        if degree > 4:
            raise DataError(path, f"declares SH degree {degree}; spz holds degrees 0 to 4")
        if degree == 4:
            raise DataError(path, "has SH degree 4; scene3d models hold SH degrees 0 to 3")
        if bits > 24:
            raise DataError(path, f"declares {bits} fractional bits for its 24-bit positions (at most 24)")
        expected = n * _bytes_per_point(version, degree)
        if expected > MAX_INFLATION * len(data):
            raise DataError(
                path,
                f"declares {n:,} Gaussians ({expected:,} bytes once inflated) in {len(data):,} compressed bytes, "
                f"more than {MAX_INFLATION} times its size (real spz files inflate 2 to 4 times); "
                "it is refused as corrupt or a decompression bomb",
            )
        allowance = _MAX_EXTENSION_BYTES if flags & FLAG_EXTENSIONS else 0
        body = inflater.decompress(inflater.unconsumed_tail, expected + allowance + 1)
    except zlib.error as e:
        raise DataError(path, f"has corrupt gzip data ({e})") from None
    if len(body) > expected + allowance:
        raise DataError(
            path, f"holds more data than its header declares ({n} Gaussians, {expected} bytes): the header is corrupt"
        )
    if not inflater.eof:
        raise DataError(path, "is truncated: its gzip stream ends early")
    if inflater.unused_data:
        raise DataError(path, f"has {len(inflater.unused_data)} bytes after the end of its gzip stream")
    if len(body) < expected:
        raise DataError(path, f"is truncated: the header declares {n} Gaussians ({expected} bytes) but {len(body)} bytes follow it")
    return head + body


def _coordinate_signs(path: Path, extensions: bytes) -> tuple[float, float, float]:
    """Axis signs mapping the stored convention to RDF, from the extension records (RUB if none)."""
    signs = _RUB_FROM_RDF
    offset = 0
    while offset < len(extensions):
        if len(extensions) - offset < 8:
            raise DataError(path, "has a truncated extension record at the end of its data")
        kind, length = struct.unpack_from("<II", extensions, offset)
        offset += 8
        if length > len(extensions) - offset:
            raise DataError(path, f"has an extension record of {length} bytes that runs past the end of the data")
        if kind == _COORDINATE_SYSTEM_EXTENSION:
            if length < 4:
                raise DataError(path, "has a coordinate-system extension without its value")
            (code,) = struct.unpack_from("<I", extensions, offset)
            if code == 0:
                signs = _RUB_FROM_RDF
            elif 1 <= code <= 8:
                x_right, y_up, z_front = (code - 1) & 1, ((code - 1) >> 1) & 1, ((code - 1) >> 2) & 1
                signs = (1.0 if x_right else -1.0, -1.0 if y_up else 1.0, 1.0 if z_front else -1.0)
            elif code <= 16:
                raise DataError(
                    path,
                    f"stores its Gaussians in the rotated coordinate system {_COORDINATE_NAMES[code - 1]} "
                    "(SPZ_ADOBE_coordinate_system), which scene3d cannot read",
                )
            else:
                raise DataError(path, f"has an unknown coordinate system {code} in its coordinate-system extension")
        offset += length
    return signs


def _unpack_positions(raw: np.ndarray, n: int, version: int, bits: int) -> np.ndarray:
    if version == 1:
        return raw.view("<f2").reshape(n, 3).astype(np.float64)
    b = raw.reshape(n * 3, 3).astype(np.int32)
    fixed = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
    fixed = np.where(fixed >= 1 << 23, fixed - (1 << 24), fixed)
    return fixed.reshape(n, 3).astype(np.float64) / 2.0**bits


def _unpack_quats_smallest_three(raw: np.ndarray, n: int) -> np.ndarray:
    word = raw.view("<u4").astype(np.uint32)
    largest = (word >> 30).astype(np.int64)
    xyzw = np.zeros((n, 4))
    for i in range(3, -1, -1):  # the lowest 10 bits belong to the highest remaining index
        here = largest != i
        field = word & 0x3FF
        value = (field & 0x1FF).astype(np.float64) / 511.0 * math.sqrt(0.5)
        value = np.where(field & 0x200, -value, value)
        xyzw[here, i] = value[here]
        word = np.where(here, word >> 10, word)
    rest = np.sum(xyzw**2, axis=1)
    xyzw[np.arange(n), largest] = np.sqrt(np.maximum(0.0, 1.0 - rest))
    return xyzw


def _unpack_quats_first_three(raw: np.ndarray, n: int) -> np.ndarray:
    xyz = raw.reshape(n, 3).astype(np.float64) / 127.5 - 1.0
    w = np.sqrt(np.maximum(0.0, 1.0 - np.sum(xyz**2, axis=1)))
    return np.concatenate([xyz, w[:, None]], axis=1)


def read_spz(path: str | Path, transform=None) -> dict[str, Tensor]:
    """Read a Niantic ``.spz`` file (gzip versions 1 to 3) into scene3d's (RDF) convention.

    Args:
        path: the file (see the module docstring for the layout).
        transform: optional [4, 4] similarity applied after reading (:func:`transform_gaussians`).

    Returns:
        float32 tensors ``means`` [N, 3], ``quats`` [N, 4] (normalised, w, x, y, z), ``scales``
        [N, 3] (log), ``opacities`` [N] (logit, finite), ``sh0`` [N, 1, 3], ``shN`` [N, K-1, 3].
        The antialiasing flag is not represented in scene3d models and is ignored.

    Raises:
        DataError: the file is missing, a folder, not gzip or not spz, a version 4 (zstd) file, an
            unsupported version or SH degree, corrupt, truncated, longer than its header says,
            stored in a coordinate system scene3d cannot map, or holds NaN/Inf positions.
    """
    path = Path(path)
    data = read_bytes(path, "an spz file")
    if not data:
        raise DataError(path, "is empty; an spz file is a gzip-compressed 'NGSP' stream")
    if data[:4] == b"NGSP":
        version = struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else None
        if version is not None and version >= 4:
            raise DataError(
                path,
                f"is an spz version {version} file (zstd-compressed streams), which scene3d cannot read; "
                "it reads versions 1 to 3 (e.g. convert with `splat-transform --spz-version 3`)",
            )
        raise DataError(path, "starts 'NGSP' without gzip compression, which no spz version writes: it is corrupt")
    if data[:2] != b"\x1f\x8b":
        raise DataError(path, "is not an spz file: it is not gzip-compressed and does not start with 'NGSP'")

    stream = _gunzip(path, data)
    _, version, n, degree, bits, flags, _ = HEADER.unpack_from(stream)
    num_rest = (degree + 1) ** 2 - 1
    sizes = [
        ("positions", n * (6 if version == 1 else 9)),
        ("alphas", n),
        ("colours", n * 3),
        ("scales", n * 3),
        ("rotations", n * (4 if version >= 3 else 3)),
        ("sh", n * num_rest * 3),
    ]
    raw, offset = {}, HEADER.size
    for name, size in sizes:
        raw[name] = np.frombuffer(stream, np.uint8, size, offset)
        offset += size
    extensions = stream[offset:]
    if extensions and not flags & FLAG_EXTENSIONS:
        raise DataError(path, f"holds {len(extensions)} bytes more than its header declares ({n} Gaussians)")
    signs = _coordinate_signs(path, extensions) if flags & FLAG_EXTENSIONS else _RUB_FROM_RDF

    means = _unpack_positions(raw["positions"], n, version, bits)
    bad = int(means.size - np.count_nonzero(np.isfinite(means)))
    if bad:
        raise DataError(path, f"has {bad} non-finite (NaN or Inf) values in its positions")
    if version >= 3:
        xyzw = _unpack_quats_smallest_three(raw["rotations"], n)
    else:
        xyzw = _unpack_quats_first_three(raw["rotations"], n)
    quats = xyzw[:, [3, 0, 1, 2]]
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)  # never 0: see the two decoders
    shN = (raw["sh"].reshape(n, num_rest, 3).astype(np.float64) - 128.0) / 128.0
    means, quats, shN = flip_axes(means, quats, shN, signs)

    alpha = np.clip(raw["alphas"].astype(np.float64) / 255.0, SPZ_ALPHA_TOL, 1.0 - SPZ_ALPHA_TOL)
    arrays = {
        "means": means,
        "quats": quats,
        "scales": raw["scales"].reshape(n, 3).astype(np.float64) / 16.0 - 10.0,
        "opacities": np.log(alpha) - np.log1p(-alpha),
        "sh0": ((raw["colours"].reshape(n, 3).astype(np.float64) / 255.0 - 0.5) / COLOUR_SCALE).reshape(n, 1, 3),
        "shN": shN,
    }
    tensors = to_tensors(arrays)
    return tensors if transform is None else transform_gaussians(tensors, transform)
