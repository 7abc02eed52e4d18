"""Score cluster rasters against ground truth, honestly, and say how.

IIC's published numbers map clusters to classes on the same pixels they score
("transductive"). geoseg can do that too, but by default a user is nudged to fit the
mapping on one set (``--fit-on``) and score another ("honest"); report.json names the
protocol and, for an honest run, also shows the transductive figures beside it.

Counting streams: each prediction/label pair is read in row blocks and reduced to a
256 x 256 table of counts (`geoseg.metrics.confusion_matrix`), so memory does not grow
with the data set or the raster size. All metrics derive from these tables; NMI and ARI
are exact (no pixel subsample).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.errors
from rasterio.enums import Resampling
from rasterio.windows import Window

from geoseg import __version__, metrics
from geoseg.config import EvaluateConfig
from geoseg.datasets import IGNORE, LabelDataset, get_dataset, load_palette, read_label
from geoseg.errors import InputError
from geoseg.io.fileio import (
    atomic_path,
    claim_folder,
    locked,
    mark_folder,
    require_published,
    write_json_atomic,
    write_text_atomic,
)
from geoseg.io.preview import colourize, save_png
from geoseg.io.sources import open_dataset
from geoseg.io.style import cluster_label
from geoseg.progress import Progress, progress_bar

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
STAGE = "evaluate"  # the report folder's marker: .geoseg-evaluate
REPORT_MD = "report.md"
CONFUSION_PNG = "confusion.png"
CLUSTERS_PNG = "clusters.png"
EXAMPLES_DIR = "examples"
UNMAPPED_COLOUR = (128, 128, 128)

PROTOCOLS = {
    "honest": "cluster-to-class mapping fitted on the --fit-on set, metrics on the other set",
    "transductive": "mapping fitted and metrics computed on the same set (IIC's published protocol)",
}


@dataclass
class _ImageCounts:
    prediction: Path
    label: Path
    rows: np.ndarray  # sparse (cluster, class, count) triplets of this image's table
    cols: np.ndarray
    counts: np.ndarray


@dataclass
class _Tally:
    full: np.ndarray = field(default_factory=lambda: np.zeros((256, 256), np.int64))
    images: list[_ImageCounts] = field(default_factory=list)


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
    with locked(out_dir, "evaluation folder"):  # one evaluation at a time writes here
        dataset = _label_dataset(config)
        pairs = _pairs(predictions, labels, "predictions", "labels")
        honest = fit_predictions is not None or fit_labels is not None
        fit_pairs = (
            _pairs(fit_predictions or [], fit_labels or [], "--fit-on", "--fit-labels") if honest else []
        )
        for prediction, _ in pairs + fit_pairs:  # never score a half-published segmentation
            require_published(prediction)
        image_paths = [Path(p) for p in images] if images else None
        if image_paths is not None:
            if len(image_paths) != len(pairs):
                raise InputError(
                    f"{len(image_paths)} images for {len(pairs)} predictions: give one per prediction"
                )
            for path in image_paths:
                if not path.is_file():
                    raise InputError(f"image not found: {path}")

        scored = _tally(pairs, dataset, config, "scoring", progress)
        fitted = _tally(fit_pairs, dataset, config, "fitting mapping", progress) if honest else scored
        n_clusters = (
            max(_last_used(scored.full[:255].sum(axis=1)), _last_used(fitted.full[:255].sum(axis=1))) + 1
        )
        classes = _class_names(dataset, scored, fitted)
        n_classes = len(classes)
        for name, tally in (("scored", scored), ("fit", fitted)):
            if tally.full[:, n_classes:IGNORE].sum():
                raise InputError(
                    f"{name} labels hold class ids >= {n_classes}, outside "
                    + (f"dataset {dataset.name!r}" if dataset else "the classes found")
                )
            if tally.full.sum() == 0:
                raise InputError(f"no labelled pixels in the {name} set (all ignored or no overlap)")

        cluster_labels = _cluster_labels([p for p, _ in pairs], n_clusters)
        fit_table = fitted.full[:n_clusters, :n_classes]
        table = scored.full[:n_clusters, :n_classes]
        missing = scored.full[IGNORE, :n_classes]
        match = metrics.majority_mapping if config.many_to_one else metrics.hungarian_mapping
        mapping = match(fit_table)
        result = metrics.score(table, mapping, missing)
        contingency = np.vstack([table, missing[None]])

        out_dir.mkdir(parents=True, exist_ok=True)
        mark_folder(out_dir, STAGE)  # from here on the folder is the report's (a rerun may replace it)
        report: dict[str, Any] = {
            "geoseg_version": __version__,
            "protocol": "honest" if honest else "transductive",
            "protocol_description": PROTOCOLS["honest" if honest else "transductive"],
            "matching": "many-to-one" if config.many_to_one else "hungarian",
            "dataset": dataset.name if dataset else None,
            "classes": list(classes),
            "cluster_names": {str(i): label for i, label in enumerate(cluster_labels)},
            "n_classes": n_classes,
            "n_clusters": n_clusters,
            "n_pixels": result.n_pixels,
            "n_missing": int(missing.sum()),
            "accuracy": _num(result.accuracy),
            "miou": _num(result.miou),
            "per_class_iou": {c: _num(v) for c, v in zip(classes, result.per_class_iou, strict=True)},
            "nmi": _num(metrics.nmi(contingency)),
            "ari": _num(metrics.ari(contingency)),
            "nmi_ari_method": "exact, from the contingency table of all scored pixels (no subsample)",
            "mapping": _mapping_json(mapping),
            "cluster_class_counts": table.tolist(),
            "scored": _set_json(pairs, scored),
            "fit": _set_json(fit_pairs, fitted) if honest else None,
            "ignore": config.ignore,
            "notes": _notes(config, n_clusters, n_classes, mapping, fit_table, missing),
        }
        if honest:
            own = match(table)
            trans = metrics.score(table, own, missing)
            report["transductive"] = {
                "description": "for comparison only: " + PROTOCOLS["transductive"],
                "accuracy": _num(trans.accuracy),
                "miou": _num(trans.miou),
                "mapping": _mapping_json(own),
            }
        report["per_image"] = [_image_json(counts, mapping) for counts in scored.images]

        colours = _class_colours(dataset, n_classes)
        examples: list[str] = []
        files = {
            "report_md": REPORT_MD,
            "confusion_png": _plot_confusion(result.confusion, classes, out_dir / CONFUSION_PNG).name,
            "clusters_png": _plot_clusters(
                table, classes, mapping, cluster_labels, out_dir / CLUSTERS_PNG
            ).name,
            "examples": examples,
        }
        for index in _sample(len(pairs), config):
            prediction, label = pairs[index]
            target = out_dir / EXAMPLES_DIR / f"{index:03d}_{prediction.stem}.png"
            image = image_paths[index] if image_paths else None
            _side_by_side(prediction, label, image, mapping, colours, dataset, config, target)
            examples.append(str(target.relative_to(out_dir)))
        for stale in sorted((out_dir / EXAMPLES_DIR).glob("*.png")):  # an earlier run's examples
            if str(stale.relative_to(out_dir)) not in examples:
                stale.unlink()
        report["files"] = {**files, "report_json": REPORT_JSON}
        write_text_atomic(out_dir / REPORT_MD, _markdown(report))
        write_json_atomic(out_dir / REPORT_JSON, report)  # last: its presence marks a complete report
        log.info(
            "%s protocol: accuracy %.4f, mIoU %.4f on %d pixels -> %s",
            report["protocol"],
            result.accuracy,
            result.miou,
            result.n_pixels,
            out_dir,
        )
        return report


# --- reading and counting -----------------------------------------------------------------


def _label_dataset(config: EvaluateConfig) -> LabelDataset | None:
    if config.palette:
        return load_palette(config.palette)
    return get_dataset(config.dataset) if config.dataset else None


def _pairs(
    predictions: Sequence[str | Path], labels: Sequence[str | Path], what: str, against: str
) -> list[tuple[Path, Path]]:
    if len(predictions) != len(labels):
        raise InputError(
            f"{len(predictions)} {what} but {len(labels)} {against}: give one label per prediction, same order"
        )
    if not predictions:
        raise InputError(f"no {what} given")
    pairs = [(Path(p), Path(q)) for p, q in zip(predictions, labels, strict=True)]
    for path in (p for pair in pairs for p in pair):
        if not path.is_file():
            raise InputError(f"file not found: {path}")
    return pairs


def _check_pair(pred: rasterio.io.DatasetReader, label: rasterio.io.DatasetReader, names: tuple) -> None:
    """Same grid or a clear error naming both files."""
    if (pred.height, pred.width) != (label.height, label.width):
        raise InputError(
            f"size mismatch: prediction {names[0]} is {pred.width}x{pred.height} px but label "
            f"{names[1]} is {label.width}x{label.height} px (width x height)"
        )
    if pred.count != 1:
        raise InputError(f"prediction {names[0]} has {pred.count} bands; expected one band of cluster ids")
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


def _read_prediction(src: rasterio.io.DatasetReader, window: Window, name: Path) -> np.ndarray:
    block = src.read(1, window=window)
    if src.nodata is not None and src.nodata != IGNORE:
        block = np.where(block == src.nodata, IGNORE, block)
    if block.dtype != np.uint8:
        if block.size and (block.min() < 0 or block.max() > IGNORE):
            raise InputError(f"prediction {name} holds values outside 0..255 (cluster ids must fit uint8)")
        block = block.astype(np.uint8)
    return block


def _tally(
    pairs: list[tuple[Path, Path]],
    dataset: LabelDataset | None,
    config: EvaluateConfig,
    desc: str,
    progress: Progress,
) -> _Tally:
    """Stream every pair block by block into one 256 x 256 count table (+ sparse per image)."""
    tally = _Tally()
    for pred_path, label_path in progress_bar(progress, iterable=pairs, desc=desc, unit="image", leave=False):
        image_table = np.zeros((256, 256), np.int64)
        with open_dataset(pred_path) as pred, open_dataset(label_path) as label:
            _check_pair(pred, label, (pred_path, label_path))
            rows = max(1, config.block_pixels // max(1, pred.width))
            for row in range(0, pred.height, rows):
                window = Window(0, row, pred.width, min(rows, pred.height - row))
                ids = _read_prediction(pred, window, pred_path)
                target = read_label(label_path, dataset, window=window)
                image_table += metrics.confusion_matrix(ids, target, config.ignore)
        tally.full += image_table
        r, c = np.nonzero(image_table)
        tally.images.append(_ImageCounts(pred_path, label_path, r, c, image_table[r, c]))
    return tally


def _last_used(counts: np.ndarray) -> int:
    used = np.flatnonzero(counts)
    return int(used[-1]) if used.size else 0


def _class_names(dataset: LabelDataset | None, *tallies: _Tally) -> tuple[str, ...]:
    if dataset is not None:
        return dataset.classes
    n = max(_last_used(t.full[:, :IGNORE].sum(axis=0)) for t in tallies) + 1
    return tuple(f"class {i}" for i in range(n))


def _cluster_labels(predictions: Sequence[Path], n_clusters: int) -> list[str]:
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


def _class_colours(dataset: LabelDataset | None, n_classes: int) -> list[tuple[int, int, int]]:
    if dataset is not None:
        colours = list(dataset.colours)
    else:
        from geoseg.models.bundle import default_clusters

        colours = [c.colour for c in default_clusters(n_classes)]
    return [*colours, UNMAPPED_COLOUR]  # id n_classes: a cluster mapped to no class


# --- report pieces ------------------------------------------------------------------------


def _num(value: float) -> float | None:
    """JSON has no NaN: undefined metrics are null."""
    return None if value is None or math.isnan(value) else round(float(value), 6)


def _mapping_json(mapping: np.ndarray) -> dict[str, int | None]:
    return {str(i): (int(c) if c >= 0 else None) for i, c in enumerate(mapping)}


def _set_json(pairs: list[tuple[Path, Path]], tally: _Tally) -> dict[str, Any]:
    return {
        "predictions": [str(p) for p, _ in pairs],
        "labels": [str(q) for _, q in pairs],
        "n_pixels": int(tally.full.sum()),
    }


def _image_json(counts: _ImageCounts, mapping: np.ndarray) -> dict[str, Any]:
    mapped = np.where(counts.rows < len(mapping), mapping[np.minimum(counts.rows, len(mapping) - 1)], -1)
    n = int(counts.counts.sum())
    correct = int(counts.counts[mapped == counts.cols].sum())
    return {
        "prediction": str(counts.prediction),
        "label": str(counts.label),
        "n_pixels": n,
        "accuracy": _num(correct / n) if n else None,
    }


def _notes(
    config: EvaluateConfig,
    n_clusters: int,
    n_classes: int,
    mapping: np.ndarray,
    fit_table: np.ndarray,
    missing: np.ndarray,
) -> list[str]:
    notes = []
    if not config.many_to_one and n_clusters > n_classes:
        notes.append(
            f"{n_clusters} clusters for {n_classes} classes with 1-to-1 matching: "
            f"{n_clusters - n_classes} clusters map to no class and count as errors; "
            "use many-to-one matching for an over-clustering head"
        )
    if not config.many_to_one and n_clusters < n_classes:
        notes.append(f"{n_clusters} clusters for {n_classes} classes: some classes can never be matched")
    empty = [i for i in range(n_clusters) if fit_table[i].sum() == 0 and mapping[i] < 0]
    if empty:
        notes.append(f"clusters {empty} have no labelled pixels in the fit set: mapped to no class")
    if missing.sum():
        notes.append(f"{int(missing.sum())} labelled pixels have no prediction (nodata): counted as errors")
    return notes


def _markdown(report: dict[str, Any]) -> str:
    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    lines = [
        "# Evaluation report",
        "",
        f"- protocol: **{report['protocol']}** — {report['protocol_description']}",
        f"- matching: {report['matching']}; {report['n_clusters']} clusters, {report['n_classes']} classes"
        + (f" (dataset `{report['dataset']}`)" if report["dataset"] else ""),
        f"- scored: {len(report['scored']['predictions'])} images, {report['n_pixels']} labelled pixels"
        + (
            f"; mapping fitted on {len(report['fit']['predictions'])} other images, "
            f"{report['fit']['n_pixels']} pixels"
            if report["fit"]
            else ""
        ),
        f"- NMI and ARI: {report['nmi_ari_method']}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| pixel accuracy | {fmt(report['accuracy'])} |",
        f"| mean IoU | {fmt(report['miou'])} |",
        f"| NMI | {fmt(report['nmi'])} |",
        f"| ARI | {fmt(report['ari'])} |",
    ]
    if "transductive" in report:
        t = report["transductive"]
        lines += [
            f"| accuracy, transductive (comparison) | {fmt(t['accuracy'])} |",
            f"| mean IoU, transductive (comparison) | {fmt(t['miou'])} |",
        ]
    lines += ["", "## Per-class IoU", "", "| class | IoU |", "|---|---|"]
    lines += [f"| {name} | {fmt(v)} |" for name, v in report["per_class_iou"].items()]
    lines += ["", "## Mapping (cluster → class)", "", "| cluster | name | class |", "|---|---|---|"]
    for cluster, cid in report["mapping"].items():
        name = _cell(report["cluster_names"].get(cluster, cluster_label(int(cluster), None)))
        lines.append(f"| {cluster} | {name} | {'none' if cid is None else report['classes'][cid]} |")
    if report["notes"]:
        lines += ["", "## Notes", "", *[f"- {n}" for n in report["notes"]]]
    lines += ["", "## Per image", "", "| prediction | pixels | accuracy |", "|---|---|---|"]
    lines += [
        f"| {_short(r['prediction'])} | {r['n_pixels']} | {fmt(r['accuracy'])} |" for r in report["per_image"]
    ]
    files = report["files"]
    lines += [
        "",
        "## Figures",
        "",
        f"![confusion matrix]({files['confusion_png']})",
        "",
        f"![cluster composition]({files['clusters_png']})",
        "",
        "Side by side: image (when given) | prediction coloured by its mapped class "
        "(grey: mapped to no class, black: no prediction or no label) | ground truth.",
        "",
        *[f"![example]({p})" for p in files["examples"]],
        "",
    ]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """Text safe in a markdown table cell (a user's cluster name may hold a ``|``)."""
    return text.replace("|", "\\|")


def _short(path: str) -> str:
    """Folder and file name: stems repeat across folders (e.g. one folder per survey tile)."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


# --- figures ------------------------------------------------------------------------------


def _save_figure(fig: Any, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _heatmap(
    matrix: np.ndarray, rows: list[str], cols: list[str], title: str, xlabel: str, ylabel: str, path: Path
) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.2 + 0.55 * len(cols), 1.2 + 0.4 * len(rows)))
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if matrix.size <= 40 * 12:
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(
                j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "black"
            )
    return _save_figure(fig, path)


def _plot_confusion(confusion: np.ndarray, classes: tuple[str, ...], path: Path) -> Path:
    """True class (rows) x mapped prediction (columns), each row normalised: per-class recall."""
    by_true = confusion.T.astype(np.float64)
    share = by_true / np.maximum(by_true.sum(axis=1, keepdims=True), 1)
    return _heatmap(
        share,
        list(classes),
        [*classes, "none"],
        "confusion after mapping (row-normalised)",
        "predicted",
        "true",
        path,
    )


def _plot_clusters(
    table: np.ndarray, classes: tuple[str, ...], mapping: np.ndarray, labels: list[str], path: Path
) -> Path:
    """What each cluster holds: cluster (rows) x true class (columns), each row normalised."""
    share = table / np.maximum(table.sum(axis=1, keepdims=True), 1)
    rows = [f"{i} {labels[i]} → {classes[c] if c >= 0 else 'none'}" for i, c in enumerate(mapping)]
    return _heatmap(
        share, rows, list(classes), "cluster composition (row-normalised)", "true class", "cluster", path
    )


def _sample(n: int, config: EvaluateConfig) -> list[int]:
    if config.n_examples >= n:
        return list(range(n))
    rng = np.random.default_rng(config.seed)
    return sorted(int(i) for i in rng.choice(n, size=config.n_examples, replace=False))


def _side_by_side(
    prediction: Path,
    label: Path,
    image: Path | None,
    mapping: np.ndarray,
    colours: list[tuple[int, int, int]],
    dataset: LabelDataset | None,
    config: EvaluateConfig,
    target: Path,
) -> Path:
    with open_dataset(prediction) as src:
        ids = _read_prediction(src, Window(0, 0, src.width, src.height), prediction)
    step = max(1, math.ceil(max(ids.shape) / config.preview_size))
    ids = ids[::step, ::step]
    truth = read_label(label, dataset)[::step, ::step]
    truth = np.where(truth == config.ignore, IGNORE, truth)
    n_classes = len(colours) - 1
    lut = np.full(256, IGNORE, np.uint8)
    lut[: len(mapping)] = np.where(mapping >= 0, mapping, n_classes)
    panels = []
    titles = []
    if image is not None:
        panels.append(_display_rgb(image, ids.shape))
        titles.append(image.name)
    panels += [colourize(lut[ids], colours), colourize(truth, colours)]
    titles += ["prediction (mapped)", "ground truth"]
    gap = np.full((ids.shape[0], 4, 3), 255, np.uint8)
    row = np.concatenate([p for panel in panels for p in (panel, gap)][:-1], axis=1)
    return save_png(_with_titles(row, titles, ids.shape[1] + 4), target, max_size=None)


def _with_titles(row: np.ndarray, titles: list[str], pitch: int, height: int = 16) -> np.ndarray:
    """A white strip above the panels naming each one."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (row.shape[1], height), "white")
    draw = ImageDraw.Draw(strip)
    for i, title in enumerate(titles):
        draw.text((i * pitch + 3, 2), title, fill="black")
    return np.concatenate([np.asarray(strip), row], axis=0)


def _display_rgb(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A source image as 8-bit RGB at ``shape``: first three bands, 2-98 % stretch per band."""
    with open_dataset(path) as src:
        bands = [1, 2, 3] if src.count >= 3 else [1, 1, 1]
        data = src.read(bands, out_shape=(3, *shape), resampling=Resampling.nearest).astype(np.float64)
        valid = src.read_masks(1, out_shape=shape, resampling=Resampling.nearest) > 0
    out = np.zeros((*shape, 3), np.uint8)
    for b in range(3):
        values = data[b][valid]
        if values.size == 0:
            continue
        lo, hi = np.percentile(values, (2, 98))
        scaled = (data[b] - lo) / max(hi - lo, 1e-9)
        out[..., b] = np.clip(scaled * 255, 0, 255).astype(np.uint8)
    out[~valid] = 0
    return out
