"""Small STAC helpers: an item for one raster file, and a self-contained catalog on disk,
validated before it is published: as a folder of its own (``save_catalog``), or file by
file into a folder that holds more than the catalog (``save_catalog_files``).

Hrefs follow one rule (:func:`href`): a file inside the document's *run folder* (the folder
holding the output folder the document is written in: a flow's run folder for
``catalog/`` and ``predictions/``) is linked relatively, so the run folder can be moved or
copied whole; a file outside it (a survey raster elsewhere, a model of another run) by
its absolute path, which moving the run folder does not break.

Items carry the raster's footprint in EPSG:4326 (``rasterio.warp.transform_bounds``) and
the projection extension (EPSG code where there is one, else WKT2; shape; transform), so
a GIS client can place them without opening the file. A raster without a CRS (a plain
PNG/JPEG) gets no geometry: STAC allows a null geometry for non-spatial items.

The run catalog of a flow (surveys, models, predictions) lives in :mod:`geoseg.stac.catalog`;
these helpers are the generic building blocks.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pystac
from pystac.extensions.projection import ProjectionExtension
from pystac.validation import validate_dict
from rasterio.warp import transform_bounds

from geoseg.errors import InputError
from geoseg.io.fileio import atomic_path, published_path, require_published, sha256_file, write_json_atomic
from geoseg.io.outputs import COG_MEDIA_TYPE, JSON_MEDIA_TYPE, NODATA
from geoseg.io.sources import open_dataset

if TYPE_CHECKING:
    from geoseg.models.bundle import Cluster

__all__ = [
    "classify",
    "href",
    "is_absolute_href",
    "is_url",
    "prediction_item",
    "raster_item",
    "run_folder",
    "save_catalog",
    "save_catalog_files",
    "save_item",
]

_MEDIA = {
    ".tif": pystac.MediaType.GEOTIFF,
    ".tiff": pystac.MediaType.GEOTIFF,
    ".png": pystac.MediaType.PNG,
    ".jpg": pystac.MediaType.JPEG,
    ".jpeg": pystac.MediaType.JPEG,
    ".jp2": pystac.MediaType.JPEG2000,
}


def run_folder(output_dir: str | Path) -> Path:
    """The run folder of STAC documents written in ``output_dir``: the folder holding it
    (``run/`` for ``run/catalog/`` and ``run/predictions/``)."""
    return Path(output_dir).resolve().parent


def is_url(href: str | Path) -> bool:
    """Whether ``href`` is a URL (``https://...``, ``s3://...``, ``file://...``), not a path."""
    return "://" in str(href)


def is_absolute_href(href: str) -> bool:
    """Whether a STAC href is absolute: a URL or an absolute POSIX path."""
    return is_url(href) or href.startswith("/")


def href(target: str | Path, document: str | Path, tree: str | Path | None) -> str:
    """The href of ``target`` in the STAC document written at ``document``: relative to the
    document (``./x``, ``../x``, as pystac writes them) when ``target`` lies inside ``tree``
    (the run folder; None: everywhere), else its absolute path. A URL is kept as it is."""
    if is_url(target):
        return str(target)
    target = Path(target).resolve()
    if tree is not None and not target.is_relative_to(Path(tree).resolve()):
        return str(target)
    relative = os.path.relpath(target, Path(document).resolve().parent)
    return relative if relative.startswith("..") else f"./{relative}"


def _item_id(path: Path, digest: str) -> str:
    """A stable id from the file name and its content (re-ingesting a file keeps its id)."""
    return f"{re.sub(r'[^A-Za-z0-9_.-]+', '-', path.stem)}-{digest[:8]}"


def raster_item(
    path: str | Path, item_id: str | None = None, roles: Sequence[str] = ("data",), sha256: str | None = None
) -> pystac.Item:
    """A STAC item for one raster file: WGS84 footprint, projection extension, one asset.

    The item's datetime is the file's modification time (UTC), the asset href the file's
    absolute path (:func:`save_catalog` makes it relative) with a ``file:checksum``
    property (multihash sha2-256), so a catalog records exactly which bytes were used.
    ``sha256`` skips hashing the file again where the caller has its digest.
    """
    path = Path(path).resolve()
    with open_dataset(path) as src:
        crs, transform, width, height = src.crs, src.transform, src.width, src.height
        count, dtypes = src.count, src.dtypes
    digest = sha256 or sha256_file(path)
    geometry = bbox = None
    if crs is not None:
        left, bottom, right, top = (
            min(transform.c, transform.c + transform.a * width),
            min(transform.f, transform.f + transform.e * height),
            max(transform.c, transform.c + transform.a * width),
            max(transform.f, transform.f + transform.e * height),
        )
        west, south, east, north = transform_bounds(crs, "EPSG:4326", left, bottom, right, top)
        bbox = [west, south, east, north]
        ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
        geometry = {"type": "Polygon", "coordinates": [ring]}
    stamp = datetime.datetime.fromtimestamp(path.stat().st_mtime, tz=datetime.UTC).replace(microsecond=0)
    item = pystac.Item(
        id=item_id or _item_id(path, digest),
        geometry=geometry,
        bbox=bbox,
        datetime=stamp,
        properties={"title": path.name, "geoseg:bands": count, "geoseg:dtype": dtypes[0]},
    )
    if crs is not None:
        proj = ProjectionExtension.ext(item, add_if_missing=True)
        epsg = crs.to_epsg()
        if epsg is not None:
            proj.epsg = epsg
        else:
            proj.epsg = None
            proj.wkt2 = crs.to_wkt()
        proj.shape = [height, width]
        proj.transform = list(transform)[:6]
    asset = pystac.Asset(
        str(path), media_type=_MEDIA.get(path.suffix.lower()), roles=list(roles), title=path.name
    )
    asset.extra_fields["file:checksum"] = f"1220{digest}"
    item.add_asset("image", asset)
    return item


def save_catalog(catalog: pystac.Catalog, root_dir: str | Path, tree: str | Path | None = None) -> Path:
    """Write ``catalog`` self-contained (relative hrefs) into ``root_dir``; return catalog.json.

    ``tree``: assets outside this folder keep absolute hrefs (:func:`href`; a run catalog
    passes its run folder); None: every asset href relative. Links between the catalog's
    own documents are always relative. Written into a temporary sibling folder, validated
    against the core STAC schemas bundled with pystac (offline: extension schemas are URLs,
    not fetched), then renamed into place: a reader never sees half a catalog, and an
    invalid one is never left behind (InputError).
    """
    root_dir = Path(root_dir).resolve()
    with atomic_path(root_dir, replace_folder=(root_dir / "catalog.json").is_file()) as tmp:  # a catalog only
        catalog.normalize_hrefs(str(tmp / "catalog.json"))
        for item in catalog.get_items(recursive=True):  # the same parent as root_dir: the same hrefs
            for asset in item.assets.values():
                asset.href = href(str(asset.get_absolute_href()), str(item.get_self_href()), tree)
        catalog.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
        _validated_documents(catalog, root_dir)
    # Asset hrefs were made relative to the temporary folder: same parent, same depth.
    catalog.normalize_hrefs(str(root_dir / "catalog.json"))
    return root_dir / "catalog.json"


def save_catalog_files(catalog: pystac.Catalog, root_dir: str | Path) -> Path:
    """Write ``catalog`` self-contained into ``root_dir`` file by file; return catalog.json.

    For a folder that holds more than the catalog (a model registry: each version's folder
    holds its item beside the model), where ``save_catalog``'s replacement of the whole
    folder cannot be used: only the catalog's own JSON files are replaced. Every document
    is validated first, as ``save_catalog`` does (an invalid catalog: InputError, nothing
    written), then each is written to a temporary name and renamed into place, the items
    before catalog.json, like every other file geoseg publishes (``io.fileio.atomic_path``):
    a reader sees each file whole, the old one or the new one.
    """
    root_dir = Path(root_dir).resolve()
    catalog.catalog_type = pystac.CatalogType.SELF_CONTAINED
    catalog.normalize_hrefs(str(root_dir / "catalog.json"))
    catalog.make_all_asset_hrefs_relative()
    documents = _validated_documents(catalog, root_dir)
    with contextlib.ExitStack() as publish:  # renamed when the stack closes: last entered first
        for path, data in documents:  # the catalog first, so it is renamed last
            tmp = publish.enter_context(atomic_path(path))
            tmp.write_text(json.dumps(data, indent=2) + "\n")
    return root_dir / "catalog.json"


def _stac_objects(catalog: pystac.Catalog) -> Iterator[pystac.STACObject]:
    for node, _, items in catalog.walk():
        yield node
        yield from items


def _validated_documents(catalog: pystac.Catalog, root_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Each object's path and JSON (no self link, relative hrefs), validated against the core
    STAC schemas bundled with pystac (offline: extension schemas are URLs, not fetched)."""
    documents = []
    try:
        for obj in _stac_objects(catalog):
            href = obj.get_self_href()
            data = obj.to_dict(include_self_link=False, transform_hrefs=True)
            validate_dict(data, extensions=[], href=href)
            documents.append((Path(str(href)), data))
    except pystac.errors.STACValidationError as exc:
        raise InputError(f"invalid STAC catalog for {root_dir}: {exc}") from exc
    return documents


def prediction_item(
    clusters: str | Path,
    source: str | Path,
    model_dir: str | Path | None,
    classes: Sequence[Cluster],
    assets: Mapping[str, tuple[Path, str, Sequence[str]]] | None = None,
) -> pystac.Item:
    """The STAC item of one segmentation output (written by ``geoseg segment``, and the baselines).

    :func:`raster_item` of the cluster COG (footprint, projection, checksum; its asset
    renamed ``clusters``, with the output contract's COG media type, as the confidence COG),
    the label extension (raster labels: the cluster ids are its classes), the
    classification extension on the ``clusters`` asset (each id's name, as ``title``, and
    colour: what the ids mean, as ``geoseg model name`` set them), further ``assets``
    (key -> (path, media type, roles)), and links ``derived_from`` the source raster and
    ``via`` the model's model.json (none with ``model_dir`` None: a baseline without a bundle).
    """
    from pystac.extensions.label import LabelClasses, LabelExtension, LabelType

    for path in [Path(clusters), *(a[0] for a in (assets or {}).values())]:
        require_published(path)  # an item never describes a half-published output set
    item = raster_item(clusters, item_id=f"{Path(source).stem}-prediction", roles=("data", "labels"))
    item.assets["clusters"] = item.assets.pop("image")
    item.assets["clusters"].media_type = COG_MEDIA_TYPE
    if model_dir is not None:
        item.properties["geoseg:model"] = str(model_dir)
    LabelExtension.ext(item, add_if_missing=True).apply(
        label_description="IIC clusters (label-free): ids are clusters, not ground-truth classes",
        label_type=LabelType.RASTER,
        label_properties=None,
        label_classes=[LabelClasses.create(classes=[c.id for c in classes], name=None)],
        label_tasks=["segmentation"],
        label_methods=["automated"],
    )
    classify(item.assets["clusters"], classes)
    for key, (path, media_type, roles) in (assets or {}).items():
        item.add_asset(key, pystac.Asset(str(Path(path).resolve()), media_type=media_type, roles=list(roles)))
    source_href = str(Path(source).resolve())
    item.add_link(pystac.Link("derived_from", source_href, media_type="image/tiff", title="source"))
    if model_dir is not None:
        model_json = str((Path(model_dir) / "model.json").resolve())
        item.add_link(pystac.Link("via", model_json, media_type=JSON_MEDIA_TYPE, title="model"))
    return item


def save_item(item: pystac.Item, path: str | Path) -> Path:
    """Write a standalone item (a prediction's ``<stem>_prediction.json``) at ``path``,
    atomically; its assets and links to files inside the run folder of ``path``'s folder
    relative, the others absolute (:func:`href`). An item written in an output set's
    staging folder links its files where they will be published."""
    path = Path(path)
    final = published_path(path.resolve())
    tree = run_folder(final.parent)
    item.set_self_href(str(path.resolve()))
    for asset in item.assets.values():
        asset.href = href(published_path(str(asset.get_absolute_href())), final, tree)
    for link in item.links:
        if not link.is_resolved() and link.rel not in ("self", "root", "parent"):
            link.target = href(published_path(str(link.get_absolute_href())), final, tree)
    model = item.properties.get("geoseg:model")
    if model is not None and not is_url(model):  # the bundle: the same rule as the assets
        item.properties["geoseg:model"] = href(model, final, tree)
    return write_json_atomic(path, item.to_dict(include_self_link=False))


def classify(asset: pystac.Asset, classes: Sequence[Cluster], nodata: int = NODATA) -> None:
    """The classification extension's ``classes`` on a cluster raster asset: value, name, colour.

    ``name`` must match ``[0-9A-Za-z_-]+`` in the extension's schema, so it is a slug of the
    label ("red roofs" -> ``red_roofs``, unnamed -> ``cluster_3``); ``title`` is the label as
    the user wrote it.
    """
    from pystac.extensions.classification import Classification, ClassificationExtension

    entries = []
    for c in sorted(classes, key=lambda c: c.id):
        slug = re.sub(r"[^0-9A-Za-z_-]+", "_", c.label).strip("_") or f"cluster_{c.id}"
        hint = "{:02X}{:02X}{:02X}".format(*c.colour)
        entries.append(Classification.create(value=c.id, name=slug, title=c.label, color_hint=hint))
    entries.append(Classification.create(value=nodata, name="nodata", title="no data", nodata=True))
    ClassificationExtension.ext(asset, add_if_missing=True).classes = entries
