"""The report of an evaluation: report.json (every figure, the protocol that produced it,
the mapping, per image) and report.md, the same for a person, rendered from the JSON.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from geoseg import __version__
from geoseg.config import EvaluateConfig
from geoseg.datasets import LabelDataset
from geoseg.evaluate.counts import Evaluation, ImageCounts, Tally
from geoseg.io.style import cluster_label
from geoseg.messages import plural

__all__ = ["PROTOCOLS", "REPORT_JSON", "REPORT_MD", "markdown", "report_json"]

REPORT_JSON = "report.json"
REPORT_MD = "report.md"

PROTOCOLS = {
    "honest": "cluster-to-class mapping fitted on the --fit-on set, metrics on the other set",
    "transductive": "mapping fitted and metrics computed on the same set (IIC's published protocol)",
}


def report_json(
    evaluation: Evaluation,
    scored: tuple[list[tuple[Path, Path]], Tally],
    fit: tuple[list[tuple[Path, Path]], Tally] | None,
    cluster_labels: list[str],
    dataset: LabelDataset | None,
    config: EvaluateConfig,
) -> dict[str, Any]:
    """report.json's contents, less ``files`` (the stage adds it once the figures exist).

    ``scored`` and ``fit`` are each set's pairs and counts; ``fit`` is None for a
    transductive run (the mapping was fitted on the scored set)."""
    e, result = evaluation, evaluation.scores
    protocol = "transductive" if fit is None else "honest"
    report: dict[str, Any] = {
        "geoseg_version": __version__,
        "protocol": protocol,
        "protocol_description": PROTOCOLS[protocol],
        "matching": "many-to-one" if config.many_to_one else "hungarian",
        "dataset": dataset.name if dataset else None,
        "classes": list(e.classes),
        "cluster_names": {str(i): label for i, label in enumerate(cluster_labels)},
        "n_classes": len(e.classes),
        "n_clusters": e.n_clusters,
        "n_pixels": result.n_pixels,
        "n_missing": int(e.missing.sum()),
        "accuracy": _num(result.accuracy),
        "miou": _num(result.miou),
        "per_class_iou": {c: _num(v) for c, v in zip(e.classes, result.per_class_iou, strict=True)},
        "nmi": _num(e.nmi),
        "ari": _num(e.ari),
        "nmi_ari_method": "exact, from the contingency table of all scored pixels (no subsample)",
        "mapping": _mapping_json(e.mapping),
        "cluster_class_counts": e.table.tolist(),
        "scored": _set_json(*scored),
        "fit": _set_json(*fit) if fit is not None else None,
        "ignore": config.ignore,
        "notes": _notes(config, e),
    }
    if e.transductive is not None:
        own, trans = e.transductive
        report["transductive"] = {
            "description": "for comparison only: " + PROTOCOLS["transductive"],
            "accuracy": _num(trans.accuracy),
            "miou": _num(trans.miou),
            "mapping": _mapping_json(own),
        }
    report["per_image"] = [_image_json(counts, e.mapping) for counts in scored[1].images]
    return report


def _num(value: float) -> float | None:
    """JSON has no NaN: undefined metrics are null."""
    return None if value is None or math.isnan(value) else round(float(value), 6)


def _mapping_json(mapping: np.ndarray) -> dict[str, int | None]:
    return {str(i): (int(c) if c >= 0 else None) for i, c in enumerate(mapping)}


def _set_json(pairs: list[tuple[Path, Path]], tally: Tally) -> dict[str, Any]:
    return {
        "predictions": [str(p) for p, _ in pairs],
        "labels": [str(q) for _, q in pairs],
        "n_pixels": int(tally.full.sum()),
    }


def _image_json(counts: ImageCounts, mapping: np.ndarray) -> dict[str, Any]:
    mapped = np.where(counts.rows < len(mapping), mapping[np.minimum(counts.rows, len(mapping) - 1)], -1)
    n = int(counts.counts.sum())
    correct = int(counts.counts[mapped == counts.cols].sum())
    return {
        "prediction": str(counts.prediction),
        "label": str(counts.label),
        "n_pixels": n,
        "accuracy": _num(correct / n) if n else None,
    }


def _notes(config: EvaluateConfig, evaluation: Evaluation) -> list[str]:
    n_clusters, n_classes = evaluation.n_clusters, len(evaluation.classes)
    mapping, fit_table, missing = evaluation.mapping, evaluation.fit_table, evaluation.missing
    notes = []
    if not config.many_to_one and n_clusters > n_classes:
        notes.append(
            f"{plural(n_clusters, 'cluster')} for {plural(n_classes, 'class')} with 1-to-1 matching: "
            f"{plural(n_clusters - n_classes, 'cluster')} map to no class and count as errors; "
            "use many-to-one matching for an over-clustering head"
        )
    if not config.many_to_one and n_clusters < n_classes:
        notes.append(
            f"{plural(n_clusters, 'cluster')} for {plural(n_classes, 'class')}: some classes can never be matched"
        )
    empty = [i for i in range(n_clusters) if fit_table[i].sum() == 0 and mapping[i] < 0]
    if empty:
        notes.append(f"clusters {empty} have no labelled pixels in the fit set: mapped to no class")
    if missing.sum():
        notes.append(f"{int(missing.sum())} labelled pixels have no prediction (nodata): counted as errors")
    return notes


def markdown(report: dict[str, Any]) -> str:
    """report.md: the report's figures, mapping, notes and images for a person."""

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    lines = [
        "# Evaluation report",
        "",
        f"- protocol: **{report['protocol']}** — {report['protocol_description']}",
        f"- matching: {report['matching']}; {plural(report['n_clusters'], 'cluster')}, "
        f"{plural(report['n_classes'], 'class')}"
        + (f" (dataset `{report['dataset']}`)" if report["dataset"] else ""),
        f"- scored: {plural(len(report['scored']['predictions']), 'image')}, "
        f"{plural(report['n_pixels'], 'labelled pixel')}"
        + (
            f"; mapping fitted on {plural(len(report['fit']['predictions']), 'other image')}, "
            f"{plural(report['fit']['n_pixels'], 'pixel')}"
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
