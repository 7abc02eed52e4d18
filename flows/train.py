"""The ``train`` flow: patch store(s) -> a model bundle (+ a model item in the run's STAC catalog)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.runner import flow_options, package_flow
from flows.settings import (
    FlowSettings,
    build_config,
    check_dask_address,
    check_inputs,
    config_dict,
    logs_user_errors,
    run_folder,
)
from flows.tasks import run, train_task
from geoseg.config import TrainConfig

MODEL = "model"
CATALOG = "catalog"


def train_step(stores: list[Path], run_dir: Path, config: TrainConfig) -> tuple[Path, str]:
    """Run the training task (cached) and record the model, linked to its stores' surveys."""
    from geoseg.stac import catalog as run_catalog

    bundle, state = run(
        train_task,
        run_dir,
        stores=[str(s) for s in stores],
        out=str(run_dir / MODEL),
        config=config_dict(config),
    )
    run_catalog.update_run_catalog(run_dir / CATALOG, [run_catalog.model_item(Path(bundle))])
    return Path(bundle), state


@flow(name="train", **flow_options())
@logs_user_errors
def train_flow(
    store: str | list[str],
    out: str | None = None,
    preset: str | None = None,
    steps: int | None = None,
    k: int | None = None,
    device: str | None = None,
    options: dict[str, Any] | None = None,
    dask_address: str | None = None,
) -> str:
    """Train IIC on patch stores; the bundle goes to ``<out>/model``.

    Args:
        store: one or more ``patches.zarr`` written by the ingest flow.
        out: the run folder (default ``$GEOSEG_WORK_ROOT/train/<first store stem>``).
        preset, steps, k, device: shortcuts for TrainConfig fields ("auto": GPU when present).
        options: any other TrainConfig field, e.g. ``{"batch_size": 32, "lr": 1e-4}``.
        dask_address: run the task on this Dask scheduler's workers.
    """
    settings = FlowSettings.from_env()
    check_dask_address(dask_address)
    stores = check_inputs(store, "store", settings)
    run_dir = run_folder(out, settings, "train", stores[0].stem)
    config = build_config(TrainConfig, options, preset=preset, steps=steps, k=k, device=device)
    bundle, state = train_step(stores, run_dir, config)
    get_run_logger().info("model bundle %s (%s)", bundle, state)
    return str(bundle)


train_flow = package_flow(train_flow, __name__, __file__)
