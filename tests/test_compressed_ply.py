"""PlayCanvas/SuperSplat compressed PLY: quantisation bounds on round trips, renders, transforms,
splat-transform interop both ways, and DataError for every malformed file (with a bounded fuzz)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scene_files import orbit_cameras, psnr, random_model, render
from splat_transform import run_splat_transform

from scene3d.cameras import quaternion_to_matrix
from scene3d.errors import DataError
from scene3d.export import read_ply, transform_gaussians, write_ply
from scene3d.export.compressed_ply import (
    SH_C0,
    morton_order,
    num_chunks,
    read_compressed_ply,
    write_compressed_ply,
)
from scene3d.export.formats import read_scene

KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")
# The bounds the module docstring states (decoded minus original).
QUAT_BOUND = 2.5e-3  # unit quaternions, up to sign
OPACITY_BOUND = 0.5 / 255  # in the sigmoid domain
SH_BOUND = 3 / 128  # scene3d's writer (nearest code), |f_rest| <= 4
SH_BOUND_TRUNCATING = 1 / 32  # splat-transform's writer (truncates): one 8-bit step
RENDER_PSNR = 45.0  # measured: 56 dB (degree 0), 49 dB (degree 3)


def matching(original: dict, decoded: dict) -> np.ndarray:
    """``idx`` such that ``original[idx]`` lines up with ``decoded`` (file order), by nearest mean."""
    d = torch.cdist(decoded["means"].double(), original["means"].double())
    idx = d.argmin(dim=1).numpy()
    assert len(np.unique(idx)) == len(idx), "decoded means do not match the originals one to one"
    return idx


def reorder(params: dict, idx: np.ndarray) -> dict:
    return {k: v[torch.from_numpy(idx)] for k, v in params.items()}


def chunk_half_steps(values: np.ndarray, steps) -> np.ndarray:
    """Per Gaussian [N, D]: half a quantisation step of its chunk's range of ``values`` (file order)."""
    n = values.shape[0]
    chunk = np.arange(n) // 256
    out = np.empty_like(values, dtype=np.float64)
    for c in range(num_chunks(n)):
        rows = chunk == c
        out[rows] = (values[rows].max(axis=0) - values[rows].min(axis=0)) / (2 * np.asarray(steps, np.float64))
    return out


