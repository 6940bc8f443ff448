"""3DGS PLY export: SH rotation, similarity transforms of Gaussians, the PLY writer and reader."""

from __future__ import annotations

import math
import os
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scene3d.cameras import quaternion_to_matrix
from scene3d.errors import DataError
from scene3d.export import (
    eval_sh,
    eval_sh_basis,
    ply_property_names,
    read_ply,
    rotate_sh,
    sh_rotation_matrices,
    transform_gaussians,
    write_ply,
)
from scene3d.export import ply as ply_module
from scene3d.export.transform import decompose_similarity, matrix_to_quaternion

finite = dict(allow_nan=False, allow_infinity=False)
quats = st.lists(st.floats(-1, 1, **finite), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.2)
seeds = st.integers(0, 2**32 - 1)
degrees = st.integers(1, 3)
KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")


def rotation(q) -> torch.Tensor:
    return quaternion_to_matrix(torch.tensor(q, dtype=torch.float64))


def similarity(q, log_s: float, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = math.exp(log_s) * rotation(q).numpy()
    T[:3, 3] = t
    return T


def random_model(n: int, degree: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return {
        "means": torch.randn(n, 3, generator=g) * 3,
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.randn(n, 3, generator=g) - 3,
        "opacities": torch.randn(n, generator=g),
        "sh0": torch.randn(n, 1, 3, generator=g),
        "shN": torch.randn(n, k - 1, 3, generator=g) * 0.3,
    }


def full_sh(sh0: torch.Tensor, shN: torch.Tensor) -> torch.Tensor:
    return torch.cat([sh0, shN], dim=1)


def covariance(quats: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    R = quaternion_to_matrix(quats.to(torch.float64))
    S = torch.exp(log_scales.to(torch.float64))
    return R @ torch.diag_embed(S**2) @ R.transpose(-1, -2)


# ---------------------------------------------------------------------------------------------
# SH basis and rotation


def test_basis_is_orthonormal_on_the_sphere():
    """The constants give an orthonormal basis: 4 pi * mean over the sphere of Y_i Y_j = delta_ij."""
    n = 20_000  # Fibonacci-lattice quadrature: error ~4e-6 at this size
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = i * math.pi * (3 - math.sqrt(5))
    r = torch.sqrt(1 - z * z)
    dirs = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)
    Y = eval_sh_basis(3, dirs)
    gram = 4 * math.pi * (Y[:, :, None] * Y[:, None, :]).mean(dim=0)
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=2e-5, rtol=0)


def test_basis_matches_gsplat():
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    dirs = torch.randn(500, 3, dtype=torch.float64)
    ours = eval_sh_basis(3, dirs)
    theirs = torch_impl._eval_sh_bases_fast(16, dirs / dirs.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(ours, theirs, atol=1e-12, rtol=0)


def test_rotation_direction_by_hand():
    """A band-1 lobe pointing along +x, turned 90 degrees about z, points along +y."""
    c1 = 0.4886025119029199
    R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # x -> y
    shN = torch.zeros(1, 3, 1)
    shN[0, 2, 0] = -1.0  # Y_3 = -c1 x, so the colour is 0.5 + c1 x: brightest seen along +x
    rotated = rotate_sh(shN, R)
    expected = torch.zeros(1, 3, 1)
    expected[0, 0, 0] = -1.0  # Y_1 = -c1 y: brightest along +y
    torch.testing.assert_close(rotated, expected, atol=1e-12, rtol=0)
    sh = full_sh(torch.zeros(1, 1, 1), rotated)
    assert eval_sh(sh, torch.tensor([[0.0, 1.0, 0.0]])).item() == pytest.approx(0.5 + c1)


@settings(max_examples=60, deadline=None)
@given(quats, seeds, degrees)
def test_rotated_sh_seen_from_rotated_direction_is_unchanged(q, seed, degree):
    R = rotation(q)
    rng = np.random.default_rng(seed)
    k = (degree + 1) ** 2
    sh0 = torch.from_numpy(rng.uniform(-1, 1, (32, 1, 3))).float()
    shN = torch.from_numpy(rng.uniform(-1, 1, (32, k - 1, 3))).float()
    dirs = torch.from_numpy(rng.normal(size=(32, 3))).float()
    before = eval_sh(full_sh(sh0, shN), dirs)
    after = eval_sh(full_sh(sh0, rotate_sh(shN, R)), dirs @ R.float().T)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(quats)
def test_band_matrices_are_orthogonal(q):
    mats = sh_rotation_matrices(rotation(q), 3)
    assert [m.shape[0] for m in mats] == [1, 3, 5, 7]
    assert mats[0].item() == pytest.approx(1.0)
    for m in mats:
        torch.testing.assert_close(m @ m.T, torch.eye(len(m), dtype=m.dtype), atol=1e-10, rtol=0)
        assert torch.linalg.det(m).item() == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(quats, quats, seeds)
def test_rotations_compose(q1, q2, seed):
    R1, R2 = rotation(q1), rotation(q2)
    shN = torch.from_numpy(np.random.default_rng(seed).uniform(-1, 1, (8, 15, 3)))
    torch.testing.assert_close(rotate_sh(rotate_sh(shN, R1), R2), rotate_sh(shN, R2 @ R1), atol=1e-10, rtol=0)


def test_identity_and_degree_zero():
    shN = torch.randn(5, 8, 3)
    torch.testing.assert_close(rotate_sh(shN, torch.eye(3)), shN, atol=1e-6, rtol=0)
    assert rotate_sh(torch.zeros(5, 0, 3), rotation([0.3, 0.1, 0.5, 0.2])).shape == (5, 0, 3)


def test_rotate_sh_refuses_bad_input():
    with pytest.raises(ValueError, match="not a rotation"):
        rotate_sh(torch.zeros(1, 3, 3), torch.diag(torch.tensor([1.0, 1.0, -1.0])))
    with pytest.raises(ValueError, match="0, 3, 8 or 15"):
        rotate_sh(torch.zeros(1, 4, 3), torch.eye(3))


# ---------------------------------------------------------------------------------------------
# Transforming Gaussians

similarities = st.builds(similarity, quats, st.floats(-2.5, 2.5), st.lists(st.floats(-20, 20), min_size=3, max_size=3))


@settings(max_examples=60, deadline=None)
@given(quats)
def test_matrix_to_quaternion_inverts_quaternion_to_matrix(q):
    R = rotation(q)
    for M in (R, R @ torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)), torch.diag(torch.tensor([-1.0, 1.0, -1.0]))):
        q_back = matrix_to_quaternion(M)
        assert q_back[0] >= 0 and abs(q_back.norm().item() - 1) < 1e-12
        torch.testing.assert_close(quaternion_to_matrix(q_back), M.double(), atol=1e-12, rtol=0)


