"""Checks every reader applies to what a scene file declares, before anything trusts it.

A scene may come from anyone: each camera field must be a finite number in its range, each pose a
finite rotation, each declared image size under a ceiling and consistent with the image on disk,
and each file a scene names must lie inside the scene folder. A failed check raises
:class:`~scene3d.errors.DataError` naming the file, the frame and the field.
"""

from __future__ import annotations

import math
import numbers
from pathlib import Path

import numpy as np

from scene3d.errors import DataError

MAX_IMAGE_SIDE = 65_535
"""Widest or tallest image accepted, in pixels (the JPEG limit; larger is a corrupt or hostile header)."""
MAX_IMAGE_PIXELS = 120_000_000
"""Most pixels in one image (120 Mpx: above any camera sensor, below Pillow's 179 Mpx bomb limit)."""
MAX_JSON_BYTES = 64 * 1024 * 1024
"""Largest transforms*.json read (a 10,000-frame scene needs about 10 MB)."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of lists and objects accepted in a scene's JSON (a transforms.json needs 5)."""
MAX_MAGNITUDE = 1e12
"""Largest magnitude of a camera number (pixels, coordinates, distortion): beyond it float32
maths in training overflows (squares reach 1e24 of float32's 3e38)."""
MIN_FOCAL = 1e-3
"""Smallest focal length accepted, in pixels (smaller ones underflow or blow up ray directions)."""
ROTATION_TOLERANCE = 1e-2
"""How far a pose's rotation block may be from orthonormal (|R^T R - I|, largest entry)."""


