"""Benchmark 3DGS training on the shared real scenes (CPU): fox at 1/4 and lego_400 at 1/2.

Each scene trains with the same time budget (default 20 minutes) using the ``fast`` preset
(7k-step schedule); the script prints test PSNR, SSIM, Gaussian count, steps done and wall time.

    python benchmarks/bench_train.py                 # both scenes, 1200 s each
    python benchmarks/bench_train.py --scenes lego_400 --budget 300 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scene3d.train.cli import build_args_class, run_training  # noqa: E402

DOWNSCALE = {"fox": 4, "lego_400": 2}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--scenes", nargs="+", default=["fox", "lego_400"])
    ap.add_argument("--budget", type=float, default=1200.0, help="training seconds per scene")
    ap.add_argument("--max-steps", type=int, default=7000)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "bench_train")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for name in args.scenes:
        out = args.out / f"{name}_{int(time.time())}"
        cls = build_args_class("3dgs", "adc", "fast")
        cfg = cls(scene=args.data / name, output=out)
        cfg.data.downscale = DOWNSCALE.get(name, 1)
        cfg.train.max_steps = args.max_steps
        cfg.train.time_budget = args.budget
        t0 = time.perf_counter()
        res = run_training(cfg.scene, out, "3dgs", cfg.model, "adc", cfg.strategy, cfg.data, cfg.train)
        rows.append({"scene": name, "downscale": cfg.data.downscale, "psnr": round(res["psnr"], 2), "ssim": round(res["ssim"], 4),
                     "num_gaussians": res["num_gaussians"], "steps": res["steps"], "train_seconds": res["train_seconds"],
                     "wall_seconds": round(time.perf_counter() - t0, 1), "eval_split": res["eval_split"], "run": str(out)})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['scene']:10s} 1/{r['downscale']}  PSNR {r['psnr']:6.2f}  SSIM {r['ssim']:.4f}  Gaussians {r['num_gaussians']:>8,}  steps {r['steps']:>6}  train {r['train_seconds']:7.1f} s  wall {r['wall_seconds']:7.1f} s")


if __name__ == "__main__":
    main()
