"""Image decoding, validation and the on-disk cache of downscaled images.

Decoding failures name the file. Downscaled copies are written once, as lossless PNG, under the
cache root (``$SCENE3D_CACHE_DIR`` or ``~/.cache/scene3d``) in a folder keyed by the dataset's
absolute path (read-only datasets can be downscaled too), named by each source's size and
modification time (a replaced photo is downscaled again); a dataset that already ships an
``images_N/`` folder (LLFF, Mip-NeRF 360, nerfstudio) is used as it is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from scene3d.atomic import atomic_path
from scene3d.data.validate import MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE
from scene3d.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _open(path: Path):
    """The PIL image at ``path`` (header read, pixels not decoded), refused above the pixel ceiling."""
    import warnings

    from PIL import Image

    if not path.is_file():
        raise DataError(path, "image file not found")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower ceiling applies
        try:
            im = Image.open(path)
        except Image.DecompressionBombError:
            raise DataError(path, f"has more than {MAX_IMAGE_PIXELS:,} pixels, the most scene3d decodes") from None
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS or max(w, h) > MAX_IMAGE_SIDE:
        im.close()
        raise DataError(path, f"is {w}x{h}, more than the {MAX_IMAGE_PIXELS:,}-pixel ({MAX_IMAGE_SIDE} per side) ceiling scene3d decodes")
    return im


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import UnidentifiedImageError

    try:
        with _open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(path, f"is not a readable image ({e})") from None


_EIGHT_BIT_MODES = {"1", "L", "P", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LA", "PA", "La", "RGBa"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def _to_uint8(path: Path, im) -> np.ndarray:
    """uint8 [H, W, 3 or 4] of a decoded PIL image: 8-bit modes converted by PIL, 16-bit grey and
    float grey scaled to 0..255 (PIL's own conversion clips them, decoding white or black). PIL reads 16-bit RGB(A) PNGs as their top 8 bits, within one
    step of exact."""
    if im.mode in _EIGHT_BIT_MODES:
        has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info)
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    if im.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(im).astype(np.float64)
        if grey.size and (grey.min() < 0 or grey.max() > 65535):
            raise DataError(path, f"holds {im.mode} pixel values outside 0..65535, which scene3d cannot map to colours")
        grey = grey * (255.0 / 65535.0)
    elif im.mode == "F":
        grey = np.asarray(im).astype(np.float64)
        if not np.isfinite(grey).all():
            raise DataError(path, "holds non-finite floating-point pixel values")
        if grey.size and (grey.min() < 0 or grey.max() > 1):
            raise DataError(path, f"holds floating-point pixel values from {grey.min():.4g} to {grey.max():.4g}, but scene3d reads float images as 0..1")
        grey = grey * 255.0
    else:
        raise DataError(path, f"has pixel mode {im.mode}, which scene3d cannot convert to RGB")
    out = np.clip(np.round(grey), 0, 255).astype(np.uint8)
    return np.repeat(out[..., None], 3, axis=-1)


def read_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decodes an image to uint8 [H, W, C] with C = 3 (RGB) or 4 (RGBA).

    Greyscale and palette images become RGB(A); 16-bit images keep their full range and float
    images (0..1) are scaled, both to 0..255. With ``size`` = (width, height) the image is
    resampled (area filter) when its size differs.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with _open(path) as im:
            im.load()
            arr = _to_uint8(path, im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, MemoryError) as e:
        raise DataError(path, f"is corrupt or not an image ({e})") from None
    if size is not None and (arr.shape[1], arr.shape[0]) != tuple(size):
        im = Image.fromarray(arr)
        arr = np.asarray(im.resize(tuple(size), Image.Resampling.BOX if _is_shrink(im.size, size) else Image.Resampling.BICUBIC))
    return arr.copy()


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


def source_stamp(path: Path) -> str:
    """A key that changes when the file at ``path`` is replaced: its size and modification time."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size}-{st.st_mtime_ns}"


def downscaled_path(dataset_root: Path, image_path: Path, factor: int) -> Path:
    """Where the cached copy of ``image_path`` at 1/``factor`` resolution lives.

    The name carries the source's size and modification time, so a replaced photo gets a new copy
    instead of the stale one."""
    key = hashlib.sha1(str(dataset_root.resolve()).encode()).hexdigest()[:16]
    try:
        rel = image_path.resolve().relative_to(dataset_root.resolve())
    except ValueError:
        rel = Path(hashlib.sha1(str(image_path.resolve()).encode()).hexdigest()[:16]) / image_path.name
    stamp = hashlib.sha1(source_stamp(image_path).encode()).hexdigest()[:12]
    return cache_root() / "downscaled" / key / f"images_{factor}" / rel.parent / f"{rel.name}.{stamp}.png"


def ensure_downscaled(src: Path, dst: Path, size: tuple[int, int]) -> Path:
    """Writes ``src`` resampled to ``size`` at ``dst`` (PNG, atomically) unless it exists, and
    removes the copies made from earlier versions of ``src``."""
    from PIL import Image

    if dst.is_file():
        return dst
    arr = read_image(src, size)
    with atomic_path(dst, suffix=".png") as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    prefix = dst.name[: dst.name.rindex(".", 0, len(dst.name) - 4) + 1]  # "<name>." before the stamp
    for old in dst.parent.iterdir():
        if old != dst and old.name.startswith(prefix) and old.suffix == ".png" and len(old.name) == len(dst.name):
            old.unlink(missing_ok=True)
    return dst
