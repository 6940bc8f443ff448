"""The scene-file formats scene3d writes and reads, found by name or by file name.

Every format has a writer ``write(path, params, transform=None, **options) -> Path`` and a reader
``read(path, transform=None) -> params``; ``params`` follow scene3d's model convention
(:func:`scene3d.export.fileio.model_arrays`), and ``transform`` is the [4, 4] similarity applied
before writing or after reading (the normalised -> input frame map for an export). A format's module
is imported only when it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from scene3d.errors import DataError, Scene3dError


@dataclass(frozen=True)
class SceneFormat:
    name: str
    suffixes: tuple[str, ...]  # longest first where one ends another (".compressed.ply")
    module: str
    writer: str
    reader: str
    description: str

    def _load(self, attr: str) -> Callable:
        return getattr(importlib.import_module(self.module), attr)

    def write(self, path: str | Path, params: dict[str, Tensor], transform=None, **options) -> Path:
        return self._load(self.writer)(path, params, transform=transform, **options)

    def read(self, path: str | Path, transform=None) -> dict[str, Tensor]:
        return self._load(self.reader)(path, transform=transform)


FORMATS: dict[str, SceneFormat] = {
    f.name: f
    for f in (
        SceneFormat("ply", (".ply",), "scene3d.export.ply", "write_ply", "read_ply",
                    "the standard 3DGS PLY (float32, every attribute exact)"),
        SceneFormat("splat", (".splat",), "scene3d.export.splat", "write_splat", "read_splat",
                    "antimatter15/splat: 32 bytes per Gaussian, colour and opacity 8-bit, no view-dependent colour"),
        SceneFormat("compressed-ply", (".compressed.ply",), "scene3d.export.compressed_ply",
                    "write_compressed_ply", "read_compressed_ply",
                    "PlayCanvas/SuperSplat compressed PLY: chunks of 256 with packed 11/10-bit attributes, 8-bit SH"),
        SceneFormat("spz", (".spz",), "scene3d.export.spz", "write_spz", "read_spz",
                    "Niantic spz: gzip, 24-bit fixed-point positions, quantised attributes"),
        SceneFormat("sog", (".sog",), "scene3d.export.sog", "write_sog", "read_sog",
                    "PlayCanvas SOG: attributes sorted into a 2D grid, quantised, WebP images and codebooks, zipped"),
    )
}  # fmt: skip


def format_names() -> list[str]:
    return list(FORMATS)


def get_format(name: str) -> SceneFormat:
    if name not in FORMATS:
        raise Scene3dError(f"unknown scene format {name!r}; valid formats: {', '.join(FORMATS)}")
    return FORMATS[name]


def format_of_path(path: str | Path) -> SceneFormat:
    """The format a file name says (``scene.compressed.ply`` is compressed-ply, ``x.ply`` ply).

    A ``.ply`` that turns out to be a compressed PLY is detected from its header by
    :func:`read_scene`, so a renamed file still reads.
    """
    name = Path(path).name.lower()
    matches = [(len(s), f) for f in FORMATS.values() for s in f.suffixes if name.endswith(s)]
    if not matches:
        suffixes = sorted({s for f in FORMATS.values() for s in f.suffixes})
        raise DataError(path, f"has a file name scene3d cannot place; scene files end in {', '.join(suffixes)}")
    return max(matches, key=lambda m: m[0])[1]


def _is_compressed_ply(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"ply") and b"element chunk" in head and b"packed_position" in head


def read_scene(path: str | Path, transform=None) -> dict[str, Tensor]:
    """Read any scene file scene3d knows (chosen by name; compressed PLYs also by header)."""
    path = Path(path)
    fmt = format_of_path(path)
    if fmt.name == "ply" and _is_compressed_ply(path):
        fmt = FORMATS["compressed-ply"]
    return fmt.read(path, transform=transform)


def write_scene(path: str | Path, params: dict[str, Tensor], format: str | None = None, transform=None, **options) -> Path:
    """Write ``params`` as ``format`` (default: the one the file name says)."""
    fmt = get_format(format) if format is not None else format_of_path(path)
    return fmt.write(path, params, transform=transform, **options)
