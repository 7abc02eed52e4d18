"""Ingest: cut source rasters into a zarr v3 patch store (see geoseg.store for the contract).

How it runs, and why:

1. **Plan** (cheap, serial): open every source, check bands/dtypes/sizes/labels, lay a
   patch grid over each scaled raster, and keep the patches whose valid fraction reaches
   ``min_valid``. Validity needs the nodata/alpha mask only where the raster has one;
   otherwise it follows from the padding at the edges, without reading pixels. Knowing N
   up front lets every shard have exactly one writer.
2. **Write** (parallel, Dask): each task writes a few consecutive zarr shards (those in
   one 512-row band of a source), each shard in one go by that task alone. Patches are
   read as bounding windows of runs of patch rows. Memory per task is a few strips, never
   a whole raster.
3. **Finish**: per-band statistics are combined from the shard tasks and the group is
   marked ``complete`` last. Each finished shard leaves a marker (with its statistics) in
   ``STORE/.progress``, so an interrupted ingest resumes with the shards still missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import rasterio
import zarr
from dask.callbacks import Callback
from rasterio.enums import MaskFlags, Resampling
from rasterio.io import DatasetReader
from tqdm.auto import tqdm

from geoseg import __version__
from geoseg.cog import GDAL_CACHE_MB
from geoseg.config import IngestConfig
from geoseg.datasets import IGNORE, LabelDataset, expand_colormap, get_dataset
from geoseg.errors import ConfigError, InputError
from geoseg.fileio import sha256_file, write_json_atomic
from geoseg.sources import (
    RasterInfo,
    discover_sources,
    open_dataset,
    open_raster,
    patch_offsets,
    read_scaled,
    read_valid,
)
from geoseg.store import IMAGES, LABELS, ORIGIN, VALID, SourceInfo, StoreMeta, open_store

log = logging.getLogger(__name__)

PROGRESS_DIR = ".progress"


@dataclass(frozen=True)
class Source:
    """A source raster with its (optional) label raster, as planned."""

    info: RasterInfo
    sha256: str
    label_path: Path | None
    label_sha256: str | None


@dataclass(frozen=True)
class Plan:
    sources: list[Source]
    origins: np.ndarray  # (N, 3): source index, row, col in the scaled grid
    fingerprint: str  # identifies inputs + settings, to resume only the same ingest


# --- plan ---------------------------------------------------------------------------------


def plan_ingest(
    sources: Sequence[str | Path], config: IngestConfig, labels: Sequence[str | Path] | None = None
) -> Plan:
    """Check every input and lay out the patches to write; bad input raises InputError."""
    paths = discover_sources(sources)
    label_paths: list[Path | None] = [None] * len(paths)
    if labels is not None:
        label_paths = [Path(p) for p in labels]
        if len(label_paths) != len(paths):
            raise InputError(f"{len(label_paths)} label files for {len(paths)} sources: give one per source")
    dataset = get_dataset(config.dataset) if config.dataset else None
    planned: list[Source] = []
    origins: list[np.ndarray] = []
    for index, (path, label_path) in enumerate(zip(paths, label_paths, strict=True)):
        info = open_raster(path, config.bands)
        if planned and len(info.bands) != len(planned[0].info.bands):
            first = planned[0].info
            raise InputError(
                f"mixed band counts: {first.path} has {len(first.bands)} bands, {path} has {len(info.bands)}"
            )
        if planned and info.dtype != planned[0].info.dtype:
            raise InputError(
                f"mixed dtypes: {planned[0].info.path} is {planned[0].info.dtype}, {path} is {info.dtype}"
            )
        height, width = info.scaled_shape(config.scale)
        if height < config.patch_size or width < config.patch_size:
            raise InputError(
                f"{path} is {width}x{height} px at scale {config.scale}, smaller than one "
                f"{config.patch_size}x{config.patch_size} patch"
            )
        if label_path is not None:
            _check_label(label_path, info, dataset)
        patches = _valid_patches(info, config)
        if len(patches) == 0:
            raise InputError(f"{path} has no patch with {config.min_valid:.0%} valid pixels (all nodata?)")
        origins.append(np.column_stack([np.full(len(patches), index), patches]))
        planned.append(
            Source(info, sha256_file(path), label_path, sha256_file(label_path) if label_path else None)
        )
    fingerprint = _fingerprint(planned, config)
    return Plan(planned, np.concatenate(origins).astype(np.int64), fingerprint)


def _check_label(label_path: Path, info: RasterInfo, dataset: LabelDataset | None) -> None:
    with open_dataset(label_path) as lab:
        if (lab.width, lab.height) != (info.width, info.height):
            raise InputError(
                f"labels {label_path} ({lab.width}x{lab.height}) are not aligned with "
                f"{info.path} ({info.width}x{info.height})"
            )
        if dataset is None and lab.count != 1:
            raise InputError(f"{label_path} has {lab.count} bands: colour-coded labels need --dataset")


def _valid_patches(info: RasterInfo, config: IngestConfig) -> np.ndarray:
    """(M, 2) row, col of the patches whose valid fraction reaches min_valid."""
    size, stride = config.patch_size, config.effective_stride
    height, width = info.scaled_shape(config.scale)
    rows, cols = patch_offsets(height, size, stride), patch_offsets(width, size, stride)
    inside_r = np.minimum(size, height - np.asarray(rows))
    inside_c = np.minimum(size, width - np.asarray(cols))
    fraction = np.outer(inside_r, inside_c) / float(size * size)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), open_dataset(info.path) as src:
        all_valid = all(src.mask_flag_enums[b - 1] == [MaskFlags.all_valid] for b in info.bands)
        if not all_valid:
            # Where the raster has nodata/alpha, count its valid pixels patch row by patch row.
            for i, row in enumerate(
                tqdm(rows, desc=f"mask {info.path.name}", leave=False, disable=len(rows) < 64)
            ):
                h = int(inside_r[i])
                valid = read_valid(src, info, config.scale, row, 0, h, width)
                for j, col in enumerate(cols):
                    fraction[i, j] = valid[:, col : col + size].sum() / float(size * size)
    keep_r, keep_c = np.nonzero(fraction >= max(config.min_valid, 1e-9))
    return np.column_stack([np.asarray(rows)[keep_r], np.asarray(cols)[keep_c]]).astype(np.int64)


def _fingerprint(sources: list[Source], config: IngestConfig) -> str:
    payload = {
        "sources": [(s.sha256, s.label_sha256) for s in sources],
        "config": {k: v for k, v in asdict(config).items() if k != "workers"},
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


# --- write --------------------------------------------------------------------------------


def ingest(
    sources: Sequence[str | Path],
    out: str | Path,
    config: IngestConfig,
    labels: Sequence[str | Path] | None = None,
    dask_address: str | None = None,
    progress: bool = True,
) -> Path:
    """Tile sources (and optional labels) into the patch store ``out``; return its path.

    Idempotent: a complete store of the same inputs and settings is returned as it is; an
    incomplete one resumes. A store of other inputs is never overwritten (ConfigError).
    """
    config.validate()
    out = Path(out)
    plan = plan_ingest(sources, config, labels)
    if _existing_matches(out, plan.fingerprint):
        log.info("%s is complete for these inputs: nothing to do", out)
        return out
    n_bands = len(plan.sources[0].info.bands)
    if not _resumable(out, plan.fingerprint):
        _create(out, plan, config, n_bands, with_labels=labels is not None)
    progress_dir = out / PROGRESS_DIR
    progress_dir.mkdir(exist_ok=True)
    n = len(plan.origins)
    per_shard = config.patches_per_shard
    shards = range((n + per_shard - 1) // per_shard)
    todo = [s for s in shards if not (progress_dir / f"{s}.json").is_file()]
    if len(todo) < len(shards):
        log.info("resuming %s: %d of %d shards already written", out, len(shards) - len(todo), len(shards))
    groups = _task_groups(todo, plan.origins, per_shard)
    tasks = [dask.delayed(_write_shards)(str(out), group, plan, config) for group in groups]
    _run(tasks, len(todo), config.workers, dask_address, progress, desc=f"ingest {out.name}")
    stats = [json.loads((progress_dir / f"{s}.json").read_text()) for s in shards]
    _finish(out, plan, stats)
    shutil.rmtree(progress_dir, ignore_errors=True)
    _write_catalog(out, plan)
    return out


def _existing_matches(out: Path, fingerprint: str) -> bool:
    if not out.exists():
        return False
    try:
        store = open_store(out, require_complete=False)
    except InputError as exc:
        raise ConfigError(f"{out} exists and is not a geoseg patch store; choose another --out") from exc
    same = store.meta.extra.get("fingerprint") == fingerprint
    if store.meta.complete and not same:
        raise ConfigError(
            f"{out} is a complete patch store of other inputs or settings; remove it or choose another --out"
        )
    return store.meta.complete and same


def _resumable(out: Path, fingerprint: str) -> bool:
    if not out.exists():
        return False
    store = open_store(out, require_complete=False)
    return store.meta.extra.get("fingerprint") == fingerprint


def _create(out: Path, plan: Plan, config: IngestConfig, n_bands: int, with_labels: bool) -> None:
    """A fresh, incomplete store with empty arrays and the origins of every patch."""
    n, size, per_shard = len(plan.origins), config.patch_size, config.patches_per_shard
    dtype = plan.sources[0].info.dtype
    group = zarr.open_group(str(out), mode="w", zarr_format=3)
    group.create_array(
        IMAGES, shape=(n, n_bands, size, size), dtype=dtype, chunks=(1, n_bands, size, size),
        shards=(per_shard, n_bands, size, size), fill_value=0,
    )  # fmt: skip
    group.create_array(
        VALID, shape=(n, size, size), dtype=bool, chunks=(1, size, size), shards=(per_shard, size, size),
        fill_value=False,
    )  # fmt: skip
    if with_labels:
        group.create_array(
            LABELS, shape=(n, size, size), dtype="uint8", chunks=(1, size, size),
            shards=(per_shard, size, size), fill_value=IGNORE,
        )  # fmt: skip
    origin = group.create_array(ORIGIN, shape=(n, 3), dtype="int64", chunks=(min(n, 1 << 16), 3))
    origin[:] = plan.origins
    meta = _meta(plan, config, band_mean=[], band_std=[], complete=False)
    group.attrs["geoseg"] = meta.to_attrs()


def _meta(
    plan: Plan, config: IngestConfig, band_mean: list[float], band_std: list[float], complete: bool
) -> StoreMeta:
    first = plan.sources[0].info
    return StoreMeta(
        sources=[_source_info(s, config.scale) for s in plan.sources],
        patch_size=config.patch_size,
        stride=config.effective_stride,
        scale=config.scale,
        band_names=list(first.band_names),
        band_mean=band_mean,
        band_std=band_std,
        dtype=first.dtype,
        geoseg_version=__version__,
        dataset=config.dataset,
        complete=complete,
        extra={"fingerprint": plan.fingerprint, "min_valid": config.min_valid, "bands": list(first.bands)},
    )


def _source_info(source: Source, scale: float) -> SourceInfo:
    info = source.info
    height, width = info.scaled_shape(scale)
    return SourceInfo(
        path=str(info.path.resolve()),
        sha256=source.sha256,
        crs_wkt=info.crs.to_wkt() if info.crs else None,
        transform=tuple(info.scaled_transform(scale))[:6],
        width=width,
        height=height,
        band_names=list(info.band_names),
        dtype=info.dtype,
        nodata=info.nodata,
        label_path=str(source.label_path.resolve()) if source.label_path else None,
        label_sha256=source.label_sha256,
    )


def _runs(origins: np.ndarray, max_rows: int) -> list[tuple[int, int, int]]:
    """Split a shard's (source, row, col) origins into runs read as one window each:
    (start, stop, source) with the same source and rows spanning at most ``max_rows``."""
    runs: list[tuple[int, int, int]] = []
    start = 0
    for i in range(1, len(origins) + 1):
        if (
            i == len(origins)
            or origins[i, 0] != origins[start, 0]
            or origins[i, 1] - origins[start, 1] >= max_rows
        ):
            runs.append((start, i, int(origins[start, 0])))
            start = i
    return runs


def _task_groups(
    todo: Sequence[int], origins: np.ndarray, per_shard: int, band_rows: int = 512, max_shards: int = 16
) -> list[list[int]]:
    """Consecutive shards to write in one task: those whose patches lie in the same band of
    ``band_rows`` rows of one source (a typical GeoTIFF tile height), so that the task's
    dataset handle decompresses each tile once. Each shard still has exactly one writer."""
    groups: list[list[int]] = []
    for shard in todo:
        first, last = origins[shard * per_shard], origins[min(len(origins), (shard + 1) * per_shard) - 1]
        if groups:
            group = groups[-1]
            head = origins[group[0] * per_shard]
            if (
                group[-1] == shard - 1
                and len(group) < max_shards
                and last[0] == head[0]
                and first[0] == head[0]
                and last[1] - head[1] < band_rows
            ):
                group.append(shard)
                continue
        groups.append([shard])
    return groups


def _write_shards(out: str, shards: list[int], plan: Plan, config: IngestConfig) -> int:
    """Write several shards in turn with shared dataset handles; returns how many."""
    per_shard = config.patches_per_shard
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        handles: dict[int, DatasetReader] = {}
        for index in sorted(
            {int(i) for s in shards for i in plan.origins[s * per_shard : (s + 1) * per_shard, 0]}
        ):
            handles[index] = stack.enter_context(open_dataset(plan.sources[index].info.path))
        for shard in shards:
            _write_shard(
                out, shard, plan.origins[shard * per_shard : (shard + 1) * per_shard], plan, config, handles
            )
    return len(shards)


def _write_shard(
    out: str,
    shard: int,
    origins: np.ndarray,
    plan: Plan,
    config: IngestConfig,
    handles: dict[int, DatasetReader] | None = None,
) -> None:
    """Read one shard's patches and write the shard once (its only writer).

    Patches are read as few windows as possible: one bounding window per run of rows of
    patches (at most 4 patch heights tall, so memory stays a few strips even where sparse
    validity spreads a shard over many rows), each source opened once per shard. A
    window read per patch row would make GDAL decompress each 512-row tile several times.
    """
    size, scale = config.patch_size, config.scale
    n_bands = len(plan.sources[0].info.bands)
    images = np.zeros((len(origins), n_bands, size, size), dtype=plan.sources[0].info.dtype)
    valid = np.zeros((len(origins), size, size), dtype=bool)
    labelled = plan.sources[0].label_path is not None
    labels = np.full((len(origins), size, size), IGNORE, np.uint8) if labelled else None
    dataset = get_dataset(config.dataset) if config.dataset else None
    for start, stop, src_index in _runs(origins, max_rows=4 * size):
        source = plan.sources[src_index]
        height, width = source.info.scaled_shape(scale)
        run = origins[start:stop]
        r0, c0 = int(run[:, 1].min()), int(run[:, 2].min())
        r1, c1 = min(height, int(run[:, 1].max()) + size), min(width, int(run[:, 2].max()) + size)
        if handles is not None and src_index in handles:
            data, mask = read_scaled(handles[src_index], source.info, scale, r0, c0, r1 - r0, c1 - c0)
        else:
            with open_dataset(source.info.path) as src:
                data, mask = read_scaled(src, source.info, scale, r0, c0, r1 - r0, c1 - c0)
        window_labels = (
            _read_label_strip(source, dataset, scale, r0, c0, r1 - r0, c1 - c0)
            if labels is not None
            else None
        )
        for position, (_, row, col) in zip(range(start, stop), run.tolist(), strict=True):
            h, w = min(size, height - row), min(size, width - col)
            rows, cols = slice(row - r0, row - r0 + h), slice(col - c0, col - c0 + w)
            images[position, :, :h, :w] = data[:, rows, cols]
            valid[position, :h, :w] = mask[rows, cols]
            if labels is not None and window_labels is not None:
                labels[position, :h, :w] = window_labels[rows, cols]
    first = shard * config.patches_per_shard
    group = zarr.open_group(out, mode="r+")
    # Every patch is written (kept patches are never all fill value), so skip zarr's
    # per-chunk "is it empty?" comparison: ~20% faster shard writes.
    for name, block in ((IMAGES, images), (VALID, valid), (LABELS, labels)):
        if block is not None:
            array = group[name].with_config({"write_empty_chunks": True})  # type: ignore[union-attr]
            array[first : first + len(origins)] = block
    write_json_atomic(Path(out) / PROGRESS_DIR / f"{shard}.json", _shard_stats(images, valid))


def _read_label_strip(
    source: Source, dataset: LabelDataset | None, scale: float, row: int, col: int, height: int, width: int
) -> np.ndarray:
    assert source.label_path is not None
    with open_dataset(source.label_path) as lab:
        bands = list(range(1, lab.count + 1))
        raw, _ = read_scaled(
            lab, source.info, scale, row, col, height, width, Resampling.nearest, bands=bands
        )
        if dataset is None:
            return raw[0].astype(np.uint8)
        if dataset.colour_coded and raw.shape[0] == 1:
            raw = expand_colormap(lab, raw[0])
    try:
        return dataset.decode(raw if dataset.colour_coded else raw[0])
    except InputError as exc:
        raise InputError(f"unreadable labels {source.label_path}: {exc}") from exc


def _shard_stats(images: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """Per-band count, sum and sum of squares over valid pixels (float64, combinable).

    8/16-bit integer bands go through a histogram (exact, and ~10x faster than squaring
    float64 copies); other dtypes are summed in float64.
    """
    everything = bool(valid.all())
    count = int(valid.size if everything else valid.sum())
    sums, sumsqs = [], []
    for band in range(images.shape[1]):
        values = images[:, band].reshape(-1) if everything else images[:, band][valid]
        if values.dtype in (np.uint8, np.uint16):
            hist = np.bincount(values, minlength=1).astype(np.float64)
            levels = np.arange(hist.size, dtype=np.float64)
            sums.append(float(hist @ levels))
            sumsqs.append(float(hist @ (levels * levels)))
        else:
            as_float = values.astype(np.float64)
            sums.append(float(as_float.sum()))
            sumsqs.append(float(np.dot(as_float, as_float)))
    return {"count": count, "sum": sums, "sumsq": sumsqs}


def _finish(out: Path, plan: Plan, stats: list[dict[str, Any]]) -> None:
    """Combine the shards' statistics and mark the store complete (the last write)."""
    count = sum(s["count"] for s in stats)
    total = np.sum([s["sum"] for s in stats], axis=0)
    total_sq = np.sum([s["sumsq"] for s in stats], axis=0)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 0.0))
    group = zarr.open_group(str(out), mode="r+")
    meta = StoreMeta.from_attrs(dict(group.attrs)["geoseg"])  # type: ignore[arg-type]
    meta.band_mean, meta.band_std = mean.tolist(), std.tolist()
    meta.extra["valid_pixels"] = count
    meta.complete = True
    group.attrs["geoseg"] = meta.to_attrs()


