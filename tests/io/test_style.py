"""QGIS styles: well-formed XML whose colours and names come from the cluster table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from geoseg.config import SegmentConfig
from geoseg.io.style import StyleClass, categorized_vector_qml, paletted_raster_qml, pseudocolour_raster_qml

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


# --- real QGIS: every output opens in its style, with no style call -----------------------

SYSTEM_PYTHON = Path("/usr/bin/python3")
PROBE = Path(__file__).parents[1] / "qgis_probe.py"


def _qgis_missing() -> str | None:
    """Why Debian's QGIS cannot be used here, or None when it can."""
    if not SYSTEM_PYTHON.is_file():
        return f"{SYSTEM_PYTHON} not found"
    check = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", "import qgis.core"], capture_output=True, text=True, timeout=120
    )
    return None if check.returncode == 0 else check.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def named_outputs(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """``geoseg segment`` (with polygons) of a real Lausanne crop, by a tiny model whose clusters
    were named with ``geoseg model name``; the GeoPackage also copied alone into another folder."""
    from rasterio.windows import Window

    from geoseg.baseline import kmeans_baseline
    from geoseg.config import BaselineConfig
    from geoseg.models.names import ClusterEdits, name_clusters
    from geoseg.segment import segment
    from tests.helpers import crop, make_bundle

    root = tmp_path_factory.mktemp("qgis")
    model = make_bundle(root / "model", ["red", "green", "blue"], "uint8", 110.0, 50.0)
    name_clusters(model, ClusterEdits({0: "roads", 2: "red roofs"}, {2: (192, 57, 43)}))
    lausanne = shared_data / "lausanne" / "big_img" / "1091-322_00.tif"
    source = crop(lausanne, root / "scene.tif", Window(300, 300, 256, 256))
    (result,) = segment(model, [source], root / "out", SegmentConfig(batch_size=8), progress=False)
    alone = root / "alone"
    alone.mkdir()
    shutil.copy(result.gpkg, alone / result.gpkg.name)  # no .qml beside it: layer_styles only
    (kmeans,) = kmeans_baseline([source], root / "kmeans", BaselineConfig(k=3, fit_pixels=5000))
    return result, alone / result.gpkg.name, kmeans


def test_qgis_applies_every_style_by_itself(named_outputs, tmp_path: Path) -> None:
    """Debian's QGIS (headless) opens the cluster COG, the confidence COG and the GeoPackage
    (beside its .qml, and alone) in their styles, and renders each to a non-blank PNG."""
    missing = _qgis_missing()
    if missing:
        pytest.skip(
            f"Debian's QGIS (python3-qgis) is not usable, .ci/run installs it with apt-get: {missing}"
        )
    result, lone_gpkg, kmeans = named_outputs
    with rasterio.open(result.clusters) as src:
        present = {int(v) for v in np.unique(src.read(1))} - {255}
    assert len(present) >= 2, "the crop must show several clusters for this test to mean anything"
    report_path = tmp_path / "qgis.json"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": str(tmp_path)}
    layers = [result.clusters, result.confidence, result.gpkg, lone_gpkg, kmeans]
    run = subprocess.run(
        [str(SYSTEM_PYTHON), str(PROBE), str(report_path), str(tmp_path), *map(str, layers)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "GeoPackage" not in run.stderr, run.stderr  # e.g. "version ... only partially supported"
    report = json.loads(report_path.read_text())
    labels = {0: "roads", 1: "bright", 2: "red roofs", 3: "cluster 3"}  # 1 as the bundle had it; 3 unnamed

    clusters = report[str(result.clusters)]
    assert clusters["valid"] and clusters["renderer"] == "paletted"
    assert {c["value"]: c["label"] for c in clusters["classes"]} == labels  # k = 4 classes, named
    palette = {c["value"]: tuple(c["colour"]) for c in clusters["classes"]}
    assert palette[2] == (192, 57, 43)
    confidence = report[str(result.confidence)]
    assert confidence["valid"] and confidence["renderer"] == "singlebandpseudocolor"
    assert [i["value"] for i in confidence["ramp"]] == [0, 25, 50, 75, 100]
    for gpkg in (result.gpkg, lone_gpkg):
        vector = report[str(gpkg)]
        assert vector["valid"] and vector["features"] > 0 and vector["layer_name"] == gpkg.stem
        assert vector["sublayers"] == [gpkg.stem]  # QGIS hides layer_styles: no layer chooser
        assert vector["renderer"] == "categorizedSymbol" and vector["attribute"] == "cluster_id"
        assert {int(c["value"]): c["label"] for c in vector["categories"]} == labels
        assert {int(c["value"]): tuple(c["colour"]) for c in vector["categories"]} == palette

    baseline = report[str(kmeans)]  # a baseline's cluster raster opens in its style too
    assert baseline["renderer"] == "paletted"
    assert [c["label"] for c in baseline["classes"]] == ["cluster 0", "cluster 1", "cluster 2"]

    for path in layers:
        with Image.open(report[str(path)]["png"]) as png:
            rgb = np.asarray(png.convert("RGB")).reshape(-1, 3)
        colours, counts = np.unique(rgb, axis=0, return_counts=True)
        assert len(colours) >= 3, f"{path.name} rendered nearly blank"
        assert counts.max() < 0.9 * len(rgb), f"{path.name}: one colour covers the whole map"
        if path not in (result.confidence, kmeans):  # cluster colours exactly: paletted pixels, fills
            shown = {tuple(c) for c, n in zip(colours, counts, strict=True) if n > 0.01 * len(rgb)}
            assert len(shown & {palette[i] for i in present}) >= 2, f"{path.name}: cluster colours missing"
