"""Generate scene3d's embedded default scene: a procedural, ray-cast room with a few objects.

The scene is made entirely by this script (numpy + Pillow, fixed seed), so it carries no
third-party content. It writes ``data/default_scene/`` in the nerfstudio layout:

* ``images/frame_00001.jpg`` ... : photographs of the scene from an orbit around its centre,
* ``transforms.json``: shared OPENCV intrinsics (no distortion) and one camera-to-world
  ``transform_matrix`` per frame in the OpenGL/Blender convention (camera x right, y up, looking
  down -z), world z up,
* ``sparse_pc.ply``: a coloured point cloud on the visible surfaces, with a little positional
  noise, standing in for a structure-from-motion cloud.

Geometry: spheres, rotated boxes and vertical cylinders standing on the floor of a closed,
textured room, so every camera ray hits a surface. Textures are procedural (multi-octave value
noise, warped stripes and multi-scale spots, a distinct palette per surface) and never tile.
Shading is view-independent: Lambertian albedo lit by two directional lights with hard shadows,
plus ambient. Pixel (i, j) covers [i, i+1] x [j, j+1] with its centre at (i + 0.5, j + 0.5), the
convention behind ``cx = w / 2``; each pixel averages SUPERSAMPLE x SUPERSAMPLE samples.

Regenerate with ``python scripts/make_default_scene.py`` (about a minute on two cores).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SEED = 20250521
WIDTH, HEIGHT = 400, 300
HFOV_DEG = 60.0
NUM_VIEWS = 44
SUPERSAMPLE = 2
JPEG_QUALITY = 92
NUM_POINTS = 12_000
POINT_NOISE = 0.012  # metres: about 0.5% of the 2.4 m wide group of objects
ROOM_HALF = 6.0  # the room spans [-6, 6] x [-6, 6] metres
ROOM_HEIGHT = 4.5
SCENE_CENTER = np.array([0.0, 0.0, 0.45])
LIGHTS = (  # (direction towards the light, intensity)
    (np.array([0.45, 0.3, 1.0]), 0.62),
    (np.array([-0.7, -0.45, 0.55]), 0.28),
)
AMBIENT = 0.32
EPS = 1e-4
CHUNK = 1 << 18

Array = np.ndarray


# ---------------------------------------------------------------------------------- textures
@dataclass
class Texture:
    """An RGB image in [0, 1] addressed by (u, v) in [0, 1]^2; v = 0 is the top row."""

    pixels: Array
    wrap_u: bool = False

    def sample(self, u: Array, v: Array) -> Array:
        """Bilinearly interpolated colours [N, 3] at texture coordinates u, v [N]."""
        h, w, _ = self.pixels.shape
        x = u * w - 0.5
        if self.wrap_u:
            x0 = np.floor(x)
            fx = x - x0
            x0 = x0.astype(np.int64) % w
            x1 = (x0 + 1) % w
        else:
            x = np.clip(x, 0.0, w - 1.0)
            x0 = np.minimum(np.floor(x).astype(np.int64), w - 2)
            fx = x - x0
            x1 = x0 + 1
        y = np.clip(v * h - 0.5, 0.0, h - 1.0)
        y0 = np.minimum(np.floor(y).astype(np.int64), h - 2)
        fy = (y - y0)[:, None].astype(np.float32)
        fx = fx[:, None].astype(np.float32)
        top = self.pixels[y0, x0] * (1 - fx) + self.pixels[y0, x1] * fx
        bottom = self.pixels[y0 + 1, x0] * (1 - fx) + self.pixels[y0 + 1, x1] * fx
        return top * (1 - fy) + bottom * fy


def value_noise(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int, wrap_x: bool) -> Array:
    """Smooth random field [h, w] in [0, 1] on a lattice of cells_y x cells_x cells."""
    grid = rng.random((cells_y + 1, cells_x if wrap_x else cells_x + 1), dtype=np.float32)
    y = (np.arange(h, dtype=np.float32) + 0.5) * (cells_y / h)
    x = (np.arange(w, dtype=np.float32) + 0.5) * (cells_x / w)
    y0 = np.minimum(np.floor(y).astype(np.int64), cells_y - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), cells_x - 1)
    x1 = (x0 + 1) % cells_x if wrap_x else x0 + 1
    ty, tx = y - y0, x - x0
    sy = (ty * ty * (3 - 2 * ty))[:, None]
    sx = (tx * tx * (3 - 2 * tx))[None, :]
    top = grid[np.ix_(y0, x0)] * (1 - sx) + grid[np.ix_(y0, x1)] * sx
    bottom = grid[np.ix_(y0 + 1, x0)] * (1 - sx) + grid[np.ix_(y0 + 1, x1)] * sx
    return top * (1 - sy) + bottom * sy


def fbm(rng: np.random.Generator, h: int, w: int, base_cells: float, octaves: int, wrap_x: bool, gain: float = 0.55) -> Array:
    """Fractal sum of value-noise octaves [h, w], stretched to [0, 1].

    ``base_cells`` is the number of coarsest lattice cells along the texture's height; the cell
    count doubles (plus a small irregular factor, so octaves never align) at each octave.
    """
    total = np.zeros((h, w), np.float32)
    amplitude, cells = 1.0, base_cells
    for _ in range(octaves):
        cy = max(1, round(cells))
        cx = max(1, round(cells * w / h))
        total += amplitude * (value_noise(rng, h, w, cy, cx, wrap_x) - 0.5)
        amplitude *= gain
        cells *= 2.0 + 0.2 * rng.random()
    lo, hi = np.percentile(total, [1, 99])
    return np.clip((total - lo) / (hi - lo), 0.0, 1.0)


def palette_ramp(t: Array, palette: Array) -> Array:
    """Map values t [h, w] in [0, 1] through a colour ramp palette [K, 3] to colours [h, w, 3]."""
    stops = np.linspace(0.0, 1.0, len(palette))
    return np.stack([np.interp(t, stops, palette[:, c]) for c in range(3)], axis=-1).astype(np.float32)


def hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    """An 8-bit RGB colour from hue, saturation and value in [0, 1]."""
    rgb = Image.new("HSV", (1, 1), (int(h * 255) % 256, int(s * 255), int(v * 255))).convert("RGB").getpixel((0, 0))
    return tuple(rgb)


def draw_spots(rng: np.random.Generator, image: Image.Image, count: int, size_range: tuple[float, float], hue: float, wrap_x: bool) -> None:
    """Draw ``count`` semi-transparent ellipses, boxes and triangles of log-uniform sizes.

    Colours are drawn around ``hue`` with occasional complementary accents; on a texture that
    wraps horizontally every shape is also drawn one texture width to the left and right.
    """
    w, h = image.size
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    lo, hi = (math.log(s * h) for s in size_range)
    for _ in range(count):
        r = math.exp(rng.uniform(lo, hi))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        aspect = rng.uniform(0.5, 2.0)
        rx, ry = r * math.sqrt(aspect), r / math.sqrt(aspect)
        shape_hue = hue + rng.normal(0, 0.08) + (0.5 if rng.random() < 0.25 else 0.0)
        colour = hsv_to_rgb(shape_hue % 1.0, rng.uniform(0.3, 1.0), rng.uniform(0.15, 1.0)) + (int(rng.uniform(150, 255)),)
        kind = rng.integers(3)
        angles = rng.uniform(0, 2 * math.pi) + np.array([0.0, 2.1, 4.2]) + rng.normal(0, 0.2, 3)
        for shift in (-w, 0, w) if wrap_x else (0,):
            x = cx + shift
            if kind == 0:
                draw.ellipse([x - rx, cy - ry, x + rx, cy + ry], fill=colour)
            elif kind == 1:
                draw.rectangle([x - rx, cy - ry, x + rx, cy + ry], fill=colour)
            else:
                draw.polygon([(x + r * math.cos(a), cy + r * math.sin(a)) for a in angles], fill=colour)
    image.alpha_composite(layer)


def warped_stripes(rng: np.random.Generator, h: int, w: int, stripes: float, wrap_x: bool) -> Array:
    """Soft stripes [h, w] in [0, 1], bent by noise so they never repeat.

    They run in a random direction, or horizontally on a texture that wraps in u so that they
    join up across its seam.
    """
    warp = fbm(rng, h, w, 2, 4, wrap_x)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if wrap_x:
        phase = yy / h * stripes
    else:
        angle = rng.uniform(0, math.pi)
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / h * stripes
    return 0.5 + 0.5 * np.sin(2 * math.pi * (phase + 2.5 * warp))


def make_texture(
    rng: np.random.Generator,
    h: int,
    w: int,
    palette: list[tuple[int, int, int]],
    hue: float,
    *,
    cells: float = 3,
    spots: int = 120,
    spot_sizes: tuple[float, float] = (0.004, 0.09),
    stripes: float = 0.0,
    wrap_u: bool = False,
) -> Texture:
    """A rich, non-repeating texture: fbm colour ramp, optional warped stripes, multi-scale spots.

    Args:
        palette: colour ramp (8-bit RGB) that the base noise runs through.
        hue: central hue in [0, 1] of the spots.
        cells: coarsest noise cells along the texture height.
        spots: number of shapes drawn on top.
        spot_sizes: smallest and largest shape radius, as fractions of the texture height.
        stripes: approximate number of stripes across the texture height (0 for none).
        wrap_u: make the texture continuous across its left and right edges (spheres, cylinders).
    """
    ramp = np.asarray(palette, np.float32) / 255.0
    base = palette_ramp(fbm(rng, h, w, cells, 7, wrap_u), ramp)
    if stripes > 0:
        band = warped_stripes(rng, h, w, stripes, wrap_u)[..., None]
        tint = np.asarray(hsv_to_rgb((hue + 0.5) % 1.0, 0.6, 0.9), np.float32) / 255.0
        base = base * (1 - 0.55 * band) + tint * 0.55 * band
    image = Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)).convert("RGBA")
    draw_spots(rng, image, spots, spot_sizes, hue, wrap_u)
    pixels = np.asarray(image.convert("RGB"), np.float32) / 255.0
    shade = 0.78 + 0.35 * fbm(rng, h, w, cells * 6, 5, wrap_u)
    return Texture(np.clip(pixels * shade[..., None], 0.0, 1.0).astype(np.float32), wrap_u)


# -------------------------------------------------------------------------------- primitives
def solve_nearest(b: Array, c: Array) -> Array:
    """Smallest root t > EPS of t^2 + 2 b t + c = 0 per ray, inf where there is none."""
    disc = b * b - c
    root = np.sqrt(np.maximum(disc, 0.0))
    near, far = -b - root, -b + root
    t = np.where(near > EPS, near, np.where(far > EPS, far, np.inf))
    return np.where(disc >= 0, t, np.inf)


def rotation_z(angle: float) -> Array:
    """3x3 rotation by ``angle`` radians about the world z axis."""
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


@dataclass
class Sphere:
    """A textured sphere (poles along world z)."""

    center: Array
    radius: float
    texture: Texture

    def intersect(self, o: Array, d: Array) -> Array:
        """Ray parameter of the first hit [N] (inf for a miss) of rays o + t d with unit d."""
        oc = o - self.center
        return solve_nearest(np.einsum("ij,ij->i", oc, d), np.einsum("ij,ij->i", oc, oc) - self.radius**2)

    def bounds(self) -> tuple[Array, float]:
        """Centre and radius of a sphere enclosing the primitive."""
        return self.center, self.radius

    def normal(self, p: Array) -> Array:
        """Outward unit normals [N, 3] at surface points p."""
        return (p - self.center) / self.radius

    def albedo(self, p: Array) -> Array:
        """Surface colours [N, 3] at surface points p (equirectangular mapping)."""
        n = self.normal(p)
        u = np.arctan2(n[:, 1], n[:, 0]) / (2 * math.pi) + 0.5
        v = np.arccos(np.clip(n[:, 2], -1.0, 1.0)) / math.pi
        return self.texture.sample(u, v)


@dataclass
class Box:
    """A box standing on the floor, rotated about z; one texture per face."""

    center_xy: Array
    half: Array
    angle: float
    textures: list[Texture]
    rot: Array = field(init=False)
    center: Array = field(init=False)

    def __post_init__(self) -> None:
        self.rot = rotation_z(self.angle)
        self.center = np.array([self.center_xy[0], self.center_xy[1], self.half[2]])

    def _local(self, p: Array) -> Array:
        return (p - self.center) @ self.rot

    def bounds(self) -> tuple[Array, float]:
        """Centre and radius of a sphere enclosing the primitive."""
        return self.center, float(np.linalg.norm(self.half))

    def intersect(self, o: Array, d: Array) -> Array:
        """Ray parameter of the first hit [N] (inf for a miss), by the slab method."""
        ol, dl = self._local(o), d @ self.rot
        dl = np.where(np.abs(dl) < 1e-12, 1e-12, dl)
        t1, t2 = (-self.half - ol) / dl, (self.half - ol) / dl
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        near = np.maximum(np.maximum(lo[:, 0], lo[:, 1]), lo[:, 2])
        far = np.minimum(np.minimum(hi[:, 0], hi[:, 1]), hi[:, 2])
        t = np.where(near > EPS, near, far)
        return np.where((near <= far) & (far > EPS), t, np.inf)

    def _faces(self, p: Array) -> tuple[Array, Array, Array]:
        """Local points, face axis (0, 1, 2) and face sign (+1 / -1) of surface points p."""
        pl = self._local(p)
        scaled = pl / self.half
        axis = np.abs(scaled).argmax(axis=1)
        sign = np.sign(scaled[np.arange(len(p)), axis])
        return pl, axis, sign

    def normal(self, p: Array) -> Array:
        """Outward unit normals [N, 3] at surface points p."""
        _, axis, sign = self._faces(p)
        nl = np.zeros_like(p)
        nl[np.arange(len(p)), axis] = sign
        return nl @ self.rot.T

    def albedo(self, p: Array) -> Array:
        """Surface colours [N, 3]: each of the six faces has its own planar texture."""
        pl, axis, sign = self._faces(p)
        q = pl / self.half * 0.5 + 0.5
        out = np.zeros_like(p, dtype=np.float32)
        for face in range(6):
            a, s = face // 2, 1.0 if face % 2 == 0 else -1.0
            m = (axis == a) & (sign == s)
            if not m.any():
                continue
            if a == 2:  # top (or bottom) face
                u, v = q[m, 0], q[m, 1]
            else:  # side face: u along the face, v down from the top
                u, v = q[m, 1 - a], 1.0 - q[m, 2]
            out[m] = self.textures[face].sample(u, v)
        return out


@dataclass
class Cylinder:
    """A vertical cylinder standing on the floor, with a textured side and top cap."""

    center_xy: Array
    radius: float
    height: float
    side: Texture
    cap: Texture

    def intersect(self, o: Array, d: Array) -> Array:
        """Ray parameter of the first hit [N] (inf for a miss) on the side or the top cap."""
        oxy = o[:, :2] - self.center_xy
        dxy = d[:, :2]
        a = np.maximum(np.einsum("ij,ij->i", dxy, dxy), 1e-12)
        t_side = solve_nearest(np.einsum("ij,ij->i", oxy, dxy) / a, (np.einsum("ij,ij->i", oxy, oxy) - self.radius**2) / a)
        z = o[:, 2] + t_side * d[:, 2]
        t_side = np.where((z >= 0) & (z <= self.height), t_side, np.inf)
        dz = np.where(np.abs(d[:, 2]) < 1e-12, 1e-12, d[:, 2])
        t_cap = (self.height - o[:, 2]) / dz
        rim = oxy + t_cap[:, None] * dxy
        t_cap = np.where((t_cap > EPS) & (np.einsum("ij,ij->i", rim, rim) <= self.radius**2), t_cap, np.inf)
        return np.minimum(t_side, t_cap)

    def bounds(self) -> tuple[Array, float]:
        """Centre and radius of a sphere enclosing the primitive."""
        center = np.array([self.center_xy[0], self.center_xy[1], self.height / 2])
        return center, math.hypot(self.radius, self.height / 2)

    def _on_cap(self, p: Array) -> Array:
        radial = np.linalg.norm(p[:, :2] - self.center_xy, axis=1)
        return np.abs(p[:, 2] - self.height) < np.abs(radial - self.radius)

    def normal(self, p: Array) -> Array:
        """Outward unit normals [N, 3] at surface points p."""
        n = np.zeros_like(p)
        n[:, :2] = (p[:, :2] - self.center_xy) / self.radius
        return np.where(self._on_cap(p)[:, None], np.array([0.0, 0.0, 1.0]), n)

    def albedo(self, p: Array) -> Array:
        """Surface colours [N, 3]: cylindrical mapping on the side, planar on the cap."""
        rel = p[:, :2] - self.center_xy
        side_colour = self.side.sample(np.arctan2(rel[:, 1], rel[:, 0]) / (2 * math.pi) + 0.5, 1.0 - p[:, 2] / self.height)
        cap_colour = self.cap.sample(rel[:, 0] / (2 * self.radius) + 0.5, rel[:, 1] / (2 * self.radius) + 0.5)
        return np.where(self._on_cap(p)[:, None], cap_colour, side_colour)


@dataclass
class Room:
    """The inside of the box [-half, half]^2 x [0, height]: floor, four walls and a ceiling.

    Textures are ordered floor, ceiling, wall x = -half, wall x = +half, wall y = -half,
    wall y = +half.
    """

    half: float
    height: float
    textures: list[Texture]

    def bounds(self) -> None:
        """The room encloses everything, so it has no useful bounding sphere."""
        return None

    def _bounds(self) -> tuple[Array, Array]:
        return np.array([-self.half, -self.half, 0.0]), np.array([self.half, self.half, self.height])

    def intersect(self, o: Array, d: Array) -> Array:
        """Ray parameter where rays starting inside the room leave it [N]."""
        lo, hi = self._bounds()
        dd = np.where(np.abs(d) < 1e-12, 1e-12, d)
        t = np.where(dd > 0, (hi - o) / dd, (lo - o) / dd)
        return np.minimum(np.minimum(t[:, 0], t[:, 1]), t[:, 2])

    def _face(self, p: Array) -> Array:
        """Face index 0..5 (see the class docstring) nearest to each surface point."""
        lo, hi = self._bounds()
        dist = np.stack([p[:, 2] - lo[2], hi[2] - p[:, 2], p[:, 0] - lo[0], hi[0] - p[:, 0], p[:, 1] - lo[1], hi[1] - p[:, 1]], axis=1)
        return np.abs(dist).argmin(axis=1)

    def normal(self, p: Array) -> Array:
        """Inward unit normals [N, 3] at surface points p."""
        inward = np.array([[0, 0, 1], [0, 0, -1], [1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0]], dtype=np.float64)
        return inward[self._face(p)]

    def albedo(self, p: Array) -> Array:
        """Surface colours [N, 3] with planar mapping per face."""
        face = self._face(p)
        s = (p[:, :2] + self.half) / (2 * self.half)
        down = 1.0 - p[:, 2] / self.height
        coords = [(s[:, 0], s[:, 1]), (s[:, 0], s[:, 1]), (s[:, 1], down), (1 - s[:, 1], down), (1 - s[:, 0], down), (s[:, 0], down)]
        out = np.zeros_like(p, dtype=np.float32)
        for k, (u, v) in enumerate(coords):
            m = face == k
            if m.any():
                out[m] = self.textures[k].sample(u[m], v[m])
        return out


Primitive = Sphere | Box | Cylinder | Room


# ------------------------------------------------------------------------------------ scene
PALETTES: dict[str, list[tuple[int, int, int]]] = {
    "ember": [(120, 20, 20), (230, 90, 40), (250, 210, 120)],
    "sky": [(20, 40, 110), (60, 140, 220), (210, 235, 250)],
    "leaf": [(40, 90, 20), (150, 200, 60), (250, 250, 190)],
    "plum": [(70, 30, 90), (170, 90, 200), (240, 200, 240)],
    "gold": [(90, 70, 10), (210, 170, 40), (255, 240, 170)],
    "teal": [(10, 80, 80), (40, 170, 160), (200, 250, 230)],
    "teal_cap": [(10, 80, 80), (220, 120, 80)],
    "rose": [(100, 20, 60), (220, 80, 140), (250, 220, 230)],
    "rose_cap": [(100, 20, 60), (250, 200, 220)],
    "stone": [(60, 55, 50), (140, 120, 100), (200, 190, 170), (110, 100, 90)],
    "plaster": [(180, 180, 170), (230, 225, 210)],
    "slate": [(40, 70, 90), (120, 160, 170), (220, 230, 220)],
    "clay": [(110, 60, 30), (200, 140, 80), (245, 220, 180)],
    "moss": [(50, 80, 40), (130, 170, 90), (230, 240, 200)],
    "heather": [(80, 50, 90), (160, 120, 170), (240, 220, 240)],
}


def build_objects(rng: np.random.Generator) -> list[Primitive]:
    """Three spheres, two boxes and two cylinders on the floor, each with its own palette."""
    p = PALETTES
    return [
        Sphere(np.array([0.55, -0.35, 0.5]), 0.5, make_texture(rng, 512, 1024, p["ember"], 0.05, cells=3, spots=260, stripes=5, wrap_u=True)),
        Sphere(np.array([-0.75, 0.75, 0.28]), 0.28, make_texture(rng, 256, 512, p["sky"], 0.6, cells=2, spots=140, wrap_u=True)),
        Sphere(np.array([0.25, 0.95, 0.2]), 0.2, make_texture(rng, 256, 512, p["leaf"], 0.25, cells=2, spots=120, wrap_u=True)),
        Box(
            np.array([-0.55, -0.3]),
            np.array([0.3, 0.4, 0.45]),
            0.45,
            [make_texture(rng, 384, 384, p["plum"], 0.8, cells=2, spots=90, stripes=3 if face == 4 else 0.0) for face in range(6)],
        ),
        Box(np.array([0.9, 0.55]), np.array([0.22, 0.22, 0.15]), -0.3, [make_texture(rng, 256, 256, p["gold"], 0.13, cells=2, spots=60) for _ in range(6)]),
        Cylinder(
            np.array([-0.15, 0.25]),
            0.22,
            1.1,
            make_texture(rng, 512, 512, p["teal"], 0.45, cells=3, spots=180, stripes=7, wrap_u=True),
            make_texture(rng, 256, 256, p["teal_cap"], 0.45, cells=2, spots=40),
        ),
        Cylinder(
            np.array([0.2, -1.1]),
            0.16,
            0.6,
            make_texture(rng, 384, 384, p["rose"], 0.92, cells=2, spots=120, stripes=4, wrap_u=True),
            make_texture(rng, 128, 128, p["rose_cap"], 0.92, cells=2, spots=20),
        ),
    ]


def build_room(rng: np.random.Generator) -> Room:
    """The room: a stone floor, a plaster ceiling and four differently coloured walls."""
    p = PALETTES
    wall_spots = {"cells": 3, "spots": 1500, "spot_sizes": (0.004, 0.07)}
    textures = [
        make_texture(rng, 2048, 2048, p["stone"], 0.08, cells=6, spots=2500, spot_sizes=(0.002, 0.035)),
        make_texture(rng, 768, 768, p["plaster"], 0.55, cells=3, spots=400, spot_sizes=(0.004, 0.05)),
        make_texture(rng, 768, 2048, p["slate"], 0.55, stripes=9, **wall_spots),
        make_texture(rng, 768, 2048, p["clay"], 0.07, **wall_spots),
        make_texture(rng, 768, 2048, p["moss"], 0.3, stripes=6, **wall_spots),
        make_texture(rng, 768, 2048, p["heather"], 0.75, **wall_spots),
    ]
    return Room(ROOM_HALF, ROOM_HEIGHT, textures)


def build_scene(rng: np.random.Generator) -> list[Primitive]:
    """The objects followed by the room that encloses them (``shade`` relies on that order)."""
    objects = build_objects(rng)
    return objects + [build_room(rng)]


def hits_sphere(o: Array, d: Array, center: Array, radius: float) -> Array:
    """Indices of the rays o + t d (t > 0) that meet the sphere (center, radius)."""
    oc = o - center
    b = np.einsum("ij,ij->i", oc, d)
    c = np.einsum("ij,ij->i", oc, oc) - radius**2
    return np.flatnonzero((b * b >= c) & ((b < 0) | (c < 0)))


def trace(scene: list[Primitive], o: Array, d: Array) -> tuple[Array, Array]:
    """Nearest hit distance [N] and primitive index [N] (-1 for none) of rays o + t d.

    Each primitive with a bounding sphere is only intersected with the rays that meet it.
    """
    best = np.full(len(o), np.inf)
    index = np.full(len(o), -1)
    for k, prim in enumerate(scene):
        bounds = prim.bounds()
        rays = np.arange(len(o)) if bounds is None else hits_sphere(o, d, *bounds)
        t = prim.intersect(o[rays], d[rays])
        closer = t < best[rays]
        best[rays[closer]] = t[closer]
        index[rays[closer]] = k
    return best, index


def shade(scene: list[Primitive], p: Array, index: Array) -> Array:
    """View-independent colour [N, 3] of surface points p on primitives ``index``.

    Lambertian albedo times (ambient + directional lights), each light blocked by the objects
    (the room itself casts no shadows, as if the lights were inside it).
    """
    normal = np.zeros_like(p)
    albedo = np.zeros_like(p, dtype=np.float32)
    for k, prim in enumerate(scene):
        m = index == k
        if m.any():
            normal[m] = prim.normal(p[m])
            albedo[m] = prim.albedo(p[m])
    light = np.full(len(p), AMBIENT)
    objects = scene[:-1]
    for direction, intensity in LIGHTS:
        ld = direction / np.linalg.norm(direction)
        cosine = normal @ ld
        lit = cosine > 0
        blocked, _ = trace(objects, p[lit] + normal[lit] * 1e-3, np.broadcast_to(ld, (int(lit.sum()), 3)))
        visible = np.zeros(len(p), bool)
        visible[np.flatnonzero(lit)[np.isinf(blocked)]] = True
        light += intensity * np.where(visible, cosine, 0.0)
    return np.clip(albedo * light[:, None].astype(np.float32), 0.0, 1.0)


# ---------------------------------------------------------------------------------- cameras
def focal_length() -> float:
    """Focal length in pixels for the horizontal field of view HFOV_DEG."""
    return 0.5 * WIDTH / math.tan(math.radians(HFOV_DEG) / 2)


def look_at(eye: Array, target: Array) -> Array:
    """4x4 camera-to-world matrix (OpenGL: x right, y up, looking down -z) with world z up."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, up, -forward], axis=1)
    c2w[:3, 3] = eye
    return c2w


