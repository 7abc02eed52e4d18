"""Cluster identity across model versions: align a retrained model's ids to its predecessor.

IIC numbers its clusters arbitrarily; a retrained model may call "trees" 4 where the
previous one called them 1, which would recolour every QGIS project built on the old
outputs. ``align_clusters`` runs both models over imagery both can see, counts how often
new cluster i coincides with old cluster j (the agreement matrix), finds the one-to-one
matching with the most shared pixels (Hungarian algorithm), and permutes the rows of the
new model's head-B 1x1 convolutions so that its output channel j *is* old cluster j. The
permutation lives in the weights, so every later stage (segment, vectorize, QGIS styles)
sees stable ids without knowing alignment exists. Colours and names carry over;
``model.json`` records the alignment; a JSON + markdown report lists the clusters whose
share of the reference moved more than a threshold.

Both models predict with segment's own inference (:func:`geoseg.inference.predict_probabilities`,
its band checks and device rules, :mod:`geoseg.io.sources` reads and nodata handling), so the ids compared are the ids they would write.
Only head-B sub-head 0, the one segmentation uses and the cluster table describes, is
aligned.

The same pass also accumulates, per model, the label-free IIC objective on the reference
(the mutual information between a pixel's cluster and its neighbours' within the
displacement window), so that the promotion check can compare both models' losses on the
same imagery rather than their training losses on different surveys.
"""

from __future__ import annotations

import logging
import math
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from rasterio.errors import RasterioError
from scipy.optimize import linear_sum_assignment
from torch import nn

from geoseg.config import AlignConfig
from geoseg.errors import ConfigError, InputError
from geoseg.iic.loss import displaced_joints, mutual_information_loss
from geoseg.iic.model import IICNet, NormalisedNet, for_inference
from geoseg.inference import check_bands, predict_probabilities, resolve_device
from geoseg.io.fileio import atomic_path, check_writable, sha256_file, write_json_atomic, write_text_atomic
from geoseg.io.sources import discover_sources, open_dataset, open_raster, read_scaled
from geoseg.io.store import open_store
from geoseg.messages import plural
from geoseg.models.bundle import META, WEIGHTS, Cluster, ModelMeta, default_clusters, load_bundle, save_bundle
from geoseg.progress import Progress, progress_bar

__all__ = [
    "REPORT_JSON",
    "REPORT_MD",
    "Alignment",
    "ReferenceFigures",
    "agreement_matrix",
    "align_clusters",
    "expand_reference",
    "match_clusters",
    "permute_head_b",
    "reference_figures",
]

log = logging.getLogger(__name__)

REPORT_JSON = "alignment.json"
REPORT_MD = "alignment.md"


@dataclass
class Alignment:
    """The outcome of aligning a new model to an old one.

    ``permutation[i]`` is the id that the new model's *trained* channel i carries after
    alignment (composed with any earlier alignment of the same bundle). ``agreement`` is
    the fraction of valid reference pixels with the same id in both models after
    alignment; ``agreement_before`` the same with the ids as trained.
    """

    bundle: str
    previous: dict[str, Any]
    permutation: list[int]
    agreement: float
    agreement_before: float
    pixels: int
    shares_old: list[float]
    shares_new: list[float]
    moved: list[dict[str, Any]]
    share_threshold: float
    loss_old: float | None
    loss_new: float | None
    reference: list[str]
    matrix: list[list[int]]  # rows: new ids (aligned), cols: old ids
    report_json: str | None = None
    report_md: str | None = None

    def record(self) -> dict[str, Any]:
        """What goes into model.json's ``alignment`` (the report paths are left out)."""
        data = asdict(self)
        for key in ("bundle", "report_json", "report_md"):
            data.pop(key)
        return data


def agreement_matrix(
    new_ids: np.ndarray, old_ids: np.ndarray, k_new: int, k_old: int, valid: np.ndarray | None = None
) -> np.ndarray:
    """(k_new, k_old) int64 counts of pixels where new id i meets old id j.

    Pixels outside ``valid`` or with an id out of range (e.g. 255 = nodata) are not
    counted. Sum the matrices of successive windows to stream over a large reference.
    """
    new_ids = np.asarray(new_ids).ravel().astype(np.int64)
    old_ids = np.asarray(old_ids).ravel().astype(np.int64)
    if new_ids.shape != old_ids.shape:
        raise ValueError(f"id arrays differ in size: {new_ids.size} vs {old_ids.size}")
    keep = (new_ids >= 0) & (new_ids < k_new) & (old_ids >= 0) & (old_ids < k_old)
    if valid is not None:
        keep &= np.asarray(valid).ravel().astype(bool)
    flat = new_ids[keep] * k_old + old_ids[keep]
    return np.bincount(flat, minlength=k_new * k_old).reshape(k_new, k_old)


