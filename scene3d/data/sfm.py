"""Structure from motion on a captured image folder (pycolmap, CPU): ``scene3d process IMAGES -o SCENE``.

The pipeline is COLMAP's: SIFT features, matching of image pairs (exhaustive, sequential or
GPS-spatial), incremental mapping, and optionally undistortion to PINHOLE cameras. The result is a
scene folder that the COLMAP reader loads::

    SCENE/images/                  the images the model refers to (downscaled copies, or undistorted)
    SCENE/sparse/0/*.bin           COLMAP binary model (pycolmap 4 adds rigs.bin and frames.bin)
    SCENE/database.db              COLMAP database with features and matches
    SCENE/process_summary.json     what :func:`run_process` returns

Everything is built in a hidden sibling folder and moved into place only when mapping succeeded,
so a failed or interrupted run never leaves a model that looks valid. pycolmap is imported inside
the functions, so importing this module (and ``scene3d --help``) stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from scene3d.errors import DataError, Scene3dError, SfmError

if TYPE_CHECKING:
    import pycolmap
    from rich.console import Console

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
"""File name endings (lower case) treated as images; COLMAP reads all of them."""
EXHAUSTIVE_MAX_IMAGES = 100
"""``matcher="auto"`` matches every pair up to this many images and neighbours in name order beyond."""
OUTPUT_ENTRIES = ("images", "sparse", "database.db", "process_summary.json")
"""What :func:`run_process` writes into the output folder (and replaces when ``overwrite`` is set)."""

Matcher = Literal["auto", "exhaustive", "sequential", "spatial"]
CameraModelName = Literal["SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE"]


@dataclass
class ProcessConfig:
    """Options of ``scene3d process``: structure from motion with COLMAP (pycolmap) on the CPU."""

    matcher: Matcher = "auto"
    """Which image pairs to match: auto (exhaustive up to 100 images, sequential beyond), exhaustive
    (every pair; best for unordered photos), sequential (neighbours in file-name order; suits video
    frames), spatial (neighbours by GPS position from EXIF; falls back to auto without GPS)."""
    max_size: int = 1600
    """Images whose longest side exceeds this many pixels are downscaled before SfM and written at
    that size into OUTPUT/images (0 keeps full resolution)."""
    camera_model: CameraModelName = "SIMPLE_RADIAL"
    """COLMAP camera model estimated by SfM (OPENCV for strong lens distortion, OPENCV_FISHEYE for
    fisheye lenses)."""
    single_camera: bool | None = None
    """Share one camera (intrinsics) between all images; default: shared when all images have the
    same size, one camera per image otherwise."""
    undistort: bool = False
    """Write undistorted images and a PINHOLE model instead of the distorted originals."""
    num_threads: int = -1
    """CPU threads for COLMAP (-1 uses all cores)."""
    sift_max_features: int = 8192
    """Most SIFT features kept per image."""
    sequential_overlap: int = 10
    """Sequential matching pairs each image with this many following images."""
    min_registered: int = 3
    """Fail unless at least this many images get a camera pose."""
    seed: int = 0
    """Random seed for RANSAC and mapping (-1: random); runs repeat exactly only with num_threads 1."""
    overwrite: bool = False
    """Replace images/, sparse/, database.db and process_summary.json in a non-empty output folder."""
    verbose: bool = False
    """Show COLMAP's own log on stderr."""


