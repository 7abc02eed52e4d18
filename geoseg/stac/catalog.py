"""The run catalog: a self-contained STAC catalog of what a flow run ingested, trained and predicted.

A run folder's ``catalog/`` is the run's one root catalog, with three sub-catalogs:
``surveys`` (one item per source raster, with the patch store that ingested it),
``models`` (bundle items, ``derived_from`` the surveys they were trained on, from
model.json's provenance) and ``predictions`` (segment's own label-extension item per
cluster COG, re-linked: ``source`` -> the survey item, ``derived_from`` -> the model item).
Links between its documents, and hrefs of files inside the run folder, are relative, so
the run folder can be moved or published as it is; a file outside the run folder (a
survey raster elsewhere) keeps its absolute path (:func:`geoseg.stac.items.href`). Items
are identified by content (sha256 prefixes): re-running a flow replaces them in place,
keeping what the catalog knew of them that the new item lacks (``created``, assets).

Validation is offline: the core STAC schemas ship with pystac, extension schemas are URLs,
so the label extension's required fields are checked explicitly
(:func:`validate_run_catalog`).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pystac

from geoseg.errors import InputError
from geoseg.io.outputs import OUTPUT_ASSETS, WEIGHTS_MEDIA_TYPE, ZARR_MEDIA_TYPE
from geoseg.stac.items import is_absolute_href, is_url, raster_item, run_folder, save_catalog

__all__ = [
    "RUN_CATALOG_ID",
    "export_catalog",
    "model_item",
    "run_prediction_item",
    "survey_item",
    "update_run_catalog",
    "validate_run_catalog",
]

RUN_CATALOG_ID = "geoseg-run"
KIND = "geoseg:kind"
_SUBCATALOGS = {"survey": "surveys", "model": "models", "prediction": "predictions"}


def _run_stamp(path: Path) -> datetime.datetime:
    """An item's datetime: when its file was written (stable across re-runs that skip work)."""
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, tz=datetime.UTC).replace(microsecond=0)


def survey_item(
    source: str | Path,
    store: str | Path | None = None,
    sha256: str | None = None,
    created: datetime.datetime | None = None,
) -> pystac.Item:
    """A STAC item for one source raster of a survey (and the patch store it went into).

    :func:`geoseg.stac.items.raster_item` gives the footprint, projection and checksummed asset;
    the id is prefixed ``survey-`` and the patch store added as a second asset. ``sha256``:
    the file's digest when the caller has just computed it (ingest's plan). ``created``
    (STAC common metadata, UTC): when the survey was added to the catalog; ingest writes
    it, and the retrain flow's "new surveys" are those created after the promoted model
    (:func:`geoseg.models.registry.new_surveys`). The item's ``datetime`` stays the file's
    modification time, which says nothing about when the survey was ingested.
    """
    source = Path(source).resolve()
    if not source.is_file():
        raise InputError(f"survey raster not found: {source}")
    item = raster_item(source, sha256=sha256)
    item.id = f"survey-{item.id}"
    item.properties[KIND] = "survey"
    if created is not None:
        # Not truncated to the second, like the registry's times: a survey ingested in the
        # second its model was registered still counts as added after it.
        item.common_metadata.created = created.astimezone(datetime.UTC)
    if store is not None and Path(store).exists():
        item.add_asset(
            "patches",
            pystac.Asset(
                str(Path(store).resolve()),
                media_type=ZARR_MEDIA_TYPE,
                roles=["data"],
                title="patch store",
            ),
        )
    return item


def model_item(bundle: str | Path, derived_from: Sequence[pystac.Item] | None = None) -> pystac.Item:
    """A STAC item for a model bundle: no footprint; bands, clusters, selection rule, device.

    ``derived_from`` defaults to the surveys of the training stores recorded in model.json
    (those whose rasters still exist); :func:`update_run_catalog` adds them with the model.
    """
    from geoseg.models.bundle import META, WEIGHTS, load_meta, model_id

    bundle = Path(bundle).resolve()
    meta = load_meta(bundle)
    if derived_from is None:
        derived_from = [
            survey_item(source["path"], store=store["path"])
            for store in meta.provenance.get("stores", [])
            for source in store.get("sources", [])
            if Path(source["path"]).is_file()
        ]
    item = pystac.Item(
        id=model_id(bundle),
        geometry=None,
        bbox=None,
        datetime=_run_stamp(bundle / WEIGHTS),
        properties={
            KIND: "model",
            "title": f"IIC model {bundle.name}",
            "geoseg:bands": list(meta.band_names),
            "geoseg:patch_size": meta.patch_size,
            "geoseg:scale": meta.scale,
            "geoseg:clusters": [c.to_dict() for c in meta.clusters],
            "geoseg:selection": meta.selection,
            "geoseg:device": meta.provenance.get("device"),
        },
    )
    item.add_asset(
        "weights", pystac.Asset(str(bundle / WEIGHTS), media_type=WEIGHTS_MEDIA_TYPE, roles=["data"])
    )
    item.add_asset(
        "metadata", pystac.Asset(str(bundle / META), media_type=pystac.MediaType.JSON, roles=["metadata"])
    )
    for survey in derived_from:
        item.add_link(pystac.Link("derived_from", survey, media_type=pystac.MediaType.JSON))
    return item


