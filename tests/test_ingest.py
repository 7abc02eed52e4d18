"""geoseg ingest on real imagery (Lausanne, NEON, SpaceNet, Dubai) and generated bad inputs."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import zarr
from affine import Affine
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window, from_bounds

from geoseg.cli import main
from geoseg.config import IngestConfig
from geoseg.datasets import get_dataset
from geoseg.errors import ConfigError, InputError
from geoseg.ingest import PROGRESS_DIR, ingest
from geoseg.io.store import open_store
from tests.helpers import write_raster

NO_GEOREFERENCING = "its outputs are in pixel coordinates without a CRS (QGIS shows them with an unknown CRS until one is set)"

# the module itself (geoseg.ingest is the stage function: geoseg/__init__.py)
ingest_module = importlib.import_module("geoseg.ingest")

BIG = ("lausanne", "big_img", "1091-322_00.tif")
DUBAI_COLOURS = {  # the masks' true colours (../shared/data/README.md), written out independently
    (0x3C, 0x10, 0x98): "building",
    (0x84, 0x29, 0xF6): "land",
    (0x6E, 0xC1, 0xE4): "road",
    (0xFE, 0xDD, 0x3A): "vegetation",
    (0xE2, 0xA9, 0x29): "water",
}


def write_tif(
    path: Path, data: np.ndarray, nodata: float | None = None, crs: str | None = "EPSG:2056"
) -> Path:
    return write_raster(path, data, nodata, crs, origin=(2_600_000, 1_200_000))


def reassemble(store_path: Path, source: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Paste a store's patches of one source back onto its grid: (C, H, W) pixels and validity."""
    store = open_store(store_path)
    info, size = store.meta.sources[source], store.meta.patch_size
    canvas = np.zeros((store.num_bands, info.height + size, info.width + size), store.images.dtype)
    valid = np.zeros((info.height + size, info.width + size), bool)
    images, masks = store.images[:], store.valid[:]
    for i, (s, row, col) in enumerate(store.origin):
        if s == source:
            canvas[:, row : row + size, col : col + size] = images[i]
            valid[row : row + size, col : col + size] |= masks[i]
    return canvas[:, : info.height, : info.width], valid[: info.height, : info.width]


# --- real imagery -------------------------------------------------------------------------


def test_lausanne_reassembles_exactly_at_map_coordinates(tmp_path: Path, shared_data: Path) -> None:
    source = shared_data.joinpath(*BIG)
    config = IngestConfig(patch_size=64, min_valid=0.0, patches_per_shard=16)
    store_path = ingest([source], tmp_path / "big.zarr", config, progress=False)
    store = open_store(store_path)
    with rasterio.open(source) as src:
        pixels, transform, crs = src.read(), src.transform, src.crs
    # 875 x 600 px in 64 px patches: 14 x 10 patches, edges padded (600 = 9 * 64 + 24).
    assert store.num_patches == 14 * 10 and store.images.dtype == np.uint8
    assert store.images.shape[1:] == (3, 64, 64)
    canvas, valid = reassemble(store_path)
    assert np.array_equal(canvas, pixels), "reassembled patches differ from the source pixels"
    assert valid.all()
    # Padding is flagged: the bottom-right patch holds 875 - 832 = 43 by 600 - 576 = 24 valid pixels.
    last = int(np.argmax((store.origin[:, 1] == 576) & (store.origin[:, 2] == 832)))
    assert store.valid[last].sum() == 43 * 24 and store.valid[last][:24, :43].all()
    meta = store.meta.sources[0]
    assert rasterio.crs.CRS.from_wkt(meta.crs_wkt) == crs and meta.affine == transform
    # Each patch, placed by origin + the store's transform, is the source read at those map bounds.
    for i in range(0, store.num_patches, 7):
        _, row, col = store.origin[i]
        x0, y0 = meta.affine @ (col, row)
        x1, y1 = meta.affine @ (col + 64, row + 64)
        window = from_bounds(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1), transform).round_offsets()
        with rasterio.open(source) as src:
            part = src.read(window=window, boundless=True, fill_value=0)
        assert np.array_equal(part, store.images[i]), f"patch {i} is not at its map coordinates"
    # Per-band statistics over valid pixels.
    assert np.allclose(store.meta.band_mean, pixels.reshape(3, -1).mean(1))
    assert np.allclose(store.meta.band_std, pixels.reshape(3, -1).std(1))
    # A STAC catalog of the inputs beside the store.
    catalog = pystac.Catalog.from_file(str(tmp_path / "big.zarr.stac" / "catalog.json"))
    (item,) = list(catalog.get_items(recursive=True))
    assert Path(item.assets["image"].get_absolute_href()).resolve() == source.resolve()