def make_cameras(rng: np.random.Generator) -> list[Array]:
    """NUM_VIEWS camera-to-world matrices on a wavy orbit around SCENE_CENTER.

    Azimuth advances by about 360 / NUM_VIEWS degrees per view; height swings between about
    0.55 m and 2.25 m three times per turn and distance between about 2.7 m and 3.9 m twice,
    and each camera looks at a slightly jittered point near the centre.
    """
    poses = []
    for k in range(NUM_VIEWS):
        theta = 2 * math.pi * k / NUM_VIEWS + rng.normal(0, 0.02)
        radius = 3.3 + 0.6 * math.cos(2 * theta + 1.0)
        height = 1.4 + 0.85 * math.sin(3 * theta + 0.4)
        eye = np.array([radius * math.cos(theta), radius * math.sin(theta), height])
        poses.append(look_at(eye, SCENE_CENTER + rng.normal(0, 0.08, 3)))
    return poses


def pixel_rays(c2w: Array, u: Array, v: Array) -> tuple[Array, Array]:
    """World ray origins and unit directions [N, 3] through pixel coordinates (u, v).

    (u, v) are continuous pixel coordinates with the centre of the top-left pixel at (0.5, 0.5).
    """
    f = focal_length()
    d_cam = np.stack([(u - WIDTH / 2) / f, -(v - HEIGHT / 2) / f, -np.ones_like(u)], axis=1)
    d = d_cam @ c2w[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return np.broadcast_to(c2w[:3, 3], d.shape), d


def render(scene: list[Primitive], c2w: Array) -> Array:
    """An 8-bit RGB image [HEIGHT, WIDTH, 3], SUPERSAMPLE^2 samples per pixel."""
    offsets = (np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE
    jj, ii, sy, sx = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), offsets, offsets, indexing="ij")
    u, v = (ii + sx).ravel(), (jj + sy).ravel()
    colour = np.empty((len(u), 3), np.float32)
    for start in range(0, len(u), CHUNK):
        s = slice(start, start + CHUNK)
        o, d = pixel_rays(c2w, u[s], v[s])
        t, index = trace(scene, o, d)
        if not np.isfinite(t).all():
            raise RuntimeError("a camera ray escaped the room")
        colour[s] = shade(scene, o + t[:, None] * d, index)
    image = colour.reshape(HEIGHT, WIDTH, SUPERSAMPLE * SUPERSAMPLE, 3).mean(axis=2)
    return (image * 255 + 0.5).astype(np.uint8)


