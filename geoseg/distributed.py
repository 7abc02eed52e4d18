"""One raster segmented across a Dask cluster: row bands as tasks, a zarr intermediate, one COG.

The driver (the process that called :func:`geoseg.segment.segment` with a Dask address,
holding the output folder's lock) plans the window grid and its row bands
(:mod:`geoseg.bands`) and submits one task per band. A task runs on any worker: it loads
the model bundle (once per worker process) and the source raster from their paths, which
must therefore be on a file system every worker sees, and writes its rows into its own
zarr array ``band-NNNNN.zarr`` inside the run's intermediate folder (in the output's
staging folder, so on the same shared file system).

Concurrent writers never share a file: each attempt of a band writes into a folder of its
own (``band-NNNNN.zarr.attempt-<host>-<pid>-<random>``) and renames it onto the band's name
when complete; the rename is atomic, so a band folder is either absent or whole, and an
attempt of a worker that died half-way is never read. When Dask reruns a band whose
worker died (or runs it twice), the second complete attempt finds the band already there
and discards itself (both hold the same bytes: bands are deterministic). The driver then
copies the bands, in order, into the intermediate tiled GeoTIFFs that the single-process
path writes, and the COGs, styles, preview, GeoPackage and STAC item are made from those
as always. Worker memory is bounded by one strip of windows, as in a single process.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import rasterio
import zarr
from rasterio.io import DatasetReader
from rasterio.windows import Window

from geoseg.bands import Band, band_rows, plan_bands
from geoseg.config import SegmentConfig
from geoseg.errors import InputError
from geoseg.iic.model import NormalisedNet
from geoseg.io.cog import GDAL_CACHE_BYTES, create_raster, tiled_profile
from geoseg.io.outputs import NODATA
from geoseg.io.sources import open_dataset
from geoseg.io.windows import WindowGrid
from geoseg.models.bundle import ModelMeta
from geoseg.progress import Progress, progress_bar
from geoseg.strips import plan_grid, segment_into

if TYPE_CHECKING:
    from distributed import Client

__all__ = ["BandDone", "BandJob", "run_band", "segment_on_cluster"]

BAND_PREFIX = "band-"
ASSEMBLE_ROWS = 512  # rows copied from the bands into the GeoTIFFs at a time


@dataclass(frozen=True)
class BandJob:
    """What every band task of one raster needs (small and picklable: paths, not arrays)."""

    model_dir: str
    source: str
    bands: tuple[int, ...]
    grid: WindowGrid
    config: SegmentConfig
    intermediate: str


@dataclass(frozen=True)
class BandDone:
    """A finished band: where it is and which worker wrote it (host, pid, Dask address)."""

    index: int
    path: str
    worker: str
    pid: int
    fresh: bool  # False: an earlier attempt had already published this band


def band_path(intermediate: str | Path, index: int) -> Path:
    return Path(intermediate) / f"{BAND_PREFIX}{index:05d}.zarr"


@functools.lru_cache(maxsize=2)
def _worker_model(model_dir: str, device: str, stamp: float) -> tuple[NormalisedNet, ModelMeta]:
    """The inference copy of a bundle, loaded once per worker process (``stamp``: weights' mtime)."""
    from geoseg.iic.model import for_inference
    from geoseg.inference import resolve_device
    from geoseg.models.bundle import load_bundle

    del stamp  # part of the cache key only: a retrained bundle at the same path is reloaded
    model, meta = load_bundle(model_dir, resolve_device(device))
    return cast(
        NormalisedNet, for_inference(model)
    ), meta  # every method's network is an NormalisedNet-like NormalisedNet


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"local-{socket.gethostname()}"


def run_band(job: BandJob, band: Band) -> BandDone:
    """Segment one band into ``band-NNNNN.zarr`` (a Dask task; also callable in-process)."""
    from geoseg.models.bundle import WEIGHTS

    final = band_path(job.intermediate, band.index)
    if not final.parent.is_dir():  # the driver gave up and removed the run's folder
        raise InputError(f"intermediate folder {final.parent} is gone: the segment run was stopped")
    stamp = (Path(job.model_dir) / WEIGHTS).stat().st_mtime
    model, meta = _worker_model(job.model_dir, job.config.device, stamp)
    attempt = final.with_name(
        f"{final.name}.attempt-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )
    try:
        with open_dataset(Path(job.source)) as src:
            _write_band(model, meta, src, job, band, attempt)
        fresh = _publish_band(attempt, final)
    finally:
        shutil.rmtree(attempt, ignore_errors=True)
    return BandDone(band.index, str(final), _worker_address(), os.getpid(), fresh)


def _write_band(
    model: NormalisedNet, meta: ModelMeta, src: DatasetReader, job: BandJob, band: Band, attempt: Path
) -> None:
    array = zarr.create_array(
        store=str(attempt),
        shape=(2, band.rows, src.width),
        chunks=(2, min(band.rows, ASSEMBLE_ROWS), min(src.width, 4096)),
        dtype="uint8",
        fill_value=NODATA,
        attributes={"top": band.top, "bottom": band.bottom, "host": socket.gethostname(), "pid": os.getpid()},
    )
    for rows in band_rows(model, meta, src, Path(job.source), list(job.bands), job.grid, band, job.config):
        start = rows.top - band.top
        array[:, start : start + rows.ids.shape[0], :] = np.stack([rows.ids, rows.confidence])


def _publish_band(attempt: Path, final: Path) -> bool:
    """Rename a complete attempt onto the band's name; False when another attempt got there first."""
    try:
        os.rename(attempt, final)
    except OSError:
        if final.is_dir():  # the same bytes, written by an earlier (or rescheduled) attempt
            return False
        raise
    return True


def segment_on_cluster(
    client: Client,
    model: NormalisedNet,
    meta: ModelMeta,
    model_dir: Path,
    src: DatasetReader,
    path: Path,
    bands: list[int],
    clusters_tmp: Path,
    confidence_tmp: Path,
    config: SegmentConfig,
    progress: Progress,
) -> list[BandDone]:
    """Like :func:`geoseg.strips.segment_into`, with the bands computed on ``client``'s cluster.

    A raster of one band is segmented in this process (nothing to spread). Returns the
    finished bands (empty when run here).
    """
    grid = plan_grid(model, meta, config, src.height, src.width)
    plan = plan_bands(grid, src.height, config.band_rows)
    if len(plan) < 2:
        segment_into(model, meta, src, path, bands, clusters_tmp, confidence_tmp, config, progress)
        return []
    intermediate = clusters_tmp.parent / f".{path.stem}_bands-{os.getpid()}"
    intermediate.mkdir()
    try:
        job = BandJob(str(model_dir), str(path), tuple(bands), grid, config, str(intermediate))
        done = _run_bands(client, job, plan, f"segment {path.name}", progress)
        _assemble(src, plan, intermediate, clusters_tmp, confidence_tmp)
    finally:
        shutil.rmtree(intermediate, ignore_errors=True)
    return done


def _run_bands(
    client: Client, job: BandJob, plan: list[Band], desc: str, progress: Progress
) -> list[BandDone]:
    from distributed import as_completed

    key = uuid.uuid4().hex[:12]
    futures = [
        client.submit(run_band, job, band, key=f"segment-band-{key}-{band.index:05d}", pure=False)
        for band in plan
    ]
    done: dict[int, BandDone] = {}
    bar = progress_bar(progress, total=len(plan), desc=desc, unit="band")
    try:
        for future in as_completed(futures, loop=client.loop):
            result: Any = future.result()  # a task's InputError is raised here, as it was there
            done[result.index] = result
            bar.update(1)
    finally:
        bar.close()
        for future in futures:
            future.release()
    missing = [b.index for b in plan if not band_path(job.intermediate, b.index).is_dir()]
    if missing:  # a worker wrote where this process cannot see: not a shared file system
        raise InputError(
            f"bands {missing} finished on the cluster but are missing from {job.intermediate}: "
            "the output folder must be on a file system that every Dask worker shares"
        )
    return [done[b.index] for b in plan]


def _assemble(
    src: DatasetReader, plan: list[Band], intermediate: Path, clusters_tmp: Path, confidence_tmp: Path
) -> None:
    """Copy the bands, in row order, into the two intermediate tiled GeoTIFFs."""
    profile = tiled_profile(src.crs, src.transform, src.height, src.width, "uint8", NODATA)
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        create_raster(clusters_tmp, profile) as ids_dst,
        create_raster(confidence_tmp, profile) as conf_dst,
    ):
        for band in plan:
            array = zarr.open_array(str(band_path(intermediate, band.index)), mode="r")
            for start in range(0, band.rows, ASSEMBLE_ROWS):
                slab = np.asarray(array[:, start : start + ASSEMBLE_ROWS, :])
                out = Window(0, band.top + start, src.width, slab.shape[1])
                ids_dst.write(slab[0], 1, window=out)
                conf_dst.write(slab[1], 1, window=out)
