"""One raster segmented in row bands on a real Dask cluster: `dask scheduler` and two `dask
worker` processes started on loopback, as a user starts them.

The source is a GDAL VRT mosaic of eight real Lausanne tiles (960 x 175 px) (a mosaic is the case bands are
for); the model is a tiny random IIC network. Every comparison is with the single-process
result of the same call without ``dask_address``, pixel for pixel.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geoseg.bands import Band, plan_bands
from geoseg.cli import main
from geoseg.config import SegmentConfig
from geoseg.errors import BusyError, ConfigError
from geoseg.io.cog import validate_cog
from geoseg.models.bundle import load_bundle
from geoseg.segment import segment
from geoseg.strips import plan_grid
from tests.test_segment import make_bundle

ROOT = Path(__file__).resolve().parents[1]
# windows of 96 px and bands of 64 rows (two window rows): 8 bands over the 960-row mosaic
CONFIG = SegmentConfig(vectorize=False, window=96, band_rows=64, batch_size=4)
TILES = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_vrt(tiles: list[Path], out: Path) -> Path:
    """A VRT mosaic of tiles stacked north to south (same width, CRS and resolution)."""
    with rasterio.open(tiles[0]) as first:
        crs, transform, width, height = first.crs, first.transform, first.width, first.height
        count, dtype = first.count, first.dtypes[0]
    gdal_type = {"uint8": "Byte", "uint16": "UInt16"}[dtype]
    colours = ["Red", "Green", "Blue", "Undefined"]
    bands = []
    for b in range(1, count + 1):
        sources = "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="0">{tile}</SourceFilename>'
            f"<SourceBand>{b}</SourceBand>"
            f'<SrcRect xOff="0" yOff="0" xSize="{width}" ySize="{height}"/>'
            f'<DstRect xOff="0" yOff="{i * height}" xSize="{width}" ySize="{height}"/></SimpleSource>'
            for i, tile in enumerate(tiles)
        )
        bands.append(
            f'<VRTRasterBand dataType="{gdal_type}" band="{b}">'
            f"<ColorInterp>{colours[min(b, 4) - 1]}</ColorInterp>{sources}</VRTRasterBand>"
        )
    geo = ", ".join(str(v) for v in (transform.c, transform.a, 0.0, transform.f, 0.0, transform.e))
    out.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height * len(tiles)}">'
        f"<SRS>{crs.to_wkt()}</SRS><GeoTransform>{geo}</GeoTransform>{''.join(bands)}</VRTDataset>\n"
    )
    return out


class Cluster:
    """A `dask scheduler` and two single-threaded `dask worker` processes (no nanny: a killed
    worker stays dead, so the run must finish on the other one).

    The scheduler picks its own free port and writes it to a scheduler file (a port chosen
    beforehand can be taken by another process before the scheduler binds it)."""

    def __init__(self, folder: Path) -> None:
        self.log = (folder / "dask.log").open("w")
        self.scheduler_file = folder / "scheduler.json"
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        self.dask = str(Path(sys.executable).parent / "dask")
        self.scheduler = self._start(
            [self.dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
             "--scheduler-file", str(self.scheduler_file)]
        )  # fmt: skip
        self.address = self._read_address()
        worker = [self.dask, "worker", "--scheduler-file", str(self.scheduler_file), "--nworkers", "1"]
        self.workers = [
            self._start([*worker, "--nthreads", "1", "--no-nanny", "--no-dashboard"]) for _ in range(2)
        ]

    def _start(self, command: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)

    def _read_address(self, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited with {self.scheduler.returncode}")
            try:
                return str(json.loads(self.scheduler_file.read_text())["address"])
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.2)
        self.scheduler.kill()
        raise RuntimeError("dask scheduler did not start")

    def wait(self) -> None:
        import distributed

        with distributed.Client(self.address, timeout=60, set_as_default=False) as client:
            client.wait_for_workers(2, timeout=120)

    def stop(self) -> None:
        for proc in (*self.workers, self.scheduler):
            proc.terminate()
        for proc in (*self.workers, self.scheduler):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.log.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    running = Cluster(tmp_path)
    try:
        running.wait()
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(
        tmp_path_factory.mktemp("m") / "rgb", ["red", "green", "blue"], "uint8", 110.0, 50.0, 32
    )


@pytest.fixture(scope="module")
def mosaic(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiles = [shared_data / "lausanne" / "img" / f"1091-322_{i:02d}.tif" for i in range(TILES)]
    return write_vrt(tiles, tmp_path_factory.mktemp("vrt") / "mosaic.vrt")


@pytest.fixture(scope="module")
def single(
    model: Path, mosaic: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ids and confidence of the mosaic, segmented in this process."""
    (result,) = segment(model, [mosaic], tmp_path_factory.mktemp("single"), CONFIG, progress=False)
    return read(result.clusters), read(result.confidence)


