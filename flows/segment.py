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

from flows.runner import flow_options, package_flow
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
from geoseg.errors import InputError
from geoseg.io.fileio import user_error_message
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
    parameters = {
        s: {"model": str(model), "source": str(s), "out_dir": str(out_dir), "config": task_config}
        for s in sources
    }
    futures = [(s, submit(segment_task, run_dir, **parameters[s])) for s in sources]
    done: list[tuple[Path, dict[str, Any]]] = []
    states: list[str] = []
    failed: list[tuple[Path, Exception]] = []
    for source, future in futures:
        try:
            result, state = resolve(future, segment_task, run_dir, **parameters[source])
        except Exception as exc:  # the other rasters are finished and catalogued first
            failed.append((source, exc))
            states.append("Failed")
            continue
        done.append((source, result))
        states.append(state)
    results = [r for _, r in done]
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
    for source, r in done:
        survey = run_catalog.survey_item(source)
        items += [survey, run_catalog.run_prediction_item(r, survey, model_item)]
    run_catalog.update_run_catalog(run_dir / CATALOG, items)
    count = plural(len(results), "raster")
    get_run_logger().info("%s segmented into %s (tasks: %s)", count, out_dir, ", ".join(states))
    if failed:
        raise_failures(failed, len(sources), out_dir)
    return results, states


def raise_failures(failed: list[tuple[Path, Exception]], total: int, out_dir: Path) -> None:
    """Fail the run after the rasters that could be segmented were published: one line naming
    every raster that could not (user errors), or the first bug as it was raised."""
    for _, exc in failed:
        if user_error_message(exc) is None or total == 1:
            raise exc
    reasons = "; ".join(str(user_error_message(exc)) for _, exc in failed)
    kept = total - len(failed)
    tail = (
        f"; the outputs of the other {plural(kept, 'raster')} are in {out_dir} and the run catalog"
        if kept
        else ""
    )
    raise InputError(f"{len(failed)} of {plural(total, 'raster')} could not be segmented: {reasons}{tail}")


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
    from geoseg.segment import check_rasters_suit_model

    settings = FlowSettings.from_env()
    check_dask_address(dask_address)
    sources = check_sources(src, settings)
    bundle = check_input(model, "model", settings)
    load_bundle(bundle)  # once, before any task: a bad bundle is one line, not one per raster
    check_rasters_suit_model(bundle, sources)  # so is a raster that does not open or suit the model
    run_dir = run_folder(out, settings, "segment", sources[0].stem)
    config = build_config(SegmentConfig, options, vectorize=vectorize, min_area=min_area, simplify=simplify)
    results, _ = segment_step(bundle, sources, run_dir, config)
    return results


segment_flow = package_flow(segment_flow, __name__, __file__)
