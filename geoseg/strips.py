"""Segmenting one raster strip by strip: the window grid, reading a strip, blending the
windows' probabilities and streaming the finished rows into intermediate GeoTIFFs.

The single-process path (:func:`geoseg.segment.segment`) and the row bands of a Dask run
(:mod:`geoseg.bands`, :mod:`geoseg.distributed`) share this code, so both blend the same
windows in the same order and give bit-identical results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import torch
from rasterio.io import DatasetReader
from rasterio.windows import Window

from geoseg import window_size
from geoseg.config import SegmentConfig
from geoseg.errors import InputError
from geoseg.iic.model import NormalisedNet
from geoseg.inference import MIN_SIDE, window_probabilities
from geoseg.io.cog import GDAL_CACHE_BYTES, create_raster, tiled_profile
from geoseg.io.outputs import NODATA
from geoseg.io.sources import RasterInfo, open_raster, read_scaled
from geoseg.io.windows import WindowGrid, blend_weights
from geoseg.models.bundle import ModelMeta
from geoseg.progress import Progress, progress_bar

__all__ = [
    "CONFIDENCE_MAX",
    "StripBlender",
    "blended_rows",
    "plan_grid",
    "read_strip",
    "receptive_radius",
    "refiner",
    "segment_into",
]

CONFIDENCE_MAX = 100  # confidence is stored as a whole percent: 0..100, nodata 255


class StripBlender:
    """Weighted sums of probabilities over rows ``[base, base + height)`` of the raster."""

    def __init__(self, k: int, height: int, width: int) -> None:
        self.base = 0
        self.probs = np.zeros((k, height, width), np.float32)
        self.weight = np.zeros((height, width), np.float32)
        self.valid = np.zeros((height, width), bool)

    def add(self, probs: np.ndarray, weights: np.ndarray, row: int, col: int) -> None:
        r = row - self.base
        h, w = weights.shape
        self.probs[:, r : r + h, col : col + w] += probs * weights
        self.weight[r : r + h, col : col + w] += weights

    def pop(
        self, upto: int, refine: Callable[[np.ndarray, int], np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Finished rows ``[base, upto)``: (ids uint8, confidence uint8 %, valid); then shift.

        ``refine`` post-processes the blended probabilities of the rows (k, rows, W) starting
        at raster row ``base`` (e.g. :class:`geoseg.superpixels.SuperpixelRefiner`).
        """
        n = upto - self.base
        probs = self.probs[:, :n] / np.maximum(self.weight[:n], 1e-12)
        if refine is not None:
            probs = refine(probs, self.base)
        ids = probs.argmax(0).astype(np.uint8)
        confidence = np.rint(probs.max(0) * CONFIDENCE_MAX).astype(np.uint8)
        valid = self.valid[:n].copy()
        ids[~valid] = NODATA
        confidence[~valid] = NODATA
        for array in (self.probs, self.weight, self.valid):
            array[..., : array.shape[-2] - n, :] = array[..., n:, :]
            array[..., array.shape[-2] - n :, :] = 0
        self.base = upto
        return ids, confidence, valid


