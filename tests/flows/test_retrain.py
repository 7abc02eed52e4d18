"""The retrain deployment (prefect.yaml) and the retrain flow under a real Prefect run."""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

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
