"""`geoseg demo`: the README's main command, shrunk (small scene, 2 steps) but otherwise as users run it."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pystac

from geoseg.cli import main
from geoseg.stac.catalog import export_catalog, validate_run_catalog

ROOT = Path(__file__).resolve().parents[2]


def test_demo_prints_where_every_output_is(prefect_harness: None, tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path / "demo"), "--size", "192", "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    paths = {label.strip(): Path(p) for label, p in re.findall(r"^  ([^/]+?)\s+(/\S+)", printed, re.M)}
    for label in (
        "cluster map (COG)",
        "confidence (COG)",
        "polygons (GeoPackage)",
        "QGIS style",
        "evaluation report",
        "STAC catalog",
        "model bundle",
    ):
        assert label in paths, printed
        assert paths[label].exists(), (label, paths[label])
    report = json.loads(paths["evaluation report"].read_text())
    assert report["dataset"] == "synthetic"
    assert validate_run_catalog(paths["STAC catalog"].parent) >= 7
    # Exported elsewhere (as catalogs/demo/ is), links and asset hrefs still resolve.
    exported = export_catalog(paths["STAC catalog"].parent, tmp_path / "example")
    assert validate_run_catalog(exported.parent) >= 7


def test_demo_on_the_users_raster_segments_it_without_evaluation(
    prefect_harness: None, shared_data: Path, tmp_path: Path, capsys
) -> None:
    tile = shared_data / "lausanne" / "img" / "1091-322_00.tif"
    assert tile.is_file()
    assert main(["demo", "--out", str(tmp_path / "mine"), "--src", str(tile), "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "evaluation report" not in printed
    clusters = tmp_path / "mine" / "run" / "predictions" / "1091-322_00_clusters.tif"
    assert str(clusters) in printed and clusters.is_file()
    assert not (tmp_path / "mine" / "scene").exists()  # no scene generated


def test_demo_on_a_missing_raster_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path), "--src", str(tmp_path / "nope.tif")]) == 2
    assert "nope.tif" in capsys.readouterr().err


def test_repository_example_catalog_loads_and_validates() -> None:
    """catalogs/demo/: the demo run's catalog (JSON only; its assets appear with `make demo`)."""
    root = ROOT / "catalogs" / "demo"
    assert validate_run_catalog(root, check_assets=False) >= 7
    catalog = pystac.Catalog.from_file(str(root / "catalog.json"))
    kinds = sorted(i.properties["geoseg:kind"] for i in catalog.get_items(recursive=True))
    assert kinds == ["model", "prediction", "survey"]
    prediction = next(
        i for i in catalog.get_items(recursive=True) if i.properties["geoseg:kind"] == "prediction"
    )
    assert prediction.assets["clusters"].href.endswith("demo-out/run/predictions/scene_clusters.tif")
    # the outputs' names today (the example was once left with names segment no longer writes)
    from geoseg.segment import output_paths
    from geoseg.vectorize import vector_style_path

    paths = output_paths(Path("scene.tif"), Path("."))
    written = {path.name for path in [*paths.values(), vector_style_path(paths["gpkg"])]}
    assert {Path(a.href).name for a in prediction.assets.values()} <= written


def test_example_catalog_is_small_json_only() -> None:
    files = [p for p in (ROOT / "catalogs" / "demo").rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".json" for p in files)
    assert sum(p.stat().st_size for p in files) < 200_000


DASK_INFO = re.compile(
    r"distributed\.\S+ - INFO - |^INFO (State start|Scheduler at|Start Nanny|Register worker|"
    r"Starting worker|Receive client|Remove client|Retire worker|Closing Nanny|Lost all workers)",
    re.M,
)


def test_demo_console_is_quiet_and_says_what_it_does(tmp_path: Path) -> None:
    """`geoseg demo` as a user runs it (a subprocess, no Prefect server configured), tiny settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "DASK_")) and k not in ("DO_NOT_TRACK", "PYTHONPATH")
    }
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(ROOT))
    (tmp_path / "prefect-home").mkdir()
    demo = [sys.executable, "-m", "geoseg.cli", "demo", "--out", str(tmp_path / "demo"), "--size", "192"]
    run = subprocess.run(
        [*demo, "--steps", "2"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # the console as the user sees it, in order
        text=True,
        timeout=600,
    )
    console = run.stdout
    assert run.returncode == 0, console[-4000:]
    assert "ERROR" not in console and "Traceback" not in console, console
    assert not DASK_INFO.search(console), console
    assert "telemetry" not in console.lower(), console
    # One temporary API server, the demo's, said in one line of ours: none started again
    # inside the Dask worker (whose Prefect would print its own "Starting temporary server"),
    # and no bare "See https://..." line of Prefect's banner.
    assert console.count("INFO a temporary Prefect server for this run on http://127.0.0.1:") == 1, console
    assert "Starting temporary server" not in console and "\nSee https://" not in console, console
    # What it is about to do, each step's progress, where the outputs are; on one screen.
    assert console.startswith("INFO geoseg demo: the pipeline flow on the generated scene"), console
    assert re.search(r"train: 2/2 step \(100%\).*ETA 00:00, loss_a=\S+, loss_b=", console), console
    assert re.search(r"segment scene\.tif: \d+/\d+ win \(100%\)", console), console
    assert "geoseg demo finished: run folder" in console
    assert len(console.splitlines()) <= 50, console
    # The temporary server had a database of its own: not the user's server's in PREFECT_HOME.
    assert not list((tmp_path / "prefect-home").glob("*.db")), list((tmp_path / "prefect-home").iterdir())


def test_verbose_brings_dask_logs_back() -> None:
    """--verbose sets Dask's level for this process and the worker processes it starts."""
    env = {k: v for k, v in os.environ.items() if k != "DASK_LOGGING__DISTRIBUTED"}
    env["PYTHONPATH"] = str(ROOT)
    code = (
        "import logging, os; from geoseg.cli import configure_logging; configure_logging({}); "
        "import distributed; print(os.environ['DASK_LOGGING__DISTRIBUTED'], "
        "logging.getLogger('distributed.scheduler').getEffectiveLevel())"
    )
    quiet, verbose = (
        subprocess.run(
            [sys.executable, "-c", code.format(flag)], env=env, cwd=ROOT, capture_output=True, text=True
        ).stdout.split()
        for flag in (False, True)
    )
    assert quiet == ["warning", str(logging.WARNING)]
    assert verbose == ["debug", str(logging.DEBUG)]
