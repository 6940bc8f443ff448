"""Benchmark ``scene3d process`` (structure from motion) on the fox capture against its known poses.

Copies the fox images that exist (50 of the 67 frames listed in transforms.json), runs
:func:`scene3d.data.sfm.run_process` on them, and compares the recovered camera poses with
transforms.json after a similarity alignment. Prints wall time, registered/total, 3D points,
reprojection error and pose agreement; ``--json`` prints the figures as one JSON object instead.

    python benchmarks/bench_process.py                      # all fox images at 540x960
    python benchmarks/bench_process.py --limit 25 --json    # the first 25
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scene3d.align import camera_pose_agreement  # noqa: E402
from scene3d.data.sfm import ProcessConfig, run_process  # noqa: E402

OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0, 1.0])


def load_fox_poses(root: Path) -> dict[str, np.ndarray]:
    """File name -> [4, 4] OpenCV camera-to-world pose, for the frames of transforms.json whose image exists."""
    meta = json.loads((root / "transforms.json").read_text())
    poses = {}
    for frame in meta["frames"]:
        path = root / frame["file_path"]
        if path.is_file():
            poses[path.name] = np.asarray(frame["transform_matrix"], dtype=np.float64) @ OPENGL_TO_OPENCV
    return poses


def sfm_poses(model_dir: Path) -> dict[str, np.ndarray]:
    """File name -> [4, 4] OpenCV camera-to-world pose of every registered image of a COLMAP model."""
    import pycolmap

    model = pycolmap.Reconstruction(model_dir)
    poses = {}
    for image in model.images.values():
        if image.has_pose:
            c2w = np.eye(4)
            c2w[:3, :4] = image.cam_from_world().inverse().matrix()
            poses[image.name] = c2w
    return poses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_data = REPO.parent / "shared" / "data" / "fox"
    parser.add_argument("--data", type=Path, default=default_data, help="fox scene folder (transforms.json + images/)")
    parser.add_argument("--max-size", type=int, default=960, help="longest image side for SfM (default 960: 540x960)")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument("--matcher", default="auto", choices=["auto", "exhaustive", "sequential"])
    parser.add_argument("--num-threads", type=int, default=-1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    if not (args.data / "transforms.json").is_file():
        parser.error(f"{args.data} has no transforms.json")
    reference = load_fox_poses(args.data)
    names = sorted(reference)[: args.limit or None]
    with tempfile.TemporaryDirectory(prefix="bench-process-") as tmp:
        images = Path(tmp) / "input"
        images.mkdir()
        for name in names:
            shutil.copyfile(args.data / "images" / name, images / name)
        cfg = ProcessConfig(max_size=args.max_size, matcher=args.matcher, num_threads=args.num_threads)
        start = time.perf_counter()
        summary = run_process(images, Path(tmp) / "scene", cfg)
        wall = time.perf_counter() - start
        estimated = sfm_poses(Path(tmp) / "scene" / "sparse" / "0")

    common = [name for name in names if name in estimated]
    agreement = camera_pose_agreement(np.stack([estimated[n] for n in common]), np.stack([reference[n] for n in common]))
    figures = {
        "images": len(names),
        "registered": summary["num_registered"],
        "points": summary["num_points"],
        "mean_reprojection_error_px": summary["mean_reprojection_error_px"],
        "wall_seconds": wall,
        "stage_seconds": summary["seconds"],
        "max_size": args.max_size,
        "matcher": summary["matcher"],
        "pose_agreement": agreement,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"fox, {len(names)} images at max size {args.max_size}, matcher {summary['matcher']}")
        print(f"  wall time            {wall:.1f} s  ({', '.join(f'{k} {v:.1f}' for k, v in summary['seconds'].items())})")
        print(f"  registered           {summary['num_registered']} / {len(names)}")
        print(f"  3D points            {summary['num_points']:,}")
        print(f"  reprojection error   {summary['mean_reprojection_error_px']:.3f} px (mean)")
        print(
            f"  centre error         median {100 * agreement['centre_error_rel_median']:.2f}%, "
            f"max {100 * agreement['centre_error_rel_max']:.2f}% of the scene radius"
        )
        print(
            f"  rotation error       median {agreement['rotation_error_deg_median']:.3f} deg, "
            f"max {agreement['rotation_error_deg_max']:.3f} deg"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
