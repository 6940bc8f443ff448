"""Ray / axis-aligned box intersection by the slab method.

A ray ``o + t d`` is inside the slab ``lo_k <= x_k <= hi_k`` of axis k for t between
``(lo_k - o_k) / d_k`` and ``(hi_k - o_k) / d_k`` (in either order). The ray is inside the box
where it is inside all three slabs, so

    t_min = max_k min(t_lo_k, t_hi_k),    t_max = min_k max(t_lo_k, t_hi_k).

A zero direction component ``d_k = 0`` would divide 0 by 0 when the origin lies on a face; such an
axis is handled without division: its slab is (-inf, inf) when ``lo_k <= o_k <= hi_k``, else empty.

The returned interval is ``near = max(t_min, near_min)``, ``far = t_max``, and a ray hits when the
interval is non-empty, ``far > near``; this covers rays starting inside the box (t_min < 0, so
near = near_min) and boxes behind the ray (far <= near_min). Missed rays get ``near = far = 0``,
so a sampler stepping from near to far produces nothing for them. A ray with a zero direction
never hits.

The ``"nerfacc"`` backend calls ``nerfacc.ray_aabb_intersect`` (CUDA only) and converts its output
to these semantics: nerfacc reports a hit also when the box ends before ``near_min``.
"""

from __future__ import annotations

import functools
from typing import Literal, Sequence

import torch
from torch import Tensor

AabbBackend = Literal["torch", "nerfacc"]


def as_aabb(aabb: Tensor | Sequence[float], like: Tensor, check: bool = True) -> Tensor:
    """``aabb`` as a [6] tensor (xmin, ymin, zmin, xmax, ymax, zmax) with ``like``'s dtype and
    device. ``check=False`` skips the test that max exceeds min: it reads the box's values, which
    for a box on an accelerator waits for the device (a box its owner checked when making it)."""
    box = torch.as_tensor(aabb, dtype=like.dtype, device=like.device).reshape(-1)
    assert box.shape == (6,), f"aabb must have 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax), got {tuple(box.shape)}"
    if check:
        assert bool((box[3:] > box[:3]).all()), f"aabb max must exceed min on every axis, got {box.tolist()}"
    return box


def ray_aabb(
    origins: Tensor,  # [N, 3]
    dirs: Tensor,  # [N, 3], need not be unit (t is then in units of |d|)
    aabb: Tensor | Sequence[float],  # [6] (xmin, ymin, zmin, xmax, ymax, zmax)
    near_min: float = 0.0,
    *,
    backend: AabbBackend = "torch",
    check: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Where rays enter and leave a box (``check``: as :func:`as_aabb`'s).

    Returns:
        near: [N], far: [N] ray parameters (0 for misses), hit: [N] bool.
    """
    n = origins.shape[0]
    assert origins.shape == (n, 3), f"origins must be [N, 3], got {tuple(origins.shape)}"
    assert dirs.shape == (n, 3), f"dirs must be [{n}, 3], got {tuple(dirs.shape)}"
    box = as_aabb(aabb, origins, check)
    if backend == "nerfacc":
        return _ray_aabb_nerfacc(origins, dirs, box, near_min)
    if backend != "torch":
        raise ValueError(f"unknown ray_aabb backend {backend!r}; choose torch or nerfacc")
    lo, hi = box[:3], box[3:]
    parallel = dirs == 0
    safe = torch.where(parallel, torch.ones_like(dirs), dirs)
    t1 = (lo - origins) / safe
    t2 = (hi - origins) / safe
    inside = (origins >= lo) & (origins <= hi)
    inf = torch.full_like(t1, float("inf"))
    t_lo = torch.where(parallel, torch.where(inside, -inf, inf), torch.minimum(t1, t2))
    t_hi = torch.where(parallel, torch.where(inside, inf, -inf), torch.maximum(t1, t2))
    near = t_lo.amax(dim=-1).clamp_min(near_min)
    far = t_hi.amin(dim=-1)
    hit = (far > near) & ~parallel.all(dim=-1)
    return _misses_to_zero(near, far, hit)


def _misses_to_zero(near: Tensor, far: Tensor, hit: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    zero = torch.zeros_like(near)
    return torch.where(hit, near, zero), torch.where(hit, far, zero), hit


@functools.cache
def nerfacc_cuda_available() -> bool:
    """CUDA is present and nerfacc's CUDA extension loads (the first call may JIT-compile it,
    which takes minutes and needs nvcc)."""
    if not torch.cuda.is_available():
        return False
    try:
        from nerfacc.cuda._backend import _C
    except Exception:
        return False
    return _C is not None


def _ray_aabb_nerfacc(origins: Tensor, dirs: Tensor, box: Tensor, near_min: float) -> tuple[Tensor, Tensor, Tensor]:
    if origins.device.type != "cuda":
        raise RuntimeError("ray_aabb backend='nerfacc' needs CUDA tensors; use backend='torch'")
    if not nerfacc_cuda_available():
        raise RuntimeError("ray_aabb backend='nerfacc' needs nerfacc with its CUDA extension (nvcc); use backend='torch'")
    from nerfacc import ray_aabb_intersect

    t_min, t_max, hits = ray_aabb_intersect(
        origins.float().contiguous(), dirs.float().contiguous(), box.float()[None], near_plane=near_min, miss_value=0.0
    )
    near, far = t_min[:, 0].to(origins.dtype), t_max[:, 0].to(origins.dtype)
    return _misses_to_zero(near, far, hits[:, 0] & (far > near))
