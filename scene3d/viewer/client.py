"""One browser's frames: a render thread that follows the browser's camera.

While the camera moves, frames are rendered at a resolution scaled so that one takes about
``moving_frame_seconds``; once the camera has been still for ``refine_after`` seconds, the frame is
rendered again at the canvas resolution (capped by the "Max resolution" control). The camera and
canvas size come from the browser, so they are bounded here before anything is rendered.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from scene3d.viewer import camera as limits
from scene3d.viewer.camera import viewer_camera
from scene3d.viewer.safety import bounded

if TYPE_CHECKING:
    from scene3d.viewer.server import ViewerServer

log = logging.getLogger(__name__)

MAX_CANVAS = 16384  # a canvas size the browser reports is clamped to this
MIN_VIEW_FOV, MAX_VIEW_FOV = math.radians(1.0), math.radians(179.0)


def browser_pose(cam) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(wxyz, position, vertical fov in radians) of a browser's camera, or None when the page sent
    non-finite numbers; the field of view is clamped to a real camera's."""
    try:
        wxyz = np.asarray(cam.wxyz, np.float64).reshape(4)
        position = np.asarray(cam.position, np.float64).reshape(3)
    except (TypeError, ValueError):
        return None
    norm = float(np.linalg.norm(wxyz))
    if not (np.isfinite(wxyz).all() and np.isfinite(position).all() and norm > 1e-8) or np.abs(position).max() > limits.MAX_COORDINATE:
        return None
    return wxyz / norm, position, bounded(cam.fov, MIN_VIEW_FOV, MAX_VIEW_FOV, math.radians(50.0))


@dataclass
class Frame:
    """The last frame sent to a browser: the camera it was rendered for and the picture."""

    cameras: object
    image: np.ndarray
    mode: str
    full_resolution: bool
    seconds: float
    sent_at: float


class ClientRenderer:
    """Renders for one browser in its own thread, following its camera."""

    def __init__(self, viewer: "ViewerServer", client):
        self.viewer, self.client = viewer, client
        self.cond = threading.Condition()
        self.moving = False  # a camera move is waiting to be rendered
        self.invalid = True  # a full-resolution frame is due (settings changed, new model)
        self.refine_due = False
        self.last_move = 0.0
        self.stopped = False
        self.last_frame: Frame | None = None
        self.frames_sent = 0
        self.rendered_version = -1
        client.camera.on_update(lambda _cam: self.camera_moved())
        self.thread = threading.Thread(target=self._loop, name=f"scene3d-view-client-{client.client_id}", daemon=True)
        self.thread.start()

    def camera_moved(self) -> None:
        with self.cond:
            self.moving = True
            self.last_move = time.monotonic()
            self.cond.notify()

    def invalidate(self) -> None:
        with self.cond:
            self.invalid = True
            self.cond.notify()

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify()

    def _loop(self) -> None:
        v = self.viewer
        while True:
            with self.cond:
                while not self.stopped:
                    now = time.monotonic()
                    if self.moving or self.invalid:
                        break
                    if self.refine_due and now - self.last_move >= v.refine_after:
                        break
                    if v.live and v.version != self.rendered_version and now - (self.last_frame.sent_at if self.last_frame else 0) >= v.live_interval:
                        break
                    self.cond.wait(timeout=0.05)
                if self.stopped:
                    return
                moving = self.moving and (time.monotonic() - self.last_move) < v.refine_after
                self.moving = False
                self.invalid = False
            try:
                self._render(full=not moving)
            except Exception as e:  # a render failing must not take the server down
                log.exception("render failed")
                try:
                    self.client.add_notification("Render failed", f"{type(e).__name__}: {e}", color="red", auto_close_seconds=5.0)
                except Exception:
                    pass
                time.sleep(0.5)

    def _render(self, full: bool) -> None:
        v, cam = self.viewer, self.client.camera
        width = int(bounded(cam.image_width, 0, MAX_CANVAS, 0, integer=True))
        height = int(bounded(cam.image_height, 0, MAX_CANVAS, 0, integer=True))
        if width < 2 or height < 2:  # the browser has not reported its canvas yet
            width, height = 640, 480
        pose = browser_pose(cam)
        if pose is None:  # a non-finite camera from the page: nothing to render
            return
        wxyz, position, fov = pose
        scale = min(1.0, v.max_resolution / max(width, height))
        if not full:
            budget = v.moving_frame_seconds / max(v.seconds_per_pixel * width * height * scale * scale, 1e-9)
            scale *= min(1.0, math.sqrt(budget))
            scale = max(scale, 64 / max(width, height))
        w, h = max(int(round(width * scale)), 2), max(int(round(height * scale)), 2)
        cams = viewer_camera(wxyz, position, fov, w, h)
        version = v.version
        t0 = time.perf_counter()
        far = 0.95 * bounded(getattr(cam, "far", 1000.0), 1e-3, 1e9, 1000.0)
        image, depth = v.render_image(cams, with_depth=True, empty_depth=far)
        seconds = time.perf_counter() - t0
        v.seconds_per_pixel = 0.7 * v.seconds_per_pixel + 0.3 * seconds / (w * h) if v.seconds_per_pixel > 0 else seconds / (w * h)
        if self.stopped:  # the browser left while this frame was rendered
            return
        # the depth lets the browser hide frusta and boxes behind the rendered surfaces
        self.client.scene.set_background_image(image, format="jpeg", jpeg_quality=92 if full else 70, depth=depth)
        self.last_frame = Frame(cams, image, v.mode, full, seconds, time.monotonic())
        self.frames_sent += 1
        self.rendered_version = version
        self.refine_due = not full
        v.last_render = (w, h, seconds)
