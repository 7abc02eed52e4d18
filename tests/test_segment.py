"""Segmentation on real georeferenced imagery (Lausanne, NEON, SpaceNet) and generated edge cases.

Models are tiny random IIC networks in eval mode (no training needed: a random trunk
already gives structured, non-trivial cluster maps, and eval mode makes the stitched vs
single-pass comparison exact up to window context).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyogrio
import pystac
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from geoseg.cli import main
from geoseg.config import SegmentConfig
from geoseg.errors import ConfigError, InputError
from geoseg.io.cog import create_raster, validate_cog
from geoseg.models.bundle import default_clusters, load_bundle, model_id
from geoseg.segment import CONFIDENCE_MAX, NODATA, check_rasters_suit_model, predict_probabilities, segment
from tests.helpers import K, crop, make_bundle, write_raster


def single_pass(model_dir: Path, data: np.ndarray) -> np.ndarray:
    """Cluster ids of the whole raster in one forward pass.

    The network pools by 2 and upsamples by the exact factor 2 only on even sizes, so an
    odd-sized raster is padded by one replicated row/column first (as segment does).
    """
    model, meta = load_bundle(model_dir)
    _, h, w = data.shape
    x = np.pad(data.astype(np.float32), ((0, 0), (0, h % 2), (0, w % 2)), mode="edge")
    probs = predict_probabilities(model, torch.from_numpy(x)[None], meta.scale)
    return probs.argmax(1)[0].numpy()[:h, :w]


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("m") / "rgb", ["red", "green", "blue"], "uint8", 110.0, 50.0)


@pytest.fixture(scope="module")
def lausanne(shared_data: Path) -> Path:
    return shared_data / "lausanne" / "big_img" / "1091-322_00.tif"


@pytest.fixture(scope="module")
def lausanne_run(rgb_model: Path, lausanne: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("lausanne")
    (result,) = segment(rgb_model, [lausanne], out, SegmentConfig(batch_size=16), progress=False)
    return result


def test_lausanne_outputs_keep_the_source_grid_and_are_valid_cogs(lausanne_run, lausanne: Path) -> None:
    with (
        rasterio.open(lausanne) as src,
        rasterio.open(lausanne_run.clusters) as ids,
        rasterio.open(lausanne_run.confidence) as conf,
    ):
        for out in (ids, conf):
            assert out.crs == src.crs
            assert out.transform == src.transform
            assert out.shape == src.shape
            assert out.nodata == NODATA
            assert out.block_shapes == [(512, 512)]
            assert out.dtypes == ("uint8",)
        assert ids.overviews(1), "an 875 px wide COG needs at least one overview"
        cmap = ids.colormap(1)
        for cluster in default_clusters(K):
            assert cmap[cluster.id][:3] == cluster.colour
        clusters = ids.read(1)
        confidence = conf.read(1)
    assert validate_cog(lausanne_run.clusters)[0]
    assert validate_cog(lausanne_run.confidence)[0]
    assert np.all(clusters < K), "no nodata in Lausanne: every pixel gets a cluster"
    assert len(np.unique(clusters)) >= 2, "a random net still separates the scene into clusters"
    # confidence is a max over K probabilities: between 1/K and 1, in percent
    assert confidence.min() >= np.floor(CONFIDENCE_MAX / K) and confidence.max() <= CONFIDENCE_MAX


def test_stitched_windows_agree_with_single_pass(lausanne_run, rgb_model: Path, lausanne: Path) -> None:
    with rasterio.open(lausanne) as src:
        whole = single_pass(rgb_model, src.read())
    with rasterio.open(lausanne_run.clusters) as ids:
        stitched = ids.read(1)
    agreement = float(np.mean(whole == stitched))
    assert agreement >= 0.995, f"stitched vs single pass agree on {agreement:.4%} of pixels"


def test_styles_preview_and_stac_item(lausanne_run, lausanne: Path, rgb_model: Path) -> None:
    qml = lausanne_run.clusters_qml.read_text()
    assert 'type="paletted"' in qml and 'label="bright"' in qml and 'label="cluster 3"' in qml
    assert "singlebandpseudocolor" in lausanne_run.confidence_qml.read_text()
    from PIL import Image

    assert lausanne_run.preview_png.name == "1091-322_00_preview.png"  # not the raster's base name
    with Image.open(lausanne_run.preview_png) as png, rasterio.open(lausanne) as src:
        # under the 2048 px preview limit: full size, and a legend panel on the right
        assert png.size[1] == src.height and png.size[0] > src.width
    item = pystac.Item.from_file(str(lausanne_run.stac_item))
    assert "label:type" in item.properties and item.properties["label:type"] == "raster"
    assert item.properties["proj:code"] == "EPSG:2056" or item.properties.get("proj:epsg") == 2056
    links = {link.rel: link.get_absolute_href() for link in item.links}
    assert Path(links["derived_from"]) == lausanne.resolve()
    assert Path(links["via"]) == (rgb_model / "model.json").resolve()
    assert Path(item.assets["clusters"].get_absolute_href()) == lausanne_run.clusters.resolve()
    from pyproj import Transformer

    with rasterio.open(lausanne) as src:
        b = src.bounds
    to_wgs84 = Transformer.from_crs(2056, 4326, always_xy=True)
    for x, y in ((b.left, b.bottom), (b.right, b.top), (b.left, b.top), (b.right, b.bottom)):
        lon, lat = to_wgs84.transform(x, y)
        assert item.bbox[0] - 1e-9 <= lon <= item.bbox[2] + 1e-9
        assert item.bbox[1] - 1e-9 <= lat <= item.bbox[3] + 1e-9
    assert item.bbox[2] - item.bbox[0] < 0.01  # a 437 m wide tile, not the whole world


def test_both_cog_assets_have_the_contract_media_type(lausanne_run) -> None:
    """The clusters and confidence COGs of segment's item: the one COG media type of
    geoseg.io.outputs (profile=cloud-optimized), and the item valid against the core schema."""
    from pystac.validation import validate_dict

    from geoseg.io.outputs import COG_MEDIA_TYPE

    data = json.loads(lausanne_run.stac_item.read_text())
    validate_dict(data, extensions=[])  # pystac's bundled core schemas, offline
    assert data["assets"]["clusters"]["type"] == data["assets"]["confidence"]["type"] == COG_MEDIA_TYPE
    assert validate_cog(lausanne_run.clusters)[0] and validate_cog(lausanne_run.confidence)[0]


def test_lausanne_geopackage_reopens(lausanne_run) -> None:
    import geopandas as gpd

    info = pyogrio.read_info(lausanne_run.gpkg)
    assert lausanne_run.gpkg.name == "1091-322_00_polygons.gpkg"
    assert [name for name, _ in pyogrio.list_layers(lausanne_run.gpkg)] == [
        "1091-322_00_polygons",
        "layer_styles",
    ]
    assert CRS.from_user_input(info["crs"]).to_epsg() == 2056
    frame = gpd.read_file(lausanne_run.gpkg, layer=lausanne_run.gpkg.stem)
    assert info["features"] == len(frame) > 0
    assert set(frame.columns) >= {"cluster_id", "class_name", "area", "geometry"}
    named = frame[frame.cluster_id == 1]
    assert (named.class_name == "bright").all()
    # no name in the model: the legend's default label (the QML's), never null
    assert (frame[frame.cluster_id == 3].class_name == "cluster 3").all()
    assert 'value="3" label="cluster 3"' in lausanne_run.gpkg_qml.read_text()
    assert lausanne_run.gpkg_qml == lausanne_run.gpkg.with_suffix(".qml") and lausanne_run.gpkg_qml.is_file()


def test_neon_nodata_becomes_nodata_everywhere(tmp_path: Path, shared_data: Path, rgb_model: Path) -> None:
    source = shared_data / "neon" / "OSBS_029.tif"
    (result,) = segment(rgb_model, [source], tmp_path, SegmentConfig(vectorize=False), progress=False)
    with rasterio.open(source) as src:
        invalid = ~np.all(src.read_masks() > 0, axis=0)
        crs, transform = src.crs, src.transform
    assert invalid.sum() > 1000, "the NEON tile has nodata (255) pixels"
    for path in (result.clusters, result.confidence):
        with rasterio.open(path) as out:
            assert out.crs == crs and out.transform == transform
            values = out.read(1)
        assert np.array_equal(values == NODATA, invalid)
    assert result.gpkg is None


def test_a_pixel_is_nodata_when_any_band_equals_nodata(tmp_path: Path) -> None:
    """docs/usage-segment.md's any-band rule: with nodata 0, a pure-red pixel (200, 0, 0) is
    nodata (two of its bands are 0), and so is one with a single band at 0; a pixel with
    no band at 0 is predicted."""
    data = np.full((3, 160, 160), 90, np.uint8)
    data[:, 10, 10] = (200, 0, 0)  # two bands at nodata
    data[:, 20, 20] = (200, 90, 0)  # one band at nodata
    data[:, 30, 30] = (0, 0, 0)  # all bands at nodata
    data[:, 40, 40] = (200, 1, 1)  # none
    source = write_raster(tmp_path / "red.tif", data, nodata=0)
    model = make_bundle(tmp_path / "model", ["red", "green", "blue"], "uint8", 100.0, 50.0)
    (result,) = segment(model, [source], tmp_path / "out", SegmentConfig(vectorize=False), progress=False)
    with rasterio.open(result.clusters) as out:
        ids = out.read(1)
    assert [ids[p, p] == NODATA for p in (10, 20, 30, 40)] == [True, True, True, False]
    assert (ids == NODATA).sum() == 3


def test_polygon_log_line_names_the_published_files(
    tmp_path: Path, shared_data: Path, rgb_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """segment vectorizes inside a hidden staging folder that is gone when it returns: the
    INFO line a user reads names the published cluster COG and GeoPackage, which exist."""
    source = shared_data / "neon" / "OSBS_029.tif"
    caplog.set_level("INFO", logger="geoseg")
    (result,) = segment(rgb_model, [source], tmp_path / "pred", SegmentConfig(batch_size=16), progress=False)
    (line,) = [r.getMessage() for r in caplog.records if " polygons from " in r.getMessage()]
    assert line.endswith(f" polygons from {result.clusters} -> {result.gpkg}"), line
    assert result.clusters.is_file() and result.gpkg is not None and result.gpkg.is_file()


def test_outputs_of_another_model_are_replaced_with_a_warning_naming_it(
    tmp_path: Path, rgb_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two models into one folder: the second replaces the first's outputs (segment's own
    set), and says so before any work, naming the files and the model that made them."""
    rng = np.random.default_rng(1)
    source = write_raster(tmp_path / "tiny.tif", rng.integers(0, 255, (3, 70, 90), dtype=np.uint8))
    other = make_bundle(tmp_path / "other", ["red", "green", "blue"], "uint8", 110.0, 50.0, seed=3)
    out, config = tmp_path / "two", SegmentConfig(vectorize=False)
    caplog.set_level("INFO", logger="geoseg")
    segment(rgb_model, [source], out, config, progress=False)
    segment(rgb_model, [source], out, config, progress=False)  # the same model again: no warning
    assert [r for r in caplog.records if r.levelname == "WARNING"] == []
    (result,) = segment(other, [source], out, config, progress=False)
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.getMessage() == (
        f"replacing the outputs of model {model_id(rgb_model)} in {out} (tiny_clusters.tif and "
        f"their side files) with those of model {other.absolute()}"
    )
    with rasterio.open(result.clusters) as src:
        assert src.tags()["GEOSEG_MODEL"] == model_id(other)


