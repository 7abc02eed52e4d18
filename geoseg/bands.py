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
import torch
from rasterio.io import DatasetReader

from geoseg.config import SegmentConfig
from geoseg.iic.model import NormalisedNet
from geoseg.inference import predict_probabilities
from geoseg.io.sources import open_raster
from geoseg.io.windows import WindowGrid, blend_weights
from geoseg.models.bundle import ModelMeta
from geoseg.strips import StripBlender, read_strip, receptive_radius, refiner

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
    """The finished rows of ``band``, chunk after chunk, exactly as a single pass finishes them.

    The loop is :func:`geoseg.strips.segment_into`'s, over the band's window rows.
    """
    device = next(model.parameters()).device
    k = model.arch.k_b if config.head == "b" else model.arch.k_a
    info = open_raster(path, bands)
    margin = round(receptive_radius(model) / meta.scale)
    weights = {
        edges: blend_weights(grid.win_height, grid.win_width, grid.overlap, margin, borders=edges)
        for edges in {grid.borders(r, c) for r, c in grid}
    }
    fill = model.input_mean.detach().cpu().numpy().astype(np.float32)[:, None, None]
    blender = StripBlender(k, grid.win_height, grid.width)
    refine = refiner(model, src, bands, config)
    offsets = grid.row_offsets
    blender.base = offsets[band.first_window_row]
    for index in range(band.first_window_row, band.end_chunk):
        row = offsets[index]
        strip, valid = read_strip(src, info, row, grid, fill)
        blender.valid[row - blender.base : row - blender.base + grid.win_height] = valid
        cols = grid.col_offsets
        for start in range(0, len(cols), config.batch_size):
            chunk = cols[start : start + config.batch_size]
            batch = np.stack([strip[:, :, c : c + grid.win_width] for c in chunk])
            probs = predict_probabilities(model, torch.from_numpy(batch).to(device), meta.scale, config.head)
            for c, p in zip(chunk, probs.float().cpu().numpy(), strict=True):
                blender.add(p, weights[grid.borders(row, c)], row, c)
        upto = min(grid.rows_final_after(index), src.height)
        if upto > blender.base:
            base = blender.base
            ids, confidence, _ = blender.pop(upto, refine)
            if index >= band.first_chunk:  # rows of the halo are incomplete: dropped
                yield BandRows(base, ids[:, : src.width], confidence[:, : src.width])
