"""Settings of the flows and validation of the parameters that arrive from deployments.

Deployment parameters come from outside (the Prefect UI, ``prefect deployment run
--param``, automations), so every flow checks them before any work starts and fails
with one clear ConfigError/InputError: input paths must exist, every path must lie inside
the allowed roots when those are set, numbers must be in range (the stage configs'
``validate()``), and a Dask address must look like one.

Environment variables (read when a flow starts, so a worker's environment decides):

- ``GEOSEG_DASK_ADDRESS``: join this Dask scheduler instead of starting a LocalCluster
  (a flow's ``dask_address`` parameter takes precedence).
- ``GEOSEG_WORK_ROOT``: where runs without an explicit ``out`` write (default
  ``./geoseg-runs``).
- ``GEOSEG_ALLOWED_ROOTS``: ``os.pathsep``-separated folders; when set, every input and
  output path of a flow must lie inside one of them (a production worker should set it).
- ``GEOSEG_DASK_WORKERS`` / ``GEOSEG_DASK_THREADS``: size of the default LocalCluster.

Every flow is decorated with :func:`logs_user_errors` (under ``@flow``): a run that fails
on an error the user can fix logs its one line, the one ``geoseg STAGE`` prints, through
the run's logger and fails with that line as its state message, so the Prefect UI and
``prefect deployment run ... --watch`` show why, not only "Failed", and no traceback of the
user's mistake follows it; tasks take :func:`quiet_user_errors` (the flow logs the line).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

from prefect import get_run_logger

from flows.results import failed_without_record
from geoseg.errors import ConfigError, InputError
from geoseg.io.fileio import user_error_message

C = TypeVar("C")
P = ParamSpec("P")
R = TypeVar("R")
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux
_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://[\w.\-\[\]:]+:\d+$|^[\w.\-]+:\d+$")


@dataclass(frozen=True)
class FlowSettings:
    """Where flows write and which Dask cluster they use."""

    dask_address: str | None = None
    work_root: Path = Path("geoseg-runs")
    allowed_roots: tuple[Path, ...] = ()
    dask_workers: int = 1
    dask_threads: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FlowSettings:
        env = os.environ if environ is None else environ
        roots = tuple(Path(p).resolve() for p in env.get("GEOSEG_ALLOWED_ROOTS", "").split(os.pathsep) if p)
        settings = cls(
            dask_address=env.get("GEOSEG_DASK_ADDRESS") or None,
            work_root=Path(env.get("GEOSEG_WORK_ROOT", "geoseg-runs")),
            allowed_roots=roots,
            dask_workers=_int(env, "GEOSEG_DASK_WORKERS", 1),
            dask_threads=_int(env, "GEOSEG_DASK_THREADS", 2),
        )
        if not 1 <= settings.dask_workers <= 256 or not 1 <= settings.dask_threads <= 256:
            raise ConfigError("GEOSEG_DASK_WORKERS and GEOSEG_DASK_THREADS must be in [1, 256]")
        check_dask_address(settings.dask_address)
        return settings

    def cluster_kwargs(self) -> dict[str, Any]:
        """LocalCluster arguments: worker processes, a random dashboard port (never a clash)."""
        return {
            "n_workers": self.dask_workers,
            "threads_per_worker": self.dask_threads,
            "processes": True,
            "dashboard_address": ":0",
        }


def logs_user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """The flow function, logging a user error's one line (:func:`geoseg.io.fileio.user_error_message`)
    at ERROR through the run logger and failing the run with that line as its state message;
    a bug is left to Prefect's traceback. Goes between ``@flow`` and the function (signature
    and docstring kept)."""
    return _fails_on_user_errors(fn, log_line=True)


def quiet_user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """The task function, failing its run on a user error with the one line as the state
    message and no traceback; the flow that resolves it logs the line (once). Goes between
    ``@task`` and the function."""
    return _fails_on_user_errors(fn, log_line=False)


def _fails_on_user_errors(fn: Callable[P, R], log_line: bool) -> Callable[P, R]:
    # A returned Failed state instead of a raised exception: Prefect logs no traceback of
    # the user's mistake after its line (`prefect deployment run ... --watch` showed one), and
    # calling the flow or resolving the task still raises the exception (the state's data).
    @functools.wraps(fn)
    def body(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            message = user_error_message(exc)
            if message is None:
                raise
            if log_line:
                get_run_logger().error("%s", message)
            return cast(R, failed_without_record(message, exc))

    return body


# What the engine of a deployment run logs (at ERROR) after a flow run that raised, whatever
# the exception: for a user error, whose line the flow logged already, it is not true.
_ENGINE_EXIT_LINE = "Engine execution exited with unexpected exception"


class _UserErrorsWithoutTraceback(logging.Filter):
    """Drops the traceback from Prefect's run-logger records of a user error: the engine of a
    deployment run logs the exception of a failed run once more, traceback included, after
    the flow's one line (:func:`logs_user_errors`), under "Engine execution exited with
    unexpected exception", a record dropped for a user error; a bug keeps both."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and user_error_message(exc) is not None:
            if record.getMessage() == _ENGINE_EXIT_LINE:
                return False
            record.exc_info, record.exc_text = None, None
        return True


def hide_user_error_tracebacks() -> None:
    """Install :class:`_UserErrorsWithoutTraceback` on Prefect's flow- and task-run loggers
    (once per process: this module's import does it, in the flow run and on Dask workers)."""
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _UserErrorsWithoutTraceback) for f in logger.filters):
            logger.addFilter(_UserErrorsWithoutTraceback())


hide_user_error_tracebacks()


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {env.get(name)!r}") from None


