"""Ingest: cut source rasters into a zarr v3 patch store (see geoseg.io.store for the contract).

How it runs, and why:

1. **Plan** (cheap, serial): open every source, check bands/dtypes/sizes/labels, lay a
   patch grid over each scaled raster, and keep the patches whose valid fraction reaches
   ``min_valid``. Validity needs the nodata/alpha mask only where the raster has one;
   otherwise it follows from the padding at the edges, without reading pixels. Knowing N
   up front lets every shard have exactly one writer. Inputs are identified by path, size
   and modification time (as make and rsync do) to decide whether a store can be resumed;
   their SHA-256 digests, a full read of every file, are computed alongside the shard
   writes and recorded when the store completes.
2. **Write** (parallel, Dask): each task writes a few consecutive zarr shards (those in
   one 1024-row band of a source), each shard in one go by that task alone, encoded by
   :mod:`geoseg.io.shards` in one pass. Patches are read one window per row of patches.
   Memory per task is a few strips, never a whole raster.
3. **Finish**: per-band statistics are combined from the shard tasks and the group is
   marked ``complete`` last. Each finished shard leaves a marker (with its statistics) in
   ``STORE/.progress``, so an interrupted ingest resumes with the shards still missing.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import logging
import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import rasterio
import zarr
from dask.callbacks import Callback
from rasterio.enums import Resampling
from rasterio.io import DatasetReader
from tqdm.auto import tqdm
from zarr.codecs import ZstdCodec
from zarr.core.chunk_key_encodings import ChunkKeyEncodingParams

from geoseg import __version__
from geoseg.config import MIN_PATCH_SIZE, IngestConfig
from geoseg.datasets import IGNORE, LabelDataset, check_class_id_labels, expand_colormap, get_dataset
from geoseg.errors import ConfigError, InputError
from geoseg.io.cluster import connect
from geoseg.io.cog import GDAL_CACHE_BYTES
from geoseg.io.fileio import (
    atomic_path,
    check_free_space,
    check_writable,
    clean_leftovers,
    locked,
    sha256_file,
    write_json_atomic,
)
from geoseg.io.shards import write_shard
from geoseg.io.sources import (
    RasterInfo,
    all_valid,
    discover_sources,
    open_dataset,
    open_raster,
    patch_offsets,
    read_scaled,
    read_valid,
    report_georeferencing,
)
from geoseg.io.store import IMAGES, LABELS, ORIGIN, VALID, SourceInfo, StoreMeta, open_store
from geoseg.messages import plural
from geoseg.progress import Progress, progress_bar

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["PROGRESS_DIR", "ingest"]

log = logging.getLogger(__name__)

PROGRESS_DIR = ".progress"
# Images are stored uncompressed: lossless zstd saves only ~8% on aerial imagery (Lausanne
# orthophoto patches: 0.92 of the raw size at level 1, 0.91 at level 3) for ~40% of
# ingest's CPU time. Masks and labels compress >20x, so they keep zstd, at level 1 (as
# small as zarr's default level 3 here, and faster).
ZSTD_LEVEL = 1


@dataclass(frozen=True)
class Source:
    """A source raster with its (optional) label raster, as planned.

    The SHA-256 digests are computed while the shards are written (a full read of every
    file, which would otherwise delay the start of the ingest); until then they are None.
    """

    info: RasterInfo
    label_path: Path | None
    stamp: tuple[tuple[int, int], ...]  # (size, mtime_ns) of the raster and its labels
    sha256: str | None = None
    label_sha256: str | None = None

    @property
    def files(self) -> list[Path]:
        return _input_files(self.info.path, self.label_path)


def _input_files(path: Path, label_path: Path | None) -> list[Path]:
    """A source raster and its label raster, if any."""
    return [path] + ([label_path] if label_path else [])


@dataclass(frozen=True)
class Plan:
    sources: list[Source]
    origins: np.ndarray  # (N, 3): source index, row, col in the scaled grid
    fingerprint: str  # identifies inputs (size, mtime) + settings, to resume only the same ingest


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
            raise InputError(
                f"{plural(len(label_paths), 'label file')} for {plural(len(paths), 'source')}: give one per source"
            )
    dataset = get_dataset(config.dataset) if config.dataset else None
    planned: list[Source] = []
    origins: list[np.ndarray] = []
    for index, (path, label_path) in enumerate(zip(paths, label_paths, strict=True)):
        info = open_raster(path, config.bands)
        report_georeferencing(path, info.crs, info.transform)
        if planned and len(info.bands) != len(planned[0].info.bands):
            first = planned[0].info
            raise InputError(
                f"mixed band counts: {first.path} has {plural(len(first.bands), 'band')}, "
                f"{path} has {len(info.bands)}"
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
                + (
                    f": use a patch size of at most {min(height, width)} (--patch-size; patch_size in a flow)"
                    if min(height, width) >= MIN_PATCH_SIZE
                    else ""
                )
            )
        if label_path is not None:
            _check_label(label_path, info, dataset)
        patches = _valid_patches(info, config)
        if len(patches) == 0:
            raise InputError(f"{path} has no patch with {config.min_valid:.0%} valid pixels (all nodata?)")
        origins.append(np.column_stack([np.full(len(patches), index), patches]))
        stats = [f.stat() for f in _input_files(path, label_path)]
        planned.append(Source(info, label_path, tuple((st.st_size, st.st_mtime_ns) for st in stats)))
    if dataset is None and labels is not None:  # stored as they are: they must be class ids
        check_class_id_labels([s.label_path for s in planned if s.label_path is not None])
    fingerprint = _fingerprint(planned, config)
    return Plan(planned, np.concatenate(origins).astype(np.int64), fingerprint)


def _check_label(label_path: Path, info: RasterInfo, dataset: LabelDataset | None) -> None:
    """Labels share the image's grid: the same size and, where both are georeferenced, the
    same CRS and transform (the rule evaluate applies; labels without a CRS are pixel-aligned),
    and bands the dataset decodes (as ``geoseg.datasets.read_label`` requires them), found here
    rather than by a shard task after the store was created."""
    with open_dataset(label_path) as lab:
        if dataset is not None and dataset.colour_coded and lab.count < 3:
            try:
                lab.colormap(1)  # a paletted band is expanded to RGB
            except ValueError:
                raise InputError(
                    f"{label_path}: dataset {dataset.name!r} expects RGB colour-coded labels, this file has "
                    f"{plural(lab.count, 'band')} without a colour table: pass the --dataset they are coded in (or none for class ids)"
                ) from None
        if dataset is not None and not dataset.colour_coded and lab.count != 1:
            raise InputError(f"{label_path}: dataset {dataset.name!r} expects single-band class-id labels")
        if (lab.width, lab.height) != (info.width, info.height):
            raise InputError(
                f"labels {label_path} ({lab.width}x{lab.height}) are not aligned with "
                f"{info.path} ({info.width}x{info.height})"
            )
        if lab.crs and info.crs and (lab.crs != info.crs or not lab.transform.almost_equals(info.transform)):
            raise InputError(
                f"labels {label_path} are on another grid than {info.path} (CRS or transform differ): "
                "give labels georeferenced like the image"
            )


def _valid_patches(info: RasterInfo, config: IngestConfig) -> np.ndarray:
    """(M, 2) row, col of the patches whose valid fraction reaches min_valid."""
    size, stride = config.patch_size, config.effective_stride
    height, width = info.scaled_shape(config.scale)
    rows, cols = patch_offsets(height, size, stride), patch_offsets(width, size, stride)
    inside_r = np.minimum(size, height - np.asarray(rows))
    inside_c = np.minimum(size, width - np.asarray(cols))
    fraction = np.outer(inside_r, inside_c) / float(size * size)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), open_dataset(info.path) as src:
        if not all_valid(src, info.bands):
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
        "sources": [([str(f.resolve()) for f in s.files], s.stamp) for s in sources],
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
    progress: Progress = True,
    overwrite: bool = False,
    catalog: str | Path | None = None,
) -> Path:
    """Tile sources (and optional labels) into the patch store ``out``; return its path.

    Idempotent: a complete store of the same inputs and settings is returned as it is; an
    interrupted one resumes. A store of other inputs or settings is refused (ConfigError)
    unless ``overwrite``: then a new store is built beside it and swapped in once complete,
    so a failed run leaves the old store as it was. ``overwrite`` replaces only a patch
    store geoseg wrote (its ``geoseg`` attributes); any other file or folder is refused.
    The survey items go into the run catalog at ``catalog`` (a flow's ``run/catalog/``,
    added to, never replaced), by default into ``<out>.stac/`` beside the store.
    """
    config.validate()
    out = Path(out)
    check_writable(out if out.is_dir() else out.parent)
    # an address that does not answer fails here, before planning or creating the store
    with connect(dask_address) as client:
        return _ingest(out, sources, config, labels, client, progress, overwrite, catalog)


def _ingest(
    out: Path,
    sources: Sequence[str | Path],
    config: IngestConfig,
    labels: Sequence[str | Path] | None,
    client: Client | None,
    progress: Progress,
    overwrite: bool,
    catalog: str | Path | None,
) -> Path:
    plan = plan_ingest(sources, config, labels)
    with locked(out, "patch store", beside=True):  # zarr recreates the store folder itself
        clean_leftovers(out.parent, prefix=f".{out.name}.")  # builds killed --overwrite runs left
        action = _action(out, plan.fingerprint, overwrite)
        if action == "done":
            log.info("%s is complete for these inputs: nothing to do", out)
            own_catalog = _own_catalog_dir(out) / "catalog.json"
            if catalog is None and not own_catalog.is_file():
                # the catalog is written after `complete`: a run that failed there (a full
                # disk) or a removed catalog left a store that no rerun gave a catalog again
                recorded = open_store(out).meta.sources
                plan = replace(
                    plan,
                    sources=[
                        replace(s, sha256=r.sha256, label_sha256=r.label_sha256)
                        for s, r in zip(plan.sources, recorded, strict=True)
                    ],
                )
                _write_catalog(out, plan)
                log.info("wrote its missing catalog %s", own_catalog)
            return out
        if action == "replace":
            log.info("building a new %s beside the old one (--overwrite)", out)
            with atomic_path(out, replace_folder=True) as fresh:  # _action checked it is a store
                plan = _write(fresh, plan, config, labels, client, progress, out.name, resume=False)
        else:
            plan = _write(out, plan, config, labels, client, progress, out.name, action == "resume")
        _write_catalog(out, plan, fresh=action == "replace", catalog_dir=catalog)
        return out


def _action(out: Path, fingerprint: str, overwrite: bool) -> str:
    """What to do with ``out``, decided before any work: "create" (nothing there), "resume"
    (an interrupted store of these inputs), "done" (a complete one), "replace" (a store,
    with ``overwrite``). A foreign file or folder, or without ``overwrite`` a store of other
    inputs or settings, is refused with one line naming it."""
    if not out.exists() or _empty_folder(out):
        return "create"
    try:
        meta = open_store(out, require_complete=False).meta
    except InputError as exc:
        raise ConfigError(
            f"{out} exists and is not a geoseg patch store: choose another --out "
            "(--overwrite replaces only a patch store geoseg wrote)"
        ) from exc
    if overwrite:
        return "replace"
    if meta.extra.get("fingerprint") == fingerprint:
        return "done" if meta.complete else "resume"
    state = "complete" if meta.complete else "interrupted"
    raise ConfigError(
        f"{out} is a {state} patch store of other inputs or settings: pass --overwrite to replace it "
        "or choose another --out"
    )


def _empty_folder(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _write(
    out: Path,
    plan: Plan,
    config: IngestConfig,
    labels: Sequence[str | Path] | None,
    client: Client | None,
    progress: Progress,
    name: str,
    resume: bool,
) -> Plan:
    """Write (or finish) the store at ``out`` and mark it complete; returns the plan with
    the inputs' digests. ``name``: the store's name for the progress bar."""
    progress_dir = out / PROGRESS_DIR
    n = len(plan.origins)
    per_shard = config.patches_per_shard
    shards = range((n + per_shard - 1) // per_shard)
    todo = [s for s in shards if not (resume and (progress_dir / f"{s}.json").is_file())]
    # the shards still to write, before the store is created: a disk too small for them was
    # found only by a shard task, after part of the store had been written
    patches = sum(min(per_shard, n - s * per_shard) for s in todo)
    check_free_space(out.parent, patches * _patch_bytes(plan, config))
    if not resume:
        _create(out, plan, config, len(plan.sources[0].info.bands), with_labels=labels is not None)
    progress_dir.mkdir(exist_ok=True)
    if len(todo) < len(shards):
        log.info(
            "resuming %s: %d of %s already written",
            out,
            len(shards) - len(todo),
            plural(len(shards), "shard"),
        )
    groups = _task_groups(todo, plan.origins, per_shard)
    tasks = [dask.delayed(_write_shards)(str(out), group, plan, config) for group in groups]
    files = [f for s in plan.sources for f in s.files]
    digests = iter(_run(tasks, files, len(todo), config.workers, client, progress, f"ingest {name}"))
    plan = replace(
        plan,
        sources=[
            replace(s, sha256=next(digests), label_sha256=next(digests) if s.label_path else None)
            for s in plan.sources
        ],
    )
    stats = [json.loads((progress_dir / f"{s}.json").read_text()) for s in shards]
    _finish(out, plan, stats)
    shutil.rmtree(progress_dir, ignore_errors=True)
    return plan


def _patch_bytes(plan: Plan, config: IngestConfig) -> int:
    """About the bytes one patch takes in the store: its images uncompressed, plus an
    allowance for its mask and labels (zstd: more than 20x smaller than one byte a pixel)."""
    info = plan.sources[0].info
    pixels = config.patch_size * config.patch_size
    return pixels * len(info.bands) * np.dtype(info.dtype).itemsize + pixels // 8


def _create(out: Path, plan: Plan, config: IngestConfig, n_bands: int, with_labels: bool) -> None:
    """A fresh, incomplete store with empty arrays and the origins of every patch."""
    n, size, per_shard = len(plan.origins), config.patch_size, config.patches_per_shard
    dtype = plan.sources[0].info.dtype
    group = zarr.open_group(str(out), mode="w", zarr_format=3)
    zstd = ZstdCodec(level=ZSTD_LEVEL)
    flat: ChunkKeyEncodingParams = {"name": "default", "separator": "."}
    group.create_array(
        IMAGES, shape=(n, n_bands, size, size), dtype=dtype, chunks=(1, n_bands, size, size),
        shards=(per_shard, n_bands, size, size), fill_value=0, compressors=None, chunk_key_encoding=flat,
    )  # fmt: skip
    group.create_array(
        VALID, shape=(n, size, size), dtype=bool, chunks=(1, size, size), shards=(per_shard, size, size),
        fill_value=False, compressors=zstd, chunk_key_encoding=flat,
    )  # fmt: skip
    if with_labels:
        group.create_array(
            LABELS, shape=(n, size, size), dtype="uint8", chunks=(1, size, size),
            shards=(per_shard, size, size), fill_value=IGNORE, compressors=zstd, chunk_key_encoding=flat,
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
        sha256=source.sha256 or "",  # "" until the ingest completes
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


def _runs(origins: np.ndarray) -> list[tuple[int, int, int]]:
    """Split a shard's (source, row, col) origins into runs read as one window each:
    (start, stop, source), one per row of patches of one source. A bounding window over
    several rows would also read the columns between a row's end and the next's start."""
    starts = [0, *np.flatnonzero(np.any(origins[1:, :2] != origins[:-1, :2], axis=1)) + 1, len(origins)]
    return [(a, b, int(origins[a, 0])) for a, b in itertools.pairwise(starts)]


def _task_groups(
    todo: Sequence[int], origins: np.ndarray, per_shard: int, band_rows: int = 1024
) -> list[list[int]]:
    """Consecutive shards to write in one task: those whose first patch lies in the same
    band of ``band_rows`` rows of one source. Bands are aligned to row 0, as GeoTIFF tile
    rows (256 or 512 px) are, so that the task's dataset handle decompresses each tile
    once; only a shard that straddles two bands touches its neighbour's tiles. Each shard
    still has exactly one writer."""
    groups: list[list[int]] = []
    previous: tuple[int, int] | None = None
    for shard in todo:
        source, row = origins[shard * per_shard, :2]
        key = (int(source), int(row) // band_rows)
        if groups and key == previous and groups[-1][-1] == shard - 1:
            groups[-1].append(shard)
        else:
            groups.append([shard])
        previous = key
    return groups


def _write_shards(out: str, shards: list[int], plan: Plan, config: IngestConfig) -> int:
    """Write several shards in turn with shared dataset handles; returns how many."""
    per_shard = config.patches_per_shard
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        handles: dict[int, DatasetReader] = {}
        for index in sorted(
            {int(i) for s in shards for i in plan.origins[s * per_shard : (s + 1) * per_shard, 0]}
        ):
            handles[index] = stack.enter_context(open_dataset(plan.sources[index].info.path))
        arrays = _open_arrays(out)
        for shard in shards:
            _write_shard(
                out, shard, plan.origins[shard * per_shard : (shard + 1) * per_shard], plan, config, handles,
                arrays,
            )  # fmt: skip
    return len(shards)


def _open_arrays(out: str) -> dict[str, zarr.Array]:
    """The store's patch arrays, opened once per task (each open is a round trip through
    zarr's event loop)."""
    group = zarr.open_group(out, mode="r+")
    return {name: group[name] for name in (IMAGES, VALID, LABELS) if name in group}  # type: ignore[misc]


