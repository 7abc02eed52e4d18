"""geoseg: label-free segmentation of large aerial orthophotos.

The stages, one call each, are here: :func:`ingest`, :func:`train`, :func:`segment`,
:func:`vectorize`, :func:`evaluate`, :func:`kmeans_baseline`, :func:`random_net_baseline`
and :func:`superpixel_baseline`, with their configs and the errors a user can fix. Each is
imported on first use, so ``import geoseg`` (and the CLI) starts without torch or GDAL.

``geoseg.segment`` and friends are the stage functions, also after their modules were
imported (``from geoseg.segment import SegmentResult`` reaches the module as before).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from geoseg import _moved

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
_CONFIGS = (
    "AlignConfig",
    "BaselineConfig",
    "EvaluateConfig",
    "IngestConfig",
    "PromotionConfig",
    "RunConfig",
    "SegmentConfig",
    "SuperpixelConfig",
    "TrainConfig",
    "VectorizeConfig",
)
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


class _Package(types.ModuleType):
    """The ``geoseg`` module: stage names resolve to the stage functions, lazily."""

    def __getattr__(self, name: str) -> Any:
        if name in _EXPORTS:
            return getattr(importlib.import_module(_EXPORTS[name]), name)
        raise AttributeError(f"module 'geoseg' has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # Importing geoseg.segment binds the submodule as geoseg.segment; the function keeps
        # the name (the module stays in sys.modules, where `from geoseg.segment import` looks).
        if name in _STAGES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


_moved.install()
sys.modules[__name__].__class__ = _Package