@settings(max_examples=40, deadline=None)
@given(similarities, seeds)
def test_transform_then_inverse_is_identity(T, seed):
    p = random_model(64, 3, seed % 1000)
    back = transform_gaussians(transform_gaussians(p, T), np.linalg.inv(T))
    torch.testing.assert_close(back["means"], p["means"], atol=1e-4, rtol=1e-5)
    q0 = p["quats"] / p["quats"].norm(dim=-1, keepdim=True)
    sign = torch.sign((back["quats"] * q0).sum(-1, keepdim=True))
    torch.testing.assert_close(back["quats"] * sign, q0, atol=1e-5, rtol=0)
    torch.testing.assert_close(back["scales"], p["scales"], atol=1e-5, rtol=0)
    for key in ("opacities", "sh0"):
        assert torch.equal(back[key], p[key])
    torch.testing.assert_close(back["shN"], p["shN"], atol=1e-5, rtol=0)


@settings(max_examples=40, deadline=None)
@given(similarities)
def test_transformed_covariance_is_s2_R_sigma_RT(T):
    p = random_model(32, 1)
    out = transform_gaussians(p, T)
    s = np.cbrt(np.linalg.det(T[:3, :3]))
    R = torch.from_numpy(T[:3, :3] / s)
    expected = s**2 * R @ covariance(p["quats"], p["scales"]) @ R.T
    got = covariance(out["quats"], out["scales"])
    scale = expected.abs().amax(dim=(-1, -2), keepdim=True)
    assert ((got - expected).abs() / scale).max() < 1e-5
    moved = p["means"].double() @ torch.from_numpy(T[:3, :3]).T + torch.from_numpy(T[:3, 3])
    torch.testing.assert_close(out["means"].double(), moved, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["quats"].norm(dim=-1), torch.ones(32), atol=1e-6, rtol=0)


