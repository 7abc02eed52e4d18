"""Label-free baselines written as cluster rasters, so they go through ``geoseg evaluate``.

Every quality number of IIC needs its floor beside it: k-means on per-band standardised
raw pixels (what a GIS user would try first), and a randomly initialised IIC network
(how much structure the architecture alone gives). Both write ``<stem>_clusters.tif``
exactly like segmentation does: uint8 ids, nodata 255 where the source is nodata, the
source's CRS and transform (a plain GeoTIFF with the source's pixel grid for PNG/JPEG).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window
from tqdm import tqdm

from geoseg.config import BaselineConfig
from geoseg.errors import InputError
from geoseg.io import outputs
from geoseg.io.cog import create_raster, stored_transform, to_cog
from geoseg.io.fileio import (
    check_free_space,
    check_set,
    locked,
    made_for_the_run,
    output_set,
    tiled_intermediate,
)
from geoseg.io.outputs import NODATA, check_unique_stems
from geoseg.io.preview import write_preview
from geoseg.io.sources import (
    discover_sources,
    finite_mask,
    open_dataset,
    reading,
    report_georeferencing,
    usable_bands,
)
from geoseg.io.style import StyleClass, paletted_raster_qml
from geoseg.messages import plural
from geoseg.models.bundle import CLUSTERS_TAG, Cluster, clusters_to_tag

__all__ = [
    "PixelKMeans",
    "cluster_cog",
    "fit_kmeans",
    "kmeans_baseline",
    "predict_kmeans",
    "random_net_baseline",
    "sample_pixels",
    "source_bands",
    "write_baseline_item",
]

log = logging.getLogger(__name__)

STAGE = "baseline"  # names the outputs' manifest: .<stem>.geoseg-baseline.json
PREVIEW_SIZE = 1024

# (C, h, w) float32 pixels and (h, w) validity -> (h, w) uint8 cluster ids
BlockPredictor = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --- reading sources ----------------------------------------------------------------------


def source_bands(src: rasterio.io.DatasetReader, n: int | None, name: Path) -> list[int]:
    """1-based indexes of the bands to use: alpha excluded, the first ``n`` if given."""
    bands = list(usable_bands(src, None, name))
    if n is not None:
        if len(bands) < n:
            raise InputError(f"{name} has {plural(len(bands), 'usable band')}, fewer than the {n} asked for")
        bands = bands[:n]
    return bands


def _read(src: rasterio.io.DatasetReader, bands: list[int], window: Window) -> tuple[np.ndarray, np.ndarray]:
    with reading(src):
        data = src.read(bands, window=window).astype(np.float32)
        valid = np.all(src.read_masks(bands, window=window) > 0, axis=0) & finite_mask(data)
    if data.dtype.kind == "f":  # NaN and +-inf are nodata
        data = np.where(np.isfinite(data), data, 0).astype(data.dtype, copy=False)
    return data, valid


def _row_blocks(height: int, width: int, pixels: int) -> Iterator[Window]:
    rows = max(1, pixels // max(1, width))
    for row in range(0, height, rows):
        yield Window(0, row, width, min(rows, height - row))


def sample_pixels(sources: Sequence[Path], config: BaselineConfig) -> np.ndarray:
    """A seeded, roughly uniform subsample of valid pixels over all sources: (N, C) float64.

    Streams block by block (Bernoulli sampling), so large rasters are never held whole.
    """
    rng = np.random.default_rng(config.seed)
    quota = config.fit_pixels / len(sources)
    parts: list[np.ndarray] = []
    n_bands: int | None = None
    for path in sources:
        with open_dataset(path) as src:
            bands = source_bands(src, config.bands, path)
            if n_bands is not None and len(bands) != n_bands:
                raise InputError(
                    f"{path} has {plural(len(bands), 'band')}, other sources {n_bands}: use --bands N"
                )
            n_bands = len(bands)
            p = min(1.0, 2.0 * quota / (src.width * src.height))  # x2: nodata and rounding headroom
            for window in _row_blocks(src.height, src.width, config.block_pixels):
                data, valid = _read(src, bands, window)
                keep = valid & (rng.random(valid.shape) < p)
                parts.append(data[:, keep].T.astype(np.float64))
    pixels = np.concatenate(parts) if parts else np.zeros((0, n_bands or 1))
    if len(pixels) > config.fit_pixels:
        pixels = pixels[rng.choice(len(pixels), config.fit_pixels, replace=False)]
    if len(pixels) < max(config.k * 10, 100):
        raise InputError(
            f"only {plural(len(pixels), 'valid pixel')} sampled from {plural(len(sources), 'source')}: too few to fit"
        )
    return pixels


def band_statistics(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation (std floored so constant bands do not divide by 0)."""
    return pixels.mean(axis=0), np.maximum(pixels.std(axis=0), 1e-6)