def quat_errors(decoded: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    q = original.double() / original.double().norm(dim=1, keepdim=True)
    d = decoded.double()
    return torch.minimum((d - q).norm(dim=1), (d + q).norm(dim=1))


def assert_within_bounds(decoded: dict, original: dict, sh_bound: float = SH_BOUND) -> None:
    """``original`` must already be in the file's order; every attribute within its stated bound."""
    o = {k: v.double().numpy() for k, v in original.items()}
    d = {k: v.double().numpy() for k, v in decoded.items()}
    eps = lambda a: 1e-6 * np.maximum(1.0, np.abs(a))  # noqa: E731  float32 rounding of the result

    for key in ("means", "scales"):
        bound = chunk_half_steps(o[key], (2047, 1023, 2047))
        err = np.abs(d[key] - o[key])
        assert (err <= bound + eps(o[key])).all(), f"{key}: worst excess {(err - bound).max():.3g}"
    colors = 0.5 + SH_C0 * o["sh0"].reshape(-1, 3)
    bound = chunk_half_steps(colors, (255, 255, 255)) / SH_C0
    err = np.abs(d["sh0"] - o["sh0"]).reshape(-1, 3)
    assert (err <= bound + eps(colors) / SH_C0).all(), f"sh0: worst excess {(err - bound).max():.3g}"

    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert np.abs(sig(d["opacities"]) - sig(o["opacities"])).max() <= OPACITY_BOUND + 1e-6
    assert quat_errors(decoded["quats"], original["quats"]).max() <= QUAT_BOUND
    assert np.allclose(np.linalg.norm(d["quats"], axis=1), 1.0, atol=1e-5)
    assert d["shN"].shape == o["shN"].shape
    if o["shN"].size:
        assert np.abs(o["shN"]).max() <= 4
        assert np.abs(d["shN"] - o["shN"]).max() <= sh_bound + 1e-6


def similarity(seed: int = 0) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(4, generator=g, dtype=torch.float64)
    T = np.eye(4)
    T[:3, :3] = 2.5 * quaternion_to_matrix(q / q.norm()).numpy()
    T[:3, 3] = [1.0, -4.0, 0.5]
    return T


@pytest.fixture(scope="module")
def model3() -> dict:
    return random_model(2000, degree=3, seed=1)


# ---------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("degree, n", [(3, 2000), (0, 2000), (1, 257), (3, 1)])
def test_round_trip_within_quantisation_bounds(tmp_path, degree, n):
    model = random_model(n, degree=degree, seed=degree + n)
    path = write_compressed_ply(tmp_path / "m.compressed.ply", model)
    header = path.read_bytes().split(b"end_header\n")[0].decode()
    assert f"element chunk {num_chunks(n)}\n" in header and f"element vertex {n}\n" in header
    assert ("element sh" in header) == (degree > 0)

    decoded = read_compressed_ply(path)
    assert {k: tuple(v.shape) for k, v in decoded.items()} == {k: tuple(v.shape) for k, v in model.items()}
    assert all(v.dtype == torch.float32 for v in decoded.values())
    idx = matching(model, decoded)
    assert_within_bounds(decoded, reorder(model, idx))
    if n == 1:  # a chunk of one: its ranges are 0, so means, scales and colour are exact
        for key in ("means", "scales", "sh0"):
            assert torch.equal(decoded[key], model[key])


@pytest.mark.parametrize("degree", [0, 3])
def test_renders_of_decoded_model_match(tmp_path, degree):
    model = random_model(2000, degree=degree, seed=7)
    decoded = read_compressed_ply(write_compressed_ply(tmp_path / "m.compressed.ply", model))
    cameras = orbit_cameras()
    value = psnr(render(decoded, cameras), render(model, cameras))
    assert value > RENDER_PSNR, f"PSNR {value:.1f} dB"


def test_gaussians_are_stored_in_morton_order_so_chunks_are_tight(tmp_path, model3):
    decoded = read_compressed_ply(write_compressed_ply(tmp_path / "m.compressed.ply", model3))
    idx = matching(model3, decoded)
    assert np.array_equal(idx, morton_order(model3["means"].numpy()))
    means = decoded["means"].numpy()
    volume = lambda m: float(np.prod(m.max(axis=0) - m.min(axis=0)))  # noqa: E731
    chunk_volumes = [volume(means[i : i + 256]) for i in range(0, len(means), 256)]
    # in a random order each chunk's box is nearly the whole box (0.97 on average here)
    assert np.mean(chunk_volumes) < 0.4 * volume(means)


def test_transform_write_with_T_read_with_inverse(tmp_path, model3):
    T = similarity()
    s = np.linalg.det(T[:3, :3]) ** (1 / 3)
    path = write_compressed_ply(tmp_path / "m.compressed.ply", model3, transform=T)

    # in the file's frame the bounds hold against the transformed model
    in_file = read_compressed_ply(path)
    idx = matching(transform_gaussians(model3, T), in_file)
    assert_within_bounds(in_file, reorder(transform_gaussians(model3, T), idx))

    # back in the model's frame: the errors are mapped by a rotation and the scale 1/s
    back = read_compressed_ply(path, transform=np.linalg.inv(T))
    original = reorder(model3, idx)
    pos_bound = np.linalg.norm(chunk_half_steps(in_file["means"].double().numpy(), (2047, 1023, 2047)), axis=1) / s
    pos_err = (back["means"].double() - original["means"].double()).norm(dim=1).numpy()
    assert (pos_err <= pos_bound + 1e-5).all()
    scale_bound = chunk_half_steps(in_file["scales"].double().numpy(), (2047, 1023, 2047))
    assert (np.abs(back["scales"].double().numpy() - original["scales"].double().numpy()) <= scale_bound + 1e-5).all()
    assert quat_errors(back["quats"], original["quats"]).max() <= QUAT_BOUND + 1e-5
    torch.testing.assert_close(back["opacities"], in_file["opacities"])
    torch.testing.assert_close(back["sh0"], in_file["sh0"])
    # SH rotation is orthogonal within each band: per band and channel, the error norm is kept
    err = (back["shN"].double() - original["shN"].double()).numpy()
    for band in (1, 2, 3):
        rows = slice(band**2 - 1, (band + 1) ** 2 - 1)
        assert np.linalg.norm(err[:, rows, :], axis=1).max() <= math.sqrt(2 * band + 1) * SH_BOUND + 1e-5


def test_registry_reads_a_compressed_ply_named_ply(tmp_path, model3):
    path = write_compressed_ply(tmp_path / "renamed.ply", model3)
    got, want = read_scene(path), read_compressed_ply(path)
    assert all(torch.equal(got[k], want[k]) for k in KEYS)


def test_writer_refuses_nan_and_keeps_the_old_file(tmp_path, model3):
    path = write_compressed_ply(tmp_path / "m.compressed.ply", model3)
    before = path.read_bytes()
    bad = dict(model3, scales=model3["scales"].clone())
    bad["scales"][5, 1] = float("nan")
    with pytest.raises(ValueError, match="scales"):
        write_compressed_ply(path, bad)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_extreme_values_are_clamped_not_broken(tmp_path):
    model = random_model(300, degree=1, seed=3)
    model["opacities"][:2] = torch.tensor([40.0, -40.0])
    model["shN"][0, 0] = torch.tensor([9.0, -9.0, 4.0])
    model["quats"][1] = 0.0
    decoded = read_compressed_ply(write_compressed_ply(tmp_path / "m.compressed.ply", model))
    assert all(torch.isfinite(v).all() for v in decoded.values())
    idx = matching(model, decoded)
    first, second = int(np.flatnonzero(idx == 0)[0]), int(np.flatnonzero(idx == 1)[0])
    assert torch.sigmoid(decoded["opacities"][first]) == pytest.approx(254.5 / 255, abs=1e-6)
    assert torch.sigmoid(decoded["opacities"][second]) == pytest.approx(0.5 / 255, abs=1e-6)
    assert decoded["shN"][first, 0].tolist() == [4.0, -4.0, 4.0]
    assert decoded["quats"][second].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=2e-3)


