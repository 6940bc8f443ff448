"""The training-curve picture: loss and PSNR against step, Gaussian count, test PSNR points."""

from __future__ import annotations

import json
from pathlib import Path


def plot_training_curve(metrics_path: Path, out_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, test = [], []
    for line in Path(metrics_path).read_text().splitlines():
        rec = json.loads(line)
        (test if rec.get("split") == "test" else train).append(rec)
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    steps = [r["step"] for r in train]
    axes[0].plot(steps, [r["loss"] for r in train], lw=1)
    axes[0].set(title="training loss", xlabel="step", yscale="log")
    axes[1].plot(steps, [r["psnr"] for r in train], lw=1, label="train (one image)")
    if test:
        axes[1].plot([r["step"] for r in test], [r["psnr"] for r in test], "o-", label="test")
    axes[1].set(title="PSNR (dB)", xlabel="step")
    axes[1].legend()
    if train and train[0].get("num_gaussians") is not None:
        axes[2].plot(steps, [r["num_gaussians"] for r in train], lw=1)
    axes[2].set(title="primitives", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path
