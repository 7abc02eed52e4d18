"""QGIS styles: well-formed XML whose colours and names come from the cluster table."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from geoseg.style import StyleClass, categorized_vector_qml, paletted_raster_qml, pseudocolour_raster_qml

CLASSES = [
    StyleClass(0, (31, 119, 180), "water & <shade>"),
    StyleClass(2, (44, 160, 44), None),
    StyleClass(1, (255, 127, 14), "roofs"),
]


def test_paletted_raster_style_lists_every_cluster_with_its_colour_and_name(tmp_path: Path) -> None:
    path = paletted_raster_qml(CLASSES, tmp_path / "c.qml")
    root = ET.parse(path).getroot()
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [(e.get("value"), e.get("color"), e.get("label")) for e in entries] == [
        ("0", "#1f77b4", "water & <shade>"),
        ("1", "#ff7f0e", "roofs"),
        ("2", "#2ca02c", "cluster 2"),
    ]


def test_pseudocolour_style_spans_the_given_range(tmp_path: Path) -> None:
    root = ET.parse(pseudocolour_raster_qml(tmp_path / "p.qml", 0, 100, " %")).getroot()
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "singlebandpseudocolor"
    items = renderer.findall("rastershader/colorrampshader/item")
    values = [float(i.get("value", "nan")) for i in items]
    assert values[0] == 0 and values[-1] == 100 and values == sorted(values)


def test_categorized_vector_style_matches_cluster_ids_to_symbols(tmp_path: Path) -> None:
    root = ET.parse(categorized_vector_qml(CLASSES, tmp_path / "v.qml")).getroot()
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("attr") == "cluster_id"
    symbols = {s.get("name"): s for s in renderer.findall("symbols/symbol")}
    for category, expected in zip(
        renderer.findall("categories/category"), sorted(CLASSES, key=lambda c: c.id), strict=True
    ):
        assert category.get("value") == str(expected.id) and category.get("label") == expected.label
        symbol = symbols[category.get("symbol")]
        colour = symbol.find("layer/Option/Option[@name='color']")
        assert colour is not None and colour.get("value") == "{},{},{},255".format(*expected.colour)
