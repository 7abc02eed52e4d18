"""Seamless sliding-window segmentation of large rasters into cluster and confidence COGs.

For each source raster the window grid (:mod:`geoseg.io.windows`) is walked one row of
windows at a time. Each window is read with the model's resampling (``scale`` of
model.json), predicted, brought back to source resolution and added, weighted by
:func:`geoseg.io.windows.blend_weights`, into a strip accumulator one window high and one
raster wide. Rows that no later window touches are final: they are normalised, turned
into cluster ids (argmax) and confidence (max probability), written into intermediate
tiled GeoTIFFs, and dropped. Memory is therefore bounded by ``k x window x width`` floats
plus one strip of source pixels, whatever the raster's height; the intermediates are then
copied into COGs (:mod:`geoseg.io.cog`). Pixels that are nodata (or alpha 0) in any source
band are nodata (255) in every output.

Outputs per source, in ``out_dir`` (names in :mod:`geoseg.io.outputs`): ``<stem>_clusters.tif``
(uint8 ids, nodata 255, colour table, mode overviews), ``<stem>_confidence.tif`` (uint8
percent 0-100, nodata 255), a ``.qml`` beside each, ``<stem>_preview.png`` (with a legend),
``<stem>_prediction.json`` (a STAC item) and, when asked, ``<stem>_polygons.gpkg`` with its
style inside and beside it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
import torch
from rasterio.io import DatasetReader
from rasterio.windows import Window

from geoseg.config import SegmentConfig
from geoseg.errors import InputError
from geoseg.iic.model import NormalisedNet, for_inference
from geoseg.inference import (
    MIN_SIDE,
    check_bands,
    predict_probabilities,
    resolve_device,
    window_probabilities,
)
from geoseg.io import outputs
from geoseg.io.cog import GDAL_CACHE_BYTES, tiled_profile, to_cog
from geoseg.io.fileio import atomic_path, check_free_space, check_set, locked, output_set
from geoseg.io.outputs import NODATA, OUTPUT_ASSETS, check_unique_stems
from geoseg.io.preview import write_preview
from geoseg.io.sources import RasterInfo, open_dataset, open_raster, read_scaled
from geoseg.io.style import StyleClass, paletted_raster_qml, pseudocolour_raster_qml
from geoseg.io.windows import WindowGrid, blend_weights
from geoseg.models.bundle import (
    CLUSTERS_TAG,
    Cluster,
    ModelMeta,
    clusters_to_tag,
    default_clusters,
    load_bundle,
)
from geoseg.progress import Progress, progress_bar

__all__ = [
    "CONFIDENCE_MAX",
    "NODATA",
    "SegmentResult",
    "check_bands",
    "check_outputs",
    "output_paths",
    "predict_probabilities",
    "segment",
    "segment_raster",
    "write_preview",
]

log = logging.getLogger(__name__)

STAGE = "segment"  # names the outputs' manifest: .<stem>.geoseg-segment.json
CONFIDENCE_MAX = 100  # confidence is stored as a whole percent: 0..100, nodata 255


@dataclass
class SegmentResult:
    """Paths written for one source raster."""

    source: Path
    clusters: Path
    confidence: Path
    clusters_qml: Path
    confidence_qml: Path
    preview_png: Path
    stac_item: Path
    gpkg: Path | None = None
    gpkg_qml: Path | None = None


def output_paths(source: Path, out_dir: Path) -> dict[str, Path]:
    """Where the outputs of ``source`` go (the names of :mod:`geoseg.io.outputs`)."""
    clusters = outputs.clusters_path(source, out_dir)
    confidence = outputs.confidence_path(source, out_dir)
    return {
        "clusters": clusters,
        "confidence": confidence,
        "clusters_qml": outputs.style_path(clusters),
        "confidence_qml": outputs.style_path(confidence),
        "preview_png": outputs.preview_path(clusters),
        "stac_item": outputs.prediction_path(clusters),
        "gpkg": outputs.polygons_path(clusters),
    }


# --- inference (the model's side: geoseg.inference) --------------------------------------


class _StripBlender:
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


def _pooling(model: NormalisedNet) -> int:
    """The network's total downsampling: windows are aligned to it (max-pool phase)."""
    factor = 1
    for module in model.modules():
        if isinstance(module, torch.nn.MaxPool2d):
            factor *= int(module.stride if isinstance(module.stride, int) else module.stride[0])
    return factor


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

    The window is the model's patch (or ``config.window``) at the model's scale. Window,
    overlap and offsets are multiples of the pooling factor (at the model's scale), so
    every window meets the same max-pool grid and the factor-2 upsampling that a single
    pass over the whole raster would; an odd-sized raster is padded by edge replication
    (the padding is never written). A non-zero overlap is raised to at least twice the
    receptive radius (+ alignment), so that every pixel has a window that saw all of its
    context (see :func:`geoseg.io.windows.ramp`).
    """
    align = max(1, round(_pooling(model) / min(meta.scale, 1.0)))
    side = max(MIN_SIDE, round((config.window or meta.patch_size) / meta.scale))
    padded_h, padded_w = -(-height // align) * align, -(-width // align) * align
    overlap = config.overlap
    if overlap > 0:
        needed = (2 * receptive_radius(model) / meta.scale + align) / side
        overlap = max(overlap, min(needed, 0.75))
    return WindowGrid.from_fraction(padded_h, padded_w, side, overlap, align=align)


def _read_strip(
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


def _segment_into(
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
    k = model.arch.k_b if config.head == "b" else model.arch.k_a
    grid = plan_grid(model, meta, config, src.height, src.width)
    info = open_raster(path, bands)
    margin = round(receptive_radius(model) / meta.scale)
    weights = {  # one weight array per kind of window (interior, at a border, at a corner)
        edges: blend_weights(grid.win_height, grid.win_width, grid.overlap, margin, borders=edges)
        for edges in {grid.borders(r, c) for r, c in grid}
    }
    fill = model.input_mean.detach().cpu().numpy().astype(np.float32)[:, None, None]
    blender = _StripBlender(k, grid.win_height, grid.width)
    refine = _refiner(model, src, bands, config)
    profile = tiled_profile(src.crs, src.transform, src.height, src.width, "uint8", NODATA)
    bar = progress_bar(progress, total=len(grid), desc=f"segment {path.name}", unit="win")
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        rasterio.open(clusters_tmp, "w", **profile) as ids_dst,
        rasterio.open(confidence_tmp, "w", **profile) as conf_dst,
    ):
        for index, row in enumerate(grid.row_offsets):
            strip, valid = _read_strip(src, info, row, grid, fill)
            blender.valid[row - blender.base : row - blender.base + grid.win_height] = valid
            cols = grid.col_offsets
            for start in range(0, len(cols), config.batch_size):
                chunk = cols[start : start + config.batch_size]
                batch = np.stack([strip[:, :, c : c + grid.win_width] for c in chunk])
                probs = window_probabilities(model, batch, meta.scale, config.head)
                for c, p in zip(chunk, probs, strict=True):
                    blender.add(p, weights[grid.borders(row, c)], row, c)
                bar.update(len(chunk))
            upto = min(grid.rows_final_after(index), src.height)
            if upto > blender.base:
                base = blender.base
                ids, confidence, _ = blender.pop(upto, refine)
                out = Window(0, base, src.width, upto - base)
                ids_dst.write(ids[:, : src.width], 1, window=out)
                conf_dst.write(confidence[:, : src.width], 1, window=out)
    bar.close()


def _refiner(
    model: NormalisedNet, src: DatasetReader, bands: list[int], config: SegmentConfig
) -> Callable[[np.ndarray, int], np.ndarray] | None:
    """The ``--refine`` hook for this raster (None: the blended probabilities as they are)."""
    if config.refine is None:
        return None
    from geoseg.superpixels import SuperpixelRefiner

    buffers = dict(model.named_buffers())  # the model's own input normalisation
    mean, std = (buffers[name].detach().cpu().numpy() for name in ("input_mean", "input_std"))
    return SuperpixelRefiner(src, bands, mean, std, config.refine_size)


# --- outputs ------------------------------------------------------------------------------


def cluster_table(meta: ModelMeta, config: SegmentConfig, model: NormalisedNet) -> list[Cluster]:
    """The clusters of the head used: model.json's table for head B, default colours for A."""
    if config.head == "b" and meta.clusters:
        return sorted(meta.clusters, key=lambda c: c.id)
    return default_clusters(model.arch.k_a if config.head == "a" else model.arch.k_b)


def style_classes(clusters: Sequence[Cluster]) -> list[StyleClass]:
    return [StyleClass(c.id, c.colour, c.name) for c in clusters]


def segment_raster(
    model: NormalisedNet,
    meta: ModelMeta,
    model_dir: Path,
    source: Path,
    out_dir: Path,
    config: SegmentConfig,
    progress: Progress = True,
) -> SegmentResult:
    """Segment one raster with a loaded model; see :func:`segment`.

    Every output is written into a staging folder and the set is published together,
    its manifest last (:func:`geoseg.io.fileio.output_set`): a killed or failed run never
    leaves new and old outputs of one source side by side as if they were one result.
    """
    with output_set(out_dir, source.stem, STAGE) as staging:
        staged = _write_outputs(model, meta, model_dir, source, staging, config, progress)
    return _published(staged, out_dir)


def _published(result: SegmentResult, out_dir: Path) -> SegmentResult:
    moved = {
        f.name: out_dir / value.name
        for f in dataclasses.fields(result)
        if f.name != "source" and isinstance(value := getattr(result, f.name), Path)
    }
    return dataclasses.replace(result, **moved)


def _write_outputs(
    model: NormalisedNet,
    meta: ModelMeta,
    model_dir: Path,
    source: Path,
    out_dir: Path,
    config: SegmentConfig,
    progress: Progress,
) -> SegmentResult:
    paths = output_paths(source, out_dir)
    clusters = cluster_table(meta, config, model)
    with open_dataset(source) as src:
        bands = check_bands(src, source, meta, model_dir)
        if min(src.height, src.width) < MIN_SIDE:
            raise InputError(f"{source} is {src.height}x{src.width} pixels: too small to segment")
        out_dir.mkdir(parents=True, exist_ok=True)
        ids_tmp = out_dir / f".{source.stem}_clusters.tiled-{os.getpid()}.tif"
        conf_tmp = out_dir / f".{source.stem}_confidence.tiled-{os.getpid()}.tif"
        try:
            _segment_into(model, meta, src, source, bands, ids_tmp, conf_tmp, config, progress)
            to_cog(
                ids_tmp,
                paths["clusters"],
                resampling="mode",
                colormap={c.id: (*c.colour, 255) for c in clusters},
                tags={
                    CLUSTERS_TAG: clusters_to_tag(clusters),
                    "GEOSEG_MODEL": str(model_dir),
                    "GEOSEG_SOURCE": str(source),
                },
                description="cluster id",
            )
            to_cog(
                conf_tmp,
                paths["confidence"],
                resampling="average",
                tags={"GEOSEG_SOURCE": str(source), "units": "percent"},
                description="confidence: max softmax probability, percent",
            )
        finally:  # the intermediates never outlive the run, whatever happened
            ids_tmp.unlink(missing_ok=True)
            conf_tmp.unlink(missing_ok=True)
    paletted_raster_qml(style_classes(clusters), paths["clusters_qml"])
    pseudocolour_raster_qml(paths["confidence_qml"], 0, CONFIDENCE_MAX, label=" %")
    write_preview(paths["clusters"], clusters, paths["preview_png"], config.preview_size)
    result = SegmentResult(
        source=source,
        clusters=paths["clusters"],
        confidence=paths["confidence"],
        clusters_qml=paths["clusters_qml"],
        confidence_qml=paths["confidence_qml"],
        preview_png=paths["preview_png"],
        stac_item=paths["stac_item"],
    )
    if config.vectorize:
        from geoseg.vectorize import vector_style_path, vectorize

        names = {c.id: c.name for c in clusters if c.name}
        result.gpkg = vectorize(
            result.clusters,
            paths["gpkg"],
            min_area=config.min_area,
            simplify=config.simplify,
            class_names=names or None,
            block_size=config.vectorize_block,
        )
        result.gpkg_qml = vector_style_path(result.gpkg)
    write_prediction_item(result, model_dir, meta, clusters)
    return result


def write_prediction_item(
    result: SegmentResult, model_dir: Path, meta: ModelMeta, clusters: Sequence[Cluster]
) -> Path:
    """The STAC item of one prediction, beside the outputs: :func:`geoseg.stac.items.prediction_item`
    (label + projection extensions) with this result's outputs as its assets."""
    from geoseg.stac.items import prediction_item

    assets = {
        key: (Path(getattr(result, key)), media, roles)
        for key, (media, roles) in OUTPUT_ASSETS.items()
        if getattr(result, key) is not None
    }
    item = prediction_item(result.clusters, result.source, model_dir, clusters, assets)
    item.properties["geoseg:confidence_units"] = "percent"
    item.set_self_href(str(result.stac_item.resolve()))
    item.make_asset_hrefs_relative()
    with atomic_path(result.stac_item) as tmp:
        tmp.write_text(json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n")
    return result.stac_item


def segment(
    model_dir: str | Path,
    sources: Sequence[str | Path],
    out_dir: str | Path,
    config: SegmentConfig | None = None,
    progress: Progress = True,
    overwrite: bool = False,
) -> list[SegmentResult]:
    """Segment every source raster with the model bundle in ``model_dir``.

    Args:
        model_dir: a model bundle (model.json + weights.safetensors).
        sources: GeoTIFFs (any size) with the bands and dtype the model was trained on.
        out_dir: folder for the outputs (created); the outputs of an earlier segment run are
            replaced, one source's set at a time; other files of the same names are
            refused (OutputError) unless ``overwrite``.
        config: window overlap, batch size, device, head, vectorization options.
        progress: a progress bar per raster (True), log lines to this logger, or nothing
            (:mod:`geoseg.progress`).

    Returns:
        One :class:`SegmentResult` per source, in order.

    Raises:
        InputError: a missing/corrupt model or raster, or bands that do not match the model.
        ConfigError: bad parameters.
    """

    config = (config or SegmentConfig()).validate()
    model_dir, out_dir = Path(model_dir).absolute(), Path(out_dir)
    paths = [Path(s).absolute() for s in sources]  # provenance tags name files, not typed text
    if not paths:
        raise InputError("no source rasters given")
    check_unique_stems(paths)
    for path in paths:  # fail before any work on a missing input
        if not path.is_file():
            raise InputError(f"source not found: {path}")
    check_outputs(paths, out_dir, overwrite, config.vectorize)
    model, meta = load_bundle(model_dir, resolve_device(config.device))
    model = for_inference(model)
    with locked(out_dir, "segment output folder"):
        return [segment_raster(model, meta, model_dir, path, out_dir, config, progress) for path in paths]


def check_outputs(
    sources: Sequence[Path], out_dir: Path, overwrite: bool = False, polygons: bool = True
) -> None:
    """Before any work: the outputs may be replaced, the folder is writable and has room.

    The GeoPackage counts only when this run writes one, and an earlier ``vectorize``
    output (the flows write it separately) is its own to replace. The room needed is
    estimated as the two uncompressed uint8 layers of every source (compression and
    overviews roughly cancel out).
    """
    from geoseg.vectorize import is_own_gpkg, vector_style_path

    needed = 0
    for source in sources:
        targets = output_paths(source, out_dir)
        gpkg = targets.pop("gpkg")
        if polygons and not is_own_gpkg(gpkg):
            targets.update(gpkg=gpkg, gpkg_qml=vector_style_path(gpkg))
        check_set(out_dir, source.stem, STAGE, targets.values(), overwrite)
        with open_dataset(source) as src:
            needed += 2 * src.height * src.width
    check_free_space(out_dir, needed)
