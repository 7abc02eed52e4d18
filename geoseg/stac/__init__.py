"""STAC: items for single rasters and the offline-validated catalog writer (``items``),
and a flow run's catalog of surveys, models and predictions (``catalog``).

``geoseg.stac`` was one module before the regroup: its names stay importable from here.
"""

from geoseg.stac.items import classify, prediction_item, raster_item, save_catalog, save_catalog_files

__all__ = [
    "catalog",
    "classify",
    "items",
    "prediction_item",
    "raster_item",
    "save_catalog",
    "save_catalog_files",
]
