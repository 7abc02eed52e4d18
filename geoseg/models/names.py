"""Cluster names and colours: what a user calls cluster 3 ("roofs") and how it looks, kept in model.json.

IIC's clusters are only numbers until someone looks at them and names them. ``name_clusters``
stores names and colours in a bundle's ``model.json`` (validated, replaced atomically), or
in a registry version's (by default the promoted one, which the next retraining aligns to,
so the names carry over to every later version through :func:`geoseg.models.align.carry_clusters`).
Every output made from the model then uses them: the cluster COG's colour table and
metadata, the QGIS styles, the GeoPackage's ``class_name``, previews, reports, STAC items.

Assignments are ``ID=NAME`` (``ID=`` clears a name: the cluster is ``cluster N`` again) and
``ID=#RRGGBB`` colours; a legend file gives both, as CSV (header ``id,name[,colour]``) or
JSON (``{"3": "roofs"}``, ``{"3": {"name": "roofs", "colour": "#c0392b"}}`` or a list of
``{"id", "name", "colour"}`` objects). Command-line assignments win over the legend's.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geoseg.errors import ConfigError, InputError, OutputError
from geoseg.io.fileio import locked, write_json_atomic
from geoseg.messages import plural
from geoseg.models.bundle import META, Cluster, ModelMeta, load_meta

__all__ = [
    "MAX_NAME_LENGTH",
    "ClusterEdits",
    "NamingResult",
    "apply_edits",
    "name_clusters",
    "parse_colour",
    "parse_colours",
    "parse_names",
    "read_legend",
]

MAX_NAME_LENGTH = 64
_HEX = re.compile(r"^#?([0-9a-fA-F]{6}|[0-9a-fA-F]{3})$")


@dataclass
class ClusterEdits:
    """Names (None: clear the name) and colours to set, by cluster id."""

    names: dict[int, str | None] = field(default_factory=dict)
    colours: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    def update(self, other: ClusterEdits) -> ClusterEdits:
        """These edits, overridden by ``other``'s."""
        return ClusterEdits({**self.names, **other.names}, {**self.colours, **other.colours})

    @property
    def ids(self) -> set[int]:
        return set(self.names) | set(self.colours)


@dataclass
class NamingResult:
    bundle: Path  # the bundle whose model.json was rewritten
    clusters: list[Cluster]
    version: str | None = None  # the registry version, when a registry was named


def _cluster_id(text: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{where}: cluster id must be a whole number, got {text.strip()!r}") from None
    if value < 0:
        raise ConfigError(f"{where}: cluster id must be >= 0, got {value}")
    return value


def _name(text: Any, where: str) -> str | None:
    """A clean name, or None for an empty one (the cluster goes back to ``cluster N``)."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise ConfigError(f"{where}: a cluster name must be text, got {text!r}")
    name = " ".join(text.split())  # one line: names end up in CSV-like tables, legends, markdown
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise ConfigError(f"{where}: cluster name {text!r} holds control characters")
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{where}: cluster name {name!r} is longer than {MAX_NAME_LENGTH} characters")
    return name or None


def parse_colour(value: Any, where: str = "colour") -> tuple[int, int, int]:
    """``#RRGGBB``, ``#RGB`` (the ``#`` optional) or ``[r, g, b]`` with 0..255 -> (r, g, b)."""
    if isinstance(value, list | tuple):
        if len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value):
            return (int(value[0]), int(value[1]), int(value[2]))
        raise ConfigError(f"{where}: colour {value!r} is not three integers 0..255")
    match = _HEX.match(str(value).strip()) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f"{where}: colour {value!r} is not #RRGGBB (e.g. #c0392b)")
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    return (int(digits[0:2], 16), int(digits[2:4], 16), int(digits[4:6], 16))


def _split(assignment: str, kind: str) -> tuple[int, str]:
    if "=" not in assignment:
        raise ConfigError(f"{kind} {assignment!r} is not ID=VALUE (e.g. 3=roofs)")
    key, value = assignment.split("=", 1)
    return _cluster_id(key, f"{kind} {assignment!r}"), value