def match_clusters(matrix: np.ndarray) -> list[int]:
    """Permutation (new trained id -> aligned id) maximising the pixels that agree.

    New clusters left without a partner (k_new > k_old) take the ids after k_old, in
    order of their trained ids.
    """
    k_new, k_old = matrix.shape
    if k_new < k_old:
        raise ConfigError(
            f"cannot carry {k_old} cluster ids over to a model with only {plural(k_new, 'cluster')}; "
            "retrain with k >= the previous model's k"
        )
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    perm = [-1] * k_new
    for r, c in zip(rows, cols, strict=True):
        perm[int(r)] = int(c)
    spare = iter(range(k_old, k_new))
    return [p if p >= 0 else next(spare) for p in perm]


def permute_head_b(model: NormalisedNet, perm: Sequence[int], subhead: int = 0) -> None:
    """Reorder a head-B sub-head's output channels in place: trained channel i becomes perm[i].

    Sub-head 0 is the one segmentation uses and the cluster table describes; the other
    sub-heads (if any) are independent clusterings and are left as trained. A method whose
    clusters are not a head's channels (PiCIE: centroids) reorders them itself.
    """
    members = getattr(model, "members", None)  # an ensemble (geoseg.models.ensemble_net): each member
    if isinstance(members, nn.ModuleList):
        for member in members:
            permute_head_b(cast(NormalisedNet, member), perm, subhead)
        return
    permute_clusters = getattr(model, "permute_clusters", None)
    if permute_clusters is not None:
        permute_clusters(list(perm))
        return
    conv = cast(nn.Conv2d, cast(IICNet, model).head_b[subhead])
    inverse = torch.empty(len(perm), dtype=torch.long)
    inverse[torch.as_tensor(list(perm))] = torch.arange(len(perm))
    with torch.no_grad():
        conv.weight.copy_(conv.weight[inverse])
        if conv.bias is not None:
            conv.bias.copy_(conv.bias[inverse])


def carry_clusters(old: Sequence[Cluster], k_new: int) -> list[Cluster]:
    """The new cluster table: old ids keep their colour and name; extra ids get unused colours."""
    table = [Cluster(c.id, c.colour, c.name) for c in sorted(old, key=lambda c: c.id)][:k_new]
    used = {tuple(c.colour) for c in table}
    spare = [c.colour for c in default_clusters(max(k_new, 20)) if tuple(c.colour) not in used]
    for new_id in range(len(table), k_new):
        table.append(Cluster(new_id, spare[(new_id - len(old)) % len(spare)] if spare else (128, 128, 128)))
    return table


