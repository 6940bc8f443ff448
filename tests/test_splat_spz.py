"""The antimatter15 .splat and Niantic .spz formats: layouts, quantisation bounds, transforms,
PlayCanvas splat-transform interoperability and malformed input."""

from __future__ import annotations

import gzip
import math
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scene_files import orbit_cameras, psnr, random_model, render
from splat_transform import run_splat_transform

from scene3d.cameras import quaternion_to_matrix
from scene3d.errors import DataError
from scene3d.export.ply import read_ply, write_ply
from scene3d.export.sh_rotation import eval_sh
from scene3d.export.splat import (
    SPLAT_ALPHA_TOL,
    SPLAT_COLOUR_TOL,
    SPLAT_LOG_SCALE_TOL,
    SPLAT_QUAT_TOL,
    read_splat,
    write_splat,
)
from scene3d.export.spz import (
    SPZ_ALPHA_TOL,
    SPZ_LOG_SCALE_TOL,
    SPZ_POSITION_TOL,
    SPZ_QUAT_TOL_V2,
    SPZ_QUAT_TOL_V3,
    SPZ_SH0_TOL,
    flip_axes,
    read_spz,
    spz_sh_tolerance,
    write_spz,
)
from scene3d.export.transform import transform_gaussians

SH_C0 = 0.28209479177387814
KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")
SPLAT_MIN_PSNR = 50.0  # measured ~61 dB at the orbit cameras (only 8-bit colour and rotations)
SPZ_MIN_PSNR = 35.0  # measured ~38.5 dB (5/4-bit SH and 1/16 log-scale steps dominate)
TINY = 1e-6  # float32 rounding on top of a quantisation bound


@pytest.fixture(scope="module")
def model():
    return random_model(2000, 3, seed=1)


@pytest.fixture(scope="module")
def cameras():
    return orbit_cameras()


def similarity(q, scale: float, t) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = scale * quaternion_to_matrix(torch.tensor(q, dtype=torch.float64)).numpy()
    T[:3, 3] = t
    return T


def without_shN(p: dict) -> dict:
    return {**p, "shN": p["shN"][:, :0]}


