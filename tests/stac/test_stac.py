"""geoseg.stac.items: raster items (footprint, projection) and self-contained catalogs."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pystac
import pytest
import rasterio
from pyproj import Transformer
from pystac.validation import validate_dict

from geoseg.errors import InputError
from geoseg.stac.items import raster_item, save_catalog, save_catalog_files


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


def _model_catalog(folder: Path, ids: list[str]) -> pystac.Catalog:
    """A catalog like the registry's: one item per version folder, its asset inside it."""
    catalog = pystac.Catalog(id="models", description="test versions")
    for version in ids:
        item = pystac.Item(id=version, geometry=None, bbox=None, datetime=datetime(2026, 1, 1, tzinfo=UTC),
                           properties={"geoseg:k": 6})  # fmt: skip
        weights = folder / version / "weights.safetensors"
        item.add_asset("weights", pystac.Asset(str(weights), roles=["model"]))
        catalog.add_item(item)
    return catalog


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_save_catalog_files_replaces_only_its_own_files(tmp_path: Path) -> None:
    """Beside files it does not own (a registry's model folders), each JSON valid, hrefs relative."""
    folder = tmp_path / "models"
    for version in ("v0001", "v0002"):
        (folder / version).mkdir(parents=True)
        (folder / version / "weights.safetensors").write_bytes(version.encode())
    (folder / "registry.json").write_text('{"versions": []}')
    others = _digests(folder)
    root = save_catalog_files(_model_catalog(folder, ["v0001"]), folder)
    root = save_catalog_files(_model_catalog(folder, ["v0001", "v0002"]), folder)  # over the first
    assert root == folder.resolve() / "catalog.json"
    written = _digests(folder)
    assert {name: written[name] for name in others} == others  # the other files untouched
    assert set(written) - set(others) == {"catalog.json", "v0001/v0001.json", "v0002/v0002.json"}
    for name in set(written) - set(others):
        data = json.loads((folder / name).read_text())
        validate_dict(data, extensions=[])  # raises on an invalid document
        assert all(not link["href"].startswith("/") for link in data["links"]), name
    loaded = pystac.Catalog.from_file(str(root))
    items = {item.id: item for item in loaded.get_items()}
    assert set(items) == {"v0001", "v0002"}
    assert items["v0002"].assets["weights"].href == "./weights.safetensors"
    assert Path(items["v0002"].assets["weights"].get_absolute_href()).read_bytes() == b"v0002"
    assert [p.name for p in folder.rglob(".*")] == []  # no temporary file left


def test_save_catalog_files_invalid_catalog_leaves_the_previous_files(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    (folder / "v0001").mkdir(parents=True)
    save_catalog_files(_model_catalog(folder, ["v0001"]), folder)
    before = _digests(folder)
    invalid = _model_catalog(folder, ["v0001", "v0002"])
    (folder / "v0002").mkdir()
    next(invalid.get_items("v0002")).properties["created"] = 2026  # the schema wants a date-time
    with pytest.raises(InputError, match="invalid STAC catalog"):
        save_catalog_files(invalid, folder)
    assert _digests(folder) == before  # catalog.json and v0001.json as they were, no v0002.json
    assert [p.name for p in folder.rglob(".*")] == []