def test_lausanne_tiles_folder_keeps_each_source_and_its_transform(tmp_path: Path, shared_data: Path) -> None:
    """A folder of 25 georeferenced tiles: origin's source index picks the tile, whose own
    transform (recorded per source) places the patch; pixels are the tile's exactly."""
    tiles = sorted((shared_data / "lausanne" / "img").glob("*.tif"))
    config = IngestConfig(patch_size=48, min_valid=0.9, patches_per_shard=32)
    store = open_store(
        ingest([shared_data / "lausanne" / "img"], tmp_path / "t.zarr", config, progress=False)
    )
    assert len(store.meta.sources) == 25 and store.num_patches == 25 * 2 * 3  # 175x120: 3 x 2 full patches
    images = store.images[:]
    for i, (s, row, col) in enumerate(store.origin):
        with rasterio.open(tiles[s]) as src:
            assert Path(store.meta.sources[s].path) == tiles[s].resolve()
            assert store.meta.sources[s].affine == src.transform
            assert np.array_equal(images[i], src.read(window=Window(col, row, 48, 48)))


def test_scale_half_resamples_on_read(tmp_path: Path, shared_data: Path) -> None:
    source = shared_data.joinpath(*BIG)
    config = IngestConfig(patch_size=64, scale=0.5, min_valid=0.0)
    store = open_store(ingest([source], tmp_path / "half.zarr", config, progress=False))
    meta = store.meta.sources[0]
    assert (meta.height, meta.width) == (300, 438) and meta.affine.a == pytest.approx(0.5 * 875 / 438)
    # Windowed reads stitch into exactly GDAL's bilinear resampling of the whole raster: no
    # seams or half-pixel shifts at patch borders.
    with rasterio.open(source) as src:
        whole = src.read(out_shape=(3, 300, 438), resampling=Resampling.bilinear)
        nearest = src.read(out_shape=(3, 300, 438), resampling=Resampling.nearest)
    canvas, valid = reassemble(store.path)
    assert valid.all() and np.array_equal(canvas, whole)
    assert not np.array_equal(canvas, nearest)


def test_neon_nodata_masked(tmp_path: Path, shared_data: Path) -> None:
    source = shared_data / "neon" / "OSBS_029.tif"
    store_path = ingest([source], tmp_path / "neon.zarr", IngestConfig(patch_size=50), progress=False)
    store = open_store(store_path)
    with rasterio.open(source) as src:
        pixels, nodata_valid = src.read(), np.all(src.read_masks() > 0, axis=0)
    assert (~nodata_valid).sum() > 1000, "the NEON tile has nodata (255) pixels"
    canvas, valid = reassemble(store_path)
    assert np.array_equal(valid, nodata_valid), "valid must be False exactly where a band is 255"
    assert np.array_equal(canvas, pixels)
    masked = np.moveaxis(pixels, 0, -1)[nodata_valid]
    assert np.allclose(store.meta.band_mean, masked.mean(0)), "statistics over valid pixels only"


def test_a_pixel_is_invalid_when_any_of_the_bands_read_equals_nodata(tmp_path: Path) -> None:
    """docs/usage-ingest.md: one band at nodata makes the pixel invalid; only the bands read
    (``--bands``) count."""
    data = np.full((3, 64, 64), 90, np.uint8)
    data[:, 5, 5] = (200, 0, 0)  # green and blue at nodata
    data[:, 6, 6] = (0, 90, 90)  # red at nodata
    source = write_raster(tmp_path / "red.tif", data, nodata=0)
    whole = ingest([source], tmp_path / "all.zarr", IngestConfig(patch_size=32), progress=False)
    _, valid = reassemble(whole)
    assert not valid[5, 5] and not valid[6, 6] and valid.sum() == 64 * 64 - 2
    red_only = ingest(
        [source], tmp_path / "red.zarr", IngestConfig(patch_size=32, bands=(1,)), progress=False
    )
    _, valid = reassemble(red_only)
    assert valid[5, 5] and not valid[6, 6] and valid.sum() == 64 * 64 - 1


