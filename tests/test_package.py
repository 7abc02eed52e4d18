"""The package's face: ``import geoseg`` exposes the stage functions, configs and errors
without loading torch or GDAL, the import paths of moved modules still work, and every
module says what its public names are (``__all__``)."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import subprocess
import sys
import types

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


def all_problems(module: types.ModuleType) -> list[str]:
    """What is wrong with ``module.__all__``: missing, not a list of strings, a name twice, or
    a name the module does not define (for a package, a submodule counts once imported)."""
    names = getattr(module, "__all__", None)
    if names is None:
        return [f"{module.__name__}: no __all__"]
    if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
        return [f"{module.__name__}: __all__ is not a list of names"]
    problems = [f"{module.__name__}: {n!r} listed twice" for n in sorted(set(names)) if names.count(n) > 1]
    return problems + [f"{module.__name__}: {n!r} is not defined" for n in names if not hasattr(module, n)]


def package_modules() -> list[types.ModuleType]:
    """Every module of geoseg, imported; a module that fails to import fails the test."""

    def fail(name: str) -> None:
        raise AssertionError(f"{name} does not import")

    found = [geoseg]
    for info in pkgutil.walk_packages(geoseg.__path__, "geoseg.", onerror=fail):
        found.append(importlib.import_module(info.name))
    return found


def test_every_module_lists_its_public_names_in_all() -> None:
    modules = package_modules()
    assert {"geoseg.cli", "geoseg.io.store", "geoseg.models.registry", "geoseg.iic.loss"} <= {
        m.__name__ for m in modules
    }
    assert [p for module in modules for p in all_problems(module)] == []


def test_the_all_check_sees_a_missing_all_and_a_name_not_defined() -> None:
    bare = types.ModuleType("geoseg.bare")
    listed = types.ModuleType("geoseg.listed")
    listed.__all__ = ["here", "gone", "here"]  # type: ignore[attr-defined]
    listed.here = 1  # type: ignore[attr-defined]
    assert all_problems(bare) == ["geoseg.bare: no __all__"]
    assert all_problems(listed) == [
        "geoseg.listed: 'here' listed twice",
        "geoseg.listed: 'gone' is not defined",
    ]


def test_what_the_readme_writes_into_a_checkout_is_ignored_by_git() -> None:
    """README section 7's registry (`models/`) and the stage outputs at the root are ignored;
    the package's own `geoseg/models/` and `tests/models/` are not."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert (root / ".git").exists(), "the tests run from a git checkout (README: make test)"

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=root).returncode == 0

    for path in ("models/v0001/model.json", "models/registry.json", "model/model.json", "predictions/x.tif"):
        assert ignored(path), path
    for path in ("geoseg/models/align.py", "tests/models/test_align.py"):
        assert not ignored(path), path


def test_pyproject_applies_without_setuptools_deprecation_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """``project.license`` as a TOML table is deprecated by setuptools (a warning twice in every
    ``make setup``): the pyproject is applied by the installed setuptools with warnings as
    errors, as the build backend applies it; an SPDX string needs setuptools >= 77."""
    import tomllib
    import warnings
    from pathlib import Path

    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the pyproject's paths (readme, packages) are relative to it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = apply_configuration(Distribution(), str(root / "pyproject.toml"))
    assert dist.metadata.license_expression == "MIT"
    assert (
        "setuptools>=77" in tomllib.loads((root / "pyproject.toml").read_text())["build-system"]["requires"]
    )