def test_spacenet_one_band_uint16(tmp_path: Path, shared_data: Path) -> None:
    source = crop(
        shared_data / "spacenet" / "sample_geotiff.tif", tmp_path / "atlanta.tif", Window(300, 200, 250, 190)
    )
    model = make_bundle(tmp_path / "pan", ["gray"], "uint16", 800.0, 400.0)
    (result,) = segment(model, [source], tmp_path / "out", SegmentConfig(vectorize=False), progress=False)
    with rasterio.open(source) as src, rasterio.open(result.clusters) as out:
        assert out.crs == src.crs and out.crs.to_epsg() == 32616
        assert out.transform == src.transform and out.shape == (190, 250)
        assert src.nodata == 0
        ids = out.read(1)
    assert np.all(ids < K)
    assert validate_cog(result.clusters)[0]


def test_raster_not_a_multiple_of_the_window_is_covered_to_its_edges(
    tmp_path: Path, rgb_model: Path, lausanne: Path
) -> None:
    source = crop(lausanne, tmp_path / "odd.tif", Window(301, 203, 157, 131))  # odd sizes
    config = SegmentConfig(window=64, overlap=0.3, vectorize=False)
    (result,) = segment(rgb_model, [source], tmp_path / "out", config, progress=False)
    with rasterio.open(result.clusters) as out, rasterio.open(source) as src:
        ids = out.read(1)
        whole = single_pass(rgb_model, src.read())
    assert ids.shape == (131, 157)
    assert np.all(ids < K), "every pixel up to the last row and column is predicted"
    # the last rows/columns (covered by windows shifted back to the edge) agree with a
    # single pass over the whole raster as well as the interior does
    assert np.mean(whole == ids) >= 0.99
    assert np.mean(whole[-2:] == ids[-2:]) >= 0.97 and np.mean(whole[:, -2:] == ids[:, -2:]) >= 0.97


