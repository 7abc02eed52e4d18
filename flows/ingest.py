"""The ``ingest`` flow: a survey's rasters -> a zarr patch store (+ survey items in the run's STAC catalog)."""

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
    check_sources,
    config_dict,
    logs_user_errors,
    run_folder,
)
from flows.tasks import ingest_task, run
from geoseg.config import IngestConfig

STORE = "patches.zarr"
CATALOG = "catalog"


def ingest_step(
    sources: list[Path], run_dir: Path, config: IngestConfig, labels: list[Path] | None = None
) -> tuple[Path, str]:
    """Run the ingest task (cached) and record the survey in the run's catalog (ingest adds
    its items there when it runs; this keeps them when the task was cached)."""
    from geoseg.stac import catalog as run_catalog

    store, state = run(
        ingest_task,
        run_dir,
        sources=[str(s) for s in sources],
        out=str(run_dir / STORE),
        config=config_dict(config),
        labels=[str(p) for p in labels] if labels else None,
        out_catalog=str(run_dir / CATALOG),
    )
    items = [run_catalog.survey_item(s, store=Path(store)) for s in sources]
    run_catalog.update_run_catalog(run_dir / CATALOG, items)
    return Path(store), state


@flow(name="ingest", **flow_options())
@logs_user_errors
def ingest_flow(
    src: str | list[str],
    out: str | None = None,
    labels: str | list[str] | None = None,
    dataset: str | None = None,
    patch_size: int | None = None,
    options: dict[str, Any] | None = None,
    dask_address: str | None = None,
) -> str:
    """Cut GeoTIFFs (or STAC items) into ``<out>/patches.zarr``.

    Args:
        src: raster files, folders of them, or STAC item JSON.
        out: the run folder (default ``$GEOSEG_WORK_ROOT/ingest/<first source stem>``).
        labels: ground-truth rasters, one per source (kept for evaluation only).
        dataset: label dataset name (geoseg.datasets) for ``labels``.
        patch_size: shortcut for ``options["patch_size"]``.
        options: any other IngestConfig field, e.g. ``{"stride": 64, "scale": 0.5}``.
        dask_address: join this Dask scheduler (default: a LocalCluster or $GEOSEG_DASK_ADDRESS).
    """
    settings = FlowSettings.from_env()
    check_dask_address(dask_address)
    sources = check_sources(src, settings)
    label_paths = check_inputs(labels, "labels", settings) if labels else None
    run_dir = run_folder(out, settings, "ingest", sources[0].stem)
    config = build_config(IngestConfig, options, patch_size=patch_size, dataset=dataset)
    store, state = ingest_step(sources, run_dir, config, label_paths)
    get_run_logger().info("patch store %s (%s)", store, state)
    return str(store)


ingest_flow = package_flow(ingest_flow, __name__, __file__)
