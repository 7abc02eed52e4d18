"""Baselines: k-means and random-network cluster rasters written like their sources."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

from geoseg import metrics
from geoseg.baseline import kmeans_baseline, random_net_baseline
from geoseg.cli import main
from geoseg.config import BaselineConfig
from geoseg.errors import InputError

CRS_UTM = CRS.from_epsg(32617)
TRANSFORM = from_origin(400000, 3300000, 0.1, 0.1)


def _regions(shape: tuple[int, int]) -> np.ndarray:
    """Three regions (ids 0..2): top, bottom left, bottom right."""
    rows, cols = np.indices(shape)
    bottom = rows > shape[0] // 2
    return np.where(bottom, 1 + (cols > shape[1] * 2 // 3), 0).astype(np.uint8)


def _multiband(
    path: Path, shape: tuple[int, int] = (90, 120), seed: int = 0, nodata: int = 0
) -> tuple[Path, np.ndarray]:
    """4-band uint16 raster whose regions differ in every band; a nodata corner."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    regions = _regions(shape)
    centres = np.array([[300, 900, 500, 2000], [1500, 400, 800, 600], [800, 800, 3000, 1200]], np.float64)
    data = centres[regions].transpose(2, 0, 1) + rng.normal(0, 40, (4, *shape))
    data = np.clip(data, 1, 65535).astype(np.uint16)
    data[:, :10, :10] = nodata
    profile = {
        "driver": "GTiff",
        "width": shape[1],
        "height": shape[0],
        "count": 4,
        "dtype": "uint16",
        "nodata": nodata,
        "crs": CRS_UTM,
        "transform": TRANSFORM,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path, regions


def test_kmeans_recovers_regions_on_the_source_grid(tmp_path: Path) -> None:
    src, regions = _multiband(tmp_path / "scene.tif")
    (out,) = kmeans_baseline([src], tmp_path / "out", BaselineConfig(k=3, seed=1, fit_pixels=5000))
    assert out == tmp_path / "out" / "scene_clusters.tif"
    with rasterio.open(out) as ds:
        assert ds.crs == CRS_UTM and ds.transform == TRANSFORM
        assert ds.dtypes[0] == "uint8" and ds.nodata == 255 and ds.count == 1
        assert ds.colormap(1)[0][:3] != ds.colormap(1)[1][:3]
        ids = ds.read(1)
    assert (ids[:10, :10] == 255).all()  # source nodata stays nodata
    assert "paletted" in out.with_suffix(".qml").read_text()  # a QGIS style beside it
    with Image.open(tmp_path / "out" / "scene_preview.png") as png:  # a preview to look at
        assert png.size[1] == 90 and png.size[0] > 120  # the map at source size, a legend beside it
        assert np.asarray(png.convert("RGB"))[:10, :10].max() == 0  # nodata is black
    valid = np.ones(ids.shape, bool)
    valid[:10, :10] = False
    assert set(np.unique(ids[valid])) <= {0, 1, 2}
    table = metrics.confusion_matrix(np.where(valid, ids, 255), np.where(valid, regions, 255))[:3, :3]
    assert metrics.ari(table) == pytest.approx(1.0)  # well separated regions: a perfect partition


def test_kmeans_is_seeded_and_fits_on_another_set(tmp_path: Path) -> None:
    a, _ = _multiband(tmp_path / "a.tif", seed=0)
    b, _ = _multiband(tmp_path / "b.tif", seed=1)
    cfg = BaselineConfig(k=3, seed=4, fit_pixels=5000)
    (first,) = kmeans_baseline([b], tmp_path / "one", cfg, fit_on=[a])
    (second,) = kmeans_baseline([b], tmp_path / "two", cfg, fit_on=[a])
    with rasterio.open(first) as x, rasterio.open(second) as y:
        assert np.array_equal(x.read(1), y.read(1))


def test_png_source_gives_plain_geotiff(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 255, (40, 50, 3))
    rgba[..., 3] = 255
    rgba[:5, :, 3] = 0  # transparent rows: nodata in the output
    Image.fromarray(rgba, "RGBA").save(tmp_path / "photo.png")
    assert (
        main(["baseline", "kmeans", str(tmp_path / "photo.png"), "--k", "4", "--out", str(tmp_path / "o")])
        == 0
    )
    with rasterio.open(tmp_path / "o" / "photo_clusters.tif") as ds:
        assert ds.crs is None and ds.transform.is_identity
        assert (ds.width, ds.height) == (50, 40)
        ids = ds.read(1)
    assert (ids[:5] == 255).all() and (ids[5:] < 4).all()


def test_bad_inputs(tmp_path: Path) -> None:
    a, _ = _multiband(tmp_path / "x" / "same.tif")
    b, _ = _multiband(tmp_path / "y" / "same.tif")
    with pytest.raises(InputError, match="same"):
        kmeans_baseline([a, b], tmp_path / "o", BaselineConfig(k=3))
    with pytest.raises(InputError, match="fewer than the 5"):
        kmeans_baseline([a], tmp_path / "o", BaselineConfig(k=3, bands=5))
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError, match="band"):
        kmeans_baseline([tmp_path / "rgb.png"], tmp_path / "o", BaselineConfig(k=3), fit_on=[a])
    assert (
        main(["baseline", "kmeans", str(tmp_path / "nope.tif"), "--k", "3", "--out", str(tmp_path / "o")])
        == 2
    )
    assert not list((tmp_path / "o").glob("*clusters.tif"))  # nothing half-written


