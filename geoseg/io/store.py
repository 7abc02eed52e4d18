"""The patch store contract (zarr v3): what ingest writes and training/evaluation read.

Layout of ``STORE.zarr`` (see ../shared/DESIGN.md):

- ``images`` (N, C, P, P), the source dtype, one patch per chunk, sharded, uncompressed.
- ``valid``  (N, P, P) bool: False where the source had nodata/alpha or padding.
- ``origin`` (N, 3) int64: source index, row, col of the patch's top-left pixel in the
  (possibly rescaled) source grid.
- ``labels`` (N, P, P) uint8, optional, 255 = ignore. Only evaluation reads it.

Group attribute ``geoseg`` holds a :class:`StoreMeta` as JSON. The store counts as
complete only once ``geoseg.complete`` is true; ingest sets it last.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from affine import Affine

from geoseg.errors import InputError
from geoseg.io.sources import RASTER_SUFFIXES

__all__ = [
    "IMAGES",
    "LABELS",
    "ORIGIN",
    "STORE_FORMAT",
    "VALID",
    "PatchStore",
    "SourceInfo",
    "StoreMeta",
    "open_store",
]

STORE_FORMAT = "geoseg.patches/1"
IMAGES, VALID, ORIGIN, LABELS = "images", "valid", "origin", "labels"


@dataclass
class SourceInfo:
    """One ingested raster."""

    path: str
    sha256: str
    crs_wkt: str | None  # None for plain images without georeferencing
    transform: tuple[float, ...]  # affine (a, b, c, d, e, f) of the *rescaled* grid
    width: int  # of the rescaled grid
    height: int
    band_names: list[str]
    dtype: str
    nodata: float | None
    label_path: str | None = None
    label_sha256: str | None = None

    @property
    def affine(self) -> Affine:
        return Affine(*self.transform[:6])


@dataclass
class StoreMeta:
    """Group attributes of a patch store."""

    sources: list[SourceInfo]
    patch_size: int
    stride: int
    scale: float
    band_names: list[str]
    band_mean: list[float]
    band_std: list[float]
    dtype: str
    geoseg_version: str
    dataset: str | None = None  # label dataset, if labels were ingested
    complete: bool = False
    format: str = STORE_FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_attrs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StoreMeta:
        data = dict(attrs)
        data["sources"] = [SourceInfo(**{**s, "transform": tuple(s["transform"])}) for s in data["sources"]]
        return cls(**data)


class PatchStore:
    """Read access to a complete patch store."""

    def __init__(self, path: str | Path, group: zarr.Group, meta: StoreMeta) -> None:
        self.path = Path(path)
        self.group = group
        self.meta = meta

    def _array(self, name: str) -> zarr.Array:
        array = self.group[name]
        if not isinstance(array, zarr.Array):  # a foreign group under one of our names
            raise InputError(f"{self.path}/{name} is a zarr group, not an array: not a geoseg patch store")
        return array

    @property
    def images(self) -> zarr.Array:
        return self._array(IMAGES)

    @property
    def valid(self) -> zarr.Array:
        return self._array(VALID)

    @property
    def origin(self) -> np.ndarray:
        return np.asarray(self._array(ORIGIN)[:])

    @property
    def labels(self) -> zarr.Array | None:
        return self._array(LABELS) if LABELS in self.group else None

    @property
    def num_patches(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_bands(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return self.num_patches


def open_store(path: str | Path, require_complete: bool = True) -> PatchStore:
    """Open a patch store; a missing, foreign or incomplete store is a clear InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"patch store not found: {path}")
    if path.is_file() and path.suffix.lower() in RASTER_SUFFIXES:  # ingest skipped
        raise InputError(
            f"{path} is a raster, not a patch store: make one first with "
            f"`geoseg ingest {path} --out {path.with_suffix('.zarr').name}`, then train on that"
        )
    try:
        group = zarr.open_group(str(path), mode="r")
        raw = dict(group.attrs).get("geoseg")
    except Exception as exc:  # zarr raises several types for foreign/corrupt stores
        raise InputError(f"not a readable zarr patch store: {path} ({exc})") from exc
    if not isinstance(raw, Mapping) or raw.get("format") != STORE_FORMAT:
        raise InputError(f"not a geoseg patch store (no '{STORE_FORMAT}' attributes): {path}")
    meta = StoreMeta.from_attrs(dict(raw))
    if require_complete and not meta.complete:
        raise InputError(f"patch store is incomplete (interrupted ingest? re-run it to resume): {path}")
    return PatchStore(path, group, meta)
