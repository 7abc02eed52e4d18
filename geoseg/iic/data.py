"""Training patches streamed from patch stores: images and valid masks, never labels.

A :class:`PatchDataset` reads one patch (one zarr chunk) per item, so memory stays flat
however large the survey is. The zarr group is opened lazily in each DataLoader worker
(forked or spawned workers each get their own handle). Images keep their source dtype
when torch has it (uint8 crosses to the GPU at a quarter of float32's size) and become
float32 otherwise; normalisation happens inside the model.

:class:`StepBatchSampler` fixes the batches of every step from the seed alone (epoch e is
a permutation drawn from ``seed`` and ``e``), so a run resumed at step s sees exactly the
batches an uninterrupted run would have seen from step s on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from geoseg.errors import ConfigError
from geoseg.io.store import PatchStore, StoreMeta, open_store

__all__ = ["PatchDataset", "StepBatchSampler", "combined_statistics"]

_TORCH_NATIVE = {np.dtype(np.uint8), np.dtype(np.float32)}


class PatchDataset(Dataset):
    """Patches of one or more stores with the same bands: ``{"image": (C, P, P), "valid": (P, P)}``."""

    def __init__(self, stores: Sequence[str | Path]) -> None:
        if not stores:
            raise ConfigError("no patch store given")
        self.paths = [Path(s) for s in stores]
        opened = [open_store(p) for p in self.paths]
        check_compatible(opened)
        self.metas: list[StoreMeta] = [s.meta for s in opened]
        self.counts = [s.num_patches for s in opened]
        self.offsets = np.cumsum([0, *self.counts])
        self.num_bands = opened[0].num_bands
        self.patch_size = int(opened[0].images.shape[-1])
        self._stores: list[PatchStore] | None = None  # opened lazily per worker

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _open(self) -> list[PatchStore]:
        if self._stores is None:
            self._stores = [open_store(p) for p in self.paths]
        return self._stores

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_stores"] = None  # zarr handles are not shipped to workers
        return state

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        which = int(np.searchsorted(self.offsets, index, side="right") - 1)
        local = int(index - self.offsets[which])
        store = self._open()[which]
        image = np.asarray(store.images[local])
        valid = np.asarray(store.valid[local], dtype=bool)
        if image.dtype not in _TORCH_NATIVE:
            image = image.astype(np.float32)
        return {"image": torch.from_numpy(np.ascontiguousarray(image)), "valid": torch.from_numpy(valid)}

    def band_statistics(self) -> tuple[list[float], list[float]]:
        """Per-band mean and std over all stores (patch-count weighted)."""
        return combined_statistics(self.metas, self.counts)


def check_compatible(stores: Sequence[PatchStore]) -> None:
    """Stores trained together must share band count, band names, dtype and patch size."""
    first = stores[0]
    for other in stores[1:]:
        for what, a, b, fix in (
            ("band count", first.num_bands, other.num_bands, "ingest both with the same --bands"),
            ("band names", first.meta.band_names, other.meta.band_names, "ingest both with the same --bands"),
            ("dtype", first.meta.dtype, other.meta.dtype, "train on rasters of one data type"),
            (
                "patch size",
                first.images.shape[-1],
                other.images.shape[-1],
                "ingest both with the same --patch-size",
            ),
        ):
            if a != b:
                raise ConfigError(
                    f"patch stores differ in {what}: {first.path} has {a}, {other.path} has {b}: {fix}"
                )


def combined_statistics(metas: Sequence[StoreMeta], counts: Sequence[int]) -> tuple[list[float], list[float]]:
    """Pool per-store band means/stds into one mean/std per band."""
    w = np.asarray(counts, np.float64)
    w = w / w.sum()
    mean = np.asarray([m.band_mean for m in metas], np.float64)
    std = np.asarray([m.band_std for m in metas], np.float64)
    pooled_mean = (w[:, None] * mean).sum(0)
    pooled_var = (w[:, None] * (std**2 + mean**2)).sum(0) - pooled_mean**2
    return pooled_mean.tolist(), np.sqrt(np.maximum(pooled_var, 0)).tolist()


class StepBatchSampler(Sampler[list[int]]):
    """Batches of indices for steps ``start .. stop - 1``, a pure function of (seed, step).

    An epoch is a seeded permutation; the last incomplete batch of an epoch is dropped
    (BatchNorm dislikes tiny batches). A store smaller than the batch gives batches of
    the whole store.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, start: int, stop: int) -> None:
        if num_items < 1:
            raise ConfigError("the patch store has no patches")
        self.n = num_items
        self.batch = min(batch_size, num_items)
        self.per_epoch = num_items // self.batch
        self.seed, self.start, self.stop = seed, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def batch_for(self, step: int, _cache: dict[int, torch.Tensor] | None = None) -> list[int]:
        epoch, pos = divmod(step, self.per_epoch)
        perm = self._perm(epoch, _cache)
        return perm[pos * self.batch : (pos + 1) * self.batch].tolist()

    def _perm(self, epoch: int, cache: dict[int, torch.Tensor] | None) -> torch.Tensor:
        if cache is not None and epoch in cache:
            return cache[epoch]
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(self.n, generator=g)
        if cache is not None:
            cache.clear()
            cache[epoch] = perm
        return perm

    def __iter__(self) -> Iterator[list[int]]:
        cache: dict[int, torch.Tensor] = {}
        for step in range(self.start, self.stop):
            yield self.batch_for(step, cache)
