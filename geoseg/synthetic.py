"""A generated, georeferenced orthophoto scene with ground truth: the project's own sample data.

Why generate: the demo and the tests need an orthophoto that is georeferenced, has dense
ground truth, is free to redistribute and takes no download. The scene is drawn as vector
geometry in pixel space (shapely), burnt in with ``rasterio.features.rasterize`` layer by
layer, then coloured with per-object colours, multi-scale noise texture, gable-roof
shading, cast shadows and a slight sensor blur, so that neither colour nor texture alone
is a perfect classifier (as in real imagery).

Classes (ids are those of the ``synthetic`` dataset in :mod:`geoseg.datasets`): road,
building, tree, grass, car, water. Shadows darken what lies under them but do not change
its class, as in the ISPRS ground truth.

Everything is a pure function of ``seed`` and the size: the same call writes the same
pixels.

A second family, :func:`generate_colour_object`, is the colour-versus-object scene of
Bishop (2020, CIRS, section 5.1.1): many small images of one sky (a strong vertical
gradient from deep blue to near white, with cloud texture) occluded by fruits of three
kinds (lemon, apple, blueberry), each rotated and placed at random. Colour varies more
inside the sky class than between some classes, so raw-pixel clustering splits the sky
and merges fruits; a method that finds objects should not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.features import rasterize
from scipy import ndimage
from shapely import affinity
from shapely.geometry import LineString, Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from geoseg.datasets import COLOUR_OBJECT, IGNORE, SYNTHETIC
from geoseg.errors import ConfigError
from geoseg.io.fileio import atomic_path, write_json_atomic
from geoseg.io.preview import colourize, save_png

__all__ = [
    "APPLE",
    "BANDS",
    "BLUEBERRY",
    "BUILDING",
    "CAR",
    "GRASS",
    "LEMON",
    "ROAD",
    "SKY",
    "TREE",
    "WATER",
    "ColourObjectFiles",
    "SceneFiles",
    "class_shares",
    "colour_object_image",
    "generate_colour_object",
    "generate_scene",
]

ROAD, BUILDING, TREE, GRASS, CAR, WATER = range(6)
BANDS = {"rgb": ("red", "green", "blue"), "rgbn": ("red", "green", "blue", "nir")}

# Base reflectance per class as (R, G, B, NIR) in 0..255.
_GRASS = (96, 126, 62, 175)
_DRY_GRASS = (150, 146, 92, 140)
_TREE = (44, 78, 40, 195)
_WATER = (38, 66, 82, 14)
_ROAD = (92, 92, 97, 58)
_MARKING = (225, 225, 220, 120)
_ROOFS = (
    (168, 78, 56, 95),  # terracotta
    (72, 72, 78, 60),  # dark grey
    (172, 170, 164, 130),  # light grey concrete
    (122, 86, 62, 85),  # brown
    (86, 96, 112, 70),  # slate
    (92, 132, 116, 100),  # copper green
    (205, 204, 198, 160),  # white flat roof
)
_CARS = (
    (230, 230, 232, 170),
    (28, 28, 32, 30),
    (160, 162, 168, 120),
    (170, 30, 30, 70),
    (30, 60, 150, 60),
    (210, 190, 60, 130),
)
_SUN = (-0.55, -0.45)  # sun from the north-west: shadows fall south-east (pixel dx, dy per m height)


@dataclass(frozen=True)
class SceneFiles:
    """What :func:`generate_scene` wrote."""

    image: Path  # GeoTIFF orthophoto, uint8, RGB(+NIR)
    labels: Path  # GeoTIFF class ids, uint8, 255 = nodata, colour table, same grid
    classes: Path  # JSON class table (id, name, colour)
    preview: Path  # PNG: image | labels side by side
    crs: CRS
    transform: Affine
    size: int


@dataclass
class _Layout:
    """The scene's vector geometry in pixel coordinates."""

    water: BaseGeometry
    roads: list[tuple[LineString, float]]  # centre line, width (px)
    buildings: list[tuple[Polygon, int, float, float]]  # footprint, roof, height (m), ridge angle
    trees: list[tuple[Point, float, float]]  # centre, radius (px), height (m)
    cars: list[tuple[Polygon, int]]  # footprint, colour index


