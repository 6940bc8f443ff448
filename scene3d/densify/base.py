"""The densification-strategy interface: a dataclass of hyperparameters with fixed hooks.

Every hook takes the same single argument, a :class:`StepContext`, so the trainer never asks which
strategy it holds: it calls ``before_backward``, ``extra_loss``, ``after_backward`` and
``after_step`` on whatever strategy was configured. Strategies keep their running statistics in ``self.state`` (tensors and
numbers, saved in checkpoints) and change the set of Gaussians only through
:mod:`scene3d.densify.ops`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor


@dataclass
class StepContext:
    """What a strategy may read at one training step."""

    step: int
    max_steps: int
    model: Any  # GaussianModel: .params, .optimizers, .scene_scale
    render: Any  # RenderOutput of this step (rgb, alpha, depth, info)
    gt: Tensor  # [C, H, W, 3] target images
    cameras: Any  # Cameras rendered this step
    camera_indices: list[int]  # their indices in the dataset
    loss: Tensor | None = None
    dataset: Any = None


@dataclass
class Strategy:
    """Base class: no densification. Subclasses are dataclasses of their hyperparameters."""

    state: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def absgrad(self) -> bool:
        """Whether renders must accumulate absolute 2D-mean gradients for this strategy."""
        return False

    def initialize(self, model) -> None:
        """Called once the model exists (fresh start or resume, before ``load_state``)."""
        self.state = {}

    def before_backward(self, ctx: StepContext) -> None:
        """Called after rendering, before the loss is backpropagated (e.g. to retain gradients)."""

    def extra_loss(self, ctx: StepContext) -> Tensor | None:
        """A regulariser added to the photometric loss, or None."""
        return None

    def after_backward(self, ctx: StepContext) -> None:
        """Called after backward, before the optimisers step: gather statistics, densify, prune."""

    def after_step(self, ctx: StepContext) -> None:
        """Called after the optimisers stepped (e.g. to perturb the updated parameters)."""

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = dict(state)
