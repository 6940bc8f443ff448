"""`scene3d demo`, the README's main job, end to end (shortened)."""

from __future__ import annotations

import json
import subprocess
import sys

from scene3d.export import read_ply
from scene3d.export.sog import read_sog


def test_demo_trains_evaluates_and_ships_a_ply_and_a_sog(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "scene3d", "demo", "-o", str(out), "--max-steps", "60"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["steps"] == 60 and summary["psnr"] > 12
    ply, sog = read_ply(summary["ply"]), read_sog(summary["sog"])
    assert ply["means"].shape[0] == summary["num_gaussians"]
    assert 0 < sog["means"].shape[0] == summary["sog_num_gaussians"] <= summary["num_gaussians"]  # pruned
    assert summary["sog_ratio"] > 5 and summary["sog_psnr"] > summary["psnr"] - 3
    assert "compressed scene" in r.stdout and "scene3d view" in r.stdout
    # running it again into the same folder is refused, and nothing there is lost
    again = subprocess.run([sys.executable, "-m", "scene3d", "demo", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already holds files" in again.stderr
    assert (out / "demo_summary.json").is_file()