# --- writing cluster rasters like their source ----------------------------------------------


def cluster_output_path(source: Path, out_dir: Path) -> Path:
    return outputs.clusters_path(source, out_dir)


def write_cluster_raster(
    source: Path,
    out_path: Path,
    predict: BlockPredictor,
    bands: int | None,
    colours: Sequence[tuple[int, int, int]],
    tile: tuple[int, int],
    margin: int = 0,
    method: str = "baseline",
) -> Path:
    """Predict a source window by window and write uint8 ids on the source's grid, atomically.

    Each window of ``tile`` (rows, cols) is read with ``margin`` pixels of context on every
    side (clipped at the edges), predicted, and only its core is written. Pixels invalid in
    the source (nodata, alpha, mask) are written as 255, the output's nodata. The raster is
    a COG like segment's, with its preview, style and STAC item (``geoseg:method`` =
    ``method``) beside it.
    """
    with open_dataset(source) as src:
        use = source_bands(src, bands, source)
        profile = {
            "driver": "GTiff",
            "width": src.width,
            "height": src.height,
            "count": 1,
            "dtype": "uint8",
            "nodata": NODATA,
            "crs": src.crs,
            "transform": stored_transform(src.crs, src.transform),
            "compress": "deflate",
        }
        if src.width >= 256 and src.height >= 256:
            profile.update(tiled=True, blockxsize=256, blockysize=256)
        tmp = tiled_intermediate(out_path)
        try:
            with create_raster(tmp, profile) as dst:
                for core in _tiles(src.height, src.width, *tile):
                    outer = _grow(core, margin, src.height, src.width)
                    data, valid = _read(src, use, outer)
                    ids = predict(data, valid).astype(np.uint8)
                    ids[~valid] = NODATA
                    r0, c0 = core.row_off - outer.row_off, core.col_off - outer.col_off
                    dst.write(ids[r0 : r0 + core.height, c0 : c0 + core.width], 1, window=core)
            cluster_cog(tmp, out_path, colours, {"GEOSEG_SOURCE": str(source)})
        finally:
            tmp.unlink(missing_ok=True)
    _companions(out_path, colours)
    write_baseline_item(out_path, source, len(colours), method)
    return out_path


def cluster_cog(
    tmp: Path, out_path: Path, colours: Sequence[tuple[int, int, int]], tags: dict[str, str]
) -> None:
    """A baseline's cluster ids ``tmp`` as the COG ``out_path``: its colour table, the cluster
    table tag (unnamed clusters) beside ``tags``, mode-resampled overviews."""
    table = clusters_to_tag([Cluster(id=i, colour=c) for i, c in enumerate(colours)])
    to_cog(
        tmp,
        out_path,
        resampling="mode",
        colormap={i: (*c, 255) for i, c in enumerate(colours)},
        tags={CLUSTERS_TAG: table, **tags},
        description="cluster id",
    )


def _companions(cluster_raster: Path, colours: Sequence[tuple[int, int, int]]) -> None:
    """What segmentation writes beside a cluster raster: a PNG preview and a QGIS style."""
    classes = [StyleClass(i, c) for i, c in enumerate(colours)]
    write_preview(cluster_raster, classes, outputs.preview_path(cluster_raster), PREVIEW_SIZE)
    paletted_raster_qml(classes, outputs.style_path(cluster_raster))


