"""The ``segment`` flow: new imagery + a model -> cluster COGs, GeoPackages, QML styles, STAC items.

One segment task per source raster (Dask runs them in parallel; a raster taller than
``band_rows`` is itself cut into row bands on the same cluster, :mod:`geoseg.distributed`),
then one vectorize task per cluster COG, whose own block-parallel work runs on the same
Dask cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.runner import flow_options
from flows.settings import (
    FlowSettings,
    build_config,
    check_dask_address,
    check_input,
    check_sources,
    config_dict,
    logs_user_errors,
    run_folder,
)
from flows.tasks import resolve, segment_task, submit, vectorize_task
from geoseg.config import SegmentConfig
from geoseg.messages import plural

PREDICTIONS = "predictions"
CATALOG = "catalog"


def segment_step(
    model: Path, sources: list[Path], run_dir: Path, config: SegmentConfig
) -> tuple[list[dict[str, Any]], list[str]]:
    """Segment (and vectorize) every source; add prediction items linked to source and model."""
    from geoseg.stac import catalog as run_catalog
    from geoseg.vectorize import vector_style_path

    out_dir = run_dir / PREDICTIONS
    # polygon settings stay out of the segment task's cache key: changing one re-runs vectorize only
    task_config = {k: v for k, v in config_dict(config).items() if k not in SegmentConfig.POLYGON_FIELDS}
    futures = [
        (
            s,
            submit(
                segment_task,
                run_dir,
                model=str(model),
                source=str(s),
                out_dir=str(out_dir),
                config=task_config,
            ),
        )
        for s in sources
    ]
    results, states = [], []
    for source, future in futures:
        result, state = resolve(
            future,
            segment_task,
            run_dir,
            model=str(model),
            source=str(source),
            out_dir=str(out_dir),
            config=task_config,
        )
        results.append(result)
        states.append(state)
    if config.vectorize:
        vector_config = config_dict(config.vectorize_config())
        vectors = [
            submit(vectorize_task, run_dir, clusters=r["clusters"], config=vector_config) for r in results
        ]
        for r, future in zip(results, vectors, strict=True):
            gpkg, state = resolve(
                future, vectorize_task, run_dir, clusters=r["clusters"], config=vector_config
            )
            r["gpkg"], r["gpkg_qml"] = gpkg, str(vector_style_path(gpkg))
            states.append(state)
    model_item = run_catalog.model_item(model)
    items = [model_item]
    for source, r in zip(sources, results, strict=True):
        survey = run_catalog.survey_item(source)
        items += [survey, run_catalog.run_prediction_item(r, survey, model_item)]
    run_catalog.update_run_catalog(run_dir / CATALOG, items)
    count = plural(len(results), "raster")
    get_run_logger().info("%s segmented into %s (tasks: %s)", count, out_dir, ", ".join(states))
    return results, states


@flow(name="segment", **flow_options())
@logs_user_errors
def segment_flow(
    src: str | list[str],
    model: str,
    out: str | None = None,
    vectorize: bool = True,
    min_area: float | None = None,
    simplify: float | None = None,
    options: dict[str, Any] | None = None,
    dask_address: str | None = None,
) -> list[dict[str, Any]]:
    """Segment new rasters with a trained model; outputs go to ``<out>/predictions``.

    Args:
        src: raster files (GeoTIFF/COG) to segment.
        model: a model bundle folder (``model.json`` + ``weights.safetensors``).
        out: the run folder (default ``$GEOSEG_WORK_ROOT/segment/<first source stem>``).
        vectorize: also write ``<stem>_polygons.gpkg`` polygons.
        min_area, simplify: polygon sieve (CRS units²) and simplification tolerance.
        options: any other SegmentConfig field, e.g. ``{"overlap": 0.5, "device": "cuda"}``.
        dask_address: join this Dask scheduler (default: a LocalCluster or $GEOSEG_DASK_ADDRESS).
    """
    from geoseg.models.bundle import load_bundle

    settings = FlowSettings.from_env()
    check_dask_address(dask_address)
    sources = check_sources(src, settings)
    bundle = check_input(model, "model", settings)
    load_bundle(bundle)  # once, before any task: a bad bundle is one line, not one per raster
    run_dir = run_folder(out, settings, "segment", sources[0].stem)
    config = build_config(SegmentConfig, options, vectorize=vectorize, min_area=min_area, simplify=simplify)
    results, _ = segment_step(bundle, sources, run_dir, config)
    return results
