"""Turning a render into the picture the viewer sends: rgb, colour-mapped depth or alpha."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

RenderMode = Literal["rgb", "depth", "alpha"]
RENDER_MODES: tuple[str, ...] = ("rgb", "depth", "alpha")


def frame_image(out, mode: str = "rgb", background=(0.0, 0.0, 0.0)) -> np.ndarray:
    """uint8 [H, W, 3] picture of the first image of a RenderOutput.

    depth: inverse depth mapped through matplotlib's turbo colour map between the 2nd and 98th
    percentiles of the covered pixels (near is warm), the background where alpha < 0.5; alpha: grey.
    """
    if mode == "rgb":
        img = out.rgb[0, ..., :3]
    elif mode == "alpha":
        img = out.alpha[0].expand(*out.alpha.shape[1:3], 3)
    elif mode == "depth":
        if out.depth is None:
            raise ValueError("this render has no depth")
        img = colorize_depth(out.depth[0, ..., 0], out.alpha[0, ..., 0], background)
    else:
        raise ValueError(f"unknown render mode {mode!r}; valid: {', '.join(RENDER_MODES)}")
    return img.detach().clamp(0, 1).mul(255).round().byte().cpu().numpy()


def colorize_depth(depth: torch.Tensor, alpha: torch.Tensor, background=(0.0, 0.0, 0.0)) -> torch.Tensor:
    """[H, W, 3] in [0, 1]: turbo-coloured inverse depth; pixels with alpha < 0.5 get ``background``."""
    from matplotlib import colormaps

    depth, alpha = depth.detach().float().cpu(), alpha.detach().float().cpu()
    covered = (alpha >= 0.5) & torch.isfinite(depth) & (depth > 0)
    inv = torch.zeros_like(depth)
    inv[covered] = 1.0 / depth[covered]
    if covered.any():
        vals = inv[covered]
        if vals.numel() > 200_000:
            vals = vals[torch.randperm(vals.numel(), generator=torch.Generator().manual_seed(0))[:200_000]]
        lo, hi = torch.quantile(vals, 0.02), torch.quantile(vals, 0.98)
        t = ((inv - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    else:
        t = torch.zeros_like(depth)
    lut = torch.from_numpy(colormaps["turbo"](np.linspace(0, 1, 256))[:, :3]).float()
    img = lut[(t * 255).round().long()]
    img[~covered] = torch.tensor(background, dtype=torch.float32)
    return img