def quat_error(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """L2 distance of the normalised quaternions, up to sign (q and -q are the same rotation)."""
    a = a.double() / a.double().norm(dim=1, keepdim=True)
    b = b.double() / b.double().norm(dim=1, keepdim=True)
    return torch.minimum((a - b).norm(dim=1), (a + b).norm(dim=1))


def alpha(p: dict) -> torch.Tensor:
    return torch.sigmoid(p["opacities"].double())


def splat_order(p: dict) -> torch.Tensor:
    """The .splat writer's order, computed independently: exp(sum log scales) * sigmoid(opacity), descending."""
    importance = torch.exp(p["scales"].double().sum(dim=1)) * alpha(p)
    return torch.from_numpy(np.argsort(-importance.numpy(), kind="stable"))


def assert_below(error: torch.Tensor, bound, what: str):
    excess = error.double() - bound
    assert float(excess.max()) <= 0, f"{what}: error {float(error.max()):.3g} exceeds bound (worst by {float(excess.max()):.3g})"


def assert_splat_bounds(back: dict, p: dict, quat_tol: float = SPLAT_QUAT_TOL, means_tol: float = 0.0):
    """``back`` read from a .splat of ``p`` (already in the writer's order)."""
    n = p["means"].shape[0]
    assert back["shN"].shape == (n, 0, 3)
    assert_below((back["means"] - p["means"]).abs(), means_tol, "means")
    assert_below((back["scales"] - p["scales"]).abs(), SPLAT_LOG_SCALE_TOL * (1 + p["scales"].abs()) + means_tol, "log scales")
    colour = (0.5 + SH_C0 * p["sh0"].double()).clamp(0, 1)
    assert_below((0.5 + SH_C0 * back["sh0"].double() - colour).abs(), SPLAT_COLOUR_TOL + TINY, "colour")
    assert_below((alpha(back) - alpha(p)).abs(), SPLAT_ALPHA_TOL + TINY, "sigmoid(opacity)")
    assert_below(quat_error(back["quats"], p["quats"]), quat_tol, "quats")


def spz_alpha_bound(p: dict) -> torch.Tensor:
    a = alpha(p)
    inside = (a >= SPZ_ALPHA_TOL) & (a <= 1 - SPZ_ALPHA_TOL)
    return torch.where(inside, SPZ_ALPHA_TOL, 1 / 255) + TINY


def assert_spz_bounds(back: dict, p: dict, version: int = 3, sh_tols=(spz_sh_tolerance(5), spz_sh_tolerance(4)),
                      means_tol: float = SPZ_POSITION_TOL, alpha_bound=None):  # fmt: skip
    """``back`` read from an spz of ``p``: every attribute within its quantisation bound.

    SH errors are checked per band and colour channel as an L2 norm (``sqrt(2l+1)`` times the
    per-coefficient bound), which a rotation of the scene leaves unchanged."""
    assert set(back) == set(KEYS) and all(back[k].dtype == torch.float32 for k in KEYS)
    assert_below((back["means"] - p["means"]).abs(), means_tol + TINY, "means")
    assert float(p["scales"].min()) > -10 and float(p["scales"].max()) < 5.9  # inside the stored range
    assert_below((back["scales"] - p["scales"]).abs(), SPZ_LOG_SCALE_TOL + TINY, "log scales")
    assert float(p["sh0"].abs().max()) < 3.3
    assert_below((back["sh0"] - p["sh0"]).abs(), SPZ_SH0_TOL + TINY, "sh0")
    bound = spz_alpha_bound(p) if alpha_bound is None else alpha_bound
    assert_below((alpha(back) - alpha(p)).abs(), bound, "sigmoid(opacity)")
    if version >= 3:
        assert_below(quat_error(back["quats"], p["quats"]), SPZ_QUAT_TOL_V3, "quats")
    else:
        q = p["quats"].double() / p["quats"].double().norm(dim=1, keepdim=True)
        w = q[:, 0].abs()
        keep = w > 0.2  # the rebuilt w makes the version-2 error grow as 1/|w|
        assert_below(quat_error(back["quats"], p["quats"])[keep], 1.05 * SPZ_QUAT_TOL_V2 / w[keep], "quats (v2)")
    assert back["shN"].shape == p["shN"].shape
    assert p["shN"].numel() == 0 or float(p["shN"].abs().max()) < 0.85
    for band in range(1, math.isqrt(p["shN"].shape[1] + 1)):
        lo, hi = band * band - 1, (band + 1) ** 2 - 1
        tol = (sh_tols[0] if band == 1 else sh_tols[1]) * math.sqrt(2 * band + 1)
        assert_below((back["shN"][:, lo:hi] - p["shN"][:, lo:hi]).norm(dim=1), tol + TINY, f"shN band {band}")


# ---------------------------------------------------------------------------------------------
# .splat


def test_splat_round_trip_within_bounds(tmp_path, model):
    path = write_splat(tmp_path / "m.splat", model)
    assert path.stat().st_size == 32 * 2000
    back = read_splat(path)
    assert set(back) == set(KEYS) and all(back[k].dtype == torch.float32 for k in KEYS)
    order = splat_order(model)
    assert torch.equal(back["means"], model["means"][order])  # exact, in importance order
    assert_splat_bounds(back, {k: v[order] for k, v in model.items()})


def test_splat_renders_like_the_model_without_view_dependent_colour(tmp_path, model, cameras):
    back = read_splat(write_splat(tmp_path / "m.splat", model))
    assert psnr(render(back, cameras), render(without_shN(model), cameras)) > SPLAT_MIN_PSNR


def test_splat_layout_by_hand(tmp_path):
    p = {
        "means": torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),
        "quats": torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.5, -0.5, 0.5, -0.5]]),
        "scales": torch.log(torch.tensor([[0.5, 1.0, 2.0], [0.1, 0.1, 0.1]])),
        "opacities": torch.logit(torch.tensor([0.75, 0.8])),
        "sh0": ((torch.tensor([[0.2, 0.6, 1.3], [0.5, 0.5, 0.5]]) - 0.5) / SH_C0).reshape(2, 1, 3),
    }
    data = write_splat(tmp_path / "m.splat", p).read_bytes()
    assert len(data) == 64
    first = struct.unpack("<6f8B", data[:32])  # the big Gaussian comes first
    assert first[:6] == pytest.approx((1.0, 2.0, 3.0, 0.5, 1.0, 2.0), rel=1e-6)
    assert first[6:10] == (51, 153, 255, 191)  # 0.2 * 255 = 51, 0.6 * 255 = 153, clamped, 0.75 * 255
    assert first[10:] == (255, 128, 128, 128)  # w = 1 -> 256, clamped
    second = struct.unpack("<6f8B", data[32:])
    assert second[6:] == (128, 128, 128, 204, 192, 64, 192, 64)


