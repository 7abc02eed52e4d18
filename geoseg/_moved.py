"""Import paths of modules the regroup moved, kept working: ``import geoseg.bundle`` (or
``from geoseg.cog import to_cog``) gives the very module now at ``geoseg.models.bundle``
(``geoseg.io.cog``), one module object under two names, so a monkeypatch or an
``isinstance`` through the old name means the same thing.

Why an alias and not a re-export file at the old path: the moved files keep their git
history as plain renames, so edits made on other branches to ``geoseg/cog.py`` follow the
file to ``geoseg/io/cog.py`` when merged. New code imports the new paths (the import-layer
test refuses the old ones inside the package).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

__all__ = ["MOVED", "install"]

MOVED = {
    "geoseg.align": "geoseg.models.align",
    "geoseg.bundle": "geoseg.models.bundle",
    "geoseg.catalog": "geoseg.stac.catalog",
    "geoseg.cog": "geoseg.io.cog",
    "geoseg.fileio": "geoseg.io.fileio",
    "geoseg.names": "geoseg.models.names",
    "geoseg.outputs": "geoseg.io.outputs",
    "geoseg.preview": "geoseg.io.preview",
    "geoseg.registry": "geoseg.models.registry",
    "geoseg.shards": "geoseg.io.shards",
    "geoseg.sources": "geoseg.io.sources",
    "geoseg.store": "geoseg.io.store",
    "geoseg.style": "geoseg.io.style",
    "geoseg.windows": "geoseg.io.windows",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name and loads it as the module at its new name."""

    def __init__(self) -> None:
        self._own_specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def find_spec(
        self, fullname: str, path: object = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._own_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # the import system stamped the alias's spec on the real module: give it back its own
        alias = module.__spec__.name if module.__spec__ else ""
        module.__spec__ = self._own_specs.pop(alias, module.__spec__)


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``import geoseg`` does)."""
    if not any(isinstance(finder, _MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())  # before any finder that could see a stale file