# outputs the flow adds after segment wrote its item (vectorize runs as its own task)
_EXTRA_ASSETS = {key: OUTPUT_ASSETS[key] for key in ("gpkg", "gpkg_qml")}


def run_prediction_item(outputs: Mapping[str, Any], source: pystac.Item, model: pystac.Item) -> pystac.Item:
    """The run catalog's item of one prediction: segment's own STAC item, linked into the catalog.

    ``outputs`` are a segment result's paths (``stac_item``, ``clusters``, ``gpkg``, ...).
    Segment's item (label + projection extensions, assets) links to the raw source file
    and model.json; here those links are replaced by ``source`` -> the survey item (with
    the label extension's asset list) and ``derived_from`` -> the model item.
    """
    from pystac.extensions.label import LabelExtension

    written = Path(outputs["stac_item"])
    if not written.is_file():
        raise InputError(f"segment wrote no STAC item: {written}")
    item = pystac.Item.from_file(str(written))
    item.make_asset_hrefs_absolute()
    item.id = f"prediction-{source.id.removeprefix('survey-')}-{model.id}"
    item.properties[KIND] = "prediction"
    item.properties["title"] = Path(outputs["clusters"]).name
    item.properties["geoseg:model"] = model.id  # segment wrote the bundle's href
    item.clear_links()
    for key, (media, roles) in _EXTRA_ASSETS.items():
        if outputs.get(key) and key not in item.assets and Path(outputs[key]).exists():
            item.add_asset(
                key, pystac.Asset(str(Path(outputs[key]).resolve()), media_type=media, roles=list(roles))
            )
    LabelExtension.ext(item).add_source(source, assets=["image"])
    item.add_link(pystac.Link("derived_from", model, media_type=pystac.MediaType.JSON, title="model"))
    return item


def update_run_catalog(catalog_dir: str | Path, items: Sequence[pystac.Item]) -> Path:
    """Add (or replace, by id) items in the run catalog at ``catalog_dir``; returns catalog.json.

    An item replacing one of the same id keeps the old one's ``created`` (when the survey
    was first added: the retrain flow's "new surveys"), the assets it lacks (a survey
    item of segment, without the patch store, replaces ingest's) and the old assets whose
    files are there (:func:`_keep_known`). A survey item given here that the catalog did not
    have, and that has no ``created`` (segment's item of a raster it was the first to
    add), is created now: added now, whatever its file's age; the surveys added only as
    the link targets of a model item (what it was trained on) are not. The catalog is written with
    :func:`geoseg.stac.items.save_catalog`: self-contained (relative hrefs inside the run
    folder, absolute outside it), validated, into a temporary sibling folder renamed into
    place, so a reader never sees half of it.
    """
    catalog_dir = Path(catalog_dir).resolve()
    root_file = catalog_dir / "catalog.json"
    if root_file.exists():
        catalog = pystac.Catalog.from_file(str(root_file))
        catalog.make_all_asset_hrefs_absolute()
        for item in catalog.get_items(recursive=True):
            for link in item.links:
                if link.rel in ("source", "derived_from"):
                    link.resolve_stac_object(root=catalog)
    else:
        catalog = pystac.Catalog(
            id=RUN_CATALOG_ID,
            description="geoseg run: surveys ingested, models trained, predictions made",
            title="geoseg run catalog",
        )
    for name in _SUBCATALOGS.values():
        if catalog.get_child(name) is None:
            catalog.add_child(pystac.Catalog(id=name, description=f"{name} of this run", title=name))
    # Items added now (and the items they link to) replace same-id items; links must point
    # at the new objects.
    new: dict[str, pystac.Item] = {}
    given = {item.id for item in items}
    now = datetime.datetime.now(datetime.UTC)
    pending = list(items)
    while pending:
        item = pending.pop(0)
        if item.id in new:
            continue
        new[item.id] = item
        pending += [
            link.target
            for link in item.links
            if link.rel in ("source", "derived_from") and isinstance(link.target, pystac.Item)
        ]
    for item in new.values():
        kind = item.properties.get(KIND)
        if kind not in _SUBCATALOGS:
            raise ValueError(f"item {item.id} has no {KIND} among {sorted(_SUBCATALOGS)}")
        child = catalog.get_child(_SUBCATALOGS[kind])
        assert child is not None
        old = next(child.get_items(item.id), None)
        if old is not None:
            _keep_known(item, old)
            child.remove_item(item.id)
        elif kind == "survey" and item.id in given and item.common_metadata.created is None:
            item.common_metadata.created = now
        child.add_item(item)
    for item in catalog.get_items(recursive=True):
        for link in item.links:
            if link.rel in ("source", "derived_from") and isinstance(link.target, pystac.Item):
                link.target = new.get(link.target.id, link.target)
    return save_catalog(catalog, catalog_dir, tree=run_folder(catalog_dir))


