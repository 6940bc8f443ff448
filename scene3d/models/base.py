"""The Representation interface: the one contract every trainable scene model fulfils.

The trainer, evaluation, rendering, export, the viewer and the benchmarks call only what is
declared here and read a model's declared capabilities (:class:`Caps`); none of them names a model
or probes it for attributes. A new representation is one module defining a subclass and one line
in the registry (:mod:`scene3d.models`).

A representation is an ``nn.Module`` whose parameters live on one device. Its life:

* made by :meth:`~Representation.from_dataset` (training from scratch) or
  :meth:`~Representation.from_state` (a checkpoint or a model file; ``state()`` is tensors and
  plain data only, so loading one never runs code), on the CPU; the training engine then moves it
  to its device and calls :meth:`~Representation.setup_optimizers`;
* trained one step at a time by the one training loop (:mod:`scene3d.train.trainer`):
  :meth:`schedule` (learning rates), :meth:`batch` (whole images or a batch of rays from the
  device-resident training data), :meth:`forward`, :meth:`losses` (a named dict: each
  representation brings its own photometric loss and regularisers, computed from the render
  output), backward, the optimisers' step, :meth:`after_step` (housekeeping: rank growth, grid
  upsampling, ...). Densification strategies act on representations whose ``caps.densifiable``
  is set, through their ``params``/``optimizers`` (see :class:`Caps`);
* rendered by :meth:`render` (evaluation, test renders, videos, the viewer), with the viewer's
  controls (declared as data by :meth:`controls`) passed back as ``options``;
* exported through :meth:`to_gaussians` (every Gaussian scene format, pruning and ``eval FILE``
  read :class:`GaussianSet`); a representation that cannot be baked to Gaussians returns None.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from scene3d.cameras import Cameras
    from scene3d.data.dataset import SceneDataset
    from scene3d.data.training import Batch, TrainingData


@dataclass(frozen=True)
class Caps:
    """What a representation can do, declared once; callers read these instead of its name."""

    pinhole_only: bool = False
    """It renders pinhole cameras only: distorted captures are undistorted to pinhole images first."""
    densifiable: bool = False
    """Its primitives are rows of ``self.params`` (an ``nn.ParameterDict`` of Gaussian attributes,
    see :class:`GaussianSet`), each with its own optimiser in ``self.optimizers``; densification
    strategies (``--strategy``) and ``--compress-grid`` edit and sort those rows. Such a model also
    offers ``num_gaussians``, ``scene_scale``, ``activated()`` and ``raster_settings()``."""
    slimmable: bool = False
    """It renders with only its first ``r`` components, no retraining (``--rank`` in eval, render,
    export and the viewer; ``rank``, ``use_rank()`` and ``slimmed_state()`` below)."""
    gaussians: bool = False
    """:meth:`Representation.to_gaussians` returns a set: scene files (ply, spz, sog, ...) can be written."""


@dataclass(frozen=True)
class Control:
    """A viewer control a representation offers (the viewer turns it into a widget and passes the
    value back to :meth:`Representation.render` as ``options[key]``)."""

    key: str
    label: str
    kind: Literal["slider", "checkbox", "dropdown"]
    default: Any
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: tuple[str, ...] = ()
    hint: str | None = None


GAUSSIAN_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


@dataclass
class GaussianSet:
    """A set of N 3D Gaussians as scene files hold them (the 3DGS convention).

    ``means`` [N, 3], ``quats`` [N, 4] (w, x, y, z, any norm), ``scales`` [N, 3] (log),
    ``opacities`` [N] (logit), ``sh0`` [N, 1, 3] and ``shN`` [N, K-1, 3] (K = (degree + 1)^2)
    SH coefficients. ``antialiased`` says whether it was trained with Mip-Splatting's 2D filter
    (what renders it faithfully).
    """

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh0: Tensor
    shN: Tensor
    antialiased: bool = False

    def __post_init__(self) -> None:
        for key in GAUSSIAN_KEYS:
            value = getattr(self, key)
            if not isinstance(value, Tensor) or not value.is_floating_point():
                raise ValueError(f"{key} must be a floating-point tensor, got {type(value).__name__}")
        n = self.means.shape[0] if self.means.ndim else 0
        expected = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 1, 3)}
        for key, shape in expected.items():
            got = tuple(getattr(self, key).shape)
            if got != shape:
                raise ValueError(f"{key} must be {list(shape)} for {n} Gaussians, got {list(got)}")
        k = self.shN.shape[1] + 1 if self.shN.ndim == 3 else 0
        if self.shN.ndim != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3 or math.isqrt(k) ** 2 != k:
            raise ValueError(f"shN must be [{n}, (degree + 1)^2 - 1, 3], got {list(self.shN.shape)}")

    @classmethod
    def from_params(cls, params: dict[str, Tensor], antialiased: bool = False) -> "GaussianSet":
        """From a dict with the six keys (``shN`` may be missing: degree 0)."""
        shN = params.get("shN")
        if shN is None:
            shN = params["means"].new_zeros(params["means"].shape[0], 0, 3)
        return cls(*(params[k] for k in GAUSSIAN_KEYS[:5]), shN, antialiased=antialiased)

    def params(self) -> dict[str, Tensor]:
        """The six tensors by name (what scene-file writers take)."""
        return {k: getattr(self, k) for k in GAUSSIAN_KEYS}

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return int(round(math.sqrt(self.shN.shape[1] + 1))) - 1

    def subset(self, keep: Tensor) -> "GaussianSet":
        """The Gaussians selected by ``keep`` ([N] bool or indices)."""
        return replace(self, **{k: getattr(self, k)[keep] for k in GAUSSIAN_KEYS})

    def to(self, device) -> "GaussianSet":
        return replace(self, **{k: getattr(self, k).to(device) for k in GAUSSIAN_KEYS})

    def detach(self) -> "GaussianSet":
        return replace(self, **{k: getattr(self, k).detach() for k in GAUSSIAN_KEYS})

    def in_box(self, lo, hi) -> Tensor:
        """[N] bool: Gaussians whose centre lies in the box [lo, hi]."""
        return points_in_box(self.means, lo, hi)


def points_in_box(points: Tensor, lo, hi) -> Tensor:
    """[N] bool: which of ``points`` [N, 3] lie in the box [lo, hi] (array-likes of 3)."""
    p = points.detach()
    lo = torch.as_tensor(np.asarray(lo, dtype=np.float32), device=p.device)
    hi = torch.as_tensor(np.asarray(hi, dtype=np.float32), device=p.device)
    return ((p >= lo) & (p <= hi)).all(-1)


def log_lerp(a: float, b: float, step: int, max_steps: int) -> float:
    """``a`` at step 0 to ``b`` at ``max_steps``, log-linearly (an exponential decay); clamped outside."""
    t = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp((1 - t) * math.log(a) + t * math.log(b))


def random_scene_points(dataset, n: int, extent_factor: float, rng: np.random.Generator) -> np.ndarray:
    """[n, 3] points uniform in a cube of half-size ``extent_factor`` times the scene radius,
    narrowed to the scene box where the dataset has a tighter one (initialisation without sparse points)."""
    extent = extent_factor * max(dataset.scene_radius(), 1e-3)
    lo, hi = -extent * np.ones(3), extent * np.ones(3)
    if dataset.aabb is not None:  # the scene box, where it is tighter than the camera region
        lo, hi = np.maximum(lo, dataset.aabb[0]), np.minimum(hi, dataset.aabb[1])
    return rng.uniform(lo, hi, size=(n, 3))


def focus_of_points(points: Tensor) -> tuple[np.ndarray, float] | None:
    """(centre, radius) of a point cloud: the median and the 90th-percentile distance to it."""
    if points.shape[0] == 0:
        return None
    pts = points.detach().float().cpu().numpy()
    center = np.median(pts, axis=0)
    radius = float(np.percentile(np.linalg.norm(pts - center, axis=-1), 90)) if len(pts) > 1 else 1.0
    return center, max(radius, 1e-3)


def focus_of_box(box: Tensor) -> tuple[np.ndarray, float]:
    """(centre, half the diagonal) of a box [2, 3] (min corner, max corner)."""
    b = box.detach().double().cpu().numpy().reshape(2, 3)
    return (b[0] + b[1]) / 2, float(np.linalg.norm(b[1] - b[0]) / 2)


class Representation(nn.Module, ABC):
    """Base class of every representation (see the module docstring for the life of one).

    Class attributes a subclass sets: ``name`` (its registry name), ``Config`` (the dataclass of
    its hyperparameters: tyro builds ``--model.FIELD`` from it), ``caps``, ``presets`` (name ->
    overrides of ``model``, ``strategy``, ``train`` and ``data`` options; ``default`` is the
    original method's recipe), ``default_strategy`` (``--strategy`` when none is given; ``none``
    for models that are not densifiable) and ``schedule_fields`` (the ``Config`` fields counted in
    steps, which ``bench densify`` scales with ``--max-steps``).
    """

    name: ClassVar[str]
    Config: ClassVar[type]
    caps: ClassVar[Caps] = Caps()
    presets: ClassVar[dict[str, dict]] = {"default": {}}
    default_strategy: ClassVar[str] = "none"
    schedule_fields: ClassVar[tuple[str, ...]] = ()

    cfg: Any
    optimizers: dict[str, torch.optim.Optimizer]

    # ------------------------------------------------------------------ construction and state
    @classmethod
    @abstractmethod
    def from_dataset(cls, dataset: "SceneDataset", cfg, seed: int = 0) -> "Representation":
        """A model to train on ``dataset`` (in its normalised frame), initialised with ``seed``, on the CPU."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict, cfg) -> "Representation":
        """The model :meth:`state` described (tensors on any device; the model is made on the CPU)."""

    @abstractmethod
    def state(self) -> dict:
        """Everything :meth:`from_state` needs: tensors and plain data only (no optimiser state)."""

    # ------------------------------------------------------------------ optimisation
    @abstractmethod
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Fresh optimisers over the current parameters (on their device)."""

    def setup_optimizers(self) -> None:
        """Creates ``self.optimizers`` (after the model reached its training device)."""
        self.optimizers = self.make_optimizers()

    def schedule(self, step: int, max_steps: int) -> None:
        """Sets the learning rates (and anything else scheduled) for ``step`` of ``max_steps``."""

    @abstractmethod
    def batch(self, data: "TrainingData", step: int, generator: torch.Generator) -> "Batch":
        """The training data of one step: whole images (``data.image_batch``) or rays (``data.ray_batch``)."""

    @abstractmethod
    def forward(self, batch: "Batch", step: int):
        """The differentiable render of ``batch`` (images: a RenderOutput; rays: a RayOutput)."""

    @abstractmethod
    def losses(self, out, batch: "Batch", step: int) -> dict[str, Tensor]:
        """The named loss terms of this step (their sum is minimised), e.g. ``{"rgb": ..., "l1": ...}``."""

    def after_step(self, step: int, losses: dict[str, Tensor]) -> None:
        """Housekeeping after the optimisers stepped (schedules that change the model's structure)."""

    # ------------------------------------------------------------------ rendering
    @abstractmethod
    def render(self, cameras: "Cameras", *, background: Tensor | None = None, options: dict | None = None, crop=None):
        """Renders ``cameras`` (one image size) without gradients' bookkeeping of training; returns
        an object with ``rgb`` [C, H, W, 3], ``alpha`` [C, H, W, 1] and ``depth`` [C, H, W, 1].

        ``background`` [3] (None: black); ``options`` the values of :meth:`controls` by key (missing
        keys take their defaults); ``crop`` a box ``(lo, hi)`` in the model's frame that limits what
        is drawn."""

    # ------------------------------------------------------------------ reporting
    def stats(self) -> dict:
        """Numbers for training logs, eval results and benchmarks (JSON-serialisable)."""
        return {}

    def describe(self) -> str:
        """One short line for progress bars and messages."""
        return self.name

    def viewer_stats(self) -> dict[str, str]:
        """Rows of the viewer's statistics panel."""
        n = sum(p.numel() for p in self.parameters())
        return {"parameters": f"{n:,}", "memory": f"{n * 4 / 1e6:.1f} MB"}

    def controls(self) -> list[Control]:
        """The viewer controls of this representation (data; the viewer makes the widgets)."""
        return []

    def focus(self) -> tuple[np.ndarray, float] | None:
        """(centre, radius) of the content in the model's frame, for a viewer's first camera; None if unknown."""
        return None

    # ------------------------------------------------------------------ export
    def to_gaussians(self, crop=None) -> GaussianSet | None:
        """The model as 3D Gaussians (those inside ``crop`` when given), detached on the model's
        device; None where it cannot be baked (``caps.gaussians`` is then False)."""
        return None

    # ------------------------------------------------------------------ slimming (caps.slimmable)
    @property
    def rank(self) -> int:
        """The rank trained so far (slimmable models)."""
        raise NotImplementedError(f"the {self.name} representation is not slimmable")

    def use_rank(self, rank: int | None) -> None:
        """Render with the first ``rank`` components from now on (None: all that were trained)."""
        raise NotImplementedError(f"the {self.name} representation is not slimmable")

    def slimmed_state(self, rank: int) -> dict:
        """A :meth:`state` holding only the first ``rank`` components: a smaller model of its own."""
        raise NotImplementedError(f"the {self.name} representation is not slimmable")


def config_fields(cfg) -> dict:
    """A config dataclass as plain data (tuples as lists), for config.yaml and model files."""
    return {f.name: (list(v) if isinstance(v := getattr(cfg, f.name), tuple) else v) for f in fields(cfg) if f.init}


def config_from_fields(config_cls: type, values: dict):
    """Rebuilds a config from :func:`config_fields` (lists back to tuples). Raises TypeError for
    unknown fields."""
    return config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(values).items()})


