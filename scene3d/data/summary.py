"""A dataset's vital statistics, as a JSON-able dict and as a printed table (``scene3d info``)."""

from __future__ import annotations

from collections import Counter

from scene3d.cameras import CameraModel
from scene3d.data.dataset import SceneDataset


def dataset_summary(ds: SceneDataset) -> dict:
    """Format, camera and split counts, sparse points, image size and normalisation of ``ds``."""
    cams = ds.cameras
    sizes = Counter((int(w), int(h)) for w, h in zip(cams.width, cams.height))
    models = Counter(CameraModel(int(m)).name for m in cams.model)
    return {
        "root": str(ds.root),
        "format": ds.format,
        "num_cameras": len(ds),
        "num_train": len(ds.train_indices),
        "num_test": len(ds.test_indices),
        "num_points": ds.num_points,
        "image_size": [int(cams.width[0]), int(cams.height[0])],
        "image_sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common()},
        "camera_models": dict(models),
        "downscale": ds.downscale,
        "normalization_scale": ds.scale,
        "aabb": None if ds.aabb is None else ds.aabb.tolist(),
        "masks": ds.mask_paths is not None,
        "warnings": list(ds.warnings),
    }


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"scene {summary['root']}", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("format", summary["format"])
    table.add_row("cameras", f"{summary['num_cameras']} ({summary['num_train']} train, {summary['num_test']} test)")
    table.add_row("image size", ", ".join(f"{k} x{n}" for k, n in summary["image_sizes"].items()))
    table.add_row("camera models", ", ".join(f"{k} x{n}" for k, n in summary["camera_models"].items()))
    table.add_row("sparse points", str(summary["num_points"]))
    table.add_row("downscale", str(summary["downscale"]))
    table.add_row("normalisation scale", f"{summary['normalization_scale']:.4g}")
    if summary["aabb"] is not None:
        table.add_row("aabb", str([[round(v, 3) for v in row] for row in summary["aabb"]]))
    table.add_row("masks", "yes" if summary["masks"] else "no")
    Console().print(table)
