"""Fuzzing every reader with seeded mutations of real scenes: each load ends in a dataset with
finite, positive cameras or in one DataError sentence; never another exception, a hang or a large
allocation.

The scenes are the small real ones in ../shared/data (fox, lego_400, colmap_figurine as binary and
text models, and an LLFF poses_bounds.npy made from it); without shared data the built scenes of
test_hostile_scenes.py stand in. Each case mutates one scene file (bytes, or a JSON value, or an
image header), loads the scene in this process under a watchdog and memory tracing, then restores
the file.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from scene3d.data import DataConfig, load_dataset
from scene3d.errors import DataError
from test_hostile_scenes import blender_scene, colmap_scene, llff_scene, nerfstudio_scene

CASES_PER_SCENE = int(os.environ.get("SCENE3D_FUZZ_CASES", "50"))
"""Mutations tried per scene; raise SCENE3D_FUZZ_CASES for a longer hunt (the suite's 50 take seconds)."""
SEED = os.environ.get("SCENE3D_FUZZ_SEED", "0")
"""Another SCENE3D_FUZZ_SEED tries other mutations; the suite's are fixed."""
CASE_TIMEOUT_S = 20  # a watchdog against hangs, far above a normal load (well under a second)
PEAK_BYTES = 256 * 2**20  # most memory Python and numpy may allocate while loading a mutated tiny scene

HOSTILE_VALUES = [float("nan"), float("inf"), -float("inf"), 0, -1, 1e308, 2**64, "abc", "", None, True, [], {}, [[1]], "../../../etc/passwd", "/etc/passwd", 1e-300]
HOSTILE_WORDS = [struct.pack("<d", v) for v in (float("nan"), float("inf"), 0.0, -1.0, 1e300)] + [struct.pack("<Q", v) for v in (0, 2**63, 2**64 - 1, 2**31)]


# ---------------------------------------------------------------------- scenes
def _copy_files(src: Path, dst: Path, names) -> None:
    for name in names:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, dst / name)


def _real_scenes(base: Path) -> dict[str, tuple[Path, list[str]]]:
    """name -> (scene folder, files to mutate), from ../shared/data."""
    scenes = {}
    fox = SHARED_DATA / "fox"
    root = base / "fox"
    _copy_files(fox, root, ["transforms.json"] + [f"images/{p.name}" for p in (fox / "images").iterdir()])
    scenes["nerfstudio"] = (root, ["transforms.json"])

    lego, root = SHARED_DATA / "lego_400", base / "lego"
    for split in ("train", "val"):  # ten frames per split keep each load quick
        data = json.loads((lego / f"transforms_{split}.json").read_text())
        data["frames"] = data["frames"][:10]
        root.mkdir(parents=True, exist_ok=True)
        (root / f"transforms_{split}.json").write_text(json.dumps(data))
        _copy_files(lego, root, [f["file_path"].lstrip("./") + ".png" for f in data["frames"]])
    scenes["blender"] = (root, ["transforms_train.json", "transforms_val.json"])

    fig = SHARED_DATA / "colmap_figurine"
    images = [f"images/{p.name}" for p in (fig / "images").iterdir()]
    root = base / "colmap_bin"
    _copy_files(fig, root, images + [f"sparse/0/{n}" for n in ("cameras.bin", "images.bin", "points3D.bin")])
    scenes["colmap_bin"] = (root, ["sparse/0/cameras.bin", "sparse/0/images.bin", "sparse/0/points3D.bin"])

    import pycolmap

    root = base / "colmap_txt"
    _copy_files(fig, root, images)
    (root / "sparse" / "0").mkdir(parents=True)
    pycolmap.Reconstruction(str(fig / "sparse" / "0")).write_text(str(root / "sparse" / "0"))
    scenes["colmap_txt"] = (root, ["sparse/0/cameras.txt", "sparse/0/images.txt", "sparse/0/points3D.txt"])

    ref = load_dataset(fig, DataConfig(normalize=False, test_every=0, remove_outliers=False))
    c2w = ref.cameras.cam_to_world.double().numpy()
    hwf = np.stack([ref.cameras.height, ref.cameras.width, ref.cameras.fx.double()], -1)
    poses = np.stack([c2w[:, :3, 1], c2w[:, :3, 0], -c2w[:, :3, 2], c2w[:, :3, 3], hwf], -1)
    root = base / "llff"
    (root / "images").mkdir(parents=True)
    for i, p in enumerate(ref.source_paths):
        shutil.copyfile(p, root / "images" / f"img_{i:03d}.jpg")
    np.save(root / "poses_bounds.npy", np.concatenate([poses.reshape(-1, 15), np.tile([0.5, 10.0], (len(ref), 1))], 1))
    scenes["llff"] = (root, ["poses_bounds.npy"])
    return scenes


def _built_scenes(base: Path) -> dict[str, tuple[Path, list[str]]]:
    """The same five formats built in the test, when ../shared/data is absent."""
    return {
        "nerfstudio": (nerfstudio_scene(base / "ns", n=8), ["transforms.json"]),
        "blender": (blender_scene(base / "bl", n=6), ["transforms_train.json", "transforms_val.json"]),
        "colmap_bin": (colmap_scene(base / "cb", "bin", n=8), ["sparse/0/cameras.bin", "sparse/0/images.bin", "sparse/0/points3D.bin"]),
        "colmap_txt": (colmap_scene(base / "ct", "txt", n=8), ["sparse/0/cameras.txt", "sparse/0/images.txt", "sparse/0/points3D.txt"]),
        "llff": (llff_scene(base / "ll", n=8), ["poses_bounds.npy"]),
    }


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    base = tmp_path_factory.mktemp("fuzz")
    return _real_scenes(base) if SHARED_DATA.exists() else _built_scenes(base)