def _keep_known(item: pystac.Item, old: pystac.Item) -> None:
    """What ``old`` (the same id, already in the catalog) knew: its created time, and its
    assets whose files are there (``item`` fills only the others). A survey item that a
    model item rebuilds from model.json names the store where the model was trained; in a
    copied run folder that is the original folder's, and the catalog's own store stays."""
    created = [c for c in (old.common_metadata.created, item.common_metadata.created) if c is not None]
    if created:
        item.common_metadata.created = min(created)
    for key, asset in old.assets.items():
        if key not in item.assets or _local_file(asset) is True:
            item.add_asset(key, asset.clone())


def _local_file(asset: pystac.Asset) -> bool | None:
    """Whether the asset's local file exists; None for a URL or an href without a base."""
    href = asset.get_absolute_href()
    return None if href is None or is_url(href) else Path(href).exists()


def export_catalog(catalog_dir: str | Path, dest_dir: str | Path) -> Path:
    """Copy a run catalog's JSON to ``dest_dir``, hrefs rewritten relative to the new place.

    The assets stay where they are (no data is copied): ``catalogs/demo/`` in the
    repository is the demo run's catalog exported this way, and resolves once
    ``make demo`` has written ``demo-out/``.
    """
    source = Path(catalog_dir) / "catalog.json"
    if not source.is_file():
        raise InputError(f"no STAC catalog at {source}")
    catalog = pystac.Catalog.from_file(str(source))
    catalog.fully_resolve()
    catalog.make_all_asset_hrefs_absolute()
    return save_catalog(catalog, dest_dir)


def validate_run_catalog(catalog_dir: str | Path, check_assets: bool = True) -> int:
    """Load the catalog with pystac and validate every object offline; returns their number.

    Core STAC schemas (bundled with pystac) are checked for every catalog and item; the
    label extension's required fields are checked explicitly; every link must be relative
    and resolve to an existing file (a self-contained catalog); every asset must resolve,
    its href relative when the file is inside the run folder (``catalog_dir``'s parent)
    and absolute when outside it, so the run folder can move. ``check_assets=False`` (an
    exported example catalog, whose assets are elsewhere): asset hrefs must be relative,
    and are not resolved.
    """
    from pystac.extensions.label import LabelExtension
    from pystac.validation import validate_dict

    root = Path(catalog_dir) / "catalog.json"
    if not root.is_file():
        raise InputError(f"no STAC catalog at {root}")
    catalog = pystac.Catalog.from_file(str(root))
    tree = run_folder(catalog_dir)
    count = 0
    for obj in [catalog, *catalog.get_children(), *catalog.get_items(recursive=True)]:
        data = obj.to_dict(include_self_link=False, transform_hrefs=True)
        validate_dict(data, extensions=[], href=obj.get_self_href())
        base = Path(obj.get_self_href() or "").parent
        for link in data.get("links", []):
            href = link["href"]
            if is_absolute_href(href):
                raise InputError(f"{obj.id}: link {link['rel']} is not relative: {href}")
            if not (base / href).exists():
                raise InputError(f"{obj.id}: link {link['rel']} points to a missing file: {href}")
        for key, asset in data.get("assets", {}).items():
            _check_asset(f"{obj.id}: asset {key}", asset["href"], base, tree if check_assets else None)
        if isinstance(obj, pystac.Item) and LabelExtension.has_extension(obj):
            label = LabelExtension.ext(obj)
            if not label.label_description or label.label_type is None or not label.get_sources():
                raise InputError(f"{obj.id}: label extension misses description/type/source")
        count += 1
    return count


def _check_asset(what: str, href: str, base: Path, tree: Path | None) -> None:
    """An asset href of a run catalog: see :func:`validate_run_catalog` (``tree`` None: an
    exported catalog, relative hrefs not resolved)."""
    absolute = is_absolute_href(href)
    if tree is None:
        if absolute:
            raise InputError(f"{what} href is not relative: {href}")
        return
    target = Path(href) if absolute else base / href
    if not target.exists():
        raise InputError(f"{what} points to a missing file: {href}")
    inside = target.resolve().is_relative_to(tree)
    if inside and absolute:
        raise InputError(f"{what} href is absolute, inside the run folder {tree}: {href}")
    if not inside and not absolute:
        raise InputError(
            f"{what} href is relative, outside the run folder {tree} (it breaks when the folder moves): {href}"
        )
