"""Cluster rasters to polygons: block-parallel polygonising with seams merged, into GeoPackage.

The raster is cut into square blocks; each block is (optionally) sieved to a minimum
mapping unit and polygonised with 8-connectivity (GDAL through ``rasterio.features``),
in parallel with Dask (local processes, or the scheduler at ``dask_address``). Blocks
work in global *pixel* coordinates, so every vertex is an exact integer and polygons
cut by a block line meet exactly along it: those that touch an internal block line are
joined with their same-cluster neighbours across it (a union-find over touching pairs,
corner contacts included, as 8-connectivity requires) and dissolved, so no polygon is
split by an internal block line and the result equals single-block polygonising. Only
then are coordinates mapped to the raster's CRS with its affine transform.

Rows: ``cluster_id``, ``class_name`` (the model's name, else the legend's default ``cluster N``:
:func:`geoseg.io.style.cluster_label`), ``area`` (CRS
units squared, of the written geometry), written as MultiPolygons in bulk with pyogrio.
Polygons are GDAL's, as ``gdal_polygonize`` writes them: where pixels of a region meet
only diagonally a ring may touch itself at a vertex (OGC-invalid, read fine by GDAL and
QGIS; ``shapely.make_valid`` repairs it without changing areas). Repairing every polygon
cost more than polygonising on large regions, so it is left to the user; merged seam
polygons come out of GEOS's union valid.

The sieve runs per block on the block plus a halo of ``min(size, block)`` pixels: regions
smaller than the unit are decided exactly when the unit's pixel count fits in the halo;
with larger units, regions near block lines may be judged on truncated neighbours.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import warnings
from collections.abc import Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import shapely
from affine import Affine
from rasterio.features import shapes, sieve
from rasterio.windows import Window

from geoseg.config import VectorizeConfig
from geoseg.errors import ConfigError, InputError
from geoseg.io import sources
from geoseg.io.cluster import connect
from geoseg.io.fileio import (
    atomic_path,
    claim_file,
    full_disk_error,
    published_path,
    require_published,
    write_json_atomic,
    write_text_atomic,
)
from geoseg.io.outputs import NODATA, OUTPUT_ASSETS, polygons_path, prediction_path, style_path
from geoseg.io.sources import PIXEL_GRID, is_pixel_grid, open_dataset
from geoseg.io.style import (
    LAYER_STYLES,
    StyleClass,
    categorized_vector_style,
    cluster_label,
    embed_layer_style,
)
from geoseg.messages import plural
from geoseg.models.bundle import CLUSTERS_TAG, clusters_from_tag, default_clusters

__all__ = [
    "is_own_gpkg",
    "list_in_prediction_item",
    "log_polygons",
    "polygons_from_geojson",
    "vector_style_path",
    "vectorize",
    "write_polygons",
]

log = logging.getLogger(__name__)

DEFAULT_NODATA = NODATA  # a cluster raster without a nodata tag: geoseg's own
LAYER_FIELDS = ["cluster_id", "class_name", "area"]
GEOMETRY_COLUMN = "geom"  # GDAL's default for GeoPackage; the layer_styles row names it
# GeoPackage 1.3, not GDAL 3.10+'s default 1.4: the GDAL of Debian 12's QGIS (3.6) logs "This
# version of GeoPackage ... may only be partially supported" at every open of a 1.4 file.
GPKG_VERSION = "1.3"


@dataclass(frozen=True)
class Block:
    """A block of the raster in pixels, and whether each side is an internal block line."""

    row: int
    col: int
    height: int
    width: int


@dataclass
class BlockPolygons:
    """Polygons of one block in global pixel coordinates, cluster ids, seam flags. Shapely
    geometries pickle as WKB where a block crosses processes; in-process they stay objects."""

    geometry: np.ndarray
    values: np.ndarray
    on_seam: np.ndarray


def is_own_gpkg(path: Path) -> bool:
    """Whether ``path`` is a GeoPackage this module wrote: one layer named after the file, our
    fields (beside QGIS's ``layer_styles`` table, which holds the layer's style)."""
    if not path.is_file():
        return False
    import pyogrio  # here, not at the top: segment without polygons runs without pyogrio (bench/gpu.sh)

    try:
        layers = [str(name) for name, _ in pyogrio.list_layers(path) if str(name) != LAYER_STYLES]
        if layers != [path.stem]:
            return False
        fields = pyogrio.read_info(path, layer=path.stem)["fields"]
    except Exception:
        return False
    return [str(f) for f in fields] == LAYER_FIELDS


def vector_style_path(gpkg: str | Path) -> Path:
    """The .qml written beside a GeoPackage, where QGIS looks for it: ``X.gpkg`` -> ``X.qml``."""
    return style_path(gpkg)


def _check_names(clusters_tif: Path, out_gpkg: Path) -> None:
    """Refuse an output whose sidecar style would be the raster's (or would replace the raster)."""
    if out_gpkg.suffix.lower() != ".gpkg":
        raise ConfigError(f"the polygon output must be a .gpkg file, got {out_gpkg}")
    if vector_style_path(out_gpkg).resolve() == style_path(clusters_tif).resolve():
        raise ConfigError(
            f"{out_gpkg} shares its base name with {clusters_tif}: its style {vector_style_path(out_gpkg).name} "
            f"would replace the raster's; use {polygons_path(clusters_tif)} (the default)"
        )