def test_colour_seen_from_a_camera_survives_the_transform():
    """Viewing direction mean - camera centre maps to s R (mean - centre): the colours agree."""
    T = similarity([0.2, -0.7, 0.4, 0.5], 0.8, [3.0, -1.0, 2.0])
    p = random_model(200, 3)
    out = transform_gaussians(p, T)
    cams = torch.randn(7, 3, dtype=torch.float64) * 10
    cams_new = cams @ torch.from_numpy(T[:3, :3]).T + torch.from_numpy(T[:3, 3])
    dirs = p["means"].double()[None] - cams[:, None]
    dirs_new = out["means"].double()[None] - cams_new[:, None]
    before = eval_sh(full_sh(p["sh0"], p["shN"]).double(), dirs)
    after = eval_sh(full_sh(out["sh0"], out["shN"]).double(), dirs_new)
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)


def test_transform_does_not_mutate_and_keeps_other_keys():
    p = random_model(10, 2)
    p["features"] = torch.randn(10, 4)
    copy = {k: v.clone() for k, v in p.items()}
    out = transform_gaussians(p, similarity([1, 2, 3, 4], 0.5, [1, 2, 3]))
    for k in p:
        assert torch.equal(p[k], copy[k])
    assert out["features"] is p["features"]
    assert all(out[k].dtype == torch.float32 for k in KEYS)


@pytest.mark.parametrize(
    "matrix, problem",
    [
        (np.diag([1.0, 1.0, -1.0, 1.0]), "determinant"),
        (np.diag([1.0, 2.0, 1.0, 1.0]), "not a similarity"),
        (np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1.0]]), "last row"),
        (np.eye(3), "4x4"),
        (np.full((4, 4), np.nan), "non-finite"),
    ],
)
def test_non_similarities_are_refused(matrix, problem):
    with pytest.raises(ValueError, match=problem):
        decompose_similarity(matrix)


# ---------------------------------------------------------------------------------------------
# Writing and reading


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_is_exact(tmp_path, degree):
    p = random_model(257, degree, seed=degree)
    path = write_ply(tmp_path / "m.ply", p)
    back = read_ply(path)
    assert set(back) == set(KEYS)
    for k in KEYS:
        assert back[k].dtype == torch.float32
        assert torch.equal(back[k], p[k]), k
    assert os.path.getsize(path) == len(_header_of(path)) + 257 * 4 * len(ply_property_names(degree))


