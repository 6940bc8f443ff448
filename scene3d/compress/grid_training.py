"""Training with a self-organising Gaussian grid (``scene3d train ... --compress-grid``).

From the start step on, the Gaussians are sorted into a 2D grid by PLAS (:func:`sort_into_grid` of
:func:`sog_features`) and :func:`grid_smoothness_loss` (weighted by ``grid_weight``) is added to the
training loss: every attribute is pulled towards a blurred copy of its grid neighbourhood, so the
sorted attribute images are smooth and compress well (Morgenstern et al., ECCV 2024). The sort is
redone every ``grid_sort_every`` steps and at once when densification changed the count (the grid
indexes the Gaussians, so it is stale after rows were added or removed). The grid is saved in
checkpoints, so a resumed run continues with the same layout.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from scene3d.compress.plas import grid_shape, grid_smoothness_loss, sog_features, sort_into_grid

log = logging.getLogger(__name__)


class GridSmoothing:
    def __init__(self, weight: float, start: int, sort_every: int, seed: int = 0):
        if weight < 0:
            raise ValueError(f"grid_weight must be >= 0, got {weight}")
        self.weight, self.start, self.sort_every, self.seed = float(weight), int(start), max(int(sort_every), 1), int(seed)
        self.order: Tensor | None = None
        self.shape: tuple[int, int] | None = None
        self.sorted_at = -1
        self.num_sorted = -1
        self.sorts = 0

    @classmethod
    def from_config(cls, cfg, strategy) -> "GridSmoothing":
        start = cfg.grid_start
        if start < 0:
            start = int(getattr(strategy, "refine_stop", 0) or 0)
        return cls(cfg.grid_weight, start, cfg.grid_sort_every, cfg.seed)

    def _sort(self, params, step: int) -> None:
        with torch.no_grad():
            feats = sog_features({k: v.detach() for k, v in params.items()})
        n = int(feats.shape[0])
        self.shape = grid_shape(n)
        self.order = sort_into_grid(feats, self.shape, seed=self.seed + self.sorts)
        self.sorted_at, self.num_sorted = step, n
        self.sorts += 1
        log.info("step %d: sorted %d Gaussians into a %dx%d grid", step, n, *self.shape)

    def loss(self, params, step: int) -> Tensor | None:
        """The weighted grid-smoothness loss at ``step`` (None before the start), sorting first
        when the grid is missing, due, or stale."""
        if step < self.start or self.weight == 0:
            return None
        n = int(params["means"].shape[0])
        if self.order is None or n != self.num_sorted or step - self.sorted_at >= self.sort_every:
            self._sort(params, step)
        return self.weight * grid_smoothness_loss(params, self.order, self.shape)

    def state_dict(self) -> dict:
        return {"order": None if self.order is None else self.order.cpu(), "shape": self.shape, "sorted_at": self.sorted_at,
                "num_sorted": self.num_sorted, "sorts": self.sorts}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.order = state["order"]
        self.shape = None if state["shape"] is None else tuple(state["shape"])
        self.sorted_at, self.num_sorted, self.sorts = int(state["sorted_at"]), int(state["num_sorted"]), int(state["sorts"])