def blocks(height: int, width: int, size: int) -> list[Block]:
    """Square blocks of ``size`` pixels covering the raster (the last ones clipped)."""
    return [
        Block(r, c, min(size, height - r), min(size, width - c))
        for r in range(0, height, size)
        for c in range(0, width, size)
    ]


def polygons_from_geojson(polygons: list[dict]) -> np.ndarray:
    """GeoJSON polygons as one array of shapely polygons, built in one call.

    The same geometries as ``shapely.geometry.shape`` of each, about 9x faster: a
    polygon per call was most of the vectorize stage's time on rasters of many regions.
    """
    rings = [ring for polygon in polygons for ring in polygon["coordinates"]]
    rings_per_polygon = np.fromiter((len(p["coordinates"]) for p in polygons), np.int64, len(polygons))
    points_per_ring = np.fromiter((len(ring) for ring in rings), np.int64, len(rings))
    coords = np.fromiter(
        chain.from_iterable(chain.from_iterable(rings)), np.float64, 2 * int(points_per_ring.sum())
    ).reshape(-1, 2)
    offsets = (
        np.concatenate([[0], np.cumsum(points_per_ring)]),
        np.concatenate([[0], np.cumsum(rings_per_polygon)]),
    )
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, coords, offsets)


def polygonize_block(
    path: str, block: Block, shape: tuple[int, int], nodata: int | None, sieve_pixels: int
) -> BlockPolygons:
    """Sieve (with a halo) and polygonise one block; runs in a Dask worker."""
    height, width = shape
    halo = min(sieve_pixels, max(block.height, block.width)) if sieve_pixels > 1 else 0
    r0, c0 = max(0, block.row - halo), max(0, block.col - halo)
    r1 = min(height, block.row + block.height + halo)
    c1 = min(width, block.col + block.width + halo)
    with open_dataset(path) as src:
        data = src.read(1, window=Window(c0, r0, c1 - c0, r1 - r0))
    valid = data != nodata if nodata is not None else np.ones(data.shape, bool)
    if sieve_pixels > 1:
        data = sieve(data, size=sieve_pixels, mask=valid, connectivity=8)
    rr, cc = block.row - r0, block.col - c0
    data = np.ascontiguousarray(data[rr : rr + block.height, cc : cc + block.width])
    valid = np.ascontiguousarray(valid[rr : rr + block.height, cc : cc + block.width])
    found = list(shapes(data, mask=valid, connectivity=8, transform=Affine.translation(block.col, block.row)))
    geometry = polygons_from_geojson([geojson for geojson, _ in found])
    values = [int(value) for _, value in found]
    bounds = shapely.bounds(geometry) if len(geometry) else np.zeros((0, 4))
    seams = np.zeros(len(geometry), bool)
    if block.col > 0:
        seams |= bounds[:, 0] <= block.col
    if block.col + block.width < width:
        seams |= bounds[:, 2] >= block.col + block.width
    if block.row > 0:
        seams |= bounds[:, 1] <= block.row
    if block.row + block.height < height:
        seams |= bounds[:, 3] >= block.row + block.height
    return BlockPolygons(geometry, np.asarray(values, np.int32), seams)


