"""The contract of the files geoseg writes beside each other, in one place: their names,
the nodata value of the cluster and confidence rasters, and the media types and roles of
their STAC assets.

QGIS styles a file by itself when a ``.qml`` with the file's base name sits beside it (and
a GeoPackage layer by the default row of the file's ``layer_styles`` table), so no two
outputs of one source may share a base name, or one would open in the other's style:

===================================  ==========================================
``<stem>_clusters.tif`` / ``.qml``   cluster ids, paletted style
``<stem>_confidence.tif`` / ``.qml`` confidence percent, pseudocolour style
``<stem>_polygons.gpkg`` / ``.qml``  polygons (style also inside the GeoPackage)
``<stem>_preview.png``               a look at the clusters, with a legend
``<stem>_prediction.json``           the STAC item
===================================  ==========================================

A preview named ``<stem>_clusters.png`` would pick up the raster's paletted style (band 1
of an RGB picture shown as cluster ids), and polygons named ``<stem>_clusters.gpkg`` the
raster's style too: hence ``_preview`` and ``_polygons``. Outputs are named by the
source's stem, so two sources of one stem cannot share an output folder
(:func:`check_unique_stems`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from geoseg.errors import InputError

__all__ = [
    "CLUSTERS",
    "COG_MEDIA_TYPE",
    "CONFIDENCE",
    "GPKG_MEDIA_TYPE",
    "JSON_MEDIA_TYPE",
    "NODATA",
    "OUTPUT_ASSETS",
    "PNG_MEDIA_TYPE",
    "POLYGONS",
    "PREDICTION",
    "PREVIEW",
    "QML_MEDIA_TYPE",
    "WEIGHTS_MEDIA_TYPE",
    "ZARR_MEDIA_TYPE",
    "check_unique_stems",
    "clusters_path",
    "confidence_path",
    "output_stem",
    "polygons_path",
    "prediction_path",
    "preview_path",
    "style_path",
]

NODATA = 255  # cluster ids and confidence: no prediction (nodata or alpha 0 in the source)

CLUSTERS = "_clusters"
CONFIDENCE = "_confidence"
POLYGONS = "_polygons"
PREVIEW = "_preview"
PREDICTION = "_prediction"

COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
GPKG_MEDIA_TYPE = "application/geopackage+sqlite3"
QML_MEDIA_TYPE = "application/xml"
PNG_MEDIA_TYPE = "image/png"
JSON_MEDIA_TYPE = "application/json"
ZARR_MEDIA_TYPE = "application/vnd.zarr"
WEIGHTS_MEDIA_TYPE = "application/octet-stream"  # safetensors has no registered type

# The STAC asset of each output beside a cluster raster (keys as in segment's results):
# media type and roles (a tuple: each asset gets its own list).
OUTPUT_ASSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "confidence": (COG_MEDIA_TYPE, ("data",)),
    "clusters_qml": (QML_MEDIA_TYPE, ("style",)),
    "confidence_qml": (QML_MEDIA_TYPE, ("style",)),
    "preview_png": (PNG_MEDIA_TYPE, ("overview",)),
    "gpkg": (GPKG_MEDIA_TYPE, ("data", "labels")),
    "gpkg_qml": (QML_MEDIA_TYPE, ("style",)),
}


def clusters_path(source: str | Path, out_dir: str | Path) -> Path:
    """``<out_dir>/<source stem>_clusters.tif``."""
    return Path(out_dir) / f"{Path(source).stem}{CLUSTERS}.tif"


def confidence_path(source: str | Path, out_dir: str | Path) -> Path:
    """``<out_dir>/<source stem>_confidence.tif``."""
    return Path(out_dir) / f"{Path(source).stem}{CONFIDENCE}.tif"


def prediction_path(clusters_tif: str | Path) -> Path:
    """``X_clusters.tif`` -> ``X_prediction.json`` (the STAC item) beside it."""
    return Path(clusters_tif).with_name(f"{output_stem(clusters_tif)}{PREDICTION}.json")


def check_unique_stems(sources: Sequence[Path]) -> None:
    """Outputs are named by stem: two sources with one stem would overwrite each other."""
    seen: dict[str, Path] = {}
    for path in sources:
        if path.stem in seen:
            raise InputError(
                f"{seen[path.stem]} and {path} share the name {path.stem!r}: their "
                f"{CLUSTERS} outputs would collide; write them to separate --out folders"
            )
        seen[path.stem] = path


def output_stem(clusters_tif: str | Path) -> str:
    """The source stem a cluster raster was named after (``X_clusters.tif`` -> ``X``; else its stem)."""
    return Path(clusters_tif).stem.removesuffix(CLUSTERS)


def polygons_path(clusters_tif: str | Path) -> Path:
    """``X_clusters.tif`` -> ``X_polygons.gpkg`` beside it."""
    return Path(clusters_tif).with_name(f"{output_stem(clusters_tif)}{POLYGONS}.gpkg")


def preview_path(clusters_tif: str | Path) -> Path:
    """``X_clusters.tif`` -> ``X_preview.png`` beside it."""
    return Path(clusters_tif).with_name(f"{output_stem(clusters_tif)}{PREVIEW}.png")


def style_path(path: str | Path) -> Path:
    """The QGIS sidecar style of a file: same folder and base name, ``.qml``."""
    return Path(path).with_suffix(".qml")
