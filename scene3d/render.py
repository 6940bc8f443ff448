"""Rendering a trained scene along camera paths: test views, orbits and spirals, to PNGs or mp4."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from scene3d.cameras import Cameras
from scene3d.geometry import look_at, rigid_inverse

PathKind = Literal["test", "orbit", "spiral"]

# Ceilings for videos, from the command line, camera-path files and the viewer's page alike: a video
# is rendered frame by frame, so these bound the time and memory one video can ask for.
MIN_SIDE, MAX_SIDE = 8, 8192  # width and height, pixels
MIN_FPS, MAX_FPS = 1.0, 240.0
MAX_FRAMES = 36_000  # 10 minutes at 60 fps


def check_video_settings(frames: int | None = None, fps: float | None = None, width: int | None = None, height: int | None = None) -> None:
    """Refuses video settings outside what a video can sensibly be (one sentence naming the option),
    before any frame is rendered or memory allocated for one."""
    from scene3d.errors import Scene3dError

    if frames is not None and not 1 <= frames <= MAX_FRAMES:
        raise Scene3dError(f"--frames {frames} is outside 1..{MAX_FRAMES:,}")
    if fps is not None and not (math.isfinite(fps) and MIN_FPS <= fps <= MAX_FPS):
        raise Scene3dError(f"--fps {fps} is outside {MIN_FPS:g}..{MAX_FPS:g}")
    for name, value in (("width", width), ("height", height)):
        if value is not None and not MIN_SIDE <= value <= MAX_SIDE:
            raise Scene3dError(f"--{name} {value} is outside {MIN_SIDE}..{MAX_SIDE} pixels")


def camera_path(ds, kind: PathKind = "orbit", frames: int = 120, width: int | None = None) -> Cameras:
    """Cameras along a smooth path through the (normalised) scene.

    orbit: a circle around the scene's vertical (+z) axis at the training cameras' mean height and
    distance, looking at the focus; spiral: an LLFF-style spiral around the mean training pose,
    for forward-facing captures. Intrinsics are the first training camera's (resized to ``width``).
    """
    base = ds.cameras[ds.train_indices[0]]
    c2w_all = ds.cameras.cam_to_world.double().numpy()
    centers = c2w_all[:, :3, 3]
    target = np.zeros(3)
    poses = []
    if kind == "orbit":
        rel = centers - target
        radius = float(np.linalg.norm(rel[:, :2], axis=-1).mean())
        height = float(rel[:, 2].mean())
        start = math.atan2(rel[0, 1], rel[0, 0])
        for k in range(frames):
            a = start + 2 * math.pi * k / frames
            eye = target + np.array([radius * math.cos(a), radius * math.sin(a), height])
            poses.append(look_at(eye, target, np.array([0.0, 0.0, 1.0])))
    elif kind == "spiral":
        mean_c = centers.mean(0)
        fwd = c2w_all[:, :3, 2].mean(0)
        fwd /= np.linalg.norm(fwd)
        right = c2w_all[:, :3, 0].mean(0)
        down = c2w_all[:, :3, 1].mean(0)
        spread = np.percentile(np.abs((centers - mean_c) @ np.stack([right, down], -1)), 90, axis=0) + 1e-3
        focus = mean_c + fwd * float(np.linalg.norm(mean_c - target) or 1.0)
        for k in range(frames):
            t = 2 * math.pi * 2 * k / frames
            eye = mean_c + right * spread[0] * math.cos(t) + down * spread[1] * math.sin(t) + fwd * 0.05 * math.sin(t / 2)
            poses.append(look_at(eye, focus, -down))
    else:
        raise ValueError(f"unknown path kind {kind!r}")
    w2c = rigid_inverse(torch.from_numpy(np.stack(poses))).float()
    cams = Cameras.create(w2c, base.fx[0], base.fy[0], base.cx[0], base.cy[0], base.width[0], base.height[0])
    if width is not None:
        h = round(int(base.height[0]) * width / int(base.width[0]))
        cams = cams.resized(width, h)
    return cams


@torch.no_grad()
def render_frames(model, cams: Cameras, device, background=None):
    """Yields uint8 [H, W, 3] frames, one per camera."""
    for i in range(len(cams)):
        out = model.render(cams[i].to(device), background=background)
        yield out.rgb[0].clamp(0, 1).mul(255).round().byte().cpu().numpy()


def write_video(frames, path: Path, fps: int = 30) -> Path:
    """Encodes frames to an mp4 (H.264 through imageio-ffmpeg), atomically. Frames of odd width or
    height get their last column or row repeated (H.264's 4:2:0 colour needs even sizes)."""
    import imageio.v2 as imageio

    from scene3d.atomic import atomic_path

    with atomic_path(path) as tmp:
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=8, macro_block_size=1) as writer:
            for f in frames:
                writer.append_data(np.pad(f, ((0, f.shape[0] % 2), (0, f.shape[1] % 2), (0, 0)), mode="edge"))
    return Path(path)


def render_camera_path(model, cam_path, to_model, device, output: Path, mode: str = "rgb", background=(0.0, 0.0, 0.0), width: int | None = None, height: int | None = None, progress=None) -> Path:
    """Renders a camera path (:class:`scene3d.viewer.camera.CameraPath`, input frame) of a model
    shown in the frame ``to_model`` maps the input frame to, to an mp4; ``progress`` wraps the frames."""
    from scene3d.viewer.frames import frame_image

    cams = cam_path.cameras(to_model, width=width, height=height)
    bg = torch.tensor(background, dtype=torch.float32, device=device)

    def frames():
        for i in range(len(cams)):
            with torch.no_grad():
                out = model.render(cams[i].to(device), background=bg)
            yield frame_image(out, mode, background)

    gen = frames() if progress is None else progress(frames(), len(cams))
    return write_video(gen, output, fps=max(int(round(cam_path.fps)), 1))