def _write_shard(
    out: str,
    shard: int,
    origins: np.ndarray,
    plan: Plan,
    config: IngestConfig,
    handles: dict[int, DatasetReader] | None = None,
    arrays: dict[str, zarr.Array] | None = None,
) -> None:
    """Read one shard's patches and write the shard once (its only writer).

    Patches are read one window per row of patches (the columns that row's patches span),
    so memory stays one strip and no pixel outside the shard's patches is read. The
    task's shared handle and GDAL's block cache (``GDAL_CACHE_BYTES``) decompress each
    source tile once although several rows of patches cross it.
    """
    size, scale = config.patch_size, config.scale
    n_bands = len(plan.sources[0].info.bands)
    images = np.zeros((len(origins), n_bands, size, size), dtype=plan.sources[0].info.dtype)
    valid = np.zeros((len(origins), size, size), dtype=bool)
    labelled = plan.sources[0].label_path is not None
    labels = np.full((len(origins), size, size), IGNORE, np.uint8) if labelled else None
    dataset = get_dataset(config.dataset) if config.dataset else None
    for start, stop, src_index in _runs(origins):
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
        # Whole patches side by side (stride = patch size) are one reshape of the strip; the
        # rest (an edge patch, overlapping strides) are copied one by one.
        side_by_side = _side_by_side(run[:, 2] - c0, size, r1 - r0, c1 - c0)
        if side_by_side:
            span = slice(0, side_by_side * size)
            for target, strip in ((images, data), (valid, mask), (labels, window_labels)):
                if target is not None and strip is not None:
                    tiles = strip[..., :size, span].reshape(*strip.shape[:-2], size, side_by_side, size)
                    target[start : start + side_by_side] = np.moveaxis(tiles, -2, 0)
        for position, (_, row, col) in zip(
            range(start + side_by_side, stop), run[side_by_side:].tolist(), strict=True
        ):
            h, w = min(size, height - row), min(size, width - col)
            rows, cols = slice(row - r0, row - r0 + h), slice(col - c0, col - c0 + w)
            images[position, :, :h, :w] = data[:, rows, cols]
            valid[position, :h, :w] = mask[rows, cols]
            if labels is not None and window_labels is not None:
                labels[position, :h, :w] = window_labels[rows, cols]
    arrays = arrays if arrays is not None else _open_arrays(out)
    for name, block in ((IMAGES, images), (VALID, valid), (LABELS, labels)):
        if block is not None:
            write_shard(arrays[name], shard, block)
    write_json_atomic(Path(out) / PROGRESS_DIR / f"{shard}.json", _shard_stats(images, valid))


