"""``scene3d render``: test views beside their ground truth, orbit and spiral videos, and camera
paths saved by the viewer (for runs and scene files)."""

from __future__ import annotations

from pathlib import Path

import torch


def render_command(run: Path, *, path: str = "test", output: Path | None = None, frames: int = 120, fps: int = 30, width: int | None = None,
                   device: str = "auto", rank: int | None = None) -> Path:  # fmt: skip
    from rich.console import Console
    from rich.progress import track

    from scene3d.commands.common import apply_rank
    from scene3d.render import camera_path, render_frames, write_video
    from scene3d.runs import open_run
    from scene3d.device import pick_device
    from scene3d.train.evaluation import save_pair, target_image

    dev = pick_device(device)
    run_ = open_run(run)
    model = run_.load_model(dev)
    apply_rank(model, rank, run)
    ds = run_.dataset()
    colour = ds.background_for(run_.background_mode)
    bg = None if colour is None else torch.tensor(colour, device=dev)
    if path == "test":
        folder = output or (Path(run) / "renders" / "test")
        indices = ds.test_indices or ds.train_indices
        for i in track(indices, description="rendering test views"):
            with torch.no_grad():
                pred = model.render(ds.cameras[i].to(dev), background=bg).rgb[0].clamp(0, 1)
            save_pair(folder, Path(ds.names[i]).stem, pred, target_image(ds, i, bg, dev)[0])
        Console().print(f"wrote {len(indices)} test renders (prediction | ground truth) to {folder}")
        return folder
    cams = camera_path(ds, path, frames=frames, width=width)
    out = output or (Path(run) / "renders" / f"{path}.mp4")
    write_video(track(render_frames(model, cams, dev, bg), total=len(cams), description=f"rendering {path}"), out, fps=fps)
    Console().print(f"wrote {len(cams)} frames to {out}")
    return out


def render_path_command(target: Path, path_file: Path, *, output: Path | None = None, width: int | None = None, height: int | None = None,
                        mode: str = "rgb", device: str = "auto", rank: int | None = None) -> Path:  # fmt: skip
    """Renders a camera path saved by the viewer (input frame) for a run or a scene file."""
    from rich.console import Console
    from rich.progress import track

    from scene3d.commands.common import apply_rank
    from scene3d.render import render_camera_path
    from scene3d.device import pick_device
    from scene3d.viewer.camera import CameraPath
    from scene3d.viewer.target import load_target

    cam_path = CameraPath.load(path_file)
    dev = pick_device(device)
    target = load_target(Path(target), dev, max_thumbnails=0)
    apply_rank(target.model, rank, target.source)
    if output is None:
        folder = target.source / "renders" if target.kind == "run" else target.source.parent
        output = folder / f"{Path(path_file).stem}.mp4"
    if width is not None and height is None:
        height = max(2, round(cam_path.height * width / cam_path.width / 2) * 2)
    progress = lambda frames, n: track(frames, total=n, description=f"rendering {Path(path_file).name}")  # noqa: E731
    render_camera_path(target.model, cam_path, target.to_model, dev, Path(output), mode=mode, background=target.background, width=width, height=height, progress=progress)
    Console().print(f"wrote {cam_path.num_frames} frames ({width or cam_path.width}x{height or cam_path.height}, {cam_path.fps:g} fps) to {output}")
    return Path(output)
