"""Measure the self-organising grid sort (PLAS) on a synthetic but structured model.

The model: ``--n`` Gaussians on a bumpy closed surface, with colours, scales, rotations and
opacities that vary smoothly over the surface plus noise (roughly what a trained scene looks like:
neighbouring Gaussians are alike, but the list order is arbitrary). Prints the sort time, the mean
neighbour distance of the feature grid before (random layout) and after, and the lossless PNG and
WebP size of every attribute image quantised to 8 bits (WebP lossless is what SOG uses), and the
same for the Morton order of the positions (the usual layout without PLAS).

    python benchmarks/bench_plas.py                   # 200k Gaussians
    python benchmarks/bench_plas.py --n 50000 --improvement-break 1e-3
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from scene3d.compress.plas import grid_neighbour_distance, grid_shape, sog_features, sort_into_grid, to_grid  # noqa: E402


def structured_model(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Gaussians on a bumpy sphere; attributes are smooth functions of the surface point + noise."""
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(n, 3, generator=g)
    d = d / d.norm(dim=1, keepdim=True)
    bump = 0.15 * torch.sin(5 * d[:, 0]) * torch.cos(4 * d[:, 1]) + 0.1 * torch.sin(7 * d[:, 2])
    means = d * (1.0 + bump)[:, None] + 0.005 * torch.randn(n, 3, generator=g)
    rgb = torch.stack(
        [0.5 + 0.4 * torch.sin(3 * d[:, 0] + 1), 0.5 + 0.4 * torch.cos(2 * d[:, 1] + 2 * d[:, 2]), 0.5 + 0.4 * d[:, 2]], 1
    )
    rgb = (rgb + 0.03 * torch.randn(n, 3, generator=g)).clamp(0, 1)
    sh0 = ((rgb - 0.5) / 0.28209479177387814)[:, None, :]
    scales = math.log(0.01) + 0.5 * torch.sin(4 * d[:, :1] + d[:, 1:2]) + 0.2 * torch.randn(n, 3, generator=g)
    scales[:, 2] -= 1.5  # flat along the normal
    # rotation taking z to the surface normal (roughly d), with a random sign
    z = torch.tensor([0.0, 0.0, 1.0])
    axis = torch.cross(z.expand_as(d), d, dim=1)
    half = torch.acos(d[:, 2].clamp(-1, 1)) / 2
    quats = torch.cat([torch.cos(half)[:, None], torch.nn.functional.normalize(axis, dim=1) * torch.sin(half)[:, None]], 1)
    quats = quats * torch.where(torch.rand(n, 1, generator=g) < 0.5, -1.0, 1.0) * (0.5 + torch.rand(n, 1, generator=g))
    opacities = 2.0 + 1.5 * torch.sin(6 * d[:, 1]) + 0.8 * torch.randn(n, generator=g)
    return {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "sh0": sh0,
            "shN": torch.zeros(n, 15, 3)}


def morton_order(means: torch.Tensor) -> torch.Tensor:
    """Indices sorting ``means`` by their 3D Morton code (10 bits per axis): the layout SOG
    writers use without PLAS, for comparison."""
    lo, hi = means.min(0).values, means.max(0).values
    q = ((means - lo) / (hi - lo).clamp_min(1e-12) * 1023).round().long()
    code = torch.zeros(len(means), dtype=torch.long)
    for bit in range(10):
        for axis in range(3):
            code |= ((q[:, axis] >> bit) & 1) << (3 * bit + axis)
    return code.argsort()


def image_bytes(img: np.ndarray, fmt: str = "PNG") -> int:
    """Lossless ``fmt`` (PNG or WEBP) size of ``img`` [H, W, C] (C <= 4) after per-channel min/max
    quantisation to 8 bits."""
    from PIL import Image

    lo, hi = img.reshape(-1, img.shape[-1]).min(0), img.reshape(-1, img.shape[-1]).max(0)
    q = np.round((img - lo) / np.maximum(hi - lo, 1e-12) * 255).astype(np.uint8)
    buf = io.BytesIO()
    if fmt == "PNG":
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[q.shape[-1]]
        Image.fromarray(q[..., 0] if q.shape[-1] == 1 else q, mode).save(buf, format="PNG", compress_level=9)
    else:
        if q.shape[-1] == 1:
            q = np.repeat(q, 3, axis=-1)  # WebP has no grey mode
        mode = {3: "RGB", 4: "RGBA"}[q.shape[-1]]
        Image.fromarray(q, mode).save(buf, format="WEBP", lossless=True, quality=100, method=4, exact=True)
    return buf.tell()


def attribute_images(params, order, shape) -> dict[str, np.ndarray]:
    q = torch.nn.functional.normalize(params["quats"], dim=1)
    q = torch.where(q[:, :1] < 0, -q, q)
    attrs = {"means": params["means"], "sh0": params["sh0"].reshape(-1, 3), "scales": params["scales"], "quats": q,
             "opacities": torch.sigmoid(params["opacities"])[:, None]}
    out = {}
    for k, v in attrs.items():
        grid, valid = to_grid(v, order, shape)
        # empty cells take the last valid value (what an exporter would pad with)
        g = grid.reshape(-1, v.shape[1]).clone()
        nv = int(valid.sum())
        g[nv:] = g[nv - 1]
        out[k] = g.reshape(*shape, -1).numpy()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--improvement-break", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = structured_model(args.n, args.seed)
    feats = sog_features(params)
    shape = grid_shape(args.n)
    start = torch.full((shape[0] * shape[1],), -1, dtype=torch.long)
    start[: args.n] = torch.arange(args.n)  # the list order (random: the model is unordered)
    kw = {} if args.improvement_break is None else {"improvement_break": args.improvement_break}
    t = time.perf_counter()
    order = sort_into_grid(feats, shape=shape, seed=args.seed, verbose=args.verbose, **kw)
    dt = time.perf_counter() - t
    morton = start.clone()
    morton[: args.n] = morton_order(params["means"])
    layouts = {"input order": start, "Morton order": morton, "PLAS": order}
    print(f"{args.n} Gaussians x {feats.shape[1]} features -> {shape[0]}x{shape[1]} grid, torch threads {torch.get_num_threads()}")
    print(f"PLAS sort time {dt:.1f} s")
    for name, o in layouts.items():
        nd = grid_neighbour_distance(*to_grid(feats, o, shape))
        imgs = attribute_images(params, o, shape)
        print(f"  {name:12s} neighbour distance {nd:6.3f}")
        for fmt in ("PNG", "WEBP"):
            sizes = {k: image_bytes(v, fmt) for k, v in imgs.items()}
            per = ", ".join(f"{k} {b / 1024:.0f}" for k, b in sizes.items())
            print(f"      {fmt:4s} KiB total {sum(sizes.values()) / 1024:6.0f} ({per})")


if __name__ == "__main__":
    main()
