"""geoseg.io.sources: discovery (files, folders, STAC), safe opening, scaled windowed reads."""

from __future__ import annotations

import datetime
import itertools
import logging
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from hypothesis import given
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from geoseg.errors import InputError
from geoseg.io.sources import (
    discover_sources,
    grid_size,
    open_dataset,
    open_raster,
    patch_offsets,
    read_scaled,
    report_georeferencing,
)
from geoseg.stac.items import raster_item, save_catalog


def test_discover_files_folders_and_stac(shared_data: Path, tmp_path: Path) -> None:
    tiles = sorted((shared_data / "lausanne" / "img").glob("*.tif"))
    neon = shared_data / "neon" / "OSBS_029.tif"
    assert discover_sources([shared_data / "lausanne" / "img", neon]) == [*tiles, neon]
    catalog = pystac.Catalog(id="survey", description="two rasters")
    for path in (tiles[0], neon):
        catalog.add_item(raster_item(path))
    root = save_catalog(catalog, tmp_path / "cat")
    found = discover_sources([root])
    assert sorted(p.resolve() for p in found) == sorted([tiles[0].resolve(), neon.resolve()])
    item_file = next((tmp_path / "cat").glob("*/*.json"))
    assert len(discover_sources([item_file])) == 1


def test_discover_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nowhere"):
        discover_sources([tmp_path / "nowhere.tif"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        discover_sources([tmp_path / "empty"])
    (tmp_path / "notstac.json").write_text('{"hello": 1}')
    with pytest.raises(InputError, match=r"notstac\.json"):
        discover_sources([tmp_path / "notstac.json"])


def test_open_raster_geotiff_and_plain_image(shared_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    neon = open_raster(shared_data / "neon" / "OSBS_029.tif")
    assert neon.nodata == 255 and neon.bands == (1, 2, 3) and neon.dtype == "uint8"
    assert neon.crs is not None and neon.crs.to_epsg() == 32617
    pan = open_raster(shared_data / "spacenet" / "sample_geotiff.tif")
    assert pan.bands == (1,) and pan.dtype == "uint16" and pan.nodata == 0
    with caplog.at_level(logging.WARNING, logger="geoseg.io.sources"):
        jpeg = open_raster(shared_data / "dubai" / "tile1" / "images" / "image_part_001.jpg")
    assert jpeg.crs is None and jpeg.transform == Affine.identity()
    assert not caplog.records  # describing is silent: each stage reports a source once
    with pytest.raises(InputError, match="cannot select band"):
        open_raster(shared_data / "neon" / "OSBS_029.tif", bands=(1, 4))


def test_corrupt_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "truncated.tif"
    bad.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(InputError, match=r"truncated\.tif"):
        open_raster(bad)
    with pytest.raises(InputError, match=r"gone\.tif"):
        open_dataset(tmp_path / "gone.tif")


def test_read_scaled_exact_and_alpha_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (4, 60, 80), dtype=np.uint8)
    data[3] = 255
    data[3, 10:20, 30:50] = 0  # transparent block
    path = tmp_path / "rgba.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=80, height=60, count=4, dtype="uint8", photometric="RGB", alpha="YES",
        crs="EPSG:2056", transform=Affine(1, 0, 2_600_000, 0, -1, 1_200_000),
    ) as dst:  # fmt: skip
        dst.write(data)
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.alpha
    info = open_raster(path)
    assert info.bands == (1, 2, 3), "alpha is a mask, not a band"
    with open_dataset(path) as src:
        pixels, valid = read_scaled(src, info, 1.0, 5, 25, 30, 40)
        assert np.array_equal(pixels, src.read((1, 2, 3), window=Window(25, 5, 40, 30)))
    assert np.array_equal(valid, data[3, 5:35, 25:65] > 0)
    assert (~valid).sum() == 10 * 20
    # Half scale: the grid halves, its pixels double, the corner stays.
    assert info.scaled_shape(0.5) == (30, 40)
    assert info.scaled_transform(0.5) == Affine(2, 0, 2_600_000, 0, -2, 1_200_000)


@given(length=st.integers(1, 3000), patch=st.integers(8, 512), stride_frac=st.floats(0.1, 1.0))
def test_patch_offsets_cover_the_axis(length: int, patch: int, stride_frac: float) -> None:
    stride = max(1, int(patch * stride_frac))
    starts = patch_offsets(length, patch, stride)
    assert len(starts) == grid_size(length, patch, stride)
    if length < patch:
        assert starts == []
        return
    assert starts[0] == 0 and all(b - a == stride for a, b in itertools.pairwise(starts))
    assert starts[-1] + patch >= length, "the last patch reaches the edge"
    assert starts[-1] < length and (len(starts) == 1 or starts[-2] + patch < length)


def test_report_georeferencing_says_what_the_outputs_will_be(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="geoseg.io.sources"):
        report_georeferencing(Path("geo.tif"), CRS.from_epsg(2056), Affine(0.5, 0, 0, 0, -0.5, 0))
        report_georeferencing(Path("photo.jpg"), None, Affine.identity())
        report_georeferencing(Path("top.png"), None, Affine(0.09, 0, 496000, 0, -0.09, 5420000))
    assert [r.getMessage() for r in caplog.records] == [
        "photo.jpg has no georeferencing: its outputs are in pixel coordinates without a CRS "
        "(QGIS shows them with an unknown CRS until one is set)",
        "top.png has no CRS: its outputs keep its world-file transform without a CRS "
        "(QGIS shows them with an unknown CRS until one is set)",
    ]


@pytest.mark.filterwarnings("error::PendingDeprecationWarning")
@pytest.mark.filterwarnings("error::DeprecationWarning")
def test_scaled_transform_uses_no_deprecated_affine_operator(shared_data: Path) -> None:
    """affine 3 deprecates ``*`` between two matrices (``@`` instead): the scaled grid of a
    real raster is computed without the warning the test log showed."""
    info = open_raster(shared_data / "lausanne" / "img" / "1091-322_00.tif")
    scaled = info.scaled_transform(0.5)
    height, width = info.scaled_shape(0.5)
    assert (scaled.c, scaled.f) == (info.transform.c, info.transform.f)  # the same corner
    assert scaled.a == pytest.approx(info.transform.a * info.width / width)
    assert scaled.e == pytest.approx(info.transform.e * info.height / height)


def test_a_truncated_png_is_refused_not_read_as_zeros(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ISPRS PNG cut after 5000 bytes: GDAL reads the whole raster without an error (the
    first rows, then zeros), so `geoseg segment` and `geoseg baseline kmeans` wrote a cluster
    map of it and exited 0, while ingest failed on it. Every reader now refuses it, naming it."""
    from geoseg.cli import main
    from geoseg.io.sources import open_dataset, open_raster

    whole = shared_data / "isprs" / "vaihingen_area1_0_0_512_512_irrg.png"
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:5000])
    for reader in (open_dataset, open_raster):
        with pytest.raises(InputError, match=rf"unreadable or corrupt raster {cut}: .*IReadBlock failed"):
            reader(cut)
    with open_dataset(whole) as src:  # an intact PNG opens as before, and reads whole
        assert src.read().shape == (3, 512, 512)
    assert main(["baseline", "kmeans", str(cut), "--k", "3", "--out", str(tmp_path / "km")]) == 2
    err = capsys.readouterr().err
    assert f"unreadable or corrupt raster {cut}" in err and "Traceback" not in err, err
    assert not (tmp_path / "km" / "cut_clusters.tif").exists()


def test_a_vrt_naming_a_missing_file_is_refused_before_any_store_is_written(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A VRT over the Lausanne tiles, one of which was since removed (here: a relative VRT
    whose second tile is gone). GDAL opens the VRT, so ingest planned it, wrote the shards
    before the missing tile and failed in a shard task, leaving an incomplete store beside
    a message that said "unreadable or corrupt raster". Every reader now refuses it on open,
    naming the missing file and what to do, and ingest creates no store."""
    import shutil
    import subprocess

    from geoseg.cli import main
    from geoseg.io.sources import open_dataset, open_raster

    tiles = sorted((shared_data / "lausanne" / "img").glob("*.tif"))[:3]
    folder = tmp_path / "mosaic"
    folder.mkdir()
    for tile in tiles:
        shutil.copy(tile, folder / tile.name)
    subprocess.run(["gdalbuildvrt", "-q", "m.vrt", *(t.name for t in tiles)], cwd=folder, check=True)
    vrt = folder / "m.vrt"
    with open_dataset(vrt) as src:  # complete: opens and reads as before
        assert src.read().shape[0] == 3
    (folder / tiles[1].name).unlink()
    missing = folder / tiles[1].name
    for reader in (open_dataset, open_raster):
        with pytest.raises(InputError, match=rf"VRT {vrt} reads {missing}, which does not exist: restore"):
            reader(vrt)
    store = tmp_path / "s.zarr"
    assert main(["ingest", str(vrt), "--out", str(store), "--patch-size", "64"]) == 2
    err = capsys.readouterr().err
    assert f"reads {missing}, which does not exist" in err and "Traceback" not in err, err
    assert not store.exists()


def test_a_pattern_that_matched_nothing_is_named_as_one(tmp_path: Path) -> None:
    """`geoseg ingest 'tiles/*.tiff' ...` (the tiles are .tif): the shell passes the pattern
    on unexpanded; ingest and segment said only `source not found: tiles/*.tiff`, while
    evaluate's --labels said what probably happened. A plain missing path gets no hint."""
    from geoseg.io.sources import discover_sources

    with pytest.raises(
        InputError, match=r"source not found: .*\*\.tiff \(a shell pattern that matched nothing\?\)$"
    ):
        discover_sources([tmp_path / "*.tiff"])
    with pytest.raises(InputError, match=r"source not found: .*missing\.tif$"):
        discover_sources([tmp_path / "missing.tif"])


def test_a_stac_item_pointing_at_a_missing_file_names_the_stac_file(tmp_path: Path) -> None:
    """`geoseg ingest item.json` whose asset href was mistyped (`OSBS_0299.tif`) said only
    `raster not found: .../OSBS_0299.tif`, not which file pointed there."""
    from geoseg.io.sources import discover_sources

    item = pystac.Item("neon", None, None, datetime.datetime(2020, 1, 1), {})
    item.add_asset("image", pystac.Asset(str(tmp_path / "OSBS_0299.tif"), roles=["data"]))
    path = tmp_path / "item.json"
    item.save_object(include_self_link=False, dest_href=str(path))
    with pytest.raises(
        InputError,
        match=rf"STAC file {path}: item neon points at {tmp_path}/OSBS_0299.tif, which does not exist: fix",
    ):
        discover_sources([path])
    assert discover_sources([path], check_stac_hrefs=False) == [
        tmp_path / "OSBS_0299.tif"
    ]  # the flows' order
