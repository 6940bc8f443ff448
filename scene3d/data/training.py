"""The training split on the training device, and the batches a training step reads.

:class:`TrainingData` uploads the training images once (uint8, one flat buffer, so whole images
are views and random pixels one gather), keeps the training cameras and masks on the device too,
and hands representations their batches: whole images (:meth:`TrainingData.image_batch`, each
epoch a seeded permutation of the training views) or random rays across all training images
(:meth:`TrainingData.ray_batch`). Nothing here synchronises with the host, so a step on a GPU
queues its work without waiting: what is drawn on the host (pixels, backgrounds) reaches the device
by queued copies from pinned memory (:func:`~scene3d.device.to_device_async`).

Randomness is a function of (seed, step): the image order, the random background and the rays a
step draws, so a resumed run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from scene3d.cameras import Cameras
from scene3d.data.dataset import composite
from scene3d.device import to_device_async
from scene3d.renderers.rays.pixels import Rays, pixel_rays, sample_pixels


@dataclass
class Batch:
    """One training step's data, on the training device."""

    target: Tensor
    """[C, H, W, 3] images or [N, 3] ray colours in [0, 1], composited on ``background``."""
    background: Tensor | None
    """[3] the colour renders are composited on this step (None: black)."""
    cameras: Cameras | None = None
    """Image batches: the C cameras (on the device)."""
    camera_indices: list[int] = field(default_factory=list)
    """Image batches: their indices in the dataset."""
    mask: Tensor | None = None
    """[C, H, W] bool, pixels to learn from (image batches with masks), or None."""
    rays: Rays | None = None
    """Ray batches: origins, unit directions and cone radii of the N rays."""
    ray_cameras: Tensor | None = None
    """Ray batches: [N] dataset index of each ray's image."""
    generator: torch.Generator | None = None
    """This step's random stream, for the draws the forward pass makes (stratified sampling)."""
    absgrad: bool = False
    """Set by the trainer when the densification strategy reads absolute 2D-mean gradients."""
    weights: Tensor | None = None
    """Ray batches of multiscale datasets drawn with ``area`` or ``image`` scale sampling: [N] each
    pixel's loss weight (its area in the full image, f^2 for an image at 1/f); photometric losses
    are then ``sum(w l) / sum(w)``. None: all equal."""


def epoch_order(train_indices: list[int], seed: int, epoch: int) -> list[int]:
    """The training images in the order epoch ``epoch`` visits them (a seeded permutation)."""
    perm = torch.randperm(len(train_indices), generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return [train_indices[j] for j in perm.tolist()]


def image_for_step(train_indices: list[int], seed: int, step: int) -> int:
    """Image of step ``step``: each epoch visits every training image once, in a seeded order."""
    epoch, pos = divmod(step, len(train_indices))
    return epoch_order(train_indices, seed, epoch)[pos]


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one step's draws (``stream`` separates independent draws, such as one
    per rank of a multi-device run)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step + stream * 7_777_777_777)


