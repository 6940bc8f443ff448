"""Multiresolution hash-grid encoding (Instant-NGP; the grid of Zip-NeRF and PyNeRF), with
tiny-cuda-nn's conventions exactly, so that every backend shares one parameter vector and a twin
loads tcnn's ``params`` as they are.

Levels. Level l < L has scale and resolution (vertices per axis), computed in float32 as tcnn does,

    s_l = 2^(l log2 b) N_min - 1,    R_l = ceil(s_l) + 1,

with per-level scale b (given, or ``(N_max / N_min)^(1 / (L - 1))`` from the maximum resolution).
Its table holds ``T_l = min(next_multiple(R_l^3, 8), 2^log2_table_size)`` entries of F features.
A level is *dense* when ``R_l^3 <= 2^log2_table_size``: lattice point (i, j, k) is entry
``(i + j R_l + k R_l^2) % T_l``; otherwise it is *hashed*: entry
``(i ^ j 2654435761 ^ k 805459861) % T_l``, all in uint32 arithmetic (x gets the prime 1, so
neighbours along x share cache lines).

Lookup. A point x in [0, 1]^3 has, per axis, ``pos = s_l x + 0.5`` (float32, rounded once as by
``fmaf``), lattice cell ``g = floor(pos)`` and fraction ``t = pos - g``; its level-l features are
the trilinear blend of its cell's 8 corners,

    f_l(x) = sum_{c in {0,1}^3} prod_d (c_d ? t_d : 1 - t_d) V_l[entry(g + c)],

and the output row is ``[f_0, ..., f_{L-1}]``: level l feature f at column ``l F + f``. The +0.5
staggers levels against each other (Instant-NGP appendix A); corner coordinate R_l is reached and
wraps modulo T_l in dense levels, exactly as in tcnn. Outside [0, 1]^3 indices still wrap (no error).

Parameters. One flat vector ``params`` [n_params]: level by level, entry-major, features innermost,
so entry e, feature f of level l is ``params[(offset_l + e) F + f]`` with ``offset_0 = 0``,
``offset_{l+1} = offset_l + T_l``. Initialised uniformly in [-1e-4, 1e-4] (tcnn's range; its pcg32
stream is not reproduced). Named ``params`` like tcnn's module, so a tcnn ``Encoding`` state dict
loads with ``load_state_dict``.

Backends (chosen by :class:`HashGrid` per call):

* ``"tcnn"``: ``tinycudann.Encoding`` (CUDA tensors; float32 parameters), fed the module's params;
* ``"numba"``: CPU kernels (:mod:`scene3d.renderers.rays._numba_hash`) for the forward and both
  gradients, wrapped in an autograd Function (first-order only);
* ``"torch"``: :func:`hash_grid_torch`, gathers differentiated by autograd, any device (the twin);
* ``"auto"``: tcnn for CUDA inputs when it imports, else torch on CUDA, numba on the CPU;
  the choice is logged once.

Use (Zip-NeRF weights each level's features per point and appends a per-level scale feature):

    grid = HashGrid(HashGridConfig(levels=10, features_per_level=4, log2_table_size=21, max_resolution=8192))
    feats = grid(x01)                               # [M, 40], x01 [M, 3] in [0, 1]^3
    feats = grid(x01, level_weights=w)              # w [M, 10]: level l's features times w[:, l]
    grid.level_square_means()                       # [10] mean(V_l^2), detached
    grid.layout.scales                              # s_l: level l's cells are 1 / s_l wide
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np
import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

HashGridBackend = Literal["auto", "tcnn", "numba", "torch"]
PRIMES = (1, 2654435761, 805459861)
"""tcnn's CoherentPrime hash factors for x, y, z."""
MASK32 = 0xFFFFFFFF
INIT_RANGE = 1e-4
_LAUNCH = threading.Lock()
"""Serialises the numba kernels: the workqueue threading layer must not be entered from two
threads at once (and each launch already uses every core)."""
FEATURES_PER_LEVEL = (1, 2, 4, 8)
"""What tcnn compiles (N_FEATURES_PER_LEVEL); kept for every backend so their layouts agree."""


