"""Image quality metrics and the photometric loss (PSNR, SSIM, L1 + D-SSIM).

SSIM follows Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), C1 = 0.01^2, C2 = 0.03^2,
computed per channel with zero padding ("same" size, as the 3DGS reference's training loss) for the
loss, and over the valid region (no padding) for evaluation, as scikit-image and the papers do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

_C1 = 0.01**2
_C2 = 0.03**2


def _window(size: int = 11, sigma: float = 1.5, channels: int = 3, device=None, dtype=torch.float32) -> Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim_map(img: Tensor, ref: Tensor, padding: bool = True) -> Tensor:
    """Per-pixel SSIM of images [B, H, W, C] in [0, 1] -> [B, H', W', C]."""
    assert img.shape == ref.shape and img.ndim == 4, f"expected two [B,H,W,C] images, got {tuple(img.shape)} and {tuple(ref.shape)}"
    x, y = img.permute(0, 3, 1, 2), ref.permute(0, 3, 1, 2)
    c = x.shape[1]
    w = _window(channels=c, device=x.device, dtype=x.dtype)
    pad = 5 if padding else 0

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, w, padding=pad, groups=c)

    mu_x, mu_y = blur(x), blur(y)
    sxx = blur(x * x) - mu_x**2
    syy = blur(y * y) - mu_y**2
    sxy = blur(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + _C1) * (2 * sxy + _C2)
    den = (mu_x**2 + mu_y**2 + _C1) * (sxx + syy + _C2)
    return (num / den).permute(0, 2, 3, 1)


def ssim(img: Tensor, ref: Tensor) -> Tensor:
    """Mean SSIM over the valid region (evaluation convention), images [B, H, W, C] -> scalar;
    images smaller than the 11-pixel window (1/8 scales of small multiscale images) are zero-padded."""
    return ssim_map(img.clamp(0, 1), ref, padding=min(img.shape[1], img.shape[2]) < 11).mean()


def psnr(img: Tensor, ref: Tensor) -> Tensor:
    """PSNR in dB of images in [0, 1] (after clamping the prediction)."""
    mse = F.mse_loss(img.clamp(0, 1), ref)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def photometric_loss(img: Tensor, ref: Tensor, ssim_lambda: float = 0.2, mask: Tensor | None = None) -> Tensor:
    """(1 - lambda) L1 + lambda (1 - SSIM), the 3DGS training loss; ``mask`` [B, H, W] excludes pixels."""
    l1 = (img - ref).abs()
    dssim = 1.0 - ssim_map(img, ref, padding=True)
    per_pixel = (1 - ssim_lambda) * l1 + ssim_lambda * dssim
    if mask is not None:
        m = mask[..., None].to(per_pixel)
        return (per_pixel * m).sum() / (m.sum() * per_pixel.shape[-1]).clamp_min(1)
    return per_pixel.mean()


def weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    """The mean of ``values`` [N, ...]; with ``weights`` [N] (one per row, e.g. multiscale pixels'
    areas), ``sum(w row_mean) / sum(w)``."""
    if weights is None:
        return values.mean()
    rows = values.reshape(len(values), -1).mean(dim=1)
    return (rows * weights).sum() / weights.sum().clamp_min(1e-12)
