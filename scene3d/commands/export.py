"""``scene3d export``: a trained run or a scene file written as any format of the format registry.

A run is written in the input data's coordinate frame (so other tools show it where the user's
cameras are): Gaussian scene files from the model's :meth:`to_gaussians`, model files (the
``slimmerf`` format) from the model itself. A scene file is converted between Gaussian formats.
"""

from __future__ import annotations

from pathlib import Path

from scene3d.errors import Scene3dError


def check_sog_options(options: dict) -> None:
    """Refuses SOG options out of range before any work is done (one sentence naming the flag)."""
    bits, palette = options.get("position_bits", 16), options.get("sh_palette")
    if not 8 <= int(bits) <= 16:
        raise Scene3dError(f"--sog-position-bits must be in 8..16, got {bits}")
    if palette is not None and not 0 <= int(palette) <= 65536:
        raise Scene3dError(f"--sog-sh-palette must be in 0..65536 (0: splat-transform's rule), got {palette}")
    if int(options.get("sh_iterations", 10)) < 1:
        raise Scene3dError(f"--sog-sh-iterations must be at least 1, got {options['sh_iterations']}")


def run_gaussians(run, model):
    """The Gaussians of a run's model (refusing representations that cannot be baked)."""
    gaussians = model.to_gaussians()
    if gaussians is None:
        raise Scene3dError(f"{run.path}: is a {run.spec.model} run, which cannot be baked to Gaussians; scene files (ply, spz, sog, ...) hold Gaussians (--format points writes its geometry as a point cloud)")
    return gaussians


def weigh_and_prune(run, model, gaussians, prune_below: float | None, weighted: bool, console=None):
    """(the Gaussians without those contributing fewer than ``prune_below`` pixels to the run's
    training views, their contributions for weighting or None). Contributions are computed only
    when needed; a run whose data cannot be loaded is refused for pruning and exported unweighted."""
    from scene3d.compress.importance import prune_below as prune, run_contributions

    if prune_below is None and not weighted:
        return gaussians, None
    try:
        contrib = run_contributions(run, model=model)
    except Scene3dError as e:
        if prune_below is not None:
            raise
        if console is not None:
            console.print(f"note: the SOG palette is clustered unweighted ({e})")
        return gaussians, None
    if prune_below is not None:
        gaussians, contrib = prune(run.path, gaussians, contrib, prune_below, console)
    return gaussians, (contrib if weighted else None)


def sog_layout_for(run) -> str:
    """The SOG grid layout that compresses a target best: ``plas`` for a run trained with
    ``--compress-grid`` (its attributes were smoothed along that sort), ``morton`` otherwise (on
    models trained without it, Z-order of the positions gave slightly smaller files than PLAS)."""
    return "plas" if run is not None and run.spec.train_cfg.get("compress_grid") else "morton"