def make_valid(geometry: np.ndarray) -> np.ndarray:
    """Valid geometries with the same area.

    GDAL's 8-connected rings touch themselves at a vertex (invalid for GEOS). ``buffer(0)``
    repairs exactly that, fast; where it would change an area, GEOS's structural
    ``make_valid`` (slower) is used instead.
    """
    bad = np.flatnonzero(~shapely.is_valid(geometry))
    if len(bad) == 0:
        return geometry
    fixed = shapely.buffer(geometry[bad], 0)
    changed = ~np.isclose(shapely.area(fixed), shapely.area(geometry[bad]), rtol=1e-9, atol=0)
    if changed.any():
        fixed[changed] = shapely.make_valid(geometry[bad][changed], method="structure", keep_collapsed=False)
    geometry = geometry.copy()
    geometry[bad] = fixed
    return geometry


def _dissolve(pieces: np.ndarray) -> shapely.Geometry:
    """Union of the pieces of one region cut by block lines.

    A plain GEOS union (OverlayNG): faster here than densifying for a coverage union,
    whose simplification of the dense result dominated on large regions.
    """
    try:
        return shapely.union_all(pieces)
    except shapely.errors.GEOSException:  # a ring quirk GEOS cannot node: repair, then union
        return shapely.union_all(make_valid(pieces))