def planned_bands(model: Path, mosaic: Path) -> list[Band]:
    bundle, meta = load_bundle(model)
    with rasterio.open(mosaic) as src:
        return plan_bands(
            plan_grid(bundle, meta, CONFIG, src.height, src.width), src.height, CONFIG.band_rows
        )


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_bands_run_on_both_workers_and_equal_the_single_process_result(
    cluster: Cluster, model: Path, mosaic: Path, single: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    import distributed

    with (
        distributed.Client(cluster.address, set_as_default=False) as client,
        distributed.get_task_stream(client=client) as stream,
    ):
        (result,) = segment(
            model, [mosaic], tmp_path / "out", CONFIG, progress=False, dask_address=cluster.address
        )
    band_tasks = [t for t in stream.data if str(t["key"]).startswith("segment-band-")]
    assert len(band_tasks) == len(planned_bands(model, mosaic)) >= 4
    assert len({t["worker"] for t in band_tasks}) == 2  # as the workers reported them
    ids, confidence = single
    assert np.array_equal(read(result.clusters), ids)  # bit-identical, not only >= 99.99 %
    assert np.array_equal(read(result.confidence), confidence)
    assert validate_cog(result.clusters)[0] and validate_cog(result.confidence)[0]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".") and "bands" in p.name]
    with rasterio.open(result.clusters) as out, rasterio.open(mosaic) as src:
        assert out.transform == src.transform and out.crs == src.crs and out.shape == src.shape


def _first_finished_band(out: Path, timeout: float = 180) -> int:
    """PID of the worker that finished the run's first band (read from the band's zarr attributes)."""
    import zarr

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for band in out.glob(".*.staging-*/.*_bands-*/band-*.zarr"):
            try:
                return int(zarr.open_array(str(band), mode="r").attrs["pid"])
            except (FileNotFoundError, KeyError, ValueError):
                pass  # renamed or removed under us: look again
        time.sleep(0.05)
    raise AssertionError("no band finished")


def test_a_worker_killed_after_its_first_band_still_finishes_with_the_same_output(
    cluster: Cluster, model: Path, mosaic: Path, single: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    import distributed

    out = tmp_path / "out"
    results: list[object] = []
    run = threading.Thread(
        target=lambda: results.append(
            segment(model, [mosaic], out, CONFIG, progress=False, dask_address=cluster.address)
        )
    )
    with (
        distributed.Client(cluster.address, set_as_default=False) as client,
        distributed.get_task_stream(client=client) as stream,
    ):
        run.start()
        pid = _first_finished_band(out)
        victim = next(w for w in cluster.workers if w.pid == pid)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        victim.wait(timeout=30)
        run.join(timeout=300)
    later = [t for t in stream.data if min(s["start"] for s in t["startstops"]) > killed_at]
    assert any(str(t["key"]).startswith("segment-band-") for t in later)  # killed mid-run
    assert not run.is_alive() and len(results) == 1, "the run did not finish after the kill"
    (result,) = results[0]  # type: ignore[misc]
    assert victim.returncode == -signal.SIGKILL
    ids, confidence = single
    assert np.array_equal(read(result.clusters), ids)
    assert np.array_equal(read(result.confidence), confidence)


def test_a_second_run_into_the_folder_of_a_distributed_run_is_refused(
    cluster: Cluster, model: Path, mosaic: Path, single: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    geoseg = [sys.executable, "-m", "geoseg.cli"]
    command = [*geoseg, "segment", str(model), str(mosaic), "--out", str(out), "--window", "96"]
    command += ["--band-rows", "64", "--no-vectorize", "--quiet", "--dask-address", cluster.address]
    first = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        _first_finished_band(out)  # the distributed run is under way: bands are on the workers
        with pytest.raises(BusyError, match=f"in use by process {first.pid}"):
            segment(model, [mosaic], out, CONFIG, progress=False)
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert np.array_equal(read(out / "mosaic_clusters.tif"), single[0])  # never interleaved


def test_a_scheduler_that_does_not_answer_is_one_clear_line_before_any_work(
    model: Path, mosaic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"tcp://127.0.0.1:{free_port()}"  # nobody listens there
    started = time.monotonic()
    with pytest.raises(ConfigError, match=f"no Dask scheduler answers at {address}"):
        segment(model, [mosaic], tmp_path / "lib", CONFIG, progress=False, dask_address=address)
    assert time.monotonic() - started < 30
    assert not (tmp_path / "lib").exists() or not list((tmp_path / "lib").iterdir())
    rc = main(["segment", str(model), str(mosaic), "--out", str(tmp_path / "cli"), "--dask-address", address])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].startswith("geoseg segment: error: no Dask scheduler answers at") and address in err[0]
