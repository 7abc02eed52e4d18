"""Seamless sliding-window segmentation of large rasters into cluster and confidence COGs.

For each source raster the window grid (:mod:`geoseg.windows`) is walked one row of
windows at a time. Each window is read with the model's resampling (``scale`` of
model.json), predicted, brought back to source resolution and added, weighted by
:func:`geoseg.windows.blend_weights`, into a strip accumulator one window high and one
raster wide. Rows that no later window touches are final: they are normalised, turned
into cluster ids (argmax) and confidence (max probability), written into intermediate
tiled GeoTIFFs, and dropped. Memory is therefore bounded by ``k x window x width`` floats
plus one strip of source pixels, whatever the raster's height; the intermediates are then
copied into COGs (:mod:`geoseg.cog`). Pixels that are nodata (or alpha 0) in any source
band are nodata (255) in every output.

Outputs per source, in ``out_dir`` (names in :mod:`geoseg.outputs`): ``<stem>_clusters.tif``
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
from typing import TYPE_CHECKING

import numpy as np
import pystac
import rasterio
import rasterio.errors
import torch
import torch.nn.functional as F
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from rasterio.windows import Window

from geoseg import outputs
from geoseg.baseline import check_unique_stems
from geoseg.bundle import CLUSTERS_TAG, Cluster, ModelMeta, clusters_to_tag, default_clusters, load_bundle
from geoseg.cog import GDAL_CACHE_BYTES, tiled_profile, to_cog
from geoseg.config import SegmentConfig
from geoseg.errors import InputError
from geoseg.fileio import atomic_path, check_free_space, check_set, locked, output_set
from geoseg.iic.model import IICNet, for_inference
from geoseg.preview import colourize, save_png, with_legend
from geoseg.progress import Progress, progress_bar
from geoseg.sources import RasterInfo, band_names, open_dataset, open_raster, read_scaled, usable_bands
from geoseg.style import StyleClass, paletted_raster_qml, pseudocolour_raster_qml
from geoseg.windows import WindowGrid, blend_weights

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

STAGE = "segment"  # names the outputs' manifest: .<stem>.geoseg-segment.json
NODATA = 255
CONFIDENCE_MAX = 100  # confidence is stored as a whole percent: 0..100, nodata 255
MIN_SIDE = 8  # the trunk pools once: a window needs a few pixels on each side


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
    """Where the outputs of ``source`` go (the names of :mod:`geoseg.outputs`)."""
    stem = source.stem
    clusters = outputs.clusters_path(source, out_dir)
    confidence = out_dir / f"{stem}{outputs.CONFIDENCE}.tif"
    return {
        "clusters": clusters,
        "confidence": confidence,
        "clusters_qml": outputs.style_path(clusters),
        "confidence_qml": outputs.style_path(confidence),
        "preview_png": outputs.preview_path(clusters),
        "stac_item": out_dir / f"{stem}{outputs.PREDICTION}.json",
        "gpkg": outputs.polygons_path(clusters),
    }


# --- checks -------------------------------------------------------------------------------


def check_bands(src: DatasetReader, path: Path, meta: ModelMeta, model_dir: Path) -> list[int]:
    """The source bands to feed the model, checked against model.json (count, dtype, order).

    Count and dtype must match (a uint16 raster through a uint8 model gives garbage, not an
    error, so it is refused). Order is checked where both sides name their bands: the same
    names in another order is refused; unrelated naming schemes are not compared.
    """
    bands = list(usable_bands(src, None, path))
    expected = meta.arch.in_channels
    if len(bands) != expected:
        raise InputError(
            f"{path} has {len(bands)} bands (alpha excluded) but model {model_dir} expects {expected} "
            f"({', '.join(meta.band_names)})"
        )
    src_dtype, model_dtype = np.dtype(src.dtypes[bands[0] - 1]), np.dtype(meta.dtype)
    if src_dtype.kind != model_dtype.kind or (src_dtype.kind in "iu" and src_dtype != model_dtype):
        raise InputError(f"{path} is {src_dtype} but model {model_dir} was trained on {model_dtype} pixels")
    names = list(band_names(src, bands))
    model_names = [n.lower() for n in meta.band_names]
    if sorted(names) == sorted(model_names) and names != model_names:
        raise InputError(f"{path} has bands in the order {names} but model {model_dir} expects {model_names}")
    return bands


# --- inference ----------------------------------------------------------------------------


def predict_probabilities(
    model: IICNet, batch: torch.Tensor, scale: float = 1.0, head: str = "b"
) -> torch.Tensor:
    """(N, C, h, w) raw pixels -> (N, k, h, w) softmax, resampled as the model was trained.

    With ``scale != 1`` the input is resampled to the model's grid (bilinear, antialiased
    when shrinking, like an averaging read) and the probabilities back to (h, w).
    """
    h, w = batch.shape[-2:]
    x = batch.float()
    if scale != 1.0:  # an even size at the model's scale keeps the pooling geometry exact
        size = (max(MIN_SIDE, 2 * round(h * scale / 2)), max(MIN_SIDE, 2 * round(w * scale / 2)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    with torch.inference_mode():
        probs = model(x.contiguous(memory_format=torch.channels_last), heads=head)[head][0]
    if probs.shape[-2:] != (h, w):
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return probs.contiguous()


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


def _pooling(model: IICNet) -> int:
    """The network's total downsampling: windows are aligned to it (max-pool phase)."""
    factor = 1
    for module in model.modules():
        if isinstance(module, torch.nn.MaxPool2d):
            factor *= int(module.stride if isinstance(module.stride, int) else module.stride[0])
    return factor


