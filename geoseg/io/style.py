"""QGIS layer styles for geoseg outputs, coloured and named from the cluster table.

QGIS applies a style by itself when it opens a layer: a GeoPackage layer's default row in
the file's own ``layer_styles`` table first, else ``<file base name>.qml`` beside the file.
So every output carries its style where QGIS looks (the names are fixed in
:func:`geoseg.segment.output_paths` and :func:`geoseg.vectorize.polygons_path`):

- ``<stem>_clusters.tif`` + ``<stem>_clusters.qml``: paletted, the model's colours and names;
- ``<stem>_confidence.tif`` + ``<stem>_confidence.qml``: a single-band pseudocolour ramp;
- ``<stem>_polygons.gpkg``: a categorized style on ``cluster_id`` in its ``layer_styles``
  table (``useAsDefault``), and the same QML as ``<stem>_polygons.qml`` for other tools.

No two outputs share a base name, so no file picks up another's sidecar. The XML is built
with ElementTree so names with ``<``, ``&`` or quotes stay valid.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from geoseg.io.fileio import write_text_atomic

__all__ = [
    "LAYER_STYLES",
    "StyleClass",
    "categorized_vector_qml",
    "categorized_vector_style",
    "cluster_label",
    "embed_layer_style",
    "hex_colour",
    "paletted_raster_qml",
    "pseudocolour_raster_qml",
]

QGIS_VERSION = "3.34.0"
LAYER_STYLES = "layer_styles"  # QGIS's table of styles inside a GeoPackage
# viridis at 5 stops: perceptually uniform and readable by colour-blind users
_VIRIDIS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")


def cluster_label(cluster_id: int, name: str | None) -> str:
    """What maps, legends and reports call a cluster: its name, else ``cluster N``."""
    return name or f"cluster {cluster_id}"


def hex_colour(colour: tuple[int, int, int]) -> str:
    """``#rrggbb``, as QGIS styles and ``geoseg model name`` write a colour."""
    red, green, blue = colour
    return f"#{red:02x}{green:02x}{blue:02x}"


@dataclass(frozen=True)
class StyleClass:
    """One cluster as styles show it."""

    id: int
    colour: tuple[int, int, int]
    name: str | None = None

    @property
    def label(self) -> str:
        return cluster_label(self.id, self.name)

    @property
    def hex(self) -> str:
        return hex_colour(self.colour)


def _document(categories: str) -> ET.Element:
    return ET.Element("qgis", version=QGIS_VERSION, styleCategories=categories)


def _text(root: ET.Element) -> str:
    ET.indent(root)
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, "unicode") + "\n"
    )


def _write(root: ET.Element, path: str | Path) -> Path:
    return write_text_atomic(path, _text(root))


def _raster_pipe(root: ET.Element, renderer_attrs: dict[str, str]) -> ET.Element:
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe, "rasterrenderer", {"band": "1", "opacity": "1", "alphaBand": "-1", **renderer_attrs}
    )
    ET.SubElement(renderer, "rasterTransparency")
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    return renderer


def paletted_raster_qml(classes: Sequence[StyleClass], path: str | Path) -> Path:
    """Paletted (unique values) style for a cluster raster; nodata stays transparent."""
    root = _document("AllStyleCategories")
    renderer = _raster_pipe(root, {"type": "paletted", "nodataColor": ""})
    palette = ET.SubElement(renderer, "colorPalette")
    for c in sorted(classes, key=lambda c: c.id):
        ET.SubElement(palette, "paletteEntry", value=str(c.id), color=c.hex, alpha="255", label=c.label)
    return _write(root, path)


def pseudocolour_raster_qml(path: str | Path, minimum: float, maximum: float, label: str = "") -> Path:
    """Single-band pseudocolour (viridis, interpolated) for a continuous raster such as confidence."""
    root = _document("AllStyleCategories")
    renderer = _raster_pipe(
        root,
        {
            "type": "singlebandpseudocolor",
            "classificationMin": repr(float(minimum)),
            "classificationMax": repr(float(maximum)),
            "nodataColor": "",
        },
    )
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader")
    shader.set("colorRampType", "INTERPOLATED")
    shader.set("classificationMode", "1")
    shader.set("clip", "0")
    shader.set("minimumValue", repr(float(minimum)))
    shader.set("maximumValue", repr(float(maximum)))
    for i, colour in enumerate(_VIRIDIS):
        value = minimum + (maximum - minimum) * i / (len(_VIRIDIS) - 1)
        text = f"{value:g}{label}"
        ET.SubElement(shader, "item", value=f"{value:g}", color=colour, alpha="255", label=text)
    return _write(root, path)