def shown(value, limit: int = 80, quote: bool = True) -> str:
    """``value`` as it may appear in a one-line message: short, without control characters
    (strings quoted unless ``quote`` is off, so 'abc' is told from a number)."""
    text = repr(value) if isinstance(value, str) and quote else str(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def json_depth(tree) -> int:
    """How deeply ``tree`` nests lists and objects, found without recursion."""
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                stack.extend((child, depth + 1) for child in children)
    return deepest


def real(path: Path, where: str, field: str, value, *, positive: bool = False, minimum: float | None = None) -> float:
    """A JSON or file value as a finite float of magnitude at most :data:`MAX_MAGNITUDE` (positive,
    or at least ``minimum``, when asked); the error names ``where`` and ``field``."""
    ok = _is_number(value)
    if ok:
        v = float(value) if not isinstance(value, numbers.Integral) or abs(value) < 10**300 else math.inf
        ok = math.isfinite(v) and abs(v) <= MAX_MAGNITUDE and (v > 0 or not positive) and (minimum is None or v >= minimum)
    if not ok:
        if minimum is not None:
            need = f"a finite number from {minimum:g} to {MAX_MAGNITUDE:g}"
        else:
            need = f"a finite {'positive ' if positive else ''}number no larger than {MAX_MAGNITUDE:g} in magnitude"
        raise DataError(path, f"{where} has {field} {shown(value)}, but it must be {need}")
    return v


def size(path: Path, where: str, field: str, value) -> int:
    """A declared image width or height: a whole number from 1 to :data:`MAX_IMAGE_SIDE`."""
    ok = _is_number(value) and abs(value) <= 10**300
    ok = ok and math.isfinite(value) and float(value).is_integer() and 1 <= value <= MAX_IMAGE_SIDE
    if not ok:
        raise DataError(path, f"{where} has {field} {shown(value)}, but an image side must be a whole number from 1 to {MAX_IMAGE_SIDE}")
    return int(value)


def text(path: Path, where: str, field: str, value) -> str:
    if not isinstance(value, str) or not value:
        raise DataError(path, f"{where} has {field} {shown(value)}, but it must be a non-empty string")
    return value


def check_camera(path: Path, where: str, fx, fy, cx, cy, dist, width, height) -> None:
    """Focal lengths from :data:`MIN_FOCAL` to :data:`MAX_MAGNITUDE` pixels, a finite principal point
    and distortion, whole positive sizes under the side and pixel ceilings."""
    for field, v in (("width", width), ("height", height)):
        size(path, where, field, v)
    if width * height > MAX_IMAGE_PIXELS:
        raise DataError(path, f"{where} declares a {width}x{height} image, more than the {MAX_IMAGE_PIXELS:,}-pixel ceiling")
    for field, v in (("fx", fx), ("fy", fy)):
        real(path, where, f"focal length {field}", float(v), minimum=MIN_FOCAL)
    for field, v in (("cx", cx), ("cy", cy)):
        real(path, where, f"principal point {field}", float(v))
    for k, v in enumerate(dist):
        real(path, where, f"distortion parameter {k + 1}", float(v))


def check_rotation(path: Path, where: str, field: str, R: np.ndarray, t: np.ndarray) -> None:
    """A pose must be finite and its 3x3 block a proper rotation (rigid poses are inverted by transposing)."""
    if not (np.isfinite(R).all() and np.isfinite(t).all()):
        raise DataError(path, f"{where} has a {field} with non-finite entries")
    if np.abs(t).max(initial=0) > MAX_MAGNITUDE:
        raise DataError(path, f"{where} has a {field} whose translation {t.tolist()} exceeds {MAX_MAGNITUDE:g} in magnitude")
    with np.errstate(all="ignore"):  # huge finite entries overflow to inf, which the checks refuse
        det = float(np.linalg.det(R))
        deviation = float(np.abs(R.T @ R - np.eye(3)).max())
    if abs(det) < 1e-6:
        raise DataError(path, f"{where} has a singular {field} (its rotation has determinant {det:.3g})")
    if det < 0:
        raise DataError(path, f"{where} has a mirrored {field} (its rotation has determinant {det:.3g})")
    if not deviation <= ROTATION_TOLERANCE:
        raise DataError(path, f"{where} has a {field} whose rotation is not orthonormal (off by {deviation:.3g}); scene3d needs rigid camera poses")


def check_quaternion(path: Path, where: str, q: np.ndarray, t: np.ndarray) -> None:
    """COLMAP quaternions must be finite and non-zero before they are normalised."""
    if not np.isfinite(q).all():
        raise DataError(path, f"{where} has a non-finite rotation quaternion {q.tolist()}")
    if float(np.linalg.norm(q)) < 1e-8:
        raise DataError(path, f"{where} has a zero rotation quaternion")
    if not np.isfinite(t).all():
        raise DataError(path, f"{where} has a non-finite translation {t.tolist()}")
    if np.abs(t).max() > MAX_MAGNITUDE:
        raise DataError(path, f"{where} has a translation {t.tolist()} that exceeds {MAX_MAGNITUDE:g} in magnitude")


def inside(root: Path, path: Path, allow_outside: bool, source: Path, where: str) -> Path:
    """``path`` unchanged if it resolves (symlinks followed) inside ``root``, else a DataError naming
    ``source`` (the file that named it) — checked before the file is ever opened."""
    if allow_outside:
        return path
    try:
        target = path.resolve()
        base = root.resolve()
    except (OSError, ValueError, RuntimeError) as e:  # a NUL byte, a symlink loop, a name too long
        raise DataError(source, f"{where} names {shown(str(path), quote=False)}, which is not a usable path ({e})") from None
    if target != base and base not in target.parents:
        raise DataError(source, f"{where} names {shown(str(path), 200, quote=False)}, which resolves to {shown(str(target), 200, quote=False)} outside the scene folder {base}; pass --allow-outside-paths to allow that")
    return path


def check_image_size(image: Path, declared: tuple[int, int], actual: tuple[int, int]) -> None:
    """The image on disk is its camera's size or a copy shrunk by one factor on both axes
    (the downscale convention of images_N folders), to within a pixel of rounding."""
    (W, H), (w, h) = declared, actual
    if (w, h) == (W, H):
        return
    sw, sh = W / w, H / h
    consistent = abs(W / sh - w) <= 1.0 and abs(H / sw - h) <= 1.0
    if not consistent or min(sw, sh) < 1.0:
        raise DataError(image, f"is {w}x{h}, but its camera declares {W}x{H} (an image may be a copy shrunk by one factor, never another shape or larger)")