def export_command(target, output: Path, format: str | None = None, *, prune_below: float | None = None, weighted: bool = True,
                   device: str = "auto", rank: int | None = None, **options) -> Path:  # fmt: skip
    """Writes a run (in the input data's frame) or converts a scene file, as ``format`` (default:
    what ``output``'s name says). ``target`` is a path, or a run already opened (:func:`open_run`).

    For a run, ``prune_below`` drops the Gaussians that contribute fewer pixels than that to the
    training views, and ``weighted`` clusters a SOG's higher SH weighted by those contributions
    (:mod:`scene3d.compress.importance`; when the run's data cannot be loaded the SOG is written
    unweighted, with a note). ``rank`` truncates a slimmable run written as a model file."""
    from rich.console import Console

    from scene3d.device import pick_device
    from scene3d.export.formats import format_of_path, formats, get_format, read_scene
    from scene3d.runs import Run, open_run

    run = target if isinstance(target, Run) else None
    target, output = (run.path if run is not None else Path(target)), Path(output)
    fmt = get_format(format) if format is not None else format_of_path(output)
    if fmt.kind == "model":
        return export_model_file(target, output, fmt, rank, device)
    if rank is not None:
        raise Scene3dError(f"--rank truncates slimmable runs written as model files (--format {' / '.join(f.name for f in formats('model'))}), not {fmt.name} files")
    if fmt.kind == "points":
        return export_point_cloud(target, output, device, **options)
    if fmt.name == "sog":
        check_sog_options(options)
    if prune_below is not None and not target.is_dir():
        raise Scene3dError(f"{target}: --prune-below needs a run folder (its training views weigh the Gaussians), not a scene file")
    console = Console(stderr=True)
    if run is not None or target.is_dir() or not target.exists():
        run = run or open_run(target)
        model = run.load_model(pick_device(device))
        gaussians = run_gaussians(run, model)
        weighted = weighted and fmt.name == "sog" and gaussians.sh_degree > 0  # the weights serve the SH palette
        gaussians, weights = weigh_and_prune(run, model, gaussians, prune_below, weighted, console)
        if weights is not None:
            options = {**options, "weights": weights}
        params, to_input = {k: v.cpu() for k, v in gaussians.params().items()}, run.to_input
    else:
        params, to_input = read_scene(target), None
    if options.get("layout") == "auto":
        options = {**options, "layout": sog_layout_for(run)}
    check_exportable(target, params, output)
    fmt.write(output, params, transform=to_input, **options)
    n = params["means"].shape[0]
    Console().print(f"wrote {n:,} Gaussians to {output} as {fmt.name} ({output.stat().st_size / 1e6:.2f} MB, input coordinate frame)")
    return output


def check_exportable(source: Path, params: dict, output: Path) -> None:
    """A model holding NaN or Inf (a diverged or damaged run) is refused in one sentence naming
    its source, before ``output`` is touched."""
    from scene3d.errors import DataError
    from scene3d.export.fileio import check_finite, model_arrays

    try:
        check_finite(model_arrays(params), "in the model", str(output))
    except ValueError as e:
        raise DataError(source, f"cannot be exported: {e}") from None


def export_point_cloud(run_path: Path, output: Path, device: str = "auto", num_points: int = 1_000_000, min_alpha: float = 0.5) -> Path:
    """A run's geometry written as a coloured point cloud (:mod:`scene3d.export.points`)."""
    from rich.console import Console

    from scene3d.device import pick_device
    from scene3d.export.points import export_points
    from scene3d.runs import open_run

    if not run_path.is_dir():
        raise Scene3dError(f"{run_path}: --format points writes a trained run's geometry; give its run folder")
    run = open_run(run_path)
    model = run.load_model(pick_device(device))
    n = export_points(run, model, output, num_points=num_points, min_alpha=min_alpha)
    Console().print(f"wrote {n:,} points to {output} ({output.stat().st_size / 1e6:.2f} MB, input coordinate frame)")
    return output


def export_model_file(run_path: Path, output: Path, fmt, rank: int | None, device: str = "cpu") -> Path:
    """A run written as a model file (truncated to ``rank`` where the format slims)."""
    from rich.console import Console

    from scene3d.runs import open_run

    if not run_path.is_dir():
        raise Scene3dError(f"{run_path}: --format {fmt.name} writes a trained run; give its run folder")
    from scene3d.device import pick_device

    run = open_run(run_path)
    model = run.load_model(pick_device(device))
    caps = model.caps
    if fmt.needs and not getattr(caps, fmt.needs):
        raise Scene3dError(f"{run_path}: is a {run.spec.model} run; --format {fmt.name} needs a {fmt.needs} representation")
    rank = model.rank if rank is None else rank
    fmt.write(output, model, transform=run.transform, rank=rank)
    Console().print(f"wrote {run_path} at rank {rank} (of {model.rank}) to {output} ({output.stat().st_size / 1e6:.2f} MB)")
    return output