def generate_scene(
    out_dir: str | Path,
    size: int = 1024,
    seed: int = 0,
    crs: str = "EPSG:32633",
    resolution: float = 0.25,
    origin: tuple[float, float] = (399_000.0, 5_660_000.0),
    bands: str = "rgb",
    name: str = "scene",
) -> SceneFiles:
    """Write a synthetic orthophoto, its aligned ground truth, a class table and a preview.

    Args:
        out_dir: folder for ``<name>.tif``, ``<name>_labels.tif``, ``<name>_classes.json``,
            ``<name>_preview.png``.
        size: width and height in pixels (64..8192).
        seed: every random choice derives from it.
        crs: a projected CRS with metre units (the object sizes are metric).
        resolution: ground sample distance in metres (0.05..2).
        origin: map coordinates of the top-left corner.
        bands: ``"rgb"`` or ``"rgbn"`` (adds a near-infrared band).
        name: file stem.
    """
    if not 64 <= size <= 8192:
        raise ConfigError(f"size must be in [64, 8192], got {size}")
    if not 0.05 <= resolution <= 2.0:
        raise ConfigError(f"resolution must be in [0.05, 2] m, got {resolution}")
    if bands not in BANDS:
        raise ConfigError(f"bands must be one of {sorted(BANDS)}, got {bands!r}")
    crs_obj = CRS.from_user_input(crs)
    if not crs_obj.is_projected:
        raise ConfigError(f"crs must be projected (metric), got {crs}")
    transform = Affine.translation(*origin) @ Affine.scale(resolution, -resolution)

    rng = np.random.default_rng(seed)
    layout = _layout(rng, size, 1.0 / resolution)
    labels, roof_id, car_id, marking, shadow = _burn(layout, size, 1.0 / resolution)
    image = _paint(rng, labels, roof_id, car_id, marking, shadow, layout, len(BANDS[bands]))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = SceneFiles(
        image=out / f"{name}.tif",
        labels=out / f"{name}_labels.tif",
        classes=out / f"{name}_classes.json",
        preview=out / f"{name}_preview.png",
        crs=crs_obj,
        transform=transform,
        size=size,
    )
    _write_image(files.image, image, crs_obj, transform, BANDS[bands])
    _write_labels(files.labels, labels, crs_obj, transform)
    write_json_atomic(
        files.classes,
        {
            "dataset": SYNTHETIC.name,
            "classes": [
                {"id": i, "name": n, "colour": list(c)}
                for i, (n, c) in enumerate(zip(SYNTHETIC.classes, SYNTHETIC.colours, strict=True))
            ],
            "nodata": IGNORE,
            "seed": seed,
        },
    )
    rgb = image[:3].transpose(1, 2, 0)
    save_png(np.concatenate([rgb, colourize(labels, SYNTHETIC.colours)], axis=1), files.preview)
    return files


def class_shares(labels: np.ndarray) -> dict[str, float]:
    """Fraction of pixels per synthetic class (for checks and the README)."""
    counts = np.bincount(labels.ravel(), minlength=256)[: SYNTHETIC.num_classes]
    return {n: float(c) / labels.size for n, c in zip(SYNTHETIC.classes, counts, strict=True)}


# --- layout --------------------------------------------------------------------------------