def test_baselines_take_a_folder_of_rasters(shared_data: Path, tmp_path: Path) -> None:
    """`geoseg baseline kmeans images/ --k 5 --out kmeans/` said "source not found" of the
    folder that `geoseg ingest` takes: each of its rasters gets its cluster raster."""
    images = shared_data / "dubai" / "tile1" / "images"
    out = tmp_path / "kmeans"
    assert main(["baseline", "kmeans", str(images), "--k", "3", "--out", str(out)]) == 0
    stems = sorted(p.stem for p in images.glob("*.jpg"))
    assert sorted(p.name for p in out.glob("*_clusters.tif")) == [f"{s}_clusters.tif" for s in stems]
    with rasterio.open(out / f"{stems[0]}_clusters.tif") as ds, Image.open(images / f"{stems[0]}.jpg") as img:
        assert (ds.width, ds.height) == img.size


def test_random_net_on_real_crop(shared_data: Path, tmp_path: Path) -> None:
    """A seeded random IIC network over the ISPRS crop, tiled with context margins."""
    with Image.open(shared_data / "isprs" / "vaihingen_area1_0_0_512_512_irrg.png") as img:
        crop = np.asarray(img.convert("RGB"))[:160, :200]
    Image.fromarray(crop).save(tmp_path / "crop.png")
    cfg = BaselineConfig(k=5, seed=3, tile=96, margin=16)
    (out,) = random_net_baseline([tmp_path / "crop.png"], tmp_path / "a", cfg)
    (again,) = random_net_baseline([tmp_path / "crop.png"], tmp_path / "b", cfg)
    with rasterio.open(out) as x, rasterio.open(again) as y:
        ids, ids2 = x.read(1), y.read(1)
        assert (x.width, x.height) == (200, 160)
    assert np.array_equal(ids, ids2)
    assert ids.max() < 5 and len(np.unique(ids)) >= 2  # a random net still splits real imagery
    assert (
        main(
            [
                "baseline",
                "random-net",
                str(tmp_path / "crop.png"),
                "--k",
                "5",
                "--out",
                str(tmp_path / "c"),
                "--bands",
                "4",
            ]
        )
        == 2
    )