def test_spacenet_stays_one_band_uint16(tmp_path: Path, shared_data: Path) -> None:
    source = shared_data / "spacenet" / "sample_geotiff.tif"
    store_path = ingest([source], tmp_path / "pan.zarr", IngestConfig(patch_size=100), progress=False)
    store = open_store(store_path)
    assert store.images.dtype == np.uint16 and store.images.shape[1:] == (1, 100, 100)
    assert store.meta.dtype == "uint16" and len(store.meta.band_names) == 1
    with rasterio.open(source) as src:
        pixels, nodata = src.read(), src.nodata
    canvas, valid = reassemble(store_path)
    assert np.array_equal(valid, pixels[0] != nodata)
    assert np.array_equal(np.where(valid, canvas[0], 0), np.where(valid, pixels[0], 0))
    assert max(store.meta.band_mean) > 255, "uint16 values kept, not squeezed to 8 bits"


def test_dubai_label_shares_match_an_independent_decoding(tmp_path: Path, shared_data: Path) -> None:
    images = sorted((shared_data / "dubai").glob("tile*/images/*.jpg"))
    masks = [p.parent.parent / "masks" / f"{p.stem}.png" for p in images]
    assert len(images) == 54
    config = IngestConfig(patch_size=128, min_valid=0.0, dataset="dubai", patches_per_shard=128)
    store = open_store(ingest(images, tmp_path / "dubai.zarr", config, labels=masks, progress=False))
    assert store.meta.sources[0].crs_wkt is None and store.meta.sources[0].affine == Affine.identity()
    labels = store.labels
    assert labels is not None and labels.dtype == np.uint8
    ids = labels[:][store.valid[:]]
    store_share = np.bincount(ids, minlength=256) / ids.size
    counts = dict.fromkeys([*DUBAI_COLOURS.values(), "ignore"], 0)
    total = 0
    for mask in masks:
        rgb = np.asarray(Image.open(mask).convert("RGB")).reshape(-1, 3)
        packed = (rgb[:, 0].astype(np.int64) << 16) | (rgb[:, 1].astype(np.int64) << 8) | rgb[:, 2]
        matched = np.zeros(len(packed), bool)
        for (r, g, b), name in DUBAI_COLOURS.items():
            hit = packed == (r << 16 | g << 8 | b)
            counts[name] += int(hit.sum())
            matched |= hit
        counts["ignore"] += int((~matched).sum())
        total += len(packed)
    for cid, name in enumerate(get_dataset("dubai").classes):
        assert abs(store_share[cid] - counts[name] / total) < 0.01, name
    assert abs(store_share[255] - counts["ignore"] / total) < 0.01
    # The data fact (not the README's 52.4% land / 13.6% water): land ~39%, water ~31%.
    assert abs(counts["land"] / total - 0.391) < 0.01 and abs(counts["water"] / total - 0.311) < 0.01


def test_world_file_raster_with_isprs_colour_labels(tmp_path: Path) -> None:
    """ISPRS as distributed: TIFFs without geotags beside .tfw world files, RGB-coded labels."""
    rng = np.random.default_rng(0)
    image = tmp_path / "top_potsdam_2_10_RGB.tif"
    label = tmp_path / "top_potsdam_2_10_label.tif"
    for path, data in (
        (image, rng.integers(0, 256, (3, 80, 96), dtype=np.uint8)),
        (label, np.zeros((3, 80, 96), np.uint8)),
    ):
        write_tif(path, data, crs=None)
        path.with_suffix(".tfw").write_text("0.05\n0\n0\n-0.05\n366000.025\n5808999.975\n")
    colours = np.array([[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]])
    truth = rng.integers(0, 6, (80, 96))
    with rasterio.open(label, "r+") as dst:
        dst.write(np.moveaxis(colours[truth], -1, 0).astype(np.uint8))
    config = IngestConfig(patch_size=32, min_valid=0.0, dataset="isprs")
    store = open_store(ingest([image], tmp_path / "p.zarr", config, labels=[label], progress=False))
    assert store.meta.sources[0].affine == Affine(0.05, 0, 366000.0, 0, -0.05, 5809000.0)
    assert store.meta.sources[0].crs_wkt is None
    assert store.labels is not None
    for i, (_, row, col) in enumerate(store.origin):
        h, w = min(32, 80 - row), min(32, 96 - col)
        assert np.array_equal(store.labels[i][:h, :w], truth[row : row + h, col : col + w])
        assert (store.labels[i][h:, :] == 255).all() and (store.labels[i][:, w:] == 255).all()


