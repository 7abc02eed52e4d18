"""Object-based baseline and refinement: SLIC superpixels, clustered on their statistics.

What a GIS user runs without training (OBIA): cut the image into superpixels (SLIC,
scikit-image), describe each segment by the mean and standard deviation of every band
(RGB bands in CIELAB, others as z-scores), and cluster the segments with one
MiniBatchKMeans fitted on the segments of all fitting rasters together, so cluster ids
are shared across rasters. Outputs are those of every cluster raster in geoseg
(``<stem>_clusters.tif`` COG, uint8, nodata 255, colour table, ``.qml``, ``.png``
preview, ``<stem>_prediction.json`` STAC item), plus the fitted model as JSON (no pickle)
that :func:`apply_superpixels` applies to other rasters.

Large rasters: superpixels are computed block by block, each block read with a halo of
context (a multiple of the superpixel size, so SLIC's seed grid lines up with that of a
whole-image run). A segment that crosses a block seam is cut there; each part keeps the
statistics of the whole segment as its block saw it (core + halo), so both parts fall in
the same cluster unless the two blocks drew the segment differently (docs/architecture.md).
The segment labels go to a temporary int32 tiled GeoTIFF between fitting and painting,
so memory is bounded by the block, never by the raster: every read goes through GDAL's
bounded block cache (``GDAL_CACHE_BYTES``, not GDAL's default of 5% of RAM), features
are computed in row chunks of the block, and the only per-raster arrays are the compact
per-segment features (float32), predicted in chunks.

Nodata pixels (nodata, alpha, mask) belong to no segment (label 0) and stay nodata.

:class:`SuperpixelRefiner` is the ``geoseg segment --refine superpixels`` hook: it replaces
the blended probabilities of every pixel by the mean over its superpixel, so each
superpixel takes the probability-weighted majority cluster and its confidence is that
cluster's mean probability in the segment.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.io import DatasetReader
from rasterio.windows import Window
from tqdm import tqdm

from geoseg.baseline import (
    _colours,
    _companions,
    _prepare,
    _publish,
    cluster_cog,
    sample_pixels,
    source_bands,
    write_baseline_item,
)
from geoseg.config import BaselineConfig, SuperpixelConfig
from geoseg.errors import InputError
from geoseg.io.cog import GDAL_CACHE_BYTES, create_raster, tiled_profile
from geoseg.io.fileio import (
    content_id,
    made_for_the_run,
    superpixel_labels_intermediate,
    tiled_intermediate,
    write_json_atomic,
)
from geoseg.io.outputs import NODATA
from geoseg.io.sources import open_dataset, reading
from geoseg.messages import plural

__all__ = [
    "MODEL_NAME",
    "PixelSpace",
    "SuperpixelModel",
    "SuperpixelRefiner",
    "apply_superpixels",
    "bounded_gdal_cache",
    "fit_superpixel_model",
    "fit_superpixels",
    "load_model",
    "segment_statistics",
    "superpixel_baseline",
    "superpixel_labels",
    "superpixel_raster",
]

log = logging.getLogger(__name__)

MODEL_NAME = "superpixel_model.json"
MODEL_FORMAT = "geoseg-superpixel-kmeans"
Z_SCALE = 10.0  # a non-RGB band's standard deviation counts as 10 CIELAB units in SLIC
RGB = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
TRANSFORM_ROWS = 256  # rows per chunk of the feature transform: its float temporaries stay small
PREDICT_SEGMENTS = 1 << 16  # segments per chunk of the nearest-centroid search
# sRGB (D65) -> XYZ, rows divided by the reference white: CIELAB's x/Xn, y/Yn, z/Zn
_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]],
    np.float64,
) / np.array([[0.95047], [1.0], [1.08883]])
_XYZ32 = _XYZ.astype(np.float32)


# --- pixel space --------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelSpace:
    """How raw bands become SLIC's feature image: CIELAB for RGB, z-scores x 10 for the rest."""

    rgb: bool  # the first three bands are red, green, blue
    white: float  # raw value of full intensity of the RGB bands
    mean: np.ndarray  # (C,) band means (z-scores of the non-RGB bands)
    std: np.ndarray  # (C,)

    @property
    def bands(self) -> int:
        return len(self.mean)

    def transform(self, data: np.ndarray) -> np.ndarray:
        """(C, h, w) raw pixels (any dtype) -> (h, w, C) float32 features.

        In chunks of ``TRANSFORM_ROWS`` rows: CIELAB's float temporaries are several times
        the block's size, so a whole-block pass would dominate the memory of a run.
        """
        out = np.empty((*data.shape[1:], data.shape[0]), np.float32)
        for row in range(0, data.shape[1], TRANSFORM_ROWS):
            rows = slice(row, row + TRANSFORM_ROWS)
            self._transform_into(data[:, rows].astype(np.float32), out[rows])
        return out

    def _transform_into(self, data: np.ndarray, out: np.ndarray) -> None:
        start = 0
        if self.rgb:
            out[..., :3] = _lab(data[:3], self.white)
            start = 3
        for band in range(start, data.shape[0]):
            out[..., band] = (data[band] - self.mean[band]) * (Z_SCALE / self.std[band])

    def to_json(self) -> dict:
        return {"rgb": self.rgb, "white": self.white, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, obj: dict) -> PixelSpace:
        return cls(bool(obj["rgb"]), float(obj["white"]), np.asarray(obj["mean"]), np.asarray(obj["std"]))


