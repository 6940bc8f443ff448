"""Localized Points Management on top of ADC (Yang et al., "Gaussian Splatting with Localized Points
Management", CVPR 2025).

ADC decides per Gaussian from gradients alone; LPM finds the places in 3D that render badly and
acts there. At every densification round (and every ``zone_every`` steps in the window) for the
training view of the step:

1. a paired view is drawn among the training views whose optical axes lie within ``pair_angle``
   degrees (at most ``max_pairs`` partners per view, chosen once with a seeded draw);
2. error regions: the render and the target are each divided by their mean intensity, the absolute
   difference is summed over channels, thresholded at its ``error_quantile`` quantile, and
   ``patch`` x ``patch`` patches vote (a patch is in error when more than ``patch_vote`` of its
   pixels are); connected components of error patches (8-connectivity) are the regions;
3. matching: SIFT features of the two training images (pycolmap on CPU, computed once per image),
   mutual nearest neighbours with Lowe's ratio test (computed once per pair). The matches whose
   keypoint lies in a region are triangulated (midpoint of the closest points of the two rays;
   rays closer to parallel than ``min_triangulation_angle``, points behind a camera and points that
   reproject farther than ``max_reprojection_error`` from their keypoints are dropped) and the
   region's 3D zone is the bounding box of its points (their 5-95% range when there are 20 or
   more), grown by ``zone_margin`` of its size;
4. densification: at ADC's rounds, Gaussians inside a zone are densified already when their
   gradient passes ``zone_grad_factor`` x ``grow_grad2d`` (the others need the full threshold);
   as many of the least opaque Gaussians as were added this way are pruned, so LPM moves points to
   where the errors are rather than only adding them (as the reference code does);
5. calibration: every ``zone_every`` steps, Gaussians in front of a zone (inside the cone from the
   camera centre to the zone's inscribed sphere, nearer than the sphere) that are at least as opaque
   as the ``1 - reset_top_ratio`` quantile of the Gaussians inside the zone get opacity
   ``reset_opacity``: they hide the region and must earn their opacity back.

Deviations from the reference code: SIFT with a mutual-nearest-neighbour matcher replaces
SuperPoint + LightGlue (their weights cannot be downloaded here); zones come from triangulating
the matched keypoints themselves instead of intersecting rays along the two regions' outlines,
which pairs arbitrary boundary rays. Matches, features and pairs are cached in memory only (a
resumed run recomputes them).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from scene3d.densify import ops
from scene3d.densify.adc import ADCStrategy
from scene3d.densify.base import StepContext
from scene3d.errors import Scene3dError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- geometry
def optical_axes(cameras) -> Tensor:
    """[N, 3] world-space viewing directions (camera +z)."""
    return cameras.cam_to_world[:, :3, 2]


def view_pairs(cameras, train_indices: list[int], max_angle: float, max_pairs: int, seed: int = 0) -> dict[int, list[int]]:
    """For each training view, up to ``max_pairs`` other training views whose optical axes are
    within ``max_angle`` degrees (a seeded draw among them), nearest first when there are few."""
    idx = torch.as_tensor(train_indices, dtype=torch.long)
    axes = optical_axes(cameras)[idx].double()
    axes = axes / axes.norm(dim=-1, keepdim=True)
    angles = torch.rad2deg(torch.arccos((axes @ axes.T).clamp(-1, 1)))
    rng = np.random.default_rng(seed)
    pairs: dict[int, list[int]] = {}
    for a, i in enumerate(train_indices):
        ok = [(float(angles[a, b]), j) for b, j in enumerate(train_indices) if j != i and float(angles[a, b]) < max_angle]
        if len(ok) > max_pairs:
            pick = rng.choice(len(ok), size=max_pairs, replace=False)
            ok = [ok[k] for k in sorted(pick)]
        pairs[i] = [j for _, j in sorted(ok)]
    return pairs


def triangulate(o1: Tensor, d1: Tensor, o2: Tensor, d2: Tensor, min_angle_deg: float = 1.0) -> tuple[Tensor, Tensor]:
    """Midpoints of the closest points of ray pairs (o + t d), [M, 3], and which are valid: the rays
    are not near-parallel and the point lies in front of both origins."""
    d1 = d1 / d1.norm(dim=-1, keepdim=True)
    d2 = d2 / d2.norm(dim=-1, keepdim=True)
    w = o1 - o2
    b = (d1 * d2).sum(-1)
    d, e = (d1 * w).sum(-1), (d2 * w).sum(-1)
    denom = 1 - b * b
    safe = denom.clamp_min(1e-12)
    t1 = (b * e - d) / safe
    t2 = (e - b * d) / safe
    p = 0.5 * ((o1 + t1[:, None] * d1) + (o2 + t2[:, None] * d2))
    valid = (denom > math.sin(math.radians(min_angle_deg)) ** 2) & (t1 > 0) & (t2 > 0)
    return p, valid


def error_regions(rgb: Tensor, gt: Tensor, quantile: float = 0.4, patch: int = 16, vote: float = 0.85, min_patches: int = 1) -> tuple[list[tuple[int, int, int, int]], Tensor]:
    """Error regions of one render ``rgb`` against ``gt`` ([H, W, 3]).

    Returns the regions' bounding boxes (x0, y0, x1, y1), exclusive ends, in pixels, largest
    first, and the [H, W] boolean map of error patches."""
    from scipy import ndimage

    rgb, gt = rgb.detach().float(), gt.detach().float()
    err = ((rgb / (rgb.mean() + 0.01)) - (gt / (gt.mean() + 0.01))).abs().sum(-1)
    H, W = err.shape
    hot = err > torch.quantile(err.flatten()[:: max(1, err.numel() // 1_000_000)], quantile)
    ph, pw = -(-H // patch), -(-W // patch)
    padded = torch.zeros(ph * patch, pw * patch, dtype=torch.float32, device=hot.device)
    padded[:H, :W] = hot.float()
    votes = padded.reshape(ph, patch, pw, patch).mean(dim=(1, 3))
    patches = (votes > vote).cpu().numpy()
    labels, n = ndimage.label(patches, structure=np.ones((3, 3), dtype=bool))
    boxes = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        size = int((labels[sl] == k).sum())
        if size < min_patches:
            continue
        ys, xs = sl
        boxes.append((size, (xs.start * patch, ys.start * patch, min(xs.stop * patch, W), min(ys.stop * patch, H))))
    boxes.sort(key=lambda b: -b[0])
    mask = torch.from_numpy(patches).repeat_interleave(patch, 0).repeat_interleave(patch, 1)[:H, :W]
    return [b for _, b in boxes], mask


def match_descriptors(desc1: np.ndarray, desc2: np.ndarray, ratio: float = 0.8) -> np.ndarray:
    """[M, 2] index pairs: mutual nearest neighbours (L2) passing Lowe's ratio test both ways."""
    if len(desc1) < 2 or len(desc2) < 2:
        return np.zeros((0, 2), dtype=np.int64)
    a = torch.from_numpy(np.ascontiguousarray(desc1, dtype=np.float32))
    b = torch.from_numpy(np.ascontiguousarray(desc2, dtype=np.float32))
    dist = torch.cdist(a, b)
    d12, j12 = dist.topk(2, dim=1, largest=False)
    d21, j21 = dist.topk(2, dim=0, largest=False)
    i = torch.arange(len(a))
    mutual = j21[0, j12[:, 0]] == i
    good = mutual & (d12[:, 0] < ratio * d12[:, 1]) & (d21[0, j12[:, 0]] < ratio * d21[1, j12[:, 0]])
    return torch.stack([i[good], j12[good, 0]], -1).numpy()


