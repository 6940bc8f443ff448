"""Small constructed scenes shared by the densification tests: cameras looking down +z and a
GaussianModel built from explicit values."""

from __future__ import annotations

import math

import torch

from scene3d.cameras import Cameras
from scene3d.models.gaussians import GaussianConfig, GaussianModel

W, H, F = 64, 48, 60.0


def front_camera(x: float = 0.0, width: int = W, height: int = H) -> Cameras:
    """One pinhole camera at (x, 0, 0) looking along +z (OpenCV convention)."""
    w2c = torch.eye(4)[None]
    w2c[0, 0, 3] = -x
    return Cameras.create(w2c, F, F, width / 2, height / 2, width, height)


def model_from(means, scales, opacities, colors=None, scene_scale: float = 1.0) -> GaussianModel:
    """A degree-0 GaussianModel with the given means [N, 3], isotropic scales [N] and opacities [N]."""
    means = torch.as_tensor(means, dtype=torch.float32).clone()
    n = len(means)
    cols = torch.full((n, 3), 0.5) if colors is None else torch.as_tensor(colors, dtype=torch.float32)
    model = GaussianModel.from_points(means.numpy(), cols.numpy(), GaussianConfig(sh_degree=0), scene_scale=scene_scale)
    with torch.no_grad():
        model.params["scales"].copy_(torch.log(torch.as_tensor(scales, dtype=torch.float32))[:, None].expand(n, 3))
        o = torch.as_tensor(opacities, dtype=torch.float32)
        model.params["opacities"].copy_(torch.log(o / (1 - o)))
    return model


def prime_adam(model: GaussianModel) -> None:
    """One optimiser step so every parameter has Adam moments to keep aligned."""
    loss = sum((p * (i + 1)).sum() for i, p in enumerate(model.params.values()))
    loss.backward()
    for opt in model.optimizers.values():
        opt.step()
        opt.zero_grad()


def assert_adam_aligned(model: GaussianModel) -> None:
    for name, p in model.params.items():
        opt = model.optimizers[name]
        assert opt.param_groups[0]["params"][0] is p
        for key, value in opt.state[p].items():
            if torch.is_tensor(value) and value.ndim > 0:
                assert value.shape == p.shape, (name, key)


def logit(p: float) -> float:
    return math.log(p / (1 - p))
