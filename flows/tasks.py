"""Thin Prefect tasks: each calls one geoseg entry point with paths and returns paths.

Caching: a task's cache key is the hash of its parameters (``INPUTS``), its source code
(``TASK_SOURCE``) and :class:`FileFingerprints` (the content of the input files it
reads, plus the geoseg version). Re-running a flow on the same survey with the same
parameters therefore skips finished work, and changing a source raster, a model or the
code re-runs exactly what depends on it. The cache records live in the run's own folder
(``<out>/.prefect-cache``, see :func:`cached`), so they travel and disappear with the
outputs they describe; a flow also re-runs a cached task whose outputs were deleted
(:func:`run_cached`).

Retries: tasks that read and write files retry on transient failures (OSError and the
like), never on :class:`geoseg.errors.GeosegError`: bad input stays bad, and the user
should see its message at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import Task, get_run_logger, task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.utilities.hashing import hash_objects

from flows.results import RESULT_SERIALIZER, JSONRecords, run_logger
from flows.runner import library_dask
from flows.settings import quiet_user_errors
from geoseg import __version__
from geoseg.errors import GeosegError
from geoseg.io.fileio import sha256_file

log = logging.getLogger(__name__)

CACHE_DIR = ".prefect-cache"
OUTPUT_PARAMETERS = ("out", "out_dir", "out_gpkg", "out_catalog")  # written, not read: not in the key
_SHA_MEMO: dict[tuple[str, int, int, int], str] = {}


# --- caching -------------------------------------------------------------------------------


def fingerprint(value: Any) -> Any:
    """What a parameter's files contain: sha256 for files, a (path, size, mtime) listing for folders.

    Folders (zarr stores, model bundles) are listed rather than hashed: a store holds
    thousands of chunks, and the stages write them atomically, so size + mtime changes
    whenever the content does. Hidden entries (``.prefect-cache``, temporaries) are skipped.
    Strings that are not existing paths fingerprint as themselves.
    """
    if isinstance(value, Mapping):
        return {str(k): fingerprint(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [fingerprint(v) for v in value]
    if isinstance(value, str | os.PathLike) and str(value) and len(str(value)) < 4096:
        path = Path(value)
        try:
            if path.is_file():
                return ["file", _sha256(path)]
            if path.is_dir():
                return ["dir", _listing(path)]
        except OSError:
            return str(value)
    return value if isinstance(value, int | float | bool | type(None)) else str(value)


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _SHA_MEMO:
        _SHA_MEMO[key] = sha256_file(path)
    return _SHA_MEMO[key]


def _listing(folder: Path) -> list[tuple[str, int, int]]:
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(f for f in files if not f.startswith(".")):
            p = Path(root) / name
            stat = p.stat()
            entries.append((str(p.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return entries


@dataclass
class FileFingerprints(CachePolicy):
    """Cache key part: the content of the files a task reads (not of those it writes)."""

    outputs: tuple[str, ...] = OUTPUT_PARAMETERS

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        prints = {k: fingerprint(v) for k, v in sorted(inputs.items()) if k not in self.outputs}
        return hash_objects(prints, __version__, raise_on_failure=True)


CACHE_POLICY = INPUTS + TASK_SOURCE + FileFingerprints()


def cached(task_: Task, run_dir: str | Path, refresh: bool = False) -> Task:
    """The task with its cache records kept in ``run_dir/.prefect-cache``."""
    with_cache = task_.with_options(
        result_serializer=RESULT_SERIALIZER, persist_result=True, refresh_cache=refresh
    )
    # Set after construction: Task() accepts a storage object only once saved on the server
    # (one block per run folder would be), although it builds the same unsaved kind from a Path.
    with_cache.result_storage = JSONRecords(basepath=str(Path(run_dir).resolve() / CACHE_DIR))
    return with_cache


def _paths_in(value: Any) -> list[Path]:
    if isinstance(value, Mapping):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list | tuple):
        return [p for v in value for p in _paths_in(v)]
    if isinstance(value, str) and value.startswith("/"):
        return [Path(value)]
    return []


def outputs_exist(result: Any) -> bool:
    """Whether every absolute path in a task's result still exists as a published output
    (a file of an output set whose publication did not finish is not a result)."""
    from geoseg.errors import InputError
    from geoseg.io.fileio import require_published

    try:
        for path in _paths_in(result):
            require_published(path)
    except InputError:
        return False
    return all(p.exists() for p in _paths_in(result))


def submit(task_: Task, run_dir: str | Path, **parameters: Any) -> PrefectFuture:
    """Submit a task to the flow's task runner (Dask) with run-local caching."""
    return cached(task_, run_dir).submit(**parameters)