def test_splat_with_transform(tmp_path, model):
    T = similarity([0.9, 0.1, -0.3, 0.2], 1.7, [0.5, -4.0, 1.0])
    back = read_splat(write_splat(tmp_path / "m.splat", model, transform=T), transform=np.linalg.inv(T))
    order = splat_order(model)
    assert_splat_bounds(back, {k: v[order] for k, v in model.items()}, means_tol=2e-5)


def test_splat_reads_what_splat_transform_reads(tmp_path, model):
    """Our .splat -> splat-transform -> PLY: the same Gaussians. splat-transform decodes a rotation
    byte as ``r / 127.5 - 1`` rather than ``(r - 128) / 128``, which shifts every component by up to
    1/128 more before normalising, so its quaternions are within asin(2/128)."""
    write_splat(tmp_path / "m.splat", model)
    run_splat_transform(str(tmp_path / "m.splat"), str(tmp_path / "st.ply"))
    back = read_ply(tmp_path / "st.ply")
    order = splat_order(model)
    assert torch.equal(back["means"], model["means"][order])
    assert_splat_bounds(back, {k: v[order] for k, v in without_shN(model).items()}, quat_tol=math.asin(2 / 128))


# ---------------------------------------------------------------------------------------------
# .spz


@pytest.mark.parametrize("version,degree", [(3, 3), (3, 0), (3, 1), (2, 2)])
def test_spz_round_trip_within_bounds(tmp_path, version, degree):
    p = random_model(2000, degree, seed=degree)
    path = write_spz(tmp_path / "m.spz", p, version=version)
    stream = gzip.decompress(path.read_bytes())
    magic, v, n, d, bits, flags, reserved = struct.unpack_from("<IIIBBBB", stream)
    assert (stream[:4], v, n, d, bits, flags, reserved) == (b"NGSP", version, 2000, degree, 12, 0, 0)
    per_point = 9 + 1 + 3 + 3 + (4 if version == 3 else 3) + 3 * ((degree + 1) ** 2 - 1)
    assert len(stream) == 16 + 2000 * per_point
    assert_spz_bounds(read_spz(path), p, version)


def test_spz_renders_like_the_model(tmp_path, model, cameras):
    back = read_spz(write_spz(tmp_path / "m.spz", model))
    assert psnr(render(back, cameras), render(model, cameras)) > SPZ_MIN_PSNR


def test_spz_with_transform(tmp_path, model):
    T = similarity([0.9, 0.1, -0.3, 0.2], 1.7, [0.5, -4.0, 1.0])
    back = read_spz(write_spz(tmp_path / "m.spz", model, transform=T), transform=np.linalg.inv(T))
    assert_spz_bounds(back, model, means_tol=SPZ_POSITION_TOL * math.sqrt(3) / 1.7 + 1e-6)