def test_potsdam_rgbir_world_file_band_selection(tmp_path: Path) -> None:
    """A 4-band RGBIR TIFF + .tfw (ISPRS Potsdam naming) keeps 4 bands; --bands 1,2,3 keeps RGB."""
    data = np.random.default_rng(5).integers(0, 256, (4, 64, 64), dtype=np.uint8)
    image = write_tif(tmp_path / "top_potsdam_2_10_RGBIR.tif", data, crs=None)
    with rasterio.open(image, "r+") as dst:  # GDAL tags a 4th uint8 band alpha; IR is not alpha
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined]
    image.with_suffix(".tfw").write_text("0.05\n0\n0\n-0.05\n366000.025\n5808999.975\n")
    common = [str(image), "--patch-size", "32", "--min-valid", "0"]
    assert main(["ingest", *common, "--out", str(tmp_path / "all.zarr")]) == 0
    assert main(["ingest", *common, "--bands", "1,2,3", "--out", str(tmp_path / "rgb.zarr")]) == 0
    full, rgb = open_store(tmp_path / "all.zarr"), open_store(tmp_path / "rgb.zarr")
    assert full.num_bands == 4 and rgb.num_bands == 3
    assert np.array_equal(np.asarray(rgb.images[:]), np.asarray(full.images[:])[:, :3])


# --- resuming, idempotence ----------------------------------------------------------------


