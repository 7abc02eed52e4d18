"""Window grids cover rasters to their edges; blending weights fall off toward window edges."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geoseg.errors import ConfigError
from geoseg.io.windows import WindowGrid, blend_weights, offsets, ramp


@given(length=st.integers(1, 3000), window=st.integers(1, 600), overlap=st.floats(0, 0.89))
def test_offsets_cover_the_axis_with_full_windows(length: int, window: int, overlap: float) -> None:
    stride = max(1, window - int(np.ceil(overlap * window)))
    starts = offsets(length, window, stride)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + window] = True
        assert s >= 0 and (s + window <= length or (s == 0 and length < window))
    assert covered.all()
    assert starts == sorted(set(starts))
    assert all(b - a <= stride for a, b in itertools.pairwise(starts))


@given(
    h=st.integers(1, 400),
    w=st.integers(1, 400),
    window=st.integers(8, 200),
    overlap=st.floats(0, 0.8),
    align=st.sampled_from([1, 2, 4]),
)
@settings(deadline=None)  # a property, not a timing: a 400 x 400 grid took 250 ms on the loaded machine
def test_aligned_grids_cover_every_pixel_on_aligned_offsets(
    h: int, w: int, window: int, overlap: float, align: int
) -> None:
    h, w = -(-h // align) * align, -(-w // align) * align
    grid = WindowGrid.from_fraction(h, w, window, overlap, align=align)
    count = np.zeros((h, w), int)
    for r, c in grid:
        assert r % align == 0 and c % align == 0
        count[r : r + grid.win_height, c : c + grid.win_width] += 1
    assert count.min() >= 1
    assert grid.window % align == 0 and grid.overlap % align == 0


def test_rows_final_after_is_where_the_next_window_row_starts() -> None:
    grid = WindowGrid(height=250, width=100, window=64, overlap=16)
    rows = grid.row_offsets
    assert rows == [0, 48, 96, 144, 186]
    assert [grid.rows_final_after(i) for i in range(len(rows))] == [48, 96, 144, 186, 250]


def test_unaligned_grid_and_bad_overlap_are_refused() -> None:
    with pytest.raises(ConfigError):
        WindowGrid.from_fraction(101, 100, 64, 0.25, align=2)
    with pytest.raises(ConfigError):
        WindowGrid(100, 100, 64, 64)


def test_ramp_falls_off_toward_edges_and_stays_positive() -> None:
    r = ramp(128, overlap=40, margin=17)
    assert r.min() > 0 and r.max() == 1.0
    assert np.allclose(r, r[::-1])
    assert np.all(np.diff(r[:64]) >= 0)  # non-decreasing toward the middle
    assert np.all(r[:17] < 0.01)  # the receptive margin is (almost) ignored
    assert np.all(r[23:105] == 1.0)  # past overlap - margin: full weight
    border = ramp(128, overlap=40, margin=17, at_start=True)
    assert np.all(border[:64] == 1.0) and border[-1] < 0.01  # a raster border keeps full weight


def test_blend_weights_are_an_outer_product_with_border_sides() -> None:
    w = blend_weights(64, 96, overlap=20, margin=5, borders=(True, False, False, False))
    assert w.shape == (64, 96)
    assert np.allclose(w, np.outer(ramp(64, 20, 5, at_start=True), ramp(96, 20, 5)))
    assert w[0, 48] == 1.0 and w[-1, 48] < 0.01 and w[32, 0] < 0.01
