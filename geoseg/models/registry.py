"""Model versions: a registry directory holding every model bundle ever registered, and
which one is promoted.

Layout of ``REGISTRY/``::

    registry.json          the state: versions, the promotion stack, the event log
    current -> v0002       symlink to the promoted version (what deployments name)
    catalog.json           a STAC catalog of the versions (derived from registry.json)
    v0001/                 a copy of the bundle (model.json, weights.safetensors, reports)
    v0001/v0001.json       its STAC item (assets: weights, model.json, alignment report)

``registry.json`` is the single source of truth and is replaced atomically, so promote and
rollback are one rename each: a reader sees either the old or the new promoted model,
never a mixture. The STAC catalog is regenerated from it after every change.

The promotion stack makes rollback one command: ``rollback()`` pops the current model and
the one promoted before it is current again; ``rollback(to=V)`` pops until V is on top.

``should_promote`` is the label-free rule a retrained model must pass: its IIC loss on
shared reference imagery is not worse than the promoted model's (within a tolerance), its
clusters are balanced (the effective number of clusters, exp of the share entropy, is
above a floor, a fraction of k and of the promoted model's figure: a collapsed model that
puts everything in one cluster fails) and its
aligned ids agree with the promoted model's on enough of the reference.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac

from geoseg.config import PromotionConfig
from geoseg.errors import ConfigError, InputError
from geoseg.io.fileio import atomic_path, check_writable, locked, sha256_file, write_json_atomic
from geoseg.io.outputs import WEIGHTS_MEDIA_TYPE
from geoseg.models.bundle import META, WEIGHTS, Cluster, load_bundle, load_meta
from geoseg.stac.items import save_catalog_files

__all__ = [
    "CURRENT",
    "REGISTRY_FORMAT",
    "STATE",
    "ModelFigures",
    "ModelVersion",
    "PromotionDecision",
    "RegistryState",
    "Survey",
    "check_bundle",
    "cluster_names",
    "current_model",
    "list_versions",
    "load_state",
    "new_surveys",
    "promote",
    "record_naming",
    "register",
    "resolve_model",
    "rollback",
    "should_promote",
    "version_dir",
]

STATE = "registry.json"
CURRENT = "current"  # symlink to the promoted version
CATALOG_ID = "geoseg-models"
REGISTRY_FORMAT = "geoseg.models.registry/1"
_VERSION = re.compile(r"^v(\d{4,})$")


@dataclass
class ModelVersion:
    """One registered bundle."""

    version: str
    registered: str  # ISO 8601, UTC
    source: str  # where the bundle was registered from
    weights_sha256: str
    k: int
    status: str = "candidate"  # candidate | promoted | retired | rolled-back | rejected
    decision: dict[str, Any] | None = None  # the promotion check, if one ran


@dataclass
class RegistryState:
    versions: list[ModelVersion] = field(default_factory=list)
    promoted: list[str] = field(default_factory=list)  # stack: the last one is current
    events: list[dict[str, Any]] = field(default_factory=list)
    format: str = REGISTRY_FORMAT

    @property
    def current(self) -> str | None:
        return self.promoted[-1] if self.promoted else None

    def get(self, version: str) -> ModelVersion:
        for v in self.versions:
            if v.version == version:
                return v
        known = ", ".join(v.version for v in self.versions) or "none"
        raise ConfigError(f"no model version {version!r} in the registry (known: {known})")


# --- the label-free promotion check ----------------------------------------------------------


@dataclass
class ModelFigures:
    """What the promotion check looks at, measured on shared reference imagery."""

    shares: list[float]  # share of reference pixels per cluster id
    loss: float | None = None  # label-free IIC loss on the reference (lower is better)

    @property
    def effective_clusters(self) -> float:
        """exp(entropy of the shares): k for perfectly balanced clusters, 1 for total collapse."""
        total = sum(self.shares)
        if total <= 0:
            return 0.0
        entropy = -sum(s / total * math.log(s / total) for s in self.shares if s > 0)
        return math.exp(entropy)


@dataclass
class PromotionDecision:
    promote: bool
    checks: dict[str, dict[str, Any]]  # name -> {passed, value, limit}
    reasons: list[str]


def should_promote(
    new: ModelFigures,
    old: ModelFigures | None,
    agreement: float | None,
    config: PromotionConfig | None = None,
) -> PromotionDecision:
    """Decide without labels whether ``new`` may replace ``old`` (None: there is no model yet).

    Every check that can be evaluated must pass; a check that cannot (no previous model,
    no loss measured) is recorded as skipped with the reason, never silently passed.
    """
    config = (config or PromotionConfig()).validate()
    checks: dict[str, dict[str, Any]] = {}
    k = len(new.shares)
    floor = config.min_effective_clusters * k
    if old is not None:
        floor = max(floor, config.min_balance_ratio * old.effective_clusters)
    eff = new.effective_clusters
    checks["balance"] = {"passed": eff >= floor, "value": eff, "limit": floor}
    if old is None:
        checks["loss"] = {"passed": None, "skipped": "no previous model"}
        checks["agreement"] = {"passed": None, "skipped": "no previous model"}
    else:
        if new.loss is None or old.loss is None:
            checks["loss"] = {"passed": None, "skipped": "loss not measured on shared imagery"}
        else:
            limit = old.loss + config.loss_tolerance
            checks["loss"] = {"passed": new.loss <= limit, "value": new.loss, "limit": limit}
        if agreement is None:
            raise ConfigError("a previous model exists: the agreement with it is required (align first)")
        checks["agreement"] = {
            "passed": agreement >= config.min_agreement,
            "value": agreement,
            "limit": config.min_agreement,
        }
    reasons = [_reason(name, c) for name, c in checks.items() if c["passed"] is False]
    return PromotionDecision(promote=not reasons, checks=checks, reasons=reasons)


def figures_from_alignment(record: dict[str, Any]) -> tuple[ModelFigures, ModelFigures, float]:
    """(new, old, agreement) from a model.json ``alignment`` record (see geoseg.models.align)."""
    try:
        new = ModelFigures(shares=list(record["shares_new"]), loss=record.get("loss_new"))
        old = ModelFigures(shares=list(record["shares_old"]), loss=record.get("loss_old"))
        return new, old, float(record["agreement"])
    except (KeyError, TypeError) as exc:
        raise InputError(f"incomplete alignment record: {exc}") from exc


def check_bundle(
    bundle_dir: str | Path,
    previous_dir: str | Path | None,
    config: PromotionConfig | None = None,
    reference: Sequence[str | Path] | None = None,
) -> PromotionDecision:
    """The promotion check of an aligned bundle against the model it was aligned to.

    The bundle must have been aligned to exactly ``previous_dir``'s weights (the record
    carries their sha256), so the figures compared belong to this pair of models. With no
    previous model (a registry's first), the balance check runs on ``reference`` imagery;
    without reference imagery it is recorded as skipped.
    """
    meta = load_meta(bundle_dir)
    if previous_dir is None:
        if reference:
            from geoseg.models.align import reference_figures

            figures = reference_figures(bundle_dir, reference)
            return should_promote(ModelFigures(figures.shares, figures.loss), None, None, config)
        shares = (meta.alignment or {}).get("shares_new")
        if shares is None:
            skipped = {"passed": None, "skipped": "no previous model and no reference imagery"}
            return PromotionDecision(True, {"balance": skipped}, reasons=[])
        return should_promote(ModelFigures(list(shares)), None, None, config)
    load_meta(previous_dir)  # a mistyped --previous is "model bundle not found: PATH", not a traceback
    previous_weights = Path(previous_dir) / WEIGHTS
    if not previous_weights.is_file():
        raise InputError(f"model bundle has no {WEIGHTS}: {previous_dir}")
    record = meta.alignment
    if not record:
        raise ConfigError(f"{bundle_dir} is not aligned to {previous_dir}: run the alignment first")
    previous_sha = sha256_file(previous_weights)
    if record.get("previous", {}).get("weights_sha256") != previous_sha:
        raise ConfigError(f"{bundle_dir} was aligned to another model than {previous_dir}")
    new, old, agreement = figures_from_alignment(record)
    return should_promote(new, old, agreement, config)


def _reason(name: str, check: dict[str, Any]) -> str:
    value, limit = check["value"], check["limit"]
    if name == "balance":
        return f"cluster balance: {value:.2f} effective clusters < floor {limit:.2f} (collapse)"
    if name == "loss":
        return f"loss on shared imagery {value:.4f} > previous + tolerance {limit:.4f}"
    return f"agreement with the previous model {value:.3f} < floor {limit:.3f}"


# --- the registry ----------------------------------------------------------------------------


def load_state(registry: str | Path) -> RegistryState:
    """The registry's state; an empty state for a directory that has none yet."""
    path = Path(registry) / STATE
    if not path.exists():
        return RegistryState()
    try:
        data = json.loads(path.read_text())
        if data.get("format") != REGISTRY_FORMAT:
            raise InputError(f"{path}: not a geoseg model registry")
        data["versions"] = [ModelVersion(**v) for v in data["versions"]]
        state = RegistryState(**data)
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise InputError(f"corrupt model registry {path}: {exc}") from exc
    names = [v.version for v in state.versions] + list(state.promoted) + [state.current or "v0000"]
    bad = [n for n in names if not isinstance(n, str) or not _VERSION.fullmatch(n)]
    if bad:  # a version name is a folder of the registry: never a path that leaves it
        raise InputError(f"corrupt model registry {path}: bad version name(s) {bad[:3]}")
    return state


def _locked_registry(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run a registry change under the registry's lock (one writer at a time)."""

    signature = inspect.signature(func)

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        registry = signature.bind(*args, **kwargs).arguments["registry"]
        # a read-only registry is named as such, not by the lock file it could not create
        check_writable(Path(registry))
        with locked(Path(registry), "model registry"):
            return func(*args, **kwargs)

    return wrapper


def list_versions(registry: str | Path) -> list[ModelVersion]:
    return load_state(registry).versions


@_locked_registry
def register(
    bundle_dir: str | Path, registry: str | Path, decision: PromotionDecision | None = None
) -> ModelVersion:
    """Copy a bundle into the registry as the next version (idempotent by weights hash)."""
    bundle_dir, registry = Path(bundle_dir), Path(registry)
    _, meta = load_bundle(bundle_dir)  # the weights must load: never register a broken bundle
    state = load_state(registry)
    sha = sha256_file(bundle_dir / WEIGHTS)
    for existing in state.versions:
        if existing.weights_sha256 == sha:
            if decision is not None and existing.decision is None:
                existing.decision = asdict(decision)
                _save(registry, state)
            return existing
    version = _next_version(state)
    with atomic_path(registry / version) as tmp:
        shutil.copytree(bundle_dir, tmp, ignore=shutil.ignore_patterns(".*"))
        meta.provenance = {**meta.provenance, "registry_version": version}
        write_json_atomic(tmp / META, json.loads(meta.to_json()))
    entry = ModelVersion(
        version=version,
        registered=_now(),
        source=str(bundle_dir.resolve()),
        weights_sha256=sha,
        k=meta.arch.k_b,
        status="rejected" if decision is not None and not decision.promote else "candidate",
        decision=asdict(decision) if decision is not None else None,
    )
    state.versions.append(entry)
    state.events.append({"time": entry.registered, "action": "register", "version": version})
    _save(registry, state)
    return entry


@_locked_registry
def promote(registry: str | Path, version: str) -> ModelVersion:
    """Make ``version`` the current model (the segment deployment's default)."""
    registry = Path(registry)
    state = load_state(registry)
    entry = state.get(version)
    previous = state.current
    if previous == version:
        return entry
    load_bundle(registry / version)  # a version whose weights cannot load is never made current
    if previous is not None:
        state.get(previous).status = "retired"
    entry.status = "promoted"
    state.promoted.append(version)
    state.events.append({"time": _now(), "action": "promote", "version": version, "from": previous})
    _save(registry, state)
    return entry


@_locked_registry
def rollback(registry: str | Path, to: str | None = None) -> ModelVersion:
    """Make the previously promoted model (or ``to``, promoted at some point) current again."""
    registry = Path(registry)
    state = load_state(registry)
    current = state.current
    if current is None:
        raise ConfigError(f"nothing to roll back: no model is promoted in {registry}")
    if to is None:
        if len(state.promoted) < 2:
            raise ConfigError(f"nothing to roll back to: {current} is the only model ever promoted")
        target = state.promoted[-2]
    else:
        state.get(to)
        if to == current:
            return state.get(to)
        if to not in state.promoted:
            raise ConfigError(f"{to} was never promoted; use `geoseg model promote {to}` instead")
        target = to
    while state.promoted[-1] != target:
        state.get(state.promoted.pop()).status = "rolled-back"
    state.get(target).status = "promoted"
    state.events.append({"time": _now(), "action": "rollback", "version": target, "from": current})
    _save(registry, state)
    return state.get(target)


@_locked_registry
def record_naming(registry: str | Path, version: str, clusters: Sequence[Cluster]) -> None:
    """Log that ``version``'s clusters were named (``geoseg model name``) and refresh the catalog.

    The names live in the version's model.json (written by :mod:`geoseg.models.names`); the event
    keeps who-called-what-when auditable, as promotions are.
    """
    registry = Path(registry)
    state = load_state(registry)
    state.get(version)
    named = {str(c.id): c.name for c in clusters if c.name}
    state.events.append({"time": _now(), "action": "name", "version": version, "names": named})
    _save(registry, state)


def cluster_names(registry: str | Path, version: str) -> dict[int, str]:
    """The names a version's clusters carry (unnamed clusters left out)."""
    try:
        meta = load_meta(Path(registry) / version)
    except InputError:
        return {}
    return {c.id: c.name for c in meta.clusters if c.name}


def current_model(registry: str | Path) -> Path:
    """The bundle directory of the promoted model."""
    registry = Path(registry)
    current = load_state(registry).current
    if current is None:
        raise InputError(f"no promoted model in registry {registry}")
    return registry / current


def resolve_model(model: str | Path | None, registry: str | Path | None) -> Path:
    """The model a stage should use: ``model`` when given (a bundle dir, or a version name of
    ``registry``), else the registry's promoted model."""
    if model is not None:
        if registry is not None and _VERSION.match(str(model)) and not Path(model).exists():
            return version_dir(registry, str(model))
        return Path(model)
    if registry is None:
        raise ConfigError("give a model bundle or a model registry")
    return current_model(registry)


def version_dir(registry: str | Path, version: str) -> Path:
    load_state(registry).get(version)
    return Path(registry) / version


# --- surveys a retraining has not seen yet ----------------------------------------------------


@dataclass
class Survey:
    """A survey item of a STAC catalog: its imagery, optional ground truth, when it was added."""

    item_id: str
    image: Path
    label: Path | None
    added: str  # ISO 8601: the item's `created`, else its datetime


def new_surveys(catalog: str | Path, registry: str | Path, since: str | None = None) -> list[Survey]:
    """Survey items of ``catalog`` added after the promoted model was registered (or ``since``).

    "Added" is the item's ``created`` property (STAC common metadata: when the item was
    written), falling back to its ``datetime``/``start_datetime``. With no promoted model
    and no ``since``, every survey is new. The imagery is the item's asset with role
    ``data`` (not a patch store; else the first GeoTIFF asset); ground truth, if any, the
    asset with role ``labels``. Items without imagery, and items of another
    ``geoseg:kind`` (models, predictions of a run catalog), are passed over.
    """
    explicit = parse_since(since)  # a bad `since` is refused before the catalog is read
    path = Path(catalog)
    if not path.is_file():
        raise InputError(f"survey catalog not found: {catalog}")
    try:
        root = pystac.read_file(str(path))
    except Exception as exc:  # pystac raises several types for foreign/corrupt JSON
        raise InputError(f"unreadable STAC catalog {catalog}: {exc}") from exc
    cutoff = explicit
    if since is None:
        state = load_state(registry)
        if state.current:
            cutoff = _utc(datetime.fromisoformat(state.get(state.current).registered))
    if isinstance(root, pystac.Item):
        items = [root]
    elif isinstance(root, pystac.Catalog):
        items = list(root.get_items(recursive=True))
    else:
        raise InputError(f"{catalog} is neither a STAC catalog nor an item")
    surveys = []
    for item in items:
        if item.properties.get("geoseg:kind", "survey") != "survey":
            continue  # models and predictions of a run catalog
        image = _asset(item, "data")
        if image is None:
            continue
        added = _added(item)
        if cutoff is not None and (added is None or added <= cutoff):
            continue
        label = _asset(item, "labels")
        surveys.append(Survey(item.id, image, label, added.isoformat() if added else ""))
    return sorted(surveys, key=lambda s: (s.added, s.item_id))


def parse_since(since: str | None) -> datetime | None:
    """The ``since`` of :func:`new_surveys` (an ISO 8601 time, UTC when it has no zone), or
    None; anything else (``yesterday``, ``03/12/2026``) is a ConfigError naming it."""
    if since is None or since == "":
        return None
    try:
        return _utc(datetime.fromisoformat(str(since).strip().replace("Z", "+00:00")))
    except (TypeError, ValueError):
        raise ConfigError(
            f"since must be an ISO 8601 date or time, e.g. 2026-06-01 or 2026-06-01T03:00:00+00:00, got {since!r}"
        ) from None


def _asset(item: pystac.Item, role: str) -> Path | None:
    assets = list(item.assets.values())
    chosen = [a for a in assets if role in (a.roles or []) and "zarr" not in (a.media_type or "")]
    if not chosen and role == "data":
        chosen = [a for a in assets if "tiff" in (a.media_type or "") and "labels" not in (a.roles or [])]
    if not chosen:
        return None
    return Path(chosen[0].get_absolute_href() or chosen[0].href)


def _added(item: pystac.Item) -> datetime | None:
    props = item.properties
    for key in ("created", "datetime", "start_datetime"):
        if props.get(key):
            return _utc(datetime.fromisoformat(str(props[key]).replace("Z", "+00:00")))
    return _utc(item.datetime) if item.datetime else None


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --- persistence -----------------------------------------------------------------------------


def _next_version(state: RegistryState) -> str:
    numbers = [int(m.group(1)) for v in state.versions if (m := _VERSION.match(v.version))]
    return f"v{max(numbers, default=0) + 1:04d}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _save(registry: Path, state: RegistryState) -> None:
    registry.mkdir(parents=True, exist_ok=True)
    write_json_atomic(registry / STATE, asdict(state))
    _point_current(registry, state.current)
    write_catalog(registry, state)


def _point_current(registry: Path, version: str | None) -> None:
    """``REGISTRY/current`` -> the promoted version's folder (a relative symlink, swapped atomically).

    Deployments name ``REGISTRY/current`` as their model: they follow promotions and
    rollbacks without being redeployed.
    """
    link = registry / CURRENT
    if version is None:
        if link.is_symlink():
            link.unlink()
        return
    if link.is_symlink() and os.readlink(link) == version:
        return
    tmp = registry / f".{CURRENT}.tmp-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(version, tmp, target_is_directory=True)
    os.replace(tmp, link)


def write_catalog(registry: str | Path, state: RegistryState | None = None) -> Path:
    """(Re)write the STAC catalog of the registry's versions (self-contained, relative hrefs),
    validated, each file published atomically (``geoseg.stac.items.save_catalog_files``)."""
    registry = Path(registry).resolve()
    state = state or load_state(registry)
    catalog = pystac.Catalog(
        id=CATALOG_ID,
        description="geoseg model versions; geoseg:promoted names the model in use",
        title="geoseg models",
        extra_fields={"geoseg:promoted": state.current, "geoseg:promotion_stack": list(state.promoted)},
    )
    for v in state.versions:
        folder = registry / v.version
        item = pystac.Item(
            id=v.version,
            geometry=None,
            bbox=None,
            datetime=datetime.fromisoformat(v.registered),
            properties={
                "geoseg:status": v.status,
                "geoseg:k": v.k,
                "geoseg:weights_sha256": v.weights_sha256,
                "geoseg:source": v.source,
                "geoseg:promotion": v.decision,
                "geoseg:cluster_names": {str(k): n for k, n in cluster_names(registry, v.version).items()},
            },
        )
        item.add_asset("weights", pystac.Asset(str(folder / WEIGHTS), media_type=WEIGHTS_MEDIA_TYPE,
                                               roles=["model", "weights"]))  # fmt: skip
        item.add_asset("metadata", pystac.Asset(str(folder / META), media_type=pystac.MediaType.JSON,
                                                roles=["metadata"]))  # fmt: skip
        report = folder / "alignment.json"
        if report.is_file():
            item.add_asset("alignment", pystac.Asset(str(report), media_type=pystac.MediaType.JSON,
                                                     roles=["metadata"]))  # fmt: skip
        catalog.add_item(item)
    return save_catalog_files(catalog, registry)  # the registry's other files are not the catalog's