class TrainingData:
    """A dataset's training views, resident on ``device`` (see the module docstring)."""

    def __init__(self, dataset, device: torch.device, background_mode: str = "auto", seed: int = 0, stream: int = 0, progress: bool = True):
        from rich.progress import track

        self.ds = dataset
        self.device = torch.device(device)
        self.background_mode = background_mode
        self.seed, self.stream = int(seed), int(stream)
        self.train_indices = list(dataset.train_indices)
        self._train_indices = torch.tensor(self.train_indices, dtype=torch.int64)  # on the host, for sample_pixels
        self.cameras = dataset.cameras.to(self.device)  # every camera; indexed by dataset index
        self._camera: dict[int, Cameras] = {}
        fixed = dataset.background_for(background_mode)  # random mode: auto's, for images without alpha
        self.fixed_background = None if fixed is None else torch.tensor(fixed, dtype=torch.float32, device=self.device)
        self._dataset_background = torch.tensor(dataset.background, dtype=torch.float32, device=self.device)  # what RGBA images default to
        images = {}
        views = track(self.train_indices, description="loading the training images", transient=True, disable=not progress or len(self.train_indices) < 16)
        for i in views:
            images[i] = torch.from_numpy(dataset.image_uint8(i).copy())
        channels = max(img.shape[-1] for img in images.values())
        self.channels = channels  # 3, or 4 when any image has alpha (opaque ones get alpha 255)
        n = max(self.train_indices) + 1
        offsets, widths = torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64)
        self._spans: dict[int, tuple[int, int, int]] = {}  # image -> (first pixel, height, width)
        parts, at = [], 0
        for i, img in images.items():
            if img.shape[-1] < channels:
                img = torch.cat([img, torch.full((*img.shape[:2], channels - img.shape[-1]), 255, dtype=torch.uint8)], -1)
            h, w = img.shape[:2]
            self._spans[i] = (at, h, w)
            offsets[i], widths[i] = at, w
            parts.append(img.reshape(-1, channels))
            at += h * w
        self.pixels = torch.cat(parts).to(self.device)  # [P, channels] uint8
        self.offsets, self.widths = offsets.to(self.device), widths.to(self.device)
        self._masks: dict[int, Tensor | None] = {}
        self._factors, self._image_weights = self._multiscale_sampling(dataset)
        self._order: tuple[int, list[int]] = (-1, [])  # the current epoch's image order

    def _multiscale_sampling(self, dataset) -> tuple[Tensor | None, Tensor | None]:
        """(per-image loss-weight factors f [n] or None, the training images' draw weights or None)
        for ``dataset.scale_sampling``: ``balanced`` draws each scale equally often, its pixels
        alike, unweighted; ``area`` draws every pixel alike and weighs it by its area f^2
        (mip-NeRF's: the same expected loss, but a 1/8 scale gets 1/85 of the rays instead of a
        quarter, each weighing 64, so its gradient is far noisier); ``image`` draws each image
        equally often and weighs by f^2 (PyNeRF's)."""
        factors = getattr(dataset, "scale_factors", None)
        if factors is None:
            return None, None
        mode = getattr(dataset, "scale_sampling", "balanced")
        f = torch.tensor(factors, dtype=torch.float64)
        cams, idx = dataset.cameras, self._train_indices
        pixels = (cams.width[idx] * cams.height[idx]).double()
        if mode == "image":
            draw = torch.ones_like(pixels)
        elif mode == "balanced":
            per = f[idx]
            totals = {float(k): float(pixels[per == k].sum()) for k in per.unique()}
            draw = pixels / torch.tensor([totals[float(k)] for k in per])
            return None, draw
        elif mode == "area":
            draw = pixels
        else:
            raise ValueError(f"scale sampling must be area, balanced or image, got {mode!r}")
        return f.float().to(self.device), draw

    # ------------------------------------------------------------------ pieces
    def camera(self, i: int) -> Cameras:
        """Dataset camera ``i`` as a batch of one, on the device (made once)."""
        if i not in self._camera:
            self._camera[i] = self.ds.cameras[i].to(self.device)  # keeps its host copy: sizes read without a sync
        return self._camera[i]

    def image(self, i: int, background: Tensor | None) -> Tensor:
        """[1, H, W, 3] training image ``i`` in [0, 1]; images with alpha composited on ``background``
        (the dataset's colour when None)."""
        off, h, w = self._spans[i]
        img = self.pixels[off : off + h * w].view(h, w, self.channels).float().div(255.0)
        return self._composite(img, background)[None]

    def _composite(self, rgba: Tensor, background: Tensor | None) -> Tensor:
        return composite(rgba, self._dataset_background if background is None else background)

    def mask(self, i: int) -> Tensor | None:
        """[1, H, W] bool mask of image ``i`` on the device, or None (read once)."""
        if i not in self._masks:
            m = self.ds.mask(i)
            self._masks[i] = None if m is None else m[None].to(self.device)
        return self._masks[i]

    def background(self, step: int) -> Tensor | None:
        """[3] this step's background: a seeded random colour in ``random`` mode where the images have
        alpha, else the fixed one. Opaque images look the same on any colour, and a random one behind
        them only punishes a model for being transparent where evaluation (on black) would not, so
        ``random`` leaves datasets without alpha on their fixed background."""
        if self.background_mode == "random" and self.channels == 4:
            return to_device_async(torch.rand(3, generator=step_generator(self.seed, step, self.stream)), self.device)
        return self.fixed_background

    # ------------------------------------------------------------------ batches
    def image_batch(self, step: int) -> Batch:
        """The whole training image of ``step`` (an epoch visits each once, in a seeded order)."""
        epoch, pos = divmod(step, len(self.train_indices))
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.train_indices, self.seed, epoch))
        i = self._order[1][pos]
        bg = self.background(step)
        return Batch(target=self.image(i, bg), background=bg, cameras=self.camera(i), camera_indices=[i], mask=self.mask(i))

    def ray_batch(self, step: int, n: int, generator: torch.Generator) -> Batch:
        """``n`` rays through random pixels of random training images (drawn from ``generator``)."""
        cam, x, y = sample_pixels(self.ds.cameras, self._train_indices, n, generator, image_weights=self._image_weights)
        cam, x, y = to_device_async(torch.stack([cam, x, y]), self.device)  # drawn on the host: one copy, queued
        rays = pixel_rays(self.cameras, cam, x, y)
        bg = self.background(step)
        idx = self.offsets[cam] + y * self.widths[cam] + x
        target = self._composite(self.pixels[idx].float().div(255.0), bg)
        weights = None if self._factors is None else self._factors[cam].square()
        return Batch(target=target, background=bg, rays=rays, ray_cameras=cam, generator=generator, weights=weights)