def _layout(rng: np.random.Generator, size: int, ppm: float) -> _Layout:
    """Place water, roads, buildings, trees and cars (pixel coordinates, ``ppm`` px per metre)."""
    frame = box(0, 0, size, size)
    # A meandering river across the lower part of the scene.
    xs = np.linspace(-0.1 * size, 1.1 * size, 60)
    phase = rng.uniform(0, 2 * math.pi)
    ys = size * (0.82 + 0.05 * np.sin(xs / size * 2 * math.pi * rng.uniform(0.8, 1.5) + phase))
    river_width = min(rng.uniform(14, 22) * ppm, 0.12 * size)
    water = LineString(np.column_stack([xs, ys])).buffer(river_width / 2).intersection(frame)

    roads: list[tuple[LineString, float]] = []
    n_h = n_v = max(1, round(size / ppm / 120))  # a street every ~120 m
    for i in range(n_h):
        y = size * (i + 0.5) / (n_h + 0.4) + rng.uniform(-0.06, 0.06) * size
        tilt = rng.uniform(-0.06, 0.06) * size
        roads.append((LineString([(-10, y - tilt), (size + 10, y + tilt)]), rng.uniform(6, 8) * ppm))
    for i in range(n_v):
        x = size * (i + 0.5) / n_v + rng.uniform(-0.08, 0.08) * size
        tilt = rng.uniform(-0.06, 0.06) * size
        roads.append((LineString([(x - tilt, -10), (x + tilt, size + 10)]), rng.uniform(5, 7) * ppm))
    road_area = unary_union([line.buffer(w / 2, cap_style="flat") for line, w in roads]).intersection(frame)

    buildings = _place_buildings(rng, size, ppm, road_area, water, frame)
    built = unary_union([b for b, *_ in buildings]) if buildings else Polygon()
    trees = _place_trees(rng, size, ppm, road_area, water, built)
    cars = _place_cars(rng, ppm, roads, water, frame)
    return _Layout(water=water, roads=roads, buildings=buildings, trees=trees, cars=cars)


def _place_buildings(
    rng: np.random.Generator,
    size: int,
    ppm: float,
    road_area: BaseGeometry,
    water: BaseGeometry,
    frame: BaseGeometry,
) -> list[tuple[Polygon, int, float, float]]:
    """Rectangles and L-shapes, kept off roads and water, aligned to a common street grid."""
    blocked = unary_union([road_area.buffer(3 * ppm), water.buffer(4 * ppm)])
    placed: list[Polygon] = []
    out: list[tuple[Polygon, int, float, float]] = []
    target = 0.2 * size * size
    area = 0.0
    largest = min(24 * ppm, size / 5)
    for _ in range(200 + int(size * size / 2500)):
        if area >= target:
            break
        cx, cy = rng.uniform(0, size, 2)
        w, h = rng.uniform(min(8 * ppm, largest / 2), largest, 2)
        footprint: Polygon = box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if rng.random() < 0.3:  # an L-shaped house: a wing on one corner
            ww, wh = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.6, 1.0)
            footprint = unary_union([footprint, box(cx + w / 2 - ww, cy, cx + w / 2, cy + h / 2 + wh)])
        angle = float(rng.uniform(-8, 8))
        footprint = affinity.rotate(footprint, angle, origin=(cx, cy))
        if not frame.contains(footprint) or footprint.intersects(blocked):
            continue
        if any(footprint.distance(p) < 3 * ppm for p in placed):
            continue
        placed.append(footprint)
        ridge = angle if w >= h else angle + 90
        out.append((footprint, int(rng.integers(len(_ROOFS))), float(rng.uniform(5, 16)), ridge))
        area += footprint.area
    return out