# ---------------------------------------------------------------------------------------------
# splat-transform interop


@pytest.mark.parametrize("degree", [0, 3])
def test_splat_transform_decompresses_our_file(tmp_path, degree):
    model = random_model(2000, degree=degree, seed=11)
    # splat-transform decodes the opacity bytes 0 and 255 to logits of -inf and +inf, which
    # read_ply refuses; keep this model's opacities inside bytes 1..254
    model["opacities"] = model["opacities"].clamp(-6, 6)
    ours = write_compressed_ply(tmp_path / "m.compressed.ply", model)
    run_splat_transform(str(ours), str(tmp_path / "x.ply"))
    theirs = read_ply(tmp_path / "x.ply")
    mine = read_compressed_ply(ours)
    for key in KEYS:  # the same decoding, to float32 rounding
        torch.testing.assert_close(theirs[key], mine[key], rtol=1e-6, atol=1e-6)
    assert_within_bounds(theirs, reorder(model, matching(model, theirs)))


def test_we_read_splat_transforms_compressed_ply(tmp_path, model3):
    write_ply(tmp_path / "m.ply", model3)
    run_splat_transform(str(tmp_path / "m.ply"), str(tmp_path / "x.compressed.ply"))
    decoded = read_compressed_ply(tmp_path / "x.compressed.ply")
    assert_within_bounds(decoded, reorder(model3, matching(model3, decoded)), sh_bound=SH_BOUND_TRUNCATING)


def test_empty_model(tmp_path):
    empty = {k: v[:0] for k, v in random_model(4, degree=2).items()}
    decoded = read_compressed_ply(write_compressed_ply(tmp_path / "e.compressed.ply", empty))
    assert {k: tuple(v.shape) for k, v in decoded.items()} == {k: tuple(v.shape) for k, v in empty.items()}


