"""Vectorize: polygons per cluster on real georeferenced rasters, block seams merged."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import shapely
from rasterio.crs import CRS

from geoseg.cli import main
from geoseg.config import SegmentConfig, VectorizeConfig
from geoseg.errors import ConfigError, InputError
from geoseg.io.cog import create_raster
from geoseg.vectorize import polygons_from_geojson, vector_style_path, vectorize

NODATA = 255
# every GeoPackage holds its polygons and QGIS's layer_styles table; readers default to the first
pytestmark = pytest.mark.filterwarnings("ignore:More than one layer found:UserWarning")


@pytest.fixture(scope="module")
def neon_clusters(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-cluster map of the real NEON tile (brightness quartiles), nodata where the tile has it.

    Real structure (tree crowns, shadows, ground) in a real CRS, at no model cost.
    """
    source = shared_data / "neon" / "OSBS_029.tif"
    with rasterio.open(source) as src:
        data = src.read().astype(np.float32)
        invalid = ~np.all(src.read_masks() > 0, axis=0)
        profile = src.profile
    gray = data.mean(0)
    edges = np.quantile(gray[~invalid], [0.25, 0.5, 0.75])
    ids = np.digitize(gray, edges).astype(np.uint8)
    ids[invalid] = NODATA
    out = tmp_path_factory.mktemp("neon") / "OSBS_029_clusters.tif"
    profile.update(count=1, dtype="uint8", nodata=NODATA, compress="deflate")
    table = [
        {"id": i, "colour": [60 * i, 100, 200 - 40 * i], "name": n}
        for i, n in enumerate(["shadow", "crown", None, "sand"])
    ]
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(ids, 1)
        dst.update_tags(GEOSEG_CLUSTERS=json.dumps(table))
    return out


@pytest.fixture(scope="module")
def single_block(neon_clusters: Path, tmp_path_factory: pytest.TempPathFactory) -> gpd.GeoDataFrame:
    out = vectorize(neon_clusters, tmp_path_factory.mktemp("v1") / "one.gpkg", block_size=4096)
    return gpd.read_file(out)


def _pixel_areas(path: Path) -> dict[int, float]:
    with rasterio.open(path) as src:
        ids = src.read(1)
        pixel = abs(src.transform.a * src.transform.e)
    values, counts = np.unique(ids[ids != NODATA], return_counts=True)
    return {int(v): float(c) * pixel for v, c in zip(values, counts, strict=True)}


def test_polygon_areas_sum_to_the_raster_area_of_each_cluster(neon_clusters: Path, single_block) -> None:
    expected = _pixel_areas(neon_clusters)
    assert set(expected) == {0, 1, 2, 3}
    measured = single_block.groupby("cluster_id")["area"].sum().to_dict()
    assert set(measured) == set(expected), "every cluster is kept, 0 included; nodata is dropped"
    for cluster, area in expected.items():
        assert abs(measured[cluster] - area) <= 0.005 * area
    assert np.allclose(single_block.geometry.area, single_block["area"])


def test_block_parallel_result_equals_single_block(neon_clusters: Path, single_block, tmp_path: Path) -> None:
    blocked = gpd.read_file(vectorize(neon_clusters, tmp_path / "blocked.gpkg", block_size=64))
    assert len(blocked) == len(single_block)
    for cluster in range(4):
        a = np.sort(single_block.loc[single_block.cluster_id == cluster, "area"].to_numpy())
        b = np.sort(blocked.loc[blocked.cluster_id == cluster, "area"].to_numpy())
        assert np.allclose(a, b), f"cluster {cluster}: areas differ between blocked and single-block"
    # no polygon is split by an internal block line: same-cluster polygons never touch
    geoms = blocked.geometry.to_numpy()
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    pairs = (left < right) & (blocked.cluster_id.to_numpy()[left] == blocked.cluster_id.to_numpy()[right])
    assert not pairs.any(), f"{pairs.sum()} same-cluster polygon pairs touch"


