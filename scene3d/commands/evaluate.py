"""``scene3d eval``: test-split metrics of a trained run, or of a file against a dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from scene3d.errors import Scene3dError


def eval_command(target: Path, *, json_out: bool = False, device: str = "auto", rank: int | None = None) -> dict:
    from scene3d.commands.common import apply_rank
    from scene3d.runs import open_run
    from scene3d.device import pick_device
    from scene3d.train.evaluation import evaluate_model

    dev = pick_device(device)
    run = open_run(target)
    model = run.load_model(dev)
    apply_rank(model, rank, target)
    result = evaluate_model(model, run.dataset(), dev, run.background_mode)
    result.update({"step": run.step, "model": run.spec.model, "strategy": run.spec.strategy, "scene": run.spec.scene})
    if rank is not None:
        result["rank"] = rank
    return _report(result, json_out, f"{target}: {result['eval_split']} split", f"{model.describe()} (step {result['step']})")


def eval_file_command(path: Path, scene: Path, data_cfg, *, json_out: bool = False, device: str = "auto") -> dict:
    """Test-split metrics of a file (a Gaussian scene file, or a model file) against ``scene``'s images."""
    from scene3d.export.formats import format_of_path, open_file
    from scene3d.models import gaussian_representation
    from scene3d.runs import prepare_dataset
    from scene3d.device import pick_device
    from scene3d.train.evaluation import evaluate_model

    dev = pick_device(device)
    if format_of_path(path).kind == "model":
        model, transform = open_file(path, dev)
        ds = prepare_dataset(Path(scene), data_cfg, type(model))
        if transform is None or not np.allclose(transform, ds.transform, atol=1e-4):
            raise Scene3dError(f"{path}: was trained in another normalised frame than {scene} gives with these data options (use the run's --downscale and data options)")
    else:
        ds = prepare_dataset(Path(scene), data_cfg, gaussian_representation())
        model, _ = open_file(path, dev, transform=ds.transform)
    result = evaluate_model(model, ds, dev)
    result.update({"file": str(path), "scene": str(scene), "bytes": Path(path).stat().st_size})
    return _report(result, json_out, f"{path}: {result['eval_split']} split of {scene}", f"{model.describe()}, {result['bytes'] / 1e6:.2f} MB")


def _report(result: dict, json_out: bool, what: str, tail: str) -> dict:
    """One JSON object, or one line: what was evaluated, PSNR, SSIM and ``tail``."""
    from rich.console import Console

    if json_out:
        print(json.dumps(result))
    else:
        Console().print(f"{what}, {result['num_images']} images: PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}, {tail}")
        if "psnr_per_scale" in result:
            scales = ", ".join(f"1/{f}: {v:.2f} dB" for f, v in result["psnr_per_scale"].items())
            Console().print(f"PSNR per scale (their mean above): {scales}")
    return result