def parse_names(assignments: Iterable[str]) -> dict[int, str | None]:
    """``["3=roofs", "0=roads", "5="]`` -> {3: "roofs", 0: "roads", 5: None}."""
    names: dict[int, str | None] = {}
    for text in assignments:
        cid, value = _split(text, "name")
        if _HEX.match(value.strip()) and value.strip().startswith("#"):
            # `--color 1=#2e7d32 2=#c0392b`: --color takes one value, the second is a name
            raise ConfigError(
                f"name {text!r} is a colour: give it as --color {cid}={value.strip()} "
                "(--color takes one ID=#RRGGBB: repeat --color for each cluster)"
            )
        name = _name(value, f"name {text!r}")
        if cid in names and names[cid] != name:
            raise ConfigError(f"cluster {cid} is named twice: {names[cid]!r} and {name!r}")
        names[cid] = name
    return names


def parse_colours(assignments: Iterable[str]) -> dict[int, tuple[int, int, int]]:
    """``["3=#c0392b"]`` -> {3: (192, 57, 43)}."""
    colours = {}
    for text in assignments:
        cid, value = _split(text, "colour")
        colours[cid] = parse_colour(value, f"colour {text!r}")
    return colours


def read_legend(path: str | Path) -> ClusterEdits:
    """Names and colours from a legend file (CSV with a header, or JSON; see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"legend file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")  # spreadsheets write a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"unreadable legend file {path}: {exc}") from exc
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        return _legend_json(text, path)
    return _legend_csv(text, path)


def _legend_json(text: str, path: Path) -> ClusterEdits:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"legend {path} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        entries = [
            {"id": key, **(value if isinstance(value, dict) else {"name": value})}
            for key, value in data.items()
        ]
    elif isinstance(data, list) and all(isinstance(e, dict) for e in data):
        entries = data
    else:
        raise InputError(f"legend {path}: expected an object {{id: name}} or a list of {{id, name, colour}}")
    return _entries(entries, path)


def _legend_csv(text: str, path: Path) -> ClusterEdits:
    rows = list(csv.DictReader(text.splitlines()))
    header = {h.strip().lower() for h in (rows[0].keys() if rows else [])}
    if "id" not in header or not header & {"name", "colour", "color"}:
        raise InputError(f"legend {path}: CSV needs a header row with id and name and/or colour")
    entries = []
    for row in rows:
        clean = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        entries.append({k: v for k, v in clean.items() if k in ("id", "name", "colour", "color")})
    return _entries(entries, path)


def _entries(entries: Sequence[Mapping[str, Any]], path: Path) -> ClusterEdits:
    edits = ClusterEdits()
    for n, entry in enumerate(entries, start=1):
        where = f"legend {path}, entry {n}"
        if "id" not in entry:
            raise InputError(f"{where}: no cluster id")
        cid = _cluster_id(str(entry["id"]), where)
        if cid in edits.ids:
            raise InputError(f"{where}: cluster {cid} is listed twice")
        if "name" in entry:
            edits.names[cid] = _name(entry["name"], where)
        colour = entry.get("colour", entry.get("color"))
        if colour not in (None, ""):
            edits.colours[cid] = parse_colour(colour, where)
    return edits


def apply_edits(clusters: list[Cluster], edits: ClusterEdits, model: str | Path) -> list[Cluster]:
    """The cluster table with ``edits`` applied; ids the model does not have are refused, by id."""
    known = {c.id for c in clusters}
    unknown = sorted(edits.ids - known)
    if unknown:
        span = f"ids {min(known)}-{max(known)}" if known else "no clusters"
        raise ConfigError(
            f"model {model} has no cluster {', '.join(map(str, unknown))} "
            f"(it has {plural(len(known), 'cluster')}: {span})"
        )
    return [
        Cluster(
            c.id,
            edits.colours.get(c.id, tuple(c.colour)),  # type: ignore[arg-type]
            edits.names[c.id] if c.id in edits.names else c.name,
        )
        for c in sorted(clusters, key=lambda c: c.id)
    ]


def _write_meta(bundle: Path, meta: ModelMeta, registry: Path | None = None) -> None:
    """Rewrite the bundle's model.json; a bundle that cannot be written in (read-only, no
    permission, a full disk) is an OutputError naming its model.json, not the temporary file
    the atomic write had started, and saying what to do (:func:`_cannot_name`)."""
    try:
        write_json_atomic(bundle / META, json.loads(meta.to_json()))
    except OSError as exc:
        raise _cannot_name(bundle, exc, registry) from None


def _cannot_name(bundle: Path, exc: OSError, registry: Path | None) -> OutputError:
    """The one line for a model.json that cannot be written. A registry's version is named in
    place or not at all (a copy would not be the version the next retraining aligns to), so
    there the advice is to make the registry writable."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space on its disk and name the clusters again"
    elif registry is not None:
        advice = f"make the model registry {registry} writable: a registry's version is named in place"
    else:
        advice = f"make {bundle} writable, or copy the bundle to a writable folder and name the copy"
    return OutputError(f"cannot write {bundle / META}: {exc.strerror or exc}: {advice}")


