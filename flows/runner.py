"""The flows' task runner: Dask, on a LocalCluster or on the scheduler a run names.

Prefect fixes a flow's task runner when the flow is decorated, but the Dask address is a
run parameter (``dask_address``) or a worker setting (``GEOSEG_DASK_ADDRESS``). The
DaskTaskRunner only connects when the first task is submitted, so this subclass decides
there: by then the flow run's parameters are known. Without an address it starts a
LocalCluster sized by :class:`flows.settings.FlowSettings`, whose nannies wait
:data:`WORKER_EXIT_S` for their worker process to exit when the flow ends (:class:`Nanny`).

Inside a task, :func:`library_dask` hands the same cluster to the library's own Dask work
(ingest, vectorize): it returns the scheduler address of the worker running the task and
secedes the task's thread from the worker's pool meanwhile, so the library's Dask tasks
can use that thread's slot instead of waiting for it (no deadlock on a one-thread worker).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import distributed
from prefect.context import FlowRunContext
from prefect.task_runners import TaskRunner
from prefect_dask import DaskTaskRunner

from flows.results import RESULT_SERIALIZER
from flows.settings import FlowSettings, check_dask_address
from geoseg.io.cluster import CONNECT_TIMEOUT_S, no_scheduler

log = logging.getLogger(__name__)

# How long a LocalCluster's nanny waits for its worker process to exit at the end of a flow
# before killing it. Dask's own 4 s (0.8 x Nanny.close's 5) is too short for a worker that
# has loaded torch: after the worker has closed, the process's interpreter finalisation
# (torch's modules and native libraries) takes 0.7-2 s on an idle 2-core machine and 5-8 s
# with the CPUs busy, and Dask then logs "Worker process still alive after 4.0 seconds,
# killing" at every flow's end although nothing is wrong.
WORKER_EXIT_S = 60.0


class Nanny(distributed.Nanny):
    """The flows' LocalCluster nanny: closing waits up to :data:`WORKER_EXIT_S` for the
    worker process to exit by itself (it is killed only after that)."""

    async def close(  # type: ignore[override]  # as distributed.Nanny's own
        self, timeout: float | None = None, reason: str = "nanny-close"
    ) -> Literal["OK"]:
        # Dask waits 0.8 x timeout for the process before it kills it
        return await super().close(timeout=WORKER_EXIT_S / 0.8 if timeout is None else timeout, reason=reason)


class GeosegTaskRunner(DaskTaskRunner):
    """A DaskTaskRunner whose cluster is chosen from the flow run's ``dask_address`` parameter."""

    @property
    def client(self) -> distributed.Client:  # type: ignore[override]
        if self._client is None and self._cluster is None and self.address is None:
            self._choose_cluster()
        try:
            return DaskTaskRunner.client.fget(self)  # type: ignore[attr-defined]
        except (OSError, TimeoutError) as exc:
            if self._client is not None or not self.address:
                raise
            # the CLI's line (geoseg.io.cluster.connect), not distributed's traceback after 30 s
            raise no_scheduler(self.address, "dask_address") from exc

    def _choose_cluster(self) -> None:
        settings = FlowSettings.from_env()
        context = FlowRunContext.get()
        parameter = context.parameters.get("dask_address") if context and context.parameters else None
        address = check_dask_address(parameter) or settings.dask_address
        if address:
            self.address = address
            self.cluster_kwargs = {}
            self.client_kwargs = {"timeout": CONNECT_TIMEOUT_S, **self.client_kwargs}
        else:
            env = _worker_api_env(context)
            self.cluster_kwargs = {
                **settings.cluster_kwargs(),
                "worker_class": Nanny,
                **({"env": env} if env else {}),
                **self.cluster_kwargs,
            }


def _worker_api_env(context: FlowRunContext | None) -> dict[str, str]:
    """The flow's own Prefect API for the LocalCluster's worker processes, which inherit the
    environment but not Prefect's in-process settings: a flow called as plain Python talks to
    a temporary server (or the test harness's) that only this process knows, and without the
    URL every worker process starts a temporary server of its own, ~10 s per flow run before
    the first task, with the task runs recorded there instead of beside their flow run."""
    if context is None:
        return {}
    return {"PREFECT_API_URL": str(context.client.api_url).rstrip("/")}


def task_runner() -> TaskRunner[Any]:
    """The runner every geoseg flow is decorated with (a :class:`GeosegTaskRunner`; typed as
    Prefect's flow decorator takes it, whose TaskRunner type parameter is invariant)."""
    return GeosegTaskRunner()


F = TypeVar("F")


def package_flow(flow_obj: F, module_name: str, module_file: str) -> F:
    """The flow as the ``flows`` package defines it, when its file was loaded as a script.

    Each flow module ends with ``x_flow = package_flow(x_flow, __name__, __file__)``. A
    deployment's entrypoint (``flows/segment.py:segment_flow`` in prefect.yaml) is loaded by
    Prefect as a script module named after the file (``segment``), and pickle names the
    flow's helpers (``segment_step``), which every task's context carries to Dask with the
    flow, by that module. A scheduler and workers
    started on their own (``dask scheduler``, ``dask worker``: the ``dask_address`` parameter)
    cannot import ``segment``: the task graph did not deserialize there ("No module named
    'segment'") and the run failed with "UnfinishedRun: Run is in PENDING state". The same
    file imported as ``flows.segment`` is named so, which any worker with geoseg installed
    imports. A LocalCluster's workers could import the script module, so only joined
    schedulers failed.
    """
    canonical = f"flows.{Path(module_file).stem}"
    if module_name in (canonical, "__main__"):
        return flow_obj
    return getattr(importlib.import_module(canonical), flow_obj.fn.__name__)  # type: ignore[attr-defined, no-any-return]


def flow_options() -> dict[str, Any]:
    """How every geoseg flow runs (``@flow(name=..., **flow_options())``): on the Dask task
    runner, its parameters validated, its result stored as JSON (:mod:`flows.results`)."""
    return {"task_runner": task_runner(), "validate_parameters": True, "result_serializer": RESULT_SERIALIZER}


@contextlib.contextmanager
def library_dask() -> Iterator[str | None]:
    """The scheduler address of the Dask worker running this task (None outside Dask).

    The task's thread secedes from the worker's pool while the block runs, and rejoins
    after: the library's Dask work on the same cluster can then use the slot.
    """
    try:
        worker = distributed.get_worker()
    except ValueError:
        yield None
        return
    address = worker.scheduler.address
    distributed.secede()
    try:
        yield address
    finally:
        distributed.rejoin()
