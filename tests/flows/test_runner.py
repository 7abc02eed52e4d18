"""The flows' task runner: its LocalCluster lets the worker process exit by itself at the
end of a flow, without Dask's "Worker process still alive after 4.0 seconds, killing"."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow, task

from flows.runner import task_runner

EXIT_S = 6.0  # longer than Dask's 4 s, as a worker that loaded torch takes on a busy machine


@task
def exit_slowly(marker: str, seconds: float) -> int:
    """In the worker process: load torch, as the train and segment tasks do, and make the
    process's exit take ``seconds`` (what torch's finalisation takes with the CPUs busy);
    ``marker`` is written only when the process gets to the end of its exit."""
    import atexit
    import time

    import torch

    assert torch.ones(2).sum().item() == 2.0

    def finish() -> None:
        time.sleep(seconds)
        Path(marker).write_text(f"{os.getpid()} exited\n")

    atexit.register(finish)
    return os.getpid()


@flow(name="exit-slowly", task_runner=task_runner())
def exit_slowly_flow(marker: str, seconds: float) -> int:
    return exit_slowly.submit(marker, seconds).result()


@task
def worker_api_url() -> tuple[str | None, int]:
    return os.environ.get("PREFECT_API_URL"), os.getpid()


@flow(name="worker-api-url", task_runner=task_runner())
def worker_api_url_flow() -> tuple[str | None, int]:
    return worker_api_url.submit().result()


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def dask_log() -> Iterator[_Records]:
    """Every record of Dask's loggers in this process (the nannies run here; Dask's loggers do
    not propagate to the root logger, so caplog alone would not see them)."""
    records = _Records()
    logger = logging.getLogger("distributed")
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)  # the nanny's closing lines too
    try:
        yield records
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)


def test_a_flows_local_cluster_lets_a_slow_worker_exit_without_killing_it(
    prefect_harness: None, dask_log: _Records, tmp_path: Path
) -> None:
    marker = tmp_path / "exited"
    pid = exit_slowly_flow(str(marker), EXIT_S)
    assert pid != os.getpid()  # the task ran in a worker process of the flow's LocalCluster
    messages = [r.getMessage() for r in dask_log.records]
    assert any("Nanny asking worker to close" in m for m in messages), messages  # the cluster closed
    assert not [m for m in messages if "still alive" in m or "killing" in m.lower()], messages
    assert not [r for r in dask_log.records if r.levelno >= logging.WARNING], messages
    assert marker.read_text() == f"{pid} exited\n"  # the process ran its exit to the end


def test_a_dask_address_that_does_not_answer_is_one_line_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``dask_address=tcp://127.0.0.1:9`` (nobody there): the flow fails on geoseg's line
    naming the address after 10 s, not on distributed's OSError traceback after 30 s."""
    import time

    from flows.runner import task_runner
    from geoseg.errors import ConfigError
    from tests.flows.conftest import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    monkeypatch.setenv("GEOSEG_DASK_ADDRESS", address)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=f"no Dask scheduler answers at {address}"), task_runner() as runner:
        runner.client  # noqa: B018 - the runner connects on first use
    assert time.monotonic() - started < 25


def test_the_workers_of_a_flows_local_cluster_report_to_the_flows_own_server(prefect_harness: None) -> None:
    """A flow called as plain Python talks to a server only this process knows (a temporary
    one, or the harness's: a setting, not an environment variable). The worker processes get
    its URL, so they neither start a temporary server of their own (~10 s a run) nor record
    the task runs there, away from their flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL

    assert "PREFECT_API_URL" not in os.environ  # the case: the URL is only a setting
    state = worker_api_url_flow(return_state=True)
    url, pid = state.result()
    assert pid != os.getpid()  # the task ran in a worker process
    assert url == PREFECT_API_URL.value().rstrip("/")
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert [run.name.split("-")[0] for run in task_runs] == ["worker_api_url"]
