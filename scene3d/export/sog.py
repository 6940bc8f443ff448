"""PlayCanvas SOG ("spatially ordered Gaussians", meta version 2): what PlayCanvas splat-transform
writes as ``.sog`` and the PlayCanvas engine and SuperSplat load. The shipped form of a compressed
self-organising Gaussian grid (Morgenstern et al., ECCV 2024).

A ``.sog`` is a zip of ``meta.json`` and lossless WebP images; the same files in a folder, opened
through their ``meta.json``, are the unbundled form (both are read; :func:`write_sog` writes the
folder form when the path ends in ``.json``). The N Gaussians fill the first N texels, row-major, of
a W x H grid, ``W = 4 ceil(sqrt(N) / 4)``, ``H = 4 ceil(N / W / 4)`` (:func:`sog_grid_shape`); every
per-Gaussian image is W x H RGBA and texels from N on are zero. In grid order::

    means_l.webp, means_u.webp   low and high bytes of a 16-bit code per axis in R, G, B (A 255):
                                 l = sign(v) ln(1 + |v|), code = round(65535 (l - min) / (max - min))
                                 with the per-axis min/max of l in meta ``means.mins``/``maxs`` (with
                                 fewer position bits b, codes are multiples of 2^(16-b) and the
                                 stored max is raised so that the top one decodes to l's max)
    quats.webp                   the unit quaternion (w, x, y, z), negated if its largest-magnitude
                                 component is negative; the other three, times sqrt(2), as
                                 round(255 (c / 2 + 1 / 2)) in R, G, B; A = 252 + the index of the
                                 dropped largest component (0 = w)
    scales.webp                  R, G, B: indices into ``scales.codebook`` (256 log scales); A 255
    sh0.webp                     R, G, B: indices into ``sh0.codebook`` (256 DC SH coefficients);
                                 A = round(255 sigmoid(opacity))
    shN_centroids.webp           (SH degree >= 1) a palette of P <= 65536 higher-SH vectors
                                 (k-means centroids, :func:`scene3d.compress.kmeans`), 64 per row:
                                 coefficient j of centroid i at x = (i mod 64) C + j, y = i div 64
                                 (C = K-1 coefficients, width 64 C), its red, green, blue as indices
                                 into ``shN.codebook`` (256 values)
    shN_labels.webp              R + 256 G: the palette entry of each Gaussian; B 0, A 255

``meta.json``: ``{"version": 2, "asset": {"generator"}, "count": N, "means": {"mins", "maxs",
"files"}, "scales": {"codebook", "files"}, "quats": {"files"}, "sh0": {"codebook", "files"}, "shN":
{"count": P, "bands": degree, "codebook", "files"}}``.

The grid order is :func:`morton_order` of the positions unless ``order`` gives it (e.g. a
self-organising sort). Bounds a write/read round trip keeps (tests/test_sog.py asserts them):

* means: half a step of the log-space code, per axis ``|x' - x| <= (1 + |x|) (exp(s / 2) - 1)``
  with ``s = 2^(16 - b) (max - min) / 65535`` for ``b`` position bits (16 by default) and the
  stored min and max (about ``(1 + |x|) s / 2``).
* quats: up to sign, unit; the three stored components within ``1 / (255 sqrt(2))`` (0.0028), the
  rebuilt largest one within 0.01.
* opacities: within 0.5 / 255 in ``sigmoid(opacity)``; stored 0 and 255 decode to the logits of
  1e-6 and 1 - 1e-6 (about -13.8 and 13.8).
* scales, sh0: the nearest entry of a 256-level codebook fitted to the model's values
  (:func:`scene3d.compress.fit_codebook`); the error is that codebook's, measured on the data.
* shN: the palette centroid (the mean of the Gaussians that share it) with every coefficient the
  nearest entry of a 256-level codebook fitted to the centroids' coefficients. The palette has
  ``1024 min(64, 2^floor(log2(N / 1024)))`` entries at most, as splat-transform chooses.

splat-transform's own writer truncates where this one rounds (one whole step of error instead of
half of one for positions, rotations and opacity), and its WebP encoder drops the colour of
Gaussians whose opacity byte is 0 (they read back with sh0 codebook entry 0; they are invisible).

Every problem with a file being read raises :class:`~scene3d.errors.DataError` naming the file.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image
from torch import Tensor

import scene3d
from scene3d.compress import fit_codebook, kmeans, quantize_to_codebook
from scene3d.errors import DataError
from scene3d.atomic import atomic_write
from scene3d.export.fileio import export_arrays, read_bytes, to_tensors
from scene3d.export.sh_rotation import sh_degree_from_rest
from scene3d.export.transform import transform_gaussians

SOG_VERSION = 2
CODEBOOK_SIZE = 256
MAX_PALETTE = 1 << 16
DEFAULT_MAX_PALETTE = 8192
"""scene3d's default cap on the higher-SH palette. splat-transform's rule (:func:`sog_palette_size`)
gives 65,536 entries from 131k Gaussians on; on a 160k-Gaussian fox model that palette image alone
is 2.3 MB of a 4.5 MB file, while 8,192 entries cost 0.17 dB more test PSNR for a 1.85x smaller
file (see the README's bench export figures). ``sh_palette=0`` restores splat-transform's rule."""
MAX_COUNT = 1 << 27  # Gaussians a file may declare
MAX_EXPANSION = 64
"""Lossless WebP stores a uniform image of millions of texels in a few hundred bytes, so a tiny SOG
can declare millions of Gaussians and decode to gigabytes. Honest files decode to 15 to 20 times
the bytes of their images (17 for a trained fox model at SH degree 3; 19 for 139k garden points at
degree 0 with one scale, rotation and opacity for all and 8-bit positions, about the most
compressible a scene gets), so a file whose Gaussians would decode (as float32) to more than this
many times its images' bytes is refused before any image is decoded."""
_MAX_FILE_BYTES = 1 << 31
_MAX_META_BYTES = 16 << 20
_SQRT2 = math.sqrt(2.0)
_OPACITY_EPS = 1e-6
_FILES = {
    "means": ["means_l.webp", "means_u.webp"],
    "scales": ["scales.webp"],
    "quats": ["quats.webp"],
    "sh0": ["sh0.webp"],
    "shN": ["shN_centroids.webp", "shN_labels.webp"],
}


def sog_grid_shape(n: int) -> tuple[int, int]:
    """``(width, height)`` of the texel grid for ``n`` Gaussians (multiples of 4, near square)."""
    width = 4 * math.ceil(math.sqrt(n) / 4)
    height = 4 * math.ceil(n / width / 4) if width else 0
    return width, height


def sog_palette_size(n: int) -> int:
    """Most higher-SH palette entries for ``n`` Gaussians (splat-transform's choice, <= n)."""
    if n <= 0:
        return 0
    return int(min(64.0, 2.0 ** math.floor(math.log2(n / 1024))) * 1024)


# ---------------------------------------------------------------------------------------------
# Grid order


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Put bit i of a 21-bit integer at bit 3 i (uint64)."""
    v = v.astype(np.uint64) & np.uint64(0x1FFFFF)
    for shift, mask in ((32, 0x1F00000000FFFF), (16, 0x1F0000FF0000FF), (8, 0x100F00F00F00F00F),
                        (4, 0x10C30C30C30C30C3), (2, 0x1249249249249249)):  # fmt: skip
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def morton_order(means) -> np.ndarray:
    """Indices sorting points [N, 3] along a Z-order curve of their positions, quantised to 21 bits
    per axis over their bounding box (equal codes keep their input order)."""
    m = np.asarray(means.detach().cpu().numpy() if isinstance(means, Tensor) else means, np.float64)
    if m.shape[0] == 0:
        return np.zeros(0, np.int64)
    lo = m.min(0)
    span = m.max(0) - lo
    span[span <= 0] = 1.0
    q = np.clip(np.floor((m - lo) / span * 2097152.0), 0, 2097151)
    code = _spread_bits(q[:, 0]) | (_spread_bits(q[:, 1]) << np.uint64(1)) | (_spread_bits(q[:, 2]) << np.uint64(2))
    return np.argsort(code, kind="stable")


def _grid_sequence(order, n: int) -> np.ndarray:
    """The Gaussian in each filled texel from ``order`` ([N], or a grid with -1 for empty cells)."""
    o = np.asarray(order.detach().cpu().numpy() if isinstance(order, Tensor) else order)
    if o.ndim != 1 or (o.size and o.dtype.kind not in "iu"):
        raise ValueError(f"order must be a 1-D integer array, got shape {list(o.shape)} of {o.dtype}")
    o = o.astype(np.int64)
    if o.size and o.min() < -1:
        raise ValueError("order holds values below -1; use -1 for empty cells")
    seq = o[o >= 0]
    if seq.size != n or (n and (seq.max() >= n or np.bincount(seq, minlength=n).max() > 1)):
        raise ValueError(f"order must hold every index 0..{n - 1} exactly once (plus -1 for empty cells)")
    return seq


# ---------------------------------------------------------------------------------------------
# Writing


def _log_code(means: np.ndarray, bits: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(16-bit codes [N, 3], mins [3], maxs [3]) of the log-transformed positions.

    With ``bits`` < 16 the codes are multiples of ``step = 2^(16 - bits)`` (a coarser grid, which the
    low-byte image compresses far better), and the stored max is raised so that the top level,
    ``65536 - step``, decodes exactly to the data's max: each position is then rounded once, to
    ``2^bits`` levels spanning the data."""
    lm = np.sign(means) * np.log1p(np.abs(means))
    mins, maxs = lm.min(0), lm.max(0)
    span = maxs - mins
    step = float(1 << (16 - bits))
    levels = float((1 << bits) - 1)
    scale = np.where(span > 0, levels / np.where(span > 0, span, 1.0), 0.0)
    codes = np.clip(np.round((lm - mins) * scale), 0, levels) * step
    return codes.astype(np.uint16), mins, mins + span * (65535.0 / (levels * step))


def _pack_quats(quats: np.ndarray) -> np.ndarray:
    """[N, 4] uint8: smallest three in R, G, B, 252 + index of the largest in A."""
    q = quats.astype(np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), np.array([1.0, 0.0, 0.0, 0.0]))
    largest = np.abs(q).argmax(1)
    rows = np.arange(q.shape[0])
    q = q * np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]
    keep = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    small = np.take_along_axis(q, keep, axis=1) * _SQRT2
    out = np.empty((q.shape[0], 4), np.uint8)
    out[:, :3] = np.clip(np.round(255.0 * (small * 0.5 + 0.5)), 0, 255)
    out[:, 3] = 252 + largest
    return out


def _texels(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W, 4] uint8 image with ``values`` [N, 4] in the first N texels, zeros after."""
    img = np.zeros((width * height, 4), np.uint8)
    img[: values.shape[0]] = values
    return img.reshape(height, width, 4)


def _rgba(rgb: np.ndarray, alpha) -> np.ndarray:
    out = np.empty((rgb.shape[0], 4), np.uint8)
    out[:, :3] = rgb
    out[:, 3] = alpha
    return out


def _webp(image: np.ndarray, method: int) -> bytes:
    buf = io.BytesIO()
    # exact=True keeps the RGB of transparent texels, which lossless WebP otherwise may discard
    Image.fromarray(image, "RGBA").save(buf, "WEBP", lossless=True, exact=True, quality=70, method=method)
    return buf.getvalue()


def _codebook_list(codebook: np.ndarray) -> list[float]:
    return [float(v) for v in codebook.astype(np.float32)]


def _encode(arrays: dict[str, np.ndarray], seq: np.ndarray, sh_iterations: int, sh_palette: int | None,
            seed: int, device, webp_method: int, position_bits: int = 16, weights=None) -> dict[str, bytes]:  # fmt: skip
    n = arrays["means"].shape[0]
    width, height = sog_grid_shape(n)
    files: dict[str, bytes] = {}

    def image(name: str, values: np.ndarray) -> None:
        files[name] = _webp(_texels(values, width, height), webp_method)

    codes, mins, maxs = _log_code(arrays["means"].astype(np.float64)[seq], position_bits)
    image("means_l.webp", _rgba((codes & 0xFF).astype(np.uint8), 255))
    image("means_u.webp", _rgba((codes >> 8).astype(np.uint8), 255))
    image("quats.webp", _pack_quats(arrays["quats"][seq]))

    scales_cb = fit_codebook(arrays["scales"])
    image("scales.webp", _rgba(quantize_to_codebook(arrays["scales"][seq], scales_cb).astype(np.uint8), 255))

    sh0 = arrays["sh0"].reshape(n, 3)
    sh0_cb = fit_codebook(sh0)
    with np.errstate(over="ignore"):
        alpha = np.round(255.0 / (1.0 + np.exp(-arrays["opacities"].astype(np.float64)[seq])))
    image("sh0.webp", _rgba(quantize_to_codebook(sh0[seq], sh0_cb).astype(np.uint8), alpha.astype(np.uint8)))

    meta = {
        "version": SOG_VERSION,
        "asset": {"generator": f"scene3d {scene3d.__version__}"},
        "count": n,
        "means": {"mins": [float(v) for v in mins], "maxs": [float(v) for v in maxs], "files": _FILES["means"]},
        "scales": {"codebook": _codebook_list(scales_cb), "files": _FILES["scales"]},
        "quats": {"files": _FILES["quats"]},
        "sh0": {"codebook": _codebook_list(sh0_cb), "files": _FILES["sh0"]},
    }

    num_rest = arrays["shN"].shape[1]
    if num_rest:
        if sh_palette is None:
            palette = min(sog_palette_size(n), DEFAULT_MAX_PALETTE)
        elif int(sh_palette) == 0:
            palette = sog_palette_size(n)
        else:
            palette = int(sh_palette)
        if not 1 <= palette <= MAX_PALETTE:
            raise ValueError(f"sh_palette must be in 1..{MAX_PALETTE}, got {palette}")
        vectors = torch.from_numpy(np.ascontiguousarray(arrays["shN"].reshape(n, num_rest * 3))).to(device)
        w = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64)).to(device)
        centroids, labels = kmeans(vectors, palette, iterations=sh_iterations, seed=seed, weights=w)
        centroids = centroids.cpu().numpy().reshape(-1, num_rest, 3)
        labels = labels.cpu().numpy()
        count = centroids.shape[0]
        shn_cb = fit_codebook(centroids)
        rows = math.ceil(count / 64)
        palette_img = np.zeros((rows * 64, num_rest, 4), np.uint8)
        palette_img[:count, :, :3] = quantize_to_codebook(centroids, shn_cb)
        palette_img[:count, :, 3] = 255
        files["shN_centroids.webp"] = _webp(palette_img.reshape(rows, 64 * num_rest, 4), webp_method)
        lab = labels[seq]
        image("shN_labels.webp", _rgba(np.stack([lab & 0xFF, lab >> 8, np.zeros_like(lab)], 1).astype(np.uint8), 255))
        meta["shN"] = {
            "count": count,
            "bands": sh_degree_from_rest(num_rest),
            "codebook": _codebook_list(shn_cb),
            "files": _FILES["shN"],
        }
    files["meta.json"] = json.dumps(meta, allow_nan=False, separators=(",", ":")).encode("utf-8")
    return files


def _zip_files(files: dict[str, bytes]):
    def write(f) -> None:
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
            for name, data in files.items():
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
                info.external_attr = 0o644 << 16
                zf.writestr(info, data, compress_type=zipfile.ZIP_STORED)

    return write


def write_sog(
    path: str | Path,
    params: dict[str, Tensor],
    transform=None,
    order=None,
    sh_iterations: int = 10,
    *,
    sh_palette: int | None = None,
    seed: int = 0,
    webp_method: int = 4,
    layout: str = "morton",
    position_bits: int = 16,
    weights=None,
) -> Path:
    """Write a Gaussian model as a PlayCanvas SOG (version 2).

    Args:
        path: a ``.sog`` file (a zip, written atomically), or a ``meta.json`` path (any name ending
            in ``.json``) to write the unbundled form: the images beside it, meta.json last.
        params: the model: ``means`` [N, 3], ``quats`` [N, 4] (w, x, y, z), ``scales`` [N, 3] (log),
            ``opacities`` [N] (logit), ``sh0`` [N, 1, 3], ``shN`` [N, K-1, 3] (optional for degree 0).
        transform: optional [4, 4] similarity applied first (:func:`transform_gaussians`).
        order: the grid layout: a permutation [N] of the Gaussians, or a grid of cells (e.g. [W*H])
            holding Gaussian indices and -1 for empty cells. Gaussians take the texels in this
            sequence with empty cells skipped (SOG has no holes: texel i < N is Gaussian i), so a
            grid keeps its 2D layout exactly when its empty cells come last. Default
            :func:`morton_order` of the (transformed) positions.
        sh_iterations: k-means iterations for the higher-SH palette.
        sh_palette: most palette entries (<= 65536); default :func:`sog_palette_size` capped at
            :data:`DEFAULT_MAX_PALETTE`; 0: :func:`sog_palette_size` uncapped (splat-transform's choice).
        seed: seeds the k-means (the output is reproducible).
        webp_method: libwebp effort 0 (fast) .. 6 (smallest files).
        layout: the grid layout when ``order`` is None: ``"morton"`` (Z-order of the positions) or
            ``"plas"`` (the self-organising sort of :mod:`scene3d.compress.plas`).
        position_bits: precision of the 16-bit position codes, 8..16: below 16 the codes are rounded
            to multiples of ``2^(16 - position_bits)``, which readers decode as usual. On the fox
            benchmark 13 bits cost no measurable PSNR and made the file 8% smaller.
        weights: optional [N] non-negative weights of the Gaussians (in ``params`` order) for the
            higher-SH k-means, e.g. their contributions to the training images
            (:mod:`scene3d.compress.importance`): the palette then favours the Gaussians that show.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: a tensor has the wrong shape, a value is NaN or Inf (the message names it), the
            model is empty, ``order`` is not a permutation, ``position_bits`` is outside 8..16, or
            ``weights`` do not match the model (one finite value >= 0 per Gaussian).
    """
    if not 8 <= int(position_bits) <= 16:
        raise ValueError(f"position_bits must be in 8..16, got {position_bits}")
    path = Path(path)
    arrays = export_arrays(params, transform, "the SOG")
    n = arrays["means"].shape[0]
    if n == 0:
        raise ValueError("the model has no Gaussians; a SOG needs at least one")
    if order is None and layout == "plas":
        from scene3d.compress.plas import grid_shape, sog_features, sort_into_grid

        order = sort_into_grid(sog_features({k: torch.from_numpy(v) for k, v in arrays.items()}), grid_shape(n), seed=seed).numpy()
    elif order is None and layout != "morton":
        raise ValueError(f"layout must be 'morton' or 'plas', got {layout!r}")
    seq = morton_order(arrays["means"]) if order is None else _grid_sequence(order, n)
    shN = params.get("shN")
    device = shN.device if isinstance(shN, Tensor) else torch.device("cpu")
    if weights is not None:
        weights = np.asarray(weights.detach().cpu() if isinstance(weights, Tensor) else weights, dtype=np.float64).reshape(-1)
        if weights.shape[0] != n or not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError(f"weights must be one finite value >= 0 for each of the {n} Gaussians")
    files = _encode(arrays, seq, sh_iterations, sh_palette, seed, device, webp_method, int(position_bits), weights)

    if path.suffix.lower() == ".json":
        meta = files.pop("meta.json")
        for name, data in files.items():
            atomic_write(path.parent / name, data)
        atomic_write(path, meta)
    else:
        atomic_write(path, _zip_files(files))
    return path


# ---------------------------------------------------------------------------------------------
# Reading


class _Source:
    """The files of one SOG: members of a zip, or files in the folder of a meta.json."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.prefix = ""  # of the zip members, when meta.json sits in a folder inside the zip
        self.folder = path.parent
        self.meta_path = path
        self.meta_data: bytes | None = None
        if path.is_dir():
            self.folder = path
            self.meta_path = path / "meta.json"
            return
        data = read_bytes(path, "a SOG file", _MAX_FILE_BYTES)
        if data[:2] == b"PK":
            try:
                self.zip = zipfile.ZipFile(io.BytesIO(data))
                names = self.zip.namelist()
            except Exception as e:  # noqa: BLE001 - any failure of the zip parser is a corrupt file
                raise DataError(path, f"is not a valid zip archive: it is truncated or corrupt ({e})") from None
            if "meta.json" not in names:
                nested = [name for name in names if name.endswith("/meta.json")]
                if len(nested) != 1:
                    raise DataError(path, "is a zip without meta.json, so it is not a SOG file")
                self.prefix = nested[0][: -len("meta.json")]
        elif path.suffix.lower() == ".json":
            self.meta_data = data
        else:
            raise DataError(path, "is not a SOG file: neither a zip archive (.sog) nor a meta.json")

    def read(self, name: str, what: str, max_bytes: int) -> bytes:
        plain = isinstance(name, str) and name and "\\" not in name and "\x00" not in name
        if not plain or PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            raise DataError(
                self.path, f"meta.json names the {what} file {str(name)[:80]!r}, not a plain relative file name"
            )
        if self.zip is not None:
            member = self.prefix + name
            try:
                info = self.zip.getinfo(member)
            except KeyError:
                raise DataError(self.path, f"lacks {name}, the {what} that meta.json lists") from None
            if info.file_size > max_bytes:
                raise DataError(
                    self.path, f"declares {name} as {info.file_size:,} bytes, more than its {what} can need ({max_bytes:,})"
                )
            try:  # read no further than declared: a member may inflate past it (the CRC check then fails)
                with self.zip.open(member) as f:
                    return f.read(info.file_size)
            except Exception as e:  # noqa: BLE001 - damaged entry, bad CRC, unsupported compression, ...
                raise DataError(self.path, f"has a damaged zip entry {name} ({e})") from None
        file = self.folder / name
        if not file.exists():
            raise DataError(self.path, f"lacks {name}, the {what} that meta.json lists (looked for {file})")
        return read_bytes(file, f"the SOG {what}", max_bytes)

    def stored_size(self, name: str) -> int:
        """The bytes ``name`` takes in the file (compressed, for a zip member); 0 when absent
        (reading it later says so)."""
        if self.zip is not None:
            try:
                return self.zip.getinfo(self.prefix + name).compress_size
            except KeyError:
                return 0
        try:
            return (self.folder / name).stat().st_size if isinstance(name, str) else 0
        except (OSError, ValueError):
            return 0

    def meta(self) -> bytes:
        if self.zip is not None:
            return self.read("meta.json", "metadata", _MAX_META_BYTES)
        if self.meta_data is None:
            self.meta_data = read_bytes(self.meta_path, "a SOG meta.json", _MAX_META_BYTES)
        return self.meta_data


def _get(path: Path, meta: dict, key: str, kind: str):
    """``meta[a][b]`` for ``key`` 'a.b', checked to be ``kind`` (a DataError naming the field)."""
    value = meta
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(path, f"has a meta.json without the field '{key}'")
        value = value[part]
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    ok = {
        "int": number(value) and isinstance(value, int),
        "dict": isinstance(value, dict),
        "files": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "numbers": isinstance(value, list) and all(number(v) for v in value),
        # a leading null is tolerated in codebooks (see _codebook)
        "codebook": isinstance(value, list) and all(number(v) or (v is None and i == 0) for i, v in enumerate(value)),
    }[kind]
    if not ok:
        raise DataError(path, f"has a meta.json whose field '{key}' is not {_KIND_NAMES[kind]}")
    return value


_KIND_NAMES = {"int": "an integer", "dict": "an object", "files": "a list of file names",
               "numbers": "a list of numbers", "codebook": "a list of numbers"}  # fmt: skip


def _floats(values: list) -> np.ndarray:
    """float64 array of JSON numbers (None as NaN); integers beyond float64 become Inf."""
    out = np.empty(len(values), np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = np.nan if v is None else float(v)
        except OverflowError:
            out[i] = np.inf
    return out


def _numbers(path: Path, meta: dict, key: str, length: int) -> np.ndarray:
    values = _get(path, meta, key, "numbers")
    if len(values) != length:
        raise DataError(path, f"has a meta.json whose '{key}' holds {len(values)} numbers instead of {length}")
    out = _floats(values)
    if not np.isfinite(out).all():
        raise DataError(path, f"has a meta.json whose '{key}' holds NaN or Inf")
    return out


def _codebook(path: Path, meta: dict, key: str) -> np.ndarray:
    values = _get(path, meta, key, "codebook")
    if len(values) != CODEBOOK_SIZE:
        raise DataError(path, f"has a meta.json whose '{key}' has {len(values)} entries instead of {CODEBOOK_SIZE}")
    out = _floats(values)
    if values[0] is None:  # some older writers leave a leading null: extrapolate by the mean step
        out[0] = out[1] - (out[-1] - out[1]) / (CODEBOOK_SIZE - 1)
    with np.errstate(over="ignore", invalid="ignore"):
        out = out.astype(np.float32)
    if not np.isfinite(out).all():
        raise DataError(path, f"has a meta.json whose '{key}' holds NaN or Inf (or values beyond float32)")
    return out


def _files(path: Path, meta: dict, key: str, count: int) -> list[str]:
    files = _get(path, meta, key, "files")
    if len(files) < count:
        raise DataError(path, f"has a meta.json whose '{key}' lists {len(files)} files instead of {count}")
    return files


def _image(
    src: _Source, name: str, what: str, min_pixels: int, max_pixels: int, width: int | None = None
) -> np.ndarray:
    """The image's RGBA texels [H * W, 4] (uint8), its size checked before it is decoded."""
    data = src.read(name, what, 8 * max_pixels + (1 << 20))
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "WEBP":
                raise DataError(src.path, f"has a {what} {name} that is {im.format or 'not an image'}, not WebP")
            w, h = im.size
            if w * h < min_pixels or w * h > max_pixels or (width is not None and w != width):
                need = f"{width} wide and " if width is not None else ""
                raise DataError(
                    src.path,
                    f"has a {what} {name} of {w}x{h} texels; it must be {need}hold {min_pixels} to {max_pixels} "
                    f"texels for the counts in meta.json",
                )
            rgba = np.asarray(im.convert("RGBA"))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for a corrupt image
        raise DataError(src.path, f"has a {what} {name} that is not a readable WebP image ({e})") from None
    return rgba.reshape(-1, 4)


def read_sog(path: str | Path, transform=None) -> dict[str, Tensor]:
    """Read a PlayCanvas SOG (version 2): a ``.sog`` zip, a ``meta.json`` or the folder holding it.

    Args:
        path: the ``.sog`` (written by scene3d, splat-transform, SuperSplat), or the unbundled form.
        transform: optional [4, 4] similarity applied after reading (:func:`transform_gaussians`).

    Returns:
        float32 tensors in grid order: ``means`` [N, 3], ``quats`` [N, 4] (unit, w, x, y, z),
        ``scales`` [N, 3] (log), ``opacities`` [N] (logit), ``sh0`` [N, 1, 3], ``shN`` [N, K-1, 3].

    Raises:
        DataError: the file is missing, not a zip or meta.json, lacks meta.json or an image, has
            malformed or inconsistent metadata, an unsupported version, images of the wrong size,
            out-of-range labels, or decodes to NaN/Inf.
    """
    path = Path(path)
    src = _Source(path)
    raw = src.meta()
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise DataError(path, f"has a meta.json that is not valid JSON ({e})") from None
    except RecursionError:
        raise DataError(path, "has a meta.json nested too deeply to be SOG metadata") from None
    if not isinstance(meta, dict):
        raise DataError(path, "has a meta.json that is not a JSON object")
    if "version" not in meta:
        raise DataError(path, "is a version-1 SOG (meta.json has no 'version'), which scene3d does not read; "
                              "convert it with a current splat-transform")  # fmt: skip
    if meta["version"] != SOG_VERSION or isinstance(meta["version"], bool):
        raise DataError(path, f"has SOG version {str(meta['version'])[:40]!r}; scene3d reads version {SOG_VERSION}")
    n = _get(path, meta, "count", "int")
    if not 0 <= n <= MAX_COUNT:
        raise DataError(path, f"declares {n} Gaussians in meta.json; this reader accepts 0 to {MAX_COUNT}")
    max_pixels = max(4 * n, n + (1 << 16))

    mins = _numbers(path, meta, "means.mins", 3)
    maxs = _numbers(path, meta, "means.maxs", 3)
    means_files = _files(path, meta, "means.files", 2)
    scales_cb = _codebook(path, meta, "scales.codebook")
    scales_files = _files(path, meta, "scales.files", 1)
    quats_files = _files(path, meta, "quats.files", 1)
    sh0_cb = _codebook(path, meta, "sh0.codebook")
    sh0_files = _files(path, meta, "sh0.files", 1)
    bands = 0
    if "shN" in meta:
        _get(path, meta, "shN", "dict")
        bands = _get(path, meta, "shN.bands", "int")
        if bands not in (0, 1, 2, 3):
            raise DataError(path, f"has a meta.json with shN.bands {bands}; SH bands are 0 to 3")
    if bands:
        palette = _get(path, meta, "shN.count", "int")
        if not 1 <= palette <= MAX_PALETTE:
            raise DataError(path, f"has a meta.json with shN.count {palette}; a palette has 1 to {MAX_PALETTE} entries")
        shn_cb = _codebook(path, meta, "shN.codebook")
        shn_files = _files(path, meta, "shN.files", 2)
    images = [*means_files[:2], scales_files[0], quats_files[0], sh0_files[0], *(shn_files[:2] if bands else [])]
    stored = sum(src.stored_size(name) for name in images)
    decoded = 4 * n * (14 + 3 * ((bands + 1) ** 2 - 1))
    if decoded > MAX_EXPANSION * stored:
        raise DataError(
            path,
            f"declares {n:,} Gaussians ({decoded:,} bytes decoded) in {stored:,} bytes of images, more than "
            f"{MAX_EXPANSION} times their size (real SOG files decode to 15 to 20 times); "
            "it is refused as corrupt or a decompression bomb",
        )

    def texels(name: str, what: str) -> np.ndarray:
        return _image(src, name, what, n, max_pixels)[:n]

    lo = texels(means_files[0], "means image").astype(np.float64)
    hi = texels(means_files[1], "means image").astype(np.float64)
    t = mins + (maxs - mins) * ((lo[:, :3] + 256.0 * hi[:, :3]) / 65535.0)
    with np.errstate(over="ignore", invalid="ignore"):
        means = np.sign(t) * np.expm1(np.abs(t))

    packed = texels(quats_files[0], "rotations image")
    tag = packed[:, 3].astype(np.int64) - 252
    if n and (tag.min() < 0 or tag.max() > 3):
        bad = int(np.count_nonzero((tag < 0) | (tag > 3)))
        raise DataError(path, f"has {bad} rotations whose alpha tag is not 252..255 (the dropped component)")
    small = (packed[:, :3].astype(np.float64) / 255.0 * 2.0 - 1.0) / _SQRT2
    quats = np.zeros((n, 4))
    keep = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[tag]
    np.put_along_axis(quats, keep, small, axis=1)
    quats[np.arange(n), tag] = np.sqrt(np.maximum(0.0, 1.0 - (small * small).sum(1)))

    scales = scales_cb[texels(scales_files[0], "scales image")[:, :3]]
    sh0_px = texels(sh0_files[0], "colour image")
    sh0 = sh0_cb[sh0_px[:, :3]].reshape(n, 1, 3)
    p = np.clip(sh0_px[:, 3].astype(np.float64) / 255.0, _OPACITY_EPS, 1.0 - _OPACITY_EPS)
    opacities = np.log(p / (1.0 - p))

    num_rest = (bands + 1) ** 2 - 1
    shN = np.zeros((n, num_rest, 3), np.float32)
    if bands:
        rows = math.ceil(palette / 64)
        row_texels = 64 * num_rest
        max_texels = row_texels * (MAX_PALETTE // 64)
        cents = _image(src, shn_files[0], "SH palette image", row_texels * rows, max_texels, row_texels)
        cents = cents.reshape(-1, 64, num_rest, 4)[..., :3].reshape(-1, num_rest, 3)  # [rows * 64, K-1, 3]
        lab = texels(shn_files[1], "SH label image").astype(np.int64)
        labels = lab[:, 0] | (lab[:, 1] << 8)
        if n and labels.max() >= palette:
            raise DataError(path, f"has SH labels up to {int(labels.max())}, outside its palette of {palette} entries")
        shN = shn_cb[cents[labels]]

    arrays = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "sh0": sh0, "shN": shN}
    with np.errstate(over="ignore", invalid="ignore"):
        arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    for key, a in arrays.items():
        if not np.isfinite(a).all():
            raise DataError(path, f"decodes to NaN or Inf {key} (its meta.json ranges are out of bounds)")
    tensors = to_tensors(arrays)
    return tensors if transform is None else transform_gaussians(tensors, transform)
