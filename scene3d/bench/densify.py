"""``scene3d bench densify SCENE``: every densification strategy trained on one scene with the same
time budget, compared on the test split.

Each strategy trains 3DGS from the same initialisation (same seed, same image order) with the same
preset schedule (its step counts scaled to ``--max-steps``), the same step limit and the same
training-time budget (evaluation and checkpoints
are not counted). The primitive budget is shared too: with ``--cap-max -1`` (the default) ADC runs
first and every strategy that has a primitive budget (``cap_max`` or ``max_gaussians``) gets ADC's
final count as its cap, so the comparison is at equal or lower Gaussian counts, as in the papers.

Output: a table (or ``--json`` records) of test PSNR, SSIM, Gaussian count, steps and times; in
``OUTPUT/``: one run folder per strategy, ``bench_densify.json`` and ``bench_densify.png`` (training
PSNR and Gaussian count over training time, and test PSNR against Gaussian count).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from scene3d.errors import Scene3dError

DEFAULT_STRATEGIES = ("adc", "pixel-error", "lpm", "mcmc")
CAP_FIELDS = ("cap_max", "max_gaussians")
SCHEDULE_FIELDS = ("refine_start", "refine_stop", "reset_every")  # step counts scaled with --max-steps


def _set_cap(strategy, cap: int) -> str | None:
    for name in CAP_FIELDS:
        if hasattr(strategy, name):
            setattr(strategy, name, int(cap))
            return name
    return None


def run_bench(
    scene: Path,
    output: Path,
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES,
    time_budget: float = 600.0,
    max_steps: int = 3000,
    preset: str = "short",
    downscale: int = 1,
    cap_max: int = -1,
    seed: int = 0,
    overwrite: bool = False,
    model: str | None = None,
) -> list[dict]:
    from scene3d.models import DEFAULT_MODEL, get_model
    from scene3d.train.cli import build_args_class
    from scene3d.train.setup import check_strategy_name, create_trainer

    model_name = model or DEFAULT_MODEL
    if not get_model(model_name).caps.densifiable:
        raise Scene3dError(f"--model {model_name}: densification strategies need a densifiable representation")

    strategies = tuple(strategies)
    if not strategies:
        raise Scene3dError("no strategies to compare (--strategies is empty)")
    for name in strategies:
        check_strategy_name(name)
    if len(set(strategies)) != len(strategies):
        raise Scene3dError(f"--strategies lists a strategy twice: {', '.join(strategies)}")
    if cap_max == -1 and "adc" in strategies:  # ADC first: its final count becomes the shared cap
        strategies = ("adc",) + tuple(s for s in strategies if s != "adc")
    if time_budget <= 0 and max_steps <= 0:
        raise Scene3dError("give a positive --time-budget or --max-steps")
    output = Path(output)
    runs = claim_run_folders(output, strategies, overwrite)

    rows: list[dict] = []
    shared_cap = cap_max if cap_max > 0 else None
    for name in strategies:
        cls = build_args_class(model_name, name, preset)
        args = cls(scene=Path(scene), output=runs[name])
        args.data.downscale = downscale
        scale_schedule(args, max_steps, get_model(model_name).schedule_fields)
        args.train.time_budget = time_budget
        args.train.seed = seed
        args.train.eval_every = 0
        cap_field = _set_cap(args.strategy, shared_cap) if shared_cap else None
        t0 = time.perf_counter()
        trainer = create_trainer(Path(scene), runs[name], model_name, args.model, name, args.strategy, args.data, args.train)
        res = trainer.fit()
        wall = time.perf_counter() - t0
        if name == "adc" and cap_max == -1:
            shared_cap = int(res["num_gaussians"])
        rows.append(
            {
                "strategy": name,
                "psnr": round(res["psnr"], 3),
                "ssim": round(res["ssim"], 4),
                "num_gaussians": int(res["num_gaussians"]),
                "cap": getattr(args.strategy, cap_field) if cap_field else None,
                "steps": int(res["steps"]),
                "stopped_by": res["stopped_by"],
                "train_seconds": res["train_seconds"],
                "wall_seconds": round(wall, 1),
                "eval_split": res["eval_split"],
                "num_eval_images": res["num_images"],
                "run": str(runs[name]),
            }
        )
    meta = {"scene": str(Path(scene).resolve()), "model": model_name, "downscale": downscale, "preset": preset, "time_budget": time_budget, "max_steps": max_steps, "seed": seed}
    (output / "bench_densify.json").write_text(json.dumps({"settings": meta, "results": rows}, indent=2))
    plot_bench(rows, output / "bench_densify.png")
    return rows


def claim_run_folders(output: Path, names, overwrite: bool) -> dict[str, Path]:
    """``output / name`` for each name; folders already holding a run are refused, or emptied with ``overwrite``."""
    runs = {name: Path(output) / name for name in names}
    taken = [p for p in runs.values() if p.exists() and any(p.iterdir())]
    if taken and not overwrite:
        raise Scene3dError(f"{taken[0]} already holds a run; choose another --output or add --overwrite")
    for p in taken:
        shutil.rmtree(p)
    return runs


def scale_schedule(args, max_steps: int, model_schedule_fields: tuple[str, ...] = ()) -> None:
    """Sets ``max_steps`` and scales the preset's step-valued schedule (densification window, opacity
    resets, and the model's ``schedule_fields`` such as the SH degree interval) by the same factor,
    so every phase of the recipe happens."""
    factor = max_steps / args.train.max_steps
    args.train.max_steps = max_steps
    if factor == 1:
        return
    for name in SCHEDULE_FIELDS:
        if hasattr(args.strategy, name):
            setattr(args.strategy, name, max(1, round(getattr(args.strategy, name) * factor)))
    model_cfg = args.model
    for name in model_schedule_fields:
        setattr(model_cfg, name, max(1, round(getattr(model_cfg, name) * factor)))


def _curves(run: Path) -> tuple[list[float], list[float], list[float]]:
    t, p, n = [], [], []
    path = run / "metrics.jsonl"
    if not path.is_file():
        return t, p, n
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("split") == "train":
            t.append(rec["elapsed"])
            p.append(rec["psnr"])
            n.append(rec["num_gaussians"])
    return t, p, n


def plot_bench(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in rows:
        t, p, n = _curves(Path(r["run"]))
        if p:
            k = max(1, min(10, len(p) // 10))
            smooth = np.convolve(p, np.ones(k) / k, mode="valid")
            axes[0].plot(t[k - 1 :], smooth, label=r["strategy"])
            axes[1].plot(t, n, label=r["strategy"])
        axes[2].scatter(r["num_gaussians"], r["psnr"], s=40)
        axes[2].annotate(r["strategy"], (r["num_gaussians"], r["psnr"]), textcoords="offset points", xytext=(5, 5))
    axes[0].set(xlabel="training time (s)", ylabel="training PSNR (dB, smoothed)", title="training PSNR")
    axes[1].set(xlabel="training time (s)", ylabel="Gaussians", title="primitive count")
    axes[2].set(xlabel="Gaussians at the end", ylabel=f"{rows[0]['eval_split']} PSNR (dB)", title="quality against size")
    for ax in axes[:2]:
        ax.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(rows: list[dict], scene: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"densification strategies on {scene}")
    for col in ("strategy", "PSNR", "SSIM", "Gaussians", "cap", "steps", "train s", "wall s"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for r in rows:
        table.add_row(
            r["strategy"], f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", f"{r['num_gaussians']:,}", f"{r['cap']:,}" if r["cap"] else "-",
            str(r["steps"]), f"{r['train_seconds']:.1f}", f"{r['wall_seconds']:.1f}",
        )
    Console().print(table)