def test_geopackage_reopens_through_gdal_with_crs_and_columns(neon_clusters: Path, tmp_path: Path) -> None:
    out = vectorize(neon_clusters, tmp_path / "neon.gpkg", block_size=128)
    layers = pyogrio.list_layers(out)
    assert layers.tolist() == [["neon", "MultiPolygon"], ["layer_styles", None]]  # the polygons first
    info = pyogrio.read_info(out)
    with rasterio.open(neon_clusters) as src:
        assert CRS.from_user_input(info["crs"]) == src.crs
    frame = gpd.read_file(out, layer="neon")
    assert info["features"] == len(frame) > 100
    assert list(info["fields"]) == ["cluster_id", "class_name", "area"]
    repaired = shapely.make_valid(frame.geometry.to_numpy())
    assert np.allclose(shapely.area(repaired), frame["area"]), (
        "any GDAL ring quirk repairs without area change"
    )
    names = frame.groupby("cluster_id")["class_name"].first().to_dict()
    assert names[0] == "shadow" and names[1] == "crown" and names[3] == "sand"
    # a cluster the user never named: the QGIS legend's default label, not null
    assert (frame.loc[frame.cluster_id == 2, "class_name"] == "cluster 2").all()
    qml = vector_style_path(out).read_text()
    assert 'attr="cluster_id"' in qml and 'label="crown"' in qml
    assert 'value="2" label="cluster 2"' in qml


def test_sieve_removes_regions_below_the_mapping_unit(
    neon_clusters: Path, single_block, tmp_path: Path
) -> None:
    with rasterio.open(neon_clusters) as src:
        pixel = abs(src.transform.a * src.transform.e)
    min_area = 25 * pixel
    sieved = gpd.read_file(vectorize(neon_clusters, tmp_path / "s.gpkg", min_area=min_area, block_size=4096))
    assert len(sieved) < len(single_block) / 3
    # regions are only merged, never dropped: the valid area is unchanged
    assert np.isclose(sieved["area"].sum(), single_block["area"].sum())
    # what stays smaller than the unit is only where no valid neighbour could absorb it
    small = sieved[sieved["area"] < min_area - 1e-9]
    assert len(small) <= 0.01 * len(sieved)


def test_simplify_reduces_vertices(neon_clusters: Path, single_block, tmp_path: Path) -> None:
    simple = gpd.read_file(vectorize(neon_clusters, tmp_path / "simple.gpkg", simplify=0.25))
    assert len(simple) == len(single_block)
    assert (
        shapely.get_num_coordinates(simple.geometry.to_numpy()).sum()
        < 0.8 * shapely.get_num_coordinates(single_block.geometry.to_numpy()).sum()
    )


def test_dask_scheduler_address_gives_the_same_polygons(
    neon_clusters: Path, single_block, tmp_path: Path
) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        out = vectorize(
            neon_clusters, tmp_path / "d.gpkg", block_size=100, dask_address=cluster.scheduler_address
        )
    frame = gpd.read_file(out)
    assert len(frame) == len(single_block)
    assert np.isclose(frame["area"].sum(), single_block["area"].sum())


