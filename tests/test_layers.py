"""The import direction of the package (docs/architecture.md, "Layers"), read from the source
with ``ast``: a module imports only from its own layer or the layers below, never from a
higher one, never through an old (moved) import path, and no modules import each other in
a loop, counting imports inside functions (a lazy import is still a dependency); imports
under ``if TYPE_CHECKING:`` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from geoseg._moved import MOVED

ROOT = Path(__file__).resolve().parents[1]

# Bottom first. A name covers the module and, for a package, everything in it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        ("geoseg", "geoseg._moved", "geoseg.errors", "geoseg.messages", "geoseg.progress", "geoseg.config"),
    ),
    ("io", ("geoseg.io",)),
    (
        "data and networks",
        (
            "geoseg.datasets",
            "geoseg.metrics",
            "geoseg.synthetic",
            "geoseg.iic",
            "geoseg.picie",
            "geoseg.lgmi",
            "geoseg.cirs",
        ),
    ),
    ("methods", ("geoseg.methods",)),
    # a model's view of a raster: bands, device, probabilities; the default window
    ("inference", ("geoseg.inference", "geoseg.window_size")),
    ("stac items", ("geoseg.stac",)),  # items and the catalog writers: the registry publishes with them
    ("models", ("geoseg.models",)),
    ("run catalog", ("geoseg.stac.catalog",)),  # lists models (their bundles) beside surveys and predictions
    ("stages", ("geoseg.ingest", "geoseg.train", "geoseg.vectorize", "geoseg.baseline", "geoseg.evaluate")),
    ("stages on stages", ("geoseg.superpixels",)),  # the object-based baseline builds on baseline's writers
    # one raster strip by strip, and in row bands on a Dask cluster (refined by superpixels)
    ("strips", ("geoseg.strips", "geoseg.bands", "geoseg.distributed")),
    ("segment", ("geoseg.segment",)),  # refines with superpixels, vectorizes
    ("demo", ("geoseg.demo",)),  # the scene and settings of `geoseg demo` and the demo flow
    ("flows", ("flows",)),
    ("command line", ("geoseg.cli",)),  # `geoseg demo` runs the pipeline flow
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    files = sorted((ROOT / "geoseg").rglob("*.py")) + sorted((ROOT / "flows").rglob("*.py"))
    return {module_name(p): p for p in files}


def layer_of(module: str) -> int:
    best, depth = -1, -1
    for index, (_, names) in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > depth:
                best, depth = index, len(name)
    return best


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _imports(ast.Module([child], [])))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def imported_modules(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    found: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif node.level == 0 and node.module:
            targets = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                for alias in node.names
            ]
        else:
            raise AssertionError(f"{path}: relative import; the package imports by absolute names")
        found.update(t for t in targets if t.split(".")[0] in ("geoseg", "flows"))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = package_modules()
    return {name: imported_modules(path, known) for name, path in known.items()}


def test_every_module_has_a_layer() -> None:
    assert [m for m in package_modules() if layer_of(m) < 0] == []


def test_imports_run_only_downward(graph: dict[str, set[str]]) -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if target in graph and layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_no_old_import_paths_inside_the_package(graph: dict[str, set[str]]) -> None:
    old = [f"{m} imports {t}" for m, targets in sorted(graph.items()) for t in sorted(targets) if t in MOVED]
    unknown = [
        f"{m} imports {t}" for m, targets in sorted(graph.items()) for t in sorted(targets) if t not in graph
    ]
    assert old == [] and unknown == []


def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target == module or target not in graph:
                continue
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_checks_see_an_upward_import_and_a_cycle() -> None:
    """The checks themselves: a store importing segment is caught, and so is a loop."""
    graph = {"geoseg.io.store": {"geoseg.segment"}, "geoseg.segment": {"geoseg.io.store"}}
    assert layer_of("geoseg.segment") > layer_of("geoseg.io.store")
    with pytest.raises(AssertionError):
        test_imports_run_only_downward(graph)
    with pytest.raises(AssertionError):
        test_no_import_cycles(graph)


def test_each_public_function_and_class_has_one_home() -> None:
    """Inside geoseg no two modules define a public function or class of the same name (three
    ``prediction_item`` builders once built three different things); an alias is not a definition."""
    homes: dict[str, list[str]] = {}
    for name, path in package_modules().items():
        if name.split(".")[0] != "geoseg":
            continue
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
                homes.setdefault(node.name, []).append(name)
    assert {name: where for name, where in homes.items() if len(where) > 1} == {}
