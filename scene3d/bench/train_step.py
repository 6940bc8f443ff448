"""``scene3d bench train-step RUN``: what the trainer costs on top of the work a step must do.

The same Gaussians (the run's checkpoint), cameras, images and rasterization backend are stepped
two ways, from the same step (so the same SH degree) and over the same images in the same order:

* **trainer**: :meth:`Trainer.timed_step` of the run's representation, as ``scene3d train`` runs
  it (its batch, forward, named losses, hooks, optimisers, housekeeping, moving averages, and the
  log line every ``--log-every`` steps), with densification off (``--strategy none``: a
  densification round is work the bare loop does not do);
* **bare**: the least a 3DGS step is: activations, rasterize forward and backward (through
  scene3d's ``rasterize``), the same photometric loss, one Adam step per parameter group, the
  images already on the device;
* with the gsplat backend also **bare gsplat**: the same loop calling ``gsplat.rasterization``
  directly (``bare_gsplat_ms``, ``ratio_to_gsplat``), which prices scene3d's rasterize entry point.

Each is timed over ``--steps`` steps after ``--warmup`` steps, the two alternated ``--rounds``
times, the device synchronised at both ends of each timing; medians are reported and ``ratio`` is
trainer / bare.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from scene3d.errors import Scene3dError


def run_bench(run: Path, steps: int = 50, warmup: int = 5, rounds: int = 3, device: str = "auto", backend: str | None = None, log_every: int = 20) -> dict:
    from rich.console import Console

    from scene3d.data.training import image_for_step
    from scene3d.densify.base import Strategy
    from scene3d.metrics import photometric_loss
    from scene3d.renderers.gaussians import rasterize, resolve_backend
    from scene3d.runs import open_run
    from scene3d.train.config import TrainConfig
    from scene3d.train.engine import SingleDevice
    from scene3d.train.trainer import Trainer

    if steps < 1 or rounds < 1 or warmup < 0:
        raise Scene3dError("--steps and --rounds must be at least 1 and --warmup at least 0")
    console = Console(stderr=True)
    run_ = open_run(Path(run))
    cls = run_.model_class
    if not cls.caps.densifiable:
        raise Scene3dError(f"{run}: is a {run_.spec.model} run; bench train-step compares a Gaussian trainer with a bare rasterization loop")
    engine = SingleDevice(device)
    dev = engine.device
    cfg = run_.model_config()
    if backend is not None:
        cfg.backend = backend
    ds = run_.dataset()
    start = run_.step
    seed = int(run_.spec.train_cfg.get("seed", 0))

    def fresh_model():
        return engine.place(cls.from_state(run_.checkpoint["model"], cfg))

    with tempfile.TemporaryDirectory() as tmp:
        train_cfg = TrainConfig(max_steps=start + 10 * (warmup + steps) * rounds + 10, save_every=0, eval_every=0, log_every=log_every, seed=seed,
                                device=str(dev), background_mode=run_.background_mode)  # fmt: skip
        trainer = Trainer(run_.spec, Path(tmp), ds, fresh_model(), Strategy(), train_cfg, engine)
        trainer.step = start

        bare = fresh_model()
        data = trainer.data  # the same device-resident images and cameras
        images = {i: data.image(i, data.fixed_background) for i in data.train_indices}
        cameras = {i: data.camera(i) for i in data.train_indices}
        settings = {d: bare.raster_settings(sh_degree=d, render_depth=False) for d in range(cfg.sh_degree + 1)}
        lam = cfg.ssim_lambda
        bare_step = [start]

        def bare_loop(n: int) -> None:
            p = bare.params
            for _ in range(n):
                step = bare_step[0]
                i = image_for_step(data.train_indices, seed, step)
                colors = torch.cat([p["sh0"], p["shN"]], 1)
                out = rasterize(p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]), colors, cameras[i],
                                settings[bare.active_sh_degree(step)], background=data.fixed_background)  # fmt: skip
                loss = photometric_loss(out.rgb, images[i], lam)
                loss.backward()
                for opt in bare.optimizers.values():
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                bare_step[0] += 1

        gsplat_direct = resolve_backend(cfg.backend, dev) == "gsplat"
        if gsplat_direct:  # the same loop calling gsplat itself: what our rasterize() entry point costs
            from gsplat import rasterization

            views = {i: (c.world_to_cam.contiguous(), c.Ks.contiguous(), *map(int, (c.on_host().width[0], c.on_host().height[0]))) for i, c in cameras.items()}
            bg = None if data.fixed_background is None else data.fixed_background[None]

        def gsplat_loop(n: int) -> None:
            p = bare.params
            for _ in range(n):
                step = bare_step[0]
                i = image_for_step(data.train_indices, seed, step)
                viewmats, Ks, w, h = views[i]
                colors = torch.cat([p["sh0"], p["shN"]], 1)
                rgb, _, _ = rasterization(p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]), colors, viewmats, Ks, w, h,
                                          near_plane=cfg.near, far_plane=cfg.far, sh_degree=bare.active_sh_degree(step), packed=False, backgrounds=bg,
                                          rasterize_mode="antialiased" if cfg.antialiased else "classic")  # fmt: skip
                loss = photometric_loss(rgb, images[i], lam)
                loss.backward()
                for opt in bare.optimizers.values():
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                bare_step[0] += 1

        def trainer_loop(n: int) -> None:
            for _ in range(n):
                trainer.advance()

        def timed(loop) -> float:
            loop(warmup)
            engine.synchronize()
            t0 = time.perf_counter()
            loop(steps)
            engine.synchronize()
            return (time.perf_counter() - t0) / steps * 1000

        loops = {"trainer": trainer_loop, "bare": bare_loop, **({"gsplat": gsplat_loop} if gsplat_direct else {})}
        times: dict[str, list[float]] = {k: [] for k in loops}
        for r in range(rounds):
            for label in list(loops)[:: 1 if r % 2 == 0 else -1]:
                times[label].append(timed(loops[label]))
            console.print(f"round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.2f} ms" for k, v in times.items()) + " per step")
    t, b = statistics.median(times["trainer"]), statistics.median(times["bare"])
    trainer_ms, bare_ms = times["trainer"], times["bare"]
    first = data.train_indices[0]
    return {
        "run": str(run),
        "backend": resolve_backend(cfg.backend, dev),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "num_gaussians": int(trainer.model.num_gaussians),
        "image_size": [int(ds.cameras.width[first]), int(ds.cameras.height[first])],
        "start_step": start,
        "steps": steps,
        "warmup": warmup,
        "rounds": rounds,
        "strategy": "none",
        "trainer_ms": t,
        "bare_ms": b,
        "ratio": t / b,
        "trainer_ms_rounds": trainer_ms,
        "bare_ms_rounds": bare_ms,
        **({"bare_gsplat_ms": statistics.median(times["gsplat"]), "ratio_to_gsplat": t / statistics.median(times["gsplat"])} if "gsplat" in times else {}),
    }


def print_result(result: dict) -> None:
    from rich.console import Console

    Console().print(
        f"{result['run']}: {result['num_gaussians']:,} Gaussians at {result['image_size'][0]}x{result['image_size'][1]}, "
        f"backend {result['backend']} on {result['device_name']}: trainer {result['trainer_ms']:.2f} ms per step, "
        f"bare loop {result['bare_ms']:.2f} ms: {result['ratio']:.3f}x"
    )


def main(run: Path, *, as_json: bool = False, **kw) -> dict:
    result = run_bench(run, **kw)
    if as_json:
        print(json.dumps(result))
    else:
        print_result(result)
    return result