def receptive_radius(model: NormalisedNet) -> int:
    """Pixels (at the model's scale) of context each side that an output pixel depends on.

    Summed over the trunk (convolutions: dilation x (kernel // 2), pools: kernel - 1, each
    times the current stride) plus one input-resolution step for the bilinear upsampling.
    """
    radius, jump = 0, 1
    for module in model.trunk.modules():
        if isinstance(module, torch.nn.Conv2d):
            radius += module.dilation[0] * (module.kernel_size[0] // 2) * jump
            jump *= module.stride[0]
        elif isinstance(module, torch.nn.MaxPool2d):
            kernel = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            radius += (kernel - 1) * jump
            jump *= module.stride if isinstance(module.stride, int) else module.stride[0]
    return radius + jump


def plan_grid(
    model: NormalisedNet, meta: ModelMeta, config: SegmentConfig, height: int, width: int
) -> WindowGrid:
    """The window grid over the raster padded to the alignment (source pixels).

    Without ``config.window`` the window is chosen from the model, the memory of a forward
    pass and the raster (:mod:`geoseg.window_size`: up to 512 px at the model's scale,
    never below the patch); otherwise it is ``config.window`` at the model's scale. The
    overlap is ``config.overlap`` (a fraction) or, by default, only the seam that seamless
    blending needs. Window,
    overlap and offsets are multiples of the pooling factor (at the model's scale), so
    every window meets the same pooling and stride grid and the upsampling that a single
    pass over the whole raster would; an odd-sized raster is padded by edge replication
    (the padding is never written). A non-zero overlap is raised to at least twice the
    receptive radius (+ alignment), so that every pixel has a window that saw all of its
    context (see :func:`geoseg.io.windows.ramp`).
    """
    align = max(1, round(window_size.downsampling(model) / min(meta.scale, 1.0)))
    padded_h, padded_w = -(-height // align) * align, -(-width // align) * align
    if config.window is None:  # the default: chosen by geoseg.window_size
        return _default_grid(model, meta, config, padded_h, padded_w, align)
    side = max(MIN_SIDE, round(config.window / meta.scale))
    needed = (2 * receptive_radius(model) / meta.scale + align) / side
    overlap = min(needed, 0.75) if config.overlap is None else config.overlap
    if overlap > 0:
        overlap = max(overlap, min(needed, 0.75))
    return WindowGrid.from_fraction(padded_h, padded_w, side, overlap, align=align)


def _default_grid(
    model: NormalisedNet, meta: ModelMeta, config: SegmentConfig, height: int, width: int, align: int
) -> WindowGrid:
    """Windows up to ``window_size.largest_model_side`` (512 px at the model's scale unless the
    seam is large) with the seam blending needs (or ``config.overlap``)."""
    seam = window_size.seam_pixels(receptive_radius(model) / meta.scale, align)
    model_side = window_size.largest_model_side(model, config.batch_size, round(seam * meta.scale))
    min_side = max(MIN_SIDE, round(meta.patch_size / meta.scale))
    max_side = max(min_side, round(model_side / meta.scale))
    return window_size.default_grid(height, width, min_side, max_side, seam, align, config.overlap or 0.0)


def read_strip(
    src: DatasetReader, info: RasterInfo, row: int, grid: WindowGrid, fill: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[row, row + window)`` of the raster padded to the grid: (C, h, W) float32, valid.

    Nodata pixels are read as ``fill`` (the band means: a neutral input); the padding
    replicates the edge, as a single pass over the padded raster would see it.
    """
    rows = min(grid.win_height, src.height - row)
    try:
        data, valid = read_scaled(src, info, 1.0, row, 0, rows, src.width)
    except rasterio.errors.RasterioError as exc:
        raise InputError(f"corrupt raster {info.path} (rows {row}..{row + rows}): {exc}") from exc
    strip = np.where(valid[None], data.astype(np.float32), fill)
    pad = ((0, grid.win_height - rows), (0, grid.width - src.width))
    if any(p[1] for p in pad):
        strip = np.pad(strip, ((0, 0), *pad), mode="edge")
        valid = np.pad(valid, pad, constant_values=False)
    return strip, valid


def blended_rows(
    model: NormalisedNet,
    meta: ModelMeta,
    src: DatasetReader,
    path: Path,
    bands: list[int],
    grid: WindowGrid,
    config: SegmentConfig,
    first: int = 0,
    end: int | None = None,
    on_windows: Callable[[int], object] | None = None,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """The rows a pass over window rows ``[first, end)`` of ``grid`` finishes, as they finish:
    (window row index, first raster row, ids, confidence), cropped to the raster's width.

    One loop for the whole raster (:func:`segment_into`) and for a Dask band
    (:func:`geoseg.bands.band_rows`), so both blend the same windows in the same order.
    ``on_windows`` is told how many windows each batch predicted (progress).
    """
    k = model.arch.k_b if config.head == "b" else model.arch.k_a
    info = open_raster(path, bands)
    margin = round(receptive_radius(model) / meta.scale)
    weights = {  # one weight array per kind of window (interior, at a border, at a corner)
        edges: blend_weights(grid.win_height, grid.win_width, grid.overlap, margin, borders=edges)
        for edges in {grid.borders(r, c) for r, c in grid}
    }
    fill = model.input_mean.detach().cpu().numpy().astype(np.float32)[:, None, None]
    blender = StripBlender(k, grid.win_height, grid.width)
    refine = refiner(model, src, bands, config)
    offsets = grid.row_offsets
    blender.base = offsets[first]
    for index in range(first, len(offsets) if end is None else end):
        row = offsets[index]
        strip, valid = read_strip(src, info, row, grid, fill)
        blender.valid[row - blender.base : row - blender.base + grid.win_height] = valid
        cols = grid.col_offsets
        for start in range(0, len(cols), config.batch_size):
            chunk = cols[start : start + config.batch_size]
            batch = np.stack([strip[:, :, c : c + grid.win_width] for c in chunk])
            probs = window_probabilities(model, batch, meta.scale, config.head, config.precision)
            for c, p in zip(chunk, probs, strict=True):
                blender.add(p, weights[grid.borders(row, c)], row, c)
            if on_windows is not None:
                on_windows(len(chunk))
        upto = min(grid.rows_final_after(index), src.height)
        if upto > blender.base:
            base = blender.base
            ids, confidence, _ = blender.pop(upto, refine)
            yield index, base, ids[:, : src.width], confidence[:, : src.width]


def segment_into(
    model: NormalisedNet,
    meta: ModelMeta,
    src: DatasetReader,
    path: Path,
    bands: list[int],
    clusters_tmp: Path,
    confidence_tmp: Path,
    config: SegmentConfig,
    progress: Progress,
) -> None:
    """Stream the blended prediction of ``src`` into two intermediate tiled GeoTIFFs."""
    grid = plan_grid(model, meta, config, src.height, src.width)
    profile = tiled_profile(src.crs, src.transform, src.height, src.width, "uint8", NODATA)
    bar = progress_bar(progress, total=len(grid), desc=f"segment {path.name}", unit="win")
    with (
        bar,  # closed before an error (or Ctrl-C) reaches the console: the message on its own line
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        create_raster(clusters_tmp, profile) as ids_dst,
        create_raster(confidence_tmp, profile) as conf_dst,
    ):
        rows = blended_rows(model, meta, src, path, bands, grid, config, on_windows=bar.update)
        for _, base, ids, confidence in rows:
            out = Window(0, base, src.width, ids.shape[0])
            ids_dst.write(ids, 1, window=out)
            conf_dst.write(confidence, 1, window=out)
    bar.close()


def refiner(
    model: NormalisedNet, src: DatasetReader, bands: list[int], config: SegmentConfig
) -> Callable[[np.ndarray, int], np.ndarray] | None:
    """The ``--refine`` hook for this raster (None: the blended probabilities as they are)."""
    if config.refine is None:
        return None
    from geoseg.superpixels import SuperpixelRefiner

    buffers = dict(model.named_buffers())  # the model's own input normalisation
    mean, std = (buffers[name].detach().cpu().numpy() for name in ("input_mean", "input_std"))
    return SuperpixelRefiner(src, bands, mean, std, config.refine_size)
