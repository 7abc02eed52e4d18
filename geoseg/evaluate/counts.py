"""The numbers of an evaluation: prediction/label pairs streamed in row blocks into 256 x 256
count tables (`geoseg.metrics.confusion_matrix`), so memory does not grow with the data set
or the raster size; the cluster-to-class matching fitted on one table; and the metrics of
the scored table under it. NMI and ARI are exact, from the whole contingency table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from geoseg import metrics
from geoseg.config import EvaluateConfig
from geoseg.datasets import IGNORE, LabelDataset, get_dataset, load_palette, read_label
from geoseg.errors import InputError
from geoseg.io.sources import open_dataset
from geoseg.io.style import cluster_label
from geoseg.messages import plural
from geoseg.progress import Progress, progress_bar

__all__ = [
    "Evaluation",
    "ImageCounts",
    "Tally",
    "cluster_labels",
    "label_dataset",
    "match",
    "pairs",
    "read_prediction",
    "tally",
]


@dataclass
class ImageCounts:
    prediction: Path
    label: Path
    rows: np.ndarray  # sparse (cluster, class, count) triplets of this image's table
    cols: np.ndarray
    counts: np.ndarray


@dataclass
class Tally:
    full: np.ndarray = field(default_factory=lambda: np.zeros((256, 256), np.int64))
    images: list[ImageCounts] = field(default_factory=list)


@dataclass(frozen=True)
class Evaluation:
    """A scored set under the mapping fitted on the fit set (the same set: transductive)."""

    classes: tuple[str, ...]
    n_clusters: int
    table: np.ndarray  # scored set: cluster x class counts
    fit_table: np.ndarray  # fit set: cluster x class counts
    missing: np.ndarray  # labelled pixels without a prediction, per class
    mapping: np.ndarray  # cluster -> class (metrics.UNMAPPED: none)
    scores: metrics.Scores
    nmi: float
    ari: float
    transductive: tuple[np.ndarray, metrics.Scores] | None  # own mapping and scores, honest runs


def label_dataset(config: EvaluateConfig) -> LabelDataset | None:
    if config.palette:
        return load_palette(config.palette)
    return get_dataset(config.dataset) if config.dataset else None


def pairs(
    predictions: Sequence[str | Path], labels: Sequence[str | Path], what: str, against: str
) -> list[tuple[Path, Path]]:
    """Prediction/label paths, one label per prediction, each an existing file."""
    # Missing files first: a mistyped glob reaches here unexpanded, as one path, and
    # "9 files for predictions but 1 for labels" would hide the typo.
    for path in (Path(p) for p in (*predictions, *labels)):
        if not path.is_file():
            hint = " (a shell pattern that matched nothing?)" if any(c in str(path) for c in "*?[") else ""
            raise InputError(f"file not found: {path}{hint}")
    if len(predictions) != len(labels):
        raise InputError(
            f"{plural(len(predictions), 'file')} for {what} but {len(labels)} for {against}: "
            "give one label per prediction, same order"
        )
    if not predictions:
        raise InputError(f"no {what} given")
    return [(Path(p), Path(q)) for p, q in zip(predictions, labels, strict=True)]


def _check_pair(pred: rasterio.io.DatasetReader, label: rasterio.io.DatasetReader, names: tuple) -> None:
    """Same grid or a clear error naming both files."""
    if (pred.height, pred.width) != (label.height, label.width):
        raise InputError(
            f"size mismatch: prediction {names[0]} is {pred.width}x{pred.height} px but label "
            f"{names[1]} is {label.width}x{label.height} px (width x height)"
        )
    if pred.count != 1:
        raise InputError(
            f"prediction {names[0]} has {plural(pred.count, 'band')}; expected one band of cluster ids"
        )
    if not np.issubdtype(np.dtype(pred.dtypes[0]), np.integer):
        raise InputError(f"prediction {names[0]} has dtype {pred.dtypes[0]}; expected integer cluster ids")
    if (
        pred.crs
        and label.crs
        and (pred.crs != label.crs or not pred.transform.almost_equals(label.transform))
    ):
        raise InputError(
            f"prediction {names[0]} and label {names[1]} are on different grids (CRS or transform)"
        )


def read_prediction(src: rasterio.io.DatasetReader, window: Window, name: Path) -> np.ndarray:
    """A window of cluster ids as uint8, the raster's own nodata as IGNORE (255)."""
    block = src.read(1, window=window)
    if src.nodata is not None and src.nodata != IGNORE:
        block = np.where(block == src.nodata, IGNORE, block)
    if block.dtype != np.uint8:
        if block.size and (block.min() < 0 or block.max() > IGNORE):
            raise InputError(f"prediction {name} holds values outside 0..255 (cluster ids must fit uint8)")
        block = block.astype(np.uint8)
    return block


