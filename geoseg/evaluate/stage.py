"""The evaluate stage: score cluster rasters against ground truth, honestly, and say how.

IIC's published numbers map clusters to classes on the same pixels they score
("transductive"). geoseg can do that too, but by default a user is nudged to fit the
mapping on one set (``--fit-on``) and score another ("honest"); report.json names the
protocol and, for an honest run, also shows the transductive figures beside it.

The counting streams (``counts``): memory does not grow with the data set or the raster
size. The report (``report``) and the figures (``figures``) are written from its numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geoseg.config import EvaluateConfig
from geoseg.datasets import check_class_id_labels
from geoseg.errors import InputError
from geoseg.evaluate import counts
from geoseg.evaluate.figures import write_figures
from geoseg.evaluate.report import REPORT_JSON, REPORT_MD, markdown, report_json
from geoseg.io.fileio import (
    claim_folder,
    locked,
    made_for_the_run,
    mark_folder,
    require_published,
    write_json_atomic,
    write_text_atomic,
)
from geoseg.messages import plural
from geoseg.progress import Progress

__all__ = ["STAGE", "evaluate"]

log = logging.getLogger(__name__)

STAGE = "evaluate"  # the report folder's marker: .geoseg-evaluate


def evaluate(
    predictions: Sequence[str | Path],
    labels: Sequence[str | Path],
    out_dir: str | Path,
    config: EvaluateConfig | None = None,
    fit_predictions: Sequence[str | Path] | None = None,
    fit_labels: Sequence[str | Path] | None = None,
    images: Sequence[str | Path] | None = None,
    progress: Progress = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score predictions against labels and write report.json, report.md and PNGs to out_dir.

    Args:
        predictions: cluster rasters (uint8 ids, 255 = no prediction), one per label.
        labels: label rasters in the same order (class ids, or colours with a dataset/palette).
        out_dir: report folder (created; an earlier report in it is replaced, file by file
            atomically; a non-empty folder without one is refused unless ``overwrite``).
        config: dataset/palette, ignore value, matching and preview settings.
        fit_predictions, fit_labels: the set the mapping is fitted on (honest protocol);
            None: the mapping is fitted on the scored set (transductive protocol).
        images: the source images of ``predictions`` (same order), for side-by-side PNGs.
        progress: a bar (True), log lines to this logger, or nothing (:mod:`geoseg.progress`).

    Returns:
        The report (the contents of report.json).
    """
    config = (config or EvaluateConfig()).validate()
    out_dir = Path(out_dir)
    claim_folder(out_dir, STAGE, marker=REPORT_JSON, overwrite=overwrite)
    # A run refused on its inputs (counts, sizes, an unknown dataset) leaves no empty --out
    # behind (the lock made it); a folder that was there stays.
    with made_for_the_run(out_dir), locked(out_dir, "evaluation folder"):  # one evaluation at a time
        dataset = counts.label_dataset(config)
        pairs = counts.pairs(predictions, labels, "predictions", "labels")
        honest = fit_predictions is not None or fit_labels is not None
        fit_pairs = (
            counts.pairs(fit_predictions or [], fit_labels or [], "--fit-on", "--fit-labels")
            if honest
            else []
        )
        for prediction, _ in pairs + fit_pairs:  # never score a half-published segmentation
            require_published(prediction)
        if dataset is None:  # label values scored as class ids: they must be ids in every file
            check_class_id_labels([label for _, label in pairs + fit_pairs], "--dataset or --palette")
        image_paths = _images(images, len(pairs))

        scored = counts.tally(pairs, dataset, config, "scoring", progress)
        fitted = counts.tally(fit_pairs, dataset, config, "fitting mapping", progress) if honest else scored
        evaluation = counts.match(scored, fitted, dataset, config, honest)
        cluster_labels = counts.cluster_labels([p for p, _ in pairs], evaluation.n_clusters)

        out_dir.mkdir(parents=True, exist_ok=True)
        mark_folder(out_dir, STAGE)  # from here on the folder is the report's (a rerun may replace it)
        fit = (fit_pairs, fitted) if honest else None
        report = report_json(evaluation, (pairs, scored), fit, cluster_labels, dataset, config)
        figures = write_figures(out_dir, evaluation, pairs, image_paths, cluster_labels, dataset, config)
        report["files"] = {"report_md": REPORT_MD, **figures, "report_json": REPORT_JSON}
        write_text_atomic(out_dir / REPORT_MD, markdown(report))
        write_json_atomic(out_dir / REPORT_JSON, report)  # last: its presence marks a complete report
        log.info(
            "%s protocol: accuracy %.4f, mIoU %.4f on %s -> %s",
            report["protocol"],
            evaluation.scores.accuracy,
            evaluation.scores.miou,
            plural(evaluation.scores.n_pixels, "pixel"),
            out_dir,
        )
        return report


def _images(images: Sequence[str | Path] | None, n_predictions: int) -> list[Path] | None:
    """The source images for the side-by-side PNGs, one per prediction, or None."""
    if not images:
        return None
    paths = [Path(p) for p in images]
    if len(paths) != n_predictions:
        raise InputError(
            f"{plural(len(paths), 'image')} for {plural(n_predictions, 'prediction')}: give one per prediction"
        )
    for path in paths:
        if not path.is_file():
            raise InputError(f"image not found: {path}")
    return paths
