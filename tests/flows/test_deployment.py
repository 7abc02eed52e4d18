"""The README's order, for real: server, then the process worker, then the deployments, then runs.

The way a user works: `make server`, `make worker` (both left running), `make deploy`
(scripts/prefect-*.sh; the worker is online while the deployments are registered), then
`prefect deployment run 'pipeline/local' ... --watch` and `prefect deployment run
'segment/local' ... --watch`. Everything runs in subprocesses with their own PREFECT_HOME
and a free port.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rasterio
import yaml

from geoseg.io import outputs
from geoseg.stac.catalog import validate_run_catalog
from tests.flows.conftest import TINY, free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
LOCAL_POOL = "geoseg-local"


def _env(home: Path, port: int) -> dict[str, str]:
    # Analytics and Dask's log level are left to the scripts and flows (checked below).
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "DASK_")) and k not in ("DO_NOT_TRACK", "PYTHONPATH")
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
        PYTHONPATH=str(ROOT),
        PREFECT_HOME=str(home),
        PREFECT_HOST="127.0.0.1",
        PREFECT_PORT=str(port),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
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


def _api(env: dict[str, str], route: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        f"{env['PREFECT_API_URL']}/{route}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def _registered(env: dict[str, str]) -> set[tuple[str, str, str]]:
    """(flow name, deployment name, work pool) of every deployment on the server."""
    flows = {f["id"]: f["name"] for f in _api(env, "flows/filter", {})}
    return {
        (flows[d["flow_id"]], d["name"], d["work_pool_name"]) for d in _api(env, "deployments/filter", {})
    }


def _local_pool_deployments() -> set[tuple[str, str, str]]:
    """What prefect.yaml asks the local pool to serve (flow names by the FLOW_flow convention)."""
    entries = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    return {
        (e["entrypoint"].rsplit(":", 1)[1].removesuffix("_flow"), e["name"], LOCAL_POOL)
        for e in entries
        if e["work_pool"]["name"] == LOCAL_POOL
    }


def _wait_worker_online(env: dict[str, str], log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            workers = _api(env, f"work_pools/{LOCAL_POOL}/workers/filter", {})
        except OSError:
            workers = []
        if any(w["status"] == "ONLINE" for w in workers):
            return
        time.sleep(2)
    raise AssertionError(f"no online worker in {LOCAL_POOL} after {timeout}s:\n{log.read_text()[-3000:]}")


def _run_deployment(
    env: dict[str, str], name: str, parameters: dict[str, Any], worker_log: Path, fails: bool = False
) -> str:
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "prefect"),
            "deployment",
            "run",
            name,
            "--params",
            json.dumps(parameters),
            "--watch",
            "--watch-timeout",
            "500",
        ],
        env={**env, "COLUMNS": "400"},  # the watch's console: a log line is not wrapped
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=560,
    )
    output = run.stdout[-3000:] + run.stderr[-3000:] + worker_log.read_text()[-4000:]
    if fails:
        assert run.returncode != 0 and "Failed" in run.stdout, output
    else:
        assert run.returncode == 0, output
        assert "Completed" in run.stdout
    return run.stdout


def test_readme_order_server_worker_deploy_then_pipeline_and_segment_runs(
    local_prefect: dict[str, str], small_scene, tmp_path: Path
) -> None:
    env = local_prefect
    worker_log = tmp_path / "worker.log"
    _wait_worker_online(env, worker_log)
    # `make deploy` with the worker online: every local-pool deployment of prefect.yaml.
    deploy = subprocess.run(
        [str(SCRIPTS / "prefect-deploy.sh")], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    expected = _local_pool_deployments()
    assert {("segment", "local", LOCAL_POOL), ("pipeline", "local", LOCAL_POOL)} <= expected
    assert _registered(env) == expected
    # `make deploy` points the profile at the server: a new terminal without PREFECT_API_URL
    # runs and watches on it, not on a temporary server that never hears the run end.
    assert f"the Prefect profile now points at {env['PREFECT_API_URL']}" in deploy.stdout, deploy.stdout
    new_terminal = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}

    # pipeline/local: ingest -> train -> segment -> evaluate on the generated scene.
    run_dir = tmp_path / "survey-run"
    pipeline = {
        "src": str(small_scene.image),
        "labels": str(small_scene.labels),
        "dataset": "synthetic",
        "out": str(run_dir),
        **TINY,
    }
    _run_deployment(new_terminal, "pipeline/local", pipeline, worker_log)
    report = json.loads((run_dir / "evaluation" / "report.json").read_text())
    assert report["dataset"] == "synthetic" and 0.0 <= report["accuracy"] <= 1.0
    assert validate_run_catalog(run_dir / "catalog") >= 7

    # segment/local: the pipeline's model on the same imagery, into a new folder.
    out = tmp_path / "new-survey"
    segment = {"src": str(small_scene.image), "model": str(run_dir / "model"), "out": str(out)}
    _run_deployment(env, "segment/local", segment, worker_log)
    for folder in (run_dir, out):
        clusters = folder / "predictions" / f"{small_scene.image.stem}_clusters.tif"
        with rasterio.open(clusters) as ds, rasterio.open(small_scene.image) as src:
            assert ds.crs == src.crs and ds.transform == src.transform and ds.nodata == 255
        assert outputs.polygons_path(clusters).is_file()
    name = f"{small_scene.image.stem}_clusters.tif"
    with rasterio.open(run_dir / "predictions" / name) as a, rasterio.open(out / "predictions" / name) as b:
        assert (a.read(1) == b.read(1)).all()  # same model, same imagery: the same map
    assert validate_run_catalog(out / "catalog") >= 7
    missing = tmp_path / "no-such-survey.tif"
    bad = {"src": str(missing), "model": str(run_dir / "model"), "out": str(tmp_path / "bad-run")}
    # A run failing on bad input shows why under --watch, not only "Failed": the server streams
    # the run's logs (scripts/prefect-env.sh), and the flow's own one line is among them, a log
    # line of its own (Prefect's lines only quote it inside a traceback or a state message).
    watched = _run_deployment(env, "segment/local", bad, worker_log, fails=True)
    own_line = rf"^▪ .* [0-9a-f]{{12}} {re.escape(f'src not found: {missing}')}$"
    assert re.search(own_line, watched, re.MULTILINE), watched[-3000:]
    assert "Traceback" not in watched, watched[-3000:]  # the line, not Prefect's traceback after it
    # Quiet runs: no analytics attempt by the server, no Dask INFO lines in the flow runs' output
    # (the process worker streams it into its log), but the training's progress lines.
    assert "telemetry" not in (tmp_path / "server.log").read_text().lower()
    text = worker_log.read_text()
    assert not re.search(r"distributed\.\S+ - INFO - ", text), text[-3000:]
    assert re.search(r"train: 2/2 step \(100%\).*ETA 00:00, loss_a=", text), text[-3000:]


def test_make_server_on_a_taken_port_is_one_line_naming_it_and_prefect_port(tmp_path: Path) -> None:
    """`make server` when the port is in use (another server, another program): one line on
    stderr naming the port and PREFECT_PORT, exit status 2, no server started."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _env(tmp_path / "prefect-home", port)
        run = subprocess.run(
            [str(SCRIPTS / "prefect-server.sh")],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert f"port {port} on 127.0.0.1 is already in use" in lines[0]
    assert f"PREFECT_PORT={port + 1} make server" in lines[0]
    assert "Traceback" not in run.stdout + run.stderr and "Prefect server:" not in run.stdout


def test_make_deploy_keeps_a_profile_that_names_another_server(tmp_path: Path) -> None:
    """A user's Prefect profile that already points at a server (Prefect Cloud, another host)
    is never rewritten by `make deploy`'s remember_server; the user is told what to export."""
    env = _env(tmp_path / "prefect-home", 4299)
    home = Path(env["PREFECT_HOME"])
    home.mkdir(parents=True)
    profiles = home / "profiles.toml"
    mine = 'active = "mine"\n\n[profiles.mine]\nPREFECT_API_URL = "https://api.example.org/api"\n'
    profiles.write_text(mine)
    run = subprocess.run(
        ["bash", "-c", f"source {SCRIPTS / 'prefect-env.sh'} && remember_server"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert profiles.read_text() == mine
    assert "the profile points at https://api.example.org/api" in run.stderr.replace(
        "Prefect profile", "profile"
    )
    assert f"export PREFECT_API_URL={env['PREFECT_API_URL']}" in run.stderr
