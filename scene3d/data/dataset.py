"""The one dataset type every reader returns, and the services shared by all representations.

A reader produces a :class:`RawScene` in the input's own world frame at full resolution;
:func:`finalize` turns it into a :class:`SceneDataset`: split into train/test, downscaled,
normalised (the similarity is recorded so exports can map back), with sparse points cleaned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from scene3d.cameras import Cameras
from scene3d.data import images as imio
from scene3d.data.config import DataConfig
from scene3d.data.validate import MAX_MAGNITUDE, check_image_size
from scene3d.errors import DataError

log = logging.getLogger("scene3d.data")


@dataclass
class RawScene:
    """What a reader extracts, before splitting, downscaling and normalisation."""

    format: str
    root: Path
    cameras: Cameras  # full resolution, input world frame
    image_paths: list[Path]
    names: list[str]
    points: np.ndarray | None = None  # [P, 3] float
    point_colors: np.ndarray | None = None  # [P, 3] uint8
    mask_paths: list[Path | None] | None = None
    split: dict[str, list[int]] | None = None  # explicit {"train": [...], "test": [...]}
    downscaled_images: dict[int, list[Path]] = field(default_factory=dict)  # factor -> files of an images_N folder
    aabb: np.ndarray | None = None  # [2, 3] in the input frame
    near_far: np.ndarray | None = None  # [N, 2] per-image depth bounds (LLFF)
    warnings: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


@dataclass
class SceneDataset:
    """Cameras, images, split, sparse points and the normalisation of one scene.

    Everything geometric is in the *normalised* frame: ``x_norm = transform @ x_input``.
    Images are loaded lazily, at ``cameras``' resolution.
    """

    format: str
    root: Path
    cameras: Cameras  # [N] at the loaded resolution, normalised frame
    image_paths: list[Path]  # the files actually decoded (downscaled copies when cached)
    source_paths: list[Path]  # the original image files
    names: list[str]
    train_indices: list[int]
    test_indices: list[int]
    transform: np.ndarray  # [4, 4] similarity input -> normalised frame
    downscale: int = 1
    points: np.ndarray | None = None  # [P, 3] float32
    point_colors: np.ndarray | None = None  # [P, 3] uint8
    mask_paths: list[Path | None] | None = None
    aabb: np.ndarray | None = None  # [2, 3], normalised frame
    near_far: np.ndarray | None = None  # [N, 2], normalised units
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    warnings: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    scale_factors: list[int] | None = None
    """Multiscale datasets: each image's size divisor relative to the loaded resolution (1, 2, 4, 8); None: all 1."""
    scale_sampling: str = "balanced"
    """Multiscale datasets: how ray batches draw and weigh the scales (``--data.scale-sampling``)."""

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def scale(self) -> float:
        """Normalised units per input unit."""
        return float(abs(np.linalg.det(self.transform[:3, :3])) ** (1.0 / 3.0))

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else int(self.points.shape[0])

    def background_for(self, mode: str = "auto") -> tuple[float, float, float] | None:
        """The colour renders are composited on outside training (evaluation, test renders, the
        viewer) for a ``--background-mode``: white for ``white``; for ``auto`` and ``random``, the
        colour this dataset's transparent images are composited on where they have an alpha channel
        (Blender synthetic scenes: ``--data.background``, white by default); None (black) otherwise.
        This is the one place that rule lives."""
        if mode == "white":
            return (1.0, 1.0, 1.0)
        if mode in ("auto", "random") and self.format == "blender":
            return tuple(float(c) for c in self.background)
        return None

    def scale_factor(self, i: int) -> int:
        """Image ``i``'s size divisor relative to the loaded resolution (1 unless multiscale)."""
        return 1 if self.scale_factors is None else int(self.scale_factors[i])

    def split_indices(self, split: Literal["train", "test", "all"]) -> list[int]:
        return {"train": self.train_indices, "test": self.test_indices, "all": list(range(len(self)))}[split]

    def to_input_frame(self, points: np.ndarray) -> np.ndarray:
        """Maps normalised-frame points [P, 3] back to the input frame."""
        inv = np.linalg.inv(self.transform)
        return points @ inv[:3, :3].T + inv[:3, 3]

    def scene_radius(self) -> float:
        """Largest distance of a camera centre from the mean centre (normalised units)."""
        c = self.cameras.centers.numpy()
        return float(np.linalg.norm(c - c.mean(0), axis=-1).max()) if len(c) > 1 else 1.0

    # ------------------------------------------------------------------ images
    def _size(self, i: int) -> tuple[int, int]:
        return int(self.cameras.width[i]), int(self.cameras.height[i])

    def image_uint8(self, i: int) -> np.ndarray:
        """Image i as stored: uint8 [H, W, 3 or 4], at the loaded resolution."""
        path = self.image_paths[i]
        return _load_cached(path, self._size(i), imio.source_stamp(path))

    def image(self, i: int, background=None) -> torch.Tensor:
        """Image i as float RGB in [0, 1], [H, W, 3]; RGBA is composited on ``background`` (a colour
        [3]; default: the dataset's ``background``)."""
        arr = torch.from_numpy(self.image_uint8(i).copy()).float() / 255.0
        return composite(arr, self.background if background is None else background)

    def alpha(self, i: int) -> torch.Tensor | None:
        """Image i's alpha channel [H, W] in [0, 1], or None for opaque images."""
        arr = self.image_uint8(i)
        return torch.from_numpy(arr[..., 3].copy()).float() / 255.0 if arr.shape[-1] == 4 else None

    def mask(self, i: int) -> torch.Tensor | None:
        """Bool mask [H, W] (True = use the pixel), or None when the image has none."""
        if not self.mask_paths or self.mask_paths[i] is None:
            return None
        return torch.from_numpy(imio.read_mask(self.mask_paths[i], self._size(i)))


