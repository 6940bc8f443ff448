"""The trainer shared by every representation: loop, losses, schedules, evaluation, checkpoints.

A run folder holds ``config.yaml`` (everything needed to rebuild the run), ``checkpoints/``
(``latest.pt``, written atomically), ``metrics.jsonl`` (one JSON object per line: training lines
and evaluation lines), ``renders/test/`` (predictions beside ground truth) and
``training_curve.png``.

Randomness is a function of (seed, step) wherever possible (the image order and the random
background), and the global torch RNG state is saved in checkpoints, so a resumed run continues
exactly like an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scene3d.densify.base import StepContext, Strategy
from scene3d.errors import Scene3dError
from scene3d.train import checkpoint as ckpt
from scene3d.train.config import TrainConfig
from scene3d.train.metrics import photometric_loss, psnr, ssim


class TrainingDiverged(Scene3dError):
    """The loss became NaN or infinite."""


@dataclass
class RunSpec:
    """What a run is made of; written to config.yaml."""

    scene: str
    model: str
    model_cfg: dict
    strategy: str
    strategy_cfg: dict
    data_cfg: dict
    train_cfg: dict

    def to_yaml(self, path: Path) -> None:
        import yaml

        path.write_text(yaml.safe_dump(dataclasses.asdict(self), sort_keys=False))

    @staticmethod
    def from_yaml(path: Path) -> "RunSpec":
        import yaml

        from scene3d.errors import DataError

        if not path.is_file():
            raise DataError(path.parent, "is not a scene3d run folder (config.yaml not found)")
        try:
            data = yaml.safe_load(path.read_text())
            return RunSpec(**data)
        except Exception as e:
            raise DataError(path, f"is not a valid run configuration ({e})") from None


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def image_for_step(train_indices: list[int], seed: int, step: int) -> int:
    """Image of step ``step``: each epoch visits every training image once, in a seeded order."""
    n = len(train_indices)
    epoch, pos = divmod(step, n)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return train_indices[int(perm[pos])]


class Trainer:
    """Fits a representation to a dataset."""

    def __init__(self, spec: RunSpec, run_dir: Path, dataset, model, strategy: Strategy, cfg: TrainConfig):
        self.spec, self.run_dir, self.ds, self.model, self.strategy, self.cfg = spec, run_dir, dataset, model, strategy, cfg
        self.device = pick_device(cfg.device)
        self.step = 0
        self.elapsed = 0.0
        self._images: dict[int, torch.Tensor] = {}
        self.last_eval: dict | None = None
        self.viewer = None  # a live ViewerServer (scene3d train --viewer), set by run_training
        self.smoothed: tuple[float, float] | None = None  # moving averages of the training loss and PSNR
        self.grid = None
        if getattr(cfg, "compress_grid", False):
            if getattr(model, "name", None) != "3dgs":
                raise Scene3dError(f"--compress-grid sorts Gaussians; the {getattr(model, 'name', '?')} model has none")
            from scene3d.compress.grid_training import GridSmoothing

            self.grid = GridSmoothing.from_config(cfg, strategy)

    # ------------------------------------------------------------------ data
    def target(self, i: int, bg: torch.Tensor | None) -> torch.Tensor:
        """[1, H, W, 3] target image; images with alpha are composited on ``bg``."""
        if i not in self._images:
            rgba = torch.from_numpy(self.ds.image_uint8(i).copy()).float().div(255.0)
            self._images[i] = rgba.to(self.device)
        img = self._images[i]
        if img.shape[-1] == 4:
            a = img[..., 3:]
            b = bg if bg is not None else torch.tensor(self.ds.background, device=self.device)
            img = img[..., :3] * a + b * (1 - a)
        return img[None]

    def background(self, step: int) -> torch.Tensor | None:
        mode = self.cfg.background_mode
        if mode == "random":
            return torch.rand(3, generator=step_generator(self.cfg.seed, step)).to(self.device)
        if mode == "white" or (mode == "auto" and self.ds.format == "blender"):
            return torch.tensor(self.ds.background if mode == "auto" else (1.0, 1.0, 1.0), device=self.device)
        return None

    # ------------------------------------------------------------------ checkpoints
    @property
    def latest(self) -> Path:
        return self.run_dir / "checkpoints" / "latest.pt"

    def save(self) -> None:
        ckpt.save_atomic(
            {
                "step": self.step,
                "elapsed": self.elapsed,
                "model": self.model.state(),
                "strategy": self.strategy.state_dict(),
                **({"grid": self.grid.state_dict()} if self.grid is not None else {}),
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
                "spec": dataclasses.asdict(self.spec),
                "dataset": {"transform": self.ds.transform, "downscale": self.ds.downscale},
            },
            self.latest,
        )

    def restore(self, state: dict) -> None:
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        self.strategy.load_state_dict(state["strategy"])
        if self.grid is not None and "grid" in state:
            self.grid.load_state_dict(state["grid"])
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    # ------------------------------------------------------------------ training
    def log(self, record: dict) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _check_finite(self, loss: torch.Tensor, step: int) -> None:
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss.item()} at step {step}; training stopped and the last good checkpoint "
                f"({self.latest}) was kept. Try a lower learning rate or a different seed"
            )

    def _optimizer_step(self) -> None:
        for opt in self.model.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)

    def pixel_targets(self, cam: torch.Tensor, x: torch.Tensor, y: torch.Tensor, bg: torch.Tensor | None) -> torch.Tensor:
        """[n, 3] target colours of pixels (x, y) of images ``cam`` (composited on ``bg``)."""
        out = torch.empty(cam.shape[0], 3, device=self.device)
        for i in torch.unique(cam).tolist():
            sel = (cam == i).nonzero(as_tuple=True)[0]
            img = self.target(int(i), bg)[0]
            out[sel] = img[y[sel].to(self.device), x[sel].to(self.device)]
        return out

    def ray_train_step(self) -> dict:
        """One step of a ray-based model: a random batch of rays across the training images."""
        from scene3d.renderers.rays import pixel_rays, sample_pixels

        cfg, step, model = self.cfg, self.step, self.model
        model.update_learning_rates(step, cfg.max_steps)
        g = step_generator(cfg.seed, step)
        cam, x, y = sample_pixels(self.ds.cameras, self.ds.train_indices, model.cfg.batch_rays, g)
        origins, dirs = pixel_rays(self.ds.cameras, cam, x, y)
        bg = self.background(step)
        gt = self.pixel_targets(cam, x, y, bg)
        out = model.train_rays(origins.to(self.device), dirs.to(self.device), bg, g)
        mse = torch.mean((out.rgb - gt) ** 2)
        loss = mse
        reg = model.regularization(step)
        if reg is not None:
            loss = loss + reg
        self._check_finite(loss, step)
        loss.backward()
        self._optimizer_step()
        model.after_step(step, float(mse.detach()), cfg.max_steps, self.ds)
        self.step += 1
        return {"loss": float(loss.detach()), "psnr": float(-10 * torch.log10(mse.detach().clamp_min(1e-10)))}

    def train_step(self) -> dict:
        if getattr(self.model, "ray_based", False):
            return self.ray_train_step()
        cfg, step = self.cfg, self.step
        self.model.update_learning_rates(step, cfg.max_steps)
        i = image_for_step(self.ds.train_indices, cfg.seed, step)
        cams = self.ds.cameras[i].to(self.device)
        bg = self.background(step)
        gt = self.target(i, bg)
        out = self.model.render(cams, sh_degree=self.model.active_sh_degree(step), background=bg, absgrad=self.strategy.absgrad)
        ctx = StepContext(step=step, max_steps=cfg.max_steps, model=self.model, render=out, gt=gt, cameras=cams, camera_indices=[i], dataset=self.ds)
        self.strategy.before_backward(ctx)
        mask = self.ds.mask(i)
        loss = photometric_loss(out.rgb, gt, cfg.ssim_lambda, None if mask is None else mask[None].to(self.device))
        extra = self.strategy.extra_loss(ctx)
        if extra is not None:
            loss = loss + extra
        if self.grid is not None:
            grid_loss = self.grid.loss(self.model.params, step)
            if grid_loss is not None:
                loss = loss + grid_loss
        self._check_finite(loss, step)
        ctx.loss = loss
        loss.backward()
        self.strategy.after_backward(ctx)
        self._optimizer_step()
        self.strategy.after_step(ctx)
        self.step += 1
        with torch.no_grad():
            train_psnr = float(psnr(out.rgb.detach(), gt))
        return {"loss": float(loss.detach()), "psnr": train_psnr}

    def timed_step(self) -> dict:
        """One training step, its time added to ``elapsed`` and its loss and PSNR to ``smoothed``
        (exponential moving averages). With a live viewer it first waits while the viewer is paused
        (not counted), holds the viewer's lock during the step, so a frame never sees a half-updated
        model, and then sends the viewer the step's figures."""
        if self.viewer is not None:
            self.viewer.wait_while_paused()
        t0 = time.perf_counter()
        if self.viewer is None:
            stats = self.train_step()
        else:
            with self.viewer.lock:
                stats = self.train_step()
        self.elapsed += time.perf_counter() - t0
        if self.smoothed is None:
            self.smoothed = (stats["loss"], stats["psnr"])
        else:
            self.smoothed = (0.9 * self.smoothed[0] + 0.1 * stats["loss"], 0.9 * self.smoothed[1] + 0.1 * stats["psnr"])
        if self.viewer is not None:
            loss, psnr_ = self.smoothed
            self.viewer.training_update(step=self.step, max_steps=self.cfg.max_steps, loss=loss, psnr=psnr_, model=self.model.describe(), elapsed=self.elapsed)
        return stats

    def fit(self) -> dict:
        """Trains until ``max_steps`` or the time budget, then evaluates. Returns the final metrics."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        columns = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn()]
        stopped_by = "max_steps"
        with Progress(*columns, transient=False) as bar:
            task = bar.add_task("train", total=cfg.max_steps, completed=self.step, stats="")
            while self.step < cfg.max_steps:
                if cfg.time_budget > 0 and self.elapsed >= cfg.time_budget:
                    stopped_by = "time_budget"
                    break
                try:
                    stats = self.timed_step()
                except RuntimeError as e:
                    if "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower():
                        raise Scene3dError(
                            f"ran out of memory at step {self.step} ({self.model.describe()}); "
                            "lower the resolution (--downscale) or cap the count (--strategy.max-gaussians)"
                        ) from None
                    raise
                ema_loss, ema_psnr = self.smoothed
                if self.step % cfg.log_every == 0 or self.step == 1:
                    self.log({"step": self.step, "split": "train", "loss": stats["loss"], "psnr": stats["psnr"], **self.model.train_stats(), "elapsed": round(self.elapsed, 3)})
                    bar.update(task, completed=self.step, stats=f"loss {ema_loss:.4f}  psnr {ema_psnr:.2f}  {self.model.describe()}")
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                    self.evaluate(save_renders=False)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
            bar.update(task, completed=self.step)
        self.save()
        result = self.evaluate(save_renders=True)
        result.update({"steps": self.step, "stopped_by": stopped_by, "train_seconds": round(self.elapsed, 1)})
        from scene3d.train.plots import plot_training_curve

        plot_training_curve(self.run_dir / "metrics.jsonl", self.run_dir / "training_curve.png")
        return result

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, save_renders: bool = False) -> dict:
        result = evaluate_model(self.model, self.ds, self.device, self.cfg.background_mode, renders_dir=self.run_dir / "renders" / "test" if save_renders else None)
        result["step"] = self.step
        self.log({"split": "test", **result})
        self.last_eval = result
        return result


@torch.no_grad()
def evaluate_model(model, ds, device, background_mode: str = "auto", renders_dir: Path | None = None) -> dict:
    """PSNR and SSIM over the test split (the train split when there is no test split)."""
    indices = ds.test_indices or ds.train_indices
    split = "test" if ds.test_indices else "train"
    bg = None
    if background_mode == "white" or (background_mode in ("auto", "random") and ds.format == "blender"):
        bg = torch.tensor(ds.background if background_mode != "white" else (1.0, 1.0, 1.0), device=device)
    psnrs, ssims = [], []
    for i in indices:
        gt = ds.image(i).to(device)[None] if bg is None else _composite(ds, i, bg, device)
        out = model.render(ds.cameras[i].to(device), background=bg)
        pred = out.rgb.clamp(0, 1)
        psnrs.append(float(psnr(pred, gt)))
        ssims.append(float(ssim(pred, gt)))
        if renders_dir is not None:
            save_pair(renders_dir, Path(ds.names[i]).stem, pred[0], gt[0])
    return {
        "psnr": float(np.mean(psnrs)),
        "ssim": float(np.mean(ssims)),
        "num_gaussians": getattr(model, "num_gaussians", None),
        **({} if hasattr(model, "num_gaussians") else {"rank": getattr(model, "rank", None)}),
        "num_images": len(indices),
        "eval_split": split,
    }


def _composite(ds, i: int, bg: torch.Tensor, device) -> torch.Tensor:
    img = torch.from_numpy(ds.image_uint8(i).copy()).float().div(255.0).to(device)
    if img.shape[-1] == 4:
        img = img[..., :3] * img[..., 3:] + bg * (1 - img[..., 3:])
    return img[None]


def save_pair(folder: Path, stem: str, pred: torch.Tensor, gt: torch.Tensor) -> None:
    """Writes ``stem.png``: the prediction (left) beside the ground truth (right)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    both = torch.cat([pred, gt], dim=1).clamp(0, 1).mul(255).round().byte().cpu().numpy()
    Image.fromarray(both).save(folder / f"{stem}.png")