def test_interrupted_ingest_resumes_skipping_done_shards(
    tmp_path: Path, shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = shared_data.joinpath(*BIG)
    config = IngestConfig(patch_size=64, min_valid=0.0, patches_per_shard=16, workers=1)  # 9 shards
    out = tmp_path / "r.zarr"
    real = ingest_module._write_shard
    written: list[int] = []

    def crash_on_shard_5(out: str, shard: int, *args: object) -> None:
        if shard == 5:
            raise KeyboardInterrupt("power cut")
        real(out, shard, *args)  # type: ignore[arg-type]
        written.append(shard)

    monkeypatch.setattr(ingest_module, "_write_shard", crash_on_shard_5)
    with pytest.raises(KeyboardInterrupt):
        ingest([source], out, config, progress=False)
    with pytest.raises(InputError, match="incomplete"):
        open_store(out)
    done = {int(p.stem) for p in (out / PROGRESS_DIR).glob("*.json")}
    assert 5 not in done and done == set(written) and len(done) >= 1

    resumed: list[int] = []

    def record(out: str, shard: int, *args: object) -> None:
        real(out, shard, *args)  # type: ignore[arg-type]
        resumed.append(shard)

    monkeypatch.setattr(ingest_module, "_write_shard", record)
    ingest([source], out, config, progress=False)
    assert sorted(resumed) == sorted(set(range(9)) - done), "complete shards are skipped"
    canvas, _ = reassemble(out)
    with rasterio.open(source) as src:
        assert np.array_equal(canvas, src.read())
    assert not (out / PROGRESS_DIR).exists()
    # A second run of the complete store writes nothing; other inputs never overwrite it.
    resumed.clear()
    ingest([source], out, config, progress=False)
    assert resumed == []
    with pytest.raises(ConfigError, match="other inputs"):
        ingest([shared_data / "neon" / "OSBS_029.tif"], out, config, progress=False)


def test_killed_ingest_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real interruption: the ingest process is SIGKILLed once a few shards are done."""
    rng = np.random.default_rng(2)
    source = write_tif(tmp_path / "scene.tif", rng.integers(0, 255, (3, 1024, 1024), dtype=np.uint8))
    out = tmp_path / "killed.zarr"
    config = IngestConfig(patch_size=16, patches_per_shard=8, workers=1)  # 4096 patches, 512 shards
    code = (
        "import sys; from geoseg.config import IngestConfig; from geoseg.ingest import ingest; "
        "ingest([sys.argv[1]], sys.argv[2], IngestConfig(patch_size=16, patches_per_shard=8, workers=1), "
        "progress=False)"
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(source), str(out)])
    deadline = time.monotonic() + 120

    def finished_shards() -> set[int]:
        # a marker is N.json; a kill in the middle of writing one leaves its hidden temporary
        folder = out / PROGRESS_DIR
        return {int(p.stem) for p in folder.glob("*.json") if p.stem.isdigit()} if folder.is_dir() else set()

    while not finished_shards():
        assert child.poll() is None and time.monotonic() < deadline, "ingest ended before it could be killed"
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with pytest.raises(InputError, match="incomplete"):
        open_store(out)
    done = finished_shards()
    assert 1 <= len(done) < 512
    real = ingest_module._write_shard
    written: list[int] = []

    def record(out: str, shard: int, *args: object) -> None:
        real(out, shard, *args)  # type: ignore[arg-type]
        written.append(shard)

    monkeypatch.setattr(ingest_module, "_write_shard", record)
    ingest([source], out, config, progress=False)
    assert sorted(written) == sorted(set(range(512)) - done)
    canvas, valid = reassemble(out)
    with rasterio.open(source) as src:
        assert valid.all() and np.array_equal(canvas, src.read())


def test_joins_a_dask_scheduler(tmp_path: Path, shared_data: Path) -> None:
    from distributed import Client, LocalCluster

    source = shared_data / "neon" / "OSBS_029.tif"
    config = IngestConfig(patch_size=50, patches_per_shard=8)
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        out = ingest([source], tmp_path / "d.zarr", config, dask_address=cluster.scheduler_address)
        assert client.scheduler_info()["workers"]
    local = ingest([source], tmp_path / "l.zarr", config, progress=False)
    assert np.array_equal(open_store(out).images[:], open_store(local).images[:])


def test_a_dask_scheduler_that_does_not_answer_is_one_line_and_no_store(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.flows.conftest import free_port

    address = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
    source = shared_data / "neon" / "OSBS_029.tif"
    started = time.monotonic()
    rc = main(
        [
            "ingest",
            str(source),
            "--out",
            str(tmp_path / "d.zarr"),
            "--patch-size",
            "50",
            "--dask-address",
            address,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and time.monotonic() - started < 30
    assert err[-1].startswith("geoseg ingest: error: no Dask scheduler answers at") and address in err[-1]
    assert not (tmp_path / "d.zarr").exists(), "no half-made store to refuse or resume later"


# --- bad input ----------------------------------------------------------------------------


def _bad_inputs(tmp_path: Path, shared_data: Path) -> dict[str, tuple[list[Path], list[Path] | None, str]]:
    """name -> (sources, labels, file the message must name)."""
    rng = np.random.default_rng(1)
    ok = write_tif(tmp_path / "ok.tif", rng.integers(0, 200, (3, 100, 100), dtype=np.uint8))
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + bytes(rng.integers(0, 256, 2000, dtype=np.uint8)))
    one_band = write_tif(tmp_path / "one_band.tif", rng.integers(0, 200, (1, 100, 100), dtype=np.uint8))
    tiny = write_tif(tmp_path / "tiny.tif", rng.integers(0, 200, (3, 40, 100), dtype=np.uint8))
    empty = write_tif(tmp_path / "all_nodata.tif", np.full((3, 100, 100), 255, np.uint8), nodata=255)
    truncated = tmp_path / "truncated.tif"  # a valid header, tiles cut off: fails only when read
    with rasterio.open(
        truncated, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8", crs="EPSG:2056",
        transform=Affine(1, 0, 0, 0, -1, 0), tiled=True, blockxsize=128, blockysize=128, compress="deflate",
    ) as dst:  # fmt: skip
        dst.write(rng.integers(0, 255, (3, 256, 256), dtype=np.uint8))
    with open(truncated, "r+b") as handle:
        handle.truncate(truncated.stat().st_size // 2)
    bad_label = tmp_path / "bad_label.png"
    bad_label.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    small_label = write_tif(tmp_path / "small_label.tif", np.zeros((1, 99, 100), np.uint8))
    return {
        "missing": ([tmp_path / "missing.tif"], None, "missing.tif"),
        "corrupt": ([corrupt], None, "corrupt.tif"),
        "truncated": ([truncated], None, "truncated.tif"),
        "mixed bands": ([ok, one_band], None, "one_band.tif"),
        "smaller than a patch": ([tiny], None, "tiny.tif"),
        "all nodata": ([empty], None, "all_nodata.tif"),
        "unreadable labels": ([ok], [bad_label], "bad_label.png"),
        "labels not aligned": ([ok], [small_label], "small_label.tif"),
        "missing labels": ([ok], [tmp_path / "no_label.png"], "no_label.png"),
    }


def test_bad_inputs_name_the_file_and_leave_no_complete_store(tmp_path: Path, shared_data: Path) -> None:
    for name, (sources, labels, culprit) in _bad_inputs(tmp_path, shared_data).items():
        out = tmp_path / f"{name.replace(' ', '_')}.zarr"
        with pytest.raises(InputError) as caught:
            ingest(sources, out, IngestConfig(patch_size=64), labels=labels, progress=False)
        assert culprit in str(caught.value), (name, str(caught.value))
        if out.exists():
            with pytest.raises(InputError):
                open_store(out)


def test_cli_exit_status_and_message(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture
) -> None:
    sources, labels, culprit = _bad_inputs(tmp_path, shared_data)["labels not aligned"]
    argv = ["ingest", *map(str, sources), "--out", str(tmp_path / "x.zarr"), "--patch-size", "64"]
    assert main([*argv, "--labels", *map(str, labels or [])]) == 2
    assert culprit in capsys.readouterr().err
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    store = open_store(out)
    assert store.meta.complete and store.num_patches == 3 and store.labels is None  # (0,0), (0,64), (64,0)
    meta = json.loads((Path(out) / "zarr.json").read_text())["attributes"]["geoseg"]
    assert meta["patch_size"] == 64 and meta["sources"][0]["sha256"]


# --- replacing a store ----------------------------------------------------------------------


def _cli_error(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    """Run ``geoseg`` in-process: (exit status, its one error line or '')."""
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) <= 1, err
    return rc, lines[0] if lines else ""


def _survey_ids(store: Path) -> set[str]:
    catalog = pystac.Catalog.from_file(str(store.with_name(store.name + ".stac") / "catalog.json"))
    return {item.id for item in catalog.get_items(recursive=True)}


def test_a_store_of_other_inputs_is_replaced_only_with_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    rng = np.random.default_rng(3)
    first = write_tif(tmp_path / "first.tif", rng.integers(0, 255, (3, 96, 96), dtype=np.uint8))
    second = write_tif(tmp_path / "second.tif", rng.integers(0, 255, (3, 64, 128), dtype=np.uint8))
    out = tmp_path / "survey.zarr"
    common = ["--out", out, "--patch-size", "32", "--workers", "1"]
    assert _cli_error(capsys, "ingest", first, *common) == (0, "")
    before = open_store(out).images[:]
    first_ids = _survey_ids(out)

    rc, line = _cli_error(capsys, "ingest", second, *common)
    assert rc == 2 and str(out) in line and "--overwrite" in line and "other inputs" in line
    kept = open_store(out)
    assert kept.meta.sources[0].path == str(first.resolve()) and np.array_equal(kept.images[:], before)

    assert _cli_error(capsys, "ingest", second, *common, "--overwrite") == (0, "")
    replaced = open_store(out)
    assert [s.path for s in replaced.meta.sources] == [str(second.resolve())]
    canvas, valid = reassemble(out)
    with rasterio.open(second) as src:
        assert valid.all() and np.array_equal(canvas, src.read())
    ids = _survey_ids(out)
    assert len(ids) == 1 and not ids & first_ids  # the catalog describes the new store only
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".survey.zarr.")] == []


def test_an_interrupted_store_of_other_inputs_is_refused_without_overwrite(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    first = write_tif(tmp_path / "first.tif", rng.integers(0, 255, (3, 64, 64), dtype=np.uint8))
    out = tmp_path / "s.zarr"
    config = IngestConfig(patch_size=32, workers=1)
    ingest([first], out, config, progress=False)
    group = zarr.open_group(str(out), mode="r+")  # as a run killed before its last write leaves it
    group.attrs["geoseg"] = {**dict(group.attrs)["geoseg"], "complete": False}  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=r"interrupted patch store of other inputs.*--overwrite"):
        ingest([first], out, IngestConfig(patch_size=16, workers=1), progress=False)
    assert open_store(out, require_complete=False).meta.patch_size == 32  # left as it was


def test_a_failed_overwrite_leaves_the_old_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    first = write_tif(tmp_path / "first.tif", rng.integers(0, 255, (3, 64, 64), dtype=np.uint8))
    second = write_tif(tmp_path / "second.tif", rng.integers(0, 255, (3, 64, 64), dtype=np.uint8))
    out = tmp_path / "s.zarr"
    config = IngestConfig(patch_size=16, patches_per_shard=4, workers=1)  # 16 patches, 4 shards
    ingest([first], out, config, progress=False)
    before = open_store(out).images[:]
    real = ingest_module._write_shard

    def fail_on_shard_2(out: str, shard: int, *args: object) -> None:
        if shard == 2:
            raise OSError(28, "No space left on device")
        real(out, shard, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ingest_module, "_write_shard", fail_on_shard_2)
    with pytest.raises(OSError, match="No space"):
        ingest([second], out, config, progress=False, overwrite=True)
    kept = open_store(out)  # still complete, still the first raster's
    assert kept.meta.sources[0].path == str(first.resolve()) and np.array_equal(kept.images[:], before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.tif", "s.zarr", "s.zarr.stac", "second.tif"]


def test_a_build_left_by_a_killed_overwrite_is_removed_by_the_next_run(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    source = write_tif(tmp_path / "a.tif", rng.integers(0, 255, (3, 64, 64), dtype=np.uint8))
    out = tmp_path / "s.zarr"
    dead = tmp_path / ".s.zarr.tmp-999999999.zarr"  # atomic_path's name, a PID that cannot run
    (dead / "images").mkdir(parents=True)
    user_file = tmp_path / ".s.zarr.tmp-notes"  # not a build's name: kept
    user_file.write_text("mine\n")
    other_store = tmp_path / ".t.zarr.tmp-999999999.zarr"  # another store's: not this run's to sweep
    other_store.mkdir()
    ingest([source], out, IngestConfig(patch_size=32, workers=1), progress=False)
    assert not dead.exists() and user_file.read_text() == "mine\n" and other_store.is_dir()


@pytest.mark.parametrize("foreign", ["folder of files", "zarr store of another tool", "file"])
def test_a_foreign_out_is_refused_even_with_overwrite(
    foreign: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    source = write_tif(tmp_path / "a.tif", np.random.default_rng(7).integers(0, 255, (3, 64, 64), np.uint8))
    out = tmp_path / "data.zarr"
    if foreign == "folder of files":
        out.mkdir()
        (out / "notes.txt").write_text("keep\n")
    elif foreign == "zarr store of another tool":
        zarr.open_group(str(out), mode="w", zarr_format=3).create_array("x", shape=(4,), dtype="uint8")
    else:
        out.write_text("keep\n")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file()}
    for flags in ([], ["--overwrite"]):
        rc, line = _cli_error(capsys, "ingest", source, "--out", out, "--patch-size", "32", *flags)
        assert rc == 2 and str(out) in line and "not a geoseg patch store" in line, line
    after = {p.relative_to(tmp_path): p.read_bytes() for p in [out, *out.rglob("*")] if p.is_file()}
    assert after == before and not out.with_name(out.name + ".stac").exists()


def test_crs_less_sources_reported_once_each_and_no_rasterio_warning_from_the_threads(
    tmp_path: Path, shared_data: Path, recwarn: pytest.WarningsRecorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Six real Dubai JPEGs (no CRS, no geotransform) with their masks, in many small shards
    that Dask's threads write at once: one warning of ours per source, naming it, and no
    NotGeoreferencedWarning (concurrent catch_warnings blocks used to let it through)."""
    images = [shared_data / "dubai" / f"tile{t}" / "images" / "image_part_001.jpg" for t in range(1, 7)]
    masks = [p.parent.parent / "masks" / "image_part_001.png" for p in images]
    config = IngestConfig(patch_size=128, min_valid=0.0, dataset="dubai", patches_per_shard=8)
    caplog.set_level("WARNING", logger="geoseg")
    ingest(images, tmp_path / "dubai.zarr", config, labels=masks, progress=False)
    ours = [r.getMessage() for r in caplog.records if "has no georeferencing" in r.getMessage()]
    assert sorted(ours) == sorted(f"{p} has no georeferencing: {NO_GEOREFERENCING}" for p in images)
    assert not [str(w.message) for w in recwarn if issubclass(w.category, NotGeoreferencedWarning)]


def test_labels_in_another_coding_than_the_dataset_are_refused_before_the_store(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geoseg ingest irrg.png --labels label.png --dataset potsdam3` (the Vaihingen crop's
    class-id labels, read as colour-coded) ended in a shard task's traceback, `ValueError:
    cannot reshape array ...`, and left an incomplete store. Now one line while planning,
    naming the label file and the dataset; no store."""
    isprs = shared_data / "isprs"
    image, label = (
        isprs / "vaihingen_area1_0_0_512_512_irrg.png",
        isprs / "vaihingen_area1_0_0_512_512_label.png",
    )
    dubai = shared_data / "dubai" / "tile1"
    cases = [
        (image, label, "potsdam3", "expects RGB colour-coded labels"),  # 1 band, no colour table
        (dubai / "images" / "image_part_001.jpg", dubai / "masks" / "image_part_001.png", "isprs-ids",
         "expects single-band class-id labels"),  # RGB masks read as ids
    ]  # fmt: skip
    for i, (src, lab, dataset, says) in enumerate(cases):
        out = tmp_path / f"s{i}.zarr"
        argv = ["ingest", str(src), "--labels", str(lab), "--dataset", dataset, "--out", str(out)]
        assert main([*argv, "--patch-size", "128"]) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"geoseg ingest: error: {lab}: dataset {dataset!r} {says}"), err
        assert not out.exists() and not (tmp_path / f"s{i}.zarr.stac").exists()
    # the same crop with its right coding still ingests
    assert main(["ingest", str(image), "--labels", str(label), "--dataset", "isprs-ids",
                 "--out", str(tmp_path / "ok.zarr"), "--patch-size", "128"]) == 0  # fmt: skip


def test_a_raster_smaller_than_a_patch_names_the_patch_size_that_fits(tmp_path: Path) -> None:
    """The refusal says which patch size would fit, and ingest at that size works."""
    rng = np.random.default_rng(3)
    small = write_tif(tmp_path / "small.tif", rng.integers(0, 200, (3, 120, 175), dtype=np.uint8))
    with pytest.raises(
        InputError, match=r"small\.tif is 175x120 px .* smaller than one 128x128 patch"
    ) as caught:
        ingest([small], tmp_path / "a.zarr", IngestConfig(patch_size=128), progress=False)
    fits = re.search(r"a patch size of at most (\d+)", str(caught.value))
    assert fits is not None and int(fits.group(1)) == 120, str(caught.value)
    store = open_store(ingest([small], tmp_path / "b.zarr", IngestConfig(patch_size=120), progress=False))
    assert store.meta.patch_size == 120
    tiny = write_tif(tmp_path / "tiny.tif", rng.integers(0, 200, (3, 5, 175), dtype=np.uint8))
    with pytest.raises(InputError) as too_thin:  # no patch size fits: none is suggested
        ingest([tiny], tmp_path / "c.zarr", IngestConfig(patch_size=128), progress=False)
    assert "tiny.tif" in str(too_thin.value) and "at most" not in str(too_thin.value)


def test_a_rerun_writes_the_catalog_that_a_complete_store_lacks(shared_data: Path, tmp_path: Path) -> None:
    """The catalog is written after the store is marked complete: a run that failed there (a
    disk that filled up at `STORE.zarr.stac`) or a catalog removed by hand left a complete
    store that every rerun called "nothing to do", so it never got its catalog again. The
    rerun now writes it (the store untouched), with the digests the store recorded."""
    tile = shared_data / "lausanne" / "img" / "1091-322_00.tif"
    out = tmp_path / "s.zarr"
    config = IngestConfig(patch_size=64, workers=1)
    ingest([tile], out, config, progress=False)
    catalog = tmp_path / "s.zarr.stac" / "catalog.json"
    first = [item.to_dict() for item in pystac.Catalog.from_file(str(catalog)).get_items(recursive=True)]
    shards = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    shutil.rmtree(catalog.parent)
    ingest([tile], out, config, progress=False)
    assert catalog.is_file()
    again = [item.to_dict() for item in pystac.Catalog.from_file(str(catalog)).get_items(recursive=True)]
    assert [i["id"] for i in again] == [i["id"] for i in first]
    for a, b in zip(first, again, strict=True):
        a["properties"].pop("created"), b["properties"].pop("created")
        assert a == b
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == shards


def test_writing_the_missing_catalog_never_touches_a_folder_of_the_users(
    shared_data: Path, tmp_path: Path
) -> None:
    """The rerun that writes a complete store's missing catalog does not write into a
    `STORE.zarr.stac/` that the user filled (notes, their own files): it is refused with the
    folder's name, and the user's file is as it was."""
    from geoseg.errors import OutputError

    tile = shared_data / "lausanne" / "img" / "1091-322_00.tif"
    out = tmp_path / "s.zarr"
    config = IngestConfig(patch_size=64, workers=1)
    ingest([tile], out, config, progress=False)
    folder = tmp_path / "s.zarr.stac"
    shutil.rmtree(folder)
    folder.mkdir()
    notes = folder / "notes.txt"
    notes.write_text("flown 2025-06, cloud in the north-east\n")
    with pytest.raises(OutputError, match=f"{folder} is a non-empty folder that geoseg did not write"):
        ingest([tile], out, config, progress=False)
    assert notes.read_text() == "flown 2025-06, cloud in the north-east\n"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
