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
