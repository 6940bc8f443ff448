"""The engine: where training runs, and what differs between one device and many.

The training loop asks its engine for everything that depends on where and on how many devices it
runs: placing a model (and making its optimisers there), the generators each rank draws its
random numbers from, the point between backward and the strategy's after-backward hook where
gradients are synchronised, and whether this process writes checkpoints, metrics and renders.
:class:`SingleDevice` is the engine of one process on one device; a multi-device engine
(``torch.distributed`` ranks launched by torchrun) implements the same methods.
"""

from __future__ import annotations

import torch

from scene3d.data.training import step_generator
from scene3d.device import pick_device


class SingleDevice:
    """One process training on one device."""

    rank = 0
    world_size = 1

    def __init__(self, device: str | torch.device = "auto"):
        self.device = pick_device(device) if isinstance(device, str) else torch.device(device)

    @property
    def is_writer(self) -> bool:
        """Whether this process writes the run's files (rank 0 of a multi-device run)."""
        return self.rank == 0

    @property
    def host_sync_is_free(self) -> bool:
        """On the CPU reading a tensor's value costs nothing; on an accelerator it stalls the queue."""
        return self.device.type == "cpu"

    def place(self, model):
        """Moves ``model`` to this engine's device and makes its optimisers there."""
        model.to(self.device)
        model.setup_optimizers()
        return model

    def generator(self, seed: int, step: int) -> torch.Generator:
        """The random stream of ``step`` on this rank (rank 0's is the single-device stream)."""
        return step_generator(seed, step, self.rank)

    def sync_gradients(self, model) -> None:
        """Between backward and the strategy's after-backward hook: nothing to do on one device."""

    def synchronize(self) -> None:
        """Waits for the device's queued work (for timing)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