def test_a_dask_scheduler_that_does_not_answer_is_one_line(
    neon_clusters: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import time

    from tests.flows.conftest import free_port

    address = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
    started = time.monotonic()
    rc = main(["vectorize", str(neon_clusters), "--out", str(tmp_path / "d.gpkg"), "--dask-address", address])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and time.monotonic() - started < 30
    assert err[-1].startswith("geoseg vectorize: error: no Dask scheduler answers at") and address in err[-1]
    assert not (tmp_path / "d.gpkg").exists()


def test_bad_inputs_are_clear_errors(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        vectorize(tmp_path / "absent.tif", tmp_path / "x.gpkg")
    with pytest.raises(InputError, match=r"OSBS_029\.tif is not a single-band"):
        vectorize(shared_data / "neon" / "OSBS_029.tif", tmp_path / "x.gpkg")
    corrupt = tmp_path / "corrupt_clusters.tif"
    corrupt.write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(InputError, match=r"corrupt_clusters\.tif"):
        vectorize(corrupt, tmp_path / "x.gpkg")
    assert not (tmp_path / "x.gpkg").exists()


def test_style_is_the_default_in_the_geopackage_and_beside_it(neon_clusters: Path, tmp_path: Path) -> None:
    """QGIS's own convention: the layer's default row in layer_styles, and the same QML as X.qml."""
    out = vectorize(neon_clusters, tmp_path / "styled.gpkg", block_size=4096)
    styles = pyogrio.read_dataframe(out, layer="layer_styles")
    assert len(styles) == 1
    row = styles.iloc[0]
    assert (row.f_table_catalog, row.f_table_schema) == ("", "")  # what QGIS's OGR provider queries
    assert row.f_table_name == "styled" and bool(row.useAsDefault)
    assert row.f_geometry_column == pyogrio.read_info(out)["geometry_name"] == "geom"
    assert row.styleQML == vector_style_path(out).read_text() and vector_style_path(out).name == "styled.qml"
    root = ET.fromstring(row.styleQML.split("\n", 1)[1])  # past the DOCTYPE line
    labels = {c.get("value"): c.get("label") for c in root.iter("category")}
    assert labels == {"0": "shadow", "1": "crown", "2": "cluster 2", "3": "sand"}
    assert pd.notna(row.update_time)


def test_geopackage_passes_gdal_validate_gpkg(neon_clusters: Path, tmp_path: Path) -> None:
    """GDAL's validate_gpkg.py of the GDAL that writes the file (gdal-utils, pinned with pyogrio's).

    Debian's copy (GDAL 3.6) predates the GeoPackage 1.4 R-tree triggers GDAL >= 3.8 writes,
    so it would reject any file GDAL 3.12 makes; the validator must match the writer.
    """
    out = vectorize(neon_clusters, tmp_path / "valid.gpkg", block_size=128)
    run = subprocess.run(
        [sys.executable, "-m", "osgeo_utils.samples.validate_gpkg", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0 and not run.stdout.strip(), run.stdout + run.stderr


def test_default_name_and_no_shared_sidecar_with_the_raster(
    neon_clusters: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raster = tmp_path / "scene_clusters.tif"
    raster.write_bytes(neon_clusters.read_bytes())
    raster_style = raster.with_suffix(".qml")
    raster_style.write_text("the raster's style")
    assert main(["vectorize", str(raster)]) == 0  # no --out: beside the raster, its own base name
    out = tmp_path / "scene_polygons.gpkg"
    assert capsys.readouterr().out.strip() == str(out) and (tmp_path / "scene_polygons.qml").is_file()
    assert main(["vectorize", str(raster), "--out", str(tmp_path / "scene_clusters.gpkg")]) == 2
    assert "would replace the raster's" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"scene_clusters\.qml would replace the raster's"):
        vectorize(raster, tmp_path / "scene_clusters.gpkg")
    with pytest.raises(ConfigError, match=r"must be a \.gpkg"):
        vectorize(raster, tmp_path / "scene.shp")
    assert (
        raster_style.read_text() == "the raster's style" and not (tmp_path / "scene_clusters.gpkg").exists()
    )


def test_cli_vectorize(neon_clusters: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli.gpkg"
    assert main(["vectorize", str(neon_clusters), "--out", str(out), "--min-area", "0.5"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert pyogrio.read_info(out)["features"] > 0
    assert main(["vectorize", str(tmp_path / "nope.tif"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_one_block_size_bound_for_the_library_the_cli_and_segment(
    neon_clusters: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """VectorizeConfig is the one contract: a 32 px block is refused alike by vectorize(),
    `geoseg vectorize` and SegmentConfig (vectorize accepted 16 while segment demanded 64),
    before any output is claimed; 64 works."""
    message = "vectorize block size must be >= 64 px, got 32"
    with pytest.raises(ConfigError, match=message):
        vectorize(neon_clusters, tmp_path / "small.gpkg", block_size=32)
    with pytest.raises(ConfigError, match=message):
        SegmentConfig(vectorize_block=32).validate()
    assert (
        main(["vectorize", str(neon_clusters), "--out", str(tmp_path / "cli.gpkg"), "--block-size", "32"])
        == 2
    )
    assert message in capsys.readouterr().err and not list(tmp_path.iterdir())
    assert SegmentConfig(vectorize_block=64).vectorize_config() == VectorizeConfig(block_size=64)
    assert VectorizeConfig().block_size == SegmentConfig().vectorize_block  # the same default


def test_polygons_built_in_one_call_are_shapelys_polygons() -> None:
    from rasterio.features import shapes

    rng = np.random.default_rng(0)
    data = np.repeat(np.repeat(rng.integers(0, 4, (24, 24)).astype(np.uint8), 5, 0), 5, 1)
    data[rng.random(data.shape) < 0.03] = 9  # single pixels: holes in their neighbours
    found = [geojson for geojson, _ in shapes(data, connectivity=8)]
    built = polygons_from_geojson(found)
    expected = np.asarray([shapely.geometry.shape(g) for g in found], dtype=object)
    assert any(len(g["coordinates"]) > 1 for g in found)  # polygons with holes are covered
    assert shapely.to_wkb(built).tolist() == shapely.to_wkb(expected).tolist()
    assert len(polygons_from_geojson([])) == 0


def test_cli_vectorize_of_a_crs_less_raster_prints_our_lines_not_the_libraries(tmp_path: Path) -> None:
    """The console of a real ``geoseg vectorize`` run: geoseg's INFO line and one warning of
    ours naming the CRS-less raster; no pyogrio INFO line ("Created N records"), no
    rasterio NotGeoreferencedWarning, no pyogrio "'crs' was not provided"."""
    ids = np.zeros((1, 64, 64), np.uint8)
    ids[0, 16:48, 8:40] = 1
    ids[0, 40:, 44:] = 2
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": "uint8", "nodata": NODATA}
    with create_raster(tmp_path / "pixels_clusters.tif", profile) as dst:  # no geotransform at all
        dst.write(ids)
    raster = tmp_path / "pixels_clusters.tif"
    run = subprocess.run(
        [sys.executable, "-m", "geoseg.cli", "vectorize", str(raster)],
        capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert f"INFO 3 polygons from {raster}" in run.stderr
    assert (
        run.stderr.count(f"WARNING {raster} has no georeferencing: its outputs are in pixel coordinates") == 1
    )
    for noise in ("Created", "NotGeoreferencedWarning", "'crs' was not provided"):
        assert noise not in run.stderr, run.stderr
    info = pyogrio.read_info(tmp_path / "pixels_polygons.gpkg")  # on QGIS's pixel grid: y = -row
    assert info["crs"] is None and np.allclose(info["total_bounds"], [0, -64, 64, 0])


def test_vectorizing_after_segment_lists_the_geopackage_in_its_stac_item(
    shared_data: Path, tmp_path: Path
) -> None:
    """The flows segment first and vectorize in a task of their own: the prediction item
    must then list the polygons exactly as segment's own vectorizing lists them."""
    from pystac.validation import validate_dict

    from geoseg.segment import segment
    from tests.helpers import make_bundle

    source = shared_data / "neon" / "OSBS_029.tif"
    model = make_bundle(tmp_path / "m", ["red", "green", "blue"], "uint8", 110.0, 50.0)
    [together] = segment(model, [source], tmp_path / "together", SegmentConfig(), progress=False)
    [apart] = segment(model, [source], tmp_path / "apart", SegmentConfig(vectorize=False), progress=False)
    assert "gpkg" not in json.loads(apart.stac_item.read_text())["assets"]
    gpkg = vectorize(apart.clusters)
    item = json.loads(apart.stac_item.read_text())
    validate_dict(item, extensions=[])
    expected = json.loads(together.stac_item.read_text())["assets"]
    for key in ("gpkg", "gpkg_qml"):
        assert item["assets"][key] == expected[key]
    assert (apart.stac_item.parent / item["assets"]["gpkg"]["href"]).resolve() == gpkg.resolve()
    assert (apart.stac_item.parent / item["assets"]["gpkg_qml"]["href"]).resolve() == vector_style_path(
        gpkg
    ).resolve()
    # polygons written elsewhere, from a raster the item does not describe, leave it alone
    before = apart.stac_item.read_text()
    other = tmp_path / "copy_clusters.tif"
    other.write_bytes(apart.clusters.read_bytes())
    vectorize(other, tmp_path / "elsewhere.gpkg")
    assert apart.stac_item.read_text() == before
    # a file of that name that is no prediction item (a user's notes) is not touched either
    notes = tmp_path / "copy_prediction.json"
    notes.write_text("[1, 2]\n")
    vectorize(other, tmp_path / "again.gpkg")
    assert notes.read_text() == "[1, 2]\n"


def test_a_geopackage_that_does_not_fit_on_the_disk_is_one_line(tmp_path: Path, small_fs, capsys) -> None:
    """`geoseg segment` of lausanne/big_img onto a 2 MiB file system ended in a traceback,
    `pyogrio.errors.DataSourceError: Failed to commit transaction`: SQLite had rolled the
    GeoPackage back and freed the space, so the disk no longer looked full. Now one line
    naming the GeoPackage; no partial file is left."""
    fs = small_fs("2m")
    # a real CRS and ~20000 small regions: a GeoPackage of several MiB
    ids = np.random.default_rng(0).integers(0, 4, (300, 300), dtype=np.uint8).repeat(2, 0).repeat(2, 1)
    clusters = tmp_path / "tile_clusters.tif"
    profile = {"driver": "GTiff", "width": 600, "height": 600, "count": 1, "dtype": "uint8"}
    transform = rasterio.transform.from_origin(2679000.0, 1248000.0, 0.5, 0.5)
    with rasterio.open(
        clusters, "w", **profile, crs=CRS.from_epsg(2056), transform=transform, nodata=NODATA
    ) as dst:
        dst.write(ids, 1)
    out = fs / "tile_polygons.gpkg"
    assert main(["vectorize", str(clusters), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err, err
    assert f"no space left on the device of {out}" in err, err
    assert list(fs.iterdir()) == [], "no partial GeoPackage, no temporary"