def test_spz_sh_bits_option(tmp_path, model):
    back = read_spz(write_spz(tmp_path / "m.spz", model, sh1_bits=8, sh_rest_bits=6))
    assert_spz_bounds(back, model, sh_tols=(spz_sh_tolerance(8), spz_sh_tolerance(6)))


def test_spz_stores_rub_coordinates(tmp_path):
    """y and z change sign on disk; the rotation becomes (w, x, -y, -z); fixed point with 12 bits."""
    q = torch.tensor([[0.9, 0.1, -0.3, 0.2]])
    p = {
        "means": torch.tensor([[1.0, 2.0, -3.5]]),
        "quats": q,
        "scales": torch.tensor([[-1.0, 0.0, 2.0]]),
        "opacities": torch.tensor([0.0]),
        "sh0": torch.tensor([[[0.0, 1.0, -1.0]]]),
        "shN": torch.tensor([[[0.25, 0.0, 0.0], [0.0, 0.25, 0.0], [0.0, 0.0, 0.25]]]),
    }
    stream = gzip.decompress(write_spz(tmp_path / "m.spz", p).read_bytes())
    body = stream[16:]
    fixed = [int.from_bytes(body[3 * i : 3 * i + 3], "little", signed=True) for i in range(3)]
    assert fixed == [4096, -8192, 14336]
    assert body[9] == 128  # sigmoid(0) * 255 = 127.5, rounded to even
    assert list(body[10:13]) == [128, round(0.15 * 255 + 127.5), round(-0.15 * 255 + 127.5)]
    assert list(body[13:16]) == [144, 160, 192]  # (log s + 10) * 16
    # smallest three of the flipped quaternion in x, y, z, w order: w is the largest (index 3)
    unit = (q / q.norm())[0].tolist()
    xyz = [unit[1], -unit[2], -unit[3]]
    expected = 3
    for c in xyz:
        expected = (expected << 10) | (int(c < 0) << 9) | round(abs(c) / math.sqrt(0.5) * 511)
    assert int.from_bytes(body[16:20], "little") == expected
    # band-1 basis is (y, z, x): under y, z -> -y, -z the first two coefficients flip, channel fastest
    assert list(body[20:29]) == [96, 128, 128, 128, 96, 128, 128, 128, 160]


def test_axis_flips_match_the_half_turn_and_mirrors():
    """flip_axes((1, -1, -1)) is the rotation by pi about x (as transform_gaussians does it), and a
    mirror keeps every colour seen along the mirrored direction."""
    p = random_model(50, 3, seed=5)
    arrays = {k: v.double().numpy() for k, v in p.items()}
    means, quats, shN = flip_axes(arrays["means"], arrays["quats"], arrays["shN"], (1, -1, -1))
    turned = transform_gaussians(p, np.diag([1.0, -1.0, -1.0, 1.0]))
    np.testing.assert_allclose(means, turned["means"].double().numpy(), atol=1e-6)
    np.testing.assert_allclose(shN, turned["shN"].double().numpy(), atol=1e-6)
    # the quaternion differs (conjugation rather than left product) but the covariance is the same
    S2 = torch.diag_embed(torch.exp(2 * p["scales"].double()))
    R_flip, R_turn = quaternion_to_matrix(torch.from_numpy(quats)), quaternion_to_matrix(turned["quats"].double())
    torch.testing.assert_close(R_flip @ S2 @ R_flip.mT, R_turn @ S2 @ R_turn.mT, atol=1e-6, rtol=1e-5)

    dirs = torch.randn(50, 3, dtype=torch.float64)
    coeffs = torch.cat([p["sh0"].double(), p["shN"].double()], dim=1)
    for signs in [(-1, 1, 1), (1, -1, 1), (1, 1, -1), (-1, -1, -1), (1, -1, -1)]:
        _, _, flipped = flip_axes(arrays["means"], arrays["quats"], arrays["shN"], signs)
        mirrored = torch.cat([p["sh0"].double(), torch.from_numpy(flipped)], dim=1)
        s = torch.tensor(signs, dtype=torch.float64)
        torch.testing.assert_close(eval_sh(mirrored, dirs * s), eval_sh(coeffs, dirs))
        M = torch.diag(s)
        R = quaternion_to_matrix(p["quats"].double())
        R2 = quaternion_to_matrix(torch.from_numpy(flip_axes(arrays["means"], arrays["quats"], arrays["shN"], signs)[1]))
        torch.testing.assert_close(R2 @ S2 @ R2.mT, M @ R @ S2 @ R.mT @ M)