def run_process(images: Path, output: Path, cfg: ProcessConfig | None = None, console: Console | None = None) -> dict[str, Any]:
    """Runs structure from motion on the image folder ``images`` and writes the scene to ``output``.

    Only files directly in ``images`` whose names end in one of :data:`IMAGE_SUFFIXES` are used
    (sub-folders are not searched). Returns the summary also written to
    ``output/process_summary.json``: ``num_images``, ``num_registered``, ``registered_fraction``,
    ``num_points``, ``mean_reprojection_error_px``, ``unregistered`` (file names), ``matcher`` (the
    one used), ``camera_model``, ``undistorted``, ``max_size`` and ``seconds`` per stage.

    Raises :class:`DataError` for a missing, empty or unreadable input, or an output folder that is
    not empty (without ``overwrite``), and :class:`SfmError` when fewer than ``cfg.min_registered``
    images get a pose.
    """
    from rich.console import Console

    cfg = cfg or ProcessConfig()
    console = console or Console(stderr=True)
    _check_config(cfg)
    images, output = Path(images), Path(output)
    paths = list_images(images)
    if len(paths) < cfg.min_registered:
        needed = cfg.min_registered
        raise DataError(images, f"holds only {len(paths)} image(s) but structure from motion needs at least {needed}")
    _check_output(output, images, cfg.overwrite)

    target = output.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        summary = _build(paths, images, staging, cfg, console)
        _move_into_place(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print_summary(summary, output, console)
    return summary


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name; a :class:`DataError` if there are none."""
    if not folder.exists():
        raise DataError(folder, "does not exist")
    if not folder.is_dir():
        raise DataError(folder, "is not a folder (give the folder that holds the photos)")
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise DataError(folder, "is empty (expected photos such as .jpg or .png files)")
    paths = sorted((p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name)
    if not paths:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise DataError(folder, f"holds no image files ({suffixes}) directly inside it; sub-folders are not searched")
    return paths


def _check_config(cfg: ProcessConfig) -> None:
    """Rejects option values that tyro's types cannot rule out."""
    if cfg.max_size < 0:
        raise Scene3dError(f"--max-size must be 0 (keep full resolution) or a positive number of pixels, not {cfg.max_size}.")
    if cfg.max_size and cfg.max_size < 32:
        raise Scene3dError(f"--max-size {cfg.max_size} is too small for feature matching; use at least 32 pixels.")
    for name in ("sift_max_features", "sequential_overlap"):
        if getattr(cfg, name) < 1:
            raise Scene3dError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(cfg, name)}.")
    if cfg.min_registered < 2:
        raise Scene3dError(f"--min-registered must be at least 2, not {cfg.min_registered}.")


def _check_output(output: Path, images: Path, overwrite: bool) -> None:
    """Refuses an output that is a file, a non-empty folder (unless ``overwrite``), or holds the input."""
    if output.exists() and not output.is_dir():
        raise DataError(output, "exists and is not a folder; choose a folder for the processed scene")
    src = images.resolve()
    for entry in OUTPUT_ENTRIES:
        target = (output / entry).resolve()
        if src == target or target in src.parents:
            raise DataError(images, f"lies inside {output / entry}, which processing would replace; choose another output folder")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise DataError(output, "already exists and is not empty; choose another output folder or pass --overwrite")


