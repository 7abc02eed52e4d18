"""The package's face: ``import geoseg`` exposes the stage functions, configs and errors
without loading torch or GDAL, and the import paths of moved modules still work."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys

import pytest

import geoseg
from geoseg._moved import MOVED


def test_import_geoseg_is_light_and_exposes_the_stages() -> None:
    code = (
        "import json, sys, geoseg\n"
        "heavy = sorted(m for m in ('torch', 'rasterio', 'zarr', 'prefect') if m in sys.modules)\n"
        "print(json.dumps([heavy, callable(geoseg.segment)]))\n"
    )
    heavy, is_callable = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert heavy == [] and is_callable


def test_every_exported_name_is_the_library_object() -> None:
    modules = {"ingest", "train", "segment", "vectorize", "evaluate"}  # named as their functions
    functions = {"kmeans_baseline", "random_net_baseline", "superpixel_baseline"}
    for name in set(geoseg.__all__) - {"__version__"}:
        value = getattr(geoseg, name)
        if name in modules:  # the stage's module, callable as the stage
            assert value is importlib.import_module(f"geoseg.{name}") and callable(value), name
            assert inspect.isfunction(getattr(value, name)), name
        else:
            assert inspect.isfunction(value) if name in functions else inspect.isclass(value), name
    assert modules | functions <= set(geoseg.__all__)
    assert issubclass(geoseg.InputError, geoseg.GeosegError)


def test_a_stage_is_called_through_the_package_and_through_its_old_path(tmp_path) -> None:
    """``geoseg.vectorize(...)`` and ``geoseg.vectorize.vectorize(...)`` are one call, also
    after the module was imported by name; the module is still reached by from-imports."""
    module = importlib.import_module("geoseg.vectorize")
    assert geoseg.vectorize is module and geoseg.vectorize.vectorize is module.vectorize
    missing = tmp_path / "gone_clusters.tif"
    for call in (geoseg.vectorize, geoseg.vectorize.vectorize):
        with pytest.raises(geoseg.InputError, match="cluster raster not found"):
            call(missing)
    assert geoseg.segment.segment is importlib.import_module("geoseg.segment").segment
    assert geoseg.ingest.ingest.__module__ == "geoseg.ingest"
    from geoseg.segment import SegmentResult

    assert SegmentResult.__module__ == "geoseg.segment"


def test_old_import_paths_give_the_moved_modules_themselves() -> None:
    for old, new in MOVED.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
        assert importlib.import_module(new).__spec__.name == new  # its own spec, not the alias's
    from geoseg.bundle import load_bundle
    from geoseg.models.bundle import load_bundle as moved

    assert load_bundle is moved
    from geoseg.stac import raster_item  # geoseg.stac was a module: its names stay
    from geoseg.stac.items import raster_item as item_writer

    assert raster_item is item_writer


def test_evaluate_the_package_is_reached_as_the_stage_was() -> None:
    """geoseg.evaluate became a package (counts, report, figures, stage): the stage function
    keeps its three ways in, also after the package and its parts were imported."""
    code = (
        "import json, geoseg, geoseg.evaluate.report\n"
        "from geoseg.evaluate import evaluate\n"
        "from geoseg.evaluate.stage import evaluate as stage_evaluate\n"
        "print(json.dumps([geoseg.evaluate.evaluate is evaluate is stage_evaluate, evaluate.__module__]))\n"
    )
    same, module = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True))
    assert same and module == "geoseg.evaluate.stage"
    parts = importlib.import_module("geoseg.evaluate")
    assert set(parts.__all__) == {"counts", "evaluate", "figures", "report", "stage"}
    assert [name for name in parts.__all__ if not hasattr(parts, name)] == []
