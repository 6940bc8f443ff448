"""The PyTorch reference rasterizer: plain tensor code, differentiated by autograd.

It is the specification the CPU kernel and gsplat are tested against, and it runs on any device.
It is slow and memory hungry (every pixel of a tile meets every Gaussian of the tile's list in one
padded tensor), so keep it to small images.

Algorithm, per camera:

1. Binning: every visible Gaussian is listed in each 16x16 tile its box (centre +- radius) touches;
   each tile's list is sorted by depth and padded to the longest list.
2. Blending, for a chunk of tiles at a time, over a [tiles, 256 pixels, list] tensor:
   ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy`` with ``dx = mx - px``; a Gaussian reaches a pixel
   iff ``0 <= sigma <= ln(255 opacity)`` (i.e. its alpha is at least 1/255);
   ``alpha = min(0.999, opacity exp(-sigma))``; with ``T_i`` the cumulative product of
   ``1 - alpha`` up to and including Gaussian i, Gaussian i is blended iff ``T_i > 1e-4`` (the
   first Gaussian that would bring the transmittance to 1e-4 or below stops the pixel and is not
   blended); its weight is ``alpha_i`` times the transmittance before it.
3. Tiles are stitched back into images.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from scene3d.renderers.gaussians.projection import Projection
from scene3d.renderers.gaussians.settings import ALPHA_MAX, T_MIN, TILE_SIZE

MAX_CHUNK_ELEMENTS = 1 << 22  # tiles x pixels x list entries blended at once


def bin_tiles(means2d: Tensor, radii_xy: Tensor, depths: Tensor, width: int, height: int) -> Tensor:
    """Padded per-tile lists for one camera: [n_tiles, L] Gaussian indices sorted by depth, -1 for padding.

    Args:
        means2d: [N, 2]; radii_xy: [N, 2] int (0 = culled); depths: [N].
    """
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    n_tiles = tiles_x * tiles_y
    device = means2d.device
    ids = torch.nonzero((radii_xy > 0).all(dim=-1)).squeeze(-1)  # [V]
    if ids.numel() == 0:
        return torch.full((n_tiles, 0), -1, dtype=torch.long, device=device)
    m, r = means2d[ids].detach(), radii_xy[ids].to(means2d.dtype)
    lo = torch.floor((m - r) / TILE_SIZE).long()
    hi = torch.ceil((m + r) / TILE_SIZE).long()
    lo[:, 0], hi[:, 0] = lo[:, 0].clamp(0, tiles_x), hi[:, 0].clamp(0, tiles_x)
    lo[:, 1], hi[:, 1] = lo[:, 1].clamp(0, tiles_y), hi[:, 1].clamp(0, tiles_y)
    span = hi - lo  # [V, 2]
    count = span[:, 0] * span[:, 1]
    pair_gauss = torch.repeat_interleave(torch.arange(len(ids), device=device), count)  # [M]
    first = torch.cumsum(count, 0) - count
    local = torch.arange(len(pair_gauss), device=device) - first[pair_gauss]  # index within the box
    tx = lo[pair_gauss, 0] + local % span[pair_gauss, 0]
    ty = lo[pair_gauss, 1] + local // span[pair_gauss, 0]
    tile = ty * tiles_x + tx
    depth_rank = torch.empty_like(ids)
    depth_rank[torch.argsort(depths[ids].detach(), stable=True)] = torch.arange(len(ids), device=device)
    order = torch.argsort(tile * len(ids) + depth_rank[pair_gauss])
    tile, gauss = tile[order], ids[pair_gauss[order]]
    per_tile = torch.bincount(tile, minlength=n_tiles)
    slot = torch.arange(len(tile), device=device) - (torch.cumsum(per_tile, 0) - per_tile)[tile]
    lists = torch.full((n_tiles, int(per_tile.max())), -1, dtype=torch.long, device=device)
    lists[tile, slot] = gauss
    return lists


def _pixel_centres(tile_ids: Tensor, tiles_x: int) -> Tensor:
    """[T, 256, 2] pixel centres of tiles."""
    j = torch.arange(TILE_SIZE * TILE_SIZE, device=tile_ids.device)
    x = (tile_ids % tiles_x)[:, None] * TILE_SIZE + j % TILE_SIZE
    y = (tile_ids // tiles_x)[:, None] * TILE_SIZE + j // TILE_SIZE
    return torch.stack([x, y], dim=-1).float() + 0.5


def blend_weights(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    log_thresholds: Tensor,  # [N]
    lists: Tensor,  # [T, L] Gaussian indices, -1 = padding
    pix: Tensor,  # [T, P, 2] pixel centres
    means2d_hook: Optional[Callable[[Tensor], None]] = None,
) -> Tensor:
    """Blending weights [T, P, L] of every listed Gaussian at every pixel (zero where not blended).

    ``means2d_hook``, when given, is registered on the per-pixel copies of the means [T, P, L, 2],
    so it receives each pixel's own dL/dmeans2d (used for AbsGS).
    """
    valid = lists >= 0
    idx = lists.clamp_min(0)
    m = means2d[idx][:, None, :, :].expand(-1, pix.shape[1], -1, -1)  # [T, P, L, 2]
    if means2d_hook is not None and m.requires_grad:
        m.register_hook(means2d_hook)
    a, b, c = conics[idx].unbind(-1)  # [T, L]
    a, b, c = a[:, None, :], b[:, None, :], c[:, None, :]
    dx = m[..., 0] - pix[:, :, None, 0]  # [T, P, L]
    dy = m[..., 1] - pix[:, :, None, 1]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy  # same operations as the numba kernel
    reached = (sigma >= 0) & (sigma <= log_thresholds[idx][:, None, :]) & valid[:, None, :]
    alpha = torch.clamp_max(opacities[idx][:, None, :] * torch.exp(-sigma), ALPHA_MAX)
    alpha = torch.where(reached, alpha, torch.zeros_like(alpha))
    T_after = torch.cumprod(1.0 - alpha, dim=-1)
    T_before = torch.cat([torch.ones_like(T_after[..., :1]), T_after[..., :-1]], dim=-1)
    blended = T_after > T_MIN
    return torch.where(blended, alpha * T_before, torch.zeros_like(alpha))


def blend(
    proj: Projection,
    feats: Tensor,  # [C, N, F]
    width: int,
    height: int,
    absgrad_box: Optional[dict] = None,
    error_map: Optional[Tensor] = None,  # [C, H, W]
) -> tuple[Tensor, Tensor]:
    """Blends features of projected Gaussians: ([C, H, W, F], alpha [C, H, W]).

    With ``error_map``, returns instead ([C, N] sum over pixels of weight * error, None).
    With ``absgrad_box``, backward stores sum over pixels of |dL/dmeans2d| [C, N, 2] in
    ``absgrad_box["value"]``.
    """
    C, N, F = feats.shape
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    P = TILE_SIZE * TILE_SIZE
    device = feats.device
    images, alphas, errors = [], [], []
    if absgrad_box is not None and proj.means2d.requires_grad:
        proj.means2d.register_hook(_absgrad_init_hook(absgrad_box, proj.means2d))
    for cam in range(C):
        lists = bin_tiles(proj.means2d[cam], proj.radii_xy[cam], proj.depths[cam], width, height)
        n_tiles, L = lists.shape
        chunk = max(1, MAX_CHUNK_ELEMENTS // max(1, P * L))
        out_tiles, alpha_tiles = [], []
        err_sum = torch.zeros(N, device=device)
        for t0 in range(0, n_tiles, chunk):
            tl = lists[t0 : t0 + chunk]
            tile_ids = torch.arange(t0, t0 + len(tl), device=device)
            pix = _pixel_centres(tile_ids, tiles_x)
            hook = None
            if absgrad_box is not None:
                hook = _absgrad_hook(absgrad_box, cam, tl, (C, N, 2))
            w = blend_weights(
                proj.means2d[cam], proj.conics[cam], proj.opacities[cam], proj.log_thresholds[cam], tl, pix, hook
            )  # [t, P, L]
            if error_map is not None:
                e = _tile_values(error_map[cam], tile_ids, tiles_x)  # [t, P]
                per_entry = (w * e[:, :, None]).sum(dim=1)  # [t, L]
                err_sum = err_sum.index_add(0, tl.clamp_min(0).flatten(), (per_entry * (tl >= 0)).flatten())
                continue
            f = feats[cam][tl.clamp_min(0)]  # [t, L, F]
            out_tiles.append(torch.einsum("tpl,tlf->tpf", w, f))
            alpha_tiles.append(w.sum(dim=-1))
        if error_map is not None:
            errors.append(err_sum)
            continue
        images.append(_stitch(torch.cat(out_tiles), tiles_x, tiles_y, width, height))
        alphas.append(_stitch(torch.cat(alpha_tiles)[..., None], tiles_x, tiles_y, width, height)[..., 0])
    if error_map is not None:
        return torch.stack(errors), None
    return torch.stack(images), torch.stack(alphas)


def _absgrad_init_hook(box: dict, means2d: Tensor) -> Callable[[Tensor], None]:
    def hook(grad: Tensor) -> None:  # runs after every per-pixel hook: zeros when none ran
        box.setdefault("value", torch.zeros_like(means2d))

    return hook


def _absgrad_hook(box: dict, cam: int, lists: Tensor, shape: tuple[int, ...]) -> Callable[[Tensor], None]:
    def hook(grad: Tensor) -> None:  # grad: [T, P, L, 2], one row per pixel and listed Gaussian
        per_entry = grad.abs().sum(dim=1)  # [T, L, 2]
        valid = (lists >= 0)[..., None]
        value = box.setdefault("value", torch.zeros(shape, dtype=grad.dtype, device=grad.device))
        value[cam].index_add_(0, lists.clamp_min(0).flatten(), (per_entry * valid).reshape(-1, 2))

    return hook


def _tile_values(image: Tensor, tile_ids: Tensor, tiles_x: int) -> Tensor:
    """[T, 256] values of ``image`` [H, W] at the pixels of tiles (0 outside the image)."""
    H, W = image.shape
    pix = _pixel_centres(tile_ids, tiles_x).long()
    x, y = pix[..., 0], pix[..., 1]
    inside = (x < W) & (y < H)
    return torch.where(inside, image[y.clamp(max=H - 1), x.clamp(max=W - 1)], torch.zeros((), device=image.device))


def _stitch(tiles: Tensor, tiles_x: int, tiles_y: int, width: int, height: int) -> Tensor:
    """[n_tiles, 256, F] tile pixels -> [H, W, F] image."""
    F = tiles.shape[-1]
    img = tiles.reshape(tiles_y, tiles_x, TILE_SIZE, TILE_SIZE, F).permute(0, 2, 1, 3, 4)
    return img.reshape(tiles_y * TILE_SIZE, tiles_x * TILE_SIZE, F)[:height, :width]
