"""QGIS layer styles (.qml) for geoseg outputs, coloured and named from the cluster table.

QGIS loads ``<name>.qml`` beside a raster automatically, so a cluster COG opens with the
model's colours and names, and the confidence COG with a colour ramp. The GeoPackage gets
a categorized style on ``cluster_id`` with the same colours (written beside it and loaded
with Layer Properties > Style > Load Style). The XML is built with ElementTree so names
with ``<``, ``&`` or quotes stay valid.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from geoseg.fileio import write_text_atomic

QGIS_VERSION = "3.34.0"
# viridis at 5 stops: perceptually uniform and readable by colour-blind users
_VIRIDIS = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")


@dataclass(frozen=True)
class StyleClass:
    """One cluster as styles show it."""

    id: int
    colour: tuple[int, int, int]
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or f"cluster {self.id}"

    @property
    def hex(self) -> str:
        return "#{:02x}{:02x}{:02x}".format(*self.colour)


def _document(categories: str) -> ET.Element:
    return ET.Element("qgis", version=QGIS_VERSION, styleCategories=categories)


def _write(root: ET.Element, path: str | Path) -> Path:
    ET.indent(root)
    text = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(root, "unicode")
    return write_text_atomic(path, text + "\n")


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
    """Categorized fill style on ``attribute`` (one colour per cluster) for the polygon layer."""
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
    return _write(root, path)
