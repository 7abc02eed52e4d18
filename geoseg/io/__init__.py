"""The files geoseg reads and writes, below every stage: safe writes and output sets
(``fileio``), output names, nodata and media types (``outputs``), input rasters
(``sources``), patch stores (``store``, ``shards``), COGs (``cog``), QGIS styles
(``style``), PNG previews (``preview``) and window grids over a raster (``windows``).

Nothing here imports a stage, a model or a method (docs/architecture.md, "Layers").
"""

__all__ = ["cog", "fileio", "outputs", "preview", "shards", "sources", "store", "style", "windows"]
