"""Flow settings and parameter validation, and the cache key's file fingerprints (no server
needed), and the one line a flow failing on a user error logs (on the test server)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from flows.settings import (
    FlowSettings,
    build_config,
    check_dask_address,
    check_input,
    check_inputs,
    check_output,
    check_sources,
    config_dict,
    default_out,
)
from flows.tasks import fingerprint, outputs_exist
from geoseg.config import IngestConfig, SegmentConfig, TrainConfig
from geoseg.errors import ConfigError, InputError
from geoseg.vectorize import vectorize
from tests.helpers import make_bundle, write_raster


def test_settings_from_environment(tmp_path: Path) -> None:
    env = {
        "GEOSEG_DASK_ADDRESS": "tcp://10.0.0.5:8786",
        "GEOSEG_WORK_ROOT": str(tmp_path / "runs"),
        "GEOSEG_ALLOWED_ROOTS": os.pathsep.join([str(tmp_path), "/data"]),
        "GEOSEG_DASK_WORKERS": "3",
    }
    s = FlowSettings.from_env(env)
    assert s.dask_address == "tcp://10.0.0.5:8786"
    assert s.allowed_roots == (tmp_path.resolve(), Path("/data"))
    assert s.cluster_kwargs()["n_workers"] == 3
    assert default_out(s, "segment", "survey_a") == (tmp_path / "runs" / "segment" / "survey_a")
    defaults = FlowSettings.from_env({})
    assert defaults.dask_address is None and defaults.allowed_roots == ()
    with pytest.raises(ConfigError, match="GEOSEG_DASK_WORKERS"):
        FlowSettings.from_env({"GEOSEG_DASK_WORKERS": "many"})
    with pytest.raises(ConfigError, match="dask_address"):
        FlowSettings.from_env({"GEOSEG_DASK_ADDRESS": "not an address"})


@pytest.mark.parametrize(
    "address", ["tcp://127.0.0.1:8786", "127.0.0.1:8786", "tls://sched.example.org:8786"]
)
def test_dask_addresses_accepted(address: str) -> None:
    assert check_dask_address(address) == address


@pytest.mark.parametrize("address", ["http://x:80/", "tcp://host", "8786", "tcp://a b:1"])
def test_dask_addresses_rejected(address: str) -> None:
    with pytest.raises(ConfigError, match="dask_address"):
        check_dask_address(address)


def test_paths_must_exist_and_stay_inside_allowed_roots(tmp_path: Path) -> None:
    inside = tmp_path / "data"
    inside.mkdir()
    (inside / "a.tif").write_bytes(b"x")
    s = FlowSettings(allowed_roots=(inside.resolve(),))
    assert check_input(inside / "a.tif", "src", s) == (inside / "a.tif").resolve()
    with pytest.raises(InputError, match=r"src not found: .*b\.tif"):
        check_input(inside / "b.tif", "src", s)
    outside = tmp_path / "elsewhere.tif"
    outside.write_bytes(b"x")
    with pytest.raises(ConfigError, match="outside the allowed roots"):
        check_input(outside, "src", s)
    # .. cannot climb out of an allowed root
    with pytest.raises(ConfigError, match="outside the allowed roots"):
        check_input(inside / ".." / "elsewhere.tif", "src", s)
    with pytest.raises(ConfigError, match="outside the allowed roots"):
        check_output(tmp_path / "out", "out", s)
    assert check_output(inside / "run", "out", s) == (inside / "run").resolve()
    with pytest.raises(ConfigError, match="not a folder"):
        check_output(inside / "a.tif", "out", s)
    # A single string is one path; an empty list is an error.
    assert check_inputs(str(inside / "a.tif"), "src", s) == [(inside / "a.tif").resolve()]
    with pytest.raises(ConfigError, match="at least one"):
        check_inputs([], "src", s)


def test_configs_from_deployment_dicts() -> None:
    cfg = build_config(IngestConfig, {"bands": [1, 2, 3], "stride": 32}, patch_size=64, dataset=None)
    assert cfg.bands == (1, 2, 3) and cfg.patch_size == 64 and cfg.stride == 32
    assert config_dict(cfg)["bands"] == [1, 2, 3]
    assert build_config(TrainConfig, None, steps=5).steps == 5
    with pytest.raises(ConfigError, match=r"unknown SegmentConfig setting\(s\) \['overlapp'\]"):
        build_config(SegmentConfig, {"overlapp": 0.5})
    with pytest.raises(ConfigError, match="overlap"):
        build_config(SegmentConfig, {"overlap": 0.95})
    with pytest.raises(ConfigError, match="patch_size"):
        build_config(IngestConfig, None, patch_size=2)


def test_fingerprints_follow_file_content_not_names(tmp_path: Path) -> None:
    a = tmp_path / "a.tif"
    a.write_bytes(b"one")
    first = fingerprint({"src": [str(a)], "k": 3})
    assert fingerprint({"src": [str(a)], "k": 3}) == first
    a.write_bytes(b"two")
    assert fingerprint({"src": [str(a)], "k": 3}) != first
    # Folders: any visible file's size or mtime; hidden entries (cache records) are ignored.
    store = tmp_path / "patches.zarr"
    (store / "images").mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    listing = fingerprint(str(store))
    (store / ".prefect-cache").mkdir()
    (store / ".prefect-cache" / "key").write_text("r")
    assert fingerprint(str(store)) == listing
    (store / "images" / "c0").write_bytes(b"chunk")
    assert fingerprint(str(store)) != listing
    # Not a path: the value itself.
    assert fingerprint("cuda") == "cuda"


def test_outputs_exist_checks_every_absolute_path(tmp_path: Path) -> None:
    (tmp_path / "a.tif").write_bytes(b"x")
    assert outputs_exist({"clusters": str(tmp_path / "a.tif"), "gpkg": None, "n": 3})
    assert not outputs_exist([str(tmp_path / "a.tif"), str(tmp_path / "gone.gpkg")])


def test_sources_expand_folders_and_keep_to_allowed_roots(shared_data: Path) -> None:
    folder = shared_data / "lausanne" / "img"
    rasters = check_sources(str(folder), FlowSettings())
    assert len(rasters) == len(list(folder.glob("*.tif"))) > 1
    assert rasters == sorted(rasters) and all(r.suffix == ".tif" for r in rasters)
    with pytest.raises(ConfigError, match="outside the allowed roots"):
        check_sources(str(folder), FlowSettings(allowed_roots=(shared_data.resolve() / "dubai",)))


def test_path_settings_of_configs_must_lie_inside_the_allowed_roots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from geoseg.config import EvaluateConfig

    root, outside = tmp_path / "root", tmp_path / "outside"
    for folder in (root, outside):
        (folder / "model").mkdir(parents=True)
        (folder / "palette.json").write_text("{}")
    monkeypatch.setenv("GEOSEG_ALLOWED_ROOTS", str(root))
    with pytest.raises(ConfigError, match=r"TrainConfig\.init_from .* outside the allowed roots"):
        build_config(TrainConfig, {"init_from": str(outside / "model")})
    with pytest.raises(ConfigError, match=r"EvaluateConfig\.palette .* outside the allowed roots"):
        build_config(EvaluateConfig, {"palette": str(root / ".." / "outside" / "palette.json")})
    with pytest.raises(InputError, match="not found"):
        build_config(TrainConfig, {"init_from": str(root / "missing")})
    inside = build_config(TrainConfig, {"init_from": str(root / "model")})
    assert inside.init_from == str((root / "model").resolve())


def test_catalog_items_cannot_point_a_flow_outside_the_allowed_roots(
    shared_data: Path, tmp_path: Path
) -> None:
    import dataclasses
    import shutil

    import pystac

    from flows.settings import check_surveys
    from geoseg.models.registry import new_surveys
    from geoseg.stac.catalog import survey_item, update_run_catalog

    root, outside = tmp_path / "r", tmp_path / "outside"
    (root / "data").mkdir(parents=True)
    outside.mkdir()
    secret = shutil.copy(shared_data / "lausanne" / "img" / "1091-322_00.tif", outside / "secret.tif")
    own = shutil.copy(shared_data / "lausanne" / "img" / "1091-322_01.tif", root / "data" / "own.tif")
    catalog = update_run_catalog(root / "catalog", [survey_item(secret), survey_item(own)])
    items = list(pystac.Catalog.from_file(str(catalog)).get_items(recursive=True))
    hrefs = {a.href for item in items for a in item.assets.values()}
    assert str(Path(secret).resolve()) in hrefs  # outside the run folder: written absolute
    # a hand-edited catalog may climb out with a relative href instead: refused alike
    (written,) = [Path(str(i.get_self_href())) for i in items if "secret" in i.assets["image"].href]
    climbing = json.loads(written.read_text())
    climbing["assets"]["image"]["href"] = os.path.relpath(Path(secret).resolve(), written.parent)
    assert climbing["assets"]["image"]["href"].startswith("../")
    settings = FlowSettings(allowed_roots=(root.resolve(),))
    for edited in (False, True):
        if edited:
            written.write_text(json.dumps(climbing))
        surveys = [
            {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(s).items()}
            for s in new_surveys(catalog, root / "registry")
        ]
        with pytest.raises(ConfigError, match=r"secret\.tif is outside the allowed roots"):
            check_surveys(surveys, settings)
        (checked,) = check_surveys([s for s in surveys if s["image"].endswith("own.tif")], settings)
        assert checked["image"] == str(Path(own).resolve())


@pytest.mark.parametrize("path", ["a\0b.tif", "x" * 100_000])
def test_odd_path_strings_are_configuration_errors(path: str) -> None:
    with pytest.raises(ConfigError, match="not a usable path"):
        check_input(path, "src", FlowSettings())


def test_a_dask_address_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ConfigError, match="dask_address"):
        check_dask_address("tcp://10.0.0.5:8786\n")


def test_every_vectorize_setting_of_a_flow_reaches_the_vectorize_task() -> None:
    import inspect

    from flows.tasks import vectorize_task
    from geoseg.config import VectorizeConfig

    config = SegmentConfig(vectorize_block=128, min_area=2.0, simplify=0.5)
    # the task takes the whole VectorizeConfig (no setting can be left at its default) ...
    assert list(inspect.signature(vectorize_task.fn).parameters) == ["clusters", "config"]
    sent = VectorizeConfig(**config_dict(config.vectorize_config()))
    assert (sent.block_size, sent.min_area, sent.simplify) == (128, 2.0, 0.5)
    # ... and vectorize applies it: a block below the bound is refused through config=
    with pytest.raises(ConfigError, match="block size"):
        vectorize("/nonexistent_clusters.tif", config=VectorizeConfig(block_size=32))


def _flow_run_logs(state) -> list:  # type: ignore[no-untyped-def]
    """The logs the API server holds for the flow run of a final state."""
    from tests.flows.conftest import flow_run_logs

    return flow_run_logs(state.state_details.flow_run_id)


def test_every_flow_logs_the_users_error_line_before_it_fails(prefect_harness: None, tmp_path: Path) -> None:
    """A failed deployment run showed only "Failed": each flow logs the line ``geoseg STAGE``
    prints (the library's message) at ERROR through the run logger, once, before failing,
    and the run's state says it too; no traceback of the user's mistake follows the line."""
    from flows.ingest import ingest_flow
    from flows.pipeline import pipeline_flow
    from flows.retrain import retrain_flow
    from flows.segment import segment_flow
    from flows.train import train_flow

    missing = tmp_path / "missing.tif"
    runs = {
        "ingest": lambda: ingest_flow(src=str(missing), out=str(tmp_path / "i"), return_state=True),
        "train": lambda: train_flow(store=str(missing), out=str(tmp_path / "t"), return_state=True),
        "segment": lambda: segment_flow(
            src=str(missing), model=str(tmp_path), out=str(tmp_path / "s"), return_state=True
        ),
        "pipeline": lambda: pipeline_flow(src=str(missing), out=str(tmp_path / "p"), return_state=True),
        "retrain": lambda: retrain_flow(
            catalog=str(missing), registry=str(tmp_path / "r"), out=str(tmp_path / "rt"), return_state=True
        ),
    }
    for flow_name, start in runs.items():
        state = start()
        assert state.is_failed(), flow_name
        what = {"train": "store", "retrain": "catalog"}.get(flow_name, "src")
        line = f"{what} not found: {missing}"
        logs = _flow_run_logs(state)
        errors = [log.message for log in logs if log.level >= 40]
        assert errors.count(line) == 1, (flow_name, errors)
        assert state.message == line, (flow_name, state.message)
        assert not [log.message for log in logs if "Traceback" in log.message], flow_name


def test_a_deployment_runs_engine_does_not_call_a_users_error_unexpected(
    prefect_harness: None, tmp_path: Path
) -> None:
    """`prefect deployment run 'segment/local' --param src=MISSING --watch` showed, after the
    flow's line, "Engine execution exited with unexpected exception": the engine of a
    deployment run (``run_flow`` with the run's logger as ``error_logger``) logs it for any
    exception. For a user error it is dropped; a bug keeps it, with its traceback."""
    import logging

    from prefect.flow_engine import run_flow

    from flows.segment import segment_flow

    class Kept(logging.Handler):  # what reaches the handlers of the run logger
        def __init__(self) -> None:
            super().__init__(logging.ERROR)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    run_logger = logging.getLogger("prefect.flow_runs")
    kept = Kept()
    run_logger.addHandler(kept)
    missing = tmp_path / "new.tif"
    try:
        with pytest.raises(InputError, match="src not found"):
            run_flow(
                segment_flow,
                parameters={"src": str(missing), "model": str(tmp_path), "out": str(tmp_path / "s")},
                error_logger=run_logger,
            )
        user_error = [r.getMessage() for r in kept.records]
        # a bug: the engine's line stays, traceback included
        kept.records.clear()
        try:
            raise ZeroDivisionError("a bug")
        except ZeroDivisionError:
            run_logger.error("Engine execution exited with unexpected exception", exc_info=True)
        bug = [(r.getMessage(), r.exc_info is not None) for r in kept.records]
    finally:
        run_logger.removeHandler(kept)
    assert user_error == [f"src not found: {missing}"], user_error
    assert bug == [("Engine execution exited with unexpected exception", True)]


def test_a_task_failing_on_a_user_error_fails_its_flow_with_the_line_logged(
    prefect_harness: None, shared_data: Path, tmp_path: Path
) -> None:
    """The error of a task on a Dask worker (a raster cut in half: its header passes the
    flow's checks, its pixels fail when the task reads them) reaches the flow and is logged
    there as the one line too; a bug is not called a user error."""
    from rasterio.windows import Window

    from flows.segment import segment_flow
    from geoseg.io.fileio import user_error_message
    from tests.helpers import crop

    model = make_bundle(tmp_path / "model", ["red", "green", "blue"], "uint8", 110.0, 50.0, 32)
    whole = crop(
        shared_data / "lausanne" / "img" / "1091-322_00.tif", tmp_path / "whole.tif", Window(0, 0, 400, 300)
    )
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    state = segment_flow(src=str(damaged), model=str(model), out=str(tmp_path / "run"), return_state=True)
    assert state.is_failed()
    exc = state.result(raise_on_failure=False)
    line = user_error_message(exc)
    assert line is not None and str(damaged) in line and "corrupt raster" in line, line
    logs = _flow_run_logs(state)
    assert any(log.task_run_id is not None for log in logs)  # the segment task did run
    assert [log.message for log in logs if log.level >= 40].count(line) == 1
    assert not [log.message for log in logs if "Traceback" in log.message]  # the task's neither
    assert user_error_message(ZeroDivisionError("a bug")) is None


def test_a_bad_model_bundle_fails_the_segment_flow_once_before_any_task(
    prefect_harness: None, shared_data: Path, tmp_path: Path
) -> None:
    """A folder that is not a model bundle, given with several rasters, is one error line of
    the flow before any segment task starts, not one failed task per raster."""
    from flows.segment import segment_flow
    from geoseg.io.fileio import user_error_message

    not_a_bundle = tmp_path / "model"
    not_a_bundle.mkdir()
    sources = [
        str(shared_data / "neon" / "OSBS_029.tif"),
        str(shared_data / "lausanne" / "img" / "1091-322_00.tif"),
    ]
    state = segment_flow(src=sources, model=str(not_a_bundle), out=str(tmp_path / "run"), return_state=True)
    assert state.is_failed()
    line = user_error_message(state.result(raise_on_failure=False))
    assert line is not None and str(not_a_bundle) in line
    logs = _flow_run_logs(state)
    assert [log.message for log in logs if log.level >= 40] == [line]
    assert [log.message for log in logs if log.task_run_id is not None] == []  # no task ran


def test_a_default_run_folder_outside_the_allowed_roots_names_out_and_the_work_root(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prefect deployment run 'segment/local'` without `out` on a worker whose
    GEOSEG_ALLOWED_ROOTS leave out its GEOSEG_WORK_ROOT said "out .../geoseg-runs/segment/X is
    outside the allowed roots", as if the user had given that path: the line now says no `out`
    was given, which default it is, and what to set."""
    from flows.segment import segment_flow

    root = tmp_path / "data"
    root.mkdir()
    src = write_raster(root / "tile.tif", np.zeros((3, 32, 32), np.uint8))
    bundle = make_bundle(root / "model", ["red", "green", "blue"], "uint8", 110.0, 50.0, 32)
    monkeypatch.setenv("GEOSEG_ALLOWED_ROOTS", str(root))
    monkeypatch.setenv("GEOSEG_WORK_ROOT", str(tmp_path / "runs"))
    state = segment_flow(src=str(src), model=str(bundle), return_state=True)
    assert state.is_failed()
    message = state.message
    assert message.startswith("no out given, and the default run folder"), message
    assert f"{(tmp_path / 'runs' / 'segment' / 'tile').resolve()}" in message
    assert f"GEOSEG_WORK_ROOT={tmp_path / 'runs'}" in message
    assert "give out=FOLDER inside them" in message
    assert [log.message for log in _flow_run_logs(state) if log.level >= 40] == [message]
    assert not (tmp_path / "runs").exists()
