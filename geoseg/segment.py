"""Seamless sliding-window segmentation of large rasters into cluster and confidence COGs.

For each source raster the window grid (:mod:`geoseg.io.windows`) is walked one row of
windows at a time. Each window is read with the model's resampling (``scale`` of
model.json), predicted, brought back to source resolution and added, weighted by
:func:`geoseg.io.windows.blend_weights`, into a strip accumulator one window high and one
raster wide. Rows that no later window touches are final: they are normalised, turned
into cluster ids (argmax) and confidence (max probability), written into intermediate
tiled GeoTIFFs, and dropped. Memory is therefore bounded by ``k x window x width`` floats
plus one strip of source pixels, whatever the raster's height; the intermediates are then
copied into COGs (:mod:`geoseg.io.cog`). Pixels that are nodata (or alpha 0) in any source
band are nodata (255) in every output.

Outputs per source, in ``out_dir`` (names in :mod:`geoseg.io.outputs`): ``<stem>_clusters.tif``
(uint8 ids, nodata 255, colour table, mode overviews), ``<stem>_confidence.tif`` (uint8
percent 0-100, nodata 255), a ``.qml`` beside each, ``<stem>_preview.png`` (with a legend),
``<stem>_prediction.json`` (a STAC item) and, when asked, ``<stem>_polygons.gpkg`` with its
style inside and beside it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoseg.config import SegmentConfig
from geoseg.errors import InputError
from geoseg.iic.model import NormalisedNet, for_inference
from geoseg.inference import (
    MIN_SIDE,
    check_bands,
    predict_probabilities,
    resolve_device,
)
from geoseg.io import outputs
from geoseg.io.cog import to_cog
from geoseg.io.fileio import (
    check_free_space,
    check_set,
    locked,
    made_for_the_run,
    output_set,
    owned_by_set,
    tiled_intermediate,
)
from geoseg.io.outputs import NODATA, OUTPUT_ASSETS, check_unique_stems
from geoseg.io.preview import write_preview
from geoseg.io.sources import discover_sources, open_dataset, report_georeferencing
from geoseg.io.style import paletted_raster_qml, pseudocolour_raster_qml
from geoseg.messages import absolute_path
from geoseg.models.bundle import (
    CLUSTERS_TAG,
    Cluster,
    ModelMeta,
    clusters_to_tag,
    default_clusters,
    load_bundle,
    load_meta,
    model_id,
)
from geoseg.progress import Progress
from geoseg.strips import CONFIDENCE_MAX, segment_into

__all__ = [
    "CONFIDENCE_MAX",
    "NODATA",
    "SegmentResult",
    "check_bands",
    "check_outputs",
    "check_rasters_suit_model",
    "output_paths",
    "predict_probabilities",
    "segment",
    "segment_raster",
    "write_preview",
]

if TYPE_CHECKING:
    from distributed import Client
    from rasterio.io import DatasetReader

log = logging.getLogger(__name__)

STAGE = "segment"  # names the outputs' manifest: .<stem>.geoseg-segment.json


@dataclass
class SegmentResult:
    """Paths written for one source raster."""

    source: Path
    clusters: Path
    confidence: Path
    clusters_qml: Path
    confidence_qml: Path
    preview_png: Path
    stac_item: Path
    gpkg: Path | None = None
    gpkg_qml: Path | None = None
    polygons: int | None = None  # in the GeoPackage


def output_paths(source: Path, out_dir: Path) -> dict[str, Path]:
    """Where the outputs of ``source`` go (the names of :mod:`geoseg.io.outputs`)."""
    clusters = outputs.clusters_path(source, out_dir)
    confidence = outputs.confidence_path(source, out_dir)
    return {
        "clusters": clusters,
        "confidence": confidence,
        "clusters_qml": outputs.style_path(clusters),
        "confidence_qml": outputs.style_path(confidence),
        "preview_png": outputs.preview_path(clusters),
        "stac_item": outputs.prediction_path(clusters),
        "gpkg": outputs.polygons_path(clusters),
    }


# --- outputs ------------------------------------------------------------------------------


def cluster_table(meta: ModelMeta, config: SegmentConfig, model: NormalisedNet) -> list[Cluster]:
    """The clusters of the head used: model.json's table for head B, default colours for A."""
    if config.head == "b" and meta.clusters:
        return sorted(meta.clusters, key=lambda c: c.id)
    return default_clusters(model.arch.k_a if config.head == "a" else model.arch.k_b)


