"""Measure the self-organising grid sort (PLAS) on a synthetic but structured model.

The model: ``--n`` Gaussians on a bumpy closed surface, with colours, scales, rotations and
opacities that vary smoothly over the surface plus noise (roughly what a trained scene looks like:
neighbouring Gaussians are alike, but the list order is arbitrary). Prints the sort time, the mean
neighbour distance of the feature grid before (random layout) and after, and the lossless PNG size
of every attribute image quantised to 8 bits.

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


def png_bytes(img: np.ndarray) -> int:
    """Lossless PNG size of ``img`` [H, W, C] (C <= 4) after per-channel min/max quantisation to 8 bits."""
    from PIL import Image

    lo, hi = img.reshape(-1, img.shape[-1]).min(0), img.reshape(-1, img.shape[-1]).max(0)
    q = np.round((img - lo) / np.maximum(hi - lo, 1e-12) * 255).astype(np.uint8)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[q.shape[-1]]
    buf = io.BytesIO()
    Image.fromarray(q[..., 0] if q.shape[-1] == 1 else q, mode).save(buf, format="PNG", optimize=False, compress_level=9)
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
    before = grid_neighbour_distance(*to_grid(feats, start, shape))
    after = grid_neighbour_distance(*to_grid(feats, order, shape))
    print(f"{args.n} Gaussians x {feats.shape[1]} features -> {shape[0]}x{shape[1]} grid, torch threads {torch.get_num_threads()}")
    print(f"sort time {dt:.1f} s; neighbour distance {before:.3f} -> {after:.3f} ({before / after:.1f}x lower)")
    img0, img1 = attribute_images(params, start, shape), attribute_images(params, order, shape)
    tot0 = tot1 = 0
    for k in img0:
        b0, b1 = png_bytes(img0[k]), png_bytes(img1[k])
        tot0, tot1 = tot0 + b0, tot1 + b1
        print(f"  {k:10s} PNG {b0 / 1024:8.0f} KiB -> {b1 / 1024:8.0f} KiB ({b1 / b0:.2f})")
    print(f"  {'total':10s} PNG {tot0 / 1024:8.0f} KiB -> {tot1 / 1024:8.0f} KiB ({tot1 / tot0:.2f})")


if __name__ == "__main__":
    main()
