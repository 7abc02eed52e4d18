"""The library side of ``geoseg demo``: the scene, the CPU settings, and the summary it prints.

The demo runs the ``pipeline`` flow (Prefect lives in ``flows/``; the library never imports
it): ``geoseg.cli`` imports ``flows.pipeline.run_demo`` lazily, which calls
:func:`demo_parameters` here and passes them to the flow. Without ``--src`` the scene is
generated (:mod:`geoseg.synthetic`) with ground truth, so the run is evaluated too; with
``--src`` the user's raster is segmented the same way, without evaluation.

The settings are chosen to finish well within 10 minutes on 2 CPU cores: a 768-pixel scene
at 0.25 m, 64-pixel patches, the ``small`` network, 120 training steps of 8 patches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geoseg.errors import InputError

__all__ = [
    "DEMO_K",
    "DEMO_PATCH",
    "DEMO_SEED",
    "DEMO_SIZE",
    "DEMO_STEPS",
    "demo_parameters",
    "describe",
    "summary",
]

DEMO_SIZE = 768
DEMO_SEED = 0
DEMO_PATCH = 64
DEMO_STEPS = 120
DEMO_K = 6


def demo_parameters(
    out: str | Path,
    src: str | Path | None = None,
    size: int = DEMO_SIZE,
    seed: int = DEMO_SEED,
    steps: int = DEMO_STEPS,
    k: int = DEMO_K,
    patch_size: int = DEMO_PATCH,
    dask_address: str | None = None,
) -> dict[str, Any]:
    """Parameters of the ``pipeline`` flow for the demo; generates the scene when no ``src``."""
    from geoseg.synthetic import generate_scene

    out = Path(out).resolve()
    if src is None:
        scene = generate_scene(out / "scene", size=size, seed=seed)
        sources, labels, dataset = [str(scene.image)], [str(scene.labels)], "synthetic"
    else:
        path = Path(src).resolve()
        if not path.is_file():
            raise InputError(f"demo source raster not found: {src}")
        sources, labels, dataset = [str(path)], None, None
    return {
        "src": sources,
        "out": str(out / "run"),
        "labels": labels,
        "dataset": dataset,
        "patch_size": patch_size,
        "steps": steps,
        "k": k,
        "preset": "small",
        "train": {"device": "cpu", "batch_size": 8, "checkpoint_every": 50},
        "segment": {"device": "cpu"},
        "dask_address": dask_address,
    }


def describe(parameters: dict[str, Any]) -> str:
    """What the demo is about to do, in one line (printed before the run starts)."""
    what = "the generated scene" if parameters["dataset"] == "synthetic" else parameters["src"][0]
    steps = "ingest, train, segment + vectorize" + (", evaluate" if parameters["labels"] else "")
    return (
        f"geoseg demo: the pipeline flow on {what} ({steps}); {parameters['steps']} training steps "
        f"of the {parameters['preset']} network on CPU, progress below; outputs in {parameters['out']}"
    )


def summary(result: dict[str, Any]) -> str:
    """What the demo wrote, one line per output a user opens (QGIS, a browser, a STAC tool)."""
    lines = [f"geoseg demo finished: run folder {result['run']}"]
    for p in result["predictions"]:
        lines.append(f"  cluster map (COG)      {p['clusters']}")
        lines.append(f"  confidence (COG)       {p['confidence']}")
        if p.get("gpkg"):
            lines.append(f"  polygons (GeoPackage)  {p['gpkg']}")
        for key in ("clusters_qml", "confidence_qml", "gpkg_qml"):
            if p.get(key):
                lines.append(f"  QGIS style             {p[key]}")
        lines.append(f"  preview (PNG)          {p['preview_png']}")
    if result.get("report"):
        report = Path(result["report"])
        lines.append(f"  evaluation report      {report} ({report.with_name('report.md').name} beside it)")
    lines.append(f"  model bundle           {result['model']}")
    lines.append(f"  STAC catalog           {result['catalog']}")
    states = ", ".join(
        f"{k}: {v if isinstance(v, str) else '/'.join(v)}" for k, v in result["states"].items()
    )
    lines.append(f"  steps                  {states}")
    return "\n".join(lines)
