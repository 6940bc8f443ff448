"""The viewer's pieces without a browser: camera conversions, camera paths, render modes, targets,
crops and the representation's controls. The real-browser test is tests/test_viewer_browser.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from scene3d.cameras import Cameras
from scene3d.errors import DataError, Scene3dError
from scene3d.viewer.camera import CameraPath, Keyframe, camera_pose, matrix_to_quat, pose_c2w, quat_to_matrix, slerp, transform_c2w, viewer_camera
from scene3d.viewer.frames import frame_image
from tests.synthetic import known_gaussians, ring_cameras


def _random_rotation(rng) -> np.ndarray:
    q = rng.normal(size=4)
    return quat_to_matrix(q / np.linalg.norm(q))


def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        R = _random_rotation(rng)
        assert np.allclose(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-10)
    # the trace <= 0 branches
    for R in (np.diag([1.0, -1.0, -1.0]), np.diag([-1.0, 1.0, -1.0]), np.diag([-1.0, -1.0, 1.0])):
        assert np.allclose(quat_to_matrix(matrix_to_quat(R)), R, atol=1e-12)


def test_viewer_camera_reproduces_a_training_camera():
    """Looking through a training camera in the browser gives back that camera (pose and focal
    length at the canvas size), so what the viewer shows there is what training saw."""
    cams = ring_cameras(6, 80, 60)
    for i in range(len(cams)):
        wxyz, pos, fov, aspect = camera_pose(cams, i)
        assert aspect == pytest.approx(80 / 60)
        back = viewer_camera(wxyz, pos, fov, 80, 60)
        assert torch.allclose(back.world_to_cam[0], cams.world_to_cam[i], atol=1e-5)
        assert float(back.fy[0]) == pytest.approx(float(cams.fy[i]), rel=1e-5)
        assert float(back.cx[0]) == pytest.approx(40.0) and float(back.cy[0]) == pytest.approx(30.0)


def test_transform_c2w_matches_cameras_transformed():
    cams = ring_cameras(4, 32, 24)
    T = np.eye(4)
    T[:3, :3] = 2.5 * _random_rotation(np.random.default_rng(1))
    T[:3, 3] = [0.3, -1.0, 2.0]
    moved = cams.transformed(torch.from_numpy(T).float())
    for i in range(len(cams)):
        ours = transform_c2w(cams.cam_to_world[i].double().numpy(), T)
        assert np.allclose(ours, moved.cam_to_world[i].double().numpy(), atol=1e-4)


def _path(n: int = 4, loop: bool = False) -> CameraPath:
    rng = np.random.default_rng(2)
    keys = [Keyframe(rng.normal(size=3), matrix_to_quat(_random_rotation(rng)), 40.0 + 5 * j) for j in range(n)]
    return CameraPath(keys, width=64, height=48, fps=10, seconds=3.1, loop=loop)


def test_camera_path_passes_through_its_keyframes():
    path = _path(4)
    segments = 3
    frames = 3 * segments + 1  # keyframe j lands on frame 3 j
    c2ws, fovs = path.poses(frames)
    for j, k in enumerate(path.keyframes):
        assert np.allclose(c2ws[3 * j], k.c2w(), atol=1e-9)
        assert fovs[3 * j] == pytest.approx(k.fov)
    # in between, the rotation stays a rotation and the path is continuous
    for c2w in c2ws:
        assert np.allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-9)
    steps = np.linalg.norm(np.diff(c2ws[:, :3, 3], axis=0), axis=-1)
    assert steps.max() < 4 * np.median(steps) + 1e-9


def test_looping_path_closes_and_slerp_takes_the_short_way():
    path = _path(3, loop=True)
    c2ws, _ = path.poses(30)
    assert np.allclose(c2ws[0], path.keyframes[0].c2w(), atol=1e-9)
    assert np.allclose(c2ws[10], path.keyframes[1].c2w(), atol=1e-9)
    # the frame after the last one would be the first keyframe again: the last step is an ordinary one
    last_gap = np.linalg.norm(c2ws[-1, :3, 3] - path.keyframes[0].position)
    assert last_gap < 3 * np.median(np.linalg.norm(np.diff(c2ws[:, :3, 3], axis=0), axis=-1))
    q = matrix_to_quat(_random_rotation(np.random.default_rng(3)))
    mid = slerp(q, -q, 0.5)  # the same rotation: halfway is that rotation, not a half-turn
    assert np.allclose(quat_to_matrix(mid), quat_to_matrix(q), atol=1e-9)


def test_camera_path_json_round_trip_and_frame(tmp_path):
    path = _path(3)
    file = path.save(tmp_path / "p.json")
    back = CameraPath.load(file)
    assert (back.width, back.height, back.fps, back.seconds, back.loop) == (64, 48, 10, 3.1, False)
    assert back.num_frames == 31
    for a, b in zip(path.keyframes, back.keyframes):
        assert np.allclose(a.position, b.position) and np.allclose(a.wxyz, b.wxyz) and a.fov == b.fov
    # cameras in a model frame: the path's keyframe 0 moved by to_model
    T = np.diag([2.0, 2.0, 2.0, 1.0])
    T[:3, 3] = [1.0, 0.0, 0.0]
    cams = back.cameras(T, num_frames=5)
    assert len(cams) == 5 and int(cams.width[0]) == 64 and int(cams.height[0]) == 48
    assert np.allclose(cams.centers[0].double().numpy(), (T @ np.append(path.keyframes[0].position, 1))[:3], atol=1e-5)
    assert float(cams.fy[0]) == pytest.approx(24 / math.tan(math.radians(path.keyframes[0].fov) / 2), rel=1e-5)


@pytest.mark.parametrize(
    "content, words",
    [
        ("not json", "not valid JSON"),
        (json.dumps({"format": "other"}), "format"),
        (json.dumps({"format": "scene3d-camera-path", "version": 7}), "version"),
        (json.dumps({"format": "scene3d-camera-path", "version": 1, "width": 64, "height": 48, "fps": 10, "seconds": 1, "keyframes": []}), "no keyframes"),
        (json.dumps({"format": "scene3d-camera-path", "version": 1, "width": 64, "height": 48, "fps": 10, "seconds": 1, "keyframes": [{"position": [0, 0], "wxyz": [1, 0, 0, 0], "fov": 50}]}), "3 numbers"),
        (json.dumps({"format": "scene3d-camera-path", "version": 1, "width": 64, "height": 48, "fps": 10, "seconds": 1, "keyframes": [{"position": [0, 0, 0], "wxyz": [0, 0, 0, 0], "fov": 50}]}), "zero quaternion"),
        (json.dumps({"format": "scene3d-camera-path", "version": 1, "width": 64, "height": 48, "fps": 10, "seconds": 1, "keyframes": [{"position": [0, 0, 0], "wxyz": [1, 0, 0, 0]}]}), "missing"),
        (json.dumps({"format": "scene3d-camera-path", "version": 1, "width": 64, "height": 48, "fps": -1, "seconds": 1, "keyframes": [{"position": [0, 0, 0], "wxyz": [1, 0, 0, 0], "fov": 50}]}), '"fps" is -1, outside 1 to 240'),
    ],
)
def test_malformed_camera_paths_are_refused(tmp_path, content, words):
    f = tmp_path / "bad.json"
    f.write_text(content)
    with pytest.raises(DataError, match=words) as e:
        CameraPath.load(f)
    assert str(f) in str(e.value)


def _path_json(**fields) -> dict:
    data = {"format": "scene3d-camera-path", "version": 1, "width": 64, "height": 48, "fps": 10, "seconds": 1.0,
            "keyframes": [{"position": [0.0, 0.0, 0.0], "wxyz": [1.0, 0.0, 0.0, 0.0], "fov": 50.0}]}
    data.update(fields)
    return data


def test_a_billion_seconds_at_a_billion_fps_is_refused_at_once(tmp_path):
    f = tmp_path / "endless.json"
    f.write_text(json.dumps(_path_json(seconds=1e9, fps=1e9)))
    with pytest.raises(DataError, match='"fps" is 1e\\+09, outside 1 to 240') as e:
        CameraPath.load(f)
    assert str(f) in str(e.value)
    # each within its own range, too many frames together
    with pytest.raises(DataError, match=f"36000 frames|ceiling of {36000}"):
        CameraPath.from_json(_path_json(seconds=3600.0, fps=240.0), f)


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"seconds": float("nan")}, '"seconds" is nan, not a finite number'),
        ({"fps": float("inf")}, '"fps" is inf, not a finite number'),
        ({"width": 100_000}, '"width" is 100000, outside 8 to 8192'),
        ({"height": 4}, '"height" is 4, outside 8 to 8192'),
        ({"width": 64.5}, '"width" must be a whole number'),
        ({"width": "64"}, '"width" must be a number, not str'),
        ({"height": True}, '"height" must be a number, not bool'),
        ({"width": 10**400}, '"width" is out of range'),
        ({"seconds": 0}, '"seconds" is 0, outside'),
        ({"loop": "yes"}, '"loop" must be true or false'),
        ({"keyframes": [{"position": [0.0, float("nan"), 0.0], "wxyz": [1, 0, 0, 0], "fov": 50}]}, r'"keyframes\[0\].position" is nan'),
        ({"keyframes": [{"position": [0, 0, 0], "wxyz": [1, 0, float("inf"), 0], "fov": 50}]}, r'"keyframes\[0\].wxyz" is inf'),
        ({"keyframes": [{"position": [0, 0, 0], "wxyz": [1, 0, 0, 0], "fov": float("nan")}]}, r'"keyframes\[0\].fov" is nan'),
        ({"keyframes": [{"position": [0, 0, 0], "wxyz": [1, 0, 0, 0], "fov": 180}]}, r'"keyframes\[0\].fov" is 180, outside 0.1 to 179'),
        ({"keyframes": [{"position": [1e300, 0, 0], "wxyz": [1, 0, 0, 0], "fov": 50}]}, r'"keyframes\[0\].position" is 1e\+300, outside'),
        ({"keyframes": [{"position": [0, 0, 0], "wxyz": [1, 0, 0, 0], "fov": 50}] * 1001}, '1001 keyframes, above the ceiling of 1000'),
        ({"keyframes": {"0": 1}}, '"keyframes" must be a list'),
        ({"width": None}, '"width" must be a number, not NoneType'),
    ],
)
def test_camera_path_fields_are_bounded_and_named(tmp_path, fields, words):
    f = tmp_path / "p.json"
    f.write_text(json.dumps(_path_json(**fields)))
    with pytest.raises(DataError, match=words) as e:
        CameraPath.load(f)
    assert str(e.value).startswith(f"{f}: is not a valid camera path: ") and "\n" not in str(e.value)


def test_camera_path_files_are_size_capped_before_reading(tmp_path):
    from scene3d.viewer.camera import MAX_FILE_BYTES, MAX_KEYFRAMES

    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing read, nothing allocated
    with pytest.raises(DataError, match="above the camera-path ceiling") as e:
        CameraPath.load(big)
    assert str(big) in str(e.value)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000)
    with pytest.raises(DataError, match="not valid JSON"):
        CameraPath.load(deep)
    # the largest path the ceilings allow, as the viewer saves it, fits under the size cap
    rng = np.random.default_rng(0)
    keys = [Keyframe(rng.normal(size=3) * 1e6, matrix_to_quat(_random_rotation(rng)), 179.0 - rng.random()) for _ in range(MAX_KEYFRAMES)]
    saved = CameraPath(keys, 8192, 8192, 240.0, 150.0).save(tmp_path / "largest.json")
    assert saved.stat().st_size <= MAX_FILE_BYTES
    assert len(CameraPath.load(saved).keyframes) == MAX_KEYFRAMES


def _model(n: int = 300):
    from scene3d.models.gaussians import GaussianConfig, GaussianModel
    from scene3d.renderers.gaussians import rgb_to_sh

    g = known_gaussians(n)
    params = {
        "means": g["means"],
        "quats": g["quats"],
        "scales": g["scales"].log(),
        "opacities": torch.logit(g["opacities"]),
        "sh0": rgb_to_sh(g["colors"])[:, None, :],
        "shN": 0.1 * torch.randn(n, 3, 3, generator=torch.Generator().manual_seed(1)),
    }
    return GaussianModel(params, GaussianConfig(sh_degree=1, backend="cpu"), scene_scale=1.0)


def test_render_modes():
    model = _model()
    cam = ring_cameras(1, 48, 40)
    out = model.render(cam, background=torch.tensor([0.0, 0.0, 1.0]))
    rgb, depth, alpha = (frame_image(out, m, (0.0, 0.0, 1.0)) for m in ("rgb", "depth", "alpha"))
    for img in (rgb, depth, alpha):
        assert img.shape == (40, 48, 3) and img.dtype == np.uint8
    assert not np.array_equal(rgb, depth) and not np.array_equal(rgb, alpha)
    a = out.alpha[0, ..., 0].numpy()
    assert np.array_equal(alpha[..., 0], alpha[..., 1])  # grey
    assert np.allclose(alpha[..., 0] / 255.0, np.clip(a, 0, 1), atol=1 / 255)
    empty = a < 0.5
    if empty.any():
        assert (depth[empty] == [0, 0, 255]).all()  # uncovered pixels show the background
    # turbo: the nearest covered pixels are warm (red high), the farthest cool (blue high)
    d = np.where(empty, np.nan, out.depth[0, ..., 0].numpy())
    near, far = np.unravel_index(np.nanargmin(d), d.shape), np.unravel_index(np.nanargmax(d), d.shape)
    assert depth[near][0] > depth[near][2] and depth[far][2] > depth[far][0]
    with pytest.raises(ValueError, match="render mode"):
        frame_image(out, "normals")


def test_gaussian_viewer_controls_change_the_render():
    model = _model()
    cam = ring_cameras(1, 48, 40)
    keys = {c.key for c in model.controls()}
    assert keys == {"sh_degree", "scale", "min_opacity"}
    base = model.render(cam).rgb
    assert torch.allclose(base, model.render(cam).rgb, atol=1e-6)  # the defaults are the trained model
    assert not torch.allclose(base, model.render(cam, options={"scale": 0.3}).rgb, atol=1e-3)
    assert not torch.allclose(base, model.render(cam, options={"sh_degree": 0}).rgb, atol=1e-3)  # view-dependent colour off
    model.params["opacities"].data[::2] = -2.5  # half the Gaussians faint (opacity 0.076)
    hidden = model.render(cam, options={"min_opacity": 0.1})
    assert not torch.allclose(model.render(cam).alpha, hidden.alpha)


def test_crop_renders_and_exports_only_the_box(tmp_path):
    from scene3d.export.formats import read_scene, write_scene
    from scene3d.viewer.target import load_target

    model = _model(400)
    means = model.params["means"].detach()
    lo, hi = means.min(0).values.numpy(), np.zeros(3)
    inside = int(((means >= torch.from_numpy(lo).float()) & (means <= 0)).all(-1).sum())
    assert 0 < inside < 400
    cam = ring_cameras(1, 48, 40)
    full, cropped = model.render(cam), model.render(cam, crop=(lo, hi))
    assert cropped.alpha.sum() < full.alpha.sum()
    params = model.to_gaussians(crop=(lo, hi)).params()
    assert params["means"].shape[0] == inside
    # a file viewed, cropped and written again: the same Gaussians, in the file's frame
    src = write_scene(tmp_path / "scene.ply", model.to_gaussians().params())
    target = load_target(src, torch.device("cpu"))
    assert target.kind == "file" and np.allclose(target.to_input, np.eye(4))
    out = write_scene(tmp_path / "crop.ply", target.model.to_gaussians(crop=(lo, hi)).params(), transform=target.to_input)
    back = read_scene(out)
    assert back["means"].shape[0] == inside
    assert torch.allclose(back["means"], params["means"], atol=1e-6)


def test_view_targets_are_checked_before_serving(tmp_path):
    from scene3d.viewer.target import load_target

    with pytest.raises(DataError, match="does not exist"):
        load_target(tmp_path / "nothing.ply", torch.device("cpu"))
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nend_header\n\x00\x01")
    with pytest.raises(Scene3dError) as e:
        load_target(bad, torch.device("cpu"))
    assert "bad.ply" in str(e.value)
    folder = tmp_path / "not_a_run"
    folder.mkdir()
    with pytest.raises(DataError, match="config.yaml"):
        load_target(folder, torch.device("cpu"))
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(Scene3dError, match="x.txt"):
        load_target(tmp_path / "x.txt", torch.device("cpu"))


def test_view_command_refuses_a_missing_target_before_serving(tmp_path, capsys):
    from scene3d.cli import main

    assert main(["view", str(tmp_path / "missing_run")]) == 2
    err = capsys.readouterr().err
    assert "missing_run" in err and "does not exist" in err


def test_render_path_command_writes_a_video(tmp_path):
    """A camera path saved by the viewer renders through the CLI, for a scene file."""
    import imageio.v3 as iio

    from scene3d.cli import main
    from scene3d.export.formats import write_scene

    src = write_scene(tmp_path / "scene.ply", _model(300).to_gaussians().params())
    cams = ring_cameras(3, 64, 48)
    keys = []
    for i in range(3):
        wxyz, pos, fov, _ = camera_pose(cams, i)
        keys.append(Keyframe(pos, wxyz, math.degrees(fov)))
    CameraPath(keys, width=64, height=48, fps=8, seconds=1.0).save(tmp_path / "path.json")
    out = tmp_path / "video.mp4"
    assert main(["render", str(src), "--path", str(tmp_path / "path.json"), "-o", str(out)]) == 0
    frames = np.stack(list(iio.imiter(out)))
    assert frames.shape[0] == 8 and frames.shape[1:3] == (48, 64)
    # the first frame is the model seen from keyframe 0
    expected = frame_image(_model(300).render(cams[0]), "rgb")
    assert np.abs(frames[0].astype(float) - expected).mean() < 6.0


def test_view_command_serves_a_scene_file_on_localhost(tmp_path):
    """`scene3d view FILE` prints its URL on 127.0.0.1 and serves viser's page there until stopped."""
    import os
    import re
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    from scene3d.export.formats import write_scene

    src = write_scene(tmp_path / "scene.ply", _model(200).to_gaussians().params())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "scene3d", "view", str(src), "--port", str(port), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "COLUMNS": "200"})
    try:
        url = None
        for line in proc.stdout:
            m = re.search(r"http://[\d.]+:\d+", line)
            if "scene3d view" in line and m:
                url = m.group(0)
                break
        assert url == f"http://127.0.0.1:{port}"
        html = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "<html" in html.lower()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0


