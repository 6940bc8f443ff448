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

Only training views are used, so a benchmark on the test split stays fair. Any representation that
bakes to Gaussians (:meth:`~scene3d.models.base.Representation.to_gaussians`) can be weighed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scene3d.errors import Scene3dError


@torch.no_grad()
def gaussian_contributions(gaussians, cameras, progress: bool = True) -> Tensor:
    """[N] float32 on the Gaussians' device: each one's summed blending weight over all pixels of
    ``cameras`` (rendered one at a time, so their sizes may differ). ``gaussians`` is a
    :class:`~scene3d.models.base.GaussianSet`."""
    from rich.progress import track

    from scene3d.renderers.gaussians import RasterSettings, accumulate_pixel_error

    g = gaussians
    dev = g.means.device
    means, quats, scales, opacities = g.means, g.quats, torch.exp(g.scales), torch.sigmoid(g.opacities)
    settings = RasterSettings(antialiased=g.antialiased)
    total = torch.zeros(len(g), dtype=torch.float64, device=dev)
    cameras = cameras.to(dev)
    for i in track(range(len(cameras)), description="Gaussian contributions", transient=True, disable=not progress):
        cam = cameras[[i]]
        ones = torch.ones(1, int(cam.height[0]), int(cam.width[0]), device=dev)
        total += accumulate_pixel_error(means, quats, scales, opacities, cam, ones, settings)[0].double()
    return total.float()


def run_contributions(run, device: str = "auto", progress: bool = True, model=None) -> Tensor:
    """[N] contributions (CPU) of a run's Gaussians (``to_gaussians`` order) over its training views.
    ``run`` is a run folder or an opened :class:`~scene3d.runs.Run`; ``model`` its loaded model, if
    at hand. Raises Scene3dError when the run cannot be baked to Gaussians or its dataset cannot be loaded."""
    from scene3d.runs import Run, open_run
    from scene3d.device import pick_device

    run = run if isinstance(run, Run) else open_run(run)
    model = model if model is not None else run.load_model(pick_device(device))
    gaussians = model.to_gaussians()
    if gaussians is None:
        raise Scene3dError(f"{run.path}: is a {run.spec.model} run, which cannot be baked to Gaussians; only Gaussians are weighed")
    try:
        ds = run.dataset()
    except Scene3dError as e:
        raise Scene3dError(f"{run.path}: the training views are needed to weigh the Gaussians, and could not be loaded: {e}") from None
    return gaussian_contributions(gaussians, ds.cameras[list(ds.train_indices)], progress).cpu()


def prune_below(run, gaussians, contrib: Tensor, threshold: float, console=None):
    """``(gaussians, contrib)`` without the Gaussians contributing fewer than ``threshold`` pixels.

    Raises Scene3dError (naming ``run``) when none would be left."""
    keep = contrib >= float(threshold)
    if not bool(keep.any()):
        raise Scene3dError(f"{run}: no Gaussian contributes {threshold} pixels to the training views; nothing would be left")
    if console is not None:
        console.print(f"pruned {int((~keep).sum()):,} of {len(keep):,} Gaussians contributing under {threshold:g} pixels to the training views")
    return gaussians.subset(keep.to(gaussians.means.device)), contrib[keep]
