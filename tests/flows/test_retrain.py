"""The retrain deployment (prefect.yaml) and the retrain flow under a real Prefect run."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pystac
import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

from geoseg.io.fileio import sha256_file
from geoseg.models import registry as models
from geoseg.models.bundle import WEIGHTS, load_meta
from geoseg.synthetic import SceneFiles, generate_scene
from tests.flows.conftest import TINY_TRAIN

ROOT = Path(__file__).resolve().parents[2]


def deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def test_retrain_deployment_has_a_weekly_cron_schedule_and_valid_parameters() -> None:
    retrain = [d for d in deployments() if d["entrypoint"] == "flows/retrain.py:retrain_flow"]
    scheduled = [d for d in retrain if d.get("schedules")]
    assert scheduled, "no scheduled retrain deployment"
    for deployment in scheduled:
        for entry in deployment["schedules"]:
            schedule = CronSchedule(cron=entry["cron"], timezone=entry.get("timezone", "UTC"))
            fields = schedule.cron.split()
            assert len(fields) == 5 and fields[4] != "*", f"not weekly: {schedule.cron}"
            assert entry.get("active", True) is True
    flow = load_flow_from_entrypoint(str(ROOT / "flows" / "retrain.py") + ":retrain_flow")
    assert flow.name == "retrain"
    signature = inspect.signature(flow.fn)
    required = {n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty}
    for deployment in retrain:
        given = set(deployment.get("parameters") or {})
        assert given <= set(signature.parameters), given - set(signature.parameters)
        if deployment.get("schedules"):  # a scheduled run has nobody to supply parameters
            assert required <= given, required - given


def test_segment_gpu_deployment_follows_the_registry_that_retrain_promotes_into() -> None:
    weekly = next(
        d for d in deployments() if d["entrypoint"].startswith("flows/retrain.py") and d.get("schedules")
    )
    segment = [
        d for d in deployments() if d["entrypoint"] == "flows/segment.py:segment_flow" and d["name"] == "gpu"
    ]
    assert segment
    registry = Path(weekly["parameters"]["registry"])
    assert Path(segment[0]["parameters"]["model"]) == registry / "current"


def survey_item(scene: SceneFiles, item_id: str, created: datetime, with_labels: bool) -> pystac.Item:
    item = pystac.Item(
        id=item_id, geometry=None, bbox=None, datetime=created, properties={"created": created.isoformat()}
    )
    item.add_asset(
        "image", pystac.Asset(str(scene.image), media_type=pystac.MediaType.GEOTIFF, roles=["data"])
    )
    if with_labels:
        item.add_asset(
            "labels", pystac.Asset(str(scene.labels), media_type=pystac.MediaType.GEOTIFF, roles=["labels"])
        )
    return item


def save_catalog(root: Path, items: list[pystac.Item]) -> Path:
    catalog = pystac.Catalog(id="surveys", description="aerial surveys as they arrive")
    for item in items:
        catalog.add_item(item.clone())
    catalog.normalize_hrefs(str(root))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def test_retrain_flow_end_to_end(prefect_harness: None, tmp_path: Path) -> None:
    """First survey -> v0001 promoted; a later survey -> warm-started, aligned v0002; then nothing new."""
    from flows.retrain import retrain_flow

    first = generate_scene(tmp_path / "a", size=128, seed=5, name="survey_a")
    second = generate_scene(tmp_path / "b", size=128, seed=6, name="survey_b")
    registry = tmp_path / "models"
    items = [survey_item(first, "survey-a", datetime.now(UTC) - timedelta(days=1), with_labels=False)]
    catalog = save_catalog(tmp_path / "catalog", items)
    tiny = {"patch_size": 32, "steps": 2, "k": 4, "train": TINY_TRAIN, "evaluate": {"dataset": "synthetic"}}

    one = retrain_flow(catalog=str(catalog), registry=str(registry), out=str(tmp_path / "run1"), **tiny)
    assert one["surveys"] == ["survey-a"] and one["previous"] is None and one["alignment"] is None
    assert one["version"] == "v0001" and one["promoted"]
    assert models.current_model(registry) == registry / "v0001"
    first_decision = models.load_state(registry).get("v0001").decision
    assert first_decision is not None and first_decision["checks"]["balance"]["passed"] is True  # measured

    items.append(survey_item(second, "survey-b", datetime.now(UTC) + timedelta(seconds=1), with_labels=True))
    catalog = save_catalog(tmp_path / "catalog", items)
    two = retrain_flow(catalog=str(catalog), registry=str(registry), out=str(tmp_path / "run2"), **tiny)
    assert two["surveys"] == ["survey-b"]
    assert two["version"] == "v0002" and Path(two["previous"]) == (registry / "v0001").resolve()
    trained, aligned = load_meta(tmp_path / "run2" / "model"), load_meta(registry / "v0002")
    assert trained.provenance["init_from"] == str((registry / "v0001").resolve())  # warm start
    assert aligned.alignment is not None
    assert aligned.alignment["previous"]["weights_sha256"] == sha256_file(registry / "v0001" / WEIGHTS)
    assert [c.colour for c in aligned.clusters] == [c.colour for c in load_meta(registry / "v0001").clusters]
    assert Path(two["report"]).is_file()  # survey-b has labels: evaluated
    state = models.load_state(registry)
    decision = state.get("v0002").decision
    assert decision is not None and decision["promote"] == two["promoted"]
    assert state.current == ("v0002" if two["promoted"] else "v0001")
    assert state.get("v0002").status == ("promoted" if two["promoted"] else "rejected")

    three = retrain_flow(catalog=str(catalog), registry=str(registry), out=str(tmp_path / "run3"), **tiny)
    assert three["surveys"] == [] and three["version"] is None


def test_a_user_error_in_a_retrain_task_fails_the_flow_with_its_line(
    prefect_harness: None, tmp_path: Path
) -> None:
    """find-surveys (and align, register) run in the flow itself: their user errors (a `since`
    that is no ISO time, a corrupt catalog) fail the run with the error's one line, logged
    once and without a traceback, not with a TypeError on the task's Failed state taken for
    its result (`cannot convert dictionary update sequence element`)."""
    from flows.retrain import retrain_flow
    from geoseg.io.fileio import user_error_message
    from tests.flows.conftest import flow_run_logs

    good = save_catalog(tmp_path / "cat", [])
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"type": "Catalog", "id"')
    for catalog, since, expected in (
        (good, "yesterday", "since must be an ISO 8601"),
        (corrupt, None, "unreadable STAC catalog"),
    ):
        state = retrain_flow(
            catalog=str(catalog), registry=str(tmp_path / "models"), since=since, return_state=True
        )
        assert state.is_failed()
        line = user_error_message(state.result(raise_on_failure=False))
        assert line is not None and expected in line, line
        logs = flow_run_logs(state.state_details.flow_run_id)
        flow_errors = [log.message for log in logs if log.level >= 40 and log.task_run_id is None]
        assert flow_errors == [line]
        assert not [log.message for log in logs if "Traceback" in log.message]


def test_retrain_without_out_outside_the_allowed_roots_names_out_and_the_work_root(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`retrain/local` without `out` on a worker whose GEOSEG_ALLOWED_ROOTS leave out its
    GEOSEG_WORK_ROOT said "out .../retrain/<day> is outside the allowed roots", as if the user
    had given that path; now the line the other flows give: no out, which default, what to set."""
    from flows.retrain import retrain_flow

    root = tmp_path / "data"
    survey = generate_scene(root / "a", size=128, seed=5, name="survey_a")
    items = [survey_item(survey, "survey-a", datetime.now(UTC) - timedelta(days=1), with_labels=False)]
    catalog = save_catalog(root / "catalog", items)
    monkeypatch.setenv("GEOSEG_ALLOWED_ROOTS", str(root))
    monkeypatch.setenv("GEOSEG_WORK_ROOT", str(tmp_path / "runs"))
    state = retrain_flow(catalog=str(catalog), registry=str(root / "models"), return_state=True)
    assert state.is_failed()
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    assert state.message.startswith("no out given, and the default run folder"), state.message
    assert f"$GEOSEG_WORK_ROOT/retrain/{day}" in state.message and "give out=FOLDER" in state.message
    assert not (tmp_path / "runs").exists()