def write_baseline_item(
    clusters: Path, source: Path, k: int, method: str, model_path: Path | None = None
) -> Path:
    """A baseline's ``<stem>_prediction.json`` beside its cluster COG, as segment writes one
    (:func:`geoseg.stac.items.prediction_item`), with ``geoseg:method``; linked ``via`` the
    fitted model's JSON where the baseline saves one (superpixels), else to no model."""
    import pystac

    from geoseg.stac.items import prediction_item, save_item

    assets = {
        "clusters_qml": (outputs.style_path(clusters), *outputs.OUTPUT_ASSETS["clusters_qml"]),
        "preview_png": (outputs.preview_path(clusters), *outputs.OUTPUT_ASSETS["preview_png"]),
    }
    classes = [Cluster(id=i, colour=c) for i, c in enumerate(_colours(k))]  # unnamed: "cluster N"
    item = prediction_item(clusters, source, None, classes, assets)
    if model_path is not None:
        href = str(model_path.resolve())
        item.add_link(pystac.Link("via", href, media_type=outputs.JSON_MEDIA_TYPE, title=f"{method} model"))
    item.properties["geoseg:method"] = method
    return save_item(item, outputs.prediction_path(clusters))


def _tiles(height: int, width: int, tile_rows: int, tile_cols: int) -> Iterator[Window]:
    for row in range(0, height, tile_rows):
        for col in range(0, width, tile_cols):
            yield Window(col, row, min(tile_cols, width - col), min(tile_rows, height - row))


def _grow(window: Window, margin: int, height: int, width: int) -> Window:
    r0, c0 = max(0, window.row_off - margin), max(0, window.col_off - margin)
    r1 = min(height, window.row_off + window.height + margin)
    c1 = min(width, window.col_off + window.width + margin)
    return Window(c0, r0, c1 - c0, r1 - r0)


def _colours(k: int) -> list[tuple[int, int, int]]:
    from geoseg.models.bundle import default_clusters

    return [c.colour for c in default_clusters(k)]


def _prepare(
    sources: Sequence[str | Path], out_dir: str | Path, overwrite: bool = False
) -> tuple[list[Path], Path]:
    """Check inputs and outputs before any fitting: foreign files of the output names are
    refused (unless ``overwrite``), the folder must be writable and have room."""
    if not sources:
        raise InputError("no sources given")
    paths = discover_sources(sources)  # folders of rasters and STAC JSON, as for ingest
    for path in paths:
        if not path.is_file():
            raise InputError(f"source not found: {path}")
    check_unique_stems(paths)
    out = Path(out_dir)
    needed = 0
    for path in paths:
        check_set(out, path.stem, STAGE, _output_names(path, out), overwrite)
        with open_dataset(path) as src:
            report_georeferencing(path, src.crs, src.transform)
            needed += src.height * src.width
    check_free_space(out, needed)
    out.mkdir(parents=True, exist_ok=True)
    return paths, out


def _output_names(source: Path, out_dir: Path) -> list[Path]:
    raster = cluster_output_path(source, out_dir)
    item = out_dir / f"{source.stem}{outputs.PREDICTION}.json"  # written by the superpixel baseline
    return [raster, outputs.preview_path(raster), outputs.style_path(raster), item]


def _publish(source: Path, out_dir: Path, write: Callable[[Path], Path]) -> Path:
    """Write one source's cluster raster and companions as a published set; the final raster path."""
    with locked(out_dir, "baseline output folder"), output_set(out_dir, source.stem, STAGE) as staging:
        staged = write(cluster_output_path(source, staging))
    return out_dir / staged.name