def test_crs_less_sources_are_reported_once_each_without_rasterio_warnings(
    shared_data: Path, tmp_path: Path, recwarn: pytest.WarningsRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    """k-means on two real Dubai JPEGs: its checks run before the fit and again per raster
    written, yet each source is reported once, and rasterio's NotGeoreferencedWarning never
    reaches the user."""
    images = shared_data / "dubai" / "tile1" / "images"
    jpegs = [images / "image_part_001.jpg", images / "image_part_002.jpg"]
    caplog.set_level("WARNING", logger="geoseg")
    kmeans_baseline(jpegs, tmp_path / "o", BaselineConfig(k=4, fit_pixels=5000))
    ours = [r.getMessage() for r in caplog.records if "has no georeferencing" in r.getMessage()]
    assert sorted(ours) == sorted(
        f"{p} has no georeferencing: its outputs are in pixel coordinates without a CRS "
        "(QGIS shows them with an unknown CRS until one is set)"
        for p in jpegs
    )
    assert not [w for w in recwarn if issubclass(w.category, NotGeoreferencedWarning)]


def test_kmeans_writes_the_prediction_item_superpixels_writes(tmp_path: Path) -> None:
    """``baseline kmeans`` (CLI) writes a COG and ``<stem>_prediction.json``, the item segment and
    the superpixel baseline write: core STAC schema valid (pystac's bundled schemas, offline),
    the COG media type of the output contract, its style and preview as assets."""
    import json

    import pystac
    from pystac.validation import validate_dict

    from geoseg.io.cog import validate_cog
    from geoseg.io.outputs import COG_MEDIA_TYPE, OUTPUT_ASSETS

    src, _ = _multiband(tmp_path / "scene.tif")
    out = tmp_path / "out"
    assert main(["baseline", "kmeans", str(src), "--k", "3", "--out", str(out)]) == 0
    clusters, item_path = out / "scene_clusters.tif", out / "scene_prediction.json"
    assert validate_cog(clusters)[0]
    data = json.loads(item_path.read_text())
    validate_dict(data, extensions=[])  # raises on an invalid document
    item = pystac.Item.from_file(str(item_path))
    assert item.id == "scene-prediction" and item.properties["geoseg:method"] == "kmeans"
    assert item.assets["clusters"].media_type == COG_MEDIA_TYPE
    assert item.assets["clusters"].roles == ["data", "labels"]
    assert Path(item.assets["clusters"].get_absolute_href() or "") == clusters.resolve()
    for key in ("clusters_qml", "preview_png"):
        assert item.assets[key].media_type == OUTPUT_ASSETS[key][0]
        assert Path(item.assets[key].get_absolute_href() or "").is_file()
    links = {link.rel: link.get_absolute_href() for link in item.links}
    assert Path(links["derived_from"] or "") == src.resolve() and "via" not in links  # no model file
    assert "geoseg:model" not in item.properties
    classes = item.assets["clusters"].extra_fields["classification:classes"]
    assert [c["value"] for c in classes] == [0, 1, 2, 255]
    # the item is part of the published set: a rerun replaces it without --overwrite
    assert main(["baseline", "kmeans", str(src), "--k", "3", "--out", str(out)]) == 0


@pytest.mark.parametrize("method", ["kmeans", "random-net", "superpixels"])
def test_a_raster_damaged_past_its_header_is_one_line(
    method: str, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geoseg baseline kmeans cut.tif` (a GeoTIFF whose lower part is gone: it opens, then a
    window read fails) printed rasterio's traceback, exit 1; segment already said it in one line."""
    from tests.helpers import write_raster

    with rasterio.open(shared_data / "lausanne" / "big_img" / "1091-322_00.tif") as src:
        pixels = src.read()
    tif = write_raster(tmp_path / "cut.tif", pixels)
    tif.write_bytes(tif.read_bytes()[: tif.stat().st_size // 2])  # the lower half is gone
    assert main(["baseline", method, str(tif), "--k", "3", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "Traceback" not in err, err
    assert err.startswith(f"geoseg baseline: error: unreadable or corrupt raster {tif}"), err
    assert "previous exception" not in err  # GDAL's own reason
    assert not list((tmp_path / "out").glob("*_clusters.tif"))


def test_a_refused_baseline_leaves_no_empty_out_folder(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geoseg baseline superpixels neon.tif --k 200 --size 100 --out sp5` (16 superpixels at
    most) and `baseline kmeans` of a 1-band and a 3-band raster were refused in one line but
    left the empty folders sp5/ and km/ behind; segment and evaluate already removed theirs.
    A folder that was there before, and its files, stay."""
    neon, pan = shared_data / "neon" / "OSBS_029.tif", shared_data / "spacenet" / "sample_geotiff.tif"
    out = tmp_path / "new" / "sp5"
    argv = ["baseline", "superpixels", str(neon), "--k", "200", "--size", "100", "--out", str(out)]
    assert main(argv) == 2
    assert "more than the at most 16 superpixels" in capsys.readouterr().err
    assert not (tmp_path / "new").exists(), "neither --out nor the parent the run made"
    assert main(["baseline", "kmeans", str(pan), str(neon), "--k", "4", "--out", str(tmp_path / "km")]) == 2
    assert "use --bands N" in capsys.readouterr().err and not (tmp_path / "km").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine\n")
    assert main(["baseline", "random-net", str(pan), str(neon), "--k", "4", "--out", str(kept)]) == 2
    capsys.readouterr()
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]
