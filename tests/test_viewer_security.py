"""The viewer against a hostile page: a real websocket client speaking viser's protocol, as a page
on another site or a tampered page would. Foreign origins are refused; whatever values the page
sends, files appear only in the output folder under names the server makes; numbers are bounded
on the server; uploads are capped."""

from __future__ import annotations

import contextlib
import json
import math
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("viser", reason="viser is not installed")

import msgspec  # noqa: E402  (viser's own dependency)
import viser  # noqa: E402
import websockets.exceptions  # noqa: E402
import zstandard  # noqa: E402
from viser import _messages  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from scene3d.errors import DataError  # noqa: E402
from scene3d.viewer import camera as limits  # noqa: E402
from scene3d.viewer.safety import bounded, new_output_file, origin_allowed  # noqa: E402
from tests.test_viewer import _model  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout: float = 60.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class PageClient:
    """A websocket client that talks to the viewer the way viser's page does."""

    def __init__(self, port: int, origin: str | None = "same"):
        if origin == "same":
            origin = f"http://127.0.0.1:{port}"
        self.ws = connect(f"ws://127.0.0.1:{port}", origin=origin, subprotocols=[f"viser-v{viser.__version__}"], max_size=None, open_timeout=30)
        self.messages: list[dict] = []
        self.closed: websockets.exceptions.ConnectionClosed | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        zstd = zstandard.ZstdDecompressor()
        try:
            while True:
                raw = self.ws.recv()
                size, compressed = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")
                inner = msgspec.msgpack.decode(zstd.decompress(raw[16 : 16 + compressed], max_output_size=size))
                self.messages.extend(inner["messages"])
        except websockets.exceptions.ConnectionClosed as e:
            self.closed = e

    def send(self, message) -> None:
        self.ws.send(msgspec.msgpack.encode(message.as_serializable_dict()))

    def camera(self, position=(0.0, 0.0, -3.0), wxyz=(1.0, 0.0, 0.0, 0.0), fov=0.9, width=64, height=48) -> None:
        self.send(_messages.ViewerCameraMessage(wxyz=wxyz, position=position, fov=fov, near=0.01, far=100.0, image_height=height, image_width=width,
                                                look_at=(0.0, 0.0, 0.0), up_direction=(0.0, -1.0, 0.0)))

    def set(self, handle, value) -> None:
        self.send(_messages.GuiUpdateMessage(handle._impl.uuid, {"value": value}))

    def click(self, handle) -> None:
        self.set(handle, True)

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m.get("type") == kind]

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def viewer(tmp_path):
    from scene3d.export.formats import write_scene
    from scene3d.viewer.server import ViewerServer
    from scene3d.viewer.target import load_target

    src = write_scene(tmp_path / "src" / "scene.ply", _model(300).to_gaussians().params())
    v = ViewerServer(load_target(src, torch.device("cpu")), port=free_port(), output_dir=tmp_path / "out")
    yield v
    v.stop()


def connected(viewer, origin: str | None = "same") -> PageClient:
    page = PageClient(viewer.port, origin)
    page.camera()
    wait_until(lambda: viewer.clients, what="the client to register")
    return page


