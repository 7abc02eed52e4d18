"""Ensembles: several trained networks of one method that predict the mean of their
probabilities, their cluster ids aligned to the first member's.

Networks trained from different seeds find much the same partition of a survey under
different ids, and each of them with its own errors: on the Dubai folds one IIC seed is up
to 0.1 mIoU away from the next (bench/RESULTS.md). :func:`combine` aligns every member's
ids to the first member's over the training imagery (:func:`geoseg.models.align.align_clusters`,
label-free, the same matching that keeps ids stable across model versions) and writes one
bundle whose network, :class:`EnsembleNet`, averages the members' head-B probabilities.
Every later stage (segment, align, registry, retrain, flows) sees an ordinary bundle: k
probabilities per pixel. model.json's ``architecture`` is ``{"members": [one architecture
per member]}``; the members' weights live in weights.safetensors under ``members.<i>.``.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geoseg.config import AlignConfig
from geoseg.errors import InputError
from geoseg.iic.model import NormalisedNet
from geoseg.io.fileio import sha256_file
from geoseg.models.align import align_clusters
from geoseg.models.bundle import MEMBERS, WEIGHTS, Cluster, load_bundle, load_meta, save_bundle
from geoseg.models.ensemble_net import EnsembleNet
from geoseg.progress import Progress

__all__ = ["EnsembleNet", "combine"]


def combine(
    bundles: Sequence[str | Path],
    out: str | Path,
    reference: Sequence[str | Path],
    config: AlignConfig | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
    clusters: Sequence[Cluster] | None = None,
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Write to ``out`` one bundle predicting the mean of ``bundles``' probabilities.

    Every member's ids are first aligned to the first bundle's over ``reference`` (rasters
    or a patch store, as :func:`geoseg.models.align.align_clusters` takes; no labels). The
    first bundle's model.json is the ensemble's (bands, scale, clusters and their names),
    with ``architecture`` listing the members and ``provenance.members`` recording each
    member's weights, seed and agreement with the first. ``clusters`` (names and colours)
    and ``provenance`` entries replace the first bundle's.
    """
    paths = [Path(b) for b in bundles]
    if len(paths) < 2:
        raise InputError(f"an ensemble needs at least two model bundles, got {len(paths)}")
    first, meta = load_bundle(paths[0])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    members: list[NormalisedNet] = [first]
    records = [_member_record(paths[0], meta, None)]
    with tempfile.TemporaryDirectory(prefix=".ensemble-", dir=Path(out).parent) as tmp:
        for i, path in enumerate(paths[1:], start=1):
            other = load_meta(path)
            _check_same(paths[0], meta, path, other)
            aligned = Path(tmp) / f"member{i}"
            result = align_clusters(path, paths[0], reference, aligned, config, progress)
            model, _ = load_bundle(aligned)
            members.append(model)
            records.append(_member_record(path, other, result.agreement))
    ensemble = EnsembleNet(members)
    meta.architecture = {MEMBERS: [m.arch.to_dict() for m in members]}
    meta.alignment = None
    meta.provenance = {**meta.provenance, **(provenance or {}), MEMBERS: records}
    if clusters is not None:
        meta.clusters = list(clusters)
    return save_bundle(ensemble, meta, out, overwrite=overwrite)


def _member_record(path: Path, meta: Any, agreement: float | None) -> dict[str, Any]:
    seed = (meta.provenance.get("config") or {}).get("seed")
    record: dict[str, Any] = {"weights_sha256": sha256_file(path / WEIGHTS), "seed": seed}
    if agreement is not None and math.isfinite(agreement):
        record["agreement_with_first"] = round(agreement, 4)
    return record


def _check_same(first_dir: Path, first: Any, other_dir: Path, other: Any) -> None:
    """Members must agree on everything segment reads from model.json, and be single networks."""
    for path, meta in ((first_dir, first), (other_dir, other)):
        if meta.member_architectures:
            raise InputError(f"model bundle {path} is itself an ensemble: combine its members instead")
    for what, a, b in (
        ("method", first.method, other.method),
        ("architecture", first.architecture, other.architecture),
        ("bands", first.band_names, other.band_names),
        ("scale", first.scale, other.scale),
        ("patch size", first.patch_size, other.patch_size),
    ):
        if a != b:
            raise InputError(
                f"model bundles {first_dir} and {other_dir} differ in {what} ({a!r} vs {b!r}): "
                "an ensemble's members must be trained with the same settings but the seed"
            )