def composite(rgba: torch.Tensor, background) -> torch.Tensor:
    """[..., 3] colours of [..., 3 or 4] float pixels in [0, 1]: those with alpha laid over
    ``background`` (a colour [3], any device), the others unchanged."""
    if rgba.shape[-1] != 4:
        return rgba
    a = rgba[..., 3:]
    bg = torch.as_tensor(background, dtype=rgba.dtype, device=rgba.device)
    return rgba[..., :3] * a + bg * (1 - a)


@lru_cache(maxsize=64)
def _load_cached(path: Path, size: tuple[int, int], stamp: str) -> np.ndarray:
    """Decoded pixels, reused while the file keeps its ``stamp`` (size and modification time)."""
    arr = imio.read_image(path, size)
    arr.setflags(write=False)
    return arr


# ---------------------------------------------------------------------- split
def make_split(n: int, names: list[str], explicit: dict[str, list[int]] | None, test_every: int) -> tuple[list[int], list[int]]:
    """Explicit lists win; otherwise every ``test_every``-th image (0, N, 2N...) is a test image.

    Images named in neither explicit list are dropped from both splits. With ``test_every`` <= 0
    every image trains and the test split is empty.
    """
    if explicit and explicit.get("train"):
        train = sorted(set(explicit["train"]))
        test = sorted(set(explicit.get("test", [])))
        return train, test
    if test_every <= 0 or n < 2:
        return list(range(n)), []
    order = sorted(range(n), key=lambda i: names[i])
    test = sorted(order[k] for k in range(0, n, test_every))
    test_set = set(test)
    return [i for i in range(n) if i not in test_set], test