def files_under(root: Path) -> set[Path]:
    return {p.relative_to(root) for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------------------- origins
@pytest.mark.parametrize(
    "origin, host, loopback_only, allowed",
    [
        (None, "127.0.0.1:8080", True, True),  # not a browser
        ("http://127.0.0.1:8080", "127.0.0.1:8080", True, True),
        ("http://localhost:8080", "localhost:8080", True, True),
        ("http://[::1]:8080", "[::1]:8080", True, True),
        ("http://LOCALHOST:8080", "localhost:8080", True, True),
        ("http://evil.example", "127.0.0.1:8080", True, False),
        ("http://127.0.0.1:9999", "127.0.0.1:8080", True, False),  # another local page
        ("https://127.0.0.1:8080", "127.0.0.1:8080", True, True),  # the page served through TLS by a proxy
        ("https://127.0.0.1", "127.0.0.1:80", True, False),  # https's default port is 443
        ("null", "127.0.0.1:8080", True, False),  # sandboxed frames, file:// pages
        ("http://evil.example:8080", "evil.example:8080", True, False),  # DNS rebinding onto a loopback viewer
        ("http://evil.example:8080", "evil.example:8080", False, True),  # a network viewer served under that name
        ("http://192.168.1.5:8080", "192.168.1.5:8080", False, True),
        ("http://192.168.1.5", "192.168.1.5:80", False, True),
        ("http://127.0.0.1:8080", None, True, False),
        ("http://user@127.0.0.1:8080", "127.0.0.1:8080", True, False),
        ("http://127.0.0.1:8080/path", "127.0.0.1:8080", True, False),
    ],
)
def test_origin_rule(origin, host, loopback_only, allowed):
    assert origin_allowed(origin, host, loopback_only) is allowed


def test_foreign_origin_websocket_is_refused_and_same_origin_accepted(viewer):
    foreign = PageClient(viewer.port, "http://evil.example")
    with contextlib.suppress(websockets.exceptions.ConnectionClosed):  # the server may have closed it already
        foreign.camera()  # what a foreign page would send at once
        foreign.click(viewer.gui["path_save"])
    wait_until(lambda: foreign.closed is not None, timeout=30, what="the foreign websocket to close")
    assert foreign.closed.rcvd is not None and foreign.closed.rcvd.code == 1008
    assert foreign.messages == []  # not one message of the scene or the GUI reached it
    assert not viewer.clients and not viewer.server.get_clients()

    page = connected(viewer)  # the page's own origin
    wait_until(lambda: page.of_type("GuiFolderMessage"), what="the GUI to arrive")
    assert page.closed is None and len(viewer.clients) == 1
    renderer = next(iter(viewer.clients.values()))
    wait_until(lambda: renderer.frames_sent > 0, what="a frame for the page")
    page.close()
    wait_until(lambda: not viewer.clients, what="the disconnect")

    script = connected(viewer, origin=None)  # no Origin header: not a browser, let in
    assert script.closed is None and len(viewer.clients) == 1
    script.close()
    assert not (viewer.output_dir).exists()  # the refused click wrote nothing


# ---------------------------------------------------------------------------- paths
def test_no_browser_supplied_path_is_ever_written(viewer, tmp_path):
    """The page sends a path to every input and presses every button: files appear only in the
    output folder under names the server made, never where the page said."""
    import imageio.v3 as iio
    from viser._gui_handles import GuiTextHandle

    from scene3d.export.formats import read_scene

    assert not any(isinstance(h, GuiTextHandle) for h in viewer.server.gui._gui_input_handle_from_uuid.values())
    before = files_under(tmp_path)
    (tmp_path / "victim.txt").write_text("keep me")
    page = connected(viewer)
    wait_until(lambda: page.of_type("GuiFolderMessage"), what="the GUI")
    evil = str(tmp_path / "victim.txt")
    for handle in list(viewer.server.gui._gui_input_handle_from_uuid.values()):
        if not handle._impl.is_button:
            page.send(_messages.GuiUpdateMessage(handle._impl.uuid, {"value": evil, "label": evil}))
    g = viewer.gui
    settings = (("path_width", 32), ("path_height", 24), ("path_fps", 3), ("path_seconds", 1.0), ("path_loop", False), ("crop", False), ("crop_format", "ply"), ("mode", "rgb"))
    for key, value in settings:
        page.set(g[key], value)
    wait_until(lambda: (g["path_width"].value, g["path_height"].value, g["path_fps"].value, g["path_seconds"].value) == (32, 24, 3, 1.0), what="the settings")
    page.click(g["kf_add"])
    wait_until(lambda: len(viewer.path.keyframes) == 1, what="a keyframe")
    page.camera(position=(0.5, 0.0, -3.0))
    wait_until(lambda: np.allclose(next(iter(viewer.clients.values())).client.camera.position, (0.5, 0.0, -3.0)), what="the camera to move")
    page.click(g["kf_add"])
    wait_until(lambda: len(viewer.path.keyframes) == 2, what="a second keyframe")

    out = viewer.output_dir
    page.click(g["path_save"])
    wait_until(lambda: (out / "camera_paths" / "path-001.json").stat().st_size > 0 if (out / "camera_paths" / "path-001.json").exists() else False, what="the saved path")
    first = (out / "camera_paths" / "path-001.json").read_bytes()
    page.click(g["path_save"])
    wait_until(lambda: (out / "camera_paths" / "path-002.json").exists() and (out / "camera_paths" / "path-002.json").stat().st_size > 0, what="a second saved path")
    assert (out / "camera_paths" / "path-001.json").read_bytes() == first  # never overwritten
    page.click(g["video_render"])
    wait_until(lambda: len(page.of_type("FileTransferStartDownload")) == 3, timeout=120, what="the video")
    page.click(g["crop_export"])
    wait_until(lambda: len(page.of_type("FileTransferStartDownload")) >= 4, what="the downloads")

    assert (tmp_path / "victim.txt").read_text() == "keep me"
    new = files_under(tmp_path) - before - {Path("victim.txt")}
    assert {p.as_posix() for p in new} == {"out/camera_paths/path-001.json", "out/camera_paths/path-002.json", "out/renders/path-001.mp4", "out/exports/crop-001.ply"}
    assert limits.CameraPath.load(out / "camera_paths" / "path-001.json").width == 32
    assert np.stack(list(iio.imiter(out / "renders" / "path-001.mp4"))).shape == (3, 24, 32, 3)
    assert read_scene(out / "exports" / "crop-001.ply")["means"].shape[0] == 300
    downloads = {m["filename"]: m["size_bytes"] for m in page.of_type("FileTransferStartDownload")}
    assert downloads == {name: (out / sub / name).stat().st_size for sub, name in
                         (("camera_paths", "path-001.json"), ("camera_paths", "path-002.json"), ("renders", "path-001.mp4"), ("exports", "crop-001.ply"))}
    # the page is told where each file went, inside the output folder
    assert "out/exports/crop-001.ply" in g["crop_written"].content
    page.close()


def test_new_output_files_take_fresh_names(tmp_path):
    folder = tmp_path / "exports"
    assert new_output_file(folder, "crop", ".compressed.ply").name == "crop-001.compressed.ply"
    (folder / "crop-007.compressed.ply").write_text("mine")
    (folder / "crop-008.compressed.ply").symlink_to(tmp_path / "elsewhere.txt")
    third = new_output_file(folder, "crop", ".compressed.ply")
    assert third.name == "crop-009.compressed.ply" and third.stat().st_size == 0
    assert (folder / "crop-007.compressed.ply").read_text() == "mine" and not (tmp_path / "elsewhere.txt").exists()
    (folder / "crop-999.compressed.ply").write_text("last")
    with pytest.raises(ValueError, match="crop-999"):
        new_output_file(folder, "crop", ".compressed.ply")


# ---------------------------------------------------------------------------- bounds
def test_numbers_from_the_page_are_bounded_on_the_server(viewer):
    page = connected(viewer)
    renderer = next(iter(viewer.clients.values()))
    g = viewer.gui
    page.set(g["path_fps"], 1e9)
    page.set(g["path_seconds"], 1e9)
    page.set(g["path_width"], 10**9)
    page.set(g["path_height"], -5)
    page.set(g["max_res"], 10**9)
    page.set(g["mode"], "../../etc/passwd")
    wait_until(lambda: g["mode"].value != "rgb" and g["max_res"].value == 10**9, what="the page's values to arrive")
    clamped = (16, limits.MAX_SIDE, 120, limits.MAX_FRAMES / 120)
    wait_until(lambda: (g["path_height"].value, g["path_width"].value, g["path_fps"].value, g["path_seconds"].value) == clamped,
               what=f"the clamped settings {clamped}, not {[g[k].value for k in ('path_height', 'path_width', 'path_fps', 'path_seconds')]}")
    assert viewer.path.num_frames == limits.MAX_FRAMES and viewer.path.fps == 120 and (viewer.path.width, viewer.path.height) == (limits.MAX_SIDE, 16)
    assert viewer.max_resolution == 2048 and viewer.mode == "rgb"
    page.set(g["path_seconds"], float("nan"))
    wait_until(lambda: math.isfinite(g["path_seconds"].value) and g["path_seconds"].value == 4.0, what="a finite duration")

    # a huge canvas renders at most at the still-frame ceiling
    page.set(g["max_res"], 256)
    wait_until(lambda: viewer.max_resolution == 256, what="the resolution")
    sent = renderer.frames_sent
    page.camera(width=10**9, height=10**9)
    wait_until(lambda: renderer.frames_sent > sent and renderer.last_frame.full_resolution and renderer.last_frame.image.shape[:2] == (256, 256),
               what="a full frame of the huge canvas, at the ceiling")

    # a non-finite camera: no frame, and no keyframe from it
    page.camera(position=(float("nan"), 0.0, 0.0))
    wait_until(lambda: not np.isfinite(renderer.client.camera.position).all(), what="the NaN camera")
    sent = renderer.frames_sent
    page.click(g["kf_add"])
    wait_until(lambda: any("finite pose" in json.dumps(m) for m in page.of_type("NotificationShowMessage")), what="the refusal")
    assert viewer.path.keyframes == [] and renderer.frames_sent == sent
    page.camera()
    page.click(g["kf_add"])
    wait_until(lambda: len(viewer.path.keyframes) == 1, what="a keyframe from a finite camera")
    assert np.isfinite(viewer.path.keyframes[0].position).all()
    page.close()


def test_bounded_numbers():
    assert bounded(1e9, 1, 120, 30) == 120 and bounded(-4, 1, 120, 30) == 1
    assert bounded(float("nan"), 1, 120, 30) == 30 and bounded(float("inf"), 1, 120, 30) == 30
    assert bounded("x", 1, 120, 30) == 30 and bounded(None, 1, 120, 30) == 30 and bounded(10**400, 1, 120, 30) == 30
    assert bounded(7.6, 1, 120, 30, integer=True) == 8.0


# ---------------------------------------------------------------------------- uploads
def _upload(page: PageClient, button, content: bytes, declared: int | None = None, parts: list[bytes] | None = None, name: str = "path.json") -> str:
    import uuid

    transfer = str(uuid.uuid4())
    parts = parts if parts is not None else [content[i : i + 512 * 1024] for i in range(0, len(content), 512 * 1024)]
    page.send(_messages.FileTransferStartUpload(button._impl.uuid, transfer, name, "application/json", len(parts), len(content) if declared is None else declared))
    for i, part in enumerate(parts):
        page.send(_messages.FileTransferPart(button._impl.uuid, transfer, i, part))
    return transfer


def test_load_path_is_an_upload_with_a_size_cap(viewer):
    from scene3d.viewer.camera import CameraPath, Keyframe

    page = connected(viewer)
    button = viewer.gui["path_load"]
    states = viewer.server.gui._current_file_upload_states
    keys = [Keyframe(np.array([0.0, 0.0, -3.0 + j]), np.array([1.0, 0.0, 0.0, 0.0]), 50.0) for j in range(3)]
    good = json.dumps(CameraPath(keys, 48, 32, 10, 2.0).to_json()).encode()

    # declared above the cap: the server stops buffering at once
    _upload(page, button, b"x" * 100, declared=limits.MAX_FILE_BYTES + 1, parts=[b"x" * 100] * 3)
    # declared small, sent large: dropped when the bytes pass the declaration
    _upload(page, button, b"y" * 100, parts=[b"y" * 60_000, b"y" * 60_000, b"y" * 10])
    # a negative size
    _upload(page, button, b"z" * 10, declared=-5, parts=[b"z" * 10] * 2)
    # honest but too large: over the cap
    _upload(page, button, b" " * (limits.MAX_FILE_BYTES + 10) + good)
    # a hostile path: refused by the camera-path bounds
    hostile = json.loads(good)
    hostile["seconds"] = hostile["fps"] = 1e9
    _upload(page, button, json.dumps(hostile).encode(), name="../../hostile.json")
    wait_until(lambda: any("hostile.json" in json.dumps(m) and "fps" in json.dumps(m) for m in page.of_type("NotificationShowMessage")), what="the refusal")
    assert viewer.path.keyframes == [] and not states

    _upload(page, button, good, name="mine.json")
    wait_until(lambda: len(viewer.path.keyframes) == 3, what="the uploaded path")
    assert (viewer.path.width, viewer.path.height, viewer.path.fps, viewer.path.seconds) == (48, 32, 10, 2.0)
    assert (viewer.gui["path_width"].value, viewer.gui["path_fps"].value) == (48, 10)
    assert not states and not viewer.output_dir.exists()  # loading writes nothing
    page.close()


def test_loading_checks_size_before_parsing(viewer):
    with pytest.raises(DataError, match="ceiling") as e:
        viewer.load_path("big.json", b"{" + b" " * limits.MAX_FILE_BYTES + b"}")
    assert "big.json" in str(e.value)


# ---------------------------------------------------------------------------- network notice
def test_network_notice_says_what_a_listener_can_do(tmp_path):
    from scene3d.viewer.server import network_notice

    assert network_notice(SimpleNamespace(host="127.0.0.1", port=8080, output_dir=tmp_path)) is None
    assert network_notice(SimpleNamespace(host="localhost", port=8080, output_dir=tmp_path)) is None
    text = network_notice(SimpleNamespace(host="0.0.0.0", port=8123, output_dir=tmp_path))
    for words in ("0.0.0.0", "8123", "see the scene", "pause", str(tmp_path), "exports/crop-NNN", "download", "cannot name a path", "read or overwrite other files"):
        assert words in text


def test_view_on_the_network_says_so_and_writes_to_the_output_dir(tmp_path):
    """`scene3d view FILE --host 0.0.0.0 --output-dir D` states what a listener can do before serving."""
    import os
    import signal
    import subprocess
    import sys

    from scene3d.export.formats import write_scene

    src = write_scene(tmp_path / "scene.ply", _model(100).to_gaussians().params())
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "scene3d", "view", str(src), "--host", "0.0.0.0", "--port", str(port), "--device", "cpu",
                             "--output-dir", str(tmp_path / "shared")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "COLUMNS": "300"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "run code" in line:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    text = "".join(lines)
    assert f"go to {tmp_path / 'shared'}" in text
    assert f"listens on 0.0.0.0: anyone who can reach this machine on port {port}" in text
    assert "cannot name a path on this machine, read or overwrite other files, or run code" in text
    assert proc.returncode == 0
