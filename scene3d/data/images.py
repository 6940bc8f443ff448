"""Image decoding, validation and the on-disk cache of downscaled images.

Decoding failures name the file. Downscaled copies are written once, as lossless PNG, under the
cache root (``$SCENE3D_CACHE_DIR`` or ``~/.cache/scene3d``) in a folder keyed by the dataset's
absolute path, so read-only datasets can be downscaled too; a dataset that already ships an
``images_N/`` folder (LLFF, Mip-NeRF 360, nerfstudio) is used as it is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from scene3d.atomic import atomic_path
from scene3d.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(path, "image file not found")
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(path, f"is not a readable image ({e})") from None


def read_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decodes an image to uint8 [H, W, C] with C = 3 (RGB) or 4 (RGBA).

    Greyscale and palette images become RGB(A). With ``size`` = (width, height) the image is
    resampled (area filter) when its size differs.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise DataError(path, "image file not found")
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            im = im.convert("RGBA" if has_alpha else "RGB")
            if size is not None and im.size != tuple(size):
                im = im.resize(tuple(size), Image.Resampling.BOX if _is_shrink(im.size, size) else Image.Resampling.BICUBIC)
            return np.asarray(im).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"is corrupt or not an image ({e})") from None


def _is_shrink(src: tuple[int, int], dst: tuple[int, int]) -> bool:
    return dst[0] <= src[0] and dst[1] <= src[1]


def read_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A mask image -> bool [H, W] (True = pixel is used), resampled to ``size`` if needed."""
    from PIL import Image

    arr = read_image(path)
    mask = arr[..., 3] if arr.shape[-1] == 4 else arr[..., :3].max(-1)
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        mask = np.asarray(Image.fromarray(mask).resize(tuple(size), Image.Resampling.NEAREST))
    return mask > 127


def cache_root() -> Path:
    return Path(os.environ.get("SCENE3D_CACHE_DIR", Path.home() / ".cache" / "scene3d"))


def downscaled_path(dataset_root: Path, image_path: Path, factor: int) -> Path:
    """Where the cached copy of ``image_path`` at 1/``factor`` resolution lives."""
    key = hashlib.sha1(str(dataset_root.resolve()).encode()).hexdigest()[:16]
    try:
        rel = image_path.resolve().relative_to(dataset_root.resolve())
    except ValueError:
        rel = Path(hashlib.sha1(str(image_path.resolve()).encode()).hexdigest()[:16]) / image_path.name
    return cache_root() / "downscaled" / key / f"images_{factor}" / rel.with_suffix(rel.suffix + ".png")


def ensure_downscaled(src: Path, dst: Path, size: tuple[int, int]) -> Path:
    """Writes ``src`` resampled to ``size`` at ``dst`` (PNG, atomically) unless it exists."""
    from PIL import Image

    if dst.is_file():
        return dst
    arr = read_image(src, size)
    with atomic_path(dst, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return dst