def merge_seams(
    geometry: np.ndarray, values: np.ndarray, on_seam: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Dissolve same-cluster polygons that touch across block lines (edges or corners).

    Polygons of one block never touch a same-cluster polygon of the same block (they would
    have been one region), so every touching same-cluster pair among the seam polygons is
    one region cut by a block line. Components of the touch graph are unioned.
    """
    index = np.flatnonzero(on_seam)
    if len(index) == 0:
        return geometry, values
    pieces = geometry[index]
    left, right = shapely.STRtree(pieces).query(pieces)  # bounding boxes only: cheap
    same = (left < right) & (values[index[left]] == values[index[right]])
    left, right = left[same], right[same]
    keep = shapely.intersects(pieces[left], pieces[right])  # the exact test, same cluster only
    parent = np.arange(len(index))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left[keep], right[keep], strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(len(index))])
    merged_geoms, merged_values, drop = [], [], []
    for root in np.unique(roots):
        members = index[roots == root]
        if len(members) == 1:
            continue
        merged_geoms.append(_dissolve(geometry[members]))
        merged_values.append(values[members[0]])
        drop.extend(members.tolist())
    keep_mask = np.ones(len(geometry), bool)
    keep_mask[drop] = False
    geometry = np.concatenate([geometry[keep_mask], np.asarray(merged_geoms, dtype=object)])
    values = np.concatenate([values[keep_mask], np.asarray(merged_values, np.int32)])
    return geometry, values


def _compute(tasks: list, dask_address: str | None) -> list[BlockPolygons]:
    import dask

    if dask_address:
        with connect(dask_address) as client:
            return list(dask.compute(*tasks, scheduler=client))
    if len(tasks) == 1:
        return list(dask.compute(*tasks, scheduler="synchronous"))
    # GDAL polygonising holds the GIL: processes, not threads, use both cores. Forked (not
    # spawned) workers start at once and need no ``__main__`` guard in the caller's script;
    # they only run GDAL and shapely, never torch, so forking a process with torch loaded
    # is safe here.
    workers = min(len(tasks), os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(dask.compute(*tasks, scheduler="processes", pool=pool))


def _to_crs(geometry: np.ndarray, transform: Affine) -> np.ndarray:
    a, b, c, d, e, f = transform[:6]

    def apply(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([a * xy[:, 0] + b * xy[:, 1] + c, d * xy[:, 0] + e * xy[:, 1] + f])

    return shapely.transform(geometry, apply)


def _raster_classes(src: rasterio.io.DatasetReader) -> list[StyleClass]:
    """Cluster colours and names the segment stage stored in the COG (tags, colour table)."""
    table = clusters_from_tag(src.tags().get(CLUSTERS_TAG))
    if table:
        return list[StyleClass](table)
    try:
        cmap = src.colormap(1)
    except ValueError:
        cmap = {}
    if cmap:
        return [
            StyleClass(i, tuple(rgba[:3]))
            for i, rgba in cmap.items()
            if i != DEFAULT_NODATA and any(rgba[:3])
        ]
    return list[StyleClass](default_clusters(10))


def vectorize(
    clusters_tif: str | Path,
    out_gpkg: str | Path | None = None,
    min_area: float = VectorizeConfig.min_area,
    simplify: float = VectorizeConfig.simplify,
    class_names: Mapping[int, str] | None = None,
    dask_address: str | None = None,
    block_size: int = VectorizeConfig.block_size,
    overwrite: bool = False,
    config: VectorizeConfig | None = None,
    report_georeferencing: bool = False,
) -> Path:
    """Polygons of a cluster raster in a GeoPackage, styled for QGIS, in the raster's CRS.

    The GeoPackage holds one layer named after the file, and its categorized style (the
    raster's colours and names) as the default in ``layer_styles``; the same style is
    written beside it as ``<name>.qml``.

    Args:
        clusters_tif: uint8 cluster ids (nodata 255 dropped; every cluster kept, 0 too).
        out_gpkg: the GeoPackage to write; default :func:`polygons_path`
            (``<stem>_polygons.gpkg`` beside the raster). Replaced atomically when it is an
            earlier output of this function; another file only with ``overwrite``; never a folder.
        min_area: sieve regions smaller than this (CRS units squared) into their largest
            neighbour before polygonising; 0 keeps every region.
        simplify: Douglas-Peucker tolerance in CRS units (topology of each polygon kept;
            shared borders of neighbours are simplified independently); 0 = off.
        class_names: cluster id -> name; default: the names stored by ``geoseg segment``.
        dask_address: run blocks on this Dask scheduler; default: local processes.
        block_size: block side in pixels.
        overwrite: replace a file at ``out_gpkg`` that is not an earlier vectorize output.
        config: every polygonising setting at once (``min_area``, ``simplify``,
            ``block_size`` are then taken from it): what ``segment`` and the flows pass.
        report_georeferencing: warn once if the raster has no CRS (``geoseg vectorize``;
            ``segment`` has said it of the source already).

    Returns:
        ``out_gpkg``.
    """
    clusters_tif = Path(clusters_tif)
    out_gpkg = Path(out_gpkg) if out_gpkg is not None else polygons_path(clusters_tif)
    if config is None:
        config = VectorizeConfig(min_area, simplify, block_size)
    count = write_polygons(
        clusters_tif, out_gpkg, config, class_names, dask_address, overwrite, report_georeferencing
    )
    list_in_prediction_item(clusters_tif, out_gpkg)
    log_polygons(count, clusters_tif, out_gpkg)
    return out_gpkg


def list_in_prediction_item(clusters_tif: Path, gpkg: Path) -> Path | None:
    """Add the GeoPackage and its style to the STAC item of the prediction beside
    ``clusters_tif`` (``<stem>_prediction.json``, written by segment), so polygons made
    afterwards (the flows' vectorize task, ``geoseg vectorize``) are listed like those segment
    makes itself. An item that does not describe this raster is left alone. The item path, or
    None when there is none."""
    item_path = prediction_path(clusters_tif)
    if not item_path.is_file():
        return None
    try:
        item = json.loads(item_path.read_text())
        assets = item["assets"]
        listed = assets["clusters"]["href"]
    except (ValueError, KeyError, TypeError):  # not a prediction item (a user's file): left alone
        return None
    if (item_path.parent / listed).resolve() != clusters_tif.resolve():
        return None
    from geoseg.stac.items import href, run_folder

    for key, path in (("gpkg", gpkg), ("gpkg_qml", vector_style_path(gpkg))):
        media, roles = OUTPUT_ASSETS[key]
        assets[key] = {
            "href": href(path, item_path, run_folder(item_path.parent)),
            "type": media,
            "roles": list(roles),
        }
    return write_json_atomic(item_path, item)


def log_polygons(count: int, clusters_tif: Path, gpkg: Path) -> None:
    """The one log line of a GeoPackage written, naming files as the user finds them (segment
    logs it once its outputs are published, not from its staging folder)."""
    log.info("%s from %s -> %s", plural(count, "polygon"), clusters_tif, gpkg)


@contextlib.contextmanager
def _gpkg_disk_full(out_gpkg: Path, wkb: np.ndarray) -> Iterator[None]:
    """A GeoPackage write that runs out of space fails with GDAL's "Failed to commit
    transaction" after SQLite has rolled back and freed the space it took: told apart from
    other failures by the free space left being less than the geometries alone need."""
    try:
        yield
    except Exception as exc:
        needed = 2 * sum(len(g) for g in wkb)  # the geometries, and SQLite's journal of them
        full = full_disk_error(exc, out_gpkg.parent, published_path(out_gpkg), needed)
        if full is not None:
            raise full from exc
        raise


def write_polygons(
    clusters_tif: Path,
    out_gpkg: Path,
    config: VectorizeConfig,
    class_names: Mapping[int, str] | None = None,
    dask_address: str | None = None,
    overwrite: bool = False,
    report_georeferencing: bool = False,
) -> int:
    """:func:`vectorize`'s work, every polygonising setting in ``config``, without its log
    line: the number of polygons written."""
    _check_names(clusters_tif, out_gpkg)
    config.validate()
    min_area, simplify, block_size = config.min_area, config.simplify, config.block_size
    if not clusters_tif.is_file():
        raise InputError(f"cluster raster not found: {clusters_tif}")
    require_published(clusters_tif)
    claim_file(out_gpkg, "vectorize", owned=is_own_gpkg(out_gpkg), overwrite=overwrite)
    with open_dataset(clusters_tif) as src:
        if src.count != 1 or src.dtypes[0] not in ("uint8", "int8", "uint16", "int16", "int32", "uint32"):
            raise InputError(f"{clusters_tif} is not a single-band integer cluster raster")
        crs, transform, shape = src.crs, src.transform, src.shape
        nodata = int(src.nodata) if src.nodata is not None else DEFAULT_NODATA
        classes = _raster_classes(src)
    if report_georeferencing:
        sources.report_georeferencing(clusters_tif, crs, transform)
    names = dict(class_names) if class_names is not None else {c.id: c.name for c in classes if c.name}
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    sieve_pixels = math.ceil(min_area / pixel_area) if min_area > 0 else 0

    import pyogrio.raw
    from dask import delayed

    tasks = [
        delayed(polygonize_block)(str(clusters_tif), b, shape, nodata, sieve_pixels)
        for b in blocks(shape[0], shape[1], block_size)
    ]
    parts = _compute(tasks, dask_address)
    geometry = np.concatenate([p.geometry for p in parts])
    values = np.concatenate([p.values for p in parts])
    on_seam = np.concatenate([p.on_seam for p in parts])
    geometry, values = merge_seams(geometry, values, on_seam)
    geometry = _to_crs(geometry, PIXEL_GRID if is_pixel_grid(crs, transform) else transform)
    if simplify > 0:
        geometry = shapely.simplify(geometry, simplify, preserve_topology=True)
    order = np.lexsort((shapely.bounds(geometry)[:, 0], values)) if len(values) else np.zeros(0, int)
    geometry, values = geometry[order], values[order]
    area = shapely.area(geometry)
    # the label the QGIS legend shows: the name, else "cluster N" (never null)
    class_name = np.array([cluster_label(int(v), names.get(int(v))) for v in values], dtype=object)
    known = {c.id for c in classes}
    style = classes + [StyleClass(int(v), (128, 128, 128)) for v in np.unique(values) if int(v) not in known]
    qml = categorized_vector_style([StyleClass(c.id, c.colour, names.get(c.id, c.name)) for c in style])
    wkb = shapely.to_wkb(geometry)
    with atomic_path(out_gpkg) as tmp, warnings.catch_warnings(), _gpkg_disk_full(out_gpkg, wkb):
        warnings.filterwarnings("ignore", "The filename extension should be 'gpkg'")  # temporary name
        warnings.filterwarnings("ignore", ".*GPKG application_id, but non conformant file extension")
        # a raster without a CRS was reported once by name (report_georeferencing)
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
        pyogrio.raw.write(
            tmp,
            geometry=wkb,
            field_data=[values.astype(np.int32), class_name, area.astype(np.float64)],
            fields=LAYER_FIELDS,
            layer=out_gpkg.stem,
            driver="GPKG",
            geometry_type="MultiPolygon",
            promote_to_multi=True,
            crs=crs.to_wkt() if crs is not None else None,
            layer_options={"GEOMETRY_NAME": GEOMETRY_COLUMN},
            dataset_options={"VERSION": GPKG_VERSION},
        )
        embed_layer_style(tmp, out_gpkg.stem, qml, GEOMETRY_COLUMN)
    write_text_atomic(vector_style_path(out_gpkg), qml)
    return len(values)