def _write_catalog(out: Path, plan: Plan) -> Path:
    """A STAC catalog of the ingested inputs next to the store: ``<store>.stac/``."""
    from geoseg.catalog import survey_item, update_run_catalog

    items = [survey_item(s.info.path, out) for s in plan.sources if s.info.crs is not None]
    return update_run_catalog(out.with_name(out.name + ".stac"), items)


# --- running ------------------------------------------------------------------------------


class _TqdmCallback(Callback):
    """Advance a progress bar whenever a shard task of the local scheduler finishes."""

    def __init__(self, bar: tqdm) -> None:
        super().__init__()
        self.bar = bar

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
        if str(key[0] if isinstance(key, tuple) else key).startswith("_write_shards"):
            self.bar.update(int(result))


def _run(
    tasks: list[Any], n_shards: int, workers: int, dask_address: str | None, progress: bool, desc: str
) -> None:
    with tqdm(total=n_shards, desc=desc, unit="shard", disable=not progress) as bar:
        if dask_address:
            from distributed import Client, as_completed

            with Client(dask_address) as client:
                for future in as_completed(client.compute(tasks)):
                    bar.update(int(future.result()))
        else:
            with _TqdmCallback(bar):
                dask.compute(*tasks, scheduler="threads", num_workers=workers)
