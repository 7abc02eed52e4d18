"""What a retrain decides, in one place: how the next model starts from the promoted one
(warm start), and whether a new version becomes the promoted one (register, then promote
only if the label-free check passes). The retrain flow calls these; it decides nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from geoseg.config import PromotionConfig
from geoseg.methods import warm_start_settings
from geoseg.models.bundle import load_meta
from geoseg.models.registry import ModelVersion, PromotionDecision, check_bundle, promote, register

__all__ = ["register_and_promote", "retrain_fields"]


def retrain_fields(previous: str | Path | None, k: int | None, warm_start: bool) -> dict[str, Any]:
    """The TrainConfig fields of a retrain after ``previous`` (the promoted bundle, if any).

    ``k`` defaults to the previous model's: alignment carries cluster ids over only with
    k >= the old k. With ``warm_start`` the network starts from the previous weights, in
    the previous model's method and architecture.
    """
    fields: dict[str, Any] = {"k": k}
    if previous is None:
        return fields
    meta = load_meta(previous)
    fields["k"] = k or meta.arch.k_b
    if warm_start:
        fields.update(init_from=str(previous), **warm_start_settings(meta))
    return fields


def retrain_patch_size(
    previous: str | Path | None, patch_size: int | None, ingest: Mapping[str, Any] | None
) -> int | None:
    """The patch size a retrain ingests the new surveys at: the one given (``patch_size``, or
    in the ``ingest`` settings), else the promoted model's, which it was trained on, so a
    model of 64-px patches is not retrained on 128-px ones (and small rasters are not
    refused as smaller than a patch); None (IngestConfig's default) for a registry's first."""
    if patch_size is not None or "patch_size" in (ingest or {}) or previous is None:
        return patch_size
    return load_meta(previous).patch_size


def register_and_promote(
    bundle: str | Path,
    registry: str | Path,
    previous: str | Path | None,
    config: PromotionConfig,
    reference: Sequence[str | Path],
) -> tuple[ModelVersion, PromotionDecision]:
    """Register ``bundle`` as the next version (status "rejected" when the check fails) and
    promote it only if :func:`geoseg.models.registry.check_bundle` says so."""
    decision = check_bundle(bundle, previous, config, reference=reference)
    entry = register(bundle, registry, decision)
    if decision.promote:
        entry = promote(registry, entry.version)
    return entry, decision