def test_a_registry_on_a_read_only_file_system_is_refused_before_ingest_and_training(
    prefect_harness: None, tmp_path: Path, small_fs
) -> None:
    """`retrain/local --param registry=RO/models` (a folder on a read-only mount) ingested the
    surveys and trained the model (minutes on a CPU, hours of a GPU worker) and only then
    failed at registration with "cannot write in RO": now the run fails with that line
    before the run folder is made, and the registry stays as it was."""
    from flows.retrain import retrain_flow
    from tests.conftest import remount_read_only
    from tests.helpers import make_spread_bundle

    survey = generate_scene(tmp_path / "a", size=128, seed=5, name="survey_a")
    items = [survey_item(survey, "survey-a", datetime.now(UTC) + timedelta(seconds=1), with_labels=False)]
    catalog = save_catalog(tmp_path / "catalog", items)
    fs = small_fs("4m")
    existing = fs / "models"
    models.promote(existing, models.register(make_spread_bundle(tmp_path / "bundle"), existing).version)
    before = (existing / models.STATE).read_bytes()
    remount_read_only(fs)
    tiny = {"patch_size": 32, "steps": 2, "k": 4, "train": TINY_TRAIN}
    for registry in (fs / "new-models", existing):
        run = tmp_path / f"run-{registry.name}"
        state = retrain_flow(
            catalog=str(catalog), registry=str(registry), out=str(run), return_state=True, **tiny
        )
        assert state.is_failed()
        where = fs if registry == fs / "new-models" else existing
        assert state.message == (
            f"cannot write in {where}: Read-only file system: fix its permissions or choose another output"
        ), state.message
        assert not run.exists()  # nothing ingested, nothing trained
    assert (existing / models.STATE).read_bytes() == before