_WORKER_SCENE: list[Primitive] = []


def _init_worker(scene: list[Primitive]) -> None:
    """Give a rendering worker process its copy of the scene."""
    _WORKER_SCENE[:] = scene


def _render_in_worker(c2w: Array) -> Array:
    """Render one view with the worker's scene."""
    return render(_WORKER_SCENE, c2w)


def render_all(scene: list[Primitive], poses: list[Array], workers: int) -> list[Array]:
    """Render every view, in ``workers`` processes when that is more than one."""
    if workers <= 1:
        return [render(scene, c2w) for c2w in poses]
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(scene,)) as pool:
        return pool.map(_render_in_worker, poses, chunksize=1)


def sample_points(scene: list[Primitive], poses: list[Array], rng: np.random.Generator) -> tuple[Array, Array]:
    """NUM_POINTS surface points seen by the cameras, with colours, plus POINT_NOISE jitter."""
    per_view = -(-NUM_POINTS // len(poses))
    points, colours = [], []
    for c2w in poses:
        u, v = rng.uniform(0, WIDTH, per_view), rng.uniform(0, HEIGHT, per_view)
        o, d = pixel_rays(c2w, u, v)
        t, index = trace(scene, o, d)
        p = o + t[:, None] * d
        points.append(p)
        colours.append(shade(scene, p, index))
    xyz = np.concatenate(points)[:NUM_POINTS]
    rgb = np.concatenate(colours)[:NUM_POINTS]
    xyz = xyz + rng.normal(0, POINT_NOISE, xyz.shape)
    return xyz.astype(np.float32), (rgb * 255 + 0.5).astype(np.uint8)


# ----------------------------------------------------------------------------------- output
def write_ply(path: Path, xyz: Array, rgb: Array) -> None:
    """Binary little-endian PLY with float x, y, z and uchar red, green, blue per vertex."""
    vertex = np.empty(len(xyz), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    for k, name in enumerate("xyz"):
        vertex[name] = xyz[:, k]
    for k, name in enumerate(("red", "green", "blue")):
        vertex[name] = rgb[:, k]
    header = (
        "ply\nformat binary_little_endian 1.0\n"
        f"element vertex {len(xyz)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n"
    )
    with path.open("wb") as fh:
        fh.write(header.encode("ascii"))
        fh.write(vertex.tobytes())


def write_transforms(path: Path, poses: list[Array], names: list[str]) -> None:
    """nerfstudio transforms.json with shared OPENCV intrinsics and OpenGL camera-to-world poses."""
    f = focal_length()
    data = {
        "camera_model": "OPENCV",
        "fl_x": f,
        "fl_y": f,
        "cx": WIDTH / 2,
        "cy": HEIGHT / 2,
        "w": WIDTH,
        "h": HEIGHT,
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "ply_file_path": "sparse_pc.ply",
        "frames": [{"file_path": name, "transform_matrix": [[round(float(x), 10) for x in row] for row in c2w]} for name, c2w in zip(names, poses)],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def generate(out_dir: Path, workers: int) -> None:
    """Build the scene and write images, transforms.json and sparse_pc.ply under ``out_dir``."""
    rng = np.random.default_rng(SEED)
    scene = build_scene(rng)
    poses = make_cameras(rng)
    images = render_all(scene, poses, workers)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "images").mkdir(parents=True)
    names = [f"images/frame_{k:05d}.jpg" for k in range(1, len(poses) + 1)]
    for name, image in zip(names, images):
        Image.fromarray(image).save(out_dir / name, quality=JPEG_QUALITY)
    write_transforms(out_dir / "transforms.json", poses, names)
    write_ply(out_dir / "sparse_pc.ply", *sample_points(scene, poses, rng))


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parent.parent / "data" / "default_scene"
    parser.add_argument("--out", type=Path, default=default, help=f"output folder (default: {default})")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes (default: one per CPU core)")
    args = parser.parse_args()
    start = time.perf_counter()
    generate(args.out, args.workers)
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
