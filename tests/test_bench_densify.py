"""``scene3d bench densify``: every strategy trained under the same settings, one table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SCENE = REPO / "data" / "default_scene"


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scene3d", "bench", "densify", *args], capture_output=True, text=True, timeout=900)


def test_bench_densify_runs_each_strategy_with_the_same_settings(tmp_path):
    out = tmp_path / "bench"
    strategies = ["none", "mcmc", "adc"]
    result = bench(str(DEFAULT_SCENE), "-o", str(out), "--strategies", *strategies, "--max-steps", "30", "--downscale", "4", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout[result.stdout.index("[") :])
    assert [r["strategy"] for r in rows] == ["adc", "none", "mcmc"]  # ADC first: its count is the shared cap
    by_name = {r["strategy"]: r for r in rows}
    assert by_name["mcmc"]["cap"] == by_name["adc"]["num_gaussians"] and by_name["none"]["cap"] is None
    assert by_name["mcmc"]["num_gaussians"] <= by_name["adc"]["num_gaussians"]
    for r in rows:
        assert r["steps"] == 30 and r["stopped_by"] == "max_steps"
        assert 5 < r["psnr"] < 60 and 0 < r["ssim"] <= 1 and r["num_gaussians"] > 0
        assert (Path(r["run"]) / "checkpoints" / "latest.pt").is_file()
    spec = yaml.safe_load((out / "adc" / "config.yaml").read_text())  # the 3k-step preset scaled to 30 steps
    assert spec["train_cfg"]["max_steps"] == 30
    assert (spec["strategy_cfg"]["refine_start"], spec["strategy_cfg"]["refine_stop"], spec["strategy_cfg"]["reset_every"]) == (2, 22, 15)
    assert spec["model_cfg"]["sh_degree_interval"] == 5
    saved = json.loads((out / "bench_densify.json").read_text())
    assert saved["results"] == rows and saved["settings"]["downscale"] == 4
    assert (out / "bench_densify.png").stat().st_size > 10_000
    # the same output again needs --overwrite
    again = bench(str(DEFAULT_SCENE), "-o", str(out), "--strategies", "none", "--max-steps", "5", "--downscale", "4")
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_bench_densify_refuses_unknown_strategy(tmp_path):
    result = bench(str(DEFAULT_SCENE), "-o", str(tmp_path / "b"), "--strategies", "adc", "nope")
    assert result.returncode == 2 and "unknown strategy 'nope'" in result.stderr
    assert not (tmp_path / "b").exists()