def test_round_trip_with_transform(tmp_path):
    p = random_model(300, 3)
    T_input_to_norm = similarity([0.9, 0.1, -0.3, 0.2], -1.2, [0.5, -4.0, 1.0])
    export = np.linalg.inv(T_input_to_norm)
    write_ply(tmp_path / "m.ply", p, transform=export)
    in_input_frame = read_ply(tmp_path / "m.ply")
    expected = transform_gaussians(p, export)
    for k in KEYS:
        assert torch.equal(in_input_frame[k], expected[k]), k
    back = read_ply(tmp_path / "m.ply", transform=T_input_to_norm)
    torch.testing.assert_close(back["means"], p["means"], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(back["shN"], p["shN"], atol=1e-5, rtol=0)


def _look_at_c2w(centres: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """OpenCV camera-to-world matrices [N, 4, 4] (x right, y down, z forward) looking at ``target``."""
    c2w = np.tile(np.eye(4), (len(centres), 1, 1))
    for i, c in enumerate(centres):
        z = (target - c) / np.linalg.norm(target - c)
        x = np.cross(z, up)
        x /= np.linalg.norm(x)
        c2w[i, :3, :3] = np.stack([x, np.cross(z, x), z], axis=1)
        c2w[i, :3, 3] = c
    return c2w


def test_export_puts_the_model_where_the_input_cameras_are(tmp_path):
    """Train-frame Gaussians at the normalised camera centres come out at the input-frame centres,
    and each camera sees the same view-dependent colours before and after export."""
    from scene3d.data.dataset import normalization_transform

    rng = np.random.default_rng(3)
    target, up = np.array([12.0, -3.0, 40.0]), np.array([0.3, -0.2, 0.93])
    angles = np.linspace(0, 2 * np.pi, 9)[:-1]
    ring = np.stack([np.cos(angles), np.sin(angles), 0.3 * np.ones_like(angles)], -1) * 25.0
    centres = target + ring @ np.linalg.qr(rng.normal(size=(3, 3)))[0].T
    c2w = _look_at_c2w(centres, target, up)
    T = normalization_transform(c2w)  # input -> normalised, as a SceneDataset records it
    centres_norm = centres @ T[:3, :3].T + T[:3, 3]

    p = random_model(8, 3)
    p["means"] = torch.from_numpy(centres_norm).float() * 0.5  # halfway to the scene centre
    write_ply(tmp_path / "export.ply", p, transform=np.linalg.inv(T))
    exported = read_ply(tmp_path / "export.ply")
    np.testing.assert_allclose(exported["means"].numpy(), (centres + target) / 2, atol=1e-4)

    dirs_norm = p["means"].double()[None] - torch.from_numpy(centres_norm)[:, None]
    dirs_input = exported["means"].double()[None] - torch.from_numpy(centres)[:, None]
    seen_in_training = eval_sh(full_sh(p["sh0"], p["shN"]).double(), dirs_norm)
    seen_in_viewer = eval_sh(full_sh(exported["sh0"], exported["shN"]).double(), dirs_input)
    torch.testing.assert_close(seen_in_viewer, seen_in_training, atol=1e-4, rtol=0)


def test_degree_zero_model_without_shN(tmp_path):
    p = random_model(5, 0)
    del p["shN"]
    back = read_ply(write_ply(tmp_path / "m.ply", p))
    assert back["shN"].shape == (5, 0, 3)
    assert "f_rest_0" not in _header_of(tmp_path / "m.ply").decode()


def test_f_rest_is_channel_major(tmp_path):
    p = random_model(2, 3)
    k = torch.arange(15, dtype=torch.float32)[None, :, None]
    c = torch.arange(3, dtype=torch.float32)[None, None, :]
    p["shN"] = (100 * c + k).expand(2, 15, 3).clone()
    path = write_ply(tmp_path / "m.ply", p)
    rows = _raw_rows(path)
    for i in range(45):
        assert rows[f"f_rest_{i}"].tolist() == [100 * (i // 15) + i % 15] * 2
    assert rows["f_rest_0"][0] == 0 and rows["f_rest_15"][0] == 100 and rows["f_rest_44"][0] == 214


def test_header_matches_the_original_format(tmp_path):
    write_ply(tmp_path / "m.ply", random_model(3, 3))
    expected_names = (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(45)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )
    assert len(expected_names) == 62
    expected = "ply\nformat binary_little_endian 1.0\nelement vertex 3\n"
    expected += "".join(f"property float {n}\n" for n in expected_names) + "end_header\n"
    assert _header_of(tmp_path / "m.ply").decode() == expected
    rows = _raw_rows(tmp_path / "m.ply")
    assert not rows["nx"].any() and not rows["ny"].any() and not rows["nz"].any()


def test_write_refuses_non_finite_values_naming_them(tmp_path):
    p = random_model(4, 1)
    p["scales"][2, 1] = float("nan")
    with pytest.raises(ValueError, match="scales has 1 non-finite"):
        write_ply(tmp_path / "m.ply", p)
    p = random_model(4, 1)
    p["shN"][0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="shN"):
        write_ply(tmp_path / "m.ply", p)
    assert list(tmp_path.iterdir()) == []


def test_write_refuses_bad_shapes(tmp_path):
    p = random_model(4, 1)
    p["opacities"] = p["opacities"][:, None]
    with pytest.raises(ValueError, match="opacities must have shape"):
        write_ply(tmp_path / "m.ply", p)


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = write_ply(tmp_path / "m.ply", random_model(4, 1))
    old = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(ply_module.os, "fsync", broken_fsync)
    with pytest.raises(DataError, match=r"m\.ply: could not be written \(disk full\)"):
        write_ply(path, random_model(400, 3))
    assert path.read_bytes() == old
    assert [f.name for f in tmp_path.iterdir()] == ["m.ply"]


def test_reads_and_agrees_with_gsplat(tmp_path):
    gsplat = pytest.importorskip("gsplat")
    p = random_model(100, 3)
    gsplat.export_splats(**p, format="ply", save_to=str(tmp_path / "gsplat.ply"))
    write_ply(tmp_path / "ours.ply", p)
    theirs, ours = read_ply(tmp_path / "gsplat.ply"), read_ply(tmp_path / "ours.ply")
    gs_rows, our_rows = _raw_rows(tmp_path / "gsplat.ply"), _raw_rows(tmp_path / "ours.ply")
    for name in gs_rows.dtype.names:  # every property gsplat writes, by name, bit for bit
        assert np.array_equal(gs_rows[name], our_rows[name]), name
    for k in KEYS:
        assert torch.equal(theirs[k], ours[k]), k
        assert torch.equal(theirs[k], p[k]), k


def test_open3d_reads_our_file(tmp_path):
    o3d = pytest.importorskip("open3d")
    p = random_model(123, 3)
    path = write_ply(tmp_path / "m.ply", p)
    cloud = o3d.io.read_point_cloud(str(path))
    assert len(cloud.points) == 123
    np.testing.assert_allclose(np.asarray(cloud.points), p["means"].numpy(), rtol=1e-6, atol=1e-6)
    tensor_cloud = o3d.t.io.read_point_cloud(str(path))
    if "f_rest" in tensor_cloud.point:  # open3d's own 3DGS reader (>= 0.19): an independent check of f_rest order
        np.testing.assert_array_equal(tensor_cloud.point["f_rest"].numpy(), p["shN"].numpy())
        np.testing.assert_allclose(tensor_cloud.point["scale"].numpy(), p["scales"].exp().numpy(), rtol=1e-6)  # it exponentiates


# ---------------------------------------------------------------------------------------------
# Other writers' files: any property order, extra properties, other types and encodings


def _header_of(path) -> bytes:
    data = open(path, "rb").read()
    return data[: data.index(b"end_header\n") + len(b"end_header\n")]


def _raw_rows(path) -> np.ndarray:
    """The vertex rows of a float-only binary little-endian PLY, straight from its header."""
    header = _header_of(path)
    names = [line.split()[2] for line in header.decode().splitlines() if line.startswith("property")]
    return np.frombuffer(open(path, "rb").read()[len(header) :], dtype=[(n, "<f4") for n in names])


def _ply(fmt: str, columns: dict[str, tuple[str, np.ndarray]], before: str = "", after: str = "", tail: bytes = b"") -> bytes:
    """A PLY with a vertex element of the given (type, values) columns, in the given encoding."""
    n = len(next(iter(columns.values()))[1])
    head = f"ply\nformat {fmt} 1.0\ncomment made by a test\n{before}element vertex {n}\n"
    head += "".join(f"property {t} {name}\n" for name, (t, _) in columns.items()) + after + "end_header\n"
    codes = {"float": "f4", "double": "f8", "uchar": "u1", "int": "i4"}
    if fmt == "ascii":
        body = "".join(" ".join(repr(float(v[i])) for _, v in columns.values()) + "\n" for i in range(n)).encode()
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        rows = np.empty(n, dtype=[(name, order + codes[t]) for name, (t, _) in columns.items()])
        for name, (_, v) in columns.items():
            rows[name] = v
        body = rows.tobytes()
    return head.encode() + body + tail


def _columns_of(p: dict[str, torch.Tensor], dtype: str = "float") -> dict[str, tuple[str, np.ndarray]]:
    n = p["means"].shape[0]
    cols = {}
    flat = {
        "x": p["means"][:, 0], "y": p["means"][:, 1], "z": p["means"][:, 2],
        **{f"f_dc_{i}": p["sh0"][:, 0, i] for i in range(3)},
        **{f"f_rest_{i}": v for i, v in enumerate(p["shN"].permute(0, 2, 1).reshape(n, -1).T)},
        "opacity": p["opacities"],
        **{f"scale_{i}": p["scales"][:, i] for i in range(3)},
        **{f"rot_{i}": p["quats"][:, i] for i in range(4)},
    }  # fmt: skip
    for name, v in flat.items():
        cols[name] = (dtype, v.numpy())
    return cols


@pytest.mark.parametrize("fmt", ["binary_little_endian", "binary_big_endian", "ascii"])
def test_reads_any_order_extra_properties_and_encodings(tmp_path, fmt):
    p = random_model(6, 2)
    cols = _columns_of(p)
    names = list(cols)
    np.random.default_rng(1).shuffle(names)
    shuffled = {name: cols[name] for name in names}
    shuffled["red"] = ("uchar", np.arange(6) * 10)
    shuffled["confidence"] = ("double", np.linspace(0, 1, 6))
    path = tmp_path / "other.ply"
    path.write_bytes(_ply(fmt, shuffled, before="element camera 1\nproperty float fx\n" if fmt == "ascii" else ""))
    if fmt == "ascii":  # the camera element's one value comes first
        data = path.read_bytes()
        i = data.index(b"end_header\n") + len(b"end_header\n")
        path.write_bytes(data[:i] + b"500.0\n" + data[i:])
    back = read_ply(path)
    for k in KEYS:
        torch.testing.assert_close(back[k], p[k], atol=1e-6 if fmt == "ascii" else 0, rtol=0)


def test_reads_double_precision_and_other_elements(tmp_path):
    p = random_model(5, 1)
    face = "element face 2\nproperty list uchar int vertex_indices\n"
    tail = struct.pack("<Biii", 3, 0, 1, 2) + struct.pack("<Biii", 3, 2, 3, 4)
    path = tmp_path / "d.ply"
    path.write_bytes(_ply("binary_little_endian", _columns_of(p, "double"), after=face, tail=tail))
    back = read_ply(path)
    for k in KEYS:
        assert torch.equal(back[k], p[k]), k


# ---------------------------------------------------------------------------------------------
# Malformed files: always a DataError naming the file


def _valid_bytes(n: int = 3, degree: int = 1) -> bytes:
    return _ply("binary_little_endian", _columns_of(random_model(n, degree)))


def _drop(cols: dict, *names: str) -> dict:
    return {k: v for k, v in cols.items() if k not in names}


def _replace_first_value(data: bytes, value: bytes) -> bytes:
    start = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:start] + value + data[data.index(b" ", start) :]


def _with_nan(cols: dict, name: str) -> dict:
    t, v = cols[name]
    v = v.copy()
    v[1] = np.nan
    return {**cols, name: (t, v)}


MALFORMED = {
    "empty": (b"", "not a PLY"),
    "not a ply": (b"\x89PNG\r\n\x1a\n" + b"\0" * 100, "not a PLY"),
    "header cut": (_valid_bytes()[:60], "end_header"),
    "body cut": (_valid_bytes()[:-7], "truncated"),
    "no body": (_valid_bytes()[: _valid_bytes().index(b"end_header\n") + 11], "truncated"),
    "extra bytes": (_valid_bytes() + b"\0" * 8, "inconsistent with the file size"),
    "count too large": (_valid_bytes().replace(b"element vertex 3\n", b"element vertex 99999999999\n"), "truncated"),
    "count not a number": (_valid_bytes().replace(b"element vertex 3\n", b"element vertex 3.5\n"), "malformed PLY header"),
    "negative count": (_valid_bytes().replace(b"element vertex 3\n", b"element vertex -3\n"), "malformed PLY header"),
    "unknown format": (_valid_bytes().replace(b"binary_little_endian", b"binary_middle_endian"), "unsupported PLY format"),
    "no format": (_valid_bytes().replace(b"format binary_little_endian 1.0\n", b""), "no 'format'"),
    "unknown type": (_valid_bytes().replace(b"property float opacity", b"property half opacity"), "malformed"),
    "unknown keyword": (_valid_bytes().replace(b"comment made", b"remark made"), "malformed"),
    "no vertex element": (_valid_bytes().replace(b"element vertex", b"element points"), "no 'vertex' element"),
    "duplicate property": (_valid_bytes().replace(b"property float rot_3", b"property float rot_2"), "twice"),
    "missing x": (_ply("binary_little_endian", _drop(_columns_of(random_model(3, 1)), "x")), "lacks the properties x"),
    "missing opacity": (_ply("binary_little_endian", _drop(_columns_of(random_model(3, 1)), "opacity")), "opacity"),
    "missing scale": (_ply("binary_little_endian", _drop(_columns_of(random_model(3, 1)), "scale_2")), "scale_2"),
    "missing rot": (_ply("binary_little_endian", _drop(_columns_of(random_model(3, 1)), "rot_0")), "rot_0"),
    "missing f_dc": (_ply("binary_little_endian", _drop(_columns_of(random_model(3, 1)), "f_dc_1")), "f_dc_1"),
    "point cloud": (
        _ply("ascii", {**{a: ("float", np.zeros(2)) for a in "xyz"}, "red": ("uchar", np.ones(2))}),
        "point cloud",
    ),
    "wrong f_rest count": (_ply("binary_little_endian", _drop(_columns_of(random_model(3, 1)), "f_rest_8")), "8 f_rest"),
    "f_rest zero-padded": (_valid_bytes().replace(b"f_rest_7\n", b"f_rest_07\n"), "8 f_rest"),
    "f_rest gap": (_valid_bytes().replace(b"f_rest_8\n", b"f_rest_9\n"), "not numbered"),
    "nan opacity": (_ply("binary_little_endian", _with_nan(_columns_of(random_model(3, 1)), "opacity")), "NaN"),
    "nan f_rest": (_ply("binary_little_endian", _with_nan(_columns_of(random_model(3, 1)), "f_rest_4")), "f_rest"),
    "inf in ascii": (_ply("ascii", _with_nan(_columns_of(random_model(3, 0)), "x")).replace(b"nan", b"inf"), "non-finite"),
    "ascii word": (_replace_first_value(_ply("ascii", _columns_of(random_model(3, 0))), b"oops"), "not a number"),
    "ascii cut": (_ply("ascii", _columns_of(random_model(3, 0)))[:-30], "truncated"),
    "compressed": (_valid_bytes().replace(b"property float x\n", b"property uint packed_position\n"), "compressed"),
    "list in vertex": (
        _valid_bytes().replace(b"property float opacity\n", b"property list uchar float opacity\n"),
        "list properties",
    ),
    "non-ascii header": (_valid_bytes().replace(b"made by a test", b"made by \xff\xfe"), "not ASCII"),
    "version 2": (_valid_bytes().replace(b"little_endian 1.0", b"little_endian 2.0"), "unsupported PLY format"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_files_raise_data_error(tmp_path, case):
    data, problem = MALFORMED[case]
    path = tmp_path / "bad.ply"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        read_ply(path)
    assert info.value.path == path
    assert problem in str(info.value), str(info.value)
    assert str(info.value).startswith(str(path))


def test_missing_file_and_folder_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_ply(tmp_path / "nope.ply")
    with pytest.raises(DataError, match="folder"):
        read_ply(tmp_path)


VALID = _valid_bytes(3, 1)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.integers(0, len(VALID))),
    st.binary(max_size=8),
)
def test_fuzzed_files_raise_only_data_error(tmp_path, mutations, cut, inserted):
    data = bytearray(VALID)
    for position, value in mutations:
        data[position] = value
    if cut is not None:
        data = data[:cut] + inserted + data[cut:] if inserted else data[:cut]
    path = tmp_path / "fuzz.ply"
    path.write_bytes(bytes(data))
    try:
        out = read_ply(path)
    except DataError as e:
        assert e.path == path
        return
    assert all(torch.isfinite(v).all() for v in out.values())
    assert out["means"].shape[0] == out["shN"].shape[0]


def test_infinite_opacity_logits_read_as_fully_transparent_or_opaque(tmp_path):
    # splat-transform writes -inf/+inf opacity logits for 8-bit alphas of 0 and 255.
    cols = _columns_of(random_model(3, 1))
    t, v = cols["opacity"]
    v = v.copy()
    v[0], v[1] = np.inf, -np.inf
    path = tmp_path / "inf.ply"
    path.write_bytes(_ply("binary_little_endian", {**cols, "opacity": (t, v)}))
    logits = read_ply(path)["opacities"]
    assert logits[0] == 20 and logits[1] == -20 and torch.isfinite(logits).all()
