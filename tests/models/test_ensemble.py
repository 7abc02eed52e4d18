"""Ensembles of trained bundles (geoseg.models.ensemble) on real imagery, and `train --members`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.config import AlignConfig, IngestConfig, TrainConfig
from geoseg.errors import ConfigError, InputError
from geoseg.ingest import ingest
from geoseg.io.fileio import sha256_file
from geoseg.models.align import align_clusters
from geoseg.models.bundle import load_bundle, load_meta
from geoseg.models.ensemble import combine
from geoseg.models.ensemble_net import EnsembleNet
from geoseg.train import train, work_dir
from tests.helpers import OLD_CLUSTERS, K, make_spread_bundle, permuted_copy, predict, reference_tiles

CPU = AlignConfig(device="cpu")


def _probabilities(bundle: Path, tile: Path) -> torch.Tensor:
    import rasterio

    model, _ = load_bundle(bundle)
    with rasterio.open(tile) as src:
        x = torch.from_numpy(src.read().astype(np.float32))[None]
    with torch.no_grad():
        return model(x, heads="b")["b"][0]


def test_an_ensemble_predicts_the_mean_of_its_aligned_members(shared_data: Path, tmp_path: Path) -> None:
    tiles = reference_tiles(shared_data)
    first = make_spread_bundle(tmp_path / "first", seed=0, clusters=OLD_CLUSTERS)
    second = make_spread_bundle(tmp_path / "second", seed=1)
    # The second member's clusters under other ids: without alignment the mean mixes clusters.
    shuffled = permuted_copy(second, tmp_path / "shuffled", [3, 2, 0, 1])
    ensemble = combine([first, shuffled], tmp_path / "ensemble", tiles[:2], CPU, progress=False)

    aligned = tmp_path / "aligned"
    align_clusters(shuffled, first, tiles[:2], aligned, CPU, progress=False)
    for tile in tiles:
        expected = (_probabilities(first, tile) + _probabilities(aligned, tile)) / 2
        torch.testing.assert_close(_probabilities(ensemble, tile), expected)
    unaligned = (_probabilities(first, tiles[0]) + _probabilities(shuffled, tiles[0])) / 2
    assert not torch.allclose(_probabilities(ensemble, tiles[0]), unaligned, atol=1e-3)

    meta = load_meta(ensemble)
    assert [len(meta.member_architectures or [])] == [2]
    assert meta.clusters == load_meta(first).clusters  # the first member's ids, names, colours
    records = meta.provenance["members"]
    assert [r["weights_sha256"] for r in records] == [
        sha256_file(b / "weights.safetensors") for b in (first, shuffled)
    ]
    assert 0.0 <= records[1]["agreement_with_first"] <= 1.0
    # segment's inference copy (batch norms folded in every member) gives the same ids
    model, _ = load_bundle(ensemble)
    assert isinstance(model, EnsembleNet)
    ids = predict(ensemble, tiles[0])
    expected_ids = _probabilities(ensemble, tiles[0])[0].argmax(0).numpy()
    assert (ids == expected_ids).mean() > 0.999


def test_aligning_an_ensemble_to_an_older_model_moves_every_members_ids(
    shared_data: Path, tmp_path: Path
) -> None:
    tiles = reference_tiles(shared_data)
    old = make_spread_bundle(tmp_path / "old", seed=0, clusters=OLD_CLUSTERS)
    members = [permuted_copy(old, tmp_path / f"m{i}", [2, 0, 3, 1]) for i in range(2)]
    ensemble = combine(members, tmp_path / "ensemble", tiles[:1], CPU, progress=False)
    assert not np.array_equal(predict(ensemble, tiles[0]), predict(old, tiles[0]))

    result = align_clusters(ensemble, old, tiles, tmp_path / "aligned", CPU, progress=False)

    assert result.agreement == 1.0
    for tile in tiles:
        np.testing.assert_array_equal(predict(tmp_path / "aligned", tile), predict(old, tile))


def test_members_must_share_their_settings(shared_data: Path, tmp_path: Path) -> None:
    first = make_spread_bundle(tmp_path / "first", k=K)
    other = make_spread_bundle(tmp_path / "other", k=K + 1)
    with pytest.raises(InputError, match=r"first and .*other differ in architecture"):
        combine([first, other], tmp_path / "ensemble", reference_tiles(shared_data)[:1], CPU, progress=False)
    with pytest.raises(InputError, match="at least two"):
        combine([first], tmp_path / "ensemble", reference_tiles(shared_data)[:1], CPU, progress=False)
    assert not (tmp_path / "ensemble").exists()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    out = tmp_path_factory.mktemp("store") / "patches.zarr"
    return ingest(
        reference_tiles(shared_data)[:2], out, IngestConfig(patch_size=32, scale=0.5), progress=False
    )


def _config(**kw: object) -> TrainConfig:
    settings: dict = {"steps": 6, "batch_size": 4, "lr": 1e-3, "checkpoint_every": 3, "device": "cpu"}
    return TrainConfig(k=K, k_a=8, **(settings | kw))


def test_train_members_trains_each_seed_as_a_plain_run_would(small_store: Path, tmp_path: Path) -> None:
    ensemble = train(small_store, tmp_path / "ensemble", _config(members=2, seed=1), progress=False)
    plain = [train(small_store, tmp_path / f"seed{s}", _config(seed=s), progress=False) for s in (2, 3)]

    meta = load_meta(ensemble)
    # ensemble seed 1 of 2 members: member seeds 2 and 3, weights bit for bit a plain run's
    records = meta.provenance["members"]
    assert [r["seed"] for r in records] == [2, 3]
    assert [r["weights_sha256"] for r in records] == [sha256_file(p / "weights.safetensors") for p in plain]
    assert meta.provenance["config"]["members"] == 2 and meta.provenance["config"]["seed"] == 1
    assert (ensemble / "training_curve.png").is_file() and (ensemble / "metrics.jsonl").read_text()

    # A second run with the same settings resumes: every member is already trained.
    before = (ensemble / "weights.safetensors").read_bytes()
    train(small_store, ensemble, _config(members=2, seed=1), progress=False)
    assert (ensemble / "weights.safetensors").read_bytes() == before
    assert (work_dir(ensemble) / "members" / "member1" / "model.json").is_file()


def test_retraining_an_ensemble_warm_starts_each_member_from_its_own(
    small_store: Path, tmp_path: Path
) -> None:
    old = train(small_store, tmp_path / "old", _config(members=2), progress=False)
    new = train(
        small_store, tmp_path / "new", _config(members=2, init_from=str(old), steps=1), progress=False
    )
    old_model, _ = load_bundle(old)
    new_model, _ = load_bundle(new)
    # one step away from its own member of the old ensemble, far from the other member
    # (trunks: untouched by the alignment of head-B ids)
    for i, j in ((0, 1), (1, 0)):
        moved = next(new_model.members[i].trunk.parameters())
        own = next(old_model.members[i].trunk.parameters())
        other = next(old_model.members[j].trunk.parameters())
        assert (moved - own).abs().max() < 0.1 * (moved - other).abs().max()
    with pytest.raises(ConfigError, match="has 2 members and this run trains 1: retrain it with --members 2"):
        train(small_store, tmp_path / "single", _config(init_from=str(old)), progress=False)