def align_clusters(
    new_model_dir: str | Path,
    old_model_dir: str | Path,
    reference: Sequence[str | Path],
    out_dir: str | Path | None = None,
    config: AlignConfig | None = None,
    progress: Progress | None = None,
) -> Alignment:
    """Align ``new_model_dir``'s head-B ids to ``old_model_dir``'s over ``reference``.

    ``reference``: rasters (GeoTIFF/PNG/JPEG, folders of them) or a patch store
    (``*.zarr``). The aligned bundle is written to ``out_dir`` (default: in place,
    atomically, keeping the bundle's other files) with ``alignment.json`` and
    ``alignment.md`` beside ``model.json``. ``progress``: as every stage's
    (:mod:`geoseg.progress`: a bar, log lines to a logger, or nothing); by default a bar on
    a terminal and log lines to this module's logger otherwise (a flow worker's log).
    """
    config = (config or AlignConfig()).validate()
    new_model_dir, old_model_dir = Path(new_model_dir), Path(old_model_dir)
    out = Path(out_dir) if out_dir is not None else new_model_dir
    # The bundle is built beside ``out`` and renamed into place: a folder that cannot be
    # written in is refused before the reference pass, not after it with a temporary's name.
    check_writable(out.parent)
    device = resolve_device(config.device)
    new_model, new_meta = load_bundle(new_model_dir, device)
    old_model, old_meta = load_bundle(old_model_dir, device)
    _check_compatible(new_model_dir, new_meta, old_model_dir, old_meta)

    k_new, k_old = new_meta.arch.k_b, old_meta.arch.k_b
    matrix = np.zeros((k_new, k_old), np.int64)
    half_t = int(old_meta.loss.get("half_t", 5))
    lamb = float(old_meta.loss.get("lamb_b", 1.0))
    joints: dict[str, torch.Tensor | None] = {"new": None, "old": None}
    # Segment's inference copies: the ids compared are bit for bit the ids segment writes.
    infer_new, infer_old = for_inference(new_model), for_inference(old_model)
    sources = expand_reference(reference)
    bar = progress_bar(
        _progress(progress),
        total=_reference_total(sources, old_meta, config),
        desc="align: reference",
        unit="batch",
        leave=False,
    )
    with bar:
        for x, valid, scale in _reference_batches(sources, old_meta, old_model_dir, config):
            x, mask = x.to(device), valid.to(device)
            # Segment's own inference (resampling to the model's scale included): the ids
            # compared here are the ids the models would write.
            p_new = predict_probabilities(infer_new, x, scale)
            p_old = predict_probabilities(infer_old, x, scale)
            if config.reference_loss:
                with torch.inference_mode():
                    joints["new"] = _add(joints["new"], displaced_joints(p_new, p_new, half_t, mask=mask))
                    joints["old"] = _add(joints["old"], displaced_joints(p_old, p_old, half_t, mask=mask))
            matrix += agreement_matrix(
                p_new.argmax(1).cpu().numpy(), p_old.argmax(1).cpu().numpy(), k_new, k_old, valid.numpy()
            )
            bar.update()

    pixels = int(matrix.sum())
    if pixels == 0:
        raise InputError(f"no valid reference pixels in {[str(s) for s in sources]}")
    perm = match_clusters(matrix)
    aligned = np.zeros((k_new, k_old), np.int64)
    aligned[perm] = matrix
    agreement = float(np.trace(aligned[:k_old]) / pixels)
    agreement_before = float(np.trace(matrix[: min(k_new, k_old)]) / pixels)
    shares_new = (aligned.sum(1) / pixels).tolist()
    shares_old = (aligned.sum(0) / pixels).tolist()

    permute_head_b(new_model, perm)
    clusters = carry_clusters(old_meta.clusters, k_new)
    moved = _moved(clusters, shares_old, shares_new, config.share_threshold)
    previous = {
        "path": str(old_model_dir),
        "weights_sha256": sha256_file(old_model_dir / WEIGHTS),
        "version": (old_meta.provenance or {}).get("registry_version"),
    }
    result = Alignment(
        bundle=str(out),
        previous=previous,
        permutation=_compose(new_meta.alignment, perm),
        agreement=agreement,
        agreement_before=agreement_before,
        pixels=pixels,
        shares_old=shares_old,
        shares_new=shares_new,
        moved=moved,
        share_threshold=config.share_threshold,
        loss_old=_loss(joints["old"], lamb),
        loss_new=_loss(joints["new"], lamb),
        reference=[str(s) for s in sources],
        matrix=aligned.tolist(),
    )
    new_meta.clusters = clusters
    new_meta.alignment = result.record()
    _write_aligned(new_model, new_meta, new_model_dir, out, result)
    log.info(
        "aligned %s to %s: agreement %.3f (before %.3f)", out, old_model_dir, agreement, agreement_before
    )
    return result


def _progress(progress: Progress | None) -> Progress:
    """``progress`` as given; None: a bar on a terminal, else log lines to this module's logger."""
    if progress is not None:
        return progress
    return True if sys.stderr.isatty() else log


@dataclass
class ReferenceFigures:
    """One model's cluster shares and label-free loss on reference imagery."""

    shares: list[float]
    loss: float | None
    pixels: int


def reference_figures(
    model_dir: str | Path,
    reference: Sequence[str | Path],
    config: AlignConfig | None = None,
    progress: Progress | None = None,
) -> ReferenceFigures:
    """Shares and IIC loss of one model over ``reference`` (rasters or a patch store).

    What the promotion check looks at when there is no previous model to align to (the
    first model of a registry): a collapsed model still shows as one cluster. ``progress``
    as in :func:`align_clusters`.
    """
    config = (config or AlignConfig()).validate()
    model_dir = Path(model_dir)
    model, meta = load_bundle(model_dir, resolve_device(config.device))
    model = for_inference(model)  # segment's inference copy, as in align_clusters
    device = next(model.parameters()).device
    k = meta.arch.k_b
    counts = np.zeros(k, np.int64)
    joint: torch.Tensor | None = None
    half_t, lamb = int(meta.loss.get("half_t", 5)), float(meta.loss.get("lamb_b", 1.0))
    sources = expand_reference(reference)
    total = _reference_total(sources, meta, config)
    with progress_bar(_progress(progress), total=total, desc="reference", unit="batch", leave=False) as bar:
        for x, valid, scale in _reference_batches(sources, meta, model_dir, config):
            p = predict_probabilities(model, x.to(device), scale)
            if config.reference_loss:
                with torch.inference_mode():
                    joint = _add(joint, displaced_joints(p, p, half_t, mask=valid.to(device)))
            ids = p.argmax(1).cpu().numpy()[valid.numpy()]
            counts += np.bincount(ids, minlength=k)[:k]
            bar.update()
    pixels = int(counts.sum())
    if pixels == 0:
        raise InputError(f"no valid reference pixels in {[str(s) for s in sources]}")
    return ReferenceFigures((counts / pixels).tolist(), _loss(joint, lamb), pixels)


