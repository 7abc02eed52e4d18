"""Row bands with their halo: each band, segmented alone, gives exactly the rows one pass gives."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.bands import band_rows, plan_bands
from geoseg.config import SegmentConfig
from geoseg.iic.model import for_inference
from geoseg.inference import check_bands
from geoseg.io.windows import WindowGrid
from geoseg.models.bundle import load_bundle
from geoseg.segment import segment
from geoseg.strips import plan_grid
from tests.test_segment import make_bundle


@settings(max_examples=200, deadline=None)
@given(
    height=st.integers(20, 3000),
    window=st.integers(10, 300),
    overlap=st.floats(0.0, 0.7),
    rows=st.integers(1, 1000),
)
def test_bands_cover_every_row_once_and_their_halo_reaches_all_windows_of_their_rows(
    height: int, window: int, overlap: float, rows: int
) -> None:
    grid = WindowGrid.from_fraction(height - height % 2, 64, window, overlap, align=2)
    bands = plan_bands(grid, grid.height, rows)
    assert bands[0].top == 0 and bands[-1].bottom == grid.height
    for a, b in itertools.pairwise(bands):
        assert a.bottom == b.top and a.rows >= rows
    offsets = grid.row_offsets
    for band in bands:
        touching = [i for i, r in enumerate(offsets) if r < band.bottom and r + grid.win_height > band.top]
        assert band.first_window_row == touching[0] and band.end_chunk == touching[-1] + 1


@pytest.mark.parametrize("refine", [None, "superpixels"])
def test_each_band_alone_equals_the_single_pass_rows(
    shared_data: Path, tmp_path: Path, refine: str | None
) -> None:
    source = shared_data / "lausanne" / "img" / "1091-322_00.tif"  # 120 x 175, real
    model_dir = make_bundle(tmp_path / "m", ["red", "green", "blue"], "uint8", 110.0, 50.0, 32)
    config = SegmentConfig(vectorize=False, window=48, band_rows=20, refine=refine)  # type: ignore[arg-type]
    (result,) = segment(model_dir, [source], tmp_path / "one", config, progress=False)
    model, meta = load_bundle(model_dir)
    model = for_inference(model)
    with (
        rasterio.open(source) as src,
        rasterio.open(result.clusters) as ids,
        rasterio.open(result.confidence) as conf,
    ):
        expected_ids, expected_conf = ids.read(1), conf.read(1)
        grid = plan_grid(model, meta, config, src.height, src.width)
        bands = plan_bands(grid, src.height, config.band_rows)
        assert len(bands) >= 4 and any(b.first_window_row < b.first_chunk for b in bands)  # halos used
        covered = np.zeros(src.height, int)
        for band in reversed(bands):  # any order: a band needs nothing from the others
            for rows in band_rows(
                model, meta, src, source, check_bands(src, source, meta, model_dir), grid, band, config
            ):
                span = slice(rows.top, rows.top + rows.ids.shape[0])
                assert np.array_equal(rows.ids, expected_ids[span])
                assert np.array_equal(rows.confidence, expected_conf[span])
                covered[span] += 1
    assert np.all(covered == 1)