def _side_by_side(cols: np.ndarray, size: int, strip_height: int, strip_width: int) -> int:
    """How many leading patches of a row (columns relative to the strip) lie whole and side
    by side from column 0: 0, 1·size, 2·size, ... inside the strip."""
    if strip_height < size:
        return 0
    expected = np.arange(len(cols)) * size
    n = int(np.argmin(np.append(cols == expected, False)))
    return min(n, strip_width // size)


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
    """Per-band count, sum and sum of squares over valid pixels (exact, combinable).

    Zeroes the invalid pixels of ``images`` in place (call it once the shard is written):
    a zero adds nothing to either sum, and reducing whole patches is much faster than
    boolean indexing. 8/16-bit integers are summed as integers, squares in twice the width
    (255² fits in 16 bits, 65535² in 32), per patch in 32 bits where a patch's total
    cannot overflow them, then over patches in 64: exact, and ~4x faster than a histogram
    per band. Other dtypes are summed in float64.
    """
    for i in np.flatnonzero(~valid.reshape(len(valid), -1).all(axis=1)):  # edge/nodata patches
        images[i][:, ~valid[i]] = 0
    count = int(np.count_nonzero(valid))
    per_patch = images.reshape(*images.shape[:2], -1)  # (N, C, P*P)
    wider = {np.dtype(np.uint8): np.uint16, np.dtype(np.uint16): np.uint32}.get(images.dtype)
    if wider is not None:
        top = int(np.iinfo(images.dtype).max) ** 2 * per_patch.shape[2]
        acc = np.uint32 if top < 2**32 else np.uint64
        squares = np.square(per_patch, dtype=wider)
        sums = per_patch.sum(axis=2, dtype=acc).sum(axis=0, dtype=np.uint64)
        sumsqs = squares.sum(axis=2, dtype=acc).sum(axis=0, dtype=np.uint64)
    else:
        as_float = per_patch.astype(np.float64)
        sums, sumsqs = as_float.sum(axis=(0, 2)), np.square(as_float).sum(axis=(0, 2))
    return {"count": count, "sum": sums.astype(float).tolist(), "sumsq": sumsqs.astype(float).tolist()}


def _finish(out: Path, plan: Plan, stats: list[dict[str, Any]]) -> None:
    """Combine the shards' statistics and mark the store complete (the last write)."""
    count = sum(s["count"] for s in stats)
    total = np.sum([s["sum"] for s in stats], axis=0)
    total_sq = np.sum([s["sumsq"] for s in stats], axis=0)
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean**2, 0.0))
    group = zarr.open_group(str(out), mode="r+")
    meta = StoreMeta.from_attrs(dict(group.attrs)["geoseg"])  # type: ignore[arg-type]
    meta.sources = [_source_info(s, meta.scale) for s in plan.sources]  # now with their digests
    meta.band_mean, meta.band_std = mean.tolist(), std.tolist()
    meta.extra["valid_pixels"] = count
    meta.complete = True
    group.attrs["geoseg"] = meta.to_attrs()