def _lab(rgb: np.ndarray, white: float) -> np.ndarray:
    """(3, h, w) raw RGB -> (h, w, 3) CIELAB (D65), float32 (same as skimage's rgb2lab)."""
    c = np.clip(np.moveaxis(rgb, 0, -1) * np.float32(1.0 / white), 0.0, 1.0)
    linear = np.where(c > 0.04045, ((c + 0.055) / 1.055) ** 2.4, c / 12.92).astype(np.float32)
    xyz = linear @ _XYZ32.T
    delta = 6.0 / 29.0
    f = np.where(xyz > delta**3, np.cbrt(xyz), xyz / (3 * delta * delta) + 4.0 / 29.0)
    lab = np.empty_like(f)
    lab[..., 0] = 116.0 * f[..., 1] - 16.0
    lab[..., 1] = 500.0 * (f[..., 0] - f[..., 1])
    lab[..., 2] = 200.0 * (f[..., 1] - f[..., 2])
    return lab


def bounded_gdal_cache() -> rasterio.Env:
    """GDAL's block cache capped at ``GDAL_CACHE_BYTES`` for the reads and writes inside.

    Outside such an environment GDAL caches up to 5% of RAM (1.2 GB on a 24 GB machine)
    of the blocks a pass has read, and the freed cache stays in the process's heap.
    """
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


def is_rgb(src: DatasetReader, bands: Sequence[int]) -> bool:
    """The first three bands used are tagged red, green, blue (JPEG, PNG, RGB GeoTIFF)."""
    return len(bands) >= 3 and tuple(src.colorinterp[b - 1] for b in bands[:3]) == RGB


def fit_space(sources: Sequence[Path], config: SuperpixelConfig) -> PixelSpace:
    """Band statistics and RGB white point from a seeded pixel sample of the fitting rasters."""
    with open_dataset(sources[0]) as src:
        bands = source_bands(src, config.bands, sources[0])
        rgb = is_rgb(src, bands)
        dtype = np.dtype(src.dtypes[bands[0] - 1])
    sample = BaselineConfig(  # read in blocks of the superpixel block's pixel count
        k=config.k, seed=config.seed, bands=config.bands, fit_pixels=config.fit_pixels,
        block_pixels=max(1024, config.block * config.block),
    )  # fmt: skip
    with bounded_gdal_cache():  # the sampling pass reads every block of every raster
        pixels = sample_pixels(sources, sample)
    mean, std = pixels.mean(axis=0), np.maximum(pixels.std(axis=0), 1e-6)
    white = 255.0
    if rgb and dtype != np.uint8:  # 16-bit or float RGB: the 99.9th percentile is full intensity
        white = float(max(np.percentile(pixels[:, :3], 99.9), 1e-6))
    return PixelSpace(rgb, white, mean, std)


# --- superpixels of one block -------------------------------------------------------------


