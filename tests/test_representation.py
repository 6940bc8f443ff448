"""The Representation interface as a plug point: a representation defined only in the tests is
trained, evaluated, rendered, viewed and exported from the CLI with no edit in the package; the
package's layering (no import cycle, models/ below train/ and viewer/, no caller that names a
model or probes one) holds."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.synthetic import write_synthetic_scene

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "scene3d"


def plugin_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m scene3d ARGS`` in a new process that knows the plugin only through SCENE3D_PLUGINS."""
    env = {**os.environ, "SCENE3D_PLUGINS": "tests.plugin_model", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "scene3d", *args], capture_output=True, text=True, timeout=900, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory) -> Path:
    scene = write_synthetic_scene(tmp_path_factory.mktemp("plugin_scene"))
    run = tmp_path_factory.mktemp("plugin") / "run"
    r = plugin_cli("train", str(scene), "-o", str(run), "--model", "toygrid", "--log-every", "10")
    assert r.returncode == 0, r.stderr
    return run


def test_a_plugin_representation_trains_evaluates_renders_and_exports_from_the_cli(plugin_run, tmp_path):
    lines = [json.loads(line) for line in (plugin_run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if r["split"] == "train"]
    assert train[-1]["step"] == 80 and set(train[-1]["terms"]) == {"rgb", "tv"}  # its own losses, by name
    assert train[-1]["psnr"] > train[0]["psnr"] + 3.0  # it learns (measured: 9.8 -> 17.5 dB)
    ev = plugin_cli("eval", str(plugin_run), "--json")
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads(ev.stdout)
    assert metrics["model"] == "toygrid" and metrics["psnr"] > 14.0 and metrics["occupied_voxels"] > 50
    assert abs(metrics["psnr"] - lines[-1]["psnr"]) < 1e-6  # the same model the trainer evaluated
    r = plugin_cli("render", str(plugin_run), "-o", str(tmp_path / "test"))
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "test").glob("*.png"))) == metrics["num_images"]
    ply = tmp_path / "toy.ply"
    r = plugin_cli("export", str(plugin_run), "-o", str(ply))
    assert r.returncode == 0, r.stderr
    from scene3d.export import read_ply

    assert read_ply(ply)["means"].shape[0] == metrics["occupied_voxels"]  # one Gaussian per occupied voxel
    import yaml

    data = yaml.safe_load((plugin_run / "config.yaml").read_text())["scene"]
    ev_file = plugin_cli("eval", str(ply), "--data", data, "--json")
    assert ev_file.returncode == 0, ev_file.stderr
    baked = json.loads(ev_file.stdout)
    assert baked["num_gaussians"] == metrics["occupied_voxels"] and baked["psnr"] > 10.0
    slim = plugin_cli("export", str(plugin_run), "--format", "slimmerf", "-o", str(tmp_path / "x.slimmerf"))
    assert slim.returncode == 2 and "slimmable" in slim.stderr and "Traceback" not in slim.stderr
    rank = plugin_cli("eval", str(plugin_run), "--rank", "2")
    assert rank.returncode == 2 and "slimmable" in rank.stderr


def test_a_plugin_representation_is_shown_in_the_viewer(plugin_run):
    import tests.plugin_model  # noqa: F401  (registers toygrid in this process)
    from scene3d.viewer.camera import camera_pose, viewer_camera
    from scene3d.viewer.server import ViewerServer
    from scene3d.viewer.target import load_target

    target = load_target(plugin_run, torch.device("cpu"), max_thumbnails=2)
    assert target.model.name == "toygrid" and target.cameras is not None
    viewer = ViewerServer(target, port=8130)
    try:
        assert set(viewer.control_handles) == {"density_scale"}  # its own control, declared as data
        wxyz, pos, fov, _ = camera_pose(target.cameras, 0)
        cams = viewer_camera(wxyz, pos, fov, 64, 48)
        frame = viewer.render_image(cams)
        assert frame.shape == (48, 64, 3) and frame.std() > 5
        viewer.control_handles["density_scale"].value = 0.1
        fainter = viewer.render_image(cams)
        assert np.abs(fainter.astype(int) - frame.astype(int)).mean() > 1.0
        assert viewer.gui["crop_export"].disabled is False  # it bakes to Gaussians
    finally:
        viewer.stop()


# ---------------------------------------------------------------------------- layering
def _imports() -> dict[str, set[str]]:
    """module -> the scene3d modules it imports (anywhere in it, function bodies included)."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(REPO).with_suffix("")
        files[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        tree = ast.parse(path.read_text())
        typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking_block(block) for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue  # `if TYPE_CHECKING:` imports exist for annotations only and never run
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("scene3d"):
                submodules = {f"{node.module}.{a.name}" for a in node.names} & set(files)
                deps |= submodules  # `from package import module` imports the module
                if len(submodules) < len(node.names):
                    deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("scene3d"))
        graph[name] = deps
    return {m: {d for d in deps if d in files and d != m} for m, deps in graph.items()}


def _is_type_checking_block(node) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_cycle_and_models_below_train_and_viewer():
    graph = _imports()
    # strongly connected components (Tarjan): any of more than one module is a cycle
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], cycles
    below = {m: sorted(d for d in deps if _package_of(d) in ("scene3d.train", "scene3d.viewer", "scene3d.commands", "scene3d.bench"))
             for m, deps in graph.items() if _package_of(m) == "scene3d.models"}  # fmt: skip
    assert all(not v for v in below.values()), below


def test_no_caller_names_a_model_or_probes_one():
    import scene3d.models as models

    names = set(models._BUILTIN)
    # the one allowed place: the file format SlimmeRF's slimmed models are saved in carries its name
    allowed = {("scene3d/export/formats.py", "slimmerf"), ("scene3d/export/model_file.py", "slimmerf")}
    named, probes = [], []
    probe = re.compile(r"\b(hasattr|getattr)\(\s*[\w.]*model\b")
    for path in PACKAGE.rglob("*.py"):
        rel = str(path.relative_to(REPO))
        if rel.startswith("scene3d/models/"):
            continue
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names and (rel, node.value) not in allowed:
                named.append(f"{rel}:{node.lineno} {node.value!r}")
        probes += [f"{rel}: {m.group(0)}" for m in probe.finditer(text)]
    assert named == [] and probes == [], (named, probes)


def test_registry_lists_builtins_and_declares_capabilities():
    from scene3d.models import check_model_name, get_model, model_names
    from scene3d.models.base import Representation

    assert model_names()[:2] == ["3dgs", "slimmerf"]
    for name in model_names():
        cls = get_model(name)
        assert issubclass(cls, Representation) and cls.name == name and "default" in cls.presets
        assert cls.default_strategy == "none" or cls.caps.densifiable
    gauss, slim = get_model("3dgs"), get_model("slimmerf")
    assert gauss.caps.pinhole_only and gauss.caps.densifiable and gauss.caps.gaussians and not gauss.caps.slimmable
    assert slim.caps.slimmable and not slim.caps.gaussians and not slim.caps.densifiable
    from scene3d.errors import Scene3dError

    with pytest.raises(Scene3dError, match="valid models: 3dgs, slimmerf"):
        check_model_name("nerfy")