def _write_catalog(out: Path, plan: Plan, fresh: bool = False, catalog_dir: str | Path | None = None) -> Path:
    """A STAC catalog of the ingested inputs next to the store: ``<store>.stac/``, or the
    survey items added to the run catalog at ``catalog_dir``.

    ``fresh`` (the store was replaced): a new ``<store>.stac/`` swapped in for the old one,
    whose survey items described the old store's inputs. Only a geoseg run catalog is
    replaced, and never one given as ``catalog_dir`` (it holds more than this store's
    surveys); anything else there is added to, as without ``fresh``. Each survey item's ``created`` is
    now (UTC), or its ``created`` in the catalog already there: when the survey was first
    added, which is what the retrain flow looks for (not the file's mtime, its ``datetime``).
    """
    from geoseg.stac.catalog import RUN_CATALOG_ID, survey_item, update_run_catalog

    own = catalog_dir is None
    catalog_dir = _own_catalog_dir(out) if catalog_dir is None else Path(catalog_dir)
    now = datetime.datetime.now(datetime.UTC)
    earlier = _created(catalog_dir)
    items = []
    for s in plan.sources:
        if s.info.crs is not None:
            item = survey_item(s.info.path, out, sha256=s.sha256, created=now)
            if item.id in earlier:  # ingested before: it was added then, not now
                item.common_metadata.created = earlier[item.id]
            items.append(item)
    if not (fresh and own and _catalog_id(catalog_dir) == RUN_CATALOG_ID):
        return update_run_catalog(catalog_dir, items)
    with atomic_path(catalog_dir, replace_folder=True) as new:
        update_run_catalog(new, items)
    return catalog_dir / "catalog.json"