def call(task_: Task, **parameters: Any) -> Any:
    """Run a task in the flow (not on Dask, not cached) and return its result; a failed task
    raises its exception here, as :func:`resolve` does. Calling the task itself would return
    the Failed state of a user error (:func:`flows.settings.quiet_user_errors`) as if it were
    the result, and the flow would fail on that object instead of with the error's line."""
    return task_(**parameters, return_state=True).result()


def resolve(future: PrefectFuture, task_: Task, run_dir: str | Path, **parameters: Any) -> tuple[Any, str]:
    """A submitted task's result and final state name ("Completed", "Cached").

    A cached result whose files were deleted since is computed again (cache refreshed).
    A failed task raises its exception here, which fails the flow with its message.
    """
    future.wait()
    state = future.state
    if not state.is_final():
        _raise_never_ran(future, task_)
    result = state.result()
    if state.name == "Cached" and not outputs_exist(result):
        run_logger().warning("%s: cached outputs were removed; running it again", task_.name)
        again = cached(task_, run_dir, refresh=True).submit(**parameters)
        again.wait()
        state = again.state
        result = state.result()
    return result, str(state.name)


def _raise_never_ran(future: PrefectFuture, task_: Task) -> None:
    """A task whose Dask future ended without the task ever running (its state still
    Pending): the scheduler could not load it, typically a scheduler or workers of another
    environment, or started before geoseg was updated. Prefect's own error says only
    "UnfinishedRun: Run is in PENDING state"; this names the task and what to do."""
    from geoseg.errors import ConfigError

    wrapped = getattr(future, "wrapped_future", None)
    reason = None
    if wrapped is not None and getattr(wrapped, "status", None) == "error":
        exc = wrapped.exception()
        reason = " ".join(str(exc).split()) if exc is not None else None
    raise ConfigError(
        f"{task_.name} never ran on the Dask cluster"
        + (f" ({reason})" if reason else "")
        + ": start the Dask scheduler and workers from the same geoseg installation as the"
        " flow, and restart them after updating geoseg"
    )


def run(task_: Task, run_dir: str | Path, **parameters: Any) -> tuple[Any, str]:
    """Submit and resolve one task."""
    return resolve(submit(task_, run_dir, **parameters), task_, run_dir, **parameters)


def not_user_error(task_: Task, task_run: Any, state: State) -> bool:
    """Retry condition: transient failures retry, bad input/parameters do not."""
    try:
        state.result()
    except GeosegError:
        return False
    except Exception:
        return True
    return True


# The retry policies, one per kind of task: reading/writing files retries twice (a
# transient I/O or network error), heavy compute once; a user error never retries.
_IO: dict[str, Any] = {"retries": 2, "retry_delay_seconds": 5, "retry_condition_fn": not_user_error}
_COMPUTE: dict[str, Any] = {"retries": 1, "retry_condition_fn": not_user_error}


