"""A real local Prefect server and process worker, started by the project's scripts, run a deployment.

The way a user works: `make server`, `make worker`, `make deploy` (scripts/prefect-*.sh),
then `prefect deployment run 'segment/local' --param src=... --param model=... --watch`.
Everything runs in subprocesses with their own PREFECT_HOME and a free port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import rasterio

from geoseg.catalog import validate_run_catalog
from tests.flows.conftest import TINY_TRAIN, free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"


def _env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_HOST="127.0.0.1",
        PREFECT_PORT=str(port),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",
        PREFECT_WORKER_PREFETCH_SECONDS="2",
        GEOSEG_DASK_WORKERS="1",
    )
    return env


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen) -> None:
    """End a process this test started, with its children (its own session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"no Prefect server at {url} after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def local_prefect(tmp_path: Path) -> Iterator[dict[str, str]]:
    """`make server` + `make worker` (the scripts behind them), isolated."""
    env = _env(tmp_path / "prefect-home", free_port())
    server = _start([str(SCRIPTS / "prefect-server.sh")], env, tmp_path / "server.log")
    worker = None
    try:
        _wait_healthy(env["PREFECT_API_URL"], server, tmp_path / "server.log")
        worker = _start([str(SCRIPTS / "prefect-worker.sh")], env, tmp_path / "worker.log")
        yield env
    finally:
        for proc in (worker, server):
            if proc is not None:
                _stop(proc)


@pytest.fixture
def tiny_model(prefect_harness: None, tmp_path: Path, shared_data: Path) -> Path:
    """A real (tiny) model trained by the train flow on real Dubai patches."""
    from flows.train import train_flow
    from tests.iic.conftest import make_store

    store = make_store(tmp_path / "patches.zarr", shared_data, count=8)
    return Path(
        train_flow(store=str(store), out=str(tmp_path / "train"), steps=2, k=6, options=dict(TINY_TRAIN))
    )


def test_segment_deployment_runs_on_a_local_server_and_worker(
    local_prefect: dict[str, str], tiny_model: Path, small_scene, tmp_path: Path
) -> None:
    env = local_prefect
    deploy = subprocess.run(
        [str(SCRIPTS / "prefect-deploy.sh"), "segment/local"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    out = tmp_path / "new-survey"
    run = subprocess.run(
        [
            "prefect",
            "deployment",
            "run",
            "segment/local",
            "--param",
            f"src={small_scene.image}",
            "--param",
            f"model={tiny_model}",
            "--param",
            f"out={out}",
            "--watch",
            "--watch-timeout",
            "400",
        ],
        env={**env, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=450,
    )
    worker_log = (tmp_path / "worker.log").read_text()[-4000:]
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + worker_log
    assert "Completed" in run.stdout
    clusters = out / "predictions" / f"{small_scene.image.stem}_clusters.tif"
    with rasterio.open(clusters) as ds, rasterio.open(small_scene.image) as src:
        assert ds.crs == src.crs and ds.transform == src.transform
    assert (out / "predictions" / f"{small_scene.image.stem}_polygons.gpkg").is_file()
    assert validate_run_catalog(out / "catalog") >= 7