def test_a_retrain_ingests_at_the_promoted_models_patch_size_unless_told(
    prefect_harness: None, tmp_path: Path
) -> None:
    """A pipeline run on small tiles needs `patch_size=64`; the README's retrain command, which
    gives none, then failed on every later survey: "... smaller than one 128x128 patch". The
    retrain now ingests at the promoted model's patch size (k was already inherited)."""
    from flows.retrain import retrain_flow
    from geoseg.io.store import open_store

    first = generate_scene(tmp_path / "a", size=128, seed=5, name="survey_a")
    small = generate_scene(tmp_path / "b", size=64, seed=6, name="survey_b")  # < the default 128
    registry = tmp_path / "models"
    items = [survey_item(first, "survey-a", datetime.now(UTC) - timedelta(days=1), with_labels=False)]
    catalog = save_catalog(tmp_path / "catalog", items)
    tiny = {"steps": 2, "k": 4, "train": TINY_TRAIN}
    one = retrain_flow(
        catalog=str(catalog), registry=str(registry), out=str(tmp_path / "run1"), patch_size=32, **tiny
    )
    assert one["version"] == "v0001" and one["promoted"]
    items.append(survey_item(small, "survey-b", datetime.now(UTC) + timedelta(seconds=1), with_labels=False))
    catalog = save_catalog(tmp_path / "catalog", items)
    two = retrain_flow(catalog=str(catalog), registry=str(registry), out=str(tmp_path / "run2"), **tiny)
    assert two["surveys"] == ["survey-b"] and two["version"] == "v0002"
    assert open_store(two["store"]).meta.patch_size == 32