def superpixel_labels(
    features: np.ndarray, valid: np.ndarray, size: int, compactness: float, iterations: int
) -> np.ndarray:
    """SLIC of one block: (h, w) int32 labels 1..n, 0 where ``valid`` is False.

    Every block seeds on SLIC's regular grid (step ``size``, starting ``size // 2`` from
    the block's corner), so blocks whose corners sit on multiples of ``size`` seed like a
    whole-image run, with or without nodata: blocks with nodata keep the grid seeds that
    fall on valid pixels (:func:`_masked_grid_slic`) instead of scikit-image's mask
    seeding, whose seeds (random points moved by k-means) depend on the block's extent.
    """
    from skimage.segmentation import slic

    h, w = valid.shape
    n_valid = int(valid.sum())
    if n_valid == 0:
        return np.zeros((h, w), np.int32)
    if n_valid < h * w:
        return _masked_grid_slic(features, valid, size, compactness, iterations)
    labels = slic(
        features,
        n_segments=max(1, n_valid // (size * size)),
        compactness=compactness,
        max_num_iter=iterations,
        channel_axis=-1,
        convert2lab=False,
        enforce_connectivity=True,
        start_label=1,
    )
    return labels.astype(np.int32, copy=False)


def _masked_grid_slic(
    features: np.ndarray, valid: np.ndarray, size: int, compactness: float, iterations: int
) -> np.ndarray:
    """scikit-image's SLIC with a mask, seeded on the grid of a fully valid block.

    The steps of ``skimage.segmentation.slic`` (0.26, pinned) with its mask: features
    rescaled to [0, 1] over the valid pixels, divided by the compactness, SLIC's k-means
    on the valid pixels only, then the connectivity pass with the segment size of the
    grid (``size``^2, the same in every block). Only the seeds differ: the grid points
    that fall on valid pixels. A fully valid block gives exactly ``slic``'s labels. Valid
    pieces no seed reached (an island smaller than a grid cell) become segments of their own.
    """
    from scipy import ndimage
    from skimage.segmentation._slic import _enforce_label_connectivity_cython, _slic_cython

    h, w, channels = features.shape
    image = features.astype(np.float32, copy=True)
    values = image[valid]
    low, high = values.min(), values.max()
    image -= low
    if high != low:
        image /= high - low
    image = np.ascontiguousarray(image[np.newaxis] * np.float32(1.0 / compactness))
    rows, cols = np.mgrid[size // 2 : h : size, size // 2 : w : size]
    seeded = valid[rows, cols]
    labels = np.zeros((h, w), np.int32)
    if seeded.any():
        segments = np.zeros((int(seeded.sum()), 3 + channels), np.float32)  # z, y, x, colour
        segments[:, 1], segments[:, 2] = rows[seeded], cols[seeded]
        mask = np.ascontiguousarray(valid[np.newaxis]).view(np.uint8)
        spacing = np.ones(3, np.float32)
        found = _slic_cython(
            image, mask, segments, np.float32(size), iterations, spacing, False,
            ignore_color=False, start_label=1,
        )  # fmt: skip
        found = _enforce_label_connectivity_cython(found, size * size // 2, 3 * size * size, start_label=1)
        labels[...] = found[0]
        labels[~valid] = 0
    unreached = valid & (labels <= 0)
    if unreached.any():
        pieces, _ = ndimage.label(unreached)
        labels[unreached] = pieces[unreached] + labels.max()
    return labels


def segment_statistics(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label 1..n: (n, 2C) [means, stds] of the features, and (n,) pixel counts."""
    flat = labels.ravel()
    n = int(flat.max()) if flat.size else 0
    counts = np.bincount(flat, minlength=n + 1)[1:].astype(np.float64)
    safe = np.maximum(counts, 1.0)
    channels = features.shape[-1]
    stats = np.zeros((n, 2 * channels), np.float64)
    for c in range(channels):
        values = features[..., c].ravel().astype(np.float64)
        total = np.bincount(flat, weights=values, minlength=n + 1)[1:]
        squares = np.bincount(flat, weights=values * values, minlength=n + 1)[1:]
        mean = total / safe
        stats[:, c] = mean
        stats[:, channels + c] = np.sqrt(np.maximum(squares / safe - mean * mean, 0.0))
    return stats, counts


# --- superpixels of a raster, block by block ------------------------------------------------


@dataclass
class SegmentedRaster:
    """One raster's segments: features (n, 2C) and, when kept, the int32 label raster (id = row + 1)."""

    source: Path
    features: np.ndarray
    labels_path: Path | None = None

    def discard(self) -> None:
        if self.labels_path is not None:
            self.labels_path.unlink(missing_ok=True)


def _blocks(height: int, width: int, block: int) -> Iterator[Window]:
    for row in range(0, height, block):
        for col in range(0, width, block):
            yield Window(col, row, min(block, width - col), min(block, height - row))


def _grow(window: Window, halo: int, height: int, width: int) -> Window:
    r0, c0 = max(0, window.row_off - halo), max(0, window.col_off - halo)
    r1 = min(height, window.row_off + window.height + halo)
    c1 = min(width, window.col_off + window.width + halo)
    return Window(c0, r0, c1 - c0, r1 - r0)


def _read(src: DatasetReader, bands: list[int], window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Raw pixels (source dtype; the transform converts chunk by chunk) and validity."""
    with reading(src):
        data = src.read(bands, window=window)
        valid = np.all(src.read_masks(bands, window=window) > 0, axis=0)
    return data, valid


def superpixel_raster(
    path: Path,
    space: PixelSpace,
    config: SuperpixelConfig,
    labels_path: Path | None = None,
    progress: bool = False,
) -> SegmentedRaster:
    """Superpixels of one raster in blocks with a halo; features of the segments in the cores.

    A segment is kept by every block whose core it touches (its part in that core gets an
    id of its own); its statistics are those of the whole segment within the block's
    window. With ``labels_path`` the ids are written there (int32, 0 = no segment).
    """
    block = max(config.size, config.block // config.size * config.size)  # seams on the seed grid
    halo = config.context
    parts: list[np.ndarray] = []
    next_id = 0
    with open_dataset(path) as src, bounded_gdal_cache():
        bands = source_bands(src, config.bands, path)
        dst = None
        if labels_path is not None:
            profile = tiled_profile(src.crs, src.transform, src.height, src.width, "int32", 0)
            dst = create_raster(labels_path, profile)
        try:
            windows = list(_blocks(src.height, src.width, block))
            for core in tqdm(windows, desc=f"superpixels {path.name}", unit="block", disable=not progress):
                outer = _grow(core, halo, src.height, src.width)
                data, valid = _read(src, bands, outer)
                features = space.transform(data)
                del data  # SLIC's own temporaries come next
                labels = superpixel_labels(
                    features, valid, config.size, config.compactness, config.iterations
                )
                stats, _ = segment_statistics(features, labels)
                r0, c0 = core.row_off - outer.row_off, core.col_off - outer.col_off
                inner = labels[r0 : r0 + core.height, c0 : c0 + core.width]
                present = np.unique(inner[inner > 0])
                remap = np.zeros(len(stats) + 1, np.int32)
                remap[present] = next_id + 1 + np.arange(len(present), dtype=np.int32)
                next_id += len(present)
                parts.append(stats[present - 1].astype(np.float32))
                if dst is not None:
                    dst.write(remap[inner], 1, window=core)
        except BaseException:
            # Ctrl-C or an error mid-raster: the caller never gets this raster's labels to
            # discard, so they go here (clean_leftovers is for runs killed outright)
            if dst is not None:
                dst.close()
                dst = None
                assert labels_path is not None
                labels_path.unlink(missing_ok=True)
            raise
        finally:
            if dst is not None:
                dst.close()
    features = np.concatenate(parts) if parts else np.zeros((0, 2 * space.bands), np.float32)
    return SegmentedRaster(path, features, labels_path)


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SuperpixelModel:
    """Everything needed to redo the baseline on other rasters; saved as JSON, never pickled."""

    space: PixelSpace
    scaler_mean: np.ndarray  # (2C,) standardisation of the segment features
    scaler_std: np.ndarray
    centroids: np.ndarray  # (k, 2C), in standardised feature space, ordered dark first
    settings: dict = field(default_factory=dict)  # SLIC settings (size, compactness, ...)

    @property
    def k(self) -> int:
        return len(self.centroids)

    def config(self, **overrides: object) -> SuperpixelConfig:
        """The SuperpixelConfig that reproduces the fitted segmentation."""
        values = {**self.settings, "k": self.k, **overrides}
        return SuperpixelConfig(**values).validate()  # type: ignore[arg-type]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(n, 2C) segment features -> (n,) uint8 nearest-centroid ids."""
        ids = np.zeros(len(features), np.uint8)
        norms = (self.centroids**2).sum(axis=1)
        for start in range(0, len(features), PREDICT_SEGMENTS):  # float64 scores of a chunk only
            chunk = slice(start, start + PREDICT_SEGMENTS)
            z = (features[chunk].astype(np.float64) - self.scaler_mean) / self.scaler_std
            ids[chunk] = (z @ self.centroids.T * -2.0 + norms).argmin(axis=1)
        return ids

    def to_json(self) -> dict:
        return {
            "format": MODEL_FORMAT,
            "version": 1,
            "k": self.k,
            "settings": self.settings,
            "space": self.space.to_json(),
            "scaler": {"mean": self.scaler_mean.tolist(), "std": self.scaler_std.tolist()},
            "centroids": self.centroids.tolist(),
        }

    def save(self, path: Path) -> Path:
        return write_json_atomic(path, self.to_json())


def load_model(path: str | Path) -> SuperpixelModel:
    """Read a model written by :func:`superpixel_baseline` (JSON; checked, never executed)."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_NAME
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"superpixel model not found: {path}") from None
    except ValueError as exc:  # not UTF-8 / not JSON
        raise InputError(f"{path} is not a geoseg superpixel model (JSON): {exc}") from exc
    except OSError as exc:
        raise InputError(f"unreadable superpixel model {path}: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("format") != MODEL_FORMAT:
        raise InputError(f"{path} is not a geoseg superpixel model (format {MODEL_FORMAT!r})")
    try:
        space = PixelSpace.from_json(obj["space"])
        model = SuperpixelModel(
            space=space,
            scaler_mean=np.asarray(obj["scaler"]["mean"], np.float64),
            scaler_std=np.asarray(obj["scaler"]["std"], np.float64),
            centroids=np.asarray(obj["centroids"], np.float64),
            settings=dict(obj["settings"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"corrupt superpixel model {path}: {exc}") from exc
    if model.centroids.ndim != 2 or model.centroids.shape[1] != 2 * space.bands:
        raise InputError(
            f"corrupt superpixel model {path}: centroids do not match {plural(space.bands, 'band')}"
        )
    return model


def fit_superpixels(
    segmented: Sequence[SegmentedRaster], space: PixelSpace, config: SuperpixelConfig
) -> SuperpixelModel:
    """One MiniBatchKMeans over the segments of all fitting rasters (seeded subsample)."""
    from sklearn.cluster import MiniBatchKMeans

    features = np.concatenate([s.features for s in segmented])  # float32; float64 once subsampled
    if len(features) < config.k:
        names = ", ".join(str(s.source) for s in segmented)
        raise InputError(
            f"only {plural(len(features), 'superpixel')} in {names}: fewer than k={config.k}; "
            f"use a smaller --size (now {config.size}) or a smaller --k"
        )
    rng = np.random.default_rng(config.seed)
    if len(features) > config.fit_segments:
        features = features[np.sort(rng.choice(len(features), config.fit_segments, replace=False))]
    features = features.astype(np.float64)
    mean, std = features.mean(axis=0), np.maximum(features.std(axis=0), 1e-6)
    km = MiniBatchKMeans(n_clusters=config.k, random_state=config.seed, batch_size=4096, n_init=3)
    km.fit((features - mean) / std)
    order = np.argsort(km.cluster_centers_.mean(axis=1), kind="stable")
    settings = {
        "size": config.size,
        "compactness": config.compactness,
        "iterations": config.iterations,
        "block": config.block,
        "halo": config.halo,
        "bands": config.bands,
        "seed": config.seed,
    }
    return SuperpixelModel(space, mean, std, km.cluster_centers_[order], settings)


# --- checks (cheap, before any superpixel is computed) -------------------------------------


def _has_valid_pixel(src: DatasetReader, bands: list[int]) -> bool:
    """Scan the masks in row blocks, stopping at the first valid pixel."""
    rows = max(1, (1 << 22) // src.width)
    for row in range(0, src.height, rows):
        window = Window(0, row, src.width, min(rows, src.height - row))
        with reading(src):
            masks = src.read_masks(bands, window=window)
        if np.all(masks > 0, axis=0).any():
            return True
    return False


def check_sources(paths: Sequence[Path], config: SuperpixelConfig, n_bands: int | None = None) -> int:
    """Band counts agree (with ``n_bands`` if given), the size fits, some pixel is valid.

    Returns the upper bound of the number of superpixels (pixels / size^2).
    """
    expected = 0
    for path in paths:
        with open_dataset(path) as src, bounded_gdal_cache():
            bands = source_bands(src, config.bands, path)
            if n_bands is not None and len(bands) != n_bands:
                raise InputError(
                    f"{path} has {plural(len(bands), 'band')} (alpha excluded) but the superpixel model has {n_bands}"
                )
            n_bands = len(bands)
            if config.size > min(src.height, src.width):
                raise InputError(
                    f"superpixel size {config.size} px is larger than {path} ({src.height}x{src.width} px): "
                    "use a smaller --size"
                )
            if not _has_valid_pixel(src, bands):
                raise InputError(f"{path} has no valid pixel (all nodata): nothing to segment")
            expected += (src.height * src.width) // (config.size * config.size)
    return expected


# --- writing cluster rasters ----------------------------------------------------------------


def _paint(
    segmented: SegmentedRaster,
    ids: np.ndarray,
    out_path: Path,
    colours: list,
    model_path: Path,
    model_tag: str,
) -> Path:
    """Cluster COG of one raster: each segment's id, 255 where no segment; styles, preview, STAC."""
    assert segmented.labels_path is not None
    lut = np.concatenate([[NODATA], ids]).astype(np.uint8)  # label 0 (no segment) -> nodata
    tmp = tiled_intermediate(out_path)
    try:
        with bounded_gdal_cache(), open_dataset(segmented.labels_path) as labels:
            profile = tiled_profile(
                labels.crs, labels.transform, labels.height, labels.width, "uint8", NODATA
            )
            with create_raster(tmp, profile) as dst:
                for _, window in labels.block_windows(1):
                    dst.write(lut[labels.read(1, window=window)], 1, window=window)
        tags = {"GEOSEG_MODEL": model_tag, "GEOSEG_SOURCE": str(segmented.source)}
        cluster_cog(tmp, out_path, colours, tags)
    finally:
        tmp.unlink(missing_ok=True)
    _companions(out_path, colours)
    write_baseline_item(out_path, segmented.source, len(colours), "superpixels", model_path)
    return out_path


def _write_all(
    model: SuperpixelModel, segmented: Sequence[SegmentedRaster], out: Path, model_path: Path
) -> list[Path]:
    """One published output set per raster (geoseg.io.fileio.output_set, as the other baselines)."""
    colours = _colours(model.k)
    tag = content_id(model_path)  # as segment's tag: the model by content, not its path

    def painter(s: SegmentedRaster) -> Callable[[Path], Path]:
        return lambda target: _paint(s, model.predict(s.features), target, colours, model_path, tag)

    return [_publish(s.source, out, painter(s)) for s in segmented]


# --- entry points --------------------------------------------------------------------------


def fit_superpixel_model(
    fit_on: Sequence[str | Path], config: SuperpixelConfig | None = None, progress: bool = False
) -> SuperpixelModel:
    """Only the fit: the model of :func:`superpixel_baseline` on ``fit_on``, no raster written."""
    config = (config or SuperpixelConfig()).validate()
    paths = [Path(p) for p in fit_on]
    if not paths:
        raise InputError("no sources given")
    for path in paths:
        if not path.is_file():
            raise InputError(f"source not found: {path}")
    with open_dataset(paths[0]) as src:
        n_bands = len(source_bands(src, config.bands, paths[0]))
    _check_k(config, check_sources(paths, config, n_bands))
    space = fit_space(paths, config)
    segmented = [superpixel_raster(path, space, config, None, progress) for path in paths]
    return fit_superpixels(segmented, space, config)


def _check_k(config: SuperpixelConfig, expected: int) -> None:
    if config.k > expected:
        raise InputError(
            f"k={config.k} is more than the at most {expected} superpixels of size {config.size} px "
            "in the fitting rasters: use a smaller --k or --size"
        )


def superpixel_baseline(
    sources: Sequence[str | Path],
    out_dir: str | Path,
    config: SuperpixelConfig | None = None,
    fit_on: Sequence[str | Path] | None = None,
    progress: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Fit on ``fit_on`` (default: the sources), write a cluster raster per source and the model.

    The model goes to ``out_dir/superpixel_model.json``; :func:`apply_superpixels` applies it.
    Every check (files, bands, size, nodata, k) runs before the first superpixel.
    """
    with made_for_the_run(out_dir):  # a refused or failed run leaves no empty --out
        config = (config or SuperpixelConfig()).validate()
        paths, out = _prepare(sources, out_dir, overwrite)
        fit_paths = [Path(p) for p in fit_on] if fit_on else list(paths)
        for path in fit_paths:
            if not path.is_file():
                raise InputError(f"source not found: {path}")
        with open_dataset(paths[0]) as src:
            n_bands = len(source_bands(src, config.bands, paths[0]))
        check_sources(paths, config, n_bands)
        _check_k(config, check_sources(fit_paths, config, n_bands))
        space = fit_space(fit_paths, config)
        segmented: dict[Path, SegmentedRaster] = {}
        try:
            for i, path in enumerate(dict.fromkeys([*paths, *fit_paths])):
                keep = superpixel_labels_intermediate(out, path.stem, i) if path in paths else None
                segmented[path] = superpixel_raster(path, space, config, keep, progress)
            model = fit_superpixels([segmented[p] for p in fit_paths], space, config)
            model_path = model.save(out / MODEL_NAME)
            written = _write_all(model, [segmented[p] for p in paths], out, model_path)
        finally:
            for s in segmented.values():
                s.discard()
        log.info(
            "superpixels (k=%d, size %d px): %s in %s",
            config.k,
            config.size,
            plural(len(written), "cluster raster"),
            out,
        )
        return written


def apply_superpixels(
    model_path: str | Path,
    sources: Sequence[str | Path],
    out_dir: str | Path,
    progress: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Apply a saved superpixel model to other rasters (same bands): cluster rasters as the fit wrote."""
    with made_for_the_run(out_dir):  # a refused or failed run leaves no empty --out
        model = load_model(model_path)
        model_file = Path(model_path) / MODEL_NAME if Path(model_path).is_dir() else Path(model_path)
        config = model.config()
        paths, out = _prepare(sources, out_dir, overwrite)
        check_sources(paths, config, model.space.bands)
        segmented: list[SegmentedRaster] = []
        try:
            for i, path in enumerate(paths):
                segmented.append(
                    superpixel_raster(
                        path, model.space, config, superpixel_labels_intermediate(out, path.stem, i), progress
                    )
                )
            written = _write_all(model, segmented, out, model_file)
        finally:
            for s in segmented:
                s.discard()
        log.info("superpixel model %s: %s in %s", model_file, plural(len(written), "cluster raster"), out)
        return written


# --- refinement of a segmentation ----------------------------------------------------------


class SuperpixelRefiner:
    """``geoseg segment --refine superpixels``: blended probabilities averaged per superpixel.

    Called on each strip of finished rows (probabilities (k, rows, W), W >= the raster
    width, padded); it reads the strip's source pixels with a halo of ``2 x size`` rows
    (the halo's top on the seed grid), computes SLIC, and gives every pixel of a segment
    the segment's mean probability vector: the argmax is then the probability-weighted
    majority cluster of the segment, the max its mean probability. Segments are cut at
    strip seams (each part averaged on its own). Non-RGB bands are z-scored with the
    model's input normalisation.
    """

    def __init__(
        self,
        src: DatasetReader,
        bands: Sequence[int],
        mean: np.ndarray,
        std: np.ndarray,
        size: int,
        compactness: float = 10.0,
        iterations: int = 5,
    ) -> None:
        rgb = is_rgb(src, bands)
        dtype = np.dtype(src.dtypes[bands[0] - 1])
        white = 255.0 if dtype == np.uint8 else float(np.max(np.asarray(mean)[:3] + 3 * np.asarray(std)[:3]))
        self.src, self.bands = src, list(bands)
        self.space = PixelSpace(rgb, white, np.asarray(mean, np.float64), np.asarray(std, np.float64))
        self.size, self.compactness, self.iterations = size, compactness, iterations

    def __call__(self, probs: np.ndarray, row: int) -> np.ndarray:
        height, width = self.src.height, self.src.width
        rows = min(probs.shape[1], height - row)
        if rows <= 0:
            return probs
        halo = 2 * self.size
        top = max(0, (row - halo) // self.size * self.size)
        bottom = min(height, row + rows + halo)
        data, valid = _read(self.src, self.bands, Window(0, top, width, bottom - top))
        labels = superpixel_labels(
            self.space.transform(data), valid, self.size, self.compactness, self.iterations
        )
        inner = labels[row - top : row - top + rows]
        flat = inner.ravel()
        n = int(flat.max()) + 1
        counts = np.maximum(np.bincount(flat, minlength=n), 1).astype(np.float32)
        out = probs.copy()
        segmented = inner > 0
        for c in range(probs.shape[0]):
            means = np.bincount(flat, weights=probs[c, :rows, :width].ravel(), minlength=n) / counts
            view = out[c, :rows, :width]
            view[...] = np.where(segmented, means.astype(np.float32)[inner], view)
        return out
