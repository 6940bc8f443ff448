"""Training with a self-organising Gaussian grid (``--compress-grid``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scene3d.compress.plas import grid_neighbour_distance, sog_features, to_grid
from scene3d.data.config import DataConfig
from scene3d.densify.adc import ADCStrategy
from scene3d.models.gaussians import GaussianConfig
from scene3d.train.config import TrainConfig
from scene3d.train.setup import create_trainer
from synthetic import write_synthetic_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_synthetic_scene(tmp_path_factory.mktemp("synthetic"))


def quick(scene: Path, out: Path, steps: int, **train):
    model = GaussianConfig(sh_degree=1, sh_degree_interval=100, backend="cpu")
    strategy = ADCStrategy(refine_start=20, refine_stop=40, refine_every=20, reset_every=0)
    cfg = TrainConfig(max_steps=steps, save_every=0, log_every=10, **train)
    return create_trainer(scene, out, "3dgs", model, "adc", strategy, DataConfig(), cfg)


def smoothness(trainer) -> float:
    g = trainer.grid
    feats = sog_features({k: v.detach() for k, v in trainer.model.params.items()})
    grid, valid = to_grid(feats, g.order, g.shape)
    return grid_neighbour_distance(grid, valid)


def test_grid_loss_makes_the_sorted_grid_smoother_and_resumes(scene, tmp_path):
    common = dict(compress_grid=True, grid_start=-1, grid_sort_every=1000)
    # A negligible weight: the plain run sorts at the same step into the same grid, but is not smoothed.
    plain = quick(scene, tmp_path / "plain", 140, grid_weight=1e-12, **common)
    smooth = quick(scene, tmp_path / "smooth", 140, grid_weight=1.0, **common)
    assert smooth.grid.start == 40  # -1: when densification stops
    for t in (plain, smooth):
        t.fit()
    assert smooth.grid.sorts == 1 and smooth.grid.sorted_at == 40 and smooth.grid.num_sorted == smooth.model.num_gaussians
    assert torch.equal(plain.grid.order, smooth.grid.order)
    # 100 steps at the learning rates of 3DGS move the attributes little: expect a clear, not a large, gain.
    assert smoothness(smooth) < 0.9 * smoothness(plain), (smoothness(smooth), smoothness(plain))
    assert smooth.last_eval["psnr"] > plain.last_eval["psnr"] - 3.0  # the smoothing does not wreck the fit

    # Exports of a grid-trained run lay the SOG out with the same kind of sort.
    from scene3d.commands.export import sog_layout_for
    from scene3d.runs import open_run

    assert sog_layout_for(open_run(tmp_path / "smooth")) == "plas" and sog_layout_for(None) == "morton"

    # The grid travels with the checkpoint: a resumed run keeps the layout instead of re-sorting.
    smooth.save()
    resumed = quick(scene, tmp_path / "smooth", 160, grid_weight=1.0, resume=True, **common)
    assert resumed.grid.sorts == 1 and torch.equal(resumed.grid.order, smooth.grid.order)
    resumed.train_step()
    assert resumed.grid.sorts == 1


def test_compress_grid_refuses_bad_weights():
    from scene3d.compress.grid_training import GridSmoothing

    with pytest.raises(ValueError, match="grid_weight"):
        GridSmoothing(-1.0, 0, 100)
