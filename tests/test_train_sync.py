"""Sync-free training of ray models (``--model.sync-free``, :mod:`scene3d.renderers.rays.static`):
the same render, loss and gradients as the batched path; training steps that call no operation
that makes the host wait for a CUDA device (recorded by a dispatch mode, on the CPU and, where
there is one, on CUDA); samples beyond the buffer counted and the buffer grown; TRaIn's decisions
kept, read a fixed number of steps late; the reference's batch size on CUDA."""

from __future__ import annotations

import copy
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from scene3d.data.config import DataConfig
from scene3d.data.training import Batch
from scene3d.densify.base import Strategy
from scene3d.device import LaggedReadout, to_device_async
from scene3d.models.slimmerf import PRESETS, SlimmeRFConfig, SlimmeRFModel
from scene3d.renderers.rays import Rays, nerfacc_available, ray_aabb, sample_along_rays, sample_lattice
from scene3d.renderers.rays.static import Capacity, compact, render_rays_static
from scene3d.train.config import TrainConfig
from scene3d.train.engine import SingleDevice
from scene3d.train.setup import create_trainer
from tests.synthetic import write_synthetic_scene

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
BACKENDS = [pytest.param("nerfacc", marks=pytest.mark.skipif(not nerfacc_available(), reason="nerfacc is not installed")), "torch"]
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])]
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, atol: float = 1e-6, rtol: float = 1e-4) -> None:
    """Float32 agreement: the two paths evaluate the same points in batches of other sizes."""
    err = (a - b).abs().max().item() if a.numel() else 0.0
    bound = atol + rtol * b.abs().max().item() if b.numel() else atol
    assert err <= bound, f"{what} differs by {err:.3g} (tolerance {bound:.3g})"


# ---------------------------------------------------------------------------- recording syncs
A = torch.ops.aten
SYNCING = {A._local_scalar_dense.default, A.item.default, A.is_nonzero.default, A.equal.default, A.nonzero.default, A.masked_select.default,
           A.bincount.default, A.unique_dim.default, A.unique_consecutive.default, A._unique.default, A._unique2.default}  # fmt: skip
"""Ops whose result's value or shape is read on the host: on CUDA each waits for the device."""


class SyncRecorder(TorchDispatchMode):
    """Records the aten ops of a block that make the host wait for a CUDA device: those of
    :data:`SYNCING` (``item``, ``float(t)``, ``bool(t)``, ``nonzero``, ``unique``, ...),
    ``repeat_interleave`` without ``output_size``, indexing by a boolean mask (a ``nonzero``
    inside), copies between the host and a device without ``non_blocking`` (PyTorch synchronises
    the stream after them), and tensors made from host data (Python lists, numpy arrays: on CUDA
    they reach the device by such a copy). On the CPU nothing crosses devices, so the last rule
    stands in for copies the CPU cannot show; 0-dimensional ones are Python scalars, which kernels
    take by value. Reads of ``ignore`` (the optimisers' step counters, which torch.optim keeps on
    the host on every device) are free."""

    def __init__(self, ignore=()):
        super().__init__()
        self.ignore = list(ignore)
        self.calls: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._syncs(func, args, kwargs):
            where = [f for f in traceback.extract_stack()[:-2] if "scene3d" in f.filename]
            self.calls.append(f"{func} at {where[-1].filename.rsplit('scene3d/', 1)[-1]}:{where[-1].lineno}" if where else str(func))
        return func(*args, **kwargs)

    def _syncs(self, func, args, kwargs) -> bool:
        packet = func.overloadpacket
        if func in SYNCING:
            return not (func is A._local_scalar_dense.default and any(args[0] is t for t in self.ignore))
        if packet is A.repeat_interleave and func is not A.repeat_interleave.self_int:
            return kwargs.get("output_size") is None
        if packet in (A.index, A.index_put, A.index_put_, A._index_put_impl_):
            return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])
        if func is A.lift_fresh.default:
            return args[0].ndim >= 1
        if func is A._to_copy.default and "device" in kwargs:
            return torch.device(kwargs["device"]).type != args[0].device.type and not kwargs.get("non_blocking", False)
        if func is A.copy_.default:
            return args[0].device.type != args[1].device.type and not (len(args) > 2 and args[2]) and not kwargs.get("non_blocking", False)
        return False


