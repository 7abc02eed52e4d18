"""The figures of an evaluation, as PNGs beside the report: the confusion matrix after the
mapping, what each cluster holds, and side-by-side examples (image | prediction coloured by
its mapped class | ground truth).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from geoseg.config import EvaluateConfig
from geoseg.datasets import IGNORE, LabelDataset, read_label
from geoseg.evaluate.counts import Evaluation, read_prediction
from geoseg.io.fileio import atomic_path
from geoseg.io.preview import colourize, save_png, with_legend
from geoseg.io.sources import open_dataset

__all__ = [
    "CLUSTERS_PNG",
    "CONFUSION_PNG",
    "EXAMPLES_DIR",
    "UNMAPPED_COLOUR",
    "plot_clusters",
    "plot_confusion",
    "write_figures",
]

CONFUSION_PNG = "confusion.png"
CLUSTERS_PNG = "clusters.png"
EXAMPLES_DIR = "examples"
UNMAPPED_COLOUR = (128, 128, 128)


def write_figures(
    out_dir: Path,
    evaluation: Evaluation,
    pairs: list[tuple[Path, Path]],
    images: list[Path] | None,
    cluster_labels: list[str],
    dataset: LabelDataset | None,
    config: EvaluateConfig,
) -> dict[str, Any]:
    """Write the figures into ``out_dir`` (each atomically; an earlier run's examples that
    this run did not write are removed) and return their names relative to it."""
    e = evaluation
    colours = _class_colours(dataset, len(e.classes))
    files = {
        "confusion_png": plot_confusion(e.scores.confusion, e.classes, out_dir / CONFUSION_PNG).name,
        "clusters_png": plot_clusters(
            e.table, e.classes, e.mapping, cluster_labels, out_dir / CLUSTERS_PNG
        ).name,
    }
    legend = list(zip(colours[: len(e.classes)], e.classes, strict=True))
    if (np.asarray(e.mapping) < 0).any():
        legend.append((UNMAPPED_COLOUR, "cluster mapped to no class"))
    examples: list[str] = []
    for index in _sample(len(pairs), config):
        prediction, label = pairs[index]
        target = out_dir / EXAMPLES_DIR / f"{index:03d}_{prediction.stem}.png"
        image = images[index] if images else None
        _side_by_side(prediction, label, image, e.mapping, colours, legend, dataset, config, target)
        examples.append(str(target.relative_to(out_dir)))
    for stale in sorted((out_dir / EXAMPLES_DIR).glob("*.png")):  # an earlier run's examples
        if str(stale.relative_to(out_dir)) not in examples:
            stale.unlink()
    return {**files, "examples": examples}


def _class_colours(dataset: LabelDataset | None, n_classes: int) -> list[tuple[int, int, int]]:
    if dataset is not None:
        colours = list(dataset.colours)
    else:
        from geoseg.models.bundle import default_clusters

        colours = [c.colour for c in default_clusters(n_classes)]
    return [*colours, UNMAPPED_COLOUR]  # id n_classes: a cluster mapped to no class


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


def plot_confusion(confusion: np.ndarray, classes: tuple[str, ...], path: Path) -> Path:
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


def plot_clusters(
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
    legend: list[tuple[tuple[int, int, int], str]],
    dataset: LabelDataset | None,
    config: EvaluateConfig,
    target: Path,
) -> Path:
    """The source image (when given), the mapped prediction and the ground truth side by
    side, titled, with the classes' legend on the right (both maps use the class colours)."""
    with open_dataset(prediction) as src:
        ids = read_prediction(src, Window(0, 0, src.width, src.height), prediction)
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
    return save_png(with_legend(_with_titles(row, titles, ids.shape[1] + 4), legend), target, max_size=None)


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
