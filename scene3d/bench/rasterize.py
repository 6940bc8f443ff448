"""``scene3d bench rasterize``: forward and forward+backward times of every available Gaussian
rasterization backend on two scenes.

Cases:

- ``10k@128``: 10,000 random Gaussians in front of one 128x128 camera (focal 128 px), depths 2-4,
  per-axis scales drawn so their 2D standard deviations are 1-6 px, random rotations, opacities
  uniform in [0, 1], RGB colours uniform in [0, 1].
- ``garden``: the 138,766 points of ``garden_points/test_garden.npz`` (shared data) through its 3
  cameras at 648x420, drawn as gsplat's tests draw them (``gsplat._helper.load_test_data``):
  scales ``rand * 0.02``, quaternions ``normalize(randn)``, opacities ``rand``, colours from the
  file / 255 (plain RGB). Unlike gsplat's helper, nothing is cropped.

Each time is the median of ``repeats`` runs after one warm-up call (the first call, which includes
numba's compilation or cache load, is reported separately as ``first_ms``). The loss for backward is
a fixed weighted sum of rgb, alpha and depth. The PyTorch reference is skipped on ``garden`` unless
asked for (it needs tens of GB).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from scene3d.cameras import Cameras


@dataclass
class GaussianScene:
    """Gaussians and the cameras to render them with (all tensors on the CPU)."""

    name: str
    means: torch.Tensor  # [N, 3]
    quats: torch.Tensor  # [N, 4]
    scales: torch.Tensor  # [N, 3]
    opacities: torch.Tensor  # [N]
    colors: torch.Tensor  # [N, 3] or [N, K, 3]
    cameras: Cameras

    def params(self, device="cpu", requires_grad: bool = True) -> list[torch.Tensor]:
        out = [t.detach().to(device).clone() for t in (self.means, self.quats, self.scales, self.opacities, self.colors)]
        return [t.requires_grad_(requires_grad) for t in out]


def random_scene(
    n: int, width: int, height: int, *, seed: int = 0, focal: Optional[float] = None,
    std_px: tuple[float, float] = (1.0, 6.0), sh_degree: Optional[int] = None,
) -> GaussianScene:
    """``n`` Gaussians spread over the view of one camera at the origin looking down +z.

    Depths are uniform in [2, 4]; each axis' scale gives a 2D standard deviation uniform in
    ``std_px`` pixels; colours are RGB uniform in [0, 1], or SH coefficients of ``sh_degree``.
    """
    g = torch.Generator().manual_seed(seed)
    f = float(focal if focal is not None else max(width, height))
    z = torch.rand(n, generator=g) * 2.0 + 2.0
    half_x, half_y = 0.55 * width / f, 0.55 * height / f
    x = (torch.rand(n, generator=g) * 2 - 1) * half_x * z
    y = (torch.rand(n, generator=g) * 2 - 1) * half_y * z
    lo, hi = std_px
    scales = (torch.rand(n, 3, generator=g) * (hi - lo) + lo) * z[:, None] / f
    quats = F.normalize(torch.randn(n, 4, generator=g), dim=-1)
    opacities = torch.rand(n, generator=g)
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3
        colors[:, 0] = (torch.rand(n, 3, generator=g) - 0.5) / 0.28209479177387814
    cameras = Cameras.create(torch.eye(4), f, f, width / 2, height / 2, width, height)
    return GaussianScene(f"{n}@{width}x{height}", torch.stack([x, y, z], -1), quats, scales, opacities, colors, cameras)


def shared_data_dir() -> Path:
    """../shared/data beside the repository root, or $SCENE3D_SHARED_DATA."""
    repo = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("SCENE3D_SHARED_DATA", repo.parent / "shared" / "data"))


def garden_scene(path: Optional[Path] = None, *, seed: int = 0) -> Optional[GaussianScene]:
    """The garden_points test scene with gsplat's test recipe, or None when the file is absent."""
    path = path or shared_data_dir() / "garden_points" / "test_garden.npz"
    if not path.exists():
        return None
    data = np.load(path)
    means = torch.from_numpy(data["means3d"]).float()
    colors = torch.from_numpy(data["colors"] / 255.0).float()
    viewmats = torch.from_numpy(data["viewmats"]).float()
    Ks = torch.from_numpy(data["Ks"]).float()
    width, height = int(data["width"]), int(data["height"])
    g = torch.Generator().manual_seed(seed)
    n = len(means)
    scales = torch.rand(n, 3, generator=g) * 0.02
    quats = F.normalize(torch.randn(n, 4, generator=g), dim=-1)
    opacities = torch.rand(n, generator=g)
    cameras = Cameras.create(viewmats, Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2], width, height)
    return GaussianScene("garden", means, quats, scales, opacities, colors, cameras)


