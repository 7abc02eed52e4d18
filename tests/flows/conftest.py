"""Fixtures of the flow tests: one Prefect test server per pytest worker, small real runs.

``prefect_harness`` starts Prefect's test harness (an isolated PREFECT_HOME and a
temporary API server) once per session/xdist worker; the server can take a while to
start on a loaded machine, hence the generous timeout. ``small_run`` runs the whole
``pipeline`` flow once on a small generated scene; several tests read its outputs.
"""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.testing.utilities import prefect_test_harness

from geoseg.synthetic import SceneFiles, generate_scene

# Tiny but real: 32-px patches, the small network, a few steps (seconds, not minutes).
TINY_TRAIN = {"batch_size": 4, "half_t": 1, "checkpoint_every": 2, "device": "cpu", "k_a": 12}
TINY = {"patch_size": 32, "steps": 2, "k": 6, "preset": "small", "train": TINY_TRAIN}


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def small_scene(tmp_path_factory: pytest.TempPathFactory) -> SceneFiles:
    return generate_scene(tmp_path_factory.mktemp("scene"), size=192, seed=5)


@pytest.fixture(scope="session")
def small_run(
    prefect_harness: None, small_scene: SceneFiles, tmp_path_factory: pytest.TempPathFactory
) -> dict:
    from flows.pipeline import pipeline_flow

    out = tmp_path_factory.mktemp("run") / "pipeline"
    state = pipeline_flow(
        src=str(small_scene.image),
        out=str(out),
        labels=str(small_scene.labels),
        dataset="synthetic",
        return_state=True,
        **TINY,
    )
    return {**state.result(), "flow_run_id": state.state_details.flow_run_id}


def flow_run_logs(flow_run_id: object) -> list:
    """The logs the API server holds for one flow run (log workers drained)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    with get_client(sync_client=True) as client:
        return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))


def copy_scene(scene: SceneFiles, folder: Path) -> Path:
    """A private copy of the scene image (tests that corrupt or touch it must not share it)."""
    folder.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(scene.image, folder / scene.image.name))


def ingested_copy(scene: SceneFiles, tmp_path: Path) -> tuple[Path, Path, str]:
    """(source copy, run folder, store as the flow returns it) of one ``ingest`` flow run on a
    private copy of the scene."""
    from flows.ingest import ingest_flow

    src = copy_scene(scene, tmp_path / "survey")
    run = tmp_path / "run"
    return src, run, ingest_flow(src=str(src), out=str(run), patch_size=32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mtimes(folder: str | Path) -> dict[str, Any]:
    """mtime_ns of every visible file under a folder (cache records excluded)."""
    root = Path(folder)
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }
