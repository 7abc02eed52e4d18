"""The flows store their results as JSON: no cache record is ever unpickled, and a user error
writes no record (so a run that fails on one leaves no folder behind)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from prefect.results import ResultRecord, ResultRecordMetadata
from prefect.serializers import PickleSerializer
from rasterio.transform import from_origin

from flows.results import RESULT_SERIALIZER
from flows.tasks import CACHE_DIR
from geoseg.errors import InputError
from tests.flows.conftest import ingested_copy
from tests.test_segment import make_bundle


class TouchesWhenUnpickled:
    """A payload that, if anyone unpickles it, creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def records(run: Path) -> list[Path]:
    return sorted(p for p in (run / CACHE_DIR).iterdir() if p.is_file())


def test_cache_records_are_json_and_a_pickled_record_is_never_loaded(
    prefect_harness: None, small_scene, tmp_path: Path
) -> None:
    from flows.ingest import ingest_flow

    src, run, store = ingested_copy(small_scene, tmp_path)
    written = records(run)
    assert written
    for path in written:
        record = json.loads(path.read_bytes())
        assert record["metadata"]["serializer"] == RESULT_SERIALIZER.model_dump(mode="json")
        assert json.loads(record["result"]) == str(store)  # the task's result, as plain JSON

    # Someone with write access to the run folder swaps the records for pickles.
    marker = tmp_path / "unpickled"
    for path in written:
        metadata = ResultRecordMetadata(serializer=PickleSerializer(), storage_key=str(path))
        path.write_bytes(ResultRecord(metadata=metadata, result=TouchesWhenUnpickled(marker)).serialize())
    assert ingest_flow(src=str(src), out=str(run), patch_size=32) == store
    assert not marker.exists()
    # Taken as absent, not as cached: ingest ran again and wrote its own record in its place.
    assert records(run) == written
    for path in written:
        assert json.loads(path.read_bytes())["metadata"]["serializer"] == RESULT_SERIALIZER.model_dump(
            mode="json"
        )


def test_a_flow_failed_on_a_user_error_leaves_no_run_folder(prefect_harness: None, tmp_path: Path) -> None:
    from flows.segment import segment_flow

    model = make_bundle(tmp_path / "model", ["red", "green", "blue"], "uint8", 110.0, 50.0, 32)
    one_band = tmp_path / "one_band.tif"
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 1, "dtype": "uint8"}
    with rasterio.open(one_band, "w", **profile, crs="EPSG:32633", transform=from_origin(0, 64, 1, 1)) as dst:
        dst.write(np.zeros((1, 64, 64), "uint8"))
    run = tmp_path / "runs" / "segment"
    with pytest.raises(InputError, match="has 1 band"):
        segment_flow(src=str(one_band), model=str(model), out=str(run), vectorize=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "one_band.tif"]


def test_an_ignored_record_and_a_deleted_output_are_warned_in_the_runs_log(
    prefect_harness: None, small_scene, tmp_path: Path
) -> None:
    """The one warning of an ignored (pickled) cache record, and that of a cached step whose
    output was deleted, went to the worker's console only: `--watch` and the UI never showed
    why a step ran again. Both are now lines of the run's own log."""
    import shutil

    from flows.ingest import ingest_flow
    from tests.flows.conftest import flow_run_logs

    src, run, store = ingested_copy(small_scene, tmp_path)
    (record,) = records(run)
    metadata = ResultRecordMetadata(serializer=PickleSerializer(), storage_key=str(record))
    record.write_bytes(ResultRecord(metadata=metadata, result=str(store)).serialize())
    state = ingest_flow(src=str(src), out=str(run), patch_size=32, return_state=True)
    warnings = [log.message for log in flow_run_logs(state.state_details.flow_run_id) if log.level == 30]
    assert [w for w in warnings if w.startswith(f"ignoring the cache record {record}")], warnings

    shutil.rmtree(store)
    state = ingest_flow(src=str(src), out=str(run), patch_size=32, return_state=True)
    assert state.is_completed() and Path(store).is_dir()
    warnings = [log.message for log in flow_run_logs(state.state_details.flow_run_id) if log.level == 30]
    assert "ingest: cached outputs were removed; running it again" in warnings, warnings