def test_model_scale_resamples_and_output_stays_at_source_resolution(tmp_path: Path, lausanne: Path) -> None:
    source = crop(lausanne, tmp_path / "small.tif", Window(100, 100, 200, 150))
    model = make_bundle(
        tmp_path / "half", ["red", "green", "blue"], "uint8", 110.0, 50.0, patch=32, scale=0.5
    )
    (result,) = segment(model, [source], tmp_path / "out", SegmentConfig(vectorize=False), progress=False)
    with rasterio.open(source) as src, rasterio.open(result.clusters) as out:
        assert out.shape == src.shape and out.transform == src.transform
        assert np.all(out.read(1) < K)


def test_band_count_dtype_and_order_mismatch_are_clear_errors(tmp_path: Path, lausanne: Path) -> None:
    one_band = make_bundle(tmp_path / "one", ["gray"], "uint8", 100.0, 50.0)
    with pytest.raises(InputError, match=r"1091-322_00\.tif has 3 bands.*expects 1"):
        segment(one_band, [lausanne], tmp_path / "out", progress=False)
    wide = make_bundle(tmp_path / "u16", ["red", "green", "blue"], "uint16", 100.0, 50.0)
    with pytest.raises(InputError, match=r"uint8 but model .* uint16"):
        segment(wide, [lausanne], tmp_path / "out", progress=False)
    bgr = make_bundle(tmp_path / "bgr", ["blue", "green", "red"], "uint8", 100.0, 50.0)
    with pytest.raises(InputError, match="order") as refused:
        segment(bgr, [lausanne], tmp_path / "out", progress=False)
    # the line names the gdal_translate call that fixes it, and that call (real GDAL) does
    hint = re.search(r"gdal_translate (-b \d )+", str(refused.value))
    assert hint is not None and hint.group(0) == "gdal_translate -b 3 -b 2 -b 1 ", str(refused.value)
    reordered = tmp_path / "reordered.tif"
    subprocess.run(
        ["gdal_translate", "-q", *hint.group(0).split()[1:], str(lausanne), str(reordered)], check=True
    )
    with rasterio.open(reordered) as dst:  # gdal_translate keeps each band's colour name
        assert [c.name for c in dst.colorinterp] == ["blue", "green", "red"]
    check_rasters_suit_model(bgr, [reordered])
    with rasterio.open(lausanne) as src:
        rgb = src.read()
    bgr_ir = write_raster(tmp_path / "bgrir.tif", np.concatenate([rgb[::-1], rgb[1:2]]))
    with rasterio.open(bgr_ir, "r+") as dst:  # blue, green, red and an untagged 4th band
        dst.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined]
    rgb_nir = make_bundle(tmp_path / "rgbnir", ["red", "green", "blue", "nir"], "uint8", 100.0, 50.0)
    with pytest.raises(
        InputError, match=r"bgrir\.tif has bands in the order \['blue', 'green', 'red'"
    ) as partial:
        segment(rgb_nir, [bgr_ir], tmp_path / "out", progress=False)
    assert "gdal_translate" not in str(partial.value)  # no reordering gives a nir band
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_model_trained_on_an_alpha_tagged_band_segments_that_raster(tmp_path: Path, lausanne: Path) -> None:
    """README section 1: a 4-band uint8 GeoTIFF written without colour interpretation has its
    4th band (near-infrared) tagged alpha; ingest --bands 1,2,3,4 keeps it, so the model reads
    red, green, blue, alpha. Segmenting that very raster must feed it all four bands."""
    with rasterio.open(lausanne) as src:
        rgb = src.read()
    rgbir = write_raster(tmp_path / "rgbir.tif", np.concatenate([rgb, rgb[1:2] // 2 + 40]))
    with rasterio.open(rgbir) as src:
        assert src.colorinterp[3].name == "alpha"
    model = make_bundle(tmp_path / "m4", ["red", "green", "blue", "alpha"], "uint8", 100.0, 50.0)
    (result,) = segment(model, [rgbir], tmp_path / "out", SegmentConfig(vectorize=False), progress=False)
    with rasterio.open(result.clusters) as out:
        assert np.all(out.read(1) < K)
    with pytest.raises(InputError, match=r"1091-322_00\.tif has 3 bands.*expects 4"):
        segment(model, [lausanne], tmp_path / "out3", progress=False)


def test_a_failed_segment_removes_only_an_empty_out_folder_it_created(tmp_path: Path, lausanne: Path) -> None:
    """The run fails after it created --out (bands that do not match the model): the folder
    it created (and its created parent) goes; a folder that was there, empty or not, stays."""
    one_band = make_bundle(tmp_path / "one", ["gray"], "uint8", 100.0, 50.0)

    def fails(out: Path) -> None:
        assert main(["segment", str(one_band), str(lausanne), "--out", str(out), "--quiet"]) == 2

    fails(tmp_path / "new" / "predictions")
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    fails(empty)
    assert empty.is_dir() and list(empty.iterdir()) == []
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    fails(kept)
    assert [p.name for p in kept.iterdir()] == ["notes.txt"] and (kept / "notes.txt").read_text() == "mine"
    fails(kept / "inside")  # created inside a user's folder: removed, the user's folder kept
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]


def test_missing_model_files_are_clear_errors(tmp_path: Path, rgb_model: Path, lausanne: Path) -> None:
    no_weights = shutil.copytree(rgb_model, tmp_path / "no_weights")
    (no_weights / "weights.safetensors").unlink()
    with pytest.raises(InputError, match=r"weights\.safetensors"):
        segment(no_weights, [lausanne], tmp_path / "out", progress=False)
    no_meta = shutil.copytree(rgb_model, tmp_path / "no_meta")
    (no_meta / "model.json").unlink()
    with pytest.raises(InputError, match=r"model\.json"):
        segment(no_meta, [lausanne], tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="source not found"):
        segment(rgb_model, [tmp_path / "absent.tif"], tmp_path / "out", progress=False)


def test_corrupt_rasters_are_clear_errors_and_leave_nothing(
    tmp_path: Path, rgb_model: Path, lausanne: Path
) -> None:
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    with pytest.raises(InputError, match=r"garbage\.tif"):
        segment(rgb_model, [garbage], tmp_path / "out", progress=False)
    # a real GeoTIFF cut in half: the header opens, the pixel data is gone
    source = crop(lausanne, tmp_path / "whole.tif", Window(0, 0, 400, 300))
    truncated = tmp_path / "truncated.tif"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(InputError, match=r"truncated\.tif"):
        segment(rgb_model, [truncated], tmp_path / "out", progress=False)
    leftovers = list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else []
    assert leftovers == [], f"nothing half-written may remain: {leftovers}"


def test_every_source_is_checked_against_the_model_before_the_first_is_segmented(
    tmp_path: Path, rgb_model: Path, lausanne: Path
) -> None:
    gray = write_raster(tmp_path / "gray.tif", np.zeros((1, 64, 64), np.uint8))
    tiny = write_raster(tmp_path / "tiny.tif", np.zeros((3, 4, 64), np.uint8))
    for wrong, reason in ((gray, "has 1 band"), (tiny, "too small to segment")):
        with pytest.raises(InputError, match=f"{wrong.name} (is 4x64 pixels: )?{reason}"):
            segment(rgb_model, [lausanne, wrong], tmp_path / "out", progress=False)
        assert not (tmp_path / "out").exists()  # the good raster was not segmented first


def test_config_is_validated(rgb_model: Path, lausanne: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        segment(rgb_model, [lausanne], tmp_path, SegmentConfig(overlap=0.95), progress=False)


def test_cli_segment_and_its_errors(tmp_path: Path, rgb_model: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    source = write_raster(tmp_path / "tiny.tif", rng.integers(0, 255, (3, 70, 90), dtype=np.uint8))
    out = tmp_path / "out"
    rc = main(["segment", str(rgb_model), str(source), "--out", str(out), "--overlap", "0.5", "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "tiny_clusters.tif"), str(out / "tiny_polygons.gpkg")]
    assert json.loads((out / "tiny_prediction.json").read_text())["type"] == "Feature"
    rc = main(["segment", str(tmp_path / "nowhere"), str(source), "--out", str(out), "--quiet"])
    assert rc == 2 and f"model bundle not found: {tmp_path / 'nowhere'}" in capsys.readouterr().err
    rc = main(["segment", str(source), str(source), "--out", str(out), "--quiet"])  # a .tif as the model
    assert rc == 2 and f"{source} is not a model bundle (no model.json)" in capsys.readouterr().err
    rc = main(["segment", str(tmp_path), str(source), "--out", str(out), "--quiet"])  # a folder, no bundle
    assert rc == 2 and f"{tmp_path} is not a model bundle (no model.json)" in capsys.readouterr().err


def test_cli_segments_a_folder_of_rasters_as_ingest_takes_it(
    tmp_path: Path, rgb_model: Path, shared_data: Path, capsys: pytest.CaptureFixture
) -> None:
    """`geoseg segment model/ survey/images --out p/` (the folder `geoseg ingest` was given)
    said "source not found" of a folder that exists: its rasters are segmented, in order; a
    folder without rasters is one line naming it."""
    survey = tmp_path / "survey"
    survey.mkdir()
    tiles = sorted((shared_data / "lausanne" / "img").glob("*.tif"))[:2]
    for tile in tiles:
        shutil.copy(tile, survey / tile.name)
    out = tmp_path / "out"
    assert main(["segment", str(rgb_model), str(survey), "--out", str(out), "--no-vectorize", "--quiet"]) == 0
    assert capsys.readouterr().out.split() == [str(out / f"{t.stem}_clusters.tif") for t in tiles]
    for tile in tiles:
        with rasterio.open(out / f"{tile.stem}_clusters.tif") as ds, rasterio.open(tile) as src:
            assert ds.crs == src.crs and ds.transform == src.transform
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["segment", str(rgb_model), str(empty), "--out", str(tmp_path / "o2"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no rasters" in err and str(empty) in err and "Traceback" not in err
    assert not (tmp_path / "o2").exists()


def test_crs_less_sources_are_reported_once_each_in_our_words(
    rgb_model: Path,
    shared_data: Path,
    tmp_path: Path,
    recwarn: pytest.WarningsRecorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A real Dubai JPEG and a crop of the LoveDA PNG (no CRS, no geotransform): one warning
    of ours per source, naming it; no rasterio NotGeoreferencedWarning (reading, writing the
    COGs) nor pyogrio's "'crs' was not provided" (the GeoPackage) reaches the user. The
    outputs are on the source's pixel grid as QGIS places it (no CRS, no geotransform:
    extent 0, -H : W, 0), the polygons too, so all overlay the source in QGIS."""
    jpeg = shared_data / "dubai" / "tile1" / "images" / "image_part_001.jpg"
    with rasterio.open(shared_data / "loveda" / "0_rgb.png") as src:
        data = src.read(window=Window(0, 0, 160, 96))
    png = tmp_path / "loveda_crop.png"
    with create_raster(
        png, {"driver": "PNG", "width": 160, "height": 96, "count": 3, "dtype": "uint8"}
    ) as dst:
        dst.write(data)
    recwarn.clear()
    caplog.set_level("WARNING", logger="geoseg")
    results = segment(rgb_model, [jpeg, png], tmp_path / "out", SegmentConfig(batch_size=16), progress=False)
    ours = [r.getMessage() for r in caplog.records if "has no georeferencing" in r.getMessage()]
    assert sorted(ours) == sorted(
        f"{p} has no georeferencing: its outputs are in pixel coordinates without a CRS "
        "(QGIS shows them with an unknown CRS until one is set)"
        for p in (jpeg, png)
    )
    noise = [
        w
        for w in recwarn
        if issubclass(w.category, NotGeoreferencedWarning) or "'crs' was not" in str(w.message)
    ]
    assert not noise, [str(w.message) for w in noise]
    for result, (height, width) in zip(results, [(644, 797), (96, 160)], strict=True):
        for cog in (result.clusters, result.confidence):
            with pytest.warns(NotGeoreferencedWarning, match="no geotransform"), rasterio.open(cog) as out:
                assert out.crs is None and out.shape == (height, width)
            assert validate_cog(cog)[0]
        info = pyogrio.read_info(result.gpkg)
        assert info["crs"] is None and np.allclose(info["total_bounds"], [0, -height, width, 0])


def test_an_error_mid_raster_is_a_line_of_its_own_after_the_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A raster damaged past its header fails while the bar is shown: the bar is closed first."""
    bundle = make_bundle(tmp_path / "model", ["red", "green", "blue"], "uint8", 100.0, 50.0)
    tif = write_raster(tmp_path / "cut.tif", np.full((3, 300, 300), 90, np.uint8))
    tif.write_bytes(tif.read_bytes()[: tif.stat().st_size // 2])  # truncated: the lower half is gone
    assert main(["segment", str(bundle), str(tif), "--out", str(tmp_path / "out")]) == 2
    lines = [
        line.strip() for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()
    ]
    assert lines[-1].startswith("geoseg segment: error: unreadable or corrupt raster"), lines
    assert "previous exception" not in lines[-1]  # GDAL's own reason, not rasterio's pointer to it


@pytest.mark.parametrize("inside", [True, False], ids=["model-in-run-folder", "model-elsewhere"])
def test_model_provenance_names_no_machine_path(tmp_path: Path, inside: bool) -> None:
    """The STAC item's ``geoseg:model`` follows the href rule (relative inside the run
    folder, absolute outside); the COG's ``GEOSEG_MODEL`` tag is the model's content id
    (the run catalog's model item id), never a path of this machine."""
    run = tmp_path / "run"
    model_home = run if inside else tmp_path / "elsewhere"
    model = make_bundle(model_home / "model", ["red", "green", "blue"], "uint8", 110.0, 50.0)
    rng = np.random.default_rng(2)
    source = write_raster(tmp_path / "tiny.tif", rng.integers(0, 255, (3, 70, 90), dtype=np.uint8))
    (result,) = segment(model, [source], run / "predictions", SegmentConfig(vectorize=False), progress=False)
    item = json.loads(result.stac_item.read_text())
    expected = "../model" if inside else str(model.resolve())
    assert item["properties"]["geoseg:model"] == expected
    with rasterio.open(result.clusters) as src:
        tag = src.tags()["GEOSEG_MODEL"]
    assert tag == model_id(model)
    assert str(tmp_path) not in tag and "/" not in tag


def test_segmenting_a_folder_into_itself_twice_skips_its_own_outputs(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """`geoseg segment MODEL tiles/ --out tiles/`, then the same command again (or an ingest
    of the folder): the folder's listing held the first run's `_clusters.tif`,
    `_confidence.tif` and `_preview.png`, so the second run took them for sources and
    failed with `tiles/X_clusters.tif has 1 band (alpha excluded) but model ... expects 3`
    (and ingest with mixed band counts). geoseg's own outputs beside their source are now
    left out of a folder's rasters, with one INFO line saying so; a user's raster that
    merely ends in `_clusters` (no source of that stem beside it) is still a source."""
    from geoseg.cli import main
    from geoseg.io.sources import discover_sources

    tiles = tmp_path / "tiles"
    tiles.mkdir()
    for i in (0, 5):
        shutil.copy(shared_data / "lausanne" / "img" / f"1091-322_{i:02d}.tif", tiles)
    model = make_bundle(tmp_path / "model", ["red", "green", "blue"], "uint8", 110.0, 50.0, patch=64)
    args = ["segment", str(model), str(tiles), "--out", str(tiles)]
    assert main(args) == 0
    assert (tiles / "1091-322_00_clusters.tif").is_file() and (tiles / "1091-322_05_preview.png").is_file()
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="geoseg.io.sources"):
        assert main(args) == 0, capsys.readouterr().err
    assert "skipping 6 output rasters that geoseg wrote there" in caplog.text, caplog.text
    assert not list(tiles.glob("*_clusters_clusters.tif")) and not list(tiles.glob("*_preview_*"))
    assert discover_sources([tiles]) == sorted(tiles.glob("1091-322_0?.tif"))
    assert main(["ingest", str(tiles), "--out", str(tmp_path / "s.zarr"), "--patch-size", "64"]) == 0
    # a raster of the user's own that is named like an output, with no source beside it
    shutil.copy(tiles / "1091-322_00.tif", tiles / "roads_clusters.tif")
    assert tiles / "roads_clusters.tif" in discover_sources([tiles])
