"""Unsupervised segmentation metrics over confusion matrices (pure numpy, no I/O).

Everything here works on small count tables, never on pixel arrays the size of a data
set: `confusion_matrix` reduces one image (or one block) to a 256 x 256 table of counts
that the caller sums, so evaluation streams image by image.

Conventions:

- Predictions are cluster ids 0..254; 255 is "no prediction" (the raster's nodata).
- Labels are class ids 0..254; 255 (and the caller's ``ignore`` value) are ignored:
  ignored pixels never enter any count.
- A *table* is (n_clusters, n_classes): rows are clusters, columns are classes.
- A *mapping* gives each cluster a class id, or -1 when it is mapped to nothing (its
  pixels are then errors). Labelled pixels without a prediction are errors too.
- NMI and ARI are computed exactly from the contingency table (no pixel subsample is
  needed): they equal scikit-learn's ``normalized_mutual_info_score`` (arithmetic mean)
  and ``adjusted_rand_score`` on the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = [
    "NO_ID",
    "UNMAPPED",
    "Scores",
    "ari",
    "confusion_matrix",
    "hungarian_mapping",
    "majority_mapping",
    "mapped_confusion",
    "mean_iou",
    "nmi",
    "per_class_iou",
    "pixel_accuracy",
    "score",
]

NO_ID = 255  # "no prediction" in cluster rasters, "ignore" in label rasters
UNMAPPED = -1


def confusion_matrix(pred: np.ndarray, target: np.ndarray, ignore: int = NO_ID) -> np.ndarray:
    """Counts of (cluster id, class id) pairs in one image: a (256, 256) int64 table.

    Pixels whose target is ``ignore`` or 255 are dropped. Row 255 counts labelled pixels
    that have no prediction. Both arrays must have the same shape and values in 0..255.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} != label shape {target.shape}")
    pred = np.asarray(pred).ravel()
    target = np.asarray(target).ravel()
    for name, arr in (("prediction", pred), ("label", target)):
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) > 255):
            raise ValueError(f"{name} values must be in 0..255")
    keep = (target != ignore) & (target != NO_ID)
    codes = pred[keep].astype(np.int64) * 256 + target[keep].astype(np.int64)
    return np.bincount(codes, minlength=256 * 256).reshape(256, 256)


def hungarian_mapping(table: np.ndarray) -> np.ndarray:
    """1-to-1 mapping of clusters to classes maximising matched pixels (scipy's Hungarian).

    Rectangular tables are allowed: with more clusters than classes the extra clusters
    map to nothing (-1); with fewer, some classes receive no cluster. A cluster with no
    pixels in the table maps to nothing too: the data gives no reason for any class
    (this matters when the mapping is fitted on one set and applied to another).
    """
    table = np.asarray(table)
    mapping = np.full(table.shape[0], UNMAPPED, np.int64)
    used = np.flatnonzero(table.sum(axis=1) > 0)
    rows, cols = linear_sum_assignment(table[used], maximize=True)
    mapping[used[rows]] = cols
    return mapping


def majority_mapping(table: np.ndarray) -> np.ndarray:
    """Many-to-one mapping: each cluster to the class most of its pixels belong to.

    Clusters with no pixels in the table map to nothing (-1). This is the matching for
    over-clustering heads (k > number of classes); it never matches fewer pixels than
    the 1-to-1 mapping on the same table.
    """
    table = np.asarray(table)
    mapping = table.argmax(axis=1).astype(np.int64)
    mapping[table.sum(axis=1) == 0] = UNMAPPED
    return mapping


def mapped_confusion(table: np.ndarray, mapping: np.ndarray, missing: np.ndarray | None = None) -> np.ndarray:
    """Class-level confusion (n_classes + 1, n_classes) after mapping clusters to classes.

    Rows are predicted classes plus a last row "no class" (clusters mapped to -1 and
    labelled pixels without prediction); columns are true classes.
    """
    table = np.asarray(table, np.int64)
    n_classes = table.shape[1]
    out = np.zeros((n_classes + 1, n_classes), np.int64)
    rows = np.where(np.asarray(mapping) >= 0, mapping, n_classes)
    np.add.at(out, rows, table)
    if missing is not None:
        out[n_classes] += np.asarray(missing, np.int64)
    return out


