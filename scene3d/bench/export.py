"""``scene3d bench export RUN``: what each scene-file format costs and saves on one trained run.

For every format the run's model is written in the input frame (as ``scene3d export`` does), read
back, and the decoded scene is evaluated on the run's test split with the same renderer. Reported
per format: file size, ratio to the PLY, write and read time, PSNR and SSIM of the decoded scene and
the PSNR lost against the uncompressed model. When PlayCanvas splat-transform is installed, its own
SOG encoder is run on our PLY as a reference row (``sog (splat-transform -i N)``, N its k-means iterations), measured the same way.

Output: a table (or ``--json`` records); in ``OUTPUT/``: the files, ``bench_export.json`` and
``bench_export.png`` (PSNR against size).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from scene3d.errors import Scene3dError

from scene3d.export.formats import FORMATS, format_names

DEFAULT_FORMATS = tuple(format_names("gaussians"))
FILE_NAMES = {name: "scene" + FORMATS[name].suffix for name in DEFAULT_FORMATS}


def run_bench(run: Path, output: Path | None = None, formats: tuple[str, ...] = DEFAULT_FORMATS, reference: bool = True,
              sog_options: dict | None = None, device: str = "auto", reference_iterations: int | None = None,
              prune_below: float | None = None, weighted: bool = True) -> list[dict]:  # fmt: skip
    from rich.console import Console

    from scene3d.commands.export import check_sog_options, run_gaussians, sog_layout_for
    from scene3d.device import pick_device
    from scene3d.export.formats import get_format, open_file, read_scene
    from scene3d.export.ply import ply_property_names
    from scene3d.export.splat_transform import find_splat_transform, run_splat_transform
    from scene3d.runs import open_run
    from scene3d.train.evaluation import evaluate_model

    console = Console(stderr=True)
    sog_options = {"sh_iterations": 10, **(sog_options or {})}
    check_sog_options(sog_options)
    formats = tuple(formats)
    for name in formats:
        if get_format(name).kind != "gaussians":
            raise Scene3dError(f"--formats {name}: bench export compares scene files of Gaussians")
    if not formats:
        raise Scene3dError("no formats to compare (--formats is empty)")
    run_ = open_run(Path(run))
    run = run_.path
    if sog_options.get("layout", "auto") == "auto":
        sog_options["layout"] = sog_layout_for(run_)
    dev = pick_device(device)
    model = run_.load_model(dev)
    gaussians = run_gaussians(run_, model)
    output = Path(output) if output is not None else run / "bench_export"
    output.mkdir(parents=True, exist_ok=True)
    ds = run_.dataset()
    bg_mode = run_.background_mode
    console.print(f"evaluating the run's model on its {'test' if ds.test_indices else 'train'} split ...")
    base = evaluate_model(model, ds, dev, bg_mode)
    to_input = run_.to_input
    full_count = len(gaussians)
    weighted = weighted and "sog" in formats and gaussians.sh_degree > 0  # the weights serve the SH palette
    if prune_below is not None or weighted:
        from scene3d.compress.importance import gaussian_contributions, prune_below as prune

        console.print("weighing the Gaussians by their contributions to the training views ...")
        contrib = gaussian_contributions(gaussians, ds.cameras[list(ds.train_indices)]).cpu()
        if prune_below is not None:
            gaussians, contrib = prune(run, gaussians, contrib, prune_below, console)
        if weighted:
            sog_options = {**sog_options, "weights": contrib}
    params = {k: v.cpu() for k, v in gaussians.params().items()}
    del model, gaussians

    def measure(label: str, path: Path, write_seconds: float, fmt_name: str) -> dict:
        t0 = time.perf_counter()
        read_scene(path)
        read_seconds = time.perf_counter() - t0
        decoded, _ = open_file(path, dev, transform=ds.transform)
        m = evaluate_model(decoded, ds, dev, bg_mode)
        row = {
            "format": label, "file": str(path), "bytes": path.stat().st_size, "write_seconds": round(write_seconds, 3),
            "read_seconds": round(read_seconds, 3), "psnr": m["psnr"], "ssim": m["ssim"], "psnr_lost": base["psnr"] - m["psnr"],
            "num_gaussians": m["num_gaussians"], "eval_split": m["eval_split"], "num_images": m["num_images"],
        }  # fmt: skip
        console.print(f"{label}: {row['bytes'] / 1e6:.2f} MB, PSNR {row['psnr']:.2f} dB ({-row['psnr_lost']:+.2f})")
        return row

    rows: list[dict] = []
    for name in formats:
        path = output / FILE_NAMES[name]
        options = sog_options if name == "sog" else {}
        console.print(f"writing {name} ...")
        t0 = time.perf_counter()
        get_format(name).write(path, params, transform=to_input, **options)
        rows.append(measure(name, path, time.perf_counter() - t0, name))

    exe = find_splat_transform() if reference else None
    if reference and exe is None:
        console.print("splat-transform is not installed: no reference SOG row (scripts/setup.sh installs it)")
    if exe is not None:
        ply = output / FILE_NAMES["ply"]
        if "ply" not in formats:  # always this model's (pruned) PLY, never one left by an earlier run
            get_format("ply").write(ply, params, transform=to_input)
        ref = output / "splat-transform.sog"
        iterations = int(sog_options["sh_iterations"] if reference_iterations is None else reference_iterations)
        seconds = _reference_sog(exe, ply, ref, iterations, console, run_splat_transform)
        row = measure(f"sog (splat-transform -i {iterations})", ref, seconds, "sog")
        row["sh_iterations"] = iterations
        rows.append(row)

    # the ratio is to the whole model's PLY (what write_ply writes for every Gaussian), pruned or not
    from scene3d.export.sh_rotation import sh_degree_from_rest

    per_gaussian = 4 * len(ply_property_names(sh_degree_from_rest(params["shN"].shape[1])))  # float32 each
    written = params["means"].shape[0]
    ply_row = next((r for r in rows if r["format"] == "ply"), None)
    ply_bytes = (ply_row["bytes"] if ply_row else 600 + per_gaussian * written) + per_gaussian * (full_count - written)
    for r in rows:
        r["ratio_to_ply"] = ply_bytes / r["bytes"]
        r["model_psnr"] = base["psnr"]
    saved_options = {k: v for k, v in sog_options.items() if k != "weights"} | {"weighted": weighted}
    (output / "bench_export.json").write_text(json.dumps({"run": str(run), "model": base, "sog_options": saved_options, "prune_below": prune_below, "full_count": full_count, "rows": rows}, indent=2))
    note = f"{written:,} of {full_count:,} Gaussians (pruned under {prune_below:g} px)" if prune_below is not None else ""
    plot_bench(rows, base, output / "bench_export.png", note)
    return rows


def _reference_sog(exe: str, ply: Path, ref: Path, iterations: int, console, run_splat_transform) -> float:
    """splat-transform's SOG of ``ply`` at ``ref``; returns its write time. Its CPU k-means takes
    tens of minutes for 100k+ Gaussians, so a result made from the same PLY bytes with the same
    iterations (recorded in ``ref``.json) is reused."""
    import hashlib

    digest = hashlib.sha256(ply.read_bytes()).hexdigest()
    record = ref.with_name(ref.name + ".json")
    if ref.is_file() and record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("ply_sha256") == digest and saved.get("iterations") == iterations:
            console.print(f"reusing splat-transform's sog made from the same PLY ({record})")
            return float(saved["seconds"])
    from scene3d.export.splat_transform import gpu_device_arg

    device = gpu_device_arg(exe)
    console.print(f"writing sog with splat-transform (reference, -g {device}; without a WebGPU adapter its k-means is slow) ...")
    t0 = time.perf_counter()
    try:
        run_splat_transform(exe, "-g", device, "-i", str(iterations), str(ply), str(ref), timeout=6 * 3600, progress=True)
    except RuntimeError:
        if device == "cpu":
            raise
        console.print(f"splat-transform failed on WebGPU adapter {device}; writing the reference again with -g cpu ...")
        t0 = time.perf_counter()
        run_splat_transform(exe, "-g", "cpu", "-i", str(iterations), str(ply), str(ref), timeout=6 * 3600, progress=True)
    seconds = time.perf_counter() - t0
    record.write_text(json.dumps({"ply_sha256": digest, "iterations": iterations, "seconds": seconds}))
    return seconds


def plot_bench(rows: list[dict], base: dict, path: Path, note: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ax.scatter(r["bytes"] / 1e6, r["psnr"], s=40)
        ax.annotate(r["format"], (r["bytes"] / 1e6, r["psnr"]), textcoords="offset points", xytext=(5, 5))
    ax.axhline(base["psnr"], color="gray", ls="--", lw=1, label="uncompressed model")
    ax.set(xscale="log", xlabel="file size (MB, log)", ylabel=f"{base['eval_split']} PSNR (dB)", title="scene files: quality against size" + (f"\n{note}" if note else ""))
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def print_table(rows: list[dict], run: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    base = rows[0]["model_psnr"] if rows else float("nan")
    table = Table(title=f"scene files of {run} (uncompressed model: {base:.2f} dB)")
    for col in ("format", "size MB", "ply / size", "write s", "read s", "PSNR", "lost dB", "SSIM"):
        table.add_column(col, justify="left" if col == "format" else "right", no_wrap=col == "format")
    for r in rows:
        table.add_row(
            r["format"], f"{r['bytes'] / 1e6:.2f}", f"{r['ratio_to_ply']:.1f}x", f"{r['write_seconds']:.2f}", f"{r['read_seconds']:.2f}",
            f"{r['psnr']:.2f}", f"{r['psnr_lost']:.3f}", f"{r['ssim']:.4f}",
        )  # fmt: skip
    Console().print(table)