# ---------------------------------------------------------------------- normalisation
def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation matrix turning unit vector a onto unit vector b."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    v, c = np.cross(a, b), float(np.dot(a, b))
    if c < -1 + 1e-8:  # opposite: rotate 180 degrees about any axis orthogonal to a
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < 1e-6:
            axis = np.cross(a, [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1 + c)


def focus_point(c2w: np.ndarray) -> np.ndarray | None:
    """The point nearest (least squares) to every camera's optical axis, if it lies in front of most cameras."""
    origins, dirs = c2w[:, :3, 3], c2w[:, :3, 2]
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for o, d in zip(origins, dirs):
        P = np.eye(3) - np.outer(d, d)
        A += P
        b += P @ o
    if np.linalg.cond(A) > 1e8:
        return None
    p = np.linalg.solve(A, b)
    in_front = ((p - origins) * dirs).sum(-1) > 0
    return p if in_front.mean() > 0.75 else None


def normalization_transform(c2w_cv: np.ndarray) -> np.ndarray:
    """Similarity [4, 4] that centres, orients and scales a camera set.

    Up (the mean of the cameras' -y axes) becomes +z; the centre is the cameras' focus point for
    inward-looking captures, else the mean camera centre; the scale puts every camera centre inside
    the unit sphere around it.
    """
    centers = c2w_cv[:, :3, 3]
    up = -c2w_cv[:, :3, 1].mean(0)
    R = _rotation_between(up, np.array([0.0, 0.0, 1.0])) if np.linalg.norm(up) > 1e-6 else np.eye(3)
    center = centers.mean(0)
    if len(c2w_cv) >= 3:
        f = focus_point(c2w_cv)
        if f is not None and np.linalg.norm(f - center) < 2 * np.linalg.norm(centers - center, axis=-1).max():
            center = f
    radius = np.linalg.norm(centers - center, axis=-1).max()
    s = 1.0 / radius if radius > 1e-9 else 1.0
    T = np.eye(4)
    T[:3, :3] = s * R
    T[:3, 3] = -s * R @ center
    return T


def remove_outliers(points: np.ndarray, colors: np.ndarray, nb_neighbors: int = 20, std_ratio: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Statistical outlier removal with open3d (a point whose mean neighbour distance is over
    ``std_ratio`` standard deviations above the average is dropped)."""
    if len(points) <= nb_neighbors:
        return points, colors
    import open3d as o3d

    pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    _, keep = pc.remove_statistical_outlier(nb_neighbors=nb_neighbors, std_ratio=std_ratio)
    keep = np.asarray(keep, dtype=np.int64)
    return points[keep], colors[keep]


# ---------------------------------------------------------------------- finalisation
def finalize(raw: RawScene, cfg: DataConfig) -> SceneDataset:
    """Splits, downscales, normalises and cleans a reader's :class:`RawScene`."""
    n = len(raw.cameras)
    if n == 0:
        raise DataError(raw.root, "contains no usable images")
    train, test = make_split(n, raw.names, raw.split, cfg.test_every)
    if not train:
        raise DataError(raw.root, "has no training images after the split")

    cams = raw.cameras
    paths = list(raw.image_paths)
    factor = int(cfg.downscale)
    if factor < 1:
        raise DataError(raw.root, f"downscale must be a positive integer, got {cfg.downscale}")
    if factor > 1:
        cams, paths = _downscale(raw, factor)

    T = normalization_transform(raw.cameras.cam_to_world.double().numpy()) if cfg.normalize else np.eye(4)
    cams = cams.transformed(torch.from_numpy(T).float())
    s = float(abs(np.linalg.det(T[:3, :3])) ** (1 / 3))

    points = colors = None
    if raw.points is not None and len(raw.points):
        points = raw.points.astype(np.float64)
        colors = raw.point_colors if raw.point_colors is not None else np.full((len(points), 3), 128, np.uint8)
        usable = (np.abs(points) <= MAX_MAGNITUDE).all(-1)  # NaN, infinite and absurd points are dropped
        points, colors = points[usable], colors[usable]
        if cfg.remove_outliers:
            points, colors = remove_outliers(points, colors)
        with np.errstate(over="ignore"):
            points = (points @ T[:3, :3].T + T[:3, 3]).astype(np.float32)
        usable = np.isfinite(points).all(-1)
        points, colors = points[usable], colors[usable]

    aabb = None
    if raw.aabb is not None:
        corners = np.array([[x, y, z] for x in raw.aabb[:, 0] for y in raw.aabb[:, 1] for z in raw.aabb[:, 2]])
        mapped = corners @ T[:3, :3].T + T[:3, 3]
        aabb = np.stack([mapped.min(0), mapped.max(0)]).astype(np.float32)
    elif raw.meta.get("aabb_scale"):
        # instant-ngp / nerfstudio semantics: a cube of half-size aabb_scale in the normalised
        # frame, where the cameras lie inside the unit sphere.
        a = float(raw.meta["aabb_scale"])
        aabb = np.array([[-a, -a, -a], [a, a, a]], np.float32)

    ds = SceneDataset(
        format=raw.format,
        root=raw.root,
        cameras=cams,
        image_paths=paths,
        source_paths=list(raw.image_paths),
        names=list(raw.names),
        train_indices=train,
        test_indices=test,
        transform=T,
        downscale=factor,
        points=points,
        point_colors=colors,
        mask_paths=raw.mask_paths if cfg.load_masks else None,
        aabb=aabb,
        near_far=None if raw.near_far is None else raw.near_far * s,
        background=tuple(cfg.background),
        warnings=list(raw.warnings),
        meta=dict(raw.meta),
    )
    ds.scale_sampling = getattr(cfg, "scale_sampling", "balanced")
    if raw.meta.get("scale_factors") is not None:  # a scene that ships its scales (multiscale Blender)
        ds.scale_factors = [int(f) for f in raw.meta["scale_factors"]]
        return ds
    return multiscale(ds) if getattr(cfg, "multiscale", False) else ds


MULTISCALE_FACTORS = (1, 2, 4, 8)


def multiscale(ds: SceneDataset, factors: tuple[int, ...] = MULTISCALE_FACTORS) -> SceneDataset:
    """``ds`` with every image also at 1/f of its size for each of ``factors`` (powers of two;
    mip-NeRF's multiscale convention): the cameras' intrinsics divided by f (sizes rounded, at
    least 1 px), the pixels area-averaged from the same file when read, names ending ``_dK`` for
    f = 2^K (as mip-NeRF's multiscale Blender files). Both splits take every scale of their
    images; ``scale_factors`` records each image's f."""
    if ds.scale_factors is not None:
        return ds
    n = len(ds)
    cams = Cameras.cat([ds.cameras if f == 1 else ds.cameras.downscaled(f) for f in factors])

    def rep(items):
        return None if items is None else [items[i] for _ in factors for i in range(n)]

    def named(name: str, f: int) -> str:
        p = Path(name)
        return name if f == 1 else str(p.with_name(f"{p.stem}_d{f.bit_length() - 1}{p.suffix}"))  # mip-NeRF's names: _d1 is 1/2

    return SceneDataset(
        format=ds.format, root=ds.root, cameras=cams, image_paths=rep(ds.image_paths), source_paths=rep(ds.source_paths),
        names=[named(ds.names[i], f) for f in factors for i in range(n)],
        train_indices=[k * n + i for k in range(len(factors)) for i in ds.train_indices],
        test_indices=[k * n + i for k in range(len(factors)) for i in ds.test_indices],
        transform=ds.transform, downscale=ds.downscale, points=ds.points, point_colors=ds.point_colors,
        mask_paths=rep(ds.mask_paths), aabb=ds.aabb, near_far=None if ds.near_far is None else np.concatenate([ds.near_far] * len(factors)),
        background=ds.background, warnings=ds.warnings, meta={**ds.meta, "multiscale": list(factors)},
        scale_factors=[f for f in factors for _ in range(n)], scale_sampling=ds.scale_sampling,
    )  # fmt: skip


def _downscale(raw: RawScene, factor: int) -> tuple[Cameras, list[Path]]:
    """Cameras and image paths at 1/factor resolution, using ``images_N/`` when the dataset has it."""
    shipped = raw.downscaled_images.get(factor)
    if shipped is not None and len(shipped) == len(raw.image_paths) and all(p.is_file() for p in shipped):
        sizes = [imio.image_size(p) for p in shipped]
        for i, (p, size) in enumerate(zip(shipped, sizes)):
            check_image_size(p, (int(raw.cameras.width[i]), int(raw.cameras.height[i])), size)
        w, h = zip(*sizes)
        return raw.cameras.resized(torch.tensor(w), torch.tensor(h)), list(shipped)
    cams = raw.cameras.downscaled(factor)
    from rich.progress import track

    todo = [(p, imio.downscaled_path(raw.root, p, factor)) for p in raw.image_paths]
    pending = [i for i, (_, d) in enumerate(todo) if not d.is_file()]
    iterator = track(pending, description=f"downscaling {len(pending)} images by {factor}", transient=True) if len(pending) > 4 else pending
    for i in iterator:
        src, dst = todo[i]
        imio.ensure_downscaled(src, dst, (int(cams.width[i]), int(cams.height[i])))
    paths = [d for _, d in todo]
    return cams, paths
