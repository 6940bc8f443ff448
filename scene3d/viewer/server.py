"""The viewer app: a viser server whose browser canvas shows frames rendered here, on the server,
by the representation's own renderer (so view-dependent colour and every control are exactly what
training produced).

The browser never names a path on this machine: crop exports, camera paths and videos go to the
output folder (the run's, the scene file's folder, or ``--output-dir``) under names the server
makes, and small ones are also sent to the browser as downloads; "Load path" is an upload. Every
value the page sends is bounded here, not only in the page (see :mod:`scene3d.viewer.safety` for
the websocket origin check and the upload cap).

Each connected browser gets a render thread (:mod:`scene3d.viewer.client`). Model access is
serialised by :attr:`ViewerServer.lock`, which the trainer also holds for each step in live mode,
so a frame never sees a half-updated model.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path

import numpy as np
import torch

from scene3d.viewer import camera as limits
from scene3d.viewer.camera import CameraPath, Keyframe, camera_pose, matrix_to_quat, pose_c2w, transform_c2w
from scene3d.viewer.client import ClientRenderer, browser_pose
from scene3d.viewer.frames import RENDER_MODES, frame_image
from scene3d.viewer.safety import NETWORK_NOTICE, bounded, install_origin_check, install_upload_cap, is_loopback, new_output_file
from scene3d.viewer.target import ViewTarget

log = logging.getLogger(__name__)

# What the page may ask for, enforced on the server (the page's own limits are only a convenience).
MIN_STILL, MAX_STILL = 128, 2048  # "Max resolution": longest side of a still frame
MAX_VIDEO_SECONDS, MAX_VIDEO_FPS = 600.0, 120.0
MIN_VIDEO_SIDE = 16
MAX_BOX = 1e9  # crop-box coordinates
DOWNLOAD_LIMIT = 64 << 20  # results up to this size are also sent to the browser


def _scene_formats() -> dict[str, str]:
    """Gaussian scene formats the crop export offers, name -> file suffix (from the format registry)."""
    from scene3d.export.formats import formats

    return {f.name: f.suffix for f in formats("gaussians")}


class ViewerServer:
    """``scene3d view`` and ``scene3d train --viewer``: serves a target to browsers through viser."""

    moving_frame_seconds = 0.12
    refine_after = 0.3
    live_interval = 1.0

    def __init__(self, target: ViewTarget, host: str = "127.0.0.1", port: int = 8080, device: torch.device | None = None, live: bool = False,
                 output_dir: Path | None = None):
        import viser

        self.target, self.live = target, live
        self.output_dir = Path(output_dir) if output_dir is not None else Path(target.output_dir)
        self.device = device or torch.device("cpu")
        self.lock = threading.RLock()
        self.version = 0
        self.seconds_per_pixel = 0.0
        self.last_render: tuple[int, int, float] | None = None
        self.clients: dict[int, ClientRenderer] = {}
        self._clients_lock = threading.Lock()
        self.path = CameraPath()
        self._playing = threading.Event()
        self._writing = threading.Lock()  # one video or crop export at a time
        self._path_lock = threading.RLock()
        self._stopped = False
        # live training
        self.paused = threading.Event()
        self.training: dict = {}
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        install_origin_check(self.server, host)
        install_upload_cap(self.server, limits.MAX_FILE_BYTES)
        self.server._websock_server.disconnect_all_clients()  # anything that connected before the check (browsers reconnect)
        self.host = host
        self.center, self.radius = target.scene_center_and_radius()
        self._setup_scene()
        self._build_gui()
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)
        self._ticker = threading.Thread(target=self._tick, name="scene3d-view-stats", daemon=True)
        self._ticker.start()

    # ------------------------------------------------------------------ basics
    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def mode(self) -> str:
        mode = self.gui["mode"].value
        return mode if mode in RENDER_MODES else "rgb"

    @property
    def max_resolution(self) -> int:
        return int(bounded(self.gui["max_res"].value, MIN_STILL, MAX_STILL, 1024, integer=True))

    def background(self) -> tuple[float, float, float]:
        try:
            rgb = tuple(self.gui["background"].value)[:3]
        except TypeError:
            rgb = ()
        if len(rgb) != 3:
            rgb = (0, 0, 0)
        return tuple(bounded(c, 0, 255, 0) / 255.0 for c in rgb)

    def crop_box(self):
        if not self.gui["crop"].value:
            return None
        lo = np.array([bounded(v, -MAX_BOX, MAX_BOX, 0.0) for v in self.gui["crop_min"].value], np.float64)
        hi = np.array([bounded(v, -MAX_BOX, MAX_BOX, 0.0) for v in self.gui["crop_max"].value], np.float64)
        if lo.shape != (3,) or hi.shape != (3,):
            return None
        return np.minimum(lo, hi), np.maximum(lo, hi)

    def render_options(self) -> dict:
        """The representation's controls as the page set them, each within the control's own range."""
        out = {}
        for key, handle in self.control_handles.items():
            c, value = self.controls[key], handle.value
            if c.kind == "slider":
                value = bounded(value, c.min, c.max, c.default, integer=isinstance(c.default, int))
                value = int(value) if isinstance(c.default, int) else value
            elif c.kind == "checkbox":
                value = bool(value)
            elif value not in c.options:
                value = c.default
            out[key] = value
        return out

    def render_image(self, cams, mode: str | None = None, with_depth: bool = False, empty_depth: float = 900.0):
        """The picture the viewer shows for ``cams`` (one camera) with the current settings (and,
        with ``with_depth``, its float32 depth, ``empty_depth`` where nothing was rendered: inside
        the browser camera's far plane, or the browser would not draw those pixels)."""
        mode = mode or self.mode
        bg = self.background()
        with self.lock, torch.no_grad():
            out = self.target.model.render(
                cams.to(self.device),
                background=torch.tensor(bg, device=self.device, dtype=torch.float32),
                options=self.render_options(),
                crop=self.crop_box(),
            )
        image = frame_image(out, mode, bg)
        if not with_depth:
            return image
        depth = out.depth[0, ..., 0].float().cpu().numpy() if out.depth is not None else np.full(image.shape[:2], empty_depth, np.float32)
        depth = np.where(out.alpha[0, ..., 0].cpu().numpy() > 0.5, np.minimum(depth, empty_depth), empty_depth).astype(np.float32)
        return image, depth

    def invalidate(self) -> None:
        """Every browser gets a new full-resolution frame (settings or the model changed)."""
        for renderer in list(self.clients.values()):
            renderer.invalidate()

    def stop(self) -> None:
        self._stopped = True
        self._playing.clear()
        for renderer in list(self.clients.values()):
            renderer.stop()
        self.server.stop()

    def wait_for_client(self, timeout: float = 30.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.clients:
                return next(iter(self.clients.values()))
            time.sleep(0.05)
        return None

    # ------------------------------------------------------------------ scene
    def _setup_scene(self) -> None:
        t = self.target
        scene = self.server.scene
        up = t.up
        if t.cameras is not None and len(t.cameras) > 0:
            ups = -t.cameras.cam_to_world[:, :3, 1].double().cpu().numpy()
            mean_up = ups.mean(0)
            if np.linalg.norm(mean_up) > 1e-6:
                up = tuple(float(x) for x in mean_up / np.linalg.norm(mean_up))
        scene.set_up_direction(up)
        self.frusta = []
        self._hidden_frustum = None
        if t.cameras is not None:
            scale = 0.06 * self.radius
            for j in range(len(t.cameras)):
                wxyz, pos, fov, aspect = camera_pose(t.cameras, j)
                thumb = t.thumbnails[j] if j < len(t.thumbnails) else None
                handle = scene.add_camera_frustum(
                    f"/training_cameras/{j:04d}", fov=fov, aspect=aspect, scale=scale, thickness=1.5, thickness_units="screen", image=thumb,
                    format="jpeg", jpeg_quality=80, wxyz=wxyz, position=pos, color=(60, 120, 220),
                )
                handle.on_click(lambda event, j=j: self.look_through(event.client, j))
                self.frusta.append(handle)
            wxyz, pos, fov, _ = camera_pose(t.cameras, 0)
            fwd = pose_c2w(wxyz, pos)[:3, 2]
            self.server.initial_camera.position = tuple(pos)
            self.server.initial_camera.look_at = tuple(pos + fwd * max(float(np.linalg.norm(self.center - pos)), 1e-3))
            self.server.initial_camera.fov = fov
            self.server.initial_camera.up = tuple(-pose_c2w(wxyz, pos)[:3, 1])
            self._hidden_frustum = 0
            self.frusta[0].visible = False
        else:
            direction = np.array([1.0, -1.0, 0.8]) / np.linalg.norm([1.0, -1.0, 0.8])
            self.server.initial_camera.position = tuple(self.center + direction * 2.5 * self.radius)
            self.server.initial_camera.look_at = tuple(self.center)
        self.crop_box_handle = None
        self.path_nodes: list = []

    def look_through(self, client, j: int) -> None:
        """Moves a browser's camera onto training camera ``j`` (its pose and field of view)."""
        wxyz, pos, fov, _ = camera_pose(self.target.cameras, j)
        self._hide_frustum(j)
        up = -pose_c2w(wxyz, pos)[:3, 1]
        with client.atomic():
            client.camera.fov = fov
            client.camera.position = pos
            client.camera.wxyz = wxyz
            client.camera.up_direction = up  # the camera's own roll, not the scene's up

    # ------------------------------------------------------------------ GUI
    def _build_gui(self) -> None:
        gui = self.server.gui
        t = self.target
        gui.configure_theme(control_width="medium", show_logo=False, show_share_button=False)
        gui.main_panel.dock_right()  # beside the 3D view, not over it
        g: dict = {}
        self.gui = g
        with gui.add_folder("Render"):
            g["mode"] = gui.add_dropdown("Render mode", RENDER_MODES, initial_value="rgb")
            bg = tuple(int(round(c * 255)) for c in t.background)
            g["background"] = gui.add_rgb("Background", bg)
            g["max_res"] = gui.add_slider("Max resolution", MIN_STILL, MAX_STILL, 64, 1024, hint="Longest side of a still frame, in pixels.")
        self.control_handles = {}
        controls = t.model.controls()
        self.controls = {c.key: c for c in controls}
        if controls:
            with gui.add_folder(t.model.name):
                for c in controls:
                    if c.kind == "slider":
                        h = gui.add_slider(c.label, c.min, c.max, c.step, c.default, hint=c.hint)
                    elif c.kind == "checkbox":
                        h = gui.add_checkbox(c.label, bool(c.default), hint=c.hint)
                    else:
                        h = gui.add_dropdown(c.label, c.options, initial_value=c.default, hint=c.hint)
                    self.control_handles[c.key] = h
        for h in [g["mode"], g["background"], g["max_res"], *self.control_handles.values()]:
            h.on_update(lambda _e: self.invalidate())

        if self.live:
            with gui.add_folder("Training"):
                g["training"] = gui.add_markdown("waiting for the first step")
                g["pause"] = gui.add_button("Pause training", icon=None)
                g["pause"].on_click(lambda _e: self.toggle_pause())

        with gui.add_folder("Scene"):
            g["stats"] = gui.add_markdown(self._stats_markdown())
            if t.cameras is not None:
                g["show_cameras"] = gui.add_checkbox("Show training cameras", True)
                g["show_cameras"].on_update(lambda _e: self._show_cameras(g["show_cameras"].value))
                names = [f"{j}: {n}" for j, n in enumerate(t.camera_names)]
                g["camera"] = gui.add_dropdown("Training camera", names, initial_value=names[0])
                g["look"] = gui.add_button("Look through camera")
                g["look"].on_click(lambda e: g["camera"].value in names and self.look_through(e.client, names.index(g["camera"].value)))

        with gui.add_folder("Crop", expand_by_default=False):
            lo, hi = self.center - self.radius, self.center + self.radius
            g["crop"] = gui.add_checkbox("Crop to box", False)
            step = float(10 ** math.floor(math.log10(max(self.radius, 1e-6) / 100)))
            g["crop_min"] = gui.add_vector3("Box min", tuple(float(x) for x in lo), step=step)
            g["crop_max"] = gui.add_vector3("Box max", tuple(float(x) for x in hi), step=step)
            can_export = t.model.caps.gaussians
            suffixes = _scene_formats()
            first = next(iter(suffixes))
            g["crop_format"] = gui.add_dropdown("Export format", tuple(suffixes), initial_value=first, disabled=not can_export)
            g["crop_export"] = gui.add_button("Export crop", disabled=not can_export,
                                              hint="Written to exports/crop-NNN in the viewer's output folder, and downloaded.")
            g["crop_written"] = gui.add_markdown("")
            for h in (g["crop"], g["crop_min"], g["crop_max"]):
                h.on_update(lambda _e: self._crop_changed())
            g["crop_export"].on_click(lambda e: self._run_in_thread(self.export_crop, e.client))

        with gui.add_folder("Camera path", expand_by_default=False):
            g["path_info"] = gui.add_markdown("0 keyframes")
            g["kf_add"] = gui.add_button("Add keyframe (current view)")
            g["kf_remove"] = gui.add_button("Remove last keyframe")
            g["kf_clear"] = gui.add_button("Clear keyframes")
            g["path_seconds"] = gui.add_number("Duration (s)", 4.0, min=0.1, max=MAX_VIDEO_SECONDS, step=0.1)
            g["path_fps"] = gui.add_number("Frame rate", 30, min=1, max=int(MAX_VIDEO_FPS), step=1)
            g["path_width"] = gui.add_number("Video width", 1280, min=MIN_VIDEO_SIDE, max=limits.MAX_SIDE, step=2)
            g["path_height"] = gui.add_number("Video height", 720, min=MIN_VIDEO_SIDE, max=limits.MAX_SIDE, step=2)
            g["path_loop"] = gui.add_checkbox("Loop", False)
            g["path_play"] = gui.add_button("Play")
            g["path_save"] = gui.add_button("Save path", hint="Written to camera_paths/path-NNN.json in the viewer's output folder, and downloaded.")
            g["path_load"] = gui.add_upload_button("Load path", mime_type="application/json",
                                                   hint=f"Upload a camera-path JSON file (at most {limits.MAX_FILE_BYTES >> 10} KiB).")
            g["video_render"] = gui.add_button("Render video", hint="Written to renders/path-NNN.mp4 in the viewer's output folder.")
            g["video_progress"] = gui.add_progress_bar(0.0, visible=False)
            g["path_written"] = gui.add_markdown("")
            g["kf_add"].on_click(lambda e: self._guarded(e.client, lambda: self.add_keyframe(e.client)))
            g["kf_remove"].on_click(lambda _e: self._set_keyframes(self.path.keyframes[:-1]))
            g["kf_clear"].on_click(lambda _e: self._set_keyframes([]))
            g["path_play"].on_click(lambda _e: self.toggle_play())
            g["path_save"].on_click(lambda e: self._guarded(e.client, lambda: self.save_path(e.client)))
            g["path_load"].on_upload(lambda e: self._guarded(e.client, lambda: self.load_path(e.target.value.name, e.target.value.content, e.client)))
            g["video_render"].on_click(lambda e: self._run_in_thread(self.render_video, e.client))
            for h in (g["path_seconds"], g["path_fps"], g["path_width"], g["path_height"], g["path_loop"]):
                h.on_update(lambda _e: self._sync_path_settings())

    def _stats_markdown(self) -> str:
        rows = dict(self.target.info)
        rows.update(self.target.model.viewer_stats())
        if self.target.cameras is not None:
            rows["training cameras"] = str(len(self.target.cameras))
        if self.last_render is not None:
            w, h, s = self.last_render
            rows["last frame"] = f"{w}x{h} in {s * 1000:.0f} ms"
        return "\n".join(f"- **{k}**: {v}" for k, v in rows.items())

    def _tick(self) -> None:
        last_stats = ""
        while not self._stopped:
            time.sleep(0.5)
            if self._stopped:
                return
            try:
                with self.lock:
                    text = self._stats_markdown()
                if text != last_stats:
                    self.gui["stats"].content = text
                    last_stats = text
                if self.live and self.training:
                    t = self.training
                    state = "paused" if self.paused.is_set() else ("finished" if t.get("finished") else "training")
                    self.gui["training"].content = (
                        f"**{state}** - step {t['step']:,} / {t['max_steps']:,}\n\n"
                        f"- loss {t['loss']:.4f}\n- PSNR {t['psnr']:.2f} dB\n- {t['model']}\n- {t['elapsed']:.0f} s"
                    )
            except Exception:  # the stats must never stop the viewer
                log.exception("stats update failed")

    def _show_cameras(self, visible: bool) -> None:
        for j, h in enumerate(self.frusta):
            h.visible = visible and j != self._hidden_frustum

    def _hide_frustum(self, j: int | None) -> None:
        """Hides the frustum of the camera being looked through (it would cover the view)."""
        self._hidden_frustum = j
        self._show_cameras(self.gui["show_cameras"].value if "show_cameras" in self.gui else True)

    # ------------------------------------------------------------------ crop
    def _crop_changed(self) -> None:
        box = self.crop_box()
        if box is None:
            if self.crop_box_handle is not None:
                self.crop_box_handle.visible = False
        else:
            lo, hi = box
            if self.crop_box_handle is not None:
                self.crop_box_handle.remove()
            self.crop_box_handle = self.server.scene.add_box(
                "/crop_box", color=(255, 170, 0), dimensions=tuple(np.maximum(hi - lo, 1e-6)), wireframe=True, position=tuple((lo + hi) / 2)
            )
        self.invalidate()

    def export_crop(self, client=None) -> Path:
        """Writes the Gaussians inside the crop box (all of them when cropping is off), in the input
        frame, to a new ``exports/crop-NNN`` file in the output folder."""
        from scene3d.export.formats import get_format

        suffixes = _scene_formats()
        fmt = self.gui["crop_format"].value
        if fmt not in suffixes:
            raise ValueError(f"unknown export format {str(fmt)[:40]!r}")
        if not self._writing.acquire(blocking=False):
            raise ValueError("a video or an export is being written already")
        try:
            with self.lock:
                gaussians = self.target.model.to_gaussians(crop=self.crop_box())
            if gaussians is None:
                raise ValueError(f"the {self.target.model.name} representation cannot be baked to Gaussians")
            params = {k: v.cpu() for k, v in gaussians.params().items()}
            if params["means"].shape[0] == 0:
                raise ValueError("the crop box holds no Gaussians")
            write = get_format(fmt).write
            path = self._write_new(self.output_dir / "exports", "crop", suffixes[fmt], lambda p: write(p, params, transform=self.target.to_input))
        finally:
            self._writing.release()
        self._delivered(client, path, "crop_written", "Crop exported", f"{params['means'].shape[0]:,} Gaussians")
        return path

    def _write_new(self, folder: Path, stem: str, suffix: str, write) -> Path:
        """Writes a new file under a server-made name (never an existing one); a failed write
        leaves no file behind."""
        path = new_output_file(folder, stem, suffix)
        try:
            write(path)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        log.info("viewer wrote %s", path)
        print(f"scene3d view: wrote {path}")
        return path

    def _shown_name(self, path: Path) -> str:
        """How the page names a file it caused: the output folder's name and the path inside it
        (the folder's place on this machine is not the page's business)."""
        return f"{self.output_dir.name}/{path.relative_to(self.output_dir).as_posix()}"

    def _delivered(self, client, path: Path, board: str, title: str, what: str) -> None:
        """Tells the page where a new file went, and sends it as a download when it is small."""
        shown = self._shown_name(path)
        self.gui[board].content = f"Last written: `{shown}` (in the viewer's output folder)"
        if client is None:
            return
        size = path.stat().st_size
        sent = size <= DOWNLOAD_LIMIT
        if sent:
            client.send_file_download(path.name, path.read_bytes())
        note = " and sent as a download" if sent else ""
        client.add_notification(title, f"{what} -> {shown} on the server{note}", auto_close_seconds=8.0)

    # ------------------------------------------------------------------ camera paths
    def add_keyframe(self, client) -> None:
        if len(self.path.keyframes) >= limits.MAX_KEYFRAMES:
            raise ValueError(f"a camera path holds at most {limits.MAX_KEYFRAMES} keyframes")
        pose = browser_pose(client.camera)
        if pose is None:
            raise ValueError("the browser's camera is not a finite pose")
        wxyz, position, fov = pose
        c2w = transform_c2w(pose_c2w(wxyz, position), self.target.to_input)
        if not np.isfinite(c2w).all():
            raise ValueError("the browser's camera is not a finite pose")
        key = Keyframe(c2w[:3, 3].copy(), matrix_to_quat(c2w[:3, :3]), math.degrees(fov))
        self._set_keyframes([*self.path.keyframes, key])

    def _sync_path_settings(self) -> None:
        """Reads the path's settings from the page within the camera-path ceilings (the total frame
        count included, by shortening the duration) and shows the page the values used."""
        with self._path_lock:  # the page's updates arrive on several threads
            self._sync_path_settings_locked()

    def _sync_path_settings_locked(self) -> None:
        g = self.gui
        raw = {key: g[key].value for key in ("path_fps", "path_seconds", "path_width", "path_height")}
        fps = bounded(raw["path_fps"], limits.MIN_FPS, MAX_VIDEO_FPS, 30, integer=True)
        seconds = bounded(raw["path_seconds"], 0.1, MAX_VIDEO_SECONDS, 4.0)
        seconds = min(seconds, limits.MAX_FRAMES / fps)
        width = 2 * int(bounded(raw["path_width"], MIN_VIDEO_SIDE, limits.MAX_SIDE, 1280, integer=True) // 2)
        height = 2 * int(bounded(raw["path_height"], MIN_VIDEO_SIDE, limits.MAX_SIDE, 720, integer=True) // 2)
        self.path.seconds, self.path.fps, self.path.width, self.path.height = seconds, fps, width, height
        self.path.loop = bool(g["path_loop"].value)
        for key, value in (("path_fps", int(fps)), ("path_seconds", seconds), ("path_width", width), ("path_height", height)):
            # only a value this call read (a newer one from the page gets its own call); this
            # calls the method again, with nothing left to change
            if raw[key] != value and g[key].value is raw[key]:
                g[key].value = value
        self._draw_path()

    def _set_keyframes(self, keys: list[Keyframe]) -> None:
        self.path.keyframes = list(keys)
        self.gui["path_info"].content = f"{len(keys)} keyframe{'s' if len(keys) != 1 else ''}"
        self._draw_path()

    def _draw_path(self) -> None:
        with self._path_lock:
            self._draw_path_locked()

    def _draw_path_locked(self) -> None:
        for node in self.path_nodes:
            node.remove()
        self.path_nodes = []
        scene, to_model = self.server.scene, self.target.to_model
        scale = 0.05 * self.radius
        aspect = self.path.width / max(self.path.height, 1)
        for j, k in enumerate(self.path.keyframes):
            c2w = transform_c2w(k.c2w(), to_model)
            self.path_nodes.append(
                scene.add_camera_frustum(f"/camera_path/key_{j:03d}", fov=math.radians(k.fov), aspect=aspect, scale=scale, thickness=1.5, thickness_units="screen",
                                         wxyz=matrix_to_quat(c2w[:3, :3]), position=c2w[:3, 3], color=(230, 80, 40))
            )
        if len(self.path.keyframes) >= 2:
            c2ws, _ = self.path.poses(max(8 * len(self.path.keyframes), 32))
            pts = np.stack([transform_c2w(c, to_model)[:3, 3] for c in c2ws])
            if self.path.loop:
                pts = np.concatenate([pts, pts[:1]])
            self.path_nodes.append(scene.add_spline_catmull_rom("/camera_path/spline", pts, color=(230, 80, 40), thickness=0.01 * self.radius))

    def save_path(self, client=None) -> Path:
        """Writes the camera path to a new ``camera_paths/path-NNN.json`` in the output folder."""
        self._sync_path_settings()
        if not self.path.keyframes:
            raise ValueError("add at least one keyframe first")
        path = self._write_new(self.output_dir / "camera_paths", "path", ".json", self.path.save)
        self._delivered(client, path, "path_written", "Camera path saved", f"{len(self.path.keyframes)} keyframes")
        return path

    def load_path(self, name: str, content: bytes, client=None) -> None:
        """Takes a camera path uploaded by the page (checked like any camera-path file; ``name``,
        the browser's file name, only names it in messages)."""
        shown = Path(str(name)[:200]).name or "uploaded camera path"
        loaded = CameraPath.parse(content, shown)
        g = self.gui
        g["path_seconds"].value, g["path_fps"].value = min(loaded.seconds, MAX_VIDEO_SECONDS), min(loaded.fps, MAX_VIDEO_FPS)
        g["path_width"].value, g["path_height"].value, g["path_loop"].value = loaded.width, loaded.height, loaded.loop
        self.path = loaded
        self._set_keyframes(loaded.keyframes)
        self._sync_path_settings()
        if client is not None:
            client.add_notification("Camera path loaded", f"{len(loaded.keyframes)} keyframes from {shown}", auto_close_seconds=6.0)

    def toggle_play(self) -> None:
        if self._playing.is_set():
            self._playing.clear()
            return
        self._sync_path_settings()
        if not self.path.keyframes:
            return
        self._playing.set()
        self.gui["path_play"].label = "Stop"
        threading.Thread(target=self._play, daemon=True).start()

    def _play(self) -> None:
        try:
            c2ws, fovs = self.path.poses()
            to_model = self.target.to_model
            while self._playing.is_set():
                for c2w, fov in zip(c2ws, fovs):
                    if not self._playing.is_set():
                        break
                    m = transform_c2w(c2w, to_model)
                    for renderer in list(self.clients.values()):
                        cam = renderer.client.camera
                        with renderer.client.atomic():
                            cam.fov = math.radians(fov)
                            cam.position = m[:3, 3]
                            cam.wxyz = matrix_to_quat(m[:3, :3])
                    time.sleep(1.0 / max(self.path.fps, 1.0))
                if not self.path.loop:
                    break
        finally:
            self._playing.clear()
            self.gui["path_play"].label = "Play"

    def render_video(self, client=None) -> Path:
        """Renders the camera path to a new ``renders/path-NNN.mp4`` in the output folder with the
        current render settings (one video at a time)."""
        from scene3d.render import write_video

        self._sync_path_settings()
        if not self.path.keyframes:
            raise ValueError("add at least one keyframe first")
        if not self._writing.acquire(blocking=False):
            raise ValueError("a video or an export is being written already")
        try:
            cams = self.path.cameras(self.target.to_model)
            bar = self.gui["video_progress"]
            bar.visible, bar.value = True, 0.0
            n = len(cams)

            def frames():
                for i in range(n):
                    if self._stopped:
                        raise RuntimeError("the viewer stopped")
                    yield self.render_image(cams[i])
                    bar.value = 100.0 * (i + 1) / n

            try:
                out = self._write_new(self.output_dir / "renders", "path", ".mp4", lambda p: write_video(frames(), p, fps=int(round(self.path.fps))))
            finally:
                bar.visible = False
        finally:
            self._writing.release()
        self._delivered(client, out, "path_written", "Video written", f"{n} frames")
        return out

    # ------------------------------------------------------------------ live training
    def toggle_pause(self) -> None:
        if self.paused.is_set():
            self.paused.clear()
            self.gui["pause"].label = "Pause training"
        else:
            self.paused.set()
            self.gui["pause"].label = "Resume training"

    def wait_while_paused(self) -> None:
        while self.paused.is_set() and not self._stopped:
            time.sleep(0.05)

    def training_update(self, **stats) -> None:
        """Called by the trainer after each step (cheap: the numbers are pushed by the stats thread)."""
        self.training = stats
        self.version += 1

    # ------------------------------------------------------------------ clients
    def _connect(self, client) -> None:
        with self._clients_lock:
            self.clients[client.client_id] = ClientRenderer(self, client)

    def _disconnect(self, client) -> None:
        with self._clients_lock:
            renderer = self.clients.pop(client.client_id, None)
        if renderer is not None:
            renderer.stop()

    def _guarded(self, client, fn) -> None:
        try:
            fn()
        except Exception as e:
            log.warning("viewer action failed: %s", e)
            if client is not None:
                client.add_notification("Failed", str(e), color="red", auto_close_seconds=8.0)

    def _run_in_thread(self, fn, client) -> None:
        threading.Thread(target=self._guarded, args=(client, lambda: fn(client)), daemon=True).start()


def start_live_viewer(trainer, host: str = "127.0.0.1", port: int = 8080) -> ViewerServer:
    """A viewer on a trainer's model (``scene3d train --viewer``); the trainer holds its lock per step."""
    from scene3d.viewer.target import attach_cameras

    ds = trainer.ds
    info = {"run": trainer.run_dir.name, "model": trainer.spec.model, "strategy": trainer.spec.strategy}
    target = ViewTarget(trainer.model, trainer.run_dir, "run", np.linalg.inv(np.asarray(ds.transform, dtype=np.float64)), output_dir=trainer.run_dir, info=info)
    attach_cameras(target, ds, background_mode=trainer.cfg.background_mode)
    viewer = ViewerServer(target, host=host, port=port, device=trainer.device, live=True)
    notice = network_notice(viewer)
    if notice:
        print(notice)
    return viewer


def network_notice(viewer: ViewerServer) -> str | None:
    """What a listener on the network can and cannot do, for a viewer on a non-loopback host."""
    if is_loopback(viewer.host):
        return None
    return NETWORK_NOTICE.format(host=viewer.host or "every interface", port=viewer.port, output=viewer.output_dir)


def view_command(target_path: Path, host: str = "127.0.0.1", port: int = 8080, device: str = "auto", up: str = "auto", output_dir: Path | None = None) -> None:
    """``scene3d view``: checks and loads the target first, then serves it until Ctrl+C."""
    from rich.console import Console
    from rich.markup import escape

    from scene3d.device import pick_device
    from scene3d.viewer.target import load_target

    dev = pick_device(device)
    target = load_target(Path(target_path), dev)
    if up != "auto":
        target.up = up
    viewer = ViewerServer(target, host=host, port=port, device=dev, output_dir=output_dir)
    console = Console()
    try:
        console.print(f"[bold]scene3d view[/]: {escape(str(target.source))} ({target.kind}) at [link]{viewer.url}[/link]  (Ctrl+C to stop)")
        console.print(f"exports, camera paths and videos from the page go to {escape(str(viewer.output_dir))}", highlight=False)
        notice = network_notice(viewer)
        if notice:
            console.print(escape(notice), highlight=False)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        viewer.stop()