def segment_raster(
    model: NormalisedNet,
    meta: ModelMeta,
    model_dir: Path,
    source: Path,
    out_dir: Path,
    config: SegmentConfig,
    progress: Progress = True,
    client: Client | None = None,
    model_tag: str | None = None,
) -> SegmentResult:
    """Segment one raster with a loaded model; see :func:`segment`. ``model_tag``: the
    bundle's :func:`~geoseg.models.bundle.model_id` when the caller has it (it hashes the weights).

    Every output is written into a staging folder and the set is published together,
    its manifest last (:func:`geoseg.io.fileio.output_set`): a killed or failed run never
    leaves new and old outputs of one source side by side as if they were one result.
    """
    with output_set(out_dir, source.stem, STAGE) as staging:
        tag = model_tag or model_id(model_dir)
        staged = _write_outputs(model, meta, model_dir, tag, source, staging, config, progress, client)
    result = _published(staged, out_dir)
    if result.gpkg is not None and result.polygons is not None:
        from geoseg.vectorize import log_polygons

        log_polygons(result.polygons, result.clusters, result.gpkg)
    return result


def _published(result: SegmentResult, out_dir: Path) -> SegmentResult:
    """The result with its paths in ``out_dir``, where :func:`output_set` published them."""
    moved: dict[str, Any] = {
        f.name: out_dir / value.name
        for f in dataclasses.fields(result)
        if f.name != "source" and isinstance(value := getattr(result, f.name), Path)
    }
    return dataclasses.replace(result, **moved)


