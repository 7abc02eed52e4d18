"""Stopping the worker mid-run (flows/orphans.py, scripts/prefect-worker.sh), for real.

A user stops ``make worker`` (Ctrl-C, SIGTERM) while ``prefect deployment run ... --watch``
waits on a pipeline run in training: the run's process ends with the worker. Before, the
server kept the run "Running" for ever and ``--watch`` waited with no further line; now the
worker's script marks the run Crashed with one line saying what to do, which ``--watch``
shows, and the run folder keeps what the run had finished.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flows.orphans import ORPHAN_MESSAGE
from tests.flows.conftest import TINY, free_port
from tests.flows.test_deployment import (
    ROOT,
    SCRIPTS,
    _api,
    _env,
    _start,
    _stop,
    _wait_healthy,
    _wait_worker_online,
)


def _start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`make worker` as from a terminal: SIGINT at its default even when this test inherited it
    ignored (a background job), so that the worker stops at once as it does for a user."""
    return subprocess.Popen(
        [str(SCRIPTS / "prefect-worker.sh")],
        env=env,
        cwd=ROOT,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for(text: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert time.monotonic() < deadline, (
            f"no {text!r} in {log} after {timeout}s:\n{log.read_text()[-3000:]}"
        )
        time.sleep(1)


@pytest.mark.parametrize("stopped", ["worker", "script"])
def test_stopping_the_worker_mid_run_crashes_the_run_with_one_line_under_watch(
    stopped: str, small_scene, tmp_path: Path
) -> None:
    env = _env(tmp_path / "prefect-home", free_port())
    server = _start([str(SCRIPTS / "prefect-server.sh")], env, tmp_path / "server.log")
    worker_log = tmp_path / "worker.log"
    worker = watch = None
    try:
        _wait_healthy(env["PREFECT_API_URL"], server, tmp_path / "server.log")
        worker = _start_worker(env, worker_log)
        _wait_worker_online(env, worker_log)
        deploy = subprocess.run(
            [str(SCRIPTS / "prefect-deploy.sh"), "pipeline/local"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        run_dir = tmp_path / "run"
        parameters = {"src": str(small_scene.image), "out": str(run_dir), **TINY, "steps": 2000}
        command = [str(Path(sys.executable).parent / "prefect"), "deployment", "run", "pipeline/local"]
        watch = subprocess.Popen(
            [*command, "--params", json.dumps(parameters), "--watch", "--watch-timeout", "400"],
            env={**env, "COLUMNS": "400"},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _wait_for("training on cpu", worker_log)
        # `kill PID` of the worker itself, or of the script (a supervisor's stop), which
        # passes SIGTERM on to the worker.
        script = psutil.Process(worker.pid)
        (prefect_worker,) = [
            p for p in [script, *script.children(recursive=True)] if "worker" in p.cmdline()[2:4]
        ]
        (prefect_worker if stopped == "worker" else script).send_signal(signal.SIGTERM)
        assert worker.wait(timeout=120) is not None
        assert not prefect_worker.is_running()
        watched, _ = watch.communicate(timeout=120)  # before: waited until --watch-timeout
        assert watch.returncode != 0, watched[-3000:]
        assert ORPHAN_MESSAGE.split(" (")[0] in watched, watched[-3000:]
        assert "Crashed" in watched and "Traceback" not in watched, watched[-3000:]
        runs = _api(env, "flow_runs/filter", {})
        assert [r["state"]["type"] for r in runs] == ["CRASHED"], runs
        assert "make worker" in runs[0]["state"]["message"]
        assert (run_dir / "patches.zarr" / "zarr.json").is_file()  # the finished ingest stays
        # A worker started again finds nothing more to mark and serves the pool.
        worker = _start_worker(env, tmp_path / "worker2.log")
        _wait_for("started!", tmp_path / "worker2.log")
        assert "marked Crashed" not in (tmp_path / "worker2.log").read_text()
    finally:
        if watch is not None and watch.poll() is None:
            watch.kill()
            watch.wait()
        for proc in (worker, server):
            if proc is not None:
                _stop(proc)
