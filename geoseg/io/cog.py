"""Cloud-Optimised GeoTIFFs: an intermediate tiled GeoTIFF written block by block, then COG.

A COG cannot be written incrementally (its overviews and header come first), so outputs
are written in two steps: blocks of rows go into a plain tiled GeoTIFF as they finish
(memory bounded by the block), then GDAL's COG driver copies it into internal 512 x 512
tiles with overviews. The copy streams tile by tile through GDAL's block cache, so it
too never holds the raster. Cluster ids get ``mode`` overviews (a zoomed-out pixel shows
the most frequent cluster, never an average of ids); the colour table travels with the
copy. Every write goes to a temporary name renamed into place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.io import DatasetWriter

from geoseg.errors import InputError
from geoseg.io.fileio import atomic_path
from geoseg.io.sources import is_pixel_grid, without_georeferencing_warning

__all__ = ["GDAL_CACHE_BYTES", "create_raster", "stored_transform", "tiled_profile", "to_cog", "validate_cog"]

BLOCKSIZE = 512
# GDAL's block cache defaults to 5% of RAM; writing and COG-copying stream tile rows, so a
# fixed cache keeps the memory of a 20000 x 20000 output as small as that of a small one.
# In bytes: rasterio hands an integer GDAL_CACHEMAX to GDAL as bytes, so "256" meant a
# 256-byte cache that made GDAL decompress every tile again for each window (3x slower reads).
GDAL_CACHE_BYTES = 128 * 1024 * 1024


def stored_transform(crs: CRS | None, transform: Affine) -> Affine | None:
    """The transform to write: none for a pixel grid (a PNG/JPEG's outputs), as its source
    has none. GDAL would store rasterio's identity as a south-up geotransform (y = +row),
    which QGIS warps and shows upside down beside the source (checked with QGIS 3.22)."""
    return None if is_pixel_grid(crs, transform) else transform


def tiled_profile(
    crs: CRS | None,
    transform: Affine,
    height: int,
    width: int,
    dtype: str,
    nodata: float | None,
    count: int = 1,
) -> dict[str, Any]:
    """Profile of the intermediate tiled GeoTIFF (fast to write; deflate, 512 tiles)."""
    return {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": count,
        "dtype": dtype,
        "crs": crs,
        "transform": stored_transform(crs, transform),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": BLOCKSIZE,
        "blockysize": BLOCKSIZE,
        "compress": "deflate",
        "zlevel": 1,
        "BIGTIFF": "IF_SAFER",
    }


def create_raster(path: str | Path, profile: Mapping[str, Any]) -> DatasetWriter:
    """``rasterio.open(path, "w", **profile)`` for every output raster geoseg writes.

    A pixel grid without a CRS (outputs of a PNG/JPEG, written without a geotransform:
    stored_transform) makes rasterio warn on each open; the stage has already said once,
    naming the source, that its outputs have no CRS (geoseg.io.sources.report_georeferencing),
    so that warning is silenced here.
    """
    with without_georeferencing_warning():
        return rasterio.open(path, "w", **profile)


def to_cog(
    src: str | Path,
    dst: str | Path,
    resampling: str = "mode",
    colormap: Mapping[int, tuple[int, ...]] | None = None,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
) -> Path:
    """Copy a (tiled) GeoTIFF into a COG at ``dst`` (atomically); ``src`` is left in place.

    ``resampling`` is the overview resampling (``mode`` or ``nearest`` for class ids,
    ``average`` for continuous values). ``colormap``, tags and the band description are set
    on ``src`` first so that the COG driver carries them into the copy.
    """
    src, dst = Path(src), Path(dst)
    if colormap is not None or tags or description:
        with without_georeferencing_warning(), rasterio.open(src, "r+") as ds:
            if colormap is not None:
                ds.write_colormap(1, {int(k): tuple(v) for k, v in colormap.items()})
            if tags:
                ds.update_tags(**tags)
            if description:
                ds.set_band_description(1, description)
    with atomic_path(dst) as tmp, rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        rasterio.shutil.copy(
            str(src),
            str(tmp),
            driver="COG",
            BLOCKSIZE=BLOCKSIZE,
            COMPRESS="DEFLATE",
            OVERVIEW_RESAMPLING=resampling.upper(),
            OVERVIEWS="AUTO",
            BIGTIFF="IF_SAFER",
            NUM_THREADS="ALL_CPUS",
        )
    return dst


def validate_cog(path: str | Path) -> tuple[bool, list[str], list[str]]:
    """rio-cogeo's COG validation: (is valid, errors, warnings)."""
    from rio_cogeo.cogeo import cog_validate

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such COG: {path}")
    return cog_validate(str(path), quiet=True)