def _write_outputs(
    model: NormalisedNet,
    meta: ModelMeta,
    model_dir: Path,
    model_tag: str,
    source: Path,
    out_dir: Path,
    config: SegmentConfig,
    progress: Progress,
    client: Client | None = None,
) -> SegmentResult:
    paths = output_paths(source, out_dir)
    clusters = cluster_table(meta, config, model)
    with open_dataset(source) as src:
        bands = check_source(src, source, meta, model_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        ids_tmp = tiled_intermediate(paths["clusters"])
        conf_tmp = tiled_intermediate(paths["confidence"])
        try:
            if client is None:
                segment_into(model, meta, src, source, bands, ids_tmp, conf_tmp, config, progress)
            else:  # row bands as Dask tasks (geoseg.distributed)
                from geoseg.distributed import segment_on_cluster

                args = (model_dir, src, source, bands, ids_tmp, conf_tmp, config, progress)
                segment_on_cluster(client, model, meta, *args)
            to_cog(
                ids_tmp,
                paths["clusters"],
                resampling="mode",
                colormap={c.id: (*c.colour, 255) for c in clusters},
                tags={
                    CLUSTERS_TAG: clusters_to_tag(clusters),
                    "GEOSEG_MODEL": model_tag,
                    "GEOSEG_SOURCE": str(source),
                    "GEOSEG_PRECISION": config.precision,
                },
                description="cluster id",
            )
            to_cog(
                conf_tmp,
                paths["confidence"],
                resampling="average",
                tags={"GEOSEG_SOURCE": str(source), "units": "percent"},
                description="confidence: max softmax probability, percent",
            )
        finally:  # the intermediates never outlive the run, whatever happened
            ids_tmp.unlink(missing_ok=True)
            conf_tmp.unlink(missing_ok=True)
    paletted_raster_qml(clusters, paths["clusters_qml"])
    pseudocolour_raster_qml(paths["confidence_qml"], 0, CONFIDENCE_MAX, label=" %")
    write_preview(paths["clusters"], clusters, paths["preview_png"], config.preview_size)
    result = SegmentResult(
        source=source,
        clusters=paths["clusters"],
        confidence=paths["confidence"],
        clusters_qml=paths["clusters_qml"],
        confidence_qml=paths["confidence_qml"],
        preview_png=paths["preview_png"],
        stac_item=paths["stac_item"],
    )
    if config.vectorize:
        from geoseg.vectorize import vector_style_path, write_polygons

        names = {c.id: c.name for c in clusters if c.name}
        result.polygons = write_polygons(
            result.clusters, paths["gpkg"], config.vectorize_config(), class_names=names or None
        )
        result.gpkg = paths["gpkg"]
        result.gpkg_qml = vector_style_path(result.gpkg)
    write_prediction_item(result, model_dir, meta, clusters)
    return result


def check_source(src: DatasetReader, path: Path, meta: ModelMeta, model_dir: Path) -> list[int]:
    """The bands of an open source raster to feed the model (:func:`check_bands`); a raster
    too small for one window is refused."""
    bands = check_bands(src, path, meta, model_dir)
    if min(src.height, src.width) < MIN_SIDE:
        raise InputError(f"{path} is {src.height}x{src.width} pixels: too small to segment")
    return bands


def check_rasters_suit_model(model_dir: str | Path, sources: Sequence[str | Path]) -> None:
    """Before any work: every source opens and suits the model (bands, dtype, size).

    The header is all that is read, so a raster whose pixel data is damaged further in is
    found only while it is segmented; a flow then finishes the other rasters first.
    """
    meta = load_meta(model_dir)
    for source in sources:
        path = absolute_path(source)
        with open_dataset(path) as src:
            check_source(src, path, meta, Path(model_dir))


def write_prediction_item(
    result: SegmentResult, model_dir: Path, meta: ModelMeta, clusters: Sequence[Cluster]
) -> Path:
    """The STAC item of one prediction, beside the outputs: :func:`geoseg.stac.items.prediction_item`
    (label + projection extensions) with this result's outputs as its assets."""
    from geoseg.stac.items import prediction_item, save_item

    assets = {
        key: (Path(getattr(result, key)), media, roles)
        for key, (media, roles) in OUTPUT_ASSETS.items()
        if getattr(result, key) is not None
    }
    item = prediction_item(result.clusters, result.source, model_dir, clusters, assets)
    item.properties["geoseg:confidence_units"] = "percent"
    return save_item(item, result.stac_item)


def segment(
    model_dir: str | Path,
    sources: Sequence[str | Path],
    out_dir: str | Path,
    config: SegmentConfig | None = None,
    progress: Progress = True,
    overwrite: bool = False,
    dask_address: str | None = None,
) -> list[SegmentResult]:
    """Segment every source raster with the model bundle in ``model_dir``.

    Args:
        model_dir: a model bundle (model.json + weights.safetensors).
        sources: GeoTIFFs (any size) with the bands and dtype the model was trained on.
        out_dir: folder for the outputs (created; removed again, with the parents the run
            created, if the run fails while they are still empty); the outputs of an earlier
            segment run are replaced, one source's set at a time; other files of the same
            names are refused (OutputError) unless ``overwrite``.
        config: window overlap, batch size, device, head, vectorization options.
        progress: a progress bar per raster (True), log lines to this logger, or nothing
            (:mod:`geoseg.progress`).
        overwrite: replace files at output names that an earlier segment run did not write.
        dask_address: segment each raster in row bands (``config.band_rows``) on the Dask
            scheduler at this address (:mod:`geoseg.distributed`; the same outputs); the model,
            sources and ``out_dir`` must be on a file system every worker sees.

    Returns:
        One :class:`SegmentResult` per source, in order.

    Raises:
        InputError: a missing/corrupt model or raster, or bands that do not match the model.
        ConfigError: bad parameters.
    """

    config = (config or SegmentConfig()).validate()
    model_dir, out_dir = absolute_path(model_dir), Path(out_dir)
    if not sources:
        raise InputError("no source rasters given")
    # folders of rasters and STAC JSON as for ingest (and the segment flow); provenance tags
    # name files, not typed text
    paths = [absolute_path(p) for p in discover_sources([absolute_path(s) for s in sources])]
    check_unique_stems(paths)
    for path in paths:  # fail before any work on a missing input
        if not path.is_file():
            raise InputError(f"source not found: {path}")
    check_outputs(paths, out_dir, overwrite, config.vectorize)
    check_rasters_suit_model(model_dir, paths)  # a wrong raster is refused before the first is segmented
    this_model = _model_id_or_none(model_dir)  # hashed once per call, not per raster
    warn_other_models(paths, out_dir, model_dir, this_model)
    from geoseg.io.cluster import connect

    # A failed run leaves no empty out_dir behind that it created itself; an address that
    # does not answer fails at connect, before any work.
    with made_for_the_run(out_dir), connect(dask_address) as client:
        model, meta = load_bundle(model_dir, resolve_device(config.device))
        model = for_inference(model)
        with locked(out_dir, "segment output folder"):
            return [
                segment_raster(model, meta, model_dir, path, out_dir, config, progress, client, this_model)
                for path in paths
            ]


def _model_id_or_none(model_dir: Path) -> str | None:
    """The bundle's content id; None while it has no weights (loading it then says why)."""
    try:
        return model_id(model_dir)
    except OSError:
        return None


def warn_other_models(
    sources: Sequence[Path], out_dir: Path, model_dir: Path, this_model: str | None
) -> None:
    """Before work: one WARNING per other model whose outputs in ``out_dir`` this run replaces.

    Segment's own earlier outputs are replaced without ``--overwrite`` (its manifest lists
    them); when another model made them (the cluster COG's ``GEOSEG_MODEL`` tag), the user
    running two models into one folder is told which files of which model go. ``this_model``:
    the bundle's :func:`~geoseg.models.bundle.model_id` (None while it has no weights).
    """
    replaced: dict[str, list[str]] = {}
    for source in sources:
        clusters = outputs.clusters_path(source, out_dir)
        if clusters.name not in owned_by_set(out_dir, source.stem, STAGE) or not clusters.is_file():
            continue
        try:
            with open_dataset(clusters) as src:
                made_by = src.tags().get("GEOSEG_MODEL")
        except InputError:
            continue  # unreadable: replaced like any earlier output of this stage
        # the model's content id; COGs written before it hold the bundle's absolute path
        if (
            made_by
            and made_by != this_model
            and ("/" not in made_by or Path(made_by).resolve() != model_dir.resolve())
        ):
            replaced.setdefault(made_by, []).append(clusters.name)
    for made_by, names in replaced.items():
        log.warning(
            "replacing the outputs of model %s in %s (%s and their side files) with those of model %s",
            made_by,
            out_dir,
            ", ".join(names),
            model_dir,
        )


def check_outputs(
    sources: Sequence[Path], out_dir: Path, overwrite: bool = False, polygons: bool = True
) -> None:
    """Before any work: the outputs may be replaced, the folder is writable and has room.

    The GeoPackage counts only when this run writes one, and an earlier ``vectorize``
    output (the flows write it separately) is its own to replace. The room needed is
    estimated as the two uncompressed uint8 layers of every source (compression and
    overviews roughly cancel out).
    """
    from geoseg.vectorize import is_own_gpkg, vector_style_path

    needed = 0
    for source in sources:
        targets = output_paths(source, out_dir)
        gpkg = targets.pop("gpkg")
        if polygons and not is_own_gpkg(gpkg):
            targets.update(gpkg=gpkg, gpkg_qml=vector_style_path(gpkg))
        check_set(out_dir, source.stem, STAGE, targets.values(), overwrite)
        with open_dataset(source) as src:
            report_georeferencing(source, src.crs, src.transform)
            needed += 2 * src.height * src.width
    check_free_space(out_dir, needed)
