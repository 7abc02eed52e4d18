"""The names of the files geoseg writes beside each other, in one place.

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
raster's style too: hence ``_preview`` and ``_polygons``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "CLUSTERS",
    "CONFIDENCE",
    "PREDICTION",
    "clusters_path",
    "output_stem",
    "polygons_path",
    "preview_path",
    "style_path",
]

CLUSTERS = "_clusters"
CONFIDENCE = "_confidence"
POLYGONS = "_polygons"
PREVIEW = "_preview"
PREDICTION = "_prediction"


def clusters_path(source: str | Path, out_dir: str | Path) -> Path:
    """``<out_dir>/<source stem>_clusters.tif``."""
    return Path(out_dir) / f"{Path(source).stem}{CLUSTERS}.tif"


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
