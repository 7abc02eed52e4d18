"""Flow runs that a stopped process worker left behind, marked Crashed with one line.

Stopping ``make worker`` (Ctrl-C, SIGTERM) while a flow runs ends the run's process, but
nothing tells the server: the run stays "Running" for ever, the UI shows it running and
``prefect deployment run ... --watch`` waits with no further line. scripts/prefect-worker.sh
names its worker ``POOL@HOST:PID`` and calls this module when the worker has stopped (and
before a new one starts, for a worker that was killed outright): every Running or Pending
run of the pool that a worker of this host started and whose process is gone becomes
Crashed, with a line in its log (shown under ``--watch``) saying what to do:

    python -m flows.orphans --pool geoseg-local --worker-prefix geoseg-local@HOST: --grace 15
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Sequence
from typing import Any

from geoseg.io.fileio import process_alive

__all__ = ["ORPHAN_MESSAGE", "crash_orphaned_runs", "main"]

WORKER_LABEL = "prefect.worker.name"
ORPHAN_MESSAGE = (
    "the worker stopped while this run was running (its process {pid} is gone): start the worker "
    "again (make worker) and run the deployment again; finished steps are cached and training "
    "resumes from its last checkpoint"
)


def _pid(run: Any) -> int | None:
    text = str(run.infrastructure_pid or "").rsplit(":", 1)[-1]  # "PID" or "HOST:PID"
    return int(text) if text.isdigit() else None


def _candidates(client: Any, pool: str, worker_prefix: str) -> list[tuple[Any, int]]:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))
        ),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
    )
    found = []
    for run in runs:
        pid = _pid(run)
        if pid is not None and str((run.labels or {}).get(WORKER_LABEL, "")).startswith(worker_prefix):
            found.append((run, pid))
    return found


def crash_orphaned_runs(pool: str, worker_prefix: str, grace: float = 0.0) -> list[str]:
    """Mark Crashed the Running/Pending runs of ``pool`` started by a worker whose name begins
    with ``worker_prefix`` (this host's) whose process is gone, after waiting up to ``grace``
    seconds for processes still exiting; returns their names."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate
    from prefect.states import Crashed

    crashed = []
    with get_client(sync_client=True) as client:
        candidates = _candidates(client, pool, worker_prefix)
        deadline = time.monotonic() + grace
        while any(process_alive(pid) for _, pid in candidates) and time.monotonic() < deadline:
            time.sleep(0.5)
        for run, pid in candidates:
            if process_alive(pid):
                continue  # still running by itself: it reports its own end
            message = ORPHAN_MESSAGE.format(pid=pid)
            log = LogCreate.model_validate(
                {
                    "name": "geoseg.worker",
                    "level": 40,
                    "message": message,
                    "timestamp": datetime.datetime.now(datetime.UTC),
                    "flow_run_id": run.id,
                }
            )
            client.create_logs([log])
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            crashed.append(str(run.name))
    return crashed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.orphans", description=__doc__.split("\n")[0])
    parser.add_argument("--pool", required=True)
    parser.add_argument("--worker-prefix", required=True, help="worker names of this host: POOL@HOST:")
    parser.add_argument("--grace", type=float, default=0.0, help="seconds to wait for exiting runs")
    args = parser.parse_args(argv)
    try:
        names = crash_orphaned_runs(args.pool, args.worker_prefix, args.grace)
    except Exception as exc:  # the server is gone too: nothing to mark, nothing to add
        print(f"could not check {args.pool} for runs left running: {exc}", file=sys.stderr)
        return 1
    for name in names:
        print(f"flow run {name!r} marked Crashed: {ORPHAN_MESSAGE.split(' (')[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