@dataclass(frozen=True)
class HashGridConfig:
    """Hyperparameters of a hash grid (tcnn's ``HashGrid`` encoding with Linear interpolation)."""

    levels: int = 16
    """L, number of levels."""
    features_per_level: int = 2
    """F, features per table entry: 1, 2, 4 or 8."""
    log2_table_size: int = 19
    """T: hashed levels hold 2^T entries; levels whose R^3 fits are stored densely."""
    min_resolution: int = 16
    """N_min: level 0 has N_min vertices per axis (scale N_min - 1)."""
    max_resolution: int = 2048
    """N_max: the finest level's nominal resolution, giving b = (N_max / N_min)^(1 / (L - 1)),
    unless ``per_level_scale`` is set."""
    per_level_scale: Optional[float] = None
    """b, the growth factor between levels; overrides ``max_resolution`` when set."""
    backend: HashGridBackend = "auto"
    """Which implementation runs (module docstring)."""

    def __post_init__(self):
        if self.levels < 1:
            raise ValueError(f"levels must be at least 1, got {self.levels}")
        if self.features_per_level not in FEATURES_PER_LEVEL:
            raise ValueError(f"features_per_level must be one of {FEATURES_PER_LEVEL}, got {self.features_per_level}")
        if not 1 <= self.log2_table_size <= 30:
            raise ValueError(f"log2_table_size must be in [1, 30], got {self.log2_table_size}")
        if self.min_resolution < 2:
            raise ValueError(f"min_resolution must be at least 2, got {self.min_resolution}")
        if self.per_level_scale is None and self.max_resolution < self.min_resolution:
            raise ValueError(f"max_resolution {self.max_resolution} is below min_resolution {self.min_resolution}")
        if self.per_level_scale is not None and not self.per_level_scale >= 1.0:
            raise ValueError(f"per_level_scale must be at least 1, got {self.per_level_scale}")
        if self.backend not in ("auto", "tcnn", "numba", "torch"):
            raise ValueError(f"unknown hash grid backend {self.backend!r}; choose auto, tcnn, numba or torch")

    @property
    def growth(self) -> float:
        """b: ``per_level_scale``, else ``exp(log(N_max / N_min) / (L - 1))`` (1 for a single level)."""
        if self.per_level_scale is not None:
            return float(self.per_level_scale)
        if self.levels == 1:
            return 1.0
        return math.exp(math.log(self.max_resolution / self.min_resolution) / (self.levels - 1))

    def tcnn_config(self) -> dict:
        """The ``encoding_config`` of ``tinycudann.Encoding(3, ...)`` with the same layout."""
        return {
            "otype": "HashGrid",
            "n_levels": self.levels,
            "n_features_per_level": self.features_per_level,
            "log2_hashmap_size": self.log2_table_size,
            "base_resolution": self.min_resolution,
            "per_level_scale": self.growth,
            "interpolation": "Linear",
        }