def sift_features(gray_uint8: np.ndarray, max_features: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """SIFT keypoints [K, 2] (pixel-corner origin, as our cameras) and descriptors [K, 128]."""
    import pycolmap

    opts = pycolmap.FeatureExtractionOptions()
    opts.use_gpu = False
    opts.num_threads = 1
    opts.sift.max_num_features = max_features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sift = pycolmap.Sift(opts, pycolmap.Device.cpu)
    kp, desc = sift.extract(np.ascontiguousarray(gray_uint8))
    return np.asarray(kp)[:, :2].astype(np.float32), np.asarray(desc, dtype=np.float32)


def points_in_boxes(points: Tensor, zones: Tensor) -> Tensor:
    """[N] whether each point lies in any of the boxes ``zones`` [Z, 2, 3] (min corner, max corner)."""
    if len(zones) == 0:
        return torch.zeros(len(points), dtype=torch.bool, device=points.device)
    p = points[:, None, :]
    return ((p >= zones[None, :, 0]) & (p <= zones[None, :, 1])).all(-1).any(-1)


def points_in_front(points: Tensor, center: Tensor, zone: Tensor) -> tuple[Tensor, Tensor]:
    """(in front, inside) masks [N] for one zone [2, 3] seen from camera centre ``center`` [3]: inside
    = within the zone's inscribed sphere; in front = inside the cone from the centre to that sphere
    and nearer than it."""
    mid = zone.mean(0)
    radius = (zone[1] - zone[0]).min() / 2
    inside = (points - mid).norm(dim=-1) <= radius
    axis = mid - center
    height = axis.norm()
    v = points - center
    dist = v.norm(dim=-1)
    cos_half = height / torch.sqrt(height**2 + radius**2)
    in_cone = (v @ (axis / height)) >= cos_half * dist
    in_front = in_cone & (dist <= height - radius)
    return in_front, inside


# ---------------------------------------------------------------------------------------- strategy
@dataclass
class LPMStrategy(ADCStrategy):
    """Hyperparameters of Localized Points Management (on top of ADC's, defaults: the reference's)."""

    zone_every: int = 100
    """Steps between zone detections (and opacity calibrations) in the densification window."""
    pair_angle: float = 45.0
    """Views whose optical axes are within this many degrees are paired."""
    max_pairs: int = 3
    """Partners per view."""
    error_quantile: float = 0.4
    """Quantile of the normalised error above which a pixel is in error."""
    patch: int = 16
    """Patch size (pixels) of the error vote."""
    patch_vote: float = 0.85
    """A patch is in error when more than this fraction of its pixels are."""
    max_zones: int = 8
    """Most zones taken from one view (the largest regions)."""
    min_zone_matches: int = 3
    """Matches a region needs to give a zone."""
    zone_margin: float = 0.1
    """Zones are grown by this fraction of their size on each side."""
    max_reprojection_error: float = 4.0
    """Triangulated matches farther than this (pixels) from their keypoints are outliers."""
    min_triangulation_angle: float = 1.0
    """Matches whose rays meet at a smaller angle (degrees) are not triangulated."""
    zone_grad_factor: float = 0.5
    """Inside zones the gradient threshold is grow_grad2d times this."""
    balance_count: bool = True
    """Prune as many of the least opaque Gaussians as zone densification added."""
    reset_opacity_value: float = 0.01
    """Opacity given to Gaussians in front of a zone."""
    reset_top_ratio: float = 0.7
    """Gaussians in front of a zone are reset when at least as opaque as this top fraction of the
    Gaussians inside it."""
    match_ratio: float = 0.8
    """Lowe's ratio for SIFT matching."""
    seed: int = 0
    """Seed of the view pairing and of the partner drawn at each step."""

    def __post_init__(self) -> None:
        if self.zone_every < 1:
            raise Scene3dError(f"--strategy.zone-every must be at least 1, got {self.zone_every}")
        if not 0 < self.pair_angle <= 180:
            raise Scene3dError(f"--strategy.pair-angle must be in (0, 180] degrees, got {self.pair_angle}")
        if not 0 <= self.error_quantile < 1:
            raise Scene3dError(f"--strategy.error-quantile must be in [0, 1), got {self.error_quantile}")
        if self.patch < 1 or not 0 <= self.patch_vote < 1:
            raise Scene3dError("--strategy.patch must be at least 1 and --strategy.patch-vote in [0, 1)")
        if not 0 < self.zone_grad_factor <= 1:
            raise Scene3dError(f"--strategy.zone-grad-factor must be in (0, 1], got {self.zone_grad_factor}")
        self._cache: dict = {"pairs": None, "features": {}, "matches": {}}  # in memory only
        self._zones: Tensor | None = None  # zones of the current step
        self._extra = 0  # Gaussians densified only because they lie in a zone, this round

    def initialize(self, model) -> None:
        super().initialize(model)
        self.state["zone_counts"] = {}

    # ------------------------------------------------------------------ caches
    def _pairs(self, ds) -> dict[int, list[int]]:
        if self._cache["pairs"] is None:
            self._cache["pairs"] = view_pairs(ds.cameras, list(ds.train_indices), self.pair_angle, self.max_pairs, self.seed)
        return self._cache["pairs"]

    def _features(self, ds, i: int) -> tuple[np.ndarray, np.ndarray]:
        feats = self._cache["features"]
        if i not in feats:
            rgb = ds.image(i).numpy()
            gray = np.clip(rgb @ np.array([0.299, 0.587, 0.114]) * 255 + 0.5, 0, 255).astype(np.uint8)
            feats[i] = sift_features(gray)
        return feats[i]

    def matches(self, ds, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Matched keypoints [M, 2] in view i and view j (cached)."""
        key = (i, j)
        if key not in self._cache["matches"]:
            (k1, d1), (k2, d2) = self._features(ds, i), self._features(ds, j)
            m = match_descriptors(d1, d2, self.match_ratio)
            self._cache["matches"][key] = (k1[m[:, 0]], k2[m[:, 1]])
        return self._cache["matches"][key]

    # ------------------------------------------------------------------ zones
    def zones_from_matches(self, cam_a, cam_b, kp_a: Tensor, kp_b: Tensor, regions: list[tuple[int, int, int, int]]) -> Tensor:
        """[Z, 2, 3] zones: the matches whose keypoint in view a lies in a region, triangulated."""
        zones = []
        if len(kp_a) == 0:
            return torch.zeros(0, 2, 3)
        o_a, d_a = cam_a.generate_rays(0, kp_a)
        o_b, d_b = cam_b.generate_rays(0, kp_b)
        pts, valid = triangulate(o_a.double(), d_a.double(), o_b.double(), d_b.double(), self.min_triangulation_angle)
        for cam, kp in ((cam_a, kp_a), (cam_b, kp_b)):  # wrong matches do not reproject onto their keypoints
            uv, _ = cam.project(pts.float())
            valid &= (uv[0] - kp).norm(dim=-1) < self.max_reprojection_error
        for x0, y0, x1, y1 in regions[: self.max_zones]:
            inside = (kp_a[:, 0] >= x0) & (kp_a[:, 0] < x1) & (kp_a[:, 1] >= y0) & (kp_a[:, 1] < y1) & valid
            if int(inside.sum()) < self.min_zone_matches:
                continue
            p = pts[inside]
            if len(p) >= 20:  # robust extent: the 5-95% range of the points
                lo, hi = torch.quantile(p, 0.05, dim=0), torch.quantile(p, 0.95, dim=0)
            else:
                lo, hi = p.min(0).values, p.max(0).values
            grow = (hi - lo) * self.zone_margin
            zones.append(torch.stack([lo - grow, hi + grow]).float())
        return torch.stack(zones) if zones else torch.zeros(0, 2, 3)

    def find_zones(self, ctx: StepContext) -> Tensor:
        """Zones of the current view of ``ctx`` (empty when it has no partner, regions or matches)."""
        ds = ctx.dataset
        if ds is None or not ctx.camera_indices:
            return torch.zeros(0, 2, 3)
        i = ctx.camera_indices[0]
        partners = self._pairs(ds).get(i, [])
        if not partners:
            return torch.zeros(0, 2, 3)
        j = partners[int(torch.randint(len(partners), (1,), generator=torch.Generator().manual_seed(self.seed * 100_003 + ctx.step)))]
        regions, _ = error_regions(ctx.render.rgb[0], ctx.gt[0], self.error_quantile, self.patch, self.patch_vote)
        if not regions:
            return torch.zeros(0, 2, 3)
        kp_a, kp_b = self.matches(ds, i, j)
        zones = self.zones_from_matches(ds.cameras[i], ds.cameras[j], torch.from_numpy(kp_a), torch.from_numpy(kp_b), regions)
        return zones.to(ctx.model.params["means"].device)

    # ------------------------------------------------------------------ hooks
    def after_backward(self, ctx: StepContext) -> None:
        step = ctx.step
        in_window = self.refine_start < step < self.refine_stop
        refine_now = in_window and step % self.refine_every == 0
        zones_now = in_window and step % self.zone_every == 0
        self._zones = self.find_zones(ctx) if (refine_now or zones_now) else None
        counts = {"zones": 0 if self._zones is None else len(self._zones)}
        super().after_backward(ctx)  # ADC: statistics, the round (using the zones), opacity reset
        if zones_now and self._zones is not None and len(self._zones):
            centre = ctx.cameras.cam_to_world[0, :3, 3].to(self._zones)
            counts["calibrated"] = self.calibrate(ctx.model, centre, self._zones)
        if refine_now or zones_now:
            self.state["zone_counts"] = counts
        self._zones = None

    def refine(self, model, step: int) -> dict[str, int]:
        counts = super().refine(model, step)
        counts["zone_densified"] = self._extra
        self._extra = 0
        return counts

    def densify_candidates(self, model, grads: Tensor) -> Tensor:
        high = grads > self.grow_grad2d
        if self._zones is None or len(self._zones) == 0:
            return high
        in_zone = points_in_boxes(model.params["means"].detach(), self._zones)
        extra = in_zone & (grads > self.grow_grad2d * self.zone_grad_factor) & ~high
        self._extra = int(extra.sum())
        return high | extra

    def prune_candidates(self, model, step: int) -> Tensor:
        prune = super().prune_candidates(model, step)
        if self.balance_count and self._extra:
            o = model.params["opacities"].detach()
            k = min(self._extra, len(o))
            weakest = torch.topk(o, k, largest=False).indices
            prune[weakest] = True
        return prune

    @torch.no_grad()
    def calibrate(self, model, cam_center: Tensor, zones: Tensor) -> int:
        """Lowers the opacity of Gaussians in front of the zones; returns how many."""
        means = model.params["means"].detach()
        op = model.params["opacities"].detach()
        reset = torch.zeros(len(means), dtype=torch.bool, device=means.device)
        for zone in zones:
            in_front, inside = points_in_front(means, cam_center, zone)
            if not inside.any():
                continue
            k = max(1, int(inside.sum() * self.reset_top_ratio))
            threshold = torch.topk(op[inside], k).values[-1]
            reset |= in_front & (op >= threshold)
        idx = reset.nonzero().squeeze(-1)
        if len(idx):
            value = math.log(self.reset_opacity_value / (1 - self.reset_opacity_value))
            ops.set_rows(model.params, model.optimizers, "opacities", idx, torch.minimum(op[idx], torch.full_like(op[idx], value)))
        return len(idx)
