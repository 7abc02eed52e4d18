"""The ``retrain`` flow: new surveys in the catalog -> a new model version, promoted only if it is no worse.

Scheduled weekly in prefect.yaml. One run:

1. finds the survey items added to the catalog since the promoted model was registered
   (:func:`geoseg.models.registry.new_surveys`); none: the run ends there;
2. ingests them into one patch store (the ingest flow's step, cached);
3. trains, by default starting from the promoted model's weights (``TrainConfig.init_from``)
   with its k, so the new model refines rather than restarts;
4. aligns the new model's cluster ids to the promoted model's on the new imagery (which
   both can see) so ids, colours and names carry over (:mod:`geoseg.models.align`); the trained
   bundle stays as it is, the aligned one is written beside it;
5. evaluates where the surveys have ground truth (segment + evaluate, after alignment so
   the reported ids are the final ones);
6. registers the aligned model as a new version and promotes it only if the label-free
   check passes (loss on the shared imagery, cluster balance, agreement); the decision and
   its figures are stored with the version either way.

Run folder (``out``): ``patches.zarr/``, ``model/`` (as trained), ``aligned/`` (what is
registered, with ``alignment.json``/``.md``), ``predictions/`` and ``evaluation/`` when
labels exist, ``catalog/``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.ingest import ingest_step
from flows.runner import flow_options, package_flow
from flows.settings import (
    FlowSettings,
    build_config,
    check_dask_address,
    check_input,
    check_inputs,
    check_output,
    check_surveys,
    config_dict,
    logs_user_errors,
    run_folder,
)
from flows.tasks import align_task, call, evaluate_task, find_surveys_task, register_task, run
from flows.train import train_step
from geoseg.config import (
    AlignConfig,
    EvaluateConfig,
    IngestConfig,
    PromotionConfig,
    SegmentConfig,
    TrainConfig,
)
from geoseg.io.fileio import check_writable
from geoseg.messages import plural

ALIGNED = "aligned"
EVALUATION = "evaluation"


@flow(name="retrain", **flow_options())
@logs_user_errors
def retrain_flow(
    catalog: str,
    registry: str,
    out: str | None = None,
    warm_start: bool = True,
    since: str | None = None,
    patch_size: int | None = None,
    steps: int | None = None,
    k: int | None = None,
    reference: list[str] | None = None,
    ingest: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    segment: dict[str, Any] | None = None,
    evaluate: dict[str, Any] | None = None,
    align: dict[str, Any] | None = None,
    promotion: dict[str, Any] | None = None,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Retrain on the surveys added since the promoted model; promote the result only if it passes.

    Args:
        catalog: STAC catalog (``catalog.json``) listing the survey items.
        registry: the model registry folder (``geoseg model list --registry ...``).
        out: the run folder (default ``$GEOSEG_WORK_ROOT/retrain/<UTC date>``).
        warm_start: start from the promoted model's weights (and keep its k).
        since: ISO time; surveys added after it (default: the promoted model's registration).
        patch_size, steps, k: shortcuts for the ingest/train settings (patch_size and k
            default to the promoted model's).
        reference: extra imagery for the alignment besides the new surveys.
        ingest, train, segment, evaluate, align, promotion: any other field of that config.
        dask_address: join this Dask scheduler (default: a LocalCluster or $GEOSEG_DASK_ADDRESS).

    Returns:
        What happened: the surveys, the paths written, the version and the promotion decision.
    """
    from geoseg.models import registry as models
    from geoseg.models.policy import retrain_fields, retrain_patch_size

    logger = get_run_logger()
    settings = FlowSettings.from_env()
    check_dask_address(dask_address)
    catalog_path = check_input(catalog, "catalog", settings)
    registry_dir = check_output(registry, "registry", settings)
    extra_reference = check_inputs(reference, "reference", settings) if reference else []
    align_cfg = build_config(AlignConfig, align)
    promotion_cfg = build_config(PromotionConfig, promotion)
    segment_cfg = build_config(SegmentConfig, segment, vectorize=False)
    evaluate_cfg = build_config(EvaluateConfig, evaluate)

    previous = (
        check_input(models.current_model(registry_dir), "registry model", settings)
        if models.load_state(registry_dir).current
        else None
    )
    ingest_cfg = build_config(
        IngestConfig, ingest, patch_size=retrain_patch_size(previous, patch_size, ingest)
    )
    found = call(find_surveys_task, catalog=str(catalog_path), registry=str(registry_dir), since=since)
    surveys = check_surveys(found, settings)  # item hrefs may climb out of the catalog's root
    if not surveys:
        logger.info("no surveys added to %s since the promoted model: nothing to retrain", catalog_path)
        return {
            "surveys": [],
            "version": None,
            "promoted": False,
            "previous": str(previous) if previous else None,
        }
    logger.info("%s: %s", plural(len(surveys), "new survey"), [s["item_id"] for s in surveys])

    # the registry is written last: a read-only one is refused now, not after ingest and training
    check_writable(registry_dir)
    run_dir = run_folder(out, settings, "retrain", datetime.now(UTC).strftime("%Y-%m-%d"))
    fixed = {"steps": steps, **retrain_fields(previous, k, warm_start)}
    train_cfg = build_config(TrainConfig, train, **fixed)

    images = [Path(s["image"]) for s in surveys]
    store, ingest_state = ingest_step(images, run_dir, ingest_cfg)
    model, train_state = train_step([store], run_dir, train_cfg)
    logger.info("store %s (%s), model %s (%s)", store, ingest_state, model, train_state)

    candidate = model
    alignment = None
    if previous is not None:
        alignment = call(
            align_task,
            model=str(model),
            previous=str(previous),
            reference=[str(store), *map(str, extra_reference)],
            out=str(run_dir / ALIGNED),
            config=config_dict(align_cfg),
        )
        candidate = Path(alignment["bundle"])
        logger.info(
            "aligned to %s: agreement %.3f, report %s",
            previous,
            alignment["agreement"],
            alignment["report_md"],
        )

    report = _evaluate(surveys, candidate, run_dir, segment_cfg, evaluate_cfg)
    outcome = call(
        register_task,
        bundle=str(candidate),
        registry=str(registry_dir),
        previous=str(previous) if previous else None,
        config=config_dict(promotion_cfg),
        reference=[str(store), *map(str, extra_reference)],  # balance of a first model
    )
    if outcome["promoted"]:
        logger.info("promoted %s", outcome["version"])
    else:
        logger.warning(
            "%s registered but NOT promoted: %s", outcome["version"], outcome["decision"]["reasons"]
        )
    return {
        "surveys": [s["item_id"] for s in surveys],
        "run": str(run_dir),
        "store": str(store),
        "model": str(candidate),
        "previous": str(previous) if previous else None,
        "alignment": alignment,
        "report": report,
        **outcome,
    }


retrain_flow = package_flow(retrain_flow, __name__, __file__)


def _evaluate(
    surveys: list[dict[str, Any]],
    model: Path,
    run_dir: Path,
    segment_cfg: SegmentConfig,
    evaluate_cfg: EvaluateConfig,
) -> str | None:
    """Segment the surveys that have ground truth and score them; None when none has."""
    labelled = [s for s in surveys if s.get("label")]
    if not labelled:
        return None
    from flows.segment import segment_step

    predictions, _ = segment_step(model, [Path(s["image"]) for s in labelled], run_dir, segment_cfg)
    report, _ = run(
        evaluate_task,
        run_dir,
        predictions=[p["clusters"] for p in predictions],
        labels=[s["label"] for s in labelled],
        out_dir=str(run_dir / EVALUATION),
        config=config_dict(evaluate_cfg),
        images=[s["image"] for s in labelled],
    )
    return str(report)