@dataclass(frozen=True)
class HashGridLayout:
    """Where each level lives in ``params`` and how it is indexed (module docstring for the maths)."""

    features: int
    """F."""
    scales: tuple[float, ...]
    """s_l, float32 values: ``pos = s_l x + 0.5``; one cell is 1 / s_l wide in x."""
    resolutions: tuple[int, ...]
    """R_l = ceil(s_l) + 1 vertices per axis."""
    sizes: tuple[int, ...]
    """T_l entries."""
    offsets: tuple[int, ...]
    """[L + 1] cumulative entry offsets; level l's features are ``params[offsets[l] F : offsets[l+1] F]``."""
    dense: tuple[bool, ...]
    """R_l^3 <= 2^T: indexed as x + y R + z R^2, else hashed."""

    @property
    def levels(self) -> int:
        return len(self.scales)

    @property
    def n_params(self) -> int:
        return self.offsets[-1] * self.features

    @functools.cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(offsets int64 [L+1], scales float32 [L], resolutions int64 [L], dense bool [L]) for the kernels."""
        return (
            np.asarray(self.offsets, np.int64),
            np.asarray(self.scales, np.float32),
            np.asarray(self.resolutions, np.int64),
            np.asarray(self.dense, np.bool_),
        )


def hash_grid_layout(config: HashGridConfig) -> HashGridLayout:
    """The levels of ``config`` as tcnn's ``GridEncodingTemplated`` constructor lays them out:
    ``s_l = exp2f(l * log2f(b)) * N_min - 1`` in float32, ``R_l = ceil(s_l) + 1``,
    ``T_l = min(next_multiple(R_l^3, 8), 2^T)``. ``log2f`` and ``exp2f`` are rounded correctly
    (float64 rounded to float32), as glibc's are in tcnn's host code that sizes the levels
    (numpy's float32 ``exp2`` is an ulp off for some levels); tcnn's device code uses fast-math
    ``exp2f``, which may differ from this by an ulp or two for a non-integer ``l log2 b``."""
    f32 = np.float32
    log2_b = f32(math.log2(float(f32(config.growth))))
    table = 1 << config.log2_table_size
    scales, resolutions, sizes, offsets, dense = [], [], [], [0], []
    for lvl in range(config.levels):
        s = f32(math.exp2(float(f32(lvl) * log2_b))) * f32(config.min_resolution) - f32(1.0)
        r = int(np.ceil(s)) + 1
        cube = r**3
        size = min(-(-cube // 8) * 8, table)
        scales.append(float(s))
        resolutions.append(r)
        sizes.append(size)
        offsets.append(offsets[-1] + size)
        dense.append(cube <= table)
    return HashGridLayout(config.features_per_level, tuple(scales), tuple(resolutions), tuple(sizes), tuple(offsets), tuple(dense))


# ---------------------------------------------------------------------- indexing (torch)
def _mul_u32(a: Tensor, b: int) -> Tensor:
    """``(a * b) mod 2^32`` for int64 ``a`` in [0, 2^32) and ``0 <= b < 2^32``, without int64
    overflow: b is split into 16-bit halves."""
    lo, hi = b & 0xFFFF, b >> 16
    return (a * lo + (((a * hi) & 0xFFFF) << 16)) & MASK32


def coherent_prime_hash(corners: Tensor) -> Tensor:
    """tcnn's hash of integer lattice points [..., 3] (int64, any sign: taken mod 2^32 as tcnn's
    uint32 cast does): ``x ^ (y * 2654435761) ^ (z * 805459861)`` mod 2^32, as int64 [...]."""
    u = corners & MASK32
    return u[..., 0] ^ _mul_u32(u[..., 1], PRIMES[1]) ^ _mul_u32(u[..., 2], PRIMES[2])


def grid_index(corners: Tensor, resolution: int, size: int, dense: bool) -> Tensor:
    """Entry [...] (int64 in [0, size)) of lattice points [..., 3] in one level: dense
    ``(x + y R + z R^2) mod 2^32 % size`` or hashed ``coherent_prime_hash % size``."""
    if dense:
        u = corners & MASK32
        flat = (u[..., 0] + _mul_u32(u[..., 1], resolution) + _mul_u32(u[..., 2], resolution * resolution)) & MASK32
    else:
        flat = coherent_prime_hash(corners)
    return flat % size


def _corner_entries(cell: Tensor, resolution: int, size: int, dense: bool) -> Tensor:
    """[M, 8] entries of the corners of lattice cells ``cell`` [M, 3] (int64) in one level; corner
    c = b_x + 2 b_y + 4 b_z is ``cell + b``. :func:`grid_index` of the 8 corners, computed per axis
    (2 coordinates each) and combined by broadcasting: a quarter of the integer work."""
    u = cell & MASK32
    u = torch.stack([u, (u + 1) & MASK32], dim=-1)  # [M, 3, 2]: axis, bit (uint32 wrap as in tcnn)
    if dense:
        ax, ay, az = u[:, 0], _mul_u32(u[:, 1], resolution), _mul_u32(u[:, 2], resolution * resolution)
        flat = (az[:, :, None, None] + ay[:, None, :, None] + ax[:, None, None, :]) & MASK32
    else:
        ax, ay, az = u[:, 0], _mul_u32(u[:, 1], PRIMES[1]), _mul_u32(u[:, 2], PRIMES[2])
        flat = az[:, :, None, None] ^ ay[:, None, :, None] ^ ax[:, None, None, :]
    return (flat % size).reshape(-1, 8)  # [M, b_z, b_y, b_x] -> corner b_x + 2 b_y + 4 b_z


def hash_grid_torch(x: Tensor, params: Tensor, layout: HashGridLayout) -> Tensor:
    """The hash grid in PyTorch (differentiable w.r.t. ``params`` and ``x``, any device): [M, L*F]
    features of points ``x`` [M, 3] (float32, [0, 1]^3) from flat ``params`` [n_params] float32."""
    _check(x, params, layout)
    x = x.to(torch.float32)
    m = x.shape[0]
    table = params.view(-1, layout.features)
    out = []
    for lvl in range(layout.levels):
        pos = (x.double() * layout.scales[lvl] + 0.5).to(torch.float32)  # fmaf: one rounding
        g = torch.floor(pos)
        t = pos - g  # d t / d x = s_l; floor contributes no gradient
        entry = _corner_entries(g.long(), layout.resolutions[lvl], layout.sizes[lvl], layout.dense[lvl]) + layout.offsets[lvl]
        wa = torch.stack([1.0 - t, t], dim=-1)  # [M, 3, 2]: axis, bit
        wxy = wa[:, 1, :, None] * wa[:, 0, None, :]  # [M, b_y, b_x]: w_x w_y
        w = (wa[:, 2, :, None, None] * wxy[:, None]).reshape(m, 8)  # (w_x w_y) w_z, tcnn's order
        out.append((w[..., None] * table[entry]).sum(1))
    return torch.cat(out, dim=1)


# ---------------------------------------------------------------------- numba (CPU)
class _NumbaHashGrid(torch.autograd.Function):
    """:func:`hash_grid_torch` on the CPU by numba kernels, with both gradients by hand."""

    @staticmethod
    def forward(ctx, x: Tensor, params: Tensor, layout: HashGridLayout) -> Tensor:
        from scene3d.renderers.rays import _numba_hash as K

        xs = np.ascontiguousarray(x.detach().numpy(), np.float32)
        ps = params.detach().contiguous().numpy()
        m, L, F = xs.shape[0], layout.levels, layout.features
        out = np.empty((m, L * F), np.float32)
        with _LAUNCH:
            K.grid_forward(xs, ps, *layout.arrays, F, np.empty((L, m, F), np.float32), out)
        ctx.save_for_backward(x, params)  # autograd then refuses a backward after either changed in place
        ctx.layout = layout
        return torch.from_numpy(out)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        from scene3d.renderers.rays import _numba_hash as K

        x, params = ctx.saved_tensors
        layout: HashGridLayout = ctx.layout
        grad_x = grad_params = None
        xs, L, F = np.ascontiguousarray(x.detach().numpy(), np.float32), layout.levels, layout.features
        with _LAUNCH:
            g = np.empty((L, xs.shape[0], F), np.float32)
            K.level_major(np.ascontiguousarray(grad_out.numpy(), np.float32), g)
            if ctx.needs_input_grad[1]:
                grad = np.empty(layout.n_params, np.float32)
                K.grid_backward_params(xs, g, *layout.arrays, F, grad)
                grad_params = torch.from_numpy(grad)
            if ctx.needs_input_grad[0]:
                grad = np.zeros((xs.shape[0], 3), np.float32)
                K.grid_backward_x(xs, params.detach().contiguous().numpy(), g, *layout.arrays, F, grad)
                grad_x = torch.from_numpy(grad)
        return grad_x, grad_params, None


def hash_grid_numba(x: Tensor, params: Tensor, layout: HashGridLayout) -> Tensor:
    """:func:`hash_grid_torch` by numba kernels (CPU tensors; gradients w.r.t. ``params`` and ``x``)."""
    _check(x, params, layout)
    if x.device.type != "cpu" or params.device.type != "cpu":
        raise ValueError("the numba hash grid runs on CPU tensors; use backend='torch' or 'tcnn' on CUDA")
    return _NumbaHashGrid.apply(x.to(torch.float32), params, layout)


# ---------------------------------------------------------------------- backend choice
@functools.cache
def tcnn_available() -> bool:
    """True when ``tinycudann`` imports (it needs a CUDA device at import)."""
    try:
        import tinycudann  # noqa: F401
    except Exception:
        return False
    return True


@functools.cache
def _announce(choice: str, reason: str) -> None:
    log.info("hash grid: %s (%s)", choice, reason)


def resolve_hash_backend(backend: HashGridBackend, device: torch.device) -> str:
    """The backend that runs for inputs on ``device``: "auto" is tcnn on CUDA when it imports,
    else torch on CUDA and numba on the CPU (announced once per choice); an explicit backend is
    checked against the device."""
    cuda = torch.device(device).type == "cuda"
    if backend == "auto":
        if cuda and tcnn_available():
            choice, text, reason = "tcnn", "the tiny-cuda-nn grid", "installed"
        elif cuda:
            choice, text, reason = "torch", "the PyTorch grid", "tiny-cuda-nn not installed"
        elif torch.device(device).type == "cpu":
            why = "inputs on the CPU" if tcnn_available() else "tiny-cuda-nn not installed"
            choice, text, reason = "numba", "the numba CPU kernels", why
        else:
            choice, text, reason = "torch", "the PyTorch grid", f"inputs on {torch.device(device).type}"
        _announce(text, reason)
        return choice
    if backend == "tcnn" and not (cuda and tcnn_available()):
        raise RuntimeError("backend='tcnn' needs CUDA tensors and tiny-cuda-nn (pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch)")
    if backend == "numba" and torch.device(device).type != "cpu":
        raise ValueError("backend='numba' runs on the CPU only")
    if backend not in ("tcnn", "numba", "torch"):
        raise ValueError(f"unknown hash grid backend {backend!r}; choose auto, tcnn, numba or torch")
    return backend


def _check(x: Tensor, params: Tensor, layout: HashGridLayout) -> None:
    assert x.ndim == 2 and x.shape[1] == 3, f"x must be [M, 3], got {tuple(x.shape)}"
    assert params.shape == (layout.n_params,), f"params must be [{layout.n_params}], got {tuple(params.shape)}"
    assert params.dtype == torch.float32, f"params must be float32, got {params.dtype}"


# ---------------------------------------------------------------------- module
class HashGrid(nn.Module):
    """A multiresolution hash grid: ``forward(x [M, 3] in [0, 1]^3) -> [M, L*F]``, level-major
    (level l feature f at column ``l F + f``; ``.view(M, L, F)`` gives per-level features).

    ``params`` [n_params] float32 is the only parameter and state (module docstring for its
    layout). The backend is chosen per call from ``config.backend`` and the inputs' device.
    """

    def __init__(self, config: HashGridConfig = HashGridConfig()):
        super().__init__()
        self.config = config
        self.layout = hash_grid_layout(config)
        self.params = nn.Parameter(torch.empty(self.layout.n_params, dtype=torch.float32).uniform_(-INIT_RANGE, INIT_RANGE))
        self._tcnn: dict = {}  # device -> tinycudann.Encoding, made on first use (not a submodule: no second copy in state_dict)

    @property
    def levels(self) -> int:
        return self.layout.levels

    @property
    def features_per_level(self) -> int:
        return self.layout.features

    @property
    def output_dim(self) -> int:
        return self.layout.levels * self.layout.features

    def forward(self, x: Tensor, level_weights: Optional[Tensor] = None) -> Tensor:
        """[M, L*F] float32 features at ``x`` [M, 3] ([0, 1]^3). ``level_weights`` [M, L] multiplies
        level l's F features of point i by ``level_weights[i, l]`` (Zip-NeRF's erf downweighting;
        differentiable w.r.t. the weights too)."""
        assert x.ndim == 2 and x.shape[1] == 3, f"x must be [M, 3], got {tuple(x.shape)}"
        m, L, F = x.shape[0], self.layout.levels, self.layout.features
        if level_weights is not None:
            assert level_weights.shape == (m, L), f"level_weights must be [{m}, {L}], got {tuple(level_weights.shape)}"
        if x.device != self.params.device:
            raise ValueError(f"points are on {x.device} but the grid is on {self.params.device}")
        choice = resolve_hash_backend(self.config.backend, x.device)
        if choice == "tcnn":
            out = self._forward_tcnn(x)
        elif choice == "numba":
            out = hash_grid_numba(x, self.params, self.layout)
        else:
            out = hash_grid_torch(x, self.params, self.layout)
        if level_weights is not None:
            out = (out.view(m, L, F) * level_weights[..., None].to(out.dtype)).view(m, L * F)
        return out

    def level_params(self, level: int) -> Tensor:
        """Level ``level``'s table, a [T_l, F] view of ``params``."""
        lo, hi = self.layout.offsets[level], self.layout.offsets[level + 1]
        return self.params[lo * self.layout.features : hi * self.layout.features].view(hi - lo, self.layout.features)

    def level_square_means(self) -> Tensor:
        """[L] mean of V_l^2 over all entries and features of each level's table (padding of dense
        levels included), detached: Zip-NeRF's appended scale feature reads
        ``sqrt(eps^2 + mean(stop_grad(V_l)^2))``."""
        p = self.params.detach()
        per_level = [p[a * self.layout.features : b * self.layout.features].square().mean() for a, b in zip(self.layout.offsets[:-1], self.layout.offsets[1:])]
        return torch.stack(per_level)

    def _forward_tcnn(self, x: Tensor) -> Tensor:
        """tcnn's forward on this module's ``params``: the encoding's own parameter is replaced by
        ours before each call (same tensor, so gradients land in ``self.params``)."""
        _check(x, self.params, self.layout)
        if x.shape[0] == 0:
            return x.new_zeros(0, self.output_dim, dtype=torch.float32)
        enc = self._tcnn_encoding(x.device)
        enc.params = self.params
        with torch.cuda.device(x.device):
            return enc(x.to(torch.float32)).to(torch.float32)

    def _tcnn_encoding(self, device: torch.device):
        """The ``tinycudann.Encoding`` (float32) for ``device``, made on first use."""
        key = str(device)
        if key not in self._tcnn:
            import tinycudann

            with torch.cuda.device(device):
                enc = tinycudann.Encoding(3, self.config.tcnn_config(), dtype=torch.float32)
            if enc.params.numel() != self.layout.n_params or enc.n_output_dims != self.output_dim:
                raise RuntimeError(
                    f"tiny-cuda-nn lays this grid out with {enc.params.numel()} params and {enc.n_output_dims} outputs; "
                    f"expected {self.layout.n_params} and {self.output_dim}"
                )
            self._tcnn[key] = enc
        return self._tcnn[key]

    def extra_repr(self) -> str:
        c, lay = self.config, self.layout
        n_dense = sum(lay.dense)
        return (
            f"levels={c.levels}, features_per_level={c.features_per_level}, log2_table_size={c.log2_table_size}, "
            f"resolutions={lay.resolutions[0]}..{lay.resolutions[-1]} (b={c.growth:.4f}), dense_levels={n_dense}, "
            f"n_params={lay.n_params}, backend={c.backend}"
        )
