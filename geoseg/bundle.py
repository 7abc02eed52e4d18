"""Model bundles: ``weights.safetensors`` + ``model.json`` in one directory.

Weights are never pickled; loading never unpickles. ``model.json`` carries what a user
or a later stage needs to use the model correctly: the architecture, the input bands and
their normalisation, patch size and scale, loss settings, provenance, history, the
label-free checkpoint rule, and the cluster table (id -> colour, name) with alignment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from geoseg import __version__
from geoseg.errors import InputError
from geoseg.fileio import atomic_path
from geoseg.iic.model import Architecture, NormalisedNet

WEIGHTS = "weights.safetensors"
META = "model.json"
BUNDLE_FORMAT = "geoseg.model/1"


@dataclass
class Cluster:
    id: int
    colour: tuple[int, int, int]
    name: str | None = None


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
    method: str = "iic"  # the training method (geoseg.methods); bundles before methods were IIC
    geoseg_version: str = __version__
    format: str = BUNDLE_FORMAT

    @property
    def arch(self) -> Any:
        """The method's architecture (in_channels, k_b, k_a, subheads, preset, ...)."""
        if self.method == "iic":
            return Architecture.from_dict(self.architecture)
        from geoseg.picie.model import PiCIEArchitecture

        return PiCIEArchitecture.from_dict(self.architecture)

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


def save_bundle(model: NormalisedNet, meta: ModelMeta, out_dir: str | Path) -> Path:
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
    from geoseg.config import METHODS

    if meta.method not in METHODS:
        raise InputError(
            f"model bundle {bundle_dir} was trained with method {meta.method!r}, which this geoseg "
            f"({__version__}) does not know (known: {', '.join(METHODS)}); use a geoseg that has it"
        )
    return meta


def load_bundle(bundle_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Any, ModelMeta]:
    """Rebuild the network of model.json's method and load its safetensors weights (eval mode)."""
    from geoseg.methods import get_method

    bundle_dir = Path(bundle_dir)
    meta = load_meta(bundle_dir)
    weights = bundle_dir / WEIGHTS
    if not weights.is_file():
        raise InputError(f"model bundle has no {WEIGHTS}: {bundle_dir}")
    try:
        model = get_method(meta.method).network_from_architecture(meta.architecture)
    except (TypeError, ValueError) as exc:
        raise InputError(f"model bundle {bundle_dir}: bad architecture in {META}: {exc}") from exc
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise InputError(f"cannot load weights {weights}: {exc}") from exc
    missing = sorted(set(model.state_dict()) - set(state))
    if missing:
        raise InputError(
            f"model bundle {bundle_dir} (method {meta.method}) lacks tensor(s) {', '.join(missing[:5])} "
            f"in {WEIGHTS}: it is incomplete or not a {meta.method} bundle; train or copy it again"
        )
    try:
        model.load_state_dict(state)
    except Exception as exc:
        raise InputError(f"cannot load weights {weights}: {exc}") from exc
    return model.to(device).eval(), meta
