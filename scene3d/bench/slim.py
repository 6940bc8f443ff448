"""``scene3d bench slim RUN``: the slimming curve of a slimmerf run (rank -> size on disk -> PSNR).

For each rank, the run is written truncated to that rank (``--format slimmerf``), the file is
loaded on its own and evaluated on the run's test split: what a user who ships that file gets.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def run_bench(run: Path, ranks: tuple[int, ...] = (1, 2, 4, 8, 12, 16), images: int = 0, device: str = "auto") -> dict:
    from rich.console import Console

    from scene3d.device import pick_device
    from scene3d.errors import Scene3dError
    from scene3d.export.formats import formats
    from scene3d.runs import open_run
    from scene3d.train.evaluation import evaluate_model

    dev = pick_device(device)
    run_ = open_run(Path(run))
    model = run_.load_model(dev)
    if not model.caps.slimmable:
        raise Scene3dError(f"{run}: is a {run_.spec.model} run; bench slim needs a slimmable representation")
    fmt = next(f for f in formats("model") if f.needs == "slimmable")
    ds = run_.dataset()
    if images > 0 and len(ds.test_indices) > images:  # an even subset of the test views
        keep = np.linspace(0, len(ds.test_indices) - 1, images).round().astype(int)
        ds.test_indices = [ds.test_indices[i] for i in sorted(set(keep.tolist()))]
    console = Console(stderr=True)  # progress; the result goes to stdout
    rows = []
    ranks = tuple(r for r in ranks if 1 <= r <= model.rank) or (model.rank,)
    with tempfile.TemporaryDirectory() as tmp:
        for r in ranks:
            path = fmt.write(Path(tmp) / f"rank{r}{fmt.suffix}", model, transform=run_.transform, rank=r)
            slim, _ = fmt.read(path, device=dev)
            t0 = time.perf_counter()
            with torch.no_grad():
                res = evaluate_model(slim, ds, dev, run_.background_mode)
            seconds = time.perf_counter() - t0
            rows.append({"rank": r, "bytes": path.stat().st_size, "psnr": res["psnr"], "ssim": res["ssim"], "eval_seconds_per_image": seconds / res["num_images"], "num_images": res["num_images"]})
            console.print(f"rank {r:>2}: {path.stat().st_size / 1e6:6.2f} MB  PSNR {res['psnr']:.2f} dB  SSIM {res['ssim']:.4f}")
    result = {"run": str(run), "full_rank": model.rank, "eval_split": "test" if ds.test_indices else "train", "rows": rows}
    (Path(run) / "bench_slim.json").write_text(json.dumps(result, indent=2))
    plot(result, Path(run) / "bench_slim.png")
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot([r["rank"] for r in rows], [r["psnr"] for r in rows], "o-")
    ax[0].set(xlabel="rank kept", ylabel="test PSNR (dB)", title="slimming: quality")
    ax[1].plot([r["bytes"] / 1e6 for r in rows], [r["psnr"] for r in rows], "o-")
    for r in rows:
        ax[1].annotate(str(r["rank"]), (r["bytes"] / 1e6, r["psnr"]), textcoords="offset points", xytext=(4, 4))
    ax[1].set(xlabel="file size (MB)", ylabel="test PSNR (dB)", title="slimming: size against quality")
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"slimming curve: {result['run']} (full rank {result['full_rank']})")
    for col in ("rank", "size MB", "PSNR dB", "SSIM", "images"):
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(str(r["rank"]), f"{r['bytes'] / 1e6:.2f}", f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", str(r["num_images"]))
    Console().print(table)
