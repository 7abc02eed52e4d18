"""Model registry: versions, the label-free promotion check, promote and one-command rollback."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pystac
import pytest
import torch
from pystac.validation import validate_dict

from geoseg.cli import main
from geoseg.config import AlignConfig, PromotionConfig
from geoseg.errors import ConfigError, InputError
from geoseg.io.fileio import sha256_file
from geoseg.models import registry
from geoseg.models.align import align_clusters, reference_figures
from geoseg.models.bundle import META, WEIGHTS, load_bundle, load_meta, save_bundle
from geoseg.models.registry import ModelFigures, should_promote
from tests.conftest import remount_read_only
from tests.helpers import OLD_CLUSTERS, permuted_copy, predict, reference_tiles
from tests.helpers import make_spread_bundle as make_bundle


def collapsed_copy(src: Path, out: Path) -> Path:
    """The same model, except that head B puts every pixel in cluster 0."""
    model, meta = load_bundle(src)
    with torch.no_grad():
        model.head_b[0].bias[0] += 1000.0
    return save_bundle(model, meta, out)


def test_collapsed_model_is_not_promoted_and_a_permuted_copy_is(shared_data: Path, tmp_path: Path) -> None:
    tiles = reference_tiles(shared_data)[:2]
    config = AlignConfig(device="cpu")
    old = make_bundle(tmp_path / "old", clusters=OLD_CLUSTERS)
    good = permuted_copy(old, tmp_path / "good", [1, 2, 3, 0])
    bad = collapsed_copy(old, tmp_path / "bad")
    align_clusters(good, old, tiles, config=config)
    align_clusters(bad, old, tiles, config=config)

    ok = registry.check_bundle(good, old)
    assert ok.promote, ok.reasons
    assert ok.checks["agreement"]["value"] == 1.0
    assert ok.checks["balance"]["value"] == pytest.approx(ok.checks["balance"]["limit"] / 0.7)

    rejected = registry.check_bundle(bad, old)
    assert not rejected.promote
    assert rejected.checks["balance"]["passed"] is False
    assert rejected.checks["balance"]["value"] == pytest.approx(1.0)
    assert any("collapse" in r for r in rejected.reasons)
    # The CLI says so and exits non-zero, so a script can gate on it.
    assert main(["model", "check", str(bad), "--previous", str(old)]) == 1
    assert main(["model", "check", str(good), "--previous", str(old)]) == 0
    # Aligned to another model: the figures would not belong to this pair.
    with pytest.raises(ConfigError, match="another model"):
        registry.check_bundle(good, bad)


def test_first_model_balance_is_checked_on_reference_imagery(shared_data: Path, tmp_path: Path) -> None:
    tiles = reference_tiles(shared_data)[:2]
    good = make_bundle(tmp_path / "good", clusters=OLD_CLUSTERS)
    bad = collapsed_copy(good, tmp_path / "bad")
    figures = reference_figures(good, tiles, AlignConfig(device="cpu"))
    ids = np.concatenate([predict(good, t).ravel() for t in tiles])
    np.testing.assert_allclose(figures.shares, np.bincount(ids, minlength=4) / ids.size, atol=1e-12)
    assert registry.check_bundle(good, None, reference=tiles).promote
    rejected = registry.check_bundle(bad, None, reference=tiles)
    assert not rejected.promote and rejected.checks["balance"]["value"] == pytest.approx(1.0)
    assert rejected.checks["agreement"]["passed"] is None  # no previous model: skipped, not passed
    skipped = registry.check_bundle(bad, None)  # no reference: nothing to measure, says so
    assert skipped.promote and skipped.checks["balance"]["passed"] is None


def test_should_promote_rules() -> None:
    balanced = ModelFigures(shares=[0.25, 0.25, 0.25, 0.25], loss=-1.0)
    assert balanced.effective_clusters == pytest.approx(4.0)
    assert should_promote(balanced, balanced, 0.9).promote
    worse = ModelFigures(shares=[0.25, 0.25, 0.25, 0.25], loss=-0.5)
    decision = should_promote(worse, balanced, 0.9, PromotionConfig(loss_tolerance=0.1))
    assert not decision.promote and decision.checks["loss"]["passed"] is False
    drifted = should_promote(balanced, balanced, 0.3)
    assert not drifted.promote and drifted.checks["agreement"]["passed"] is False
    first = should_promote(ModelFigures(shares=[0.97, 0.01, 0.01, 0.01]), None, None)
    assert not first.promote and first.checks["loss"]["passed"] is None
    with pytest.raises(ConfigError, match="agreement"):
        should_promote(balanced, balanced, None)


def test_promote_and_rollback_one_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    reg = tmp_path / "models"
    first = make_bundle(tmp_path / "first", seed=1)
    second = make_bundle(tmp_path / "second", seed=2)
    third = make_bundle(tmp_path / "third", seed=3)
    with pytest.raises(Exception, match="no promoted model"):
        registry.current_model(reg)

    v1 = registry.register(first, reg)
    assert registry.register(first, reg).version == v1.version == "v0001"  # idempotent
    registry.promote(reg, v1.version)
    assert main(["model", "register", str(second), "--registry", str(reg)]) == 0
    assert main(["model", "promote", "v0002", "--registry", str(reg)]) == 0
    v3 = registry.register(third, reg)
    registry.promote(reg, v3.version)
    assert registry.current_model(reg) == reg / "v0003"
    assert load_meta(reg / "v0003").provenance["registry_version"] == "v0003"

    assert (reg / "current").resolve() == (reg / "v0003").resolve()
    assert main(["model", "rollback", "--registry", str(reg)]) == 0
    current = registry.current_model(reg)
    assert current == reg / "v0002"
    assert sha256_file(reg / "current" / WEIGHTS) == sha256_file(second / WEIGHTS)
    assert sha256_file(current / WEIGHTS) == sha256_file(second / WEIGHTS)
    assert registry.resolve_model(None, reg) == reg / "v0002"
    assert registry.resolve_model("v0003", reg) == reg / "v0003"
    assert registry.resolve_model(third, reg) == third

    assert main(["model", "rollback", "--registry", str(reg), "--to", "v0001"]) == 0
    assert registry.current_model(reg) == reg / "v0001"
    statuses = {v.version: v.status for v in registry.list_versions(reg)}
    assert statuses == {"v0001": "promoted", "v0002": "rolled-back", "v0003": "rolled-back"}
    capsys.readouterr()
    assert main(["model", "list", "--registry", str(reg)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("* v0001") and listed[1].startswith("  v0002")
    # Nothing left before v0001: a clear error, exit status 2.
    assert main(["model", "rollback", "--registry", str(reg)]) == 2
    assert "only model ever promoted" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="never promoted"):
        registry.rollback(reg, to="v0002")

    catalog = pystac.Catalog.from_file(str(reg / "catalog.json"))
    items = {item.id: item for item in catalog.get_items()}
    assert set(items) == {"v0001", "v0002", "v0003"}
    assert catalog.extra_fields["geoseg:promoted"] == "v0001"
    assert items["v0001"].properties["geoseg:status"] == "promoted"
    weights = Path(items["v0002"].assets["weights"].get_absolute_href())
    assert sha256_file(weights) == sha256_file(second / WEIGHTS)
    assert items["v0002"].assets["weights"].href == f"./{WEIGHTS}"  # the registry moves as one folder
    for path in [reg / "catalog.json", *(reg / v / f"{v}.json" for v in items)]:
        validate_dict(json.loads(path.read_text()), extensions=[])  # each file valid STAC
    assert [p.name for p in reg.glob(".*.tmp-*")] == []


def survey_catalog(root: Path, tiles: list[Path], created: list[str], labels: dict[int, Path]) -> Path:
    """A STAC catalog of survey items over real Lausanne tiles, as an ingest flow would list them."""
    catalog = pystac.Catalog(id="surveys", description="test surveys")
    for i, (tile, when) in enumerate(zip(tiles, created, strict=True)):
        item = pystac.Item(
            id=f"survey-{i}",
            geometry=None,
            bbox=None,
            datetime=datetime(2024, 5, 1, tzinfo=UTC),
            properties={"created": when},
        )
        item.add_asset("image", pystac.Asset(str(tile), media_type=pystac.MediaType.COG, roles=["data"]))
        if i in labels:
            item.add_asset("labels", pystac.Asset(str(labels[i]), roles=["labels"]))
        catalog.add_item(item)
    catalog.add_item(
        pystac.Item(id="not-a-survey", geometry=None, bbox=None, datetime=datetime.now(UTC), properties={})
    )
    catalog.normalize_hrefs(str(root))
    catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return root / "catalog.json"


def test_new_surveys_are_those_added_after_the_promoted_model(shared_data: Path, tmp_path: Path) -> None:
    tiles = reference_tiles(shared_data)[:3]
    mask = shared_data / "lausanne" / "tree_masks" / "1091-322_05.tif"
    reg = tmp_path / "models"
    registry.promote(reg, registry.register(make_bundle(tmp_path / "m"), reg).version)
    registered = datetime.fromisoformat(registry.list_versions(reg)[0].registered)
    before = (registered - timedelta(days=7)).isoformat()
    after = (registered + timedelta(hours=1)).isoformat()
    catalog = survey_catalog(tmp_path / "cat", tiles, [before, after, after], {1: mask})

    found = registry.new_surveys(catalog, reg)
    assert [s.item_id for s in found] == ["survey-1", "survey-2"]
    assert found[0].image == tiles[1] and found[0].label == mask and found[1].label is None
    # No promoted model yet: every survey is new.
    assert len(registry.new_surveys(catalog, tmp_path / "empty")) == 3
    assert [s.item_id for s in registry.new_surveys(catalog, reg, since=after)] == []
    with pytest.raises(InputError, match="not found"):
        registry.new_surveys(tmp_path / "nope.json", reg)


def test_a_since_that_is_no_iso_time_is_a_clear_error_before_the_catalog_is_read(tmp_path: Path) -> None:
    """`--param since=yesterday` on the retrain deployment: one ConfigError line naming it (a
    user error: the find-surveys task neither retries it nor logs a traceback), not Python's
    "Invalid isoformat string" three times over; a date alone, or a Z suffix, is fine."""
    from geoseg.errors import ConfigError

    for bad in ("yesterday", "03/12/2026", "2026-13-01"):
        with pytest.raises(ConfigError, match=rf"since must be an ISO 8601 .*got '{re.escape(bad)}'"):
            registry.new_surveys(tmp_path / "no-catalog-needed.json", tmp_path / "models", since=bad)
    assert registry.parse_since("2026-06-01") == datetime(2026, 6, 1, tzinfo=UTC)
    assert registry.parse_since("2026-06-01T03:00:00Z") == datetime(2026, 6, 1, 3, tzinfo=UTC)
    assert registry.parse_since(None) is None


def test_a_mistyped_registry_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """list/promote/rollback on a path that is no registry: one line, exit 2, no folder left behind."""
    typo = tmp_path / "modles"
    for words in (["list"], ["rollback"], ["promote", "v0001"]):
        assert main(["model", *words, "--registry", str(typo)]) == 2
        assert "model registry not found" in capsys.readouterr().err
    assert not typo.exists()
    typo.mkdir()
    assert main(["model", "list", "--registry", str(typo)]) == 2
    assert "has no registry.json" in capsys.readouterr().err


def test_a_registry_given_where_a_model_bundle_goes_names_its_current(
    tmp_path: Path, shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geoseg segment models/ tile.tif` (the registry, not `models/current`) said
    "models is not a model bundle (no model.json)": now it says it is a registry and which
    path to give; `model align --to` here too (and `--init-from`, a flow's `model`: the same load)."""
    reg = tmp_path / "models"
    registry.promote(reg, registry.register(make_bundle(tmp_path / "m"), reg).version)
    tile = reference_tiles(shared_data)[0]
    expected = (
        f"{reg} is a model registry, not a model bundle: give {reg / 'current'} (its promoted model)"
        " or one of its versions"
    )
    for stage, argv in (
        ("segment", ["segment", str(reg), str(tile), "--out", str(tmp_path / "pred")]),
        ("model", ["model", "align", str(reg / "v0001"), "--to", str(reg), "--reference", str(tile)]),
    ):
        assert main(argv) == 2, argv
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line == f"geoseg {stage}: error: {expected}", line
    assert not (tmp_path / "pred").exists()