def receptive_radius(model: IICNet) -> int:
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


def plan_grid(model: IICNet, meta: ModelMeta, config: SegmentConfig, height: int, width: int) -> WindowGrid:
    """The window grid over the raster padded to the alignment (source pixels).

    Without ``config.window`` the window is chosen from the model, the memory of a forward
    pass and the raster (:mod:`geoseg.window_size`: up to 512 px at the model's scale,
    never below the patch); otherwise it is ``config.window`` at the model's scale. The
    overlap is ``config.overlap`` (a fraction) or, by default, only the seam that seamless
    blending needs. Window,
    overlap and offsets are multiples of the pooling factor (at the model's scale), so
    every window meets the same max-pool grid and the factor-2 upsampling that a single
    pass over the whole raster would; an odd-sized raster is padded by edge replication
    (the padding is never written). A non-zero overlap is raised to at least twice the
    receptive radius (+ alignment), so that every pixel has a window that saw all of its
    context (see :func:`geoseg.windows.ramp`).
    """
    align = max(1, round(_pooling(model) / min(meta.scale, 1.0)))
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
    model: IICNet, meta: ModelMeta, config: SegmentConfig, height: int, width: int, align: int
) -> WindowGrid:
    """Windows up to 512 px at the model's scale with the seam blending needs (or ``config.overlap``)."""
    from geoseg import window_size

    per_pixel = window_size.activation_bytes_per_pixel(model)
    model_side = min(
        window_size.MAX_MODEL_SIDE, window_size.max_side_for_memory(per_pixel, config.batch_size)
    )
    min_side = max(MIN_SIDE, round(meta.patch_size / meta.scale))
    max_side = max(min_side, round(model_side / meta.scale))
    seam = window_size.seam_pixels(receptive_radius(model) / meta.scale, align)
    return window_size.default_grid(height, width, min_side, max_side, seam, align, config.overlap or 0.0)


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
    model: IICNet,
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
    device = next(model.parameters()).device
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
                probs = predict_probabilities(
                    model, torch.from_numpy(batch).to(device), meta.scale, config.head
                )
                probs = probs.float().cpu().numpy()
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
    model: IICNet, src: DatasetReader, bands: list[int], config: SegmentConfig
) -> Callable[[np.ndarray, int], np.ndarray] | None:
    """The ``--refine`` hook for this raster (None: the blended probabilities as they are)."""
    if config.refine is None:
        return None
    from geoseg.superpixels import SuperpixelRefiner

    buffers = dict(model.named_buffers())  # the model's own input normalisation
    mean, std = (buffers[name].detach().cpu().numpy() for name in ("input_mean", "input_std"))
    return SuperpixelRefiner(src, bands, mean, std, config.refine_size)


# --- outputs ------------------------------------------------------------------------------


def cluster_table(meta: ModelMeta, config: SegmentConfig, model: IICNet) -> list[Cluster]:
    """The clusters of the head used: model.json's table for head B, default colours for A."""
    if config.head == "b" and meta.clusters:
        return sorted(meta.clusters, key=lambda c: c.id)
    return default_clusters(model.arch.k_a if config.head == "a" else model.arch.k_b)


def style_classes(clusters: Sequence[Cluster]) -> list[StyleClass]:
    return [StyleClass(c.id, tuple(c.colour), c.name) for c in clusters]  # type: ignore[arg-type]