# --- k-means ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelKMeans:
    """Centroids in standardised band space, ordered by mean standardised value (dark first)."""

    mean: np.ndarray
    std: np.ndarray
    centroids: np.ndarray  # (k, C)

    def predict(self, data: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(C, h, w) raw pixels -> (h, w) nearest-centroid ids."""
        mean, std, centroids = (a.astype(np.float32) for a in (self.mean, self.std, self.centroids))
        z = (data.reshape(data.shape[0], -1).T - mean) / std
        # ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2; the first term is the same for every c
        scores = z @ centroids.T * -2.0 + (centroids**2).sum(axis=1)
        return scores.argmin(axis=1).astype(np.uint8).reshape(data.shape[1:])


def fit_kmeans(sources: Sequence[str | Path], config: BaselineConfig) -> PixelKMeans:
    """MiniBatchKMeans on a seeded subsample of per-band standardised valid pixels."""
    from sklearn.cluster import MiniBatchKMeans

    config.validate()
    pixels = sample_pixels([Path(s) for s in sources], config)
    mean, std = band_statistics(pixels)
    z = (pixels - mean) / std
    km = MiniBatchKMeans(n_clusters=config.k, random_state=config.seed, batch_size=4096, n_init=3)
    km.fit(z)
    order = np.argsort(km.cluster_centers_.mean(axis=1), kind="stable")
    return PixelKMeans(mean=mean, std=std, centroids=km.cluster_centers_[order])


def kmeans_baseline(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    config: BaselineConfig | None = None,
    fit_on: Sequence[str | Path] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Fit k-means on ``fit_on`` (default: the sources) and write one cluster raster per source."""
    with made_for_the_run(out_dir):  # a refused or failed run leaves no empty --out
        config = (config or BaselineConfig()).validate()
        paths, out = _prepare(sources, out_dir, overwrite)
        model = fit_kmeans(fit_on or paths, config)
        return _write_kmeans(model, paths, out, config)


def predict_kmeans(
    model: PixelKMeans,
    sources: Sequence[str | Path],
    out_dir: str | Path,
    config: BaselineConfig,
    overwrite: bool = False,
) -> list[Path]:
    """Write ``<stem>_clusters.tif`` for each source with a fitted model."""
    with made_for_the_run(out_dir):  # a refused or failed run leaves no empty --out
        paths, out = _prepare(sources, out_dir, overwrite)
        return _write_kmeans(model, paths, out, config)


def _write_kmeans(model: PixelKMeans, paths: Sequence[Path], out: Path, config: BaselineConfig) -> list[Path]:
    """predict_kmeans after its checks (_prepare), which kmeans_baseline ran before the fit."""
    colours = _colours(len(model.centroids))
    written = []
    for path in tqdm(paths, desc="k-means", unit="raster", leave=False):
        with open_dataset(path) as src:
            width = src.width
            if len(source_bands(src, config.bands, path)) != model.centroids.shape[1]:
                raise InputError(
                    f"{path}: band count differs from the fitted model's {model.centroids.shape[1]}"
                )
        rows = max(1, config.block_pixels // width)
        written.append(
            _publish(
                path,
                out,
                functools.partial(
                    write_cluster_raster,
                    path,
                    predict=model.predict,
                    bands=config.bands,
                    colours=colours,
                    tile=(rows, width),
                    method="kmeans",
                ),
            )
        )
    log.info("k-means (k=%d): %s in %s", len(model.centroids), plural(len(written), "cluster raster"), out)
    return written


# --- random network -----------------------------------------------------------------------


def random_net_baseline(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    config: BaselineConfig | None = None,
    fit_on: Sequence[str | Path] | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """A seeded, randomly initialised IIC network; argmax of head B per pixel.

    Its input normalisation is set from the pixel statistics of ``fit_on`` (default: the
    sources), as training would, so the floor measures the untrained architecture, not a
    scaling accident.
    """
    import torch

    from geoseg.iic.model import Architecture, build_model

    with made_for_the_run(out_dir):  # a refused or failed run leaves no empty --out
        config = (config or BaselineConfig()).validate()
        paths, out = _prepare(sources, out_dir, overwrite)
        pixels = sample_pixels([Path(p) for p in fit_on] if fit_on else paths, config)
        mean, std = band_statistics(pixels)
        torch.manual_seed(config.seed)
        arch = Architecture(in_channels=pixels.shape[1], k_a=config.k, k_b=config.k, preset=config.preset)
        model = build_model(arch).eval()
        model.set_normalisation(mean.tolist(), std.tolist())

        def predict(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                probs = model(torch.from_numpy(data[None]), heads="b")["b"][0]
            return probs[0].argmax(0).numpy().astype(np.uint8)

        colours = _colours(config.k)
        written = [
            _publish(
                path,
                out,
                functools.partial(
                    write_cluster_raster,
                    path,
                    predict=predict,
                    bands=config.bands,
                    colours=colours,
                    tile=(config.tile, config.tile),
                    margin=config.margin,
                    method="random-net",
                ),
            )
            for path in tqdm(paths, desc="random network", unit="raster", leave=False)
        ]
        log.info(
            "random network (k=%d, seed %d): %s in %s",
            config.k,
            config.seed,
            plural(len(written), "cluster raster"),
            out,
        )
        return written
