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