def _loss(out) -> torch.Tensor:
    loss = out.rgb.mean() + 0.5 * out.alpha.mean()
    if out.depth is not None:
        loss = loss + 0.1 * (out.depth * out.alpha.detach()).mean()
    return loss


def time_backend(scene: GaussianScene, backend: str, *, repeats: int = 5) -> dict:
    """First-call, forward and forward+backward milliseconds of one backend on one scene."""
    from scene3d.renderers.gaussians import RasterSettings, rasterize

    device = "cuda" if backend == "gsplat" else "cpu"
    settings = RasterSettings(backend=backend)
    params = scene.params(device)
    cameras = scene.cameras.to(device)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def fwd():
        out = rasterize(*params, cameras, settings)
        sync()
        return out

    def fwdbwd():
        for p in params:
            p.grad = None
        _loss(rasterize(*params, cameras, settings)).backward()
        sync()

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3

    first_ms = timed(fwdbwd)
    fwd_ms = statistics.median(timed(fwd) for _ in range(repeats))
    fwdbwd_ms = statistics.median(timed(fwdbwd) for _ in range(repeats))
    return {"fwd_ms": round(fwd_ms, 2), "fwdbwd_ms": round(fwdbwd_ms, 2), "first_ms": round(first_ms, 1)}


def run(*, repeats: int = 5, torch_on_garden: bool = False, garden_path: Optional[Path] = None) -> list[dict]:
    """Benchmark records, one per (case, backend)."""
    from scene3d.renderers.gaussians import available_backends

    backends = available_backends("cpu")
    if torch.cuda.is_available():
        backends = [b for b in available_backends("cuda") if b == "gsplat"] + backends
    cases: list[tuple[str, Optional[GaussianScene]]] = [
        ("10k@128", random_scene(10_000, 128, 128, seed=0)),
        ("garden", garden_scene(garden_path)),
    ]
    records = []
    for case, scene in cases:
        for backend in backends:
            rec = {"case": case, "backend": backend, "fwd_ms": None, "fwdbwd_ms": None}
            if scene is None:
                rec["note"] = "skipped: garden_points data not found (set SCENE3D_SHARED_DATA)"
            elif case == "garden" and backend == "torch" and not torch_on_garden:
                rec["note"] = "skipped: the PyTorch reference needs tens of GB here (--torch-on-garden to force)"
            else:
                rec.update(time_backend(scene, backend, repeats=repeats))
                rec["gaussians"] = int(scene.means.shape[0])
                rec["cameras"] = len(scene.cameras)
            records.append(rec)
    return records


def print_table(records: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Gaussian rasterization (median ms)")
    for col in ("case", "backend", "fwd_ms", "fwdbwd_ms", "first_ms", "note"):
        table.add_column(col)
    for r in records:
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in ("case", "backend", "fwd_ms", "fwdbwd_ms", "first_ms", "note")))
    Console().print(table)
    by = {(r["case"], r["backend"]): r for r in records}
    cpu, ref = by.get(("10k@128", "cpu")), by.get(("10k@128", "torch"))
    if cpu and ref and cpu.get("fwdbwd_ms") and ref.get("fwdbwd_ms"):
        print(f"10k@128 forward+backward: cpu is {ref['fwdbwd_ms'] / cpu['fwdbwd_ms']:.0f}x faster than torch")


def main(*, as_json: bool = False, repeats: int = 5, torch_on_garden: bool = False) -> None:
    records = run(repeats=repeats, torch_on_garden=torch_on_garden)
    if as_json:
        print(json.dumps(records))
    else:
        print_table(records)
