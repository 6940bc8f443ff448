"""How much each Gaussian shows in the training images, for compression.

A Gaussian's *contribution* is the sum, over every pixel of every training view, of its blending
weight there (``T_i alpha_i``: the fraction of that pixel's colour it gives), so it is measured in
pixels. It is the rasterizer's ``accumulate_pixel_error`` with an error of one everywhere, and close
to LightGaussian's global significance (Fan et al., NeurIPS 2024) without its volume factor.

It serves two things at export time (``scene3d export RUN``, ``scene3d bench export RUN``):

* the SOG higher-SH palette is clustered with the contributions as k-means weights, so palette
  entries go to the Gaussians that show (on fox it halves the PSNR the palette costs);
* ``--prune-below P`` drops Gaussians that contribute less than P pixels in all training views
  together (a quarter of a 3000-step fox model contributes nothing at all).

Only training views are used, so a benchmark on the test split stays fair.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from scene3d.errors import Scene3dError


@torch.no_grad()
def gaussian_contributions(model, cameras, progress: bool = True) -> Tensor:
    """[N] float32 on the model's device: each Gaussian's summed blending weight over all pixels of
    ``cameras`` (rendered one at a time, so their sizes may differ)."""
    from rich.progress import track

    from scene3d.renderers.gaussians import RasterSettings, accumulate_pixel_error

    a = model.activated()
    cfg = model.cfg
    settings = RasterSettings(backend=cfg.backend, near=cfg.near, far=cfg.far, antialiased=cfg.antialiased)
    total = torch.zeros(a["means"].shape[0], dtype=torch.float64, device=a["means"].device)
    views = range(len(cameras))
    for i in track(views, description="Gaussian contributions", transient=True, disable=not progress):
        cam = cameras[[i]]
        ones = torch.ones(1, int(cam.height[0]), int(cam.width[0]), device=a["means"].device)
        total += accumulate_pixel_error(a["means"], a["quats"], a["scales"], a["opacities"], cam, ones, settings)[0].double()
    return total.float()


def run_contributions(run: Path, device: str = "auto", progress: bool = True) -> Tensor:
    """[N] contributions (CPU) of a 3dgs run's Gaussians, in checkpoint order, over its training views.

    Raises Scene3dError when the run is not a Gaussian run or its dataset cannot be loaded."""
    from scene3d.train.run import load_run

    try:
        spec, ds, model, _ = load_run(Path(run), device)
    except Scene3dError as e:
        raise Scene3dError(f"{run}: the training views are needed to weigh the Gaussians, and could not be loaded: {e}") from None
    if spec.model != "3dgs":
        raise Scene3dError(f"{run}: is a {spec.model} run; only Gaussians are weighed")
    cams = ds.cameras[list(ds.train_indices)]
    return gaussian_contributions(model, cams, progress).cpu()


def prune_below(run, params: dict, contrib: Tensor, threshold: float, console=None) -> tuple[dict, Tensor]:
    """``(params, contrib)`` without the Gaussians contributing fewer than ``threshold`` pixels.

    Raises Scene3dError (naming ``run``) when none would be left."""
    keep = contrib >= float(threshold)
    if not bool(keep.any()):
        raise Scene3dError(f"{run}: no Gaussian contributes {threshold} pixels to the training views; nothing would be left")
    if console is not None:
        console.print(f"pruned {int((~keep).sum()):,} of {len(keep):,} Gaussians contributing under {threshold:g} pixels to the training views")
    return {k: v[keep] for k, v in params.items()}, contrib[keep]