def _place_trees(
    rng: np.random.Generator,
    size: int,
    ppm: float,
    road_area: BaseGeometry,
    water: BaseGeometry,
    built: BaseGeometry,
) -> list[tuple[Point, float, float]]:
    """Crowns in a few parks (clusters) and along the roads."""
    blocked = unary_union([road_area, water, built.buffer(1 * ppm)])
    trees: list[tuple[Point, float, float]] = []
    centres = rng.uniform(0.1 * size, 0.9 * size, (max(2, size // 160), 2))
    candidates: list[np.ndarray] = []
    for cx, cy in centres:
        n = int(rng.integers(40, 90))
        spread = rng.uniform(10, 22) * ppm
        candidates.extend(np.column_stack([rng.normal(cx, spread, n), rng.normal(cy, spread, n)]))
    boundary = road_area.boundary
    for _ in range(int(size * 0.15)):  # street trees
        p = boundary.interpolate(rng.uniform(0, boundary.length))
        candidates.append(np.array([p.x + rng.normal(0, 3 * ppm), p.y + rng.normal(0, 3 * ppm)]))
    for x, y in candidates:
        radius = rng.uniform(2, 5) * ppm
        crown = Point(x, y).buffer(radius, quad_segs=8)
        if not (0 <= x < size and 0 <= y < size) or crown.intersects(blocked):
            continue
        trees.append((Point(x, y), float(radius), float(rng.uniform(6, 18))))
    return trees


def _place_cars(
    rng: np.random.Generator,
    ppm: float,
    roads: list[tuple[LineString, float]],
    water: BaseGeometry,
    frame: BaseGeometry,
) -> list[tuple[Polygon, int]]:
    """Cars in both lanes, oriented along their road, not overlapping each other."""
    cars: list[tuple[Polygon, int]] = []
    placed: list[Polygon] = []
    for line, width in roads:
        (x0, y0), (x1, y1) = line.coords[0], line.coords[-1]
        angle = math.degrees(math.atan2(y1 - y0, x1 - x0))
        nx, ny = -(y1 - y0) / line.length, (x1 - x0) / line.length
        for _ in range(int(line.length / (9 * ppm) * 0.35)):
            p = line.interpolate(rng.uniform(0, line.length))
            lane = width / 4 * (1 if rng.random() < 0.5 else -1)
            cx, cy = p.x + nx * lane, p.y + ny * lane
            car = affinity.rotate(
                box(cx - 2.3 * ppm, cy - 0.95 * ppm, cx + 2.3 * ppm, cy + 0.95 * ppm), angle, origin=(cx, cy)
            )
            if not frame.contains(car) or car.intersects(water):
                continue
            if any(car.distance(c) < 1.0 * ppm for c in placed):
                continue
            placed.append(car)
            cars.append((car, int(rng.integers(len(_CARS)))))
    return cars


# --- rasterising ---------------------------------------------------------------------------


def _burn(
    layout: _Layout, size: int, ppm: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class ids, per-pixel roof/car indexes (+ gable side), lane markings and the shadow mask."""
    shape = (size, size)
    labels = np.full(shape, GRASS, np.uint8)

    def burn(shapes: list[tuple[BaseGeometry, int]], dtype: str = "uint8", fill: int = 0) -> np.ndarray:
        shapes = [(g, v) for g, v in shapes if not g.is_empty]
        if not shapes:
            return np.full(shape, fill, dtype)
        return rasterize(shapes, out_shape=shape, fill=fill, transform=Affine.identity(), dtype=dtype)

    labels[burn([(layout.water, 1)]) == 1] = WATER
    road_polys = [(line.buffer(w / 2, cap_style="flat"), 1) for line, w in layout.roads]
    labels[burn(road_polys) == 1] = ROAD
    marking = burn([(_dashes(line, ppm), 1) for line, _ in layout.roads]).astype(bool)

    # Roofs: value = 2 * (index + 1) + side, so that both halves of a gable roof are known.
    halves = []
    for i, (footprint, _, _, ridge) in enumerate(layout.buildings):
        c = footprint.centroid
        half = affinity.rotate(
            box(c.x - 1e4, c.y - 1e4, c.x + 1e4, c.y), ridge, origin=(c.x, c.y)
        ).intersection(footprint)
        halves += [(footprint, 2 * (i + 1)), (half, 2 * (i + 1) + 1)]
    roof_id = burn(halves, "int32")
    labels[roof_id > 0] = BUILDING
    crowns = [(centre.buffer(r, quad_segs=8), 1) for centre, r, _ in layout.trees]
    labels[burn(crowns) == 1] = TREE
    car_id = burn([(c, i + 1) for i, (c, _) in enumerate(layout.cars)], "int32")
    labels[car_id > 0] = CAR
    marking &= labels == ROAD

    # Shadows: the area swept by translating each object away from the sun by its height.
    casts = []
    for footprint, _, height, _ in layout.buildings:
        moved = affinity.translate(footprint, _SUN[0] * -height * ppm, _SUN[1] * -height * ppm)
        casts.append((unary_union([footprint, moved]).convex_hull, 1))
    for centre, r, height in layout.trees:
        moved = Point(centre.x - _SUN[0] * height * ppm * 0.6, centre.y - _SUN[1] * height * ppm * 0.6)
        casts.append((unary_union([centre, moved]).buffer(r * 0.9, quad_segs=6), 1))
    shadow = burn(casts).astype(bool) & ~np.isin(labels, (BUILDING, TREE))
    return labels, roof_id, car_id, marking, shadow


def _dashes(line: LineString, ppm: float) -> BaseGeometry:
    """Dashed centre-line markings: 3 m dashes every 9 m, 0.15 m wide (at least a pixel)."""
    pieces = []
    step, dash = 9 * ppm, 3 * ppm
    d = 0.0
    while d + dash < line.length:
        a, b = line.interpolate(d), line.interpolate(d + dash)
        pieces.append(LineString([a, b]).buffer(max(0.6, 0.15 * ppm), cap_style="flat"))
        d += step
    return unary_union(pieces) if pieces else Polygon()


# --- painting ------------------------------------------------------------------------------


def _noise(rng: np.random.Generator, size: int, cell: float, octaves: int = 3) -> np.ndarray:
    """Fractal value noise in about [-1, 1]: bilinear upsampling of random grids, halving the cell."""
    out = np.zeros((size, size), np.float32)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        n = max(2, math.ceil(size / cell) + 2)
        grid = rng.uniform(-1, 1, (n, n)).astype(np.float32)
        up = ndimage.zoom(grid, cell, order=1, prefilter=False)[:size, :size]
        if up.shape != (size, size):  # tiny cells round down: pad by edge values
            up = np.pad(up, ((0, size - up.shape[0]), (0, size - up.shape[1])), mode="edge")
        out += amp * up
        total += amp
        amp *= 0.5
        cell = max(1.0, cell / 2)
    return out / total


def _paint(
    rng: np.random.Generator,
    labels: np.ndarray,
    roof_id: np.ndarray,
    car_id: np.ndarray,
    marking: np.ndarray,
    shadow: np.ndarray,
    layout: _Layout,
    n_bands: int,
) -> np.ndarray:
    """Colour the class map: base colours, per-object colours, texture, shading, shadows, blur."""
    size = labels.shape[0]
    colour = np.zeros((size, size, 4), np.float32)
    fine = _noise(rng, size, 2.0, 2)
    medium = _noise(rng, size, 12.0, 3)
    coarse = _noise(rng, size, 96.0, 2)

    def put(mask: np.ndarray, rgbn: tuple[int, ...] | np.ndarray) -> None:
        colour[mask] = np.asarray(rgbn, np.float32)

    # Grass: mixes towards dry grass where the coarse noise is high.
    dry = np.clip(coarse * 1.5, 0, 1)[..., None]
    grass = (1 - dry) * np.asarray(_GRASS, np.float32) + dry * np.asarray(_DRY_GRASS, np.float32)
    is_grass = labels == GRASS
    colour[is_grass] = grass[is_grass]
    put(labels == WATER, _WATER)
    put(labels == ROAD, _ROAD)
    put(marking, _MARKING)

    roofs = np.asarray(_ROOFS, np.float32)
    building_roof = np.zeros(len(layout.buildings) + 1, np.int64)
    building_roof[1:] = [roof for _, roof, _, _ in layout.buildings]
    is_roof = roof_id > 0
    index = roof_id[is_roof] // 2
    side = roof_id[is_roof] % 2
    tint = rng.uniform(0.85, 1.15, len(layout.buildings) + 1).astype(np.float32)
    colour[is_roof] = roofs[building_roof[index]] * (tint[index] * (1.0 - 0.22 * side))[:, None]

    # Trees: darker rims and a blobby crown texture.
    is_tree = labels == TREE
    crown_core = ndimage.distance_transform_edt(is_tree)
    rim = np.clip(crown_core / (3.0 + 0.02 * size / 64), 0, 1)
    colour[is_tree] = np.asarray(_TREE, np.float32) * (0.65 + 0.45 * rim[is_tree])[:, None]

    cars = np.asarray(_CARS, np.float32)
    car_colour = np.zeros(len(layout.cars) + 1, np.int64)
    car_colour[1:] = [c for _, c in layout.cars]
    is_car = car_id > 0
    colour[is_car] = cars[car_colour[car_id[is_car]]]

    # Texture by class: fine grain everywhere, blotches on vegetation, ripples on water.
    gain = 1.0 + 0.06 * fine + 0.05 * coarse
    gain += np.where(is_tree, 0.25 * medium + 0.12 * fine, 0)
    gain += np.where(is_grass, 0.08 * medium, 0)
    gain += np.where(labels == WATER, 0.05 * np.sin(np.arange(size, dtype=np.float32) / 3.0)[:, None], 0)
    gain += np.where(is_roof, 0.04 * fine, 0)
    colour *= gain[..., None]
    colour[shadow] *= np.asarray((0.45, 0.47, 0.55, 0.5), np.float32)

    # Sensor: a slight blur (PSF) and noise.
    colour = ndimage.gaussian_filter(colour, sigma=(0.6, 0.6, 0))
    colour += rng.normal(0, 2.0, colour.shape).astype(np.float32)
    image = np.clip(colour, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(image[..., :n_bands].transpose(2, 0, 1))


# --- writing -------------------------------------------------------------------------------


def _profile(crs: CRS, transform: Affine, size: int, count: int) -> dict:
    return {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": count,
        "dtype": "uint8",
        "crs": crs,
        "transform": transform,
        # small images (the colour-object scene) are one strip: a 256 tile would be mostly padding
        "tiled": size >= 256,
        **({"blockxsize": 256, "blockysize": 256} if size >= 256 else {}),
        "compress": "deflate",
    }


def _write_image(path: Path, image: np.ndarray, crs: CRS, transform: Affine, names: tuple[str, ...]) -> None:
    profile = _profile(crs, transform, image.shape[-1], image.shape[0])
    profile["photometric"] = "RGB" if image.shape[0] == 3 else "MINISBLACK"
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        # Tags before pixels: GDAL cannot change photometric tags of a TIFF being written.
        interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue]
        dst.colorinterp = interp + [ColorInterp.undefined] * (image.shape[0] - 3)
        for i, name in enumerate(names, start=1):
            dst.set_band_description(i, name)
        dst.write(image)


def _write_labels(
    path: Path,
    labels: np.ndarray,
    crs: CRS,
    transform: Affine,
    colours: tuple[tuple[int, int, int], ...] = SYNTHETIC.colours,
) -> None:
    profile = _profile(crs, transform, labels.shape[-1], 1)
    profile["nodata"] = IGNORE
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write_colormap(1, {i: (*c, 255) for i, c in enumerate(colours)})
        dst.set_band_description(1, "class")
        dst.write(labels, 1)


# --- the colour-versus-object scene --------------------------------------------------------

SKY, LEMON, APPLE, BLUEBERRY = range(4)
# (base RGB, semi-axes as fractions of the image side (long, short)) per fruit kind
_FRUITS = {
    LEMON: ((236, 204, 48), (0.16, 0.11)),
    APPLE: ((186, 32, 38), (0.13, 0.125)),
    BLUEBERRY: ((58, 52, 122), (0.065, 0.06)),
}
_SKY_TOP = np.array((28, 70, 170), np.float32)  # deep blue at the top of every image
_SKY_BOTTOM = np.array((232, 236, 242), np.float32)  # near white at the horizon


@dataclass(frozen=True)
class ColourObjectFiles:
    """What :func:`generate_colour_object` wrote: image i is ``images[i]``, its ground truth
    ``labels[i]`` (same grid); ``classes`` is the class table."""

    images: list[Path]
    labels: list[Path]
    classes: Path
    preview: Path


def colour_object_image(seed: int, index: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Image ``index`` of the scene of ``seed``: (3, size, size) uint8 and (size, size) uint8
    class ids. A pure function of (seed, index, size)."""
    rng = np.random.default_rng([seed, index])
    rows = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
    sky = _SKY_TOP + (_SKY_BOTTOM - _SKY_TOP) * rows**0.8  # the gradient: same place in every image
    clouds = np.clip(_noise(rng, size, cell=size / 4) * 1.6 - 0.3, 0, 1)[..., None]
    colour = sky * (1 - 0.55 * clouds) + 250.0 * 0.55 * clouds
    colour = np.broadcast_to(colour, (size, size, 3)).copy()
    labels = np.full((size, size), SKY, np.uint8)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    for kind in rng.choice(list(_FRUITS), size=int(rng.integers(1, 4)), replace=True):
        base, (long_axis, short_axis) = _FRUITS[int(kind)]
        a, b = long_axis * size * rng.uniform(0.85, 1.15), short_axis * size * rng.uniform(0.85, 1.15)
        cx, cy = rng.uniform(a, size - a), rng.uniform(a, size - a)
        theta = rng.uniform(0, math.pi)
        u = ((xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)) / a
        v = (-(xx - cx) * math.sin(theta) + (yy - cy) * math.cos(theta)) / b
        r2 = u**2 + v**2
        inside = r2 <= 1.0
        # shading: lit from the top left, darker at the rim; a little per-fruit colour change
        light = 1.0 + 0.25 * (-(xx - cx) - (yy - cy)) / (a + b) - 0.25 * r2
        tint = np.asarray(base, np.float32) * rng.uniform(0.92, 1.08)
        colour[inside] = (tint[None, :] * light[inside][:, None]).clip(0, 255)
        labels[inside] = kind
    colour += rng.normal(0, 3.0, colour.shape).astype(np.float32)
    image = np.clip(colour, 0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(image.transpose(2, 0, 1)), labels


def generate_colour_object(
    out_dir: str | Path,
    count: int = 300,
    size: int = 64,
    seed: int = 0,
    crs: str = "EPSG:32633",
    resolution: float = 0.25,
    name: str = "cvo",
) -> ColourObjectFiles:
    """Write ``count`` images of the colour-versus-object scene and their ground truth as
    GeoTIFFs (``<name>_NNNN.tif``, ``<name>_NNNN_labels.tif``), a class table and a preview.

    Images lie side by side on one map row with a gap between them (georeferenced like every
    input, never overlapping), so each can be ingested, segmented and scored on its own.
    """
    if not 1 <= count <= 100_000:
        raise ConfigError(f"count must be in [1, 100000], got {count}")
    if not 16 <= size <= 1024:
        raise ConfigError(f"size must be in [16, 1024], got {size}")
    crs_obj = CRS.from_user_input(crs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, labels_paths, previews = [], [], []
    for i in range(count):
        image, labels = colour_object_image(seed, i, size)
        origin_x = 399_000.0 + i * (size + 16) * resolution
        transform = Affine.translation(origin_x, 5_660_000.0) @ Affine.scale(resolution, -resolution)
        image_path, label_path = out / f"{name}_{i:04d}.tif", out / f"{name}_{i:04d}_labels.tif"
        _write_image(image_path, image, crs_obj, transform, BANDS["rgb"])
        _write_labels(label_path, labels, crs_obj, transform, COLOUR_OBJECT.colours)
        images.append(image_path)
        labels_paths.append(label_path)
        if i < 8:
            previews.append(
                np.concatenate([image.transpose(1, 2, 0), colourize(labels, COLOUR_OBJECT.colours)])
            )
    classes = out / f"{name}_classes.json"
    write_json_atomic(
        classes,
        {
            "dataset": COLOUR_OBJECT.name,
            "classes": [
                {"id": i, "name": n, "colour": list(c)}
                for i, (n, c) in enumerate(zip(COLOUR_OBJECT.classes, COLOUR_OBJECT.colours, strict=True))
            ],
            "nodata": IGNORE,
            "seed": seed,
            "count": count,
        },
    )
    preview = out / f"{name}_preview.png"
    save_png(np.concatenate(previews, axis=1), preview)
    return ColourObjectFiles(images, labels_paths, classes, preview)