def _as_paths(obj: Any) -> Any:
    """A library result (dataclass of paths) as JSON-able strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {k: _as_paths(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_as_paths(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


# --- tasks ---------------------------------------------------------------------------------


@task(name="ingest", cache_policy=CACHE_POLICY, **_IO)
@quiet_user_errors
def ingest_task(
    sources: list[str],
    out: str,
    config: dict[str, Any],
    labels: list[str] | None = None,
    out_catalog: str | None = None,
) -> str:
    """Cut the survey into a zarr patch store on the flow's Dask cluster; its survey items
    go into the run catalog ``out_catalog`` (one catalog per run folder, no ``<store>.stac/``)."""
    from geoseg.config import IngestConfig
    from geoseg.ingest import ingest

    values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    cfg = IngestConfig(**values)
    with library_dask() as address:
        store = ingest(
            sources,
            out,
            cfg,
            labels=labels,
            dask_address=address,
            progress=get_run_logger(),
            catalog=out_catalog,
        )
    return str(store)


@task(name="train", cache_policy=CACHE_POLICY, **_COMPUTE)
@quiet_user_errors
def train_task(stores: list[str], out: str, config: dict[str, Any]) -> str:
    """Train IIC; the device is declared in the log and in model.json: GPU when present."""
    from geoseg.config import TrainConfig
    from geoseg.inference import resolve_device
    from geoseg.train import train

    cfg = TrainConfig(**config)
    device = resolve_device(cfg.device)
    logger = get_run_logger()
    logger.info("training on %s (requested %s)", device, cfg.device)
    cfg = dataclasses.replace(cfg, device="cuda" if device.type == "cuda" else "cpu")
    return str(train(stores, out, cfg, progress=logger))  # step, losses, ETA every 25 s


@task(name="segment", cache_policy=CACHE_POLICY, **_IO)
@quiet_user_errors
def segment_task(model: str, source: str, out_dir: str, config: dict[str, Any]) -> dict[str, Any]:
    """Cluster and confidence COGs (+ QML, preview) of one source raster; a raster taller than
    ``band_rows`` is segmented in row bands on the flow's Dask cluster."""
    from geoseg.config import SegmentConfig
    from geoseg.segment import segment

    cfg = SegmentConfig(**{**config, "vectorize": False})
    with library_dask() as address:
        (result,) = segment(model, [source], out_dir, cfg, progress=get_run_logger(), dask_address=address)
    return _as_paths(result)  # source, clusters, confidence, *_qml, preview_png, stac_item


@task(name="vectorize", cache_policy=CACHE_POLICY, **_IO)
@quiet_user_errors
def vectorize_task(clusters: str, config: dict[str, Any]) -> str:
    """Polygons of a cluster COG (``<stem>_polygons.gpkg`` beside it, the cluster names the COG
    carries), with every setting of a :class:`~geoseg.config.VectorizeConfig`, block-parallel
    on the flow's Dask cluster."""
    from geoseg.config import VectorizeConfig
    from geoseg.vectorize import vectorize

    cfg = VectorizeConfig(**config).validate()
    with library_dask() as address:
        return str(vectorize(clusters, config=cfg, dask_address=address))


@task(name="evaluate", cache_policy=CACHE_POLICY, **_IO)
@quiet_user_errors
def evaluate_task(
    predictions: list[str],
    labels: list[str],
    out_dir: str,
    config: dict[str, Any],
    images: list[str] | None = None,
) -> str:
    """Score cluster maps against ground truth; returns report.json."""
    from geoseg.config import EvaluateConfig
    from geoseg.evaluate import evaluate

    evaluate(predictions, labels, out_dir, EvaluateConfig(**config), images=images, progress=get_run_logger())
    return str(Path(out_dir) / "report.json")


# --- the retrain's tasks: they read and change the registry's state, so they are not cached
# across runs by content (Prefect's default: within one flow run)


@task(name="find-surveys", **_IO)
@quiet_user_errors
def find_surveys_task(catalog: str, registry: str, since: str | None = None) -> list[dict[str, Any]]:
    """Survey items added since the promoted model (paths as strings)."""
    from geoseg.models.registry import new_surveys

    return [_as_paths(s) for s in new_surveys(catalog, registry, since)]


@task(name="align", **_COMPUTE)
@quiet_user_errors
def align_task(
    model: str, previous: str, reference: list[str], out: str, config: dict[str, Any]
) -> dict[str, Any]:
    """Carry the previous model's cluster ids over to the new one; returns the alignment figures."""
    from geoseg.config import AlignConfig
    from geoseg.models.align import align_clusters

    result = align_clusters(
        model, previous, reference, out_dir=out, config=AlignConfig(**config), progress=get_run_logger()
    )
    return dataclasses.asdict(result)


@task(name="register-and-promote", **_COMPUTE)
@quiet_user_errors
def register_task(
    bundle: str, registry: str, previous: str | None, config: dict[str, Any], reference: list[str]
) -> dict[str, Any]:
    """Register the bundle as a version; promote it only if the label-free check passes."""
    from geoseg.config import PromotionConfig
    from geoseg.models.policy import register_and_promote

    entry, decision = register_and_promote(bundle, registry, previous, PromotionConfig(**config), reference)
    return {"version": entry.version, "promoted": decision.promote, "decision": dataclasses.asdict(decision)}
