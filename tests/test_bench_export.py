"""``scene3d bench export``: every format written from a run, read back and evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scene3d.export import read_ply
from tests.runs import cli


def test_bench_export_measures_every_format(short_run, tmp_path):
    formats = ["ply", "splat", "compressed-ply", "spz", "sog"]
    r = cli("bench", "export", str(short_run), "-o", str(tmp_path / "b"), "--formats", *formats, "--no-reference", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout[r.stdout.index("[") :])
    assert [row["format"] for row in rows] == formats
    by = {row["format"]: row for row in rows}
    assert abs(by["ply"]["psnr_lost"]) < 1e-3 and by["ply"]["ratio_to_ply"] == 1.0  # the PLY is lossless
    # Quantised formats are smaller and lose a little; splat drops view-dependent colour.
    for name in ("splat", "compressed-ply", "spz", "sog"):
        assert by[name]["ratio_to_ply"] > 3 and by[name]["psnr_lost"] < 3, by[name]
    assert by["spz"]["bytes"] < by["compressed-ply"]["bytes"]
    for row in rows:
        assert row["bytes"] == Path(row["file"]).stat().st_size > 0
        assert row["write_seconds"] >= 0 and row["read_seconds"] >= 0 and 5 < row["psnr"] < 60
    saved = json.loads((tmp_path / "b" / "bench_export.json").read_text())
    assert saved["sog_options"]["layout"] == "morton"  # auto: the run was not trained with --compress-grid
    assert saved["rows"] == rows and saved["model"]["psnr"] == pytest.approx(rows[0]["model_psnr"])
    assert (tmp_path / "b" / "bench_export.png").stat().st_size > 10_000


def test_export_converts_files_and_refuses_bad_targets(short_run, tmp_path):
    ply = tmp_path / "a.ply"
    assert cli("export", str(short_run), "-o", str(ply)).returncode == 0
    again = tmp_path / "b.ply"
    r = cli("export", str(ply), "-o", str(again))
    assert r.returncode == 0, r.stderr
    assert again.read_bytes() == ply.read_bytes()  # file -> file keeps the frame and every value
    bad = cli("export", str(short_run), "-o", str(tmp_path / "x.obj"))
    assert bad.returncode == 2 and "x.obj" in bad.stderr
    plas = tmp_path / "grid.sog"
    r = cli("export", str(short_run), "-o", str(plas), "--sog-layout", "plas", "--sog-sh-palette", "0")
    assert r.returncode == 0, r.stderr
    from scene3d.export.sog import read_sog

    assert read_sog(plas)["means"].shape == read_ply(ply)["means"].shape
    missing = cli("export", str(tmp_path / "nope.ply"), "-o", str(tmp_path / "y.ply"))
    assert missing.returncode == 2 and "nope.ply" in missing.stderr and "does not exist" in missing.stderr


def test_bench_export_reference_sog_from_splat_transform(short_run, tmp_path):
    from scene3d.export.splat_transform import find_splat_transform

    if find_splat_transform() is None:
        pytest.skip("splat-transform is not installed (scripts/setup.sh installs it when npm is reachable)")
    args = ("bench", "export", str(short_run), "-o", str(tmp_path / "b"), "--formats", "sog", "--reference-iterations", "1", "--json")
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout[r.stdout.index("[") :])
    assert [row["format"] for row in rows] == ["sog", "sog (splat-transform -i 1)"]
    ours, ref = rows
    assert ref["sh_iterations"] == 1 and ref["file"] == str(tmp_path / "b" / "splat-transform.sog")
    assert ref["ratio_to_ply"] > 3 and ref["psnr_lost"] < 3, ref  # its SOG of our PLY decodes to the same scene
    assert ref["num_gaussians"] == ours["num_gaussians"]
    record = json.loads((tmp_path / "b" / "splat-transform.sog.json").read_text())
    assert record["iterations"] == 1 and len(record["ply_sha256"]) == 64
    assert "k-means" in r.stderr  # its own progress is shown
    # the same PLY and iterations: the slow reference is reused, not remade
    again = cli(*args)
    assert again.returncode == 0 and "reusing splat-transform's sog" in again.stderr, again.stderr
    assert json.loads(again.stdout[again.stdout.index("[") :])[1]["bytes"] == ref["bytes"]


def test_bench_export_prunes_every_format_and_keeps_the_whole_model_as_the_ratio_base(short_run, tmp_path):
    from scene3d.compress.importance import run_contributions

    contrib = run_contributions(short_run, progress=False)
    threshold = float(torch.quantile(contrib, 0.5)) + 1e-3
    r = cli("bench", "export", str(short_run), "-o", str(tmp_path / "b"), "--formats", "ply", "sog", "--no-reference",
            "--prune-below", str(threshold), "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout[r.stdout.index("[") :])
    kept = int((contrib >= threshold).sum())
    assert [row["num_gaussians"] for row in rows] == [kept, kept] and kept < len(contrib)
    ply = rows[0]
    assert ply["ratio_to_ply"] == pytest.approx(len(contrib) / kept, rel=0.01)  # the pruned PLY against the whole one
    # half of a 40-step model is a real loss (measured 1.25 dB); the SOG adds its own small one on top
    assert 0 < ply["psnr_lost"] < 3 and abs(rows[1]["psnr_lost"] - ply["psnr_lost"]) < 0.5
    saved = json.loads((tmp_path / "b" / "bench_export.json").read_text())
    assert saved["prune_below"] == pytest.approx(threshold) and saved["full_count"] == len(contrib)
    assert saved["sog_options"]["weighted"] is True


def test_reference_sog_falls_back_to_the_cpu_when_the_adapter_fails(tmp_path, monkeypatch):
    """A listed WebGPU adapter that cannot run (a driver missing a feature) must not end the
    benchmark: the reference is written again with splat-transform's CPU k-means."""
    from rich.console import Console

    import scene3d.export.splat_transform as st
    from scene3d.bench.export import _reference_sog
    from scene3d.export import write_ply
    from tests.synthetic import known_gaussians

    exe = st.find_splat_transform()
    if exe is None:
        pytest.skip("splat-transform is not installed (scripts/setup.sh installs it when npm is reachable)")
    g = known_gaussians(300)
    params = {"means": g["means"], "quats": g["quats"], "scales": g["scales"].log(), "opacities": torch.logit(g["opacities"]),
              "sh0": torch.zeros(300, 1, 3), "shN": 0.1 * torch.randn(300, 3, 3, generator=torch.Generator().manual_seed(0))}  # fmt: skip
    write_ply(tmp_path / "m.ply", params)
    monkeypatch.setattr(st, "gpu_device_arg", lambda exe: "0")
    tried = []

    def adapter_fails(exe, *args, **kw):  # what splat-transform does when the adapter cannot run
        tried.append(args[args.index("-g") + 1])
        if tried[-1] != "cpu":
            raise RuntimeError("splat-transform failed (1): device lost")
        return st.run_splat_transform(exe, *args, **kw)

    console = Console(stderr=True, record=True, width=200)
    seconds = _reference_sog(exe, tmp_path / "m.ply", tmp_path / "ref.sog", 1, console, adapter_fails)
    assert tried == ["0", "cpu"]
    assert seconds > 0 and (tmp_path / "ref.sog").stat().st_size > 0
    assert "again with -g cpu" in console.export_text()


def test_bench_export_refuses_to_prune_everything(short_run, tmp_path):
    r = cli("bench", "export", str(short_run), "-o", str(tmp_path / "b"), "--formats", "ply", "--no-reference", "--prune-below", "1e12")
    assert r.returncode != 0 and "nothing would be left" in r.stderr
    assert not (tmp_path / "b" / "scene.ply").exists()