def test_model_check_against_a_mistyped_previous_model_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geoseg model check BUNDLE --previous models/curent` (a typo of current) ended in a
    FileNotFoundError traceback for curent/weights.safetensors, exit 1 (which reads as "do not
    promote"): now one line naming the path, exit 2; a bundle without weights likewise."""
    bundle = make_bundle(tmp_path / "new")
    meta = json.loads((bundle / META).read_text())
    meta["alignment"] = {"previous": {"weights_sha256": "0" * 64}}  # aligned to some model
    (bundle / META).write_text(json.dumps(meta))
    typo = tmp_path / "models" / "curent"
    assert main(["model", "check", str(bundle), "--previous", str(typo)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"geoseg model: error: model bundle not found: {typo}"
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / META).write_bytes((bundle / META).read_bytes())
    assert main(["model", "check", str(bundle), "--previous", str(no_weights)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"geoseg model: error: model bundle has no {WEIGHTS}: {no_weights}"


def test_model_check_refuses_a_reference_that_a_previous_model_makes_unused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --previous the check compares the alignment's figures and reads no reference
    imagery: `--reference nothere.tif` beside it was silently ignored, typo and all."""
    bundle, previous = make_bundle(tmp_path / "new", seed=0), make_bundle(tmp_path / "old", seed=1)
    words = [
        "model",
        "check",
        str(bundle),
        "--previous",
        str(previous),
        "--reference",
        str(tmp_path / "nothere.tif"),
    ]
    assert main(words) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "--reference is for a first model's balance check" in line and "give one of the two" in line


def test_list_and_rollback_take_the_registry_as_their_word_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new user typed `geoseg model list models/` and got argparse's "--registry is
    required": the registry may be the command's one word, or --registry, not two different
    ones; a bundle given for a registry is named as one."""
    reg = tmp_path / "models"
    for seed, version in enumerate(("v0001", "v0002")):
        assert registry.register(make_bundle(tmp_path / version, seed=seed), reg).version == version
        registry.promote(reg, version)
    assert main(["model", "list", str(reg)]) == 0
    by_word = capsys.readouterr().out
    assert main(["model", "list", "--registry", str(reg)]) == 0
    assert capsys.readouterr().out == by_word
    assert "* v0002" in by_word and "  v0001" in by_word
    assert main(["model", "rollback", str(reg)]) == 0
    assert registry.load_state(reg).current == "v0001"
    assert main(["model", "list", str(reg), "--registry", str(tmp_path / "other")]) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(["model", "list"]) == 2
    assert "which registry? `geoseg model list REGISTRY`" in capsys.readouterr().err
    assert main(["model", "list", str(reg / registry.STATE)]) == 2  # the file, for its folder
    assert f"is the registry's state file: give its folder, {reg}" in capsys.readouterr().err
    assert main(["model", "rollback", str(tmp_path / "v0001")]) == 2
    assert "is a model bundle, not a registry" in capsys.readouterr().err
    assert registry.load_state(reg).current == "v0001"


def test_model_list_of_a_bundle_shows_its_clusters_names_and_colours(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After `geoseg train --out model/` a user lists `model/` itself: its method, k, weights
    and every cluster, named or not, with the colour its outputs are drawn in."""
    bundle = make_bundle(tmp_path / "model", seed=0)
    assert main(["model", "name", str(bundle), "1=roofs", "--color", "1=#c0392b"]) == 0
    capsys.readouterr()
    assert main(["model", "list", str(bundle)]) == 0
    lines = capsys.readouterr().out.splitlines()
    meta = load_meta(bundle)
    assert lines[0].split() == [
        str(bundle),
        meta.method,
        f"k={len(meta.clusters)}",
        sha256_file(bundle / WEIGHTS)[:12],
    ]
    shown = dict(line.strip().split(": ", 1) for line in lines[1:])
    assert shown["1"] == "roofs  #c0392b"
    assert len(shown) == len(meta.clusters) and shown["0"].startswith("cluster 0  #")


def test_a_survey_ingested_after_the_promoted_model_is_new_whatever_its_file_date(
    shared_data: Path, tmp_path: Path
) -> None:
    """Added means added to the catalog: ingest writes ``created`` (now), and a source file
    older than the promoted model (its mtime is the item's datetime) is still a new survey."""
    import os
    import shutil

    from geoseg.config import IngestConfig
    from geoseg.ingest import ingest

    source = shutil.copy(reference_tiles(shared_data)[0], tmp_path / "old_survey.tif")
    old = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    os.utime(source, (old, old))
    reg = tmp_path / "models"
    registry.promote(reg, registry.register(make_bundle(tmp_path / "m"), reg).version)
    registered = datetime.fromisoformat(registry.list_versions(reg)[0].registered)

    store = ingest([source], tmp_path / "survey.zarr", IngestConfig(patch_size=64), progress=False)
    catalog = store.with_name("survey.zarr.stac") / "catalog.json"
    (item,) = pystac.Catalog.from_file(str(catalog)).get_items(recursive=True)
    assert item.datetime == datetime(2020, 1, 1, tzinfo=UTC)  # the file's date, as before
    created = item.common_metadata.created
    assert created is not None and created > registered  # also within the second of registering
    found = registry.new_surveys(catalog, reg)
    assert [s.item_id for s in found] == [item.id]
    assert found[0].image == Path(source).resolve()
    assert datetime.fromisoformat(found[0].added) == created

    # Ingested again (other settings, --overwrite): the survey was added then, not now.
    ingest([source], store, IngestConfig(patch_size=48), progress=False, overwrite=True)
    (again,) = pystac.Catalog.from_file(str(catalog)).get_items(recursive=True)
    assert again.common_metadata.created == created


def test_a_read_only_registry_is_named_not_its_lock_file(
    tmp_path: Path, small_fs, capsys: pytest.CaptureFixture[str]
) -> None:
    """`geoseg model register/promote/rollback --registry ro/reg` on a read-only mount said
    "cannot write ro/reg/.geoseg.lock: read-only file system": the registry is named, and it
    stays as it was."""
    import shutil

    fs = small_fs("4m")
    reg = fs / "reg"
    first = make_bundle(tmp_path / "a")
    registry.promote(reg, registry.register(first, reg).version)
    second = permuted_copy(first, tmp_path / "b", [1, 0, 3, 2])
    registry.register(second, reg)
    before = (reg / registry.STATE).read_bytes()
    remount_read_only(fs)
    for argv in (
        ["model", "register", str(shutil.copytree(second, tmp_path / "c")), "--registry", str(reg)],
        ["model", "promote", "v0002", "--registry", str(reg)],
        ["model", "rollback", "--registry", str(reg)],
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert (
            err
            == f"geoseg model: error: cannot write in {reg}: Read-only file system: fix its permissions or choose another output"
        ), err
    assert (reg / registry.STATE).read_bytes() == before