# ---------------------------------------------------------------------- mutations
def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    op = rng.choice(["flip", "word", "truncate", "splice", "insert", "zero"])
    at = rng.randrange(max(1, len(b)))
    if op == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == "word":
        word = rng.choice(HOSTILE_WORDS)
        b[at : at + len(word)] = word
    elif op == "truncate":
        del b[at:]
    elif op == "splice":
        j = rng.randrange(len(b))
        b[at:at] = b[j : j + rng.randint(1, 64)]
    elif op == "insert":
        b[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        b[at : at + rng.randint(1, 32)] = bytes(min(32, len(b) - at))
    return bytes(b)


def _nodes(tree, out, parent=None, key=None):
    out.append((parent, key))
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else []
    for k, v in items:
        _nodes(v, out, tree, k)
    return out


def mutate_json(text: str, rng: random.Random) -> str:
    """A random value of the JSON tree replaced by a hostile one (or a key dropped), or raw bytes mutated."""
    if rng.random() < 0.25:
        return mutate_bytes(text.encode(), rng).decode("utf-8", errors="replace")
    tree = json.loads(text)
    parent, key = rng.choice(_nodes(tree, [])[1:])
    if isinstance(parent, dict) and rng.random() < 0.2:
        del parent[key]
    else:
        parent[key] = rng.choice(HOSTILE_VALUES)
    return json.dumps(tree)


def mutate_text(text: str, rng: random.Random) -> str:
    """A random number of a text model replaced by a hostile one, or raw bytes mutated."""
    words = text.split(" ")
    if rng.random() < 0.3 or len(words) < 2:
        return mutate_bytes(text.encode(), rng).decode("utf-8", errors="replace")
    i = rng.randrange(len(words))
    words[i] = rng.choice(["nan", "inf", "-1", "0", "300", "1e400", "99999999999999999999", "abc", "", "../../etc/passwd"])
    return " ".join(words)


def mutate_npy(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        header_end = data.index(b"\n") + 1
        header = data[:header_end].decode("latin1")
        old, new = rng.choice([("17)", "999999999999)"), ("'<f8'", "'<U8'"), ("'<f8'", "'|O'"), ("(", "(0, "), ("False", "True")])
        header = header.replace(old, new, 1)
        return header.encode("latin1") + data[header_end:]
    return mutate_bytes(data, rng)


def mutated(path: Path, rng: random.Random) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".json":
        return mutate_json(data.decode(), rng).encode()
    if path.suffix == ".txt":
        return mutate_text(data.decode(), rng).encode()
    if path.suffix == ".npy":
        return mutate_npy(data, rng)
    return mutate_bytes(data, rng)


# ---------------------------------------------------------------------- the run
class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang(f"a load ran past the {CASE_TIMEOUT_S} s watchdog")


def assert_sane(ds) -> None:
    """A dataset that loaded has cameras training can use."""
    cams = ds.cameras
    for name in ("world_to_cam", "fx", "fy", "cx", "cy", "dist"):
        assert torch.isfinite(getattr(cams, name)).all(), name
    assert (cams.fx > 0).all() and (cams.fy > 0).all() and (cams.width > 0).all() and (cams.height > 0).all()
    assert int((cams.width * cams.height).max()) <= 120_000_000
    R = cams.world_to_cam[:, :3, :3].double()
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3, dtype=torch.float64).expand_as(R), atol=0.05)
    root = ds.root.resolve()
    assert all(root in p.resolve().parents for p in ds.source_paths)


@pytest.mark.parametrize("scene", ["nerfstudio", "blender", "colmap_bin", "colmap_txt", "llff"])
def test_mutated_scene_loads_or_fails_with_one_sentence(scenes, scene):
    root, targets = scenes[scene]
    rng = random.Random(f"fuzz-{scene}-{SEED}")
    cfg = DataConfig(remove_outliers=False)
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    outcomes = {"loaded": 0, "refused": 0}
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case in range(CASES_PER_SCENE):
            target = images[rng.randrange(len(images))] if rng.random() < 0.1 else root / rng.choice(targets)
            original = target.read_bytes()
            target.write_bytes(mutated(target, rng))
            tracemalloc.start()
            signal.alarm(CASE_TIMEOUT_S)
            try:
                ds = load_dataset(root, cfg)
                if target in ds.source_paths:  # a mutated image is decoded too
                    ds.image(ds.source_paths.index(target))
                assert_sane(ds)
                outcomes["loaded"] += 1
            except DataError as e:
                assert "\n" not in str(e) and str(e).startswith(str(root)), f"case {case}: {e}"
                outcomes["refused"] += 1
            finally:
                signal.alarm(0)
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                target.write_bytes(original)
            assert peak <= PEAK_BYTES, f"case {case} on {target.name} allocated {peak / 2**20:.0f} MiB"
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert outcomes["refused"] >= CASES_PER_SCENE // 5, outcomes  # the mutations do reach the checks
    assert sum(outcomes.values()) == CASES_PER_SCENE