def test_spz_large_scenes_use_fewer_fractional_bits(tmp_path):
    p = random_model(100, 0, extent=5000.0)
    stream = gzip.decompress(write_spz(tmp_path / "m.spz", p).read_bytes())
    assert stream[13] == 10  # 5000 * 2^11 no longer fits 23 bits
    back = read_spz(tmp_path / "m.spz")
    assert_below((back["means"] - p["means"]).abs(), 0.5 / 2**10, "means")
    with pytest.raises(ValueError, match="means"):
        write_spz(tmp_path / "far.spz", random_model(10, 0, extent=1e7))


def test_spz_version_1_half_float_positions(tmp_path):
    p = random_model(50, 1, seed=3)
    stream = bytearray(gzip.decompress(write_spz(tmp_path / "m.spz", p, version=2).read_bytes()))
    n = 50
    rub = p["means"].double().numpy() * np.array([1.0, -1.0, -1.0])
    v1 = bytearray(stream[:16]) + rub.astype("<f2").tobytes() + stream[16 + 9 * n :]
    struct.pack_into("<I", v1, 4, 1)
    (tmp_path / "v1.spz").write_bytes(gzip.compress(bytes(v1)))
    back = read_spz(tmp_path / "v1.spz")
    torch.testing.assert_close(back["means"], p["means"], atol=2e-3, rtol=1e-3)
    assert_below(quat_error(back["quats"], read_spz(tmp_path / "m.spz")["quats"]), 1e-6, "quats")


def _with_extension(stream: bytes, *records: tuple[int, bytes]) -> bytes:
    out = bytearray(stream)
    out[14] |= 0x2
    for kind, payload in records:
        out += struct.pack("<II", kind, len(payload)) + payload
    return gzip.compress(bytes(out))


def test_spz_coordinate_system_extension(tmp_path):
    p = random_model(20, 1, seed=4)
    stream = gzip.decompress(write_spz(tmp_path / "m.spz", p).read_bytes())
    plain = read_spz(tmp_path / "m.spz")
    labelled = tmp_path / "labelled.spz"
    labelled.write_bytes(_with_extension(stream, (0x12340001, b"other vendor"), (0xADBE0003, struct.pack("<I", 4))))
    for k in KEYS:  # RUB said explicitly, an unknown record skipped
        assert torch.equal(read_spz(labelled)[k], plain[k]), k
    labelled.write_bytes(_with_extension(stream, (0xADBE0003, struct.pack("<I", 6))))  # the same bytes, said to be RDF
    as_rdf = read_spz(labelled)
    torch.testing.assert_close(as_rdf["means"], plain["means"] * torch.tensor([1.0, -1.0, -1.0]))
    labelled.write_bytes(_with_extension(stream, (0xADBE0003, struct.pack("<I", 12))))
    with pytest.raises(DataError, match="rotated coordinate system RFU"):
        read_spz(labelled)
    labelled.write_bytes(_with_extension(stream) + b"")
    read_spz(labelled)  # flag set, no records
    labelled.write_bytes(gzip.compress(gzip.decompress(_with_extension(stream, (0xADBE0003, b"\x04\0\0\0")))[:-2]))
    with pytest.raises(DataError, match="runs past the end"):
        read_spz(labelled)