def write_preview(clusters_tif: Path, clusters: Sequence[Cluster], out: Path, size: int) -> Path:
    """PNG of the cluster COG with a legend of the clusters it shows, read decimated (from
    its overviews): never the full raster."""
    with rasterio.open(clusters_tif) as src:
        factor = max(1.0, max(src.height, src.width) / size)
        shape = (max(1, round(src.height / factor)), max(1, round(src.width / factor)))
        ids = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    colours = [(128, 128, 128)] * (max((c.id for c in clusters), default=-1) + 1)
    for c in clusters:
        colours[c.id] = tuple(c.colour)  # type: ignore[assignment]
    shown = set(np.unique(ids).tolist())
    entries = [(tuple(c.colour), c.label) for c in sorted(clusters, key=lambda c: c.id) if c.id in shown]
    return save_png(with_legend(colourize(ids, colours, NODATA), entries), out, max_size=None)


def segment_raster(
    model: IICNet,
    meta: ModelMeta,
    model_dir: Path,
    source: Path,
    out_dir: Path,
    config: SegmentConfig,
    progress: Progress = True,
    client: Client | None = None,
) -> SegmentResult:
    """Segment one raster with a loaded model; see :func:`segment`.

    Every output is written into a staging folder and the set is published together,
    its manifest last (:func:`geoseg.fileio.output_set`): a killed or failed run never
    leaves new and old outputs of one source side by side as if they were one result.
    """
    with output_set(out_dir, source.stem, STAGE) as staging:
        staged = _write_outputs(model, meta, model_dir, source, staging, config, progress, client)
    return _published(staged, out_dir)


def _published(result: SegmentResult, out_dir: Path) -> SegmentResult:
    moved = {
        f.name: out_dir / value.name
        for f in dataclasses.fields(result)
        if f.name != "source" and isinstance(value := getattr(result, f.name), Path)
    }
    return dataclasses.replace(result, **moved)


def _write_outputs(
    model: IICNet,
    meta: ModelMeta,
    model_dir: Path,
    source: Path,
    out_dir: Path,
    config: SegmentConfig,
    progress: bool,
    client: Client | None = None,
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
            if client is None:
                _segment_into(model, meta, src, source, bands, ids_tmp, conf_tmp, config, progress)
            else:  # row bands as Dask tasks (geoseg.distributed)
                from geoseg.distributed import segment_on_cluster

                args = (model_dir, src, source, bands, ids_tmp, conf_tmp, config, progress)
                segment_on_cluster(client, model, meta, *args)
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
    """The STAC item of one prediction (label + projection extensions), beside the outputs."""
    item = prediction_item(result, model_dir, meta, clusters)
    item.set_self_href(str(result.stac_item.resolve()))
    item.make_asset_hrefs_relative()
    with atomic_path(result.stac_item) as tmp:
        tmp.write_text(json.dumps(item.to_dict(include_self_link=False), indent=2) + "\n")
    return result.stac_item


def prediction_item(
    result: SegmentResult, model_dir: Path, meta: ModelMeta, clusters: Sequence[Cluster]
) -> pystac.Item:
    """:func:`geoseg.stac.prediction_item` with this result's outputs as assets."""
    from geoseg.stac import prediction_item as stac_prediction_item

    cog = "image/tiff; application=geotiff; profile=cloud-optimized"
    kinds = {
        "confidence": (cog, ["data"]),
        "clusters_qml": ("application/xml", ["style"]),
        "confidence_qml": ("application/xml", ["style"]),
        "preview_png": ("image/png", ["overview"]),
        "gpkg": ("application/geopackage+sqlite3", ["data", "labels"]),
        "gpkg_qml": ("application/xml", ["style"]),
    }
    assets = {
        key: (Path(getattr(result, key)), media, roles)
        for key, (media, roles) in kinds.items()
        if getattr(result, key) is not None
    }
    item = stac_prediction_item(result.clusters, result.source, model_dir, clusters, assets)
    item.properties["geoseg:confidence_units"] = "percent"
    return item


def segment(
    model_dir: str | Path,
    sources: Sequence[str | Path],
    out_dir: str | Path,
    config: SegmentConfig | None = None,
    progress: Progress = True,
    overwrite: bool = False,
    dask_address: str | None = None,
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
        overwrite: replace files at output names that an earlier segment run did not write.
        dask_address: segment each raster in row bands (``config.band_rows``) on the Dask
            scheduler at this address (:mod:`geoseg.distributed`; the same outputs); the model,
            sources and ``out_dir`` must be on a file system every worker sees.

    Returns:
        One :class:`SegmentResult` per source, in order.

    Raises:
        InputError: a missing/corrupt model or raster, or bands that do not match the model.
        ConfigError: bad parameters.
    """
    from geoseg.train import resolve_device

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
    from geoseg.distributed import connect

    with connect(dask_address) as client:  # an address that does not answer fails here, before work
        model, meta = load_bundle(model_dir, resolve_device(config.device))
        model = for_inference(model)
        with locked(out_dir, "segment output folder"):
            return [
                segment_raster(model, meta, model_dir, path, out_dir, config, progress, client)
                for path in paths
            ]


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