def tally(
    pairs: list[tuple[Path, Path]],
    dataset: LabelDataset | None,
    config: EvaluateConfig,
    desc: str,
    progress: Progress,
) -> Tally:
    """Stream every pair block by block into one 256 x 256 count table (+ sparse per image)."""
    result = Tally()
    bar = progress_bar(progress, iterable=pairs, desc=desc, unit="image", leave=False)
    with bar:  # closed before an error (or Ctrl-C) reaches the console
        for pred_path, label_path in bar:
            image_table = np.zeros((256, 256), np.int64)
            with open_dataset(pred_path) as pred, open_dataset(label_path) as label:
                _check_pair(pred, label, (pred_path, label_path))
                rows = max(1, config.block_pixels // max(1, pred.width))
                for row in range(0, pred.height, rows):
                    window = Window(0, row, pred.width, min(rows, pred.height - row))
                    ids = read_prediction(pred, window, pred_path)
                    target = read_label(label_path, dataset, window=window)
                    image_table += metrics.confusion_matrix(ids, target, config.ignore)
            result.full += image_table
            r, c = np.nonzero(image_table)
            result.images.append(ImageCounts(pred_path, label_path, r, c, image_table[r, c]))
    return result


def match(
    scored: Tally, fitted: Tally, dataset: LabelDataset | None, config: EvaluateConfig, honest: bool
) -> Evaluation:
    """Fit the cluster-to-class mapping on ``fitted`` and score ``scored`` under it; for an
    honest run also the transductive figures (``scored``'s own mapping), for comparison."""
    n_clusters = max(_last_used(scored.full[:255].sum(axis=1)), _last_used(fitted.full[:255].sum(axis=1))) + 1
    classes = _class_names(dataset, scored, fitted)
    n_classes = len(classes)
    for name, counted in (("scored", scored), ("fit", fitted)):
        if counted.full[:, n_classes:IGNORE].sum():
            raise InputError(
                f"{name} labels hold class ids >= {n_classes}, outside "
                + (f"dataset {dataset.name!r}" if dataset else "the classes found")
            )
        if counted.full.sum() == 0:
            labels = [im.label for im in counted.images]
            which = (
                f" ({labels[0]}" + (f" and {len(labels) - 1} more" if len(labels) > 1 else "") + ")"
                if labels
                else ""
            )
            coding = f"a class of dataset {dataset.name!r}" if dataset else "a class id that is not ignored"
            raise InputError(
                f"no labelled pixels in the {name} set: no pixel of its labels{which} is {coding}"
                " (are they the ground-truth masks, and is --dataset right?)"
            )

    fit_table = fitted.full[:n_clusters, :n_classes]
    table = scored.full[:n_clusters, :n_classes]
    missing = scored.full[IGNORE, :n_classes]
    matching = metrics.majority_mapping if config.many_to_one else metrics.hungarian_mapping
    mapping = matching(fit_table)
    contingency = np.vstack([table, missing[None]])
    transductive = None
    if honest:
        own = matching(table)
        transductive = (own, metrics.score(table, own, missing))
    return Evaluation(
        classes=classes,
        n_clusters=n_clusters,
        table=table,
        fit_table=fit_table,
        missing=missing,
        mapping=mapping,
        scores=metrics.score(table, mapping, missing),
        nmi=metrics.nmi(contingency),
        ari=metrics.ari(contingency),
        transductive=transductive,
    )


def _last_used(counts: np.ndarray) -> int:
    used = np.flatnonzero(counts)
    return int(used[-1]) if used.size else 0


def _class_names(dataset: LabelDataset | None, *tallies: Tally) -> tuple[str, ...]:
    if dataset is not None:
        return dataset.classes
    n = max(_last_used(t.full[:, :IGNORE].sum(axis=0)) for t in tallies) + 1
    return tuple(f"class {i}" for i in range(n))


def cluster_labels(predictions: Sequence[Path], n_clusters: int) -> list[str]:
    """Each cluster id's label: the name ``geoseg model name`` gave it, as the prediction
    rasters carry it (their cluster table), else ``cluster N``. The first raster with a
    table decides; rasters of one run share it."""
    from geoseg.models.bundle import CLUSTERS_TAG, clusters_from_tag

    names: dict[int, str] = {}
    for path in predictions:
        with open_dataset(path) as src:
            table = clusters_from_tag(src.tags().get(CLUSTERS_TAG))
        if table is not None:
            names = {c.id: c.name for c in table if c.name}
            break
    return [cluster_label(i, names.get(i)) for i in range(n_clusters)]