def test_spz_interop_ours_to_splat_transform(tmp_path, model):
    """Our spz -> splat-transform -> PLY holds the original Gaussians, where they were (RDF)."""
    write_spz(tmp_path / "m.spz", model)
    run_splat_transform(str(tmp_path / "m.spz"), str(tmp_path / "st.ply"))
    assert_spz_bounds(read_ply(tmp_path / "st.ply"), model)


def test_spz_interop_splat_transform_to_ours(tmp_path, model):
    """PLY -> splat-transform (version 3) -> our reader. Its writer rounds SH to a byte before
    bucketing (up to half a byte step more) and stores alpha bytes 0 and 255, which our reader keeps
    finite within 0.5/255. Its default version 4 is refused with a clear message."""
    write_ply(tmp_path / "m.ply", model)
    run_splat_transform(str(tmp_path / "m.ply"), "--spz-version", "3", str(tmp_path / "st.spz"))
    back = read_spz(tmp_path / "st.spz")
    sh_tols = (spz_sh_tolerance(5) + 0.5 / 128, spz_sh_tolerance(4) + 0.5 / 128)
    assert_spz_bounds(back, model, sh_tols=sh_tols, alpha_bound=SPZ_ALPHA_TOL + TINY)
    run_splat_transform(str(tmp_path / "m.ply"), str(tmp_path / "v4.spz"))
    with pytest.raises(DataError, match="version 4 file .*zstd.*--spz-version 3"):
        read_spz(tmp_path / "v4.spz")


# ---------------------------------------------------------------------------------------------
# Writers refuse what they cannot write


@pytest.mark.parametrize("write", [write_splat, write_spz])
@pytest.mark.parametrize("key", ["means", "quats", "scales", "opacities", "sh0", "shN"])
def test_writers_refuse_non_finite_values(tmp_path, write, key):
    p = random_model(5, 1)
    p[key] = p[key].clone()
    p[key].view(-1)[3] = float("nan")
    with pytest.raises(ValueError, match=f"^{key} has 1 non-finite"):
        write(tmp_path / "m.out", p)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("write", [write_splat, write_spz])
def test_writers_refuse_empty_models_and_zero_quaternions(tmp_path, write):
    with pytest.raises(ValueError, match="no Gaussians"):
        write(tmp_path / "m.out", random_model(0, 0))
    p = random_model(3, 0)
    p["quats"][1] = 0
    with pytest.raises(ValueError, match="quats has 1 zero-length"):
        write(tmp_path / "m.out", p)


def test_spz_writer_refuses_unknown_versions_and_bits(tmp_path):
    for kwargs in ({"version": 4}, {"version": 1}, {"sh1_bits": 0}, {"sh_rest_bits": 9}):
        with pytest.raises(ValueError):
            write_spz(tmp_path / "m.spz", random_model(3, 1), **kwargs)


def test_splat_writer_refuses_scales_beyond_float32(tmp_path):
    p = random_model(3, 0)
    p["scales"][0, 0] = 100.0
    with pytest.raises(ValueError, match="scales"):
        write_splat(tmp_path / "m.splat", p)


# ---------------------------------------------------------------------------------------------
# Malformed files


def _splat_bytes(n: int = 3) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return write_splat(Path(d) / "m.splat", random_model(n, 0, seed=7)).read_bytes()


def _spz_stream(n: int = 3, degree: int = 1, version: int = 3) -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return gzip.decompress(write_spz(Path(d) / "m.spz", random_model(n, degree, seed=7), version=version).read_bytes())


