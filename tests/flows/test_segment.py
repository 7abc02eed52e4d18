"""The segment flow on one VRT mosaic: its row bands run on the flow's Dask cluster; a VRT
cannot make a flow read outside the allowed roots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from flows.settings import FlowSettings, check_sources
from geoseg.config import SegmentConfig
from geoseg.errors import ConfigError
from geoseg.segment import segment
from tests.flows.test_pipeline import dask_cluster  # noqa: F401  (the fixture)
from tests.test_distributed import write_vrt
from tests.test_segment import make_bundle

OPTIONS = {"window": 96, "band_rows": 64, "batch_size": 4}


def test_a_vrt_reading_a_file_outside_the_roots_is_refused(tmp_path: Path, shared_data: Path) -> None:
    inside = tmp_path / "inside"
    inside.mkdir()
    tile = shared_data / "lausanne" / "img" / "1091-322_00.tif"  # outside the roots
    vrt = write_vrt([tile], inside / "mosaic.vrt")
    settings = FlowSettings(allowed_roots=(inside.resolve(),))
    with pytest.raises(
        ConfigError, match=f"file read by {vrt}: {tile.resolve()} is outside the allowed roots"
    ):
        check_sources(str(vrt), settings)
    assert check_sources(str(vrt), FlowSettings(allowed_roots=(inside.resolve(), shared_data.resolve()))) == [
        vrt
    ]


def test_segment_flow_spreads_the_bands_of_one_mosaic_over_the_cluster(
    prefect_harness: None,
    dask_cluster: str,  # noqa: F811
    shared_data: Path,
    tmp_path: Path,
) -> None:
    import distributed

    from flows.segment import segment_flow

    tiles = [shared_data / "lausanne" / "img" / f"1091-322_{i:02d}.tif" for i in range(4)]
    mosaic = write_vrt(tiles, tmp_path / "mosaic.vrt")
    model = make_bundle(tmp_path / "model", ["red", "green", "blue"], "uint8", 110.0, 50.0, 32)
    (result,) = segment_flow(
        src=str(mosaic), model=str(model), out=str(tmp_path / "run"), vectorize=False,
        options=OPTIONS, dask_address=dask_cluster,
    )  # fmt: skip

    def prefixes(dask_scheduler) -> dict[str, int]:
        return {name: sum(p.state_counts.values()) for name, p in dask_scheduler.task_prefixes.items()}

    with distributed.Client(dask_cluster, set_as_default=False) as client:
        seen = client.run_on_scheduler(prefixes)
    assert seen.get("segment-band", 0) >= 4, seen  # 480 rows in bands of 64+ rows
    config = SegmentConfig(vectorize=False, **OPTIONS)  # type: ignore[arg-type]
    (single,) = segment(model, [mosaic], tmp_path / "single", config, progress=False)
    with rasterio.open(result["clusters"]) as a, rasterio.open(single.clusters) as b:
        assert np.array_equal(a.read(1), b.read(1))


def test_changing_a_polygon_setting_reruns_only_vectorize(
    prefect_harness: None, shared_data: Path, tmp_path: Path
) -> None:
    """`prefect deployment run 'segment/local' ... --param min_area=...` on a segmented run
    folder re-ran segment too (min_area was in its cache key) and rewrote the cluster and
    confidence COGs, which do not depend on it: now segment is Cached, vectorize runs."""
    from flows.segment import segment_flow
    from tests.flows.conftest import flow_run_logs

    src = shared_data / "lausanne" / "img" / "1091-322_00.tif"
    model = make_bundle(tmp_path / "model", ["red", "green", "blue"], "uint8", 110.0, 50.0, 32)
    run = tmp_path / "run"
    segment_flow(src=str(src), model=str(model), out=str(run))
    clusters = run / "predictions" / "1091-322_00_clusters.tif"
    gpkg = run / "predictions" / "1091-322_00_polygons.gpkg"
    cog_before, gpkg_before = clusters.stat().st_mtime_ns, gpkg.stat().st_mtime_ns
    state = segment_flow(src=str(src), model=str(model), out=str(run), min_area=1.0, return_state=True)
    assert state.is_completed()
    assert clusters.stat().st_mtime_ns == cog_before  # segment: Cached
    assert gpkg.stat().st_mtime_ns != gpkg_before  # vectorize: ran with the new sieve
    lines = [log.message for log in flow_run_logs(state.state_details.flow_run_id)]
    assert any(line.endswith("(tasks: Cached, Completed)") for line in lines), lines
    # and back: both cached
    state = segment_flow(src=str(src), model=str(model), out=str(run), min_area=1.0, return_state=True)
    lines = [log.message for log in flow_run_logs(state.state_details.flow_run_id)]
    assert any(line.endswith("(tasks: Cached, Cached)") for line in lines), lines


def test_a_raster_damaged_past_its_header_fails_the_run_after_the_others_are_published(
    prefect_harness: None, shared_data: Path, tmp_path: Path
) -> None:
    """Two sources, the second cut in half (its header opens, its pixels are gone): the
    run fails naming it, and the first raster's COGs come with their polygons and catalog
    entry (they were left without either)."""
    from rasterio.windows import Window

    from flows.segment import segment_flow
    from tests.flows.test_pipeline import _items
    from tests.helpers import crop

    tile = shared_data / "lausanne" / "img" / "1091-322_00.tif"
    good = crop(tile, tmp_path / "good.tif", Window(0, 0, 160, 160))
    whole = crop(tile, tmp_path / "whole.tif", Window(0, 0, 400, 300))
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    model = make_bundle(tmp_path / "model", ["red", "green", "blue"], "uint8", 110.0, 50.0, 32)
    run = tmp_path / "run"
    state = segment_flow(src=[str(good), str(damaged)], model=str(model), out=str(run), return_state=True)
    assert state.is_failed()
    assert state.message.startswith("1 of 2 rasters could not be segmented: "), state.message
    assert "damaged.tif" in state.message and str(run / "predictions") in state.message
    predictions = run / "predictions"
    assert (predictions / "good_clusters.tif").is_file() and (predictions / "good_polygons.gpkg").is_file()
    assert not list(predictions.glob("damaged_*"))
    (item,) = _items(run / "catalog" / "catalog.json", "prediction")
    assert item.assets["clusters"].href.endswith("good_clusters.tif")


def test_a_raster_that_does_not_suit_the_model_is_refused_before_any_task(
    prefect_harness: None, shared_data: Path, tmp_path: Path
) -> None:
    from flows.segment import segment_flow
    from tests.helpers import write_raster

    good = shared_data / "lausanne" / "img" / "1091-322_00.tif"
    gray = write_raster(tmp_path / "gray.tif", np.zeros((1, 64, 64), np.uint8))
    model = make_bundle(tmp_path / "model", ["red", "green", "blue"], "uint8", 110.0, 50.0, 32)
    run = tmp_path / "run"
    state = segment_flow(src=[str(good), str(gray)], model=str(model), out=str(run), return_state=True)
    assert state.is_failed()
    assert state.message.startswith(f"{gray} has 1 band"), state.message
    assert not (run / "predictions").exists()  # the good raster was not segmented first