def test_older_files_without_chunk_colour_bounds(tmp_path):
    """12 chunk properties: the colour bytes are the colour over [0, 1]. Read as splat-transform does."""
    n = 300
    model = random_model(n, degree=0, seed=2)
    model["opacities"] = model["opacities"].clamp(-6, 6)  # bytes 1..254 (see test_splat_transform_decompresses_our_file)
    data = write_compressed_ply(tmp_path / "new.compressed.ply", model).read_bytes()
    head, body = header_and_body(data)
    chunks = np.frombuffer(body, "<f4", count=2 * 18).reshape(2, 18)
    packed = np.frombuffer(body, "<u4", offset=2 * 18 * 4).reshape(n, 4).copy()
    new = read_compressed_ply(tmp_path / "new.compressed.ply")
    colors = np.clip(0.5 + SH_C0 * new["sh0"].double().numpy().reshape(n, 3), 0, 1)
    codes = np.floor(colors * 255 + 0.5).astype(np.uint32)
    packed[:, 3] = (codes[:, 0] << 24) | (codes[:, 1] << 16) | (codes[:, 2] << 8) | (packed[:, 3] & 255)
    head = "".join(line + "\n" for line in head.splitlines() if not re.fullmatch(r"property float (min|max)_[rgb]", line))
    old = tmp_path / "old.compressed.ply"
    old.write_bytes(head.encode() + b"end_header\n" + chunks[:, :12].astype("<f4").tobytes() + packed.astype("<u4").tobytes())

    decoded = read_compressed_ply(old)
    for key in ("means", "quats", "scales", "opacities", "shN"):
        assert torch.equal(decoded[key], new[key])
    expected = (codes / 255 - 0.5) / SH_C0
    np.testing.assert_allclose(decoded["sh0"].numpy().reshape(n, 3), expected, rtol=0, atol=1e-6)
    run_splat_transform(str(old), str(tmp_path / "x.ply"))
    theirs = read_ply(tmp_path / "x.ply")
    for key in KEYS:
        torch.testing.assert_close(theirs[key], decoded[key], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Malformed files


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("cply") / "small.compressed.ply"
    return write_compressed_ply(path, random_model(300, degree=1, seed=5)).read_bytes()


def header_and_body(data: bytes) -> tuple[str, bytes]:
    head, body = data.split(b"end_header\n", 1)
    return head.decode(), body


def with_header(data: bytes, edit) -> bytes:
    head, body = header_and_body(data)
    return edit(head).encode() + b"end_header\n" + body


def read_bad(tmp_path, data: bytes) -> str:
    path = tmp_path / "bad.compressed.ply"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        read_compressed_ply(path)
    assert str(path) in str(info.value)
    return info.value.problem


def test_missing_file_and_not_a_ply(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_compressed_ply(tmp_path / "nope.compressed.ply")
    assert "not a PLY" in read_bad(tmp_path, b"\x89PNG\r\n\x1a\n" + bytes(100))


def test_standard_ply_is_refused_with_a_hint(tmp_path):
    write_ply(tmp_path / "m.ply", random_model(10, degree=0))
    assert "standard PLY" in read_bad(tmp_path, (tmp_path / "m.ply").read_bytes())


def test_missing_chunk_element(tmp_path, valid_bytes):
    head, body = header_and_body(valid_bytes)
    lines = head.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("element chunk"))
    kept = lines[:start] + lines[start + 19 :]  # the element line and its 18 properties
    assert "chunk" not in "\n".join(kept)
    data = ("\n".join(kept) + "\n").encode() + b"end_header\n" + body[2 * 18 * 4 :]
    assert "no 'chunk' element" in read_bad(tmp_path, data)


def test_missing_property_and_wrong_type(tmp_path, valid_bytes):
    problem = read_bad(tmp_path, with_header(valid_bytes, lambda h: h.replace("packed_scale", "packed_scaly")))
    assert "packed_scale" in problem and "lacks" in problem
    problem = read_bad(tmp_path, with_header(valid_bytes, lambda h: h.replace("uint packed_color", "float packed_color")))
    assert "packed_color" in problem and "uint" in problem


def test_wrong_chunk_count(tmp_path, valid_bytes):
    problem = read_bad(tmp_path, with_header(valid_bytes, lambda h: h.replace("element chunk 2", "element chunk 3")))
    assert "3 chunks for 300 Gaussians" in problem and "(2)" in problem


@pytest.mark.parametrize("where", ["header", "after header", "chunks", "vertices", "sh", "last byte"])
def test_truncated(tmp_path, valid_bytes, where):
    body = valid_bytes.index(b"end_header\n") + len(b"end_header\n")
    cut = {
        "header": body - 30,
        "after header": body,
        "chunks": body + 50,
        "vertices": body + 2 * 72 + 1000,
        "sh": body + 2 * 72 + 300 * 16 + 7,
        "last byte": len(valid_bytes) - 1,
    }[where]
    problem = read_bad(tmp_path, valid_bytes[:cut])
    assert ("end_header" if where == "header" else "truncated") in problem


def test_trailing_bytes(tmp_path, valid_bytes):
    assert "5 bytes more" in read_bad(tmp_path, valid_bytes + b"extra")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_chunk_bounds(tmp_path, valid_bytes, value):
    body = valid_bytes.index(b"end_header\n") + len(b"end_header\n")
    data = bytearray(valid_bytes)
    data[body + 4 * 20 : body + 4 * 21] = np.float32(value).tobytes()  # the second chunk's min_scale_z
    assert "non-finite" in read_bad(tmp_path, bytes(data))


def test_hostile_counts_fail_fast(tmp_path, valid_bytes):
    big = 2**31
    consistent = lambda h: (  # noqa: E731
        h.replace("element vertex 300", f"element vertex {big}")
        .replace("element sh 300", f"element sh {big}")
        .replace("element chunk 2", f"element chunk {big // 256}")
    )
    problem = read_bad(tmp_path, with_header(valid_bytes, consistent))
    assert "truncated" in problem and str(big) in problem
    problem = read_bad(tmp_path, with_header(valid_bytes, lambda h: h.replace("element vertex 300", f"element vertex {big}")))
    assert str(big) in problem and "chunks" in problem
    problem = read_bad(tmp_path, with_header(valid_bytes, lambda h: h.replace("element sh 300", "element sh 10000000000000000000000")))
    assert "SH" in problem


def test_ascii_and_list_properties(tmp_path, valid_bytes):
    assert "binary" in read_bad(tmp_path, with_header(valid_bytes, lambda h: h.replace("binary_little_endian", "ascii")))
    problem = read_bad(tmp_path, with_header(valid_bytes, lambda h: h.replace("property uint packed_color", "property uint packed_color\nproperty list uchar int idx")))
    assert "list" in problem


_payloads = st.one_of(
    st.binary(min_size=1, max_size=8),
    st.text(alphabet="0123456789 \n_abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8).map(str.encode),
)
# overwriting keeps the size, so the body decodes (with garbage bounds); the rest mostly hit checks
_mutations = st.tuples(
    st.sampled_from(["truncate", "overwrite", "overwrite", "insert"]),
    st.sampled_from(["header", "chunks", "anywhere"]),
    st.integers(0, 10**6),
    _payloads,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(_mutations, min_size=1, max_size=3))
def test_fuzz_reader_raises_data_error_or_reads_a_valid_model(tmp_path, valid_bytes, mutations):
    data = bytearray(valid_bytes)
    body = valid_bytes.index(b"end_header\n") + len(b"end_header\n")
    for kind, region, offset, payload in mutations:
        start, stop = {"header": (0, body), "chunks": (body, body + 2 * 72), "anywhere": (0, len(data))}[region]
        offset = start + offset % (max(min(stop, len(data)) - start, 0) + 1)
        if kind == "truncate":
            del data[offset:]
        elif kind == "overwrite":
            data[offset : offset + len(payload)] = payload
        else:
            data[offset:offset] = payload
    path = tmp_path / "fuzz.compressed.ply"
    path.write_bytes(bytes(data))
    try:
        model = read_compressed_ply(path)
    except DataError as e:
        assert str(path) in str(e) and e.problem
        return
    n = model["means"].shape[0]
    assert set(model) == set(KEYS)
    assert model["quats"].shape == (n, 4) and model["opacities"].shape == (n,) and model["sh0"].shape == (n, 1, 3)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in model.values())
    assert torch.allclose(model["quats"].norm(dim=1), torch.ones(n), atol=1e-5)
