"""Training methods: each one a module with the same shape (network, loss, training step;
see geoseg.methods.base). Stages that use a bundle build its network through
:func:`get_method` from model.json's ``method`` and never need to know which it is."""

from __future__ import annotations

from typing import Any

from geoseg.config import METHODS
from geoseg.errors import ConfigError
from geoseg.methods.base import Method, StepOutput
from geoseg.methods.cirs import CIRS
from geoseg.methods.iic import IIC
from geoseg.methods.lgmi import LGMI
from geoseg.methods.picie import PICIE

__all__ = ["METHODS", "Method", "StepOutput", "get_method", "warm_start_settings"]

_REGISTRY: dict[str, Method] = {IIC.name: IIC, PICIE.name: PICIE, LGMI.name: LGMI, CIRS.name: CIRS}
assert set(_REGISTRY) == set(METHODS)


def get_method(name: str) -> Method:
    """The method called ``name``; ConfigError naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}") from None


def warm_start_settings(meta: Any) -> dict[str, Any]:
    """The TrainConfig fields (method included) that rebuild the network of a bundle's
    ``meta`` (a geoseg.models.bundle.ModelMeta), so retraining from it needs no method knowledge."""
    members = meta.member_architectures  # an ensemble: its members share one architecture
    if members:
        return {**get_method(meta.method).warm_start_settings(members[0]), "members": len(members)}
    return get_method(meta.method).warm_start_settings(meta.architecture)
