"""How the flows' results are stored: as JSON, never as pickles.

Prefect persists a task's result (here: the cache records in ``<run>/.prefect-cache``) and a
failed run's exception with cloudpickle by default, and reads a record back with whatever
serializer the record itself names, so one crafted file in a run folder would be unpickled by
the next run's cache lookup. geoseg's tasks and flows return paths, numbers and dicts of them,
so they are stored as JSON (:data:`RESULT_SERIALIZER`), and the cache storage
(:class:`JSONRecords`) hands Prefect only records written that way: any other record is
treated as absent (the task runs again and writes its own) without being deserialised.

A user error (:func:`failed_without_record`) is not stored at all: its record would be
never read and would leave a run folder that holds nothing but ``.prefect-cache/``.
"""

from __future__ import annotations

import json
import logging
from pathlib import PurePath
from typing import Any

from prefect.filesystems import LocalFileSystem
from prefect.results import ResultRecord, ResultRecordMetadata
from prefect.serializers import JSONSerializer
from prefect.states import Failed, State

__all__ = ["RESULT_SERIALIZER", "JSONRecords", "failed_without_record", "json_default", "run_logger"]

log = logging.getLogger(__name__)


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The current flow or task run's logger (its lines reach the UI and ``--watch``), else this
    module's (outside a run: the worker's console only)."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return log


def json_default(value: Any) -> Any:
    """What JSON cannot hold by itself: paths as strings; an exception (the data of a failed
    run) as its type and message, one way: no record of a failure is read back as a result."""
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, BaseException):
        return {"error": type(value).__name__, "message": str(value)}
    raise TypeError(f"a flow result of type {type(value).__name__} cannot be stored as JSON")


RESULT_SERIALIZER = JSONSerializer(object_encoder=f"{__name__}.json_default", object_decoder=None)
_WRITTEN_BY = RESULT_SERIALIZER.model_dump(mode="json")


def _ours(content: bytes) -> bool:
    try:
        return json.loads(content)["metadata"]["serializer"] == _WRITTEN_BY  # type: ignore[no-any-return]
    except (ValueError, KeyError, TypeError):
        return False


class JSONRecords(LocalFileSystem):
    """A folder of result records from which only :data:`RESULT_SERIALIZER`'s are read."""

    _block_type_name = "geoseg JSON records"  # its own block type: LocalFileSystem stays Prefect's
    _block_type_slug = "geoseg-json-records"

    def _checked(self, path: str, content: bytes) -> bytes:
        if not _ours(content):
            run_logger().warning(
                "ignoring the cache record %s: it was not written as geoseg's JSON (the task runs again)",
                self._resolve_path(path),
            )
            raise ValueError(f"{path} is not a JSON result record")  # Prefect: not cached
        return content

    async def aread_path(self, path: str) -> bytes:
        return self._checked(path, await super().aread_path(path))

    def read_path(self, path: str, _sync: bool | None = None) -> bytes:  # type: ignore[override]
        # Prefect calls it with _sync=True (its sync/async dispatch); this one is always sync.
        return self._checked(path, LocalFileSystem.read_path(self, path, _sync=True))  # type: ignore[call-arg, arg-type]


def failed_without_record(message: str, exc: BaseException) -> State:
    """A Failed state carrying ``exc`` in memory only: resolving it raises ``exc``, and Prefect
    writes no record of it (it writes a returned failure's record only while the record says
    it is not yet stored)."""
    record: ResultRecord[BaseException] = ResultRecord(
        metadata=ResultRecordMetadata(serializer=RESULT_SERIALIZER, storage_key=None), result=exc
    )
    record.mark_persisted()
    return Failed(message=message, data=record)
