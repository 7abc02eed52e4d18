"""Open geoseg outputs in real QGIS (headless) as a user would, and say what QGIS made of them.

Run by tests/test_style.py with Debian's ``/usr/bin/python3`` (python3-qgis), never imported
by the test suite itself. No style is loaded explicitly: the layer constructors apply the
default style the way QGIS Desktop does on opening a file (a GeoPackage's ``layer_styles``
default, else the ``.qml`` beside the file).

Usage: qgis_probe.py OUT.json PNG_DIR LAYER_PATH...  (``.tif`` -> raster, ``.gpkg`` -> vector)
Writes, per layer, its renderer type, classes/categories (value, label, colour), and the
path of a PNG of the layer alone rendered at 400 x 400 px on white.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qgis.core import (  # type: ignore[import-not-found]
    QgsApplication,
    QgsMapRendererSequentialJob,
    QgsMapSettings,
    QgsProviderRegistry,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QSize  # type: ignore[import-not-found]
from qgis.PyQt.QtGui import QColor  # type: ignore[import-not-found]


def _colour(c: QColor) -> list[int]:
    return [c.red(), c.green(), c.blue()]


def describe(layer: QgsRasterLayer | QgsVectorLayer) -> dict:
    renderer = layer.renderer()
    info: dict = {"valid": layer.isValid(), "renderer": renderer.type() if renderer else None}
    if isinstance(layer, QgsRasterLayer) and renderer is not None and renderer.type() == "paletted":
        info["classes"] = [
            {"value": int(c.value), "label": c.label, "colour": _colour(c.color)} for c in renderer.classes()
        ]
    if (
        isinstance(layer, QgsRasterLayer)
        and renderer is not None
        and renderer.type() == "singlebandpseudocolor"
    ):
        ramp = renderer.shader().rasterShaderFunction()
        info["ramp"] = [{"value": i.value, "colour": _colour(i.color)} for i in ramp.colorRampItemList()]
    if isinstance(layer, QgsVectorLayer):
        info["layer_name"] = (
            layer.dataProvider().subLayers()[0].split("!!::!!")[1] if layer.isValid() else None
        )
        info["features"] = layer.featureCount()
        if renderer is not None and renderer.type() == "categorizedSymbol":
            info["attribute"] = renderer.classAttribute()
            info["categories"] = [
                {"value": str(c.value()), "label": c.label(), "colour": _colour(c.symbol().color())}
                for c in renderer.categories()
            ]
        info["sublayers"] = [d.name() for d in QgsProviderRegistry.instance().querySublayers(layer.source())]
    return info


def render(layer: QgsRasterLayer | QgsVectorLayer, png: Path) -> None:
    settings = QgsMapSettings()
    settings.setLayers([layer])
    settings.setDestinationCrs(layer.crs())
    settings.setExtent(layer.extent())
    settings.setOutputSize(QSize(400, 400))
    settings.setBackgroundColor(QColor(255, 255, 255))
    job = QgsMapRendererSequentialJob(settings)
    job.start()
    job.waitForFinished()
    job.renderedImage().save(str(png), "PNG")


def probe(path: Path, png_dir: Path) -> dict:
    """One layer opened, described and rendered; it is gone when this returns (before exitQgis)."""
    if path.suffix == ".gpkg":
        layer = QgsVectorLayer(str(path), path.stem, "ogr")
    else:
        layer = QgsRasterLayer(str(path), path.stem, "gdal")
    info = describe(layer)
    if layer.isValid():
        png = png_dir / f"{path.parent.name}_{path.stem}.png"
        render(layer, png)
        info["png"] = str(png)
    return info


def main(argv: list[str]) -> int:
    out_json, png_dir, paths = Path(argv[1]), Path(argv[2]), [Path(p) for p in argv[3:]]
    app = QgsApplication([], False)
    app.initQgis()
    report = {str(path): probe(path, png_dir) for path in paths}
    out_json.write_text(json.dumps(report, indent=2))
    app.exitQgis()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
