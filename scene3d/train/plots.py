"""The training-curve picture: loss and PSNR against step, Gaussian count, test PSNR points."""

from __future__ import annotations

import json
from pathlib import Path


def _records(metrics_path: Path) -> tuple[list[dict], list[dict]]:
    """(training lines, test lines) of metrics.jsonl with numeric step, loss and PSNR; lines that
    are not (a resumed run's folder may hold anything) are skipped, not fatal: this is a picture."""
    train, test = [], []
    for line in Path(metrics_path).read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line) if len(line) < 100_000 else None
        except (ValueError, RecursionError):
            continue
        if not isinstance(rec, dict):
            continue
        is_test = rec.get("split") == "test"
        needed = ("step", "psnr") if is_test else ("step", "loss", "psnr")
        if all(isinstance(rec.get(k), (int, float)) and not isinstance(rec.get(k), bool) for k in needed):
            (test if is_test else train).append(rec)
    return train, test


def plot_training_curve(metrics_path: Path, out_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scene3d.atomic import atomic_path

    train, test = _records(metrics_path)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], lw=1)
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    axes[1].plot(steps, [r["psnr"] for r in train], lw=1, label="train (one image)")
    if test:
        axes[1].plot([r["step"] for r in test], [r["psnr"] for r in test], "o-", label="test")
    axes[1].set(title="PSNR (dB)", xlabel="step")
    axes[1].legend()
    counts = [(r["step"], r["num_gaussians"]) for r in train if isinstance(r.get("num_gaussians"), int)]
    if counts:
        axes[2].plot(*zip(*counts), lw=1)
    axes[2].set(title="primitives", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out_path