def check_dask_address(address: str | None) -> str | None:
    """None, or a scheduler address such as ``tcp://10.0.0.5:8786``."""
    if address is None or address == "":
        return None
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address):  # no trailing newline
        raise ConfigError(f"dask_address must look like tcp://HOST:PORT, got {address!r}")
    return address


def _inside(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _allowed_path(path: str | Path, what: str, settings: FlowSettings) -> Path:
    """The absolute path, refused when empty or outside the allowed roots."""
    if not path:
        raise ConfigError(f"{what}: empty path")
    text = str(path)
    if "\0" in text or len(text) > MAX_PATH_CHARS:
        raise ConfigError(
            f"{what}: not a usable path ({len(text)} characters{', a NUL byte' if chr(0) in text else ''})"
        )
    try:
        resolved = Path(path).expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"{what} {text[:200]!r} cannot be resolved: {exc}") from None
    if settings.allowed_roots and not _inside(resolved, settings.allowed_roots):
        raise ConfigError(
            f"{what} {path} is outside the allowed roots {[str(r) for r in settings.allowed_roots]}"
        )
    return resolved


def check_input(path: str | Path, what: str, settings: FlowSettings) -> Path:
    """An existing input file or folder (absolute), inside the allowed roots."""
    resolved = _allowed_path(path, what, settings)
    if not resolved.exists():
        raise InputError(f"{what} not found: {path}")
    return resolved


def check_inputs(paths: str | Path | Iterable[str | Path], what: str, settings: FlowSettings) -> list[Path]:
    """One or more inputs (a single string is one path, not a list of characters)."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    if not items:
        raise ConfigError(f"{what}: give at least one path")
    return [check_input(p, what, settings) for p in items]


def check_sources(paths: str | Path | Iterable[str | Path], settings: FlowSettings) -> list[Path]:
    """Survey rasters: files, folders of rasters or STAC JSON, expanded to raster files.

    Every raster, including those a STAC item points to and the files a VRT mosaic reads,
    must pass :func:`check_input`.
    """
    from geoseg.io.sources import discover_sources
    from geoseg.io.vrt import vrt_members

    rasters = discover_sources(check_inputs(paths, "src", settings), check_stac_hrefs=False)
    for raster in rasters:
        for member in vrt_members(raster):
            check_input(member, f"file read by {raster}:", settings)
    return [check_input(r, "src raster", settings) for r in rasters]


def check_output(path: str | Path, what: str, settings: FlowSettings) -> Path:
    """An output location (absolute) inside the allowed roots; it need not exist yet."""
    resolved = _allowed_path(path, what, settings)
    if resolved.exists() and not resolved.is_dir():
        raise ConfigError(f"{what} {path} exists and is not a folder")
    return resolved


def default_out(settings: FlowSettings, flow: str, name: str) -> Path:
    """A stable run folder of a flow, ``$GEOSEG_WORK_ROOT/<flow>/<name>`` (name: the first
    source's stem; retrain: the day): re-running writes (and caches) in the same place."""
    return (settings.work_root / flow / name).resolve()


def run_folder(out: str | Path | None, settings: FlowSettings, flow: str, name: str) -> Path:
    """The run folder: ``out`` (checked by :func:`check_output`), else :func:`default_out`; a
    default outside the allowed roots is refused naming what the user can change (``out``,
    ``GEOSEG_WORK_ROOT``), not as if they had given that path."""
    if out:
        return check_output(out, "out", settings)
    path = default_out(settings, flow, name)
    if settings.allowed_roots and not _inside(path, settings.allowed_roots):
        raise ConfigError(
            f"no out given, and the default run folder {path} ($GEOSEG_WORK_ROOT/{flow}/{name},"
            f" GEOSEG_WORK_ROOT={settings.work_root}) is outside the allowed roots"
            f" {[str(r) for r in settings.allowed_roots]}: give out=FOLDER inside them, or set the"
            " worker's GEOSEG_WORK_ROOT inside them"
        )
    return check_output(path, "out", settings)


def build_config(cls: type[C], overrides: Mapping[str, Any] | None, **fixed: Any) -> C:
    """A stage config from a deployment's dict of overrides: unknown keys and bad values fail early.

    Lists become tuples (JSON has no tuples); ``fixed`` wins over ``overrides``.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = dict(overrides or {})
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} setting(s) {unknown}; known: {sorted(names)}")
    values.update({k: v for k, v in fixed.items() if v is not None})
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        config = cls(**values)
    except TypeError as exc:
        raise ConfigError(f"bad {cls.__name__}: {exc}") from None
    config = config.validate()  # type: ignore[attr-defined]
    return check_config_paths(config, FlowSettings.from_env())


def check_config_paths(config: C, settings: FlowSettings) -> C:
    """Every setting that is a path (``init_from``, ``palette``, ...) exists inside the allowed
    roots; it is replaced by its absolute form, so tasks and caches see what was checked."""
    from geoseg.config import path_fields

    checked = {
        name: str(check_input(getattr(config, name), f"{type(config).__name__}.{name}", settings))
        for name in path_fields(config)
        if getattr(config, name) is not None
    }
    return dataclasses.replace(config, **checked) if checked else config  # type: ignore[type-var]


def check_surveys(surveys: Iterable[Mapping[str, Any]], settings: FlowSettings) -> list[dict[str, Any]]:
    """Catalog surveys whose image and label (hrefs already resolved against the catalog)
    exist inside the allowed roots: an item cannot point a flow outside them."""
    checked = []
    for survey in surveys:
        item = dict(survey)
        what = f"survey {item.get('item_id')}"
        item["image"] = str(check_input(item["image"], f"{what} image", settings))
        if item.get("label"):
            item["label"] = str(check_input(item["label"], f"{what} label", settings))
        checked.append(item)
    return checked


def config_dict(config: Any) -> dict[str, Any]:
    """A config as a JSON-able dict: what tasks receive (and hash for caching)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