def test_the_recorder_catches_what_syncs():
    x = torch.randn(8, 3)
    cases = {"float": lambda: float(x[0, 0]), "bool": lambda: bool((x > 0).any()), "mask": lambda: x[x[:, 0] > 0], "nonzero": lambda: torch.nonzero(x),
             "list index": lambda: x[:, [0, 2]], "unique": lambda: torch.unique(x), "repeat": lambda: torch.arange(3).repeat_interleave(torch.tensor([1, 2, 3]))}  # fmt: skip
    for name, fn in cases.items():
        with SyncRecorder() as rec:
            fn()
        assert rec.calls, name
    with SyncRecorder() as rec:  # what the sync-free path is made of
        mask = x[:, 0] > 0
        index, filled, count = compact(mask, 4)
        x[index].sum()
        torch.arange(3).repeat_interleave(2)
        x[:, 1:2] = 1.0
    assert rec.calls == []


# ---------------------------------------------------------------------------- fixtures
def _model(**kw) -> SlimmeRFModel:
    """A rank-4 field with structure, and an occupancy grid that leaves part of the box empty."""
    cfg = SlimmeRFConfig(rank=4, grid_init=16, occupancy_resolution=16, max_samples=64, **kw)
    torch.manual_seed(0)
    m = SlimmeRFModel(cfg, AABB, [16, 16, 16], rank=4)
    with torch.no_grad():
        for p in [*m.density_planes, *m.density_lines]:
            p.mul_(20.0)
        for p in [*m.app_planes, *m.app_lines]:
            p.mul_(5.0)
    m.update_occupancy(0)
    assert 0.05 < m.occupancy.occupied_fraction() < 0.95
    return m


def _batch(n: int = 192, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 3.0
    dirs = torch.nn.functional.normalize((torch.rand(n, 3, generator=g) - 0.5) * 0.8 - origins, dim=-1)
    return Batch(target=torch.rand(n, 3, generator=g), background=torch.rand(3, generator=g), rays=Rays(origins, dirs),
                 generator=torch.Generator().manual_seed(seed + 1))  # fmt: skip


def _step(m: SlimmeRFModel, sync_free: str, seed: int = 0):
    m.cfg.sync_free = sync_free
    batch = _batch(seed=seed)
    out = m.forward(batch, 0)
    losses = m.losses(out, batch, 0)
    loss = sum(losses.values())
    params = [p for p in m.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    m._in_flight, rank = None, m.train_rank
    m.train_rank = None
    return out, loss.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)], rank


# ---------------------------------------------------------------------------- (a) same results
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prefix_prob", [0.0, 1.0])
def test_sync_free_step_equals_the_batched_path(backend, prefix_prob):
    m = _model(backend=backend, prefix_prob=prefix_prob)
    for seed in (0, 1):
        ref, ref_loss, ref_grads, ref_rank = _step(m, "off", seed)
        got, loss, grads, rank = _step(m, "on", seed)
        assert rank == ref_rank  # the same prefix drawn from the step's generator
        assert got.num_samples >= ref.num_samples > 0  # the buffer holds every occupied sample (and padding)
        for name in ("rgb", "alpha", "depth"):
            assert_close(getattr(got, name), getattr(ref, name), name)
        assert_close(loss, ref_loss, "loss")
        for (name, _), g, r in zip(m.named_parameters(), grads, ref_grads):
            assert_close(g, r, f"gradient of {name}")
        assert ref.alpha.max() > 0.5 and any(g.abs().sum() > 0 for g in ref_grads)


def test_lattice_samples_are_the_batched_samples_in_place():
    m = _model()
    rays = _batch().rays
    near, far, _ = ray_aabb(rays.origins, rays.dirs, m.aabb.reshape(-1))
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    ref = sample_along_rays(rays.origins, rays.dirs, near, far, m.step_size, m.num_samples(), m.occupancy, True, g())
    lat = sample_lattice(rays.origins, rays.dirs, near, far, m.step_size, m.num_samples(), m.occupancy, True, g())
    assert lat.valid.shape == (len(rays), m.num_samples()) and lat.valid.sum() == ref.valid.sum() < lat.valid.numel() // 2
    for ray in range(len(rays)):  # each ray's valid intervals, in order
        assert torch.equal(lat.t_starts[ray][lat.valid[ray]], ref.t_starts[ray][ref.valid[ray]])
        assert torch.equal(lat.t_ends[ray][lat.valid[ray]], ref.t_ends[ray][ref.valid[ray]])
    assert torch.equal(lat.t_starts[~lat.valid], lat.t_ends[~lat.valid])  # invalid entries are empty intervals