def _own_catalog_dir(out: Path) -> Path:
    """The store's own STAC catalog folder, ``<store>.stac`` beside it."""
    return out.with_name(out.name + ".stac")


def _created(catalog_dir: Path) -> dict[str, datetime.datetime]:
    """Item id -> ``created`` of the survey items already in the catalog at ``catalog_dir``."""
    import pystac

    if not (catalog_dir / "catalog.json").is_file():
        return {}
    try:
        catalog = pystac.Catalog.from_file(str(catalog_dir / "catalog.json"))
        items = list(catalog.get_items(recursive=True))
    except Exception:  # pystac raises several types for foreign/corrupt JSON; replaced anyway
        return {}
    return {item.id: item.common_metadata.created for item in items if item.common_metadata.created}


def _catalog_id(catalog_dir: Path) -> str | None:
    """The id in ``catalog_dir/catalog.json``; None without a readable one."""
    try:
        return json.loads((catalog_dir / "catalog.json").read_text()).get("id")
    except (OSError, ValueError, AttributeError):
        return None


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
    tasks: list[Any],
    hash_files: list[Path],
    n_shards: int,
    workers: int,
    client: Client | None,
    progress: Progress,
    desc: str,
) -> list[str]:
    """Compute the shard tasks (advancing the bar) while the SHA-256 digests of
    ``hash_files`` are computed beside them; returns the digests in order. The hashes start
    first: Dask's local scheduler would otherwise leave them for last, alone on one core."""
    with progress_bar(progress, total=n_shards, desc=desc, unit="shard") as bar:
        if client is not None:
            from distributed import as_completed

            # as_completed finds its client as the current one (connect does not set a default)
            with client.as_current():
                digests = client.map(sha256_file, hash_files, pure=False)
                for future in as_completed(client.compute(tasks)):
                    bar.update(int(future.result()))
                return [future.result() for future in digests]
        with ThreadPoolExecutor(1) as pool, _TqdmCallback(bar):
            hashing = [pool.submit(sha256_file, f) for f in hash_files]
            dask.compute(*tasks, scheduler="threads", num_workers=workers)
            return [future.result() for future in hashing]