def _fill_symbol(parent: ET.Element, name: str, colour: tuple[int, int, int]) -> None:
    symbol = ET.SubElement(
        parent, "symbol", type="fill", name=name, alpha="1", clip_to_extent="1", force_rhr="0"
    )
    layer = ET.SubElement(
        symbol, "layer", {"class": "SimpleFill", "enabled": "1", "locked": "0", "pass": "0"}
    )
    props = {
        "color": "{},{},{},255".format(*colour),
        "outline_color": "35,35,35,255",
        "outline_style": "solid",
        "outline_width": "0.1",
        "outline_width_unit": "MM",
        "style": "solid",
        "joinstyle": "bevel",
    }
    options = ET.SubElement(layer, "Option", type="Map")
    for key, value in props.items():  # QGIS >= 3.26 reads Option maps ...
        ET.SubElement(options, "Option", type="QString", name=key, value=value)
    for key, value in props.items():  # ... older 3.x reads prop elements
        ET.SubElement(layer, "prop", k=key, v=value)


def categorized_vector_qml(
    classes: Sequence[StyleClass], path: str | Path, attribute: str = "cluster_id"
) -> Path:
    """Categorized fill style on ``attribute`` (one colour per cluster), written to ``path``."""
    return write_text_atomic(path, categorized_vector_style(classes, attribute))


def categorized_vector_style(classes: Sequence[StyleClass], attribute: str = "cluster_id") -> str:
    """The QML text of a categorized fill style on ``attribute`` for the polygon layer."""
    root = _document("Symbology")
    renderer = ET.SubElement(
        root,
        "renderer-v2",
        type="categorizedSymbol",
        attr=attribute,
        symbollevels="0",
        enableorderby="0",
        forceraster="0",
    )
    categories = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, c in enumerate(sorted(classes, key=lambda c: c.id)):
        ET.SubElement(categories, "category", symbol=str(i), value=str(c.id), label=c.label, render="true")
        _fill_symbol(symbols, str(i), c.colour)
    return _text(root)


def embed_layer_style(
    gpkg: str | Path, layer: str, qml: str, geometry_column: str = "geom", name: str = "geoseg clusters"
) -> None:
    """Store ``qml`` as ``layer``'s default style in the GeoPackage's ``layer_styles`` table.

    The table is QGIS's own (as its "Save Style > In Database" writes it: the columns of
    the PostGIS/SpatiaLite providers, ``f_table_schema`` empty, ``useAsDefault`` 1), made
    through OGR as a plain attribute table, so it is registered in ``gpkg_contents`` and the
    file stays a valid GeoPackage. Call it on a file not yet published (the atomic writer's
    temporary path): the style is part of the file from its first appearance.
    """
    import datetime

    import numpy as np
    import pyogrio.raw

    fields = [
        "f_table_catalog", "f_table_schema", "f_table_name", "f_geometry_column", "styleName",
        "styleQML", "styleSLD", "useAsDefault", "description", "owner", "ui", "update_time",
    ]  # fmt: skip
    stamp = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    text = [
        "",
        "",
        layer,
        geometry_column,
        name[:30],
        qml,
        "",
        None,
        "geoseg: colours and names of the model's clusters",
        "",
        None,
    ]
    values = [np.array([v], dtype=object) for v in text]
    values[7] = np.array([True])
    values.append(np.array([np.datetime64(stamp, "ms")]))
    pyogrio.raw.write(
        gpkg,
        geometry=None,
        field_data=values,
        fields=fields,
        layer=LAYER_STYLES,
        driver="GPKG",
        geometry_type=None,
        append=True,
        layer_options={"FID": "id"},
        gdal_tz_offsets={"update_time": np.array([100])},  # GDAL's flag for UTC: stored "...Z"
    )
