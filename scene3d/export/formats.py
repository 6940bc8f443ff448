"""The file formats scene3d writes and reads, found by name or by file name: the one list the CLI,
the viewer and the benchmarks take their choices from.

Two kinds. *Gaussian scene files* (``kind="gaussians"``: ply, splat, compressed-ply, spz, sog) hold
3D Gaussians, which any representation that can be baked writes
(:meth:`~scene3d.models.base.Representation.to_gaussians`); each has a writer ``write(path,
params, transform=None, **options) -> Path`` and a reader ``read(path, transform=None) -> params``,
``params`` in scene3d's Gaussian convention (:func:`scene3d.export.fileio.model_arrays`) and
``transform`` the [4, 4] similarity applied before writing or after reading (the normalised ->
input frame map of an export). *Model files* (``kind="model"``) hold a representation's own state
(:mod:`scene3d.export.model_file`); ``needs`` names the capability a model must declare to be
written as one. *Point clouds* (``kind="points"``) hold any run's geometry as coloured points
(:mod:`scene3d.export.points`; written with ``--format points``, since their ``.ply`` is not a scene
of Gaussians). A format's module is imported only when it is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
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
    kind: Literal["gaussians", "model", "points"] = "gaussians"
    needs: str | None = None  # the Caps field a representation needs to be written in this format

    @property
    def suffix(self) -> str:
        return self.suffixes[0]

    def _load(self, attr: str) -> Callable:
        return getattr(importlib.import_module(self.module), attr)

    def write(self, path: str | Path, params: dict[str, Tensor], transform=None, **options) -> Path:
        return self._load(self.writer)(path, params, transform=transform, **options)

    def read(self, path: str | Path, **kwargs):
        """Gaussian formats: ``read(path, transform=None) -> params``; model files: ``read(path, device=...) -> (model, transform)``."""
        return self._load(self.reader)(path, **kwargs)


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
        # SlimmeRF's slimmed models (the format carries the method's name): a run truncated to a rank
        SceneFormat("slimmerf", (".slimmerf",), "scene3d.export.model_file", "write_model_file", "read_model_file",
                    "a slimmable run truncated to a rank (--rank), loadable on its own", kind="model", needs="slimmable"),
        # any run's geometry as coloured points (NeRFs sampled where the training views see them)
        SceneFormat("points", (".points.ply",), "scene3d.export.points", "write_point_ply", "read_point_ply",
                    "a point cloud (PLY of x, y, z, red, green, blue) of any run, for MeshLab, CloudCompare, Open3D", kind="points"),
    )
}  # fmt: skip


def formats(kind: str | None = None) -> list[SceneFormat]:
    """Every format, or those of one kind: "gaussians" (what the viewer's crop export and bench
    export offer), "model" or "points"."""
    return [f for f in FORMATS.values() if kind is None or f.kind == kind]


def format_names(kind: str | None = None) -> list[str]:
    return [f.name for f in formats(kind)]


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
    """Read any Gaussian scene file scene3d knows (chosen by name; compressed PLYs also by header)."""
    path = Path(path)
    fmt = format_of_path(path)
    if fmt.kind != "gaussians":
        raise DataError(path, f"is a {fmt.name} file ({fmt.description.split(' (')[0]}), not a file of Gaussians")
    if fmt.name == "ply" and _is_compressed_ply(path):
        fmt = FORMATS["compressed-ply"]
    return fmt.read(path, transform=transform)


def write_scene(path: str | Path, params: dict[str, Tensor], format: str | None = None, transform=None, **options) -> Path:
    """Write ``params`` as ``format`` (default: the one the file name says)."""
    fmt = get_format(format) if format is not None else format_of_path(path)
    return fmt.write(path, params, transform=transform, **options)


def open_file(path: str | Path, device="cpu", transform=None):
    """(representation, input -> model frame [4, 4] or None) of any file scene3d reads.

    A Gaussian scene file becomes the representation that renders those Gaussians, mapped by
    ``transform`` (e.g. a dataset's input -> normalised transform; the model frame is then that
    one, else the file's own input frame and the identity). A model file becomes the
    representation it holds, in its run's normalised frame (its recorded transform, or None)."""
    import numpy as np

    from scene3d.models import representation_for_gaussians
    from scene3d.models.base import GaussianSet

    path = Path(path)
    if not path.exists():
        raise DataError(path, "does not exist")
    fmt = format_of_path(path)
    if fmt.kind == "model":
        return fmt.read(path, device=device)
    params = read_scene(path, transform=None if transform is None else np.asarray(transform, dtype=np.float64))
    if params["means"].shape[0] == 0:
        raise DataError(path, "holds no Gaussians")
    frame = np.eye(4) if transform is None else np.asarray(transform, dtype=np.float64)
    return representation_for_gaussians(GaussianSet.from_params(params), device), frame
