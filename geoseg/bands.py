"""Row bands of one raster, each segmented on its own with the same result as one pass.

Single-process segmentation (:func:`geoseg.strips.segment_into`) walks the window rows
of the grid and, after window row ``i``, pops the *chunk* of rows ``[offsets[i],
offsets[i + 1])`` (from 0 for the first, to the height for the last) that no later
window touches. A band owns consecutive chunks ``[first_chunk, end_chunk)``. To finish
them exactly as the single pass does, it recomputes the window rows above whose windows
reach into its first chunk (the *halo*: at most one window high, so it covers the
receptive radius and the blending seam, which lie inside every window), adds every
window in the same order into the same strip accumulator and pops at the same chunk
boundaries. The probabilities of a pixel are thus the same float32 sums in the same
order, and so are its id and confidence: bands give bit-identical outputs, whatever
process or machine computes them. Rows popped from the halo are incomplete and dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.io import DatasetReader

from geoseg.config import SegmentConfig
from geoseg.iic.model import NormalisedNet
from geoseg.io.windows import WindowGrid
from geoseg.models.bundle import ModelMeta
from geoseg.strips import blended_rows

__all__ = ["Band", "BandRows", "band_rows", "plan_bands"]


@dataclass(frozen=True)
class Band:
    """Chunks ``[first_chunk, end_chunk)`` of the grid: output rows ``[top, bottom)`` of the raster.

    ``first_window_row`` is where the band starts computing (its halo begins there).
    """

    index: int
    first_window_row: int
    first_chunk: int
    end_chunk: int
    top: int
    bottom: int

    @property
    def rows(self) -> int:
        return self.bottom - self.top


@dataclass(frozen=True)
class BandRows:
    """Finished rows ``[top, top + len)`` of a band: ids and confidence (uint8, nodata 255)."""

    top: int
    ids: np.ndarray
    confidence: np.ndarray


def _chunks(grid: WindowGrid, height: int) -> list[tuple[int, int]]:
    """Rows ``[start, end)`` popped after each window row (clipped to the raster's height)."""
    rows = grid.row_offsets
    return [(rows[i], min(grid.rows_final_after(i), height)) for i in range(len(rows))]


def plan_bands(grid: WindowGrid, height: int, rows_per_band: int) -> list[Band]:
    """Bands of at least ``rows_per_band`` rows (whole chunks; the last band takes the rest)."""
    chunks = _chunks(grid, height)
    offsets = grid.row_offsets
    bands: list[Band] = []
    first = 0
    for i, (_, end) in enumerate(chunks):
        start = chunks[first][0]
        last = i + 1 == len(chunks) or chunks[i + 1][0] >= height
        if end - start >= rows_per_band or last:
            halo = next(m for m in range(first + 1) if offsets[m] + grid.win_height > start)
            bands.append(Band(len(bands), halo, first, i + 1, start, end))
            first = i + 1
            if last:
                break
    return bands


def band_rows(
    model: NormalisedNet,
    meta: ModelMeta,
    src: DatasetReader,
    path: Path,
    bands: list[int],
    grid: WindowGrid,
    band: Band,
    config: SegmentConfig,
) -> Iterator[BandRows]:
    """The finished rows of ``band``, chunk after chunk, exactly as a single pass finishes them
    (:func:`geoseg.strips.blended_rows` over the band's window rows, halo first)."""
    rows = blended_rows(model, meta, src, path, bands, grid, config, band.first_window_row, band.end_chunk)
    for index, base, ids, confidence in rows:
        if index >= band.first_chunk:  # rows of the halo are incomplete: dropped
            yield BandRows(base, ids, confidence)