def _build(paths: list[Path], images: Path, staging: Path, cfg: ProcessConfig, console: Console) -> dict[str, Any]:
    """Every stage, writing the scene into ``staging``; returns the summary (also written there)."""
    import pycolmap

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with console.status(f"Preparing {len(paths)} images"):
        sizes = prepare_images(paths, staging / "images", cfg.max_size)
    limit = f" (longest side at most {cfg.max_size} px)" if cfg.max_size else ""
    seconds["prepare"] = _done(console, start, f"Prepared {len(paths)} images{limit}")
    same_size = len(set(sizes.values())) == 1
    if cfg.single_camera and not same_size:
        raise DataError(images, "holds images of different sizes, which cannot share one camera; leave out --single-camera")

    names = [p.name for p in paths]
    database = staging / "database.db"
    with _colmap_log(pycolmap, cfg.verbose):
        if cfg.seed >= 0:
            pycolmap.set_random_seed(cfg.seed)
        t = time.perf_counter()
        with console.status(f"Extracting SIFT features from {len(names)} images"):
            _extract(pycolmap, database, staging / "images", names, same_size, cfg)
        seconds["extract"] = _done(console, t, f"Extracted features from {len(names)} images")

        t = time.perf_counter()
        matcher = _choose_matcher(pycolmap, database, cfg.matcher, len(names))
        with console.status(f"Matching {len(names)} images ({matcher})"):
            num_pairs = _match(pycolmap, database, matcher, cfg)
        seconds["match"] = _done(console, t, f"Matched {len(names)} images ({matcher}): {num_pairs} verified pairs")

        t = time.perf_counter()
        with console.status(f"Mapping: 0/{len(names)} images registered") as status:
            model = _map(pycolmap, database, staging, len(names), cfg, status)
        num_registered = model.num_reg_images() if model is not None else 0
        if num_registered < cfg.min_registered:
            raise SfmError(
                f"Structure from motion registered only {num_registered} of {len(names)} images in {images} "
                f"(at least {cfg.min_registered} needed); the photos may overlap too little or be blurry or textureless."
            )
        seconds["map"] = _done(console, t, f"Mapped {num_registered}/{len(names)} images, {model.num_points3D()} points")

        model_dir = staging / "sparse" / "0"
        model_dir.mkdir(parents=True)
        model.write(model_dir)
        if cfg.undistort:
            t = time.perf_counter()
            with console.status(f"Undistorting {num_registered} images"):
                _undistort(pycolmap, staging, cfg.num_threads)
            seconds["undistort"] = _done(console, t, f"Undistorted {num_registered} images")

    registered = {image.name for image in model.images.values() if image.has_pose}
    seconds["total"] = time.perf_counter() - start
    summary = {
        "num_images": len(names),
        "num_registered": len(registered),
        "registered_fraction": len(registered) / len(names),
        "num_points": model.num_points3D(),
        "mean_reprojection_error_px": model.compute_mean_reprojection_error(),
        "unregistered": [name for name in names if name not in registered],
        "matcher": matcher,
        "camera_model": cfg.camera_model,
        "undistorted": cfg.undistort,
        "max_size": cfg.max_size,
        "seconds": {stage: round(s, 3) for stage, s in seconds.items()},
        "config": asdict(cfg),
    }
    (staging / "process_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def prepare_images(paths: list[Path], dst: Path, max_size: int) -> dict[str, tuple[int, int]]:
    """Decodes every image and writes it to ``dst`` under its own name; returns name -> (width, height).

    Images are copied byte for byte unless their longest side exceeds ``max_size`` (> 0) or their
    EXIF orientation is not upright: those are rotated upright and downscaled (Lanczos) and re-saved
    with their EXIF kept (GPS and focal length stay usable by COLMAP). A file Pillow cannot decode
    raises a :class:`DataError` naming it.
    """
    dst.mkdir(parents=True)
    sizes: dict[str, tuple[int, int]] = {}
    for path in paths:
        image, rotated, info = _decode(path)
        scale = max_size / max(image.size) if max_size else 1.0
        if scale >= 1.0 and not rotated:
            shutil.copyfile(path, dst / path.name)
            sizes[path.name] = image.size
        else:
            sizes[path.name] = _save_resized(image, dst / path.name, min(scale, 1.0), info)
    return sizes


def _decode(path: Path) -> tuple[Any, bool, dict[str, Any]]:
    """``(upright PIL image, whether EXIF orientation rotated it, the file's info dict)`` of ``path``."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            image.load()
            rotated = image.getexif().get(0x0112, 1) != 1
            return (ImageOps.exif_transpose(image) if rotated else image), rotated, dict(image.info)
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, struct.error, ...) for bad files
        reason = str(exc).strip().rstrip(".") or type(exc).__name__
        raise DataError(path, f"is not a readable image ({reason})") from exc


def _save_resized(image: Any, path: Path, scale: float, info: dict[str, Any]) -> tuple[int, int]:
    """Saves ``image`` scaled by ``scale`` (<= 1) to ``path`` with its EXIF and ICC profile; returns its size."""
    from PIL import Image

    if image.mode in ("P", "1"):
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if scale < 1.0:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    options: dict[str, Any] = {"exif": image.getexif()}
    if info.get("icc_profile"):
        options["icc_profile"] = info["icc_profile"]
    if path.suffix.lower() in (".jpg", ".jpeg"):
        options.update(quality=95, subsampling=0)
        if image.mode not in ("RGB", "L", "CMYK"):
            image = image.convert("RGB")
    image.save(path, **options)
    return image.size


def _extract(pc: Any, database: Path, image_dir: Path, names: list[str], same_size: bool, cfg: ProcessConfig) -> None:
    """SIFT features of ``names`` into ``database``, one camera per image or one shared by all."""
    single = same_size if cfg.single_camera is None else cfg.single_camera
    reader = pc.ImageReaderOptions()
    reader.camera_model = cfg.camera_model
    extraction = pc.FeatureExtractionOptions()
    extraction.use_gpu = False
    extraction.num_threads = cfg.num_threads
    extraction.sift.max_num_features = cfg.sift_max_features
    mode = pc.CameraMode.SINGLE if single else pc.CameraMode.PER_IMAGE
    _colmap_call("feature extraction", pc.extract_features, database, image_dir, image_names=names, camera_mode=mode,
                 reader_options=reader, extraction_options=extraction, device=pc.Device.cpu)
    with pc.Database.open(database) as db:
        missing = sorted(set(names) - {image.name for image in db.read_all_images()})
    if missing:
        log.warning("COLMAP could not read %d image(s) (%s); they stay unregistered", len(missing), ", ".join(missing[:5]))


def _choose_matcher(pc: Any, database: Path, requested: str, num_images: int) -> str:
    """The matcher to run: resolves ``auto``, and ``spatial`` without GPS priors falls back to ``auto``."""
    if requested == "spatial":
        with pc.Database.open(database) as db:
            has_gps = db.num_pose_priors() > 0
        if has_gps:
            return "spatial"
        log.warning("no image has a GPS position in its EXIF, so spatial matching falls back to matcher 'auto'")
    if requested in ("auto", "spatial"):
        return "exhaustive" if num_images <= EXHAUSTIVE_MAX_IMAGES else "sequential"
    return requested


def _match(pc: Any, database: Path, matcher: str, cfg: ProcessConfig) -> int:
    """Matches features between the pairs ``matcher`` picks, verifies them; returns the verified pair count."""
    matching = pc.FeatureMatchingOptions()
    matching.use_gpu = False
    matching.num_threads = cfg.num_threads
    verification = pc.TwoViewGeometryOptions()
    verification.ransac.random_seed = cfg.seed
    if matcher == "exhaustive":
        function, pairing = pc.match_exhaustive, pc.ExhaustivePairingOptions()
    elif matcher == "sequential":
        function, pairing = pc.match_sequential, pc.SequentialPairingOptions()
        pairing.overlap = cfg.sequential_overlap
    else:
        function, pairing = pc.match_spatial, pc.SpatialPairingOptions()
    if hasattr(pairing, "num_threads"):
        pairing.num_threads = cfg.num_threads
    _colmap_call("feature matching", function, database, matching_options=matching, pairing_options=pairing,
                 verification_options=verification, device=pc.Device.cpu)
    with pc.Database.open(database) as db:
        return db.num_verified_image_pairs()


def _map(
    pc: Any, database: Path, staging: Path, num_images: int, cfg: ProcessConfig, status: Any
) -> pycolmap.Reconstruction | None:
    """Incremental mapping; returns the model with the most registered images (None if there is none).

    pycolmap calls back after the initial pair and after every further registered image; the
    callbacks only count, to keep the status line current.
    """
    options = pc.IncrementalPipelineOptions()
    options.num_threads = cfg.num_threads
    options.random_seed = cfg.seed
    options.mapper.random_seed = cfg.seed
    options.triangulation.random_seed = cfg.seed
    progress = {"model": 0, "registered": 0}

    def update() -> None:
        model = f" (model {progress['model']})" if progress["model"] > 1 else ""
        status.update(f"Mapping: {progress['registered']}/{num_images} images registered{model}")

    def initial_pair() -> None:
        progress["model"] += 1
        progress["registered"] = 2
        update()

    def next_image() -> None:
        progress["registered"] += 1
        update()

    scratch = staging / "mapping"
    scratch.mkdir()
    models = _colmap_call("mapping", pc.incremental_mapping, database, staging / "images", scratch, options,
                          initial_image_pair_callback=initial_pair, next_image_callback=next_image)
    shutil.rmtree(scratch)
    if not models:
        return None
    return max(models.values(), key=lambda m: (m.num_reg_images(), m.num_points3D()))


def _undistort(pc: Any, staging: Path, num_threads: int) -> None:
    """Replaces ``staging/images`` and ``staging/sparse/0`` by undistorted images and a PINHOLE model."""
    scratch = staging / "undistorted"
    _colmap_call("undistortion", pc.undistort_images, scratch, staging / "sparse" / "0", staging / "images",
                 output_type="COLMAP", num_threads=num_threads)
    shutil.rmtree(staging / "images")
    shutil.rmtree(staging / "sparse" / "0")
    os.replace(scratch / "images", staging / "images")
    os.replace(scratch / "sparse", staging / "sparse" / "0")
    shutil.rmtree(scratch)


def _colmap_call(stage: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Calls a pycolmap function, reporting COLMAP's own failures as :class:`SfmError`."""
    try:
        return function(*args, **kwargs)
    except (RuntimeError, ValueError) as exc:
        raise SfmError(f"COLMAP failed during {stage}: {str(exc).strip() or type(exc).__name__}.") from exc


@contextmanager
def _colmap_log(pc: Any, verbose: bool) -> Iterator[None]:
    """COLMAP logs only fatal errors inside this block unless ``verbose``; the level is restored after."""
    previous = pc.logging.minloglevel
    if not verbose:
        pc.logging.minloglevel = 3
    try:
        yield
    finally:
        pc.logging.minloglevel = previous


def _move_into_place(staging: Path, output: Path) -> None:
    """Moves the finished scene from ``staging`` to ``output``, the model last so a partial move is not valid."""
    output.mkdir(exist_ok=True)
    for entry in ("images", "database.db", "sparse", "process_summary.json"):
        target = output / entry
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        if (staging / entry).exists():
            os.replace(staging / entry, target)


def _done(console: Console, start: float, message: str) -> float:
    """Prints a finished stage with its duration; returns the duration in seconds."""
    seconds = time.perf_counter() - start
    console.print(f"[green]✓[/] {message} [dim]({seconds:.1f} s)[/]")
    return seconds


def print_summary(summary: dict[str, Any], output: Path, console: Console) -> None:
    """A short table of the result, including the images that did not register."""
    from rich.table import Table

    table = Table(title=f"SfM result: {output}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    n, k = summary["num_images"], summary["num_registered"]
    table.add_row("registered", f"{k} / {n} images ({100 * summary['registered_fraction']:.0f}%)")
    table.add_row("3D points", f"{summary['num_points']:,}")
    table.add_row("reprojection error", f"{summary['mean_reprojection_error_px']:.2f} px (mean)")
    model = "PINHOLE (undistorted)" if summary["undistorted"] else summary["camera_model"]
    table.add_row("matcher / camera", f"{summary['matcher']} / {model}")
    table.add_row("time", f"{summary['seconds']['total']:.1f} s")
    unregistered = summary["unregistered"]
    if unregistered:
        shown = ", ".join(unregistered[:10]) + (f" and {len(unregistered) - 10} more" if len(unregistered) > 10 else "")
        table.add_row("not registered", f"[yellow]{shown}[/]")
    console.print(table)
