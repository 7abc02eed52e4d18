"""geoseg: label-free segmentation of large aerial orthophotos.

The stages, one call each, are here: :func:`ingest`, :func:`train`, :func:`segment`,
:func:`vectorize`, :func:`evaluate`, :func:`kmeans_baseline`, :func:`random_net_baseline`
and :func:`superpixel_baseline`, with their configs and the errors a user can fix. Each is
imported on first use, so ``import geoseg`` (and the CLI) starts without torch or GDAL.

``geoseg.segment`` (and ``ingest``, ``train``, ``vectorize``, ``evaluate``) is the stage's
module, callable as its stage function: ``geoseg.segment(...)``, ``geoseg.segment.segment(...)``
and ``from geoseg.segment import segment`` are one function.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from geoseg import _moved
from geoseg import config as _config

__version__ = "0.1.0"

_STAGES = {
    "ingest": "geoseg.ingest",
    "train": "geoseg.train",
    "segment": "geoseg.segment",
    "vectorize": "geoseg.vectorize",
    "evaluate": "geoseg.evaluate",
    "kmeans_baseline": "geoseg.baseline",
    "random_net_baseline": "geoseg.baseline",
    "superpixel_baseline": "geoseg.superpixels",
}
_CONFIGS = tuple(name for name in _config.__all__ if name.endswith("Config"))  # light: dataclasses only
_ERRORS = ("BusyError", "ConfigError", "GeosegError", "InputError", "OutputError", "TrainingError")
_EXPORTS = {
    **_STAGES,
    **dict.fromkeys(_CONFIGS, "geoseg.config"),
    **dict.fromkeys(_ERRORS, "geoseg.errors"),
}

__all__ = [
    "AlignConfig",
    "BaselineConfig",
    "BusyError",
    "ConfigError",
    "EvaluateConfig",
    "GeosegError",
    "IngestConfig",
    "InputError",
    "OutputError",
    "PromotionConfig",
    "RunConfig",
    "SegmentConfig",
    "SuperpixelConfig",
    "TrainConfig",
    "TrainingError",
    "VectorizeConfig",
    "__version__",
    "evaluate",
    "ingest",
    "kmeans_baseline",
    "random_net_baseline",
    "segment",
    "superpixel_baseline",
    "train",
    "vectorize",
]

if TYPE_CHECKING:
    from geoseg.baseline import kmeans_baseline, random_net_baseline
    from geoseg.config import (
        AlignConfig,
        BaselineConfig,
        EvaluateConfig,
        IngestConfig,
        PromotionConfig,
        RunConfig,
        SegmentConfig,
        SuperpixelConfig,
        TrainConfig,
        VectorizeConfig,
    )
    from geoseg.errors import BusyError, ConfigError, GeosegError, InputError, OutputError, TrainingError
    from geoseg.evaluate import evaluate
    from geoseg.ingest import ingest
    from geoseg.segment import segment
    from geoseg.superpixels import superpixel_baseline
    from geoseg.train import train
    from geoseg.vectorize import vectorize


# Stage functions named as their modules: ``geoseg.segment`` is the module, callable as the
# stage, so both ``geoseg.segment(...)`` and the old ``geoseg.segment.segment(...)`` work.
_CALLABLE_MODULES = frozenset(name for name, module in _STAGES.items() if module == f"geoseg.{name}")


class StageModule(types.ModuleType):
    """A stage's module that is also its stage function: ``geoseg.segment(...)`` calls
    ``geoseg.segment.segment(...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    """The ``geoseg`` module: stage names resolve to the stages, lazily."""

    def __getattr__(self, name: str) -> Any:
        if name in _EXPORTS:
            module = importlib.import_module(_EXPORTS[name])  # binds a stage module (__setattr__)
            return module if name in _CALLABLE_MODULES else getattr(module, name)
        raise AttributeError(f"module 'geoseg' has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # The import system binds geoseg.segment the module here, however it was imported.
        if name in _CALLABLE_MODULES and type(value) is types.ModuleType:
            value.__class__ = StageModule
        super().__setattr__(name, value)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


_moved.install()
sys.modules[__name__].__class__ = _Package
