"""geoseg.stac.items: raster items (footprint, projection) and self-contained catalogs."""

from __future__ import annotations

from pathlib import Path

import pystac
import pytest
import rasterio
from pyproj import Transformer

from geoseg.errors import InputError
from geoseg.stac.items import raster_item, save_catalog


def test_raster_item_footprint_and_projection(shared_data: Path) -> None:
    path = shared_data / "lausanne" / "big_img" / "1091-322_00.tif"
    item = raster_item(path)
    with rasterio.open(path) as src:
        bounds, transform, shape = src.bounds, src.transform, [src.height, src.width]
    assert item.properties["proj:code"] == "EPSG:2056"
    assert item.properties["proj:shape"] == shape
    assert item.properties["proj:transform"] == pytest.approx(list(transform)[:6])
    # The raster's centre, projected independently with pyproj, lies inside the WGS84 bbox.
    lon, lat = Transformer.from_crs(2056, 4326, always_xy=True).transform(
        (bounds.left + bounds.right) / 2, (bounds.bottom + bounds.top) / 2
    )
    west, south, east, north = item.bbox
    assert west < lon < east and south < lat < north
    assert 0 < east - west < 0.01  # 437 m wide, not a degree-sized box
    assert item.assets["image"].roles == ["data"]
    assert item.assets["image"].extra_fields["file:checksum"].startswith("1220")


def test_raster_item_without_crs_has_no_geometry(shared_data: Path) -> None:
    item = raster_item(shared_data / "loveda" / "0_rgb.png", item_id="loveda-0", roles=("data", "visual"))
    assert item.id == "loveda-0" and item.geometry is None and item.bbox is None
    assert "proj:code" not in item.properties
    assert item.assets["image"].media_type == pystac.MediaType.PNG


def test_save_catalog_is_self_contained(shared_data: Path, tmp_path: Path) -> None:
    catalog = pystac.Catalog(id="inputs", description="test")
    catalog.add_item(raster_item(shared_data / "neon" / "OSBS_029.tif"))
    root = save_catalog(catalog, tmp_path / "cat")
    assert root == tmp_path.resolve() / "cat" / "catalog.json"
    assert not list(tmp_path.glob(".cat*"))  # no temporary folder left
    loaded = pystac.Catalog.from_file(str(root))
    (item,) = list(loaded.get_items())
    raw = item.to_dict(transform_hrefs=False)
    href = item.assets["image"].href
    assert not href.startswith("/") and "://" not in href, href
    assert (
        Path(item.assets["image"].get_absolute_href()).resolve()
        == (shared_data / "neon" / "OSBS_029.tif").resolve()
    )
    assert raw["properties"]["proj:code"] == "EPSG:32617"


def test_raster_item_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.tif"):
        raster_item(tmp_path / "nope.tif")