def _registry_version(bundle: Path) -> tuple[str, Path] | None:
    """(version, registry) when ``bundle`` is a registry's version folder (``REGISTRY/v0002``,
    or ``REGISTRY/current``), so naming it is logged there too."""
    from geoseg.models import registry

    folder = bundle.resolve()
    if not (folder.parent / registry.STATE).is_file():
        return None
    state = registry.load_state(folder.parent)
    if not any(v.version == folder.name for v in state.versions):
        return None
    return folder.name, folder.parent


def name_clusters(target: str | Path, edits: ClusterEdits, version: str | None = None) -> NamingResult:
    """Store names and colours in a bundle's model.json, or a registry version's.

    Args:
        target: a model bundle folder, or a model registry folder.
        edits: names and colours by cluster id.
        version: with a registry, the version to name (default: the promoted one).

    Raises:
        ConfigError: an id the model does not have, a bad name or colour, nothing to change.
        InputError: ``target`` is neither a bundle nor a registry.
        OutputError: the bundle's model.json cannot be written (read-only, no permission,
            disk full); the message names model.json and what to do.
    """
    from geoseg.models import registry

    target = Path(target)
    if not edits.ids:
        raise ConfigError("nothing to change: give ID=NAME assignments, --color ID=#RRGGBB or --legend FILE")
    if (target / registry.STATE).is_file():
        state = registry.load_state(target)
        version = version or state.current
        if version is None:
            raise ConfigError(f"registry {target} has no promoted model: name a version with --version")
        bundle = registry.version_dir(target, version)
    elif (target / META).is_file():
        if version is not None:
            raise ConfigError(f"--version names a registry version, but {target} is a model bundle")
        bundle = target
        version, target = _registry_version(target) or (None, target)
    else:
        raise InputError(f"{target} is neither a model bundle (no {META}) nor a model registry")
    with contextlib.ExitStack() as held:
        if version is not None:
            # one registry writer at a time: a retrain registering a version meanwhile would
            # otherwise lose its entry, or this naming its event, to the other's registry.json
            try:
                held.enter_context(locked(target, "model registry"))
            except OSError as exc:  # read-only, full: the lock's file could not be made
                raise _cannot_name(bundle, exc, target) from None
        meta = load_meta(bundle)
        meta.clusters = apply_edits(list(meta.clusters), edits, bundle)
        _write_meta(bundle, meta, target if version is not None else None)
        if version is not None:
            registry.record_naming(target, version, meta.clusters)
    return NamingResult(bundle=bundle, clusters=meta.clusters, version=version)
