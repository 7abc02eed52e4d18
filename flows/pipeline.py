"""The ``pipeline`` flow: ingest -> train -> segment (+ vectorize) -> evaluate when labels are given.

Run folder layout (``out``)::

    patches.zarr/      the patch store              (ingest)
    model/             the model bundle             (train)
    predictions/       <stem>_clusters.tif, _confidence.tif, .gpkg, .qml, previews (segment)
    evaluation/        report.json, report.md, PNGs (evaluate, only with labels)
    catalog/           the run's STAC catalog: surveys, models, predictions
    .prefect-cache/    task cache records: re-running skips finished steps

:func:`run_demo` is the Prefect side of ``geoseg demo`` (the library never imports
Prefect): it generates or takes the scene (:mod:`geoseg.demo`) and calls this flow,
on a temporary local Prefect server unless one is configured (PREFECT_API_URL).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.ingest import ingest_step
from flows.runner import flow_options, package_flow
from flows.segment import segment_step
from flows.settings import (
    FlowSettings,
    build_config,
    check_dask_address,
    check_inputs,
    check_sources,
    config_dict,
    logs_user_errors,
    run_folder,
)
from flows.tasks import evaluate_task, run
from flows.train import train_step
from geoseg.config import EvaluateConfig, IngestConfig, SegmentConfig, TrainConfig
from geoseg.messages import plural

EVALUATION = "evaluation"
DEMO_SERVER_TIMEOUT_S = 180
DRAIN_TIMEOUT_S = 10
log = logging.getLogger(__name__)


@flow(name="pipeline", **flow_options())
@logs_user_errors
def pipeline_flow(
    src: str | list[str],
    out: str | None = None,
    labels: str | list[str] | None = None,
    dataset: str | None = None,
    patch_size: int | None = None,
    steps: int | None = None,
    k: int | None = None,
    preset: str | None = None,
    ingest: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    segment: dict[str, Any] | None = None,
    evaluate: dict[str, Any] | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """End to end on a survey: patch store, model, cluster maps and polygons, evaluation, catalog.

    Args:
        src: raster files (GeoTIFF/COG) of the survey.
        out: the run folder (default ``$GEOSEG_WORK_ROOT/pipeline/<first source stem>``).
        labels: ground truth rasters, one per source: the run is then evaluated too.
            Training never sees them.
        dataset: label dataset (geoseg.datasets) of ``labels``.
        patch_size, steps, k, preset: shortcuts for the ingest/train settings.
        ingest, train, segment, evaluate: any other field of the stage's config.
        dask_address: join this Dask scheduler (default: a LocalCluster or $GEOSEG_DASK_ADDRESS).

    Returns:
        Paths of what was written and each step's final state ("Completed" or "Cached").
    """
    logger = get_run_logger()
    settings = FlowSettings.from_env()
    check_dask_address(dask_address)
    sources = check_sources(src, settings)
    label_paths = check_inputs(labels, "labels", settings) if labels else None
    if label_paths is not None and len(label_paths) != len(sources):
        from geoseg.errors import ConfigError

        raise ConfigError(
            f"give one label raster per source: {plural(len(sources), 'source')}, {plural(len(label_paths), 'label')}"
        )
    run_dir = run_folder(out, settings, "pipeline", sources[0].stem)
    ingest_cfg = build_config(IngestConfig, ingest, patch_size=patch_size, dataset=dataset)
    train_cfg = build_config(TrainConfig, train, steps=steps, k=k, preset=preset)
    segment_cfg = build_config(SegmentConfig, segment)
    evaluate_cfg = build_config(EvaluateConfig, evaluate, dataset=dataset)

    states: dict[str, Any] = {}
    store, states["ingest"] = ingest_step(sources, run_dir, ingest_cfg)
    logger.info("patch store %s (%s)", store, states["ingest"])
    model, states["train"] = train_step([store], run_dir, train_cfg)
    logger.info("model %s (%s)", model, states["train"])
    predictions, states["segment"] = segment_step(model, sources, run_dir, segment_cfg)
    report = None
    if label_paths:
        report, states["evaluate"] = run(
            evaluate_task,
            run_dir,
            predictions=[p["clusters"] for p in predictions],
            labels=[str(p) for p in label_paths],
            out_dir=str(run_dir / EVALUATION),
            config=config_dict(evaluate_cfg),
            images=[str(s) for s in sources],
        )
        logger.info("evaluation %s (%s)", report, states["evaluate"])
    return {
        "run": str(run_dir),
        "store": str(store),
        "model": str(model),
        "predictions": predictions,
        "report": report,
        "catalog": str(run_dir / "catalog" / "catalog.json"),
        "states": states,
    }


pipeline_flow = package_flow(pipeline_flow, __name__, __file__)


def run_demo(out: str | Path, src: str | Path | None = None, **overrides: Any) -> dict[str, Any]:
    """``geoseg demo``: the pipeline on the generated scene (with evaluation) or on ``src``.

    Without a configured server (PREFECT_API_URL), the demo starts one temporary Prefect
    API server itself and points PREFECT_API_URL at it, in the settings and in the
    environment: the flow's Dask workers are other processes, and a task there without an
    API URL would start a second temporary server of its own. The server gets 180 s to
    start (Prefect's default of 20 s is too little on a busy 2-core machine) unless the
    user set PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS. Its database is a temporary
    file, removed with the server, unless the user set PREFECT_SERVER_DATABASE_CONNECTION_URL:
    in PREFECT_HOME (``~/.prefect/prefect.db``) it would be the database of the user's own
    ``make server`` too, written by two servers at once.
    """
    from geoseg.demo import demo_parameters, describe

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call otherwise
    parameters = demo_parameters(out, src=src, **overrides)
    log.info("%s", describe(parameters))
    with _api_server():
        return pipeline_flow(**parameters)


@contextlib.contextmanager
def _api_server() -> Iterator[None]:
    """The configured Prefect API, or a temporary server for the block's duration."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        get_current_settings,
        temporary_settings,
    )

    if get_current_settings().api.url:
        yield
        return
    timeout = DEMO_SERVER_TIMEOUT_S
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in os.environ:
        timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    server = SubprocessASGIServer()
    database = tempfile.TemporaryDirectory(prefix="geoseg-demo-prefect-")
    with _prefect_info_off(), _server_database(Path(database.name) / "prefect.db"):
        server.start(timeout=timeout)  # its two-line banner ("See https://...") off
    log.info(
        "a temporary Prefect server for this run on %s (set PREFECT_API_URL to use yours)", server.address
    )
    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.api_url  # inherited by the Dask worker processes
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield
    finally:
        # The run's last log lines and events reach the server before it stops.
        APILogWorker.drain_all(timeout=DRAIN_TIMEOUT_S)
        EventsWorker.drain_all(timeout=DRAIN_TIMEOUT_S)
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before
        with _prefect_info_off():
            server.stop()
        database.cleanup()


@contextlib.contextmanager
def _server_database(path: Path) -> Iterator[None]:
    """The database of a server started in the block: ``path``, unless the user chose one."""
    names = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL")
    if any(name in os.environ for name in names):
        yield
        return
    os.environ[names[0]] = f"sqlite+aiosqlite:///{path}"
    try:
        yield
    finally:
        os.environ.pop(names[0], None)


@contextlib.contextmanager
def _prefect_info_off() -> Iterator[None]:
    """Prefect's own INFO lines (its ``prefect`` logger) off for the block, its warnings kept."""
    logger = logging.getLogger("prefect")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