def pixel_accuracy(confusion: np.ndarray) -> float:
    """Share of labelled pixels whose mapped prediction equals the label (NaN if none)."""
    total = int(confusion.sum())
    n = confusion.shape[1]
    correct = int(np.trace(confusion[:n, :n]))
    return correct / total if total else float("nan")


def per_class_iou(confusion: np.ndarray) -> np.ndarray:
    """IoU per class: TP / (TP + FP + FN); NaN for a class absent from labels and predictions."""
    n = confusion.shape[1]
    tp = np.diag(confusion[:n, :n]).astype(np.float64)
    predicted = confusion[:n].sum(axis=1).astype(np.float64)  # TP + FP
    actual = confusion.sum(axis=0).astype(np.float64)  # TP + FN
    union = predicted + actual - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def mean_iou(iou: np.ndarray) -> float:
    """Mean over classes with a defined IoU (present in labels or predictions)."""
    defined = iou[~np.isnan(iou)]
    return float(defined.mean()) if defined.size else float("nan")


def _nonempty(contingency: np.ndarray) -> np.ndarray:
    c = np.asarray(contingency, np.int64)
    return c[c.sum(axis=1) > 0][:, c.sum(axis=0) > 0]


def nmi(contingency: np.ndarray) -> float:
    """Normalised mutual information (arithmetic mean of entropies), exact from counts.

    Same special cases as scikit-learn: two single-cluster labellings score 1, a zero
    mutual information scores 0.
    """
    c = _nonempty(contingency)
    if c.shape[0] == c.shape[1] == 1 or c.size == 0:
        return 1.0
    if c.shape[0] == 1 or c.shape[1] == 1:
        return 0.0
    n = float(c.sum())
    rows = c.sum(axis=1).astype(np.float64)
    cols = c.sum(axis=0).astype(np.float64)
    i, j = np.nonzero(c)
    nij = c[i, j].astype(np.float64)
    mi = float(np.sum(nij / n * (np.log(nij) + math.log(n) - np.log(rows[i]) - np.log(cols[j]))))
    if mi <= 0.0:
        return 0.0
    h_rows = float(-np.sum(rows / n * np.log(rows / n)))
    h_cols = float(-np.sum(cols / n * np.log(cols / n)))
    return mi / ((h_rows + h_cols) / 2.0)


def ari(contingency: np.ndarray) -> float:
    """Adjusted Rand index, exact from counts (Python integers: no overflow on large sets)."""
    c = _nonempty(contingency)
    n = int(c.sum())
    sum_sq = sum(int(v) ** 2 for v in c.ravel() if v)
    rows_sq = sum(int(v) ** 2 for v in c.sum(axis=1))
    cols_sq = sum(int(v) ** 2 for v in c.sum(axis=0))
    tp = sum_sq - n
    fp = rows_sq - sum_sq
    fn = cols_sq - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


@dataclass(frozen=True)
class Scores:
    """The metrics of one (table, mapping) pair."""

    n_pixels: int
    accuracy: float
    miou: float
    per_class_iou: np.ndarray
    confusion: np.ndarray  # (n_classes + 1, n_classes) after mapping


def score(table: np.ndarray, mapping: np.ndarray, missing: np.ndarray | None = None) -> Scores:
    """Accuracy, per-class IoU and mIoU of a cluster table under a mapping."""
    confusion = mapped_confusion(table, mapping, missing)
    iou = per_class_iou(confusion)
    return Scores(
        n_pixels=int(confusion.sum()),
        accuracy=pixel_accuracy(confusion),
        miou=mean_iou(iou),
        per_class_iou=iou,
        confusion=confusion,
    )