def expand_reference(reference: Sequence[str | Path]) -> list[Path]:
    """Patch stores as they are, everything else as ingest reads its sources (files, folders
    of rasters, STAC JSON: :func:`geoseg.io.sources.discover_sources`), in the order given."""
    if isinstance(reference, str | Path):
        reference = [reference]
    if not reference:
        raise InputError("no reference imagery given")
    out: list[Path] = []
    for item in reference:
        path = Path(item)
        out += [path] if _is_store(path) else discover_sources([path])
    return out


# --- reading the reference -------------------------------------------------------------------


def _reference_batches(
    sources: Sequence[Path], meta: ModelMeta, model_dir: Path, config: AlignConfig
) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    """(N, C, H, W) raw pixels, (N, H, W) validity and the scale to predict them at.

    Rasters are read window by window at source resolution (the prediction resamples to
    the model's scale, as segment does); patch stores are already at their scale.
    """
    bands = meta.arch.in_channels
    for source in sources:
        if _is_store(source):
            for x, valid in _store_batches(source, bands, config):
                yield x, valid, 1.0
        else:
            for x, valid in _raster_windows(source, meta, model_dir, config.window):
                yield x, valid, meta.scale


def _reference_total(sources: Sequence[Path], meta: ModelMeta, config: AlignConfig) -> int:
    """How many batches :func:`_reference_batches` yields (the progress bar's total)."""
    total = 0
    for source in sources:
        if _is_store(source):
            n = open_store(source).num_patches
            if config.max_patches is not None:
                n = min(n, config.max_patches)
            total += math.ceil(n / config.batch_size)
        else:
            step = max(1, round(config.window / meta.scale))
            with open_dataset(source) as src:
                total += math.ceil(src.height / step) * math.ceil(src.width / step)
    return total


