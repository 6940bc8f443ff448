"""The one training loop, for every representation, trained by whole images or by rays.

A step asks the representation for its learning rates (``schedule``), its batch (``batch``: the
training data lives on the training device, :class:`~scene3d.data.training.TrainingData`), its
render (``forward``) and its named losses (``losses``); the densification strategy adds its own
term and its hooks run around backward where the representation is densifiable; the engine
synchronises gradients (a no-op on one device) before the strategy's after-backward hook; the
optimisers step; the representation does its housekeeping (``after_step``).

Per step the host only queues work: loss and PSNR stay on the device (moving averages included)
and are read at log intervals (``--log-every``), where the progress bar, metrics.jsonl and the
live viewer get their numbers. A non-finite loss is caught at once on the CPU, where reading a
value is free, and at the next log interval or checkpoint on an accelerator; either way training
stops with a message and the last good checkpoint is kept.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from scene3d.data.training import TrainingData
from scene3d.densify.base import StepContext, Strategy
from scene3d.errors import Scene3dError
from scene3d.metrics import psnr
from scene3d.runs import CHECKPOINT, METRICS, RunSpec, rng_state, save_checkpoint, set_rng_state, to_device
from scene3d.train.config import TrainConfig
from scene3d.train.engine import SingleDevice
from scene3d.train.evaluation import evaluate_model


class TrainingDiverged(Scene3dError):
    """The loss became NaN or infinite."""


class Trainer:
    """Fits a representation to a dataset (see the module docstring)."""

    def __init__(self, spec: RunSpec, run_dir: Path, dataset, model, strategy: Strategy, cfg: TrainConfig, engine: SingleDevice | None = None):
        self.spec, self.run_dir, self.ds, self.model, self.strategy, self.cfg = spec, run_dir, dataset, model, strategy, cfg
        self.engine = engine or SingleDevice(cfg.device)
        self.step = 0
        self.elapsed = 0.0
        self.last_eval: dict | None = None
        self.viewer = None  # a live ViewerServer (scene3d train --viewer), set by run_training
        self.smoothed: tuple[float, float] | None = None  # moving averages of the loss and PSNR, as of the last log line
        self.data = TrainingData(dataset, self.engine.device, cfg.background_mode, cfg.seed, stream=self.engine.rank)
        self._ema: torch.Tensor | None = None  # [2] device-side moving averages of (loss, psnr)
        self._first_bad: torch.Tensor | None = None  # device-side step of the first non-finite loss (-1: none)
        self.grid = None
        if cfg.compress_grid:
            if not model.caps.densifiable:
                raise Scene3dError(f"--compress-grid sorts Gaussians; the {model.name} representation has none")
            from scene3d.compress.grid_training import GridSmoothing

            self.grid = GridSmoothing.from_config(cfg, strategy)

    @property
    def device(self) -> torch.device:
        return self.engine.device

    # ------------------------------------------------------------------ checkpoints
    @property
    def latest(self) -> Path:
        return self.run_dir / CHECKPOINT

    def save(self) -> None:
        """Writes checkpoints/latest.pt (rank 0 only); refuses to overwrite a good one with a diverged model."""
        self._check_diverged()
        if not self.engine.is_writer:
            return
        save_checkpoint(
            {
                "step": self.step,
                "elapsed": self.elapsed,
                "model": self.model.state(),
                "optimizers": {k: opt.state_dict() for k, opt in self.model.optimizers.items()},
                "strategy": self.strategy.state_dict(),
                **({"grid": self.grid.state_dict()} if self.grid is not None else {}),
                "rng": rng_state(),
                "spec": {k: v for k, v in vars(self.spec).items()},
                "dataset": {"transform": torch.as_tensor(self.ds.transform, dtype=torch.float64), "downscale": int(self.ds.downscale)},
            },
            self.latest,
        )

    def restore(self, state: dict) -> None:
        """Continues from a checkpoint: step, clock, optimisers, strategy, grid and random state."""
        self.step, self.elapsed = int(state["step"]), float(state["elapsed"])
        optimizers = state.get("optimizers") or state["model"].get("optimizers") or {}  # version 1 kept them in the model's state
        for name, opt in self.model.optimizers.items():
            if name in optimizers:
                opt.load_state_dict(optimizers[name])
        self.strategy.load_state_dict(to_device(state["strategy"], self.device))
        if self.grid is not None and "grid" in state:
            self.grid.load_state_dict(state["grid"])
        set_rng_state(state["rng"])

    # ------------------------------------------------------------------ training
    def log(self, record: dict) -> None:
        if self.engine.is_writer:
            with open(self.run_dir / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def _diverged(self, step: int, value: str) -> TrainingDiverged:
        return TrainingDiverged(
            f"the loss became {value} at step {step}; training stopped and the last good checkpoint "
            f"({self.latest}) was kept. Try a lower learning rate or a different seed"
        )

    def _watch(self, loss: torch.Tensor, step: int) -> None:
        """Notes a non-finite loss: at once where reading it is free, else on the device for later."""
        if self.engine.host_sync_is_free:
            if not bool(torch.isfinite(loss)):
                raise self._diverged(step, str(loss.item()))
            return
        bad = ~torch.isfinite(loss.detach())
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
        self._first_bad = torch.where(bad & (self._first_bad < 0), self._first_bad.new_full((), step), self._first_bad)

    def _check_diverged(self) -> None:
        if self._first_bad is not None and int(self._first_bad) >= 0:
            raise self._diverged(int(self._first_bad), "non-finite (NaN or infinite)")

    def train_step(self) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the step's loss terms, total and PSNR as device tensors."""
        cfg, step, model, strategy = self.cfg, self.step, self.model, self.strategy
        model.schedule(step, cfg.max_steps)
        batch = model.batch(self.data, step, self.engine.generator(cfg.seed, step))
        densify = model.caps.densifiable
        if densify:
            batch.absgrad = strategy.absgrad
        out = model.forward(batch, step)
        ctx = StepContext(step=step, max_steps=cfg.max_steps, model=model, render=out, gt=batch.target, cameras=batch.cameras, camera_indices=batch.camera_indices, dataset=self.ds)
        if densify:
            strategy.before_backward(ctx)
        losses = model.losses(out, batch, step)
        extra = strategy.extra_loss(ctx) if densify else None
        if extra is not None:
            losses["strategy"] = extra
        if self.grid is not None:
            grid_loss = self.grid.loss(model.params, step)
            if grid_loss is not None:
                losses["grid"] = grid_loss
        values = list(losses.values())
        loss = values[0]
        for term in values[1:]:  # not sum(): that adds a kernel for its 0
            loss = loss + term
        self._watch(loss, step)
        ctx.loss = loss
        loss.backward()
        self.engine.sync_gradients(model)
        if densify:
            strategy.after_backward(ctx)
        for opt in model.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        if densify:
            strategy.after_step(ctx)
        terms = {k: v.detach() for k, v in losses.items()}
        model.after_step(step, terms)
        self.step += 1
        with torch.no_grad():
            train_psnr = psnr(out.rgb.detach(), batch.target)
        return {"loss": loss.detach(), "psnr": train_psnr, "terms": terms}

    def timed_step(self) -> dict[str, torch.Tensor]:
        """One training step, its time added to ``elapsed`` and its loss and PSNR to the device-side
        moving averages. With a live viewer it first waits while the viewer is paused (not counted)
        and holds the viewer's lock during the step, so a frame never sees a half-updated model."""
        if self.viewer is not None:
            self.viewer.wait_while_paused()
        t0 = time.perf_counter()
        if self.viewer is None:
            stats = self.train_step()
        else:
            with self.viewer.lock:
                stats = self.train_step()
        self.elapsed += time.perf_counter() - t0
        now = torch.stack([stats["loss"].float(), stats["psnr"].float()])
        self._ema = now if self._ema is None else 0.9 * self._ema + 0.1 * now
        if self.viewer is not None:
            loss, psnr_ = self.smoothed or (float("nan"), float("nan"))
            self.viewer.training_update(step=self.step, max_steps=self.cfg.max_steps, loss=loss, psnr=psnr_, model=self.model.describe(), elapsed=self.elapsed)
        return stats

    def advance(self) -> dict | None:
        """One timed step; at log intervals also the host's copy of its numbers, written to
        metrics.jsonl and returned (None between them)."""
        stats = self.timed_step()
        if self.step % self.cfg.log_every == 0 or self.step == 1:
            record = self.read_out(stats)
            self.log(record)
            return record
        return None

    def read_out(self, stats: dict[str, torch.Tensor]) -> dict:
        """The host's copy of a step's numbers (one synchronisation): the training log line."""
        self._check_diverged()
        ema = self._ema.tolist()
        self.smoothed = (ema[0], ema[1])
        record = {"step": self.step, "split": "train", "loss": float(stats["loss"]), "psnr": float(stats["psnr"])}
        if len(stats["terms"]) > 1:
            record["terms"] = {k: float(v) for k, v in stats["terms"].items()}
        return {**record, **self.model.stats(), "elapsed": round(self.elapsed, 3)}

    def fit(self) -> dict:
        """Trains until ``max_steps`` or the time budget, then evaluates. Returns the final metrics."""
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        columns = [TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn()]
        stopped_by = "max_steps"
        with Progress(*columns, transient=False, disable=not self.engine.is_writer) as bar:
            task = bar.add_task("train", total=cfg.max_steps, completed=self.step, stats="")
            while self.step < cfg.max_steps:
                if cfg.time_budget > 0 and self.elapsed >= cfg.time_budget:
                    stopped_by = "time_budget"
                    break
                try:
                    record = self.advance()
                except RuntimeError as e:
                    if "out of memory" in str(e).lower() or "can't allocate memory" in str(e).lower():
                        self._check_diverged()  # a diverged model can ask for absurd amounts of memory
                        raise Scene3dError(
                            f"ran out of memory at step {self.step} ({self.model.describe()}); "
                            "lower the resolution (--downscale) or cap the count (--strategy.max-gaussians)"
                        ) from None
                    raise
                if record is not None:
                    ema_loss, ema_psnr = self.smoothed
                    bar.update(task, completed=self.step, stats=f"loss {ema_loss:.4f}  psnr {ema_psnr:.2f}  {self.model.describe()}")
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                    self.evaluate(save_renders=False)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
            bar.update(task, completed=self.step)
        self.save()
        result = self.evaluate(save_renders=True)
        result.update({"steps": self.step, "stopped_by": stopped_by, "train_seconds": round(self.elapsed, 1)})
        if self.engine.is_writer:
            from scene3d.train.plots import plot_training_curve

            plot_training_curve(self.run_dir / METRICS, self.run_dir / "training_curve.png")
        return result

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, save_renders: bool = False) -> dict:
        renders = self.run_dir / "renders" / "test" if save_renders and self.engine.is_writer else None
        result = evaluate_model(self.model, self.ds, self.device, self.cfg.background_mode, renders_dir=renders)
        result["step"] = self.step
        self.log({"split": "test", **result})
        self.last_eval = result
        return result
