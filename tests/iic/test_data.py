"""Streaming patches from a real store: images and masks only, reproducible batches per step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from geoseg.errors import ConfigError, InputError
from geoseg.iic.data import PatchDataset, StepBatchSampler, combined_statistics
from geoseg.io.store import open_store


def test_items_are_the_stored_patches(dubai_store: Path) -> None:
    data = PatchDataset([dubai_store])
    store = open_store(dubai_store)
    assert len(data) == 16 and data.num_bands == 3 and data.patch_size == 64
    item = data[5]
    assert set(item) == {"image", "valid"}  # never labels
    assert item["image"].dtype == torch.uint8
    assert np.array_equal(item["image"].numpy(), np.asarray(store.images[5]))
    assert not data[0]["valid"][:, :8].any() and data[0]["valid"][:, 8:].all()
    with pytest.raises(IndexError):
        data[16]


def test_two_stores_concatenate(dubai_store: Path) -> None:
    data = PatchDataset([dubai_store, dubai_store])
    assert len(data) == 32
    assert torch.equal(data[20]["image"], data[4]["image"])
    mean, std = data.band_statistics()
    meta = open_store(dubai_store).meta
    assert mean == pytest.approx(meta.band_mean) and std == pytest.approx(meta.band_std)


def test_pooled_statistics_match_direct_computation() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(10, 2, 3000), rng.normal(20, 5, 1000)

    class M:  # the two fields combined_statistics reads from a StoreMeta
        def __init__(self, x: np.ndarray) -> None:
            self.band_mean, self.band_std = [x.mean()], [x.std()]

    mean, std = combined_statistics([M(a), M(b)], [3, 1])  # type: ignore[list-item]
    both = np.concatenate([a, b])
    assert mean[0] == pytest.approx(both.mean(), rel=1e-9)
    assert std[0] == pytest.approx(both.std(), rel=1e-9)


def test_missing_or_mixed_stores_are_clear_errors(
    dubai_store: Path, dubai_store_4band: Path, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="not found"):
        PatchDataset([tmp_path / "missing.zarr"])
    with pytest.raises(ConfigError, match=r"differ in band count: .* ingest both with the same --bands"):
        PatchDataset([dubai_store, dubai_store_4band])  # the two stores, and what to do
    with pytest.raises(ConfigError):
        PatchDataset([])


def test_batches_depend_only_on_seed_and_step() -> None:
    full = list(StepBatchSampler(10, 4, seed=3, start=0, stop=7))
    tail = list(StepBatchSampler(10, 4, seed=3, start=4, stop=7))
    assert full[4:] == tail
    assert all(len(b) == 4 for b in full)
    # an epoch (2 batches of 4 from 10 items) never repeats an index
    assert len(set(full[0] + full[1])) == 8
    assert full[:2] != full[2:4]  # a new permutation each epoch
    assert list(StepBatchSampler(10, 4, seed=4, start=0, stop=2)) != full[:2]
    small = next(iter(StepBatchSampler(3, 8, seed=0, start=0, stop=1)))
    assert sorted(small) == [0, 1, 2]  # a store smaller than the batch: the whole store


def test_worker_processes_deliver_the_same_batches(dubai_store: Path) -> None:
    data = PatchDataset([dubai_store])
    sampler = StepBatchSampler(len(data), 4, seed=0, start=0, stop=3)
    serial = [b["image"] for b in DataLoader(data, batch_sampler=sampler, num_workers=0)]
    parallel = [b["image"] for b in DataLoader(data, batch_sampler=sampler, num_workers=2)]
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