def _store_batches(
    path: Path, bands: int, config: AlignConfig
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    store = open_store(path)
    if store.num_bands != bands:
        raise InputError(f"{path}: {plural(store.num_bands, 'band')}, the models expect {bands}")
    n = store.num_patches
    index = np.arange(n)
    if config.max_patches is not None and n > config.max_patches:
        index = np.linspace(0, n - 1, config.max_patches).round().astype(np.int64)
    for start in range(0, len(index), config.batch_size):
        chunk = index[start : start + config.batch_size]
        images = np.stack([np.asarray(store.images[int(i)]) for i in chunk])
        valid = np.stack([np.asarray(store.valid[int(i)]) for i in chunk])
        yield torch.from_numpy(images.astype(np.float32)), torch.from_numpy(valid.astype(bool))


def _raster_windows(
    path: Path, meta: ModelMeta, model_dir: Path, window: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Windowed reads of a raster (never the whole raster at once), checked and filled as
    segment does: bands by count/dtype/order, nodata read as the band mean (neutral input)."""
    info = open_raster(path)
    with open_dataset(path) as src:
        bands = check_bands(src, path, meta, model_dir)
        fill = np.asarray(meta.band_mean, np.float32)[:, None, None]
        step = max(1, round(window / meta.scale))
        for row in range(0, src.height, step):
            for col in range(0, src.width, step):
                h, w = min(step, src.height - row), min(step, src.width - col)
                try:
                    data, valid = read_scaled(src, info, 1.0, row, col, h, w, bands=bands)
                except RasterioError as exc:
                    raise InputError(f"unreadable reference raster {path}: {exc}") from exc
                data = np.where(valid[None], data.astype(np.float32), fill)
                yield torch.from_numpy(data)[None], torch.from_numpy(valid)[None]


def _is_store(path: Path) -> bool:
    return path.is_dir() and (path.suffix == ".zarr" or (path / "zarr.json").is_file())


# --- helpers ---------------------------------------------------------------------------------


def _check_compatible(new_dir: Path, new: ModelMeta, old_dir: Path, old: ModelMeta) -> None:
    if new.arch.in_channels != old.arch.in_channels:
        raise ConfigError(
            f"{new_dir} takes {plural(new.arch.in_channels, 'band')} but {old_dir} takes {old.arch.in_channels}"
        )
    if new.arch.k_b < old.arch.k_b:
        raise ConfigError(
            f"cannot carry {old.arch.k_b} cluster ids over to a model with only {plural(new.arch.k_b, 'cluster')} "
            f"({new_dir}); retrain with k >= the previous model's k"
        )
    if abs(new.scale - old.scale) > 1e-9:
        raise ConfigError(f"{new_dir} works at scale {new.scale} but {old_dir} at {old.scale}")


def _add(total: torch.Tensor | None, joint: torch.Tensor) -> torch.Tensor:
    joint = joint.detach().double().cpu()
    return joint if total is None else total + joint


def _loss(joint: torch.Tensor | None, lamb: float) -> float | None:
    return None if joint is None else float(mutual_information_loss(joint, lamb))


def _compose(previous: dict[str, Any] | None, perm: list[int]) -> list[int]:
    """Trained channel -> final id, through an earlier alignment of the same bundle if any."""
    first = (previous or {}).get("permutation")
    if not first or len(first) != len(perm):
        return list(perm)
    return [perm[p] for p in first]


def _moved(
    clusters: Sequence[Cluster], shares_old: Sequence[float], shares_new: Sequence[float], threshold: float
) -> list[dict[str, Any]]:
    moved = []
    for c in clusters:
        old = shares_old[c.id] if c.id < len(shares_old) else 0.0
        new = shares_new[c.id]
        if abs(new - old) > threshold:
            moved.append(
                {"id": c.id, "name": c.name, "share_old": old, "share_new": new, "change": new - old}
            )
    return moved


def _write_aligned(model: NormalisedNet, meta: ModelMeta, source: Path, out: Path, result: Alignment) -> None:
    """Bundle + reports in one atomic step; the source bundle's other files come along."""
    with atomic_path(out, replace_folder=(out / META).is_file()) as tmp:
        save_bundle(model, meta, tmp)
        for extra in sorted(source.iterdir()):
            if extra.name in (WEIGHTS, META, REPORT_JSON, REPORT_MD) or extra.name.startswith("."):
                continue
            copy = shutil.copytree if extra.is_dir() else shutil.copy2
            copy(extra, tmp / extra.name)
        result.report_json = str(out / REPORT_JSON)
        result.report_md = str(out / REPORT_MD)
        write_json_atomic(tmp / REPORT_JSON, asdict(result))
        write_text_atomic(tmp / REPORT_MD, report_markdown(result, meta.clusters))


def report_markdown(result: Alignment, clusters: Sequence[Cluster]) -> str:
    """A short human-readable report: agreement, and the share of each cluster before/after."""
    moved = {m["id"] for m in result.moved}
    lines = [
        "# Cluster alignment",
        "",
        f"- model: `{result.bundle}`",
        f"- previous model: `{result.previous['path']}` (weights sha256 {result.previous['weights_sha256'][:12]}...)",
        f"- reference: {plural(len(result.reference), 'source')}, {plural(result.pixels, 'valid pixel')}",
        f"- agreement after alignment: **{result.agreement:.4f}** (before: {result.agreement_before:.4f})",
        f"- permutation (trained id -> id): {result.permutation}",
    ]
    if result.loss_new is not None and result.loss_old is not None:
        lines.append(
            f"- label-free loss on the reference: new {result.loss_new:.4f}, previous {result.loss_old:.4f}"
        )
    lines += [
        "",
        f"Clusters whose share of the reference moved by more than {result.share_threshold:.3f} are flagged.",
        "",
        "| id | name | colour | share before | share now | change | moved |",
        "|---:|---|---|---:|---:|---:|---|",
    ]
    for c in clusters:
        old = result.shares_old[c.id] if c.id < len(result.shares_old) else 0.0
        new = result.shares_new[c.id]
        colour = "#{:02X}{:02X}{:02X}".format(*c.colour)
        flag = "**yes**" if c.id in moved else ""
        lines.append(
            f"| {c.id} | {c.name or ''} | {colour} | {old:.4f} | {new:.4f} | {new - old:+.4f} | {flag} |"
        )
    return "\n".join(lines) + "\n"