def test_compact_puts_entries_in_order_and_counts_all():
    g = torch.Generator().manual_seed(0)
    for length, capacity in ((50, 64), (50, 10), (1, 1), (200, 37)):
        mask = torch.rand(length, generator=g) < 0.4
        index, filled, count = compact(mask, capacity)
        where = torch.nonzero(mask).reshape(-1)
        assert int(count) == len(where) and int(filled.sum()) == min(capacity, len(where))
        assert torch.equal(index[filled], where[:capacity])
        assert (index[~filled] == 0).all()


def test_dropped_samples_are_empty_space():
    """With a buffer smaller than the count, the render is that of the samples that fit (the
    first in lattice order): the rest composite as empty space, nothing else changes."""
    m = _model()
    batch = _batch()
    rays = batch.rays
    near, far, _ = ray_aabb(rays.origins, rays.dirs, m.aabb.reshape(-1))
    samples = sample_lattice(rays.origins, rays.dirs, near, far, m.step_size, m.num_samples(), m.occupancy)
    count = int(samples.valid.sum())
    kw = dict(background=batch.background, weight_threshold=m.cfg.weight_threshold, shade_topk=m.cfg.shade_topk, backend="torch")
    small, counts = render_rays_static(m.density, m.color, rays, samples, capacity=count // 2, shade_capacity=count // 2, **kw)
    assert int(counts.points) == count and small.num_samples == count // 2
    kept = samples.valid.reshape(-1) & (samples.valid.reshape(-1).cumsum(0) <= count // 2)
    fewer = type(samples)(samples.t_starts, samples.t_ends, kept.view_as(samples.valid))
    ref, _ = render_rays_static(m.density, m.color, rays, fewer, capacity=count, shade_capacity=count, **kw)
    for name in ("rgb", "alpha", "depth"):
        assert_close(getattr(small, name), getattr(ref, name), name)


# ---------------------------------------------------------------------------- (b) no syncs
class DeviceEngine(SingleDevice):
    """The engine as on an accelerator: reading a value is not free (the trainer keeps its
    divergence check on the device), whatever the device."""

    @property
    def host_sync_is_free(self) -> bool:
        return False


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return write_synthetic_scene(tmp_path_factory.mktemp("sync") / "scene", n_views=8, width=40, height=30, points=False)


OCCUPANCY_EVERY = 8


def _trainer(scene, out, device: str = "cpu", **model):
    cfg = dict(batch_rays=256, grid_init=24, grid_final=32, upsample_steps=(100,), alpha_mask_steps=(120,), rank=4, rank_upsilon=0.0, rank_cooldown=3,
               occupancy_every=OCCUPANCY_EVERY, occupancy_resolution=24, max_samples=96, prefix_prob=0.5)  # fmt: skip
    cfg.update(model)
    train = TrainConfig(max_steps=100, log_every=10, device=device)
    return create_trainer(scene, out, "slimmerf", SlimmeRFConfig(**cfg), "none", Strategy(), DataConfig(), train, engine=DeviceEngine(device))


def _counters(trainer) -> list[torch.Tensor]:
    return [s["step"] for opt in trainer.model.optimizers.values() for s in opt.state.values() if "step" in s]


def _recorded_steps(trainer, steps: range) -> list[str]:
    """What the recorder sees during training ``steps`` (the trainer first runs up to them). On
    CUDA the runtime's own check runs too: a stream synchronisation in those steps raises."""
    while trainer.step < steps.start:
        trainer.train_step()
    cuda = trainer.device.type == "cuda"
    if cuda:
        torch.cuda.set_sync_debug_mode("error")
    try:
        with SyncRecorder(ignore=_counters(trainer)) as rec:
            while trainer.step < steps.stop:
                trainer.train_step()
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(0)
    return rec.calls


# Steps whose after_step does no periodic work: the occupancy grid is refreshed after steps
# 7, 15, 23, ... (``occupancy_every`` 8; it measures cells with nonzero and unique), the alpha mask
# and the upsampling come at 100 and later. Steps 16-22 include prefix and full-rank steps and
# rank incrementations (upsilon 0, cooldown 3).
QUIET = range(16, 23)


@pytest.mark.parametrize("device", DEVICES)
def test_sync_free_training_steps_do_not_wait_for_the_device(scene, tmp_path, device):
    trainer = _trainer(scene, tmp_path / "run", device, sync_free="on")
    assert all((done % OCCUPANCY_EVERY) != 0 for done in range(QUIET.start + 1, QUIET.stop + 1))
    calls = _recorded_steps(trainer, QUIET)
    assert calls == [], calls
    assert trainer.model.sync_free and trainer.model.rank > 1


def test_the_batched_path_waits_for_the_device_every_step(scene, tmp_path):
    """What the recorder sees on the old path, over the same steps: the check has teeth."""
    calls = _recorded_steps(_trainer(scene, tmp_path / "run", sync_free="off"), QUIET)
    assert len(calls) >= 5 * len(QUIET), calls
    for what in ("nonzero", "sampling.py", "render.py"):
        assert any(what in c for c in calls), (what, calls)


def test_periodic_work_is_the_only_sync(scene, tmp_path):
    """Over a stretch with occupancy refreshes, only the refresh steps read from the device."""
    trainer = _trainer(scene, tmp_path / "run", sync_free="on")
    for _ in range(2):  # the first steps read what is then kept (the box's diagonal, whether the cameras are pinhole)
        trainer.train_step()
    syncing = []
    for _ in range(24):
        step = trainer.step
        with SyncRecorder(ignore=_counters(trainer)) as rec:
            trainer.train_step()
        if rec.calls:
            syncing.append(step)
    # after_step refreshes the occupancy grid after steps 7, 15, 23 (the first makes the grid and
    # checks its box; later ones measure every cell while warming up, a quarter and the occupied
    # ones, found by nonzero and unique, afterwards)
    assert syncing and set(syncing) <= {7, 15, 23}, syncing


# ---------------------------------------------------------------------------- (c) overflow
def test_overflow_is_counted_and_the_buffer_grows(scene, tmp_path):
    trainer = _trainer(scene, tmp_path / "run", sample_capacity=64, readout_lag=1, sync_free="on")
    model = trainer.model
    trainer.train_step()
    assert model.stats()["samples_dropped"] == 0  # nothing read yet (one step behind)
    trainer.train_step()  # reads step 0: it dropped, the buffer grows for step 2 on
    first = model.stats()
    assert first["samples_dropped"] > 0 and first["shading_dropped"] == 0  # what fits the point buffer fits the shading one
    assert first["sample_buffer"] > 64  # 2x the count read (rounded up to 1024, at most the lattice)
    trainer.train_step()  # reads step 1, which ran with the small buffer too
    second = model.stats()
    assert second["samples_dropped"] > first["samples_dropped"] and model._capacity.overflows == 2
    trainer.train_step()  # reads step 2: all its points fitted, but not the samples to shade (64 slots)
    assert model.stats()["samples_dropped"] == second["samples_dropped"] and model.stats()["shading_dropped"] > 0
    for _ in range(10):
        trainer.train_step()
    assert model.stats()["samples_dropped"] == second["samples_dropped"] and model._capacity.overflows == 2  # none once grown
    assert model._shade_capacity.overflows == 2
    record = trainer.read_out(trainer.timed_step())  # the training log line carries the totals
    assert record["samples_dropped"] == second["samples_dropped"] and record["sample_buffer"] >= 1024
    assert "dropped" in model.describe()


def test_buffer_follows_the_counts_down_and_up():
    cap = Capacity()
    assert cap.use(100_000) == 100_000  # before any count: the whole lattice
    cap.observe(0, 3000, cap.use(100_000), 100_000)
    assert cap.size == 4096 and cap.dropped == 0  # the first count sets it: 1.25 x 3000, rounded up to 1024
    cap.observe(1, 5000, cap.use(100_000), 100_000)
    assert cap.size == 10240 and cap.dropped == 5000 - 4096 and cap.overflows == 1  # at once to 2 x 5000
    for step in range(2, 17):
        cap.observe(step, 2000, cap.use(100_000), 100_000)
    assert cap.size == 10240  # 15 counts read at this size: not yet 16
    cap.observe(17, 2000, cap.use(100_000), 100_000)
    assert cap.size == 3072 and cap.overflows == 1 and cap.reads == 18  # 16 that fit in 0.8 of it: 1.25 x 2000
    cap.scale(0.5)
    assert cap.size == 3072  # fewer samples per ray to come: shrinks only once counts show it
    cap.scale(1.5)
    assert cap.size == 5120  # more (a finer grid, a shorter step): grows at once
    cap.observe(18, 10**6, cap.use(100_000), 100_000)
    assert cap.size == 100_000 and cap.use(50_000) == 50_000  # never more than the lattice


def test_lagged_readout_is_in_order_and_late():
    readout = LaggedReadout(lag=2)
    got = []
    for step in range(6):
        readout.push(step, torch.tensor([step * 1.0]), meta=f"s{step}")
        got.append([(s, float(v[0]), meta) for s, v, meta in readout.due(step)])
    assert got[:2] == [[], []] and got[2] == [(0, 0.0, "s0")] and got[5] == [(3, 3.0, "s3")]
    assert len(readout) == 2
    x = torch.arange(3)
    assert to_device_async(x, "cpu") is x


# ---------------------------------------------------------------------------- TRaIn, late
def test_train_decisions_are_the_reference_ones_read_late():
    """Fed the same losses, sync-free TRaIn raises the rank on the same steps (its cooldown
    counted from them), and the rank takes effect ``readout_lag`` steps later."""
    from scene3d.renderers.rays.static import StaticCounts

    losses = [1.0, 0.9, 0.5, 0.2, 0.19, 0.05, 0.049, 0.01, 0.0099, 0.002, 0.0019, 0.001]
    ref = _model(rank_upsilon=0.4, rank_cooldown=1)
    ref.current_rank = 1
    late = copy.deepcopy(ref)
    zero = torch.zeros((), dtype=torch.int64)
    ranks_ref, ranks_late = [], []
    for step, loss in enumerate(losses):
        ref.after_step(step, {"rgb": torch.tensor(loss)})
        late._in_flight = (StaticCounts(zero, zero), 1, 1, 1)
        late.after_step(step, {"rgb": torch.tensor(loss)})
        ranks_ref.append(ref.rank)
        ranks_late.append(late.rank)
    lag = late.cfg.readout_lag
    assert ranks_ref[-1] > 2 and ranks_late[lag:] == ranks_ref[:-lag]
    assert late.last_rank_step == ref.last_rank_step


# ---------------------------------------------------------------------------- (d) presets, devices
def test_presets_batch_sizes():
    assert SlimmeRFConfig(**PRESETS["default"].get("model", {})).batch_rays == 4096  # the reference's, on CUDA
    assert SlimmeRFConfig(**PRESETS["cpu"]["model"]).batch_rays == 2048


def test_sync_free_is_chosen_by_device():
    m = _model()
    assert not m.sync_free  # auto, on the CPU: reading is free, the batched path is cheaper
    m.cfg.sync_free = "on"
    assert m.sync_free
    m.cfg.sync_free = "auto"
    m.aabb = m.aabb.to("meta")
    assert m.sync_free


@CUDA
@pytest.mark.cuda
def test_default_preset_trains_4096_rays_sync_free_on_cuda(scene, tmp_path):
    from scene3d.train.cli import build_args_class

    args = build_args_class("slimmerf", "none", "default")
    model_cfg = args.__dataclass_fields__["model"].default_factory()
    assert model_cfg.batch_rays == 4096
    train = TrainConfig(max_steps=10, log_every=5, device="cuda")
    trainer = create_trainer(scene, tmp_path / "run", "slimmerf", model_cfg, "none", Strategy(), DataConfig(), train)
    assert trainer.model.sync_free  # auto on CUDA
    stats = trainer.train_step()
    assert len(trainer.data.ray_batch(0, trainer.model.cfg.batch_rays, trainer.engine.generator(0, 0)).rays) == 4096
    assert torch.isfinite(stats["loss"])
