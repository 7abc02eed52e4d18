"""Cluster alignment on real imagery (Lausanne SWISSIMAGE tiles) with tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geoseg.config import AlignConfig
from geoseg.errors import ConfigError, InputError
from geoseg.models.align import agreement_matrix, align_clusters, expand_reference, match_clusters
from geoseg.models.bundle import load_bundle, load_meta, save_bundle
from tests.conftest import remount_read_only
from tests.helpers import (
    OLD_CLUSTERS,
    K,
    make_spread_bundle,
    permuted_copy,
    predict,
    reference_tiles,
)


def test_agreement_matrix_counts_and_ignores() -> None:
    new = np.array([[0, 1, 1], [2, 255, 0]])
    old = np.array([[1, 0, 0], [2, 2, 1]])
    valid = np.array([[True, True, True], [True, True, False]])
    m = agreement_matrix(new, old, 3, 3, valid)
    expected = np.zeros((3, 3), np.int64)
    expected[0, 1] = 1  # (0,0)
    expected[1, 0] = 2  # (0,1), (0,2)
    expected[2, 2] = 1  # (1,0); (1,1) is nodata, (1,2) invalid
    np.testing.assert_array_equal(m, expected)
    assert match_clusters(m) == [1, 0, 2]


def test_match_more_new_clusters_gives_spare_ids_and_fewer_is_an_error() -> None:
    m = np.array([[0, 9], [5, 0], [1, 1]])
    assert match_clusters(m) == [1, 0, 2]
    with pytest.raises(ConfigError, match="cannot carry"):
        match_clusters(m.T)


def test_permuted_model_is_aligned_back_exactly(shared_data: Path, tmp_path: Path) -> None:
    tiles = reference_tiles(shared_data)
    old = make_spread_bundle(tmp_path / "old", clusters=OLD_CLUSTERS)
    old_ids = [predict(old, t) for t in tiles]
    # Precondition of an exact test: every cluster is used, so the matching is unique.
    assert set(np.unique(np.concatenate([i.ravel() for i in old_ids]))) == set(range(K))

    perm = [2, 0, 3, 1]
    new = permuted_copy(old, tmp_path / "new", perm)
    assert not np.array_equal(predict(new, tiles[0]), old_ids[0])

    result = align_clusters(new, old, tiles, out_dir=tmp_path / "aligned", config=AlignConfig(device="cpu"))

    # Trained channel i sits at perm[i] in `new`; alignment must send it back to i's old id.
    assert [result.permutation[perm[i]] for i in range(K)] == list(range(K))
    assert result.agreement == 1.0
    assert result.agreement_before < 1.0
    assert result.moved == []
    aligned_model, aligned_meta = load_bundle(tmp_path / "aligned")
    old_model, old_meta = load_bundle(old)
    for name, tensor in old_model.state_dict().items():
        assert torch.equal(aligned_model.state_dict()[name], tensor), name
    for tile, before in zip(tiles, old_ids, strict=True):
        np.testing.assert_array_equal(predict(tmp_path / "aligned", tile), before)
    assert aligned_meta.clusters == old_meta.clusters  # ids, colours and names carried over
    record = aligned_meta.alignment
    assert record is not None and record["agreement"] == 1.0
    assert record["permutation"] == result.permutation
    assert len(record["previous"]["weights_sha256"]) == 64
    assert sum(record["shares_new"]) == pytest.approx(1.0)
    report = json.loads((tmp_path / "aligned" / "alignment.json").read_text())
    assert report["agreement"] == 1.0
    assert "| 2 | trees |" in (tmp_path / "aligned" / "alignment.md").read_text()
    # The input bundle is untouched when out_dir is given.
    assert load_meta(new).alignment is None


def test_in_place_alignment_keeps_other_files_and_flags_moved_clusters(
    shared_data: Path, tmp_path: Path
) -> None:
    tiles = reference_tiles(shared_data)[:2]
    old = make_spread_bundle(tmp_path / "old", clusters=OLD_CLUSTERS)
    new = make_spread_bundle(tmp_path / "new", seed=0)
    model, meta = load_bundle(new)
    with torch.no_grad():
        model.head_b[0].bias[1] += 4.0  # cluster 1 grows at the others' expense
    save_bundle(model, meta, new)
    (new / "history.png").write_bytes(b"png")

    result = align_clusters(new, old, tiles, config=AlignConfig(device="cpu", share_threshold=0.02))

    # Independent count of the shares on the same tiles.
    old_ids = np.concatenate([predict(old, t).ravel() for t in tiles])
    new_ids = np.concatenate([predict(new, t).ravel() for t in tiles])
    old_share = np.bincount(old_ids, minlength=K) / old_ids.size
    new_share = np.bincount(new_ids, minlength=K) / new_ids.size
    np.testing.assert_allclose(result.shares_old, old_share, atol=1e-12)
    np.testing.assert_allclose(result.shares_new, new_share, atol=1e-12)
    assert result.agreement == pytest.approx(float(np.mean(old_ids == new_ids)), abs=1e-12)
    flagged = {m["id"] for m in result.moved}
    assert flagged == set(np.flatnonzero(np.abs(new_share - old_share) > 0.02).tolist())
    assert 1 in flagged
    assert (new / "history.png").read_bytes() == b"png"
    assert load_meta(new).alignment is not None
    assert result.loss_new is not None and result.loss_old is not None
    assert -np.log(K) - 1e-6 <= result.loss_old <= 0.0


def test_bad_reference_and_incompatible_models(shared_data: Path, tmp_path: Path) -> None:
    old = make_spread_bundle(tmp_path / "old")
    new = make_spread_bundle(tmp_path / "new", k=3)
    with pytest.raises(InputError, match="not found"):
        align_clusters(old, old, [tmp_path / "missing.tif"])
    with pytest.raises(ConfigError, match="cannot carry"):
        align_clusters(new, old, [shared_data / "neon" / "OSBS_029.tif"])
    assert load_meta(new).alignment is None


def test_patch_store_reference(shared_data: Path, tmp_path: Path) -> None:
    """A zarr patch store (real Dubai patches) as the reference, subsampled to max_patches."""
    from tests.iic.conftest import make_store

    store = make_store(tmp_path / "ref.zarr", shared_data, count=12)
    old = make_spread_bundle(tmp_path / "old", clusters=OLD_CLUSTERS)
    perm = [3, 2, 1, 0]
    new = permuted_copy(old, tmp_path / "new", perm)
    config = AlignConfig(device="cpu", max_patches=6, batch_size=4)
    result = align_clusters(new, old, [store], out_dir=tmp_path / "aligned", config=config)
    assert [result.permutation[perm[i]] for i in range(K)] == list(range(K))
    assert result.agreement == 1.0
    # 6 patches of 64x64, minus the 8-pixel nodata strip of patch 0 (always in the subsample).
    assert result.pixels == 6 * 64 * 64 - 64 * 8
    with pytest.raises(InputError, match="bands"):
        align_clusters(new, old, [make_store(tmp_path / "four.zarr", shared_data, extra_band=True, count=4)])


def test_cli_align(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geoseg.cli import main

    old = make_spread_bundle(tmp_path / "old", clusters=OLD_CLUSTERS)
    new = permuted_copy(old, tmp_path / "new", [1, 0, 3, 2])
    tile = reference_tiles(shared_data)[0]
    argv = ["model", "align", str(new), "--to", str(old), "--reference", str(tile), "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "aligned")]) == 0
    assert "agreement 1.0000" in capsys.readouterr().out
    assert load_meta(tmp_path / "aligned").clusters == OLD_CLUSTERS
    assert main([*argv[:-2], "--reference", str(tmp_path / "missing.tif")]) == 2
    assert "not found" in capsys.readouterr().err


def test_reference_rasters_are_found_as_ingest_finds_sources(shared_data: Path, tmp_path: Path) -> None:
    """A folder expands to its rasters in name order, as ingest's sources do; a missing path
    or a folder without rasters is one clear error."""
    folder = shared_data / "lausanne" / "img"
    tif = shared_data / "neon" / "OSBS_029.tif"
    expected = sorted(p for p in folder.iterdir() if p.suffix == ".tif")
    assert expand_reference([tif, folder]) == [tif, *expected]
    with pytest.raises(InputError, match="not found"):
        expand_reference([tmp_path / "missing.tif"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no rasters"):
        expand_reference([tmp_path / "empty"])


def test_progress_has_a_total_and_is_log_lines_off_a_terminal(
    shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off a terminal (a flow worker; here pytest's captured stderr) alignment reports as the
    other stages do: geoseg.progress log lines "N/TOTAL batch", no carriage-return bars."""
    from geoseg.models.align import reference_figures
    from tests.iic.conftest import make_store

    store = make_store(tmp_path / "ref.zarr", shared_data, count=12)
    old = make_spread_bundle(tmp_path / "old", clusters=OLD_CLUSTERS)
    new = permuted_copy(old, tmp_path / "new", [1, 0, 3, 2])
    tile = reference_tiles(shared_data)[0]  # 1 raster window of 512 + 6 patches in 2 batches
    config = AlignConfig(device="cpu", max_patches=6, batch_size=4, window=512)
    caplog.set_level("INFO", logger="geoseg")
    align_clusters(new, old, [tile, store], out_dir=tmp_path / "aligned", config=config)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("align: reference: ")]
    assert lines and lines[-1].startswith("align: reference: 3/3 batch (100%)"), lines
    reference_figures(old, [store], config)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reference: ")]
    assert lines and lines[-1].startswith("reference: 2/2 batch (100%)"), lines
    assert "batch [" not in capsys.readouterr().err  # no raw tqdm display
    # progress=False (as every stage): nothing.
    caplog.clear()
    reference_figures(old, [store], config, progress=False)
    assert not [r for r in caplog.records if r.getMessage().startswith("reference: ")]


def test_in_place_alignment_on_a_read_only_file_system_is_one_line_before_the_pass(
    shared_data: Path, tmp_path: Path, small_fs, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geoseg model align ro/model --to ... --reference ...` with the bundle on a read-only
    mount ran the whole reference pass, then said "cannot write ro/..model.tmp-N.tmp-N.tmp-N":
    the folder is refused first, by its name; the bundle stays as it was."""
    import shutil

    from geoseg.cli import main

    fs = small_fs("4m")
    old = make_spread_bundle(tmp_path / "old", clusters=OLD_CLUSTERS)
    new = shutil.copytree(permuted_copy(old, tmp_path / "new", [1, 0, 3, 2]), fs / "new")
    before = {p.name: p.read_bytes() for p in new.iterdir()}
    remount_read_only(fs)
    tile = reference_tiles(shared_data)[0]
    argv = ["model", "align", str(new), "--to", str(old), "--reference", str(tile), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Read-only file system" in err and f"cannot write in {fs}" in err, err
    assert ".tmp" not in err and "reference:" not in err, err  # no temporary's name, no pass
    assert {p.name: p.read_bytes() for p in new.iterdir()} == before
