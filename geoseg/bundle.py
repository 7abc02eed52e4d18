"""Model bundles: ``weights.safetensors`` + ``model.json`` in one directory.

Weights are never pickled; loading never unpickles. ``model.json`` carries what a user
or a later stage needs to use the model correctly: the architecture, the input bands and
their normalisation, patch size and scale, loss settings, provenance, history, the
label-free checkpoint rule, and the cluster table (id -> colour, name) with alignment.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from geoseg import __version__
from geoseg.errors import InputError
from geoseg.fileio import atomic_path
from geoseg.iic.model import Architecture, IICNet
from geoseg.style import cluster_label

WEIGHTS = "weights.safetensors"
META = "model.json"
BUNDLE_FORMAT = "geoseg.model/1"
CLUSTERS_TAG = "GEOSEG_CLUSTERS"  # the cluster table, as JSON, in a cluster raster's GDAL metadata


@dataclass
class Cluster:
    """One cluster of head B: its stable id, its colour and the name a user gave it."""

    id: int
    colour: tuple[int, int, int]
    name: str | None = None

    @property
    def label(self) -> str:
        """What maps, legends and reports call it: the name, else ``cluster N``."""
        return cluster_label(self.id, self.name)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "colour": list(self.colour), "name": self.name}


def clusters_to_tag(clusters: Sequence[Cluster]) -> str:
    """The cluster table as stored in a raster's ``GEOSEG_CLUSTERS`` metadata item."""
    return json.dumps([c.to_dict() for c in clusters])


def clusters_from_tag(text: str | None) -> list[Cluster] | None:
    """The cluster table of a raster's ``GEOSEG_CLUSTERS`` item; None where it has none or it is unreadable."""
    if not text:
        return None
    try:
        return [Cluster(int(c["id"]), tuple(c["colour"]), c.get("name")) for c in json.loads(text)]  # type: ignore[arg-type]
    except (json.JSONDecodeError, TypeError, KeyError, ValueError):
        return None


@dataclass
class ModelMeta:
    """The contents of model.json."""

    architecture: dict[str, Any]
    band_names: list[str]
    band_mean: list[float]
    band_std: list[float]
    dtype: str  # source dtype the model was trained on
    patch_size: int
    scale: float
    loss: dict[str, Any]  # lamb_a, lamb_b, half_t, ...
    clusters: list[Cluster]  # of the main head B
    provenance: dict[str, Any] = field(default_factory=dict)  # stores, sha256s, config
    history: list[dict[str, Any]] = field(default_factory=list)
    selection: dict[str, Any] = field(default_factory=dict)  # the label-free checkpoint rule
    alignment: dict[str, Any] | None = None  # how ids were aligned to a previous model
    geoseg_version: str = __version__
    format: str = BUNDLE_FORMAT

    @property
    def arch(self) -> Architecture:
        return Architecture.from_dict(self.architecture)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        data = dict(data)
        data["clusters"] = [Cluster(**{**c, "colour": tuple(c["colour"])}) for c in data["clusters"]]
        return cls(**data)


def default_clusters(k: int) -> list[Cluster]:
    """Distinct colours for k clusters (tab20-like cycle, stable by id)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"] if k > 10 else colormaps["tab10"]
    colours = []
    for i in range(k):
        r, g, b, _ = cmap(i % cmap.N)
        colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return [Cluster(id=i, colour=c) for i, c in enumerate(colours)]


def save_bundle(model: IICNet, meta: ModelMeta, out_dir: str | Path) -> Path:
    """Write the bundle atomically (a temporary directory renamed into place)."""
    out_dir = Path(out_dir)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": BUNDLE_FORMAT})
        (tmp / META).write_text(meta.to_json())
    return out_dir


def load_meta(bundle_dir: str | Path) -> ModelMeta:
    path = Path(bundle_dir) / META
    if not path.is_file():
        raise InputError(f"model bundle has no {META}: {bundle_dir}")
    try:
        data = json.loads(path.read_text())
        meta = ModelMeta.from_dict(data)
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise InputError(f"corrupt {path}: {exc}") from exc
    if meta.format != BUNDLE_FORMAT:
        raise InputError(f"{path}: unsupported bundle format {meta.format!r}")
    return meta


def load_bundle(bundle_dir: str | Path, device: str | torch.device = "cpu") -> tuple[IICNet, ModelMeta]:
    """Rebuild the network from model.json and load its safetensors weights (eval mode)."""
    bundle_dir = Path(bundle_dir)
    meta = load_meta(bundle_dir)
    weights = bundle_dir / WEIGHTS
    if not weights.is_file():
        raise InputError(f"model bundle has no {WEIGHTS}: {bundle_dir}")
    model = IICNet(meta.arch)
    try:
        state = load_file(str(weights), device="cpu")
        model.load_state_dict(state)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise InputError(f"cannot load weights {weights}: {exc}") from exc
    return model.to(device).eval(), meta
