"""Choosing the torch device commands and training run on, and moving values between the host and
an accelerator without waiting for it.

On CUDA the host queues kernels and runs ahead of the device. Reading a device value on the host
(``float(t)``, ``t.tolist()``, a data-dependent shape), and a plain ``.to(device)`` of host
memory (PyTorch synchronises the stream after a copy from pageable memory), make the host wait
until the queue has drained. :func:`to_device_async` copies host values to the device from pinned
memory without waiting; :class:`LaggedReadout` brings device values back to the host a fixed number
of steps later, by then (in practice) already copied, so reading them costs nothing.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch
from torch import Tensor


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: cuda when available, else cpu; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_device_async(t: Tensor, device: torch.device | str) -> Tensor:
    """``t`` on ``device``, queued without waiting where ``t`` is on the host and ``device`` is a
    CUDA device: the values go through pinned memory and are copied ``non_blocking`` (PyTorch's
    caching host allocator keeps the pinned block until the copy has run, so ``t`` may be changed
    or freed at once). Elsewhere ``t.to(device)`` (a no-op on its own device)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


class LaggedReadout:
    """Per-step device values that the host reads ``lag`` steps later.

    :meth:`push` queues a copy of a step's values to the host (on CUDA into pinned memory,
    ``non_blocking``, with an event recorded after it); :meth:`due` returns, in step order, the
    values of every step at least ``lag`` steps old. A copy is waited for only when the device is
    more than ``lag`` steps behind the host, which a full launch queue keeps from happening in
    practice, so a training loop that reads this way never stalls for it. What is read and when
    depends on the step alone, not on timing: training stays deterministic. ``meta`` is host data
    kept with the values (what the step was, say).
    """

    def __init__(self, lag: int):
        assert lag >= 0, f"lag must be >= 0, got {lag}"
        self.lag = int(lag)
        self._queue: deque[tuple[int, Tensor, Any, Any]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, step: int, values: Tensor, meta: Any = None) -> None:
        """Queues ``values`` (a small device tensor) of ``step`` for the host."""
        values = values.detach()
        event = None
        if values.device.type == "cuda":
            host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            host.copy_(values, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        elif values.device.type == "cpu":
            host = values.clone()  # a host buffer of its own, as the pinned copy is on CUDA
        else:  # other accelerators: a plain copy (it waits)
            host = values.to("cpu")
        self._queue.append((int(step), host, event, meta))

    def due(self, step: int) -> list[tuple[int, np.ndarray, Any]]:
        """(step, values, meta) of every queued step ``<= step - lag``, oldest first; they leave
        the queue."""
        out = []
        while self._queue and self._queue[0][0] <= step - self.lag:
            s, host, event, meta = self._queue.popleft()
            if event is not None:
                event.synchronize()  # long done unless the device is more than ``lag`` steps behind
            out.append((s, host.numpy(), meta))  # host memory: numpy reads it without the device
        return out

    def clear(self) -> None:
        self._queue.clear()
