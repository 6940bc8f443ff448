"""Test-split metrics of any representation, and the test renders beside their ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from scene3d.metrics import psnr, ssim


def target_image(ds, i: int, background, device) -> torch.Tensor:
    """[1, H, W, 3] ground truth of view ``i`` composited on ``background`` ([3] or None: the
    dataset's own compositing colour)."""
    return ds.image(i, None if background is None else background.cpu()).to(device)[None]


@torch.no_grad()
def evaluate_model(model, ds, device, background_mode: str = "auto", renders_dir: Path | None = None) -> dict:
    """PSNR and SSIM over the test split (the train split when there is no test split), with the
    model's :meth:`stats`; ``renders_dir`` receives each prediction beside its ground truth. A
    multiscale dataset adds ``psnr_per_scale`` and ``ssim_per_scale`` (keyed "1", "2", "4", "8"),
    and ``psnr`` and ``ssim`` are their means."""
    indices = ds.test_indices or ds.train_indices
    split = "test" if ds.test_indices else "train"
    colour = ds.background_for(background_mode)
    bg = None if colour is None else torch.tensor(colour, device=device)
    psnrs, ssims = [], []
    for i in indices:
        gt = target_image(ds, i, bg, device)
        pred = model.render(ds.cameras[i].to(device), background=bg).rgb.clamp(0, 1)
        psnrs.append(float(psnr(pred, gt)))
        ssims.append(float(ssim(pred, gt)))
        if renders_dir is not None:
            save_pair(renders_dir, Path(ds.names[i]).stem, pred[0], gt[0])
    factors = [ds.scale_factor(i) for i in indices] if getattr(ds, "scale_factors", None) is not None else None
    if factors is None:
        return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), **model.stats(), "num_images": len(indices), "eval_split": split}
    # multiscale: each scale's mean, and their mean (mip-NeRF's protocol: every scale counts the same)
    per_psnr = {str(f): float(np.mean([p for p, g in zip(psnrs, factors) if g == f])) for f in sorted(set(factors))}
    per_ssim = {str(f): float(np.mean([q for q, g in zip(ssims, factors) if g == f])) for f in sorted(set(factors))}
    return {
        "psnr": float(np.mean(list(per_psnr.values()))),
        "ssim": float(np.mean(list(per_ssim.values()))),
        "psnr_per_scale": per_psnr,
        "ssim_per_scale": per_ssim,
        **model.stats(),
        "num_images": len(indices),
        "eval_split": split,
    }


def save_pair(folder: Path, stem: str, pred: torch.Tensor, gt: torch.Tensor) -> None:
    """Writes ``stem.png``: the prediction (left) beside the ground truth (right)."""
    from PIL import Image

    from scene3d.atomic import atomic_path

    both = torch.cat([pred, gt], dim=1).clamp(0, 1).mul(255).round().byte().cpu().numpy()
    with atomic_path(Path(folder) / f"{stem}.png") as tmp:
        Image.fromarray(both).save(tmp, format="PNG")