def test_train_with_live_viewer_from_the_cli(tmp_path):
    """`scene3d train --viewer --no-viewer-wait` trains with the viewer up and ends with training."""
    from scene3d.cli import main
    from tests.synthetic import write_synthetic_scene

    scene = write_synthetic_scene(tmp_path / "scene", n_views=8, width=48, height=36)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    args = ["train", str(scene), "-o", str(out), "--max-steps", "30", "--model.sh-degree", "0", "--viewer", "--viewer-port", str(port), "--no-viewer-wait"]
    assert main(args) == 0
    assert (out / "checkpoints" / "latest.pt").is_file()
    # the viewer benchmark on that run: render times per mode, and the same steps trained without,
    # with and again without the live viewer (through Trainer.timed_step, as `train --viewer` does)
    assert main(["bench", "view", str(out), "--size", "32", "--frames", "2", "--train-steps", "3", "--json"]) == 0
    result = json.loads((out / "bench_view.json").read_text())
    assert [r["mode"] for r in result["render"]] == ["rgb", "depth"]
    assert all(r["frames"] == 2 and r["median_ms"] > 0 for r in result["render"])
    training = result["training"]
    assert training["steps"] == 3 and all(training[f"{k} s/step"] > 0 for k in ("without viewer", "with viewer", "without viewer (again)"))
