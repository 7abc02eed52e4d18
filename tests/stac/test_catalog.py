"""geoseg.stac.catalog: a run catalog's items replaced by id keep what the catalog knew."""

from __future__ import annotations

import shutil
from pathlib import Path

import pystac

from geoseg.stac.catalog import survey_item, update_run_catalog
from geoseg.synthetic import generate_scene


def _patches_href(catalog_json: Path) -> Path:
    catalog = pystac.Catalog.from_file(str(catalog_json))
    catalog.make_all_asset_hrefs_absolute()
    (item,) = catalog.get_items(recursive=True)
    return Path(item.assets["patches"].get_absolute_href() or "")


def test_a_copied_run_folder_keeps_its_own_patch_store(tmp_path: Path) -> None:
    """model.json names the store where the model was trained; after `cp -r` of the run
    folder a same-id survey item rebuilt from it points into the original folder. The
    catalog keeps its own store while it is there, and takes the other once it is not."""
    run = tmp_path / "run"
    raster = generate_scene(run, size=64).image
    (run / "patches.zarr").mkdir()
    update_run_catalog(run / "catalog", [survey_item(raster, store=run / "patches.zarr")])
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    same_id = survey_item(copy / raster.name, store=run / "patches.zarr")  # the original's store
    assert _patches_href(update_run_catalog(copy / "catalog", [same_id])) == (copy / "patches.zarr").resolve()
    shutil.rmtree(copy / "patches.zarr")
    again = update_run_catalog(
        copy / "catalog", [survey_item(copy / raster.name, store=run / "patches.zarr")]
    )
    assert _patches_href(again) == (run / "patches.zarr").resolve()


def _survey(catalog_json: Path, item_id: str) -> pystac.Item:
    catalog = pystac.Catalog.from_file(str(catalog_json))
    return next(i for i in catalog.get_items(recursive=True) if i.id == item_id)


def test_a_survey_first_added_by_segment_is_created_now_whatever_its_files_age(tmp_path: Path) -> None:
    """segment/local on a new raster into a run folder adds its survey item (no patch store,
    no `created`); the retrain flow on that run catalog must count it as added now, not at
    its file's mtime (before the promoted model: "nothing to retrain"). A survey only linked
    from a model item (what the model was trained on) is not added now by that."""
    import datetime
    import os

    from geoseg.models.registry import new_surveys

    run = tmp_path / "run"
    raster = generate_scene(tmp_path / "new", size=64).image
    trained_on = generate_scene(tmp_path / "old", size=64, seed=1).image
    for path in (raster, trained_on):
        os.utime(path, (1_600_000_000, 1_600_000_000))  # 2020: older than any model
    before = datetime.datetime.now(datetime.UTC)
    model = pystac.Item("model-x", None, None, datetime.datetime.now(datetime.UTC), {"geoseg:kind": "model"})
    model.add_link(pystac.Link("derived_from", survey_item(trained_on), media_type=pystac.MediaType.JSON))
    segmented = survey_item(raster)  # as flows/segment.py makes it
    catalog_json = update_run_catalog(run / "catalog", [model, segmented])

    created = _survey(catalog_json, segmented.id).common_metadata.created
    assert created is not None and created >= before
    assert _survey(catalog_json, survey_item(trained_on).id).common_metadata.created is None
    found = new_surveys(catalog_json, tmp_path / "registry", since=before.isoformat())
    assert [s.item_id for s in found] == [segmented.id]
    again = update_run_catalog(run / "catalog", [survey_item(raster)])  # segmented again later
    assert _survey(again, segmented.id).common_metadata.created == created