def _set(data: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


def _float_at(data: bytes, offset: int, value: float) -> bytes:
    return _set(data, offset, "<f", value)


SPLAT = _splat_bytes()
STREAM = _spz_stream()
SPZ = gzip.compress(STREAM)

MALFORMED_SPLAT = {
    "empty": (b"", "is empty"),
    "one byte short": (SPLAT[:-1], "not a multiple of 32"),
    "one byte long": (SPLAT + b"\0", "not a multiple of 32"),
    "nan position": (_float_at(SPLAT, 36, float("nan")), "non-finite (NaN or Inf) values in its positions"),
    "inf scale": (_float_at(SPLAT, 16, float("inf")), "non-finite (NaN or Inf) values in its scales"),
    "negative scale": (_float_at(SPLAT, 44, -1.0), "zero or negative"),
    "zero scale": (_float_at(SPLAT, 12, 0.0), "zero or negative"),
    "a ply": (b"ply\nformat binary_little_endian 1.0\n" + b"\0" * 28, "is a PLY file"),
}

MALFORMED_SPZ = {
    "empty": (b"", "is empty"),
    "not gzip": (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an spz file"),
    "a ply": (b"ply\nformat binary_little_endian 1.0\n", "not an spz file"),
    "gzip of something else": (gzip.compress(b"hello world, not a splat"), "not an spz file"),
    "cut in gzip header": (SPZ[:5], "truncated"),
    "cut before spz header ends": (gzip.compress(STREAM[:10]), "ends before the 16-byte spz header"),
    "cut in the data": (SPZ[: len(SPZ) // 2], "truncated"),
    "cut gzip trailer": (SPZ[:-3], "truncated"),
    "data cut before gzip": (gzip.compress(STREAM[:-5]), "truncated: the header declares 3 Gaussians"),
    "corrupt deflate": (SPZ[:12] + bytes(b ^ 0x5A for b in SPZ[12:30]) + SPZ[30:], "corrupt gzip data"),
    "bad checksum": (SPZ[:-8] + bytes(b ^ 0xFF for b in SPZ[-8:-4]) + SPZ[-4:], "corrupt gzip data"),
    "trailing garbage": (SPZ + b"\0\0\0", "after the end of its gzip stream"),
    "wrong magic": (gzip.compress(_set(STREAM, 0, "<I", 0x12345678)), "not an spz file"),
    "2^31 points": (gzip.compress(_set(STREAM, 8, "<I", 2**31)), "refused as corrupt or a decompression bomb"),
    "2^32-1 points": (gzip.compress(_set(STREAM, 8, "<I", 2**32 - 1)), "declares 4,294,967,295 Gaussians"),
    "one point too many": (gzip.compress(_set(STREAM, 8, "<I", 4)), "truncated: the header declares 4 Gaussians"),
    "one point too few": (gzip.compress(_set(STREAM, 8, "<I", 2)), "more data than its header declares"),
    "zero points": (gzip.compress(_set(STREAM, 8, "<I", 0)), "declares no Gaussians"),
    "gzip bomb": (gzip.compress(STREAM + bytes(20_000_000)), "more data than its header declares"),
    "version 0": (gzip.compress(_set(STREAM, 4, "<I", 0)), "spz version 0"),
    "version 4 in gzip": (gzip.compress(_set(STREAM, 4, "<I", 4)), "spz version 4"),
    "version 9": (gzip.compress(_set(STREAM, 4, "<I", 9)), "spz version 9"),
    "version 4 file": (b"NGSP" + struct.pack("<II", 4, 3) + bytes(20), "version 4 file (zstd"),
    "plain NGSP": (STREAM, "without gzip compression"),
    "sh degree 4": (gzip.compress(_set(STREAM, 12, "<B", 4)), "SH degree 4"),
    "sh degree 7": (gzip.compress(_set(STREAM, 12, "<B", 7)), "SH degree 7"),
    "fractional bits": (gzip.compress(_set(STREAM, 13, "<B", 40)), "40 fractional bits"),
    "bytes beyond without the extension flag": (gzip.compress(STREAM + b"\0" * 8), "more data than its header declares"),
    "cut extension record": (gzip.compress(_set(STREAM, 14, "<B", 2) + b"\x03\0\xbe\xad"), "truncated extension"),
    "bad coordinate system": (
        _with_extension(STREAM, (0xADBE0003, struct.pack("<I", 99))),
        "unknown coordinate system 99",
    ),
}


def _v1_with_nan() -> bytes:
    s = _spz_stream(version=2)
    v1 = _set(s[:16], 4, "<I", 1) + np.array([np.nan] + [0.0] * 8, "<f2").tobytes() + s[16 + 27 :]
    return gzip.compress(v1)


MALFORMED_SPZ["nan in a version 1 position"] = (_v1_with_nan(), "non-finite (NaN or Inf) values in its positions")


@pytest.mark.parametrize("case", list(MALFORMED_SPLAT))
def test_malformed_splat_raises_data_error(tmp_path, case):
    data, problem = MALFORMED_SPLAT[case]
    path = tmp_path / "bad.splat"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        read_splat(path)
    assert info.value.path == path and str(info.value).startswith(str(path))
    assert problem in str(info.value), str(info.value)


@pytest.mark.parametrize("case", list(MALFORMED_SPZ))
def test_malformed_spz_raises_data_error(tmp_path, case):
    data, problem = MALFORMED_SPZ[case]
    path = tmp_path / "bad.spz"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        read_spz(path)
    assert info.value.path == path and str(info.value).startswith(str(path))
    assert problem in str(info.value), str(info.value)


@pytest.mark.parametrize("read", [read_splat, read_spz])
def test_missing_file_and_folder_raise_data_error(tmp_path, read):
    with pytest.raises(DataError, match="does not exist"):
        read(tmp_path / "nope")
    with pytest.raises(DataError, match="folder"):
        read(tmp_path)


def _check_fuzzed(path, read):
    try:
        out = read(path)
    except DataError as e:
        assert e.path == path
        return
    n = out["means"].shape[0]
    assert n > 0 and all(v.shape[0] == n and torch.isfinite(v).all() for v in out.values())
    torch.testing.assert_close(out["quats"].norm(dim=1), torch.ones(n))


fuzz_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@fuzz_settings
@given(
    st.lists(st.tuples(st.integers(0, len(SPLAT) - 1), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.integers(0, len(SPLAT))),
    st.binary(max_size=40),
)
def test_fuzzed_splat_raises_only_data_error(tmp_path, mutations, cut, inserted):
    data = bytearray(SPLAT)
    for position, value in mutations:
        data[position] = value
    if cut is not None:
        data = data[:cut] + inserted + data[cut:] if inserted else data[:cut]
    path = tmp_path / "fuzz.splat"
    path.write_bytes(bytes(data))
    _check_fuzzed(path, read_splat)


@fuzz_settings
@given(
    st.booleans(),
    st.lists(st.tuples(st.integers(0, len(STREAM) - 1), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.integers(0, len(STREAM))),
    st.binary(max_size=8),
)
def test_fuzzed_spz_raises_only_data_error(tmp_path, inside, mutations, cut, inserted):
    """Bytes changed in the decompressed stream (then gzipped) or in the file itself."""
    data = bytearray(STREAM if inside else SPZ)
    for position, value in mutations:
        data[position % len(data)] = value
    if cut is not None:
        cut = min(cut, len(data))
        data = data[:cut] + inserted + data[cut:] if inserted else data[:cut]
    path = tmp_path / "fuzz.spz"
    path.write_bytes(gzip.compress(bytes(data)) if inside else bytes(data))
    _check_fuzzed(path, read_spz)


def test_fuzz_seeds_are_valid_files(tmp_path):
    (tmp_path / "m.splat").write_bytes(SPLAT)
    (tmp_path / "m.spz").write_bytes(SPZ)
    assert read_splat(tmp_path / "m.splat")["means"].shape == (3, 3)
    assert read_spz(tmp_path / "m.spz")["shN"].shape == (3, 3, 3)
