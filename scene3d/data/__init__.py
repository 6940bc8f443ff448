"""The camera-and-dataset layer: one :class:`SceneDataset` from any supported input format.

The heavy modules (torch, open3d) are imported on first use, so ``import scene3d.data`` is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from scene3d.data.config import DataConfig
from scene3d.errors import DataError

if TYPE_CHECKING:
    from scene3d.data.dataset import SceneDataset

FORMATS = ("colmap", "nerfstudio", "blender", "llff")


def detect_format(root: Path) -> str:
    """Names the format of the scene folder ``root`` from the files it holds."""
    root = Path(root)
    if not root.exists():
        raise DataError(root, "does not exist")
    if not root.is_dir():
        raise DataError(root, "is not a folder (point scene3d at the scene folder)")
    if (root / "transforms_train.json").is_file() or (root / "metadata.json").is_file():
        return "blender"  # the synthetic scenes, or their multiscale version (mip-NeRF's metadata.json)
    if (root / "transforms.json").is_file():
        return "nerfstudio"
    if (root / "poses_bounds.npy").is_file():
        return "llff"
    from scene3d.data.readers import colmap_model_dirs

    if colmap_model_dirs(root):
        return "colmap"
    from scene3d.data.images import is_image_file

    if any(is_image_file(p) for p in root.iterdir()):
        raise DataError(root, "is a folder of images without camera poses; run `scene3d process` on it first")
    raise DataError(root, "is not a recognised scene (expected a COLMAP model, transforms.json, transforms_train.json or poses_bounds.npy)")


def load_dataset(root: str | Path, cfg: DataConfig | None = None, format: str | None = None) -> "SceneDataset":
    """Loads the scene at ``root`` (format detected unless given) as a :class:`SceneDataset`."""
    from scene3d.data import readers, transforms_json
    from scene3d.data.dataset import finalize

    root = Path(root)
    fmt = format or detect_format(root)
    read = {
        "colmap": readers.read_colmap,
        "nerfstudio": transforms_json.read_nerfstudio,
        "blender": transforms_json.read_blender,
        "llff": readers.read_llff,
    }.get(fmt)
    if read is None:
        raise DataError(root, f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    cfg = cfg or DataConfig()
    return finalize(read(root, allow_outside=bool(cfg.allow_outside_paths)), cfg)
