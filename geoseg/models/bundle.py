"""Model bundles: ``weights.safetensors`` + ``model.json`` in one directory.

Weights are never pickled; loading never unpickles. ``model.json`` carries what a user
or a later stage needs to use the model correctly: the architecture, the input bands and
their normalisation, patch size and scale, loss settings, provenance, history, the
label-free checkpoint rule, and the cluster table (id -> colour, name) with alignment.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from geoseg import __version__
from geoseg.errors import InputError
from geoseg.iic.model import PRESET_WIDTH, Architecture, NormalisedNet
from geoseg.io.fileio import atomic_path, content_id
from geoseg.io.style import StyleClass
from geoseg.messages import plural

__all__ = [
    "BUNDLE_FORMAT",
    "CLUSTERS_TAG",
    "MEMBERS",
    "META",
    "WEIGHTS",
    "Cluster",
    "ModelMeta",
    "clusters_from_tag",
    "clusters_to_tag",
    "default_clusters",
    "load_bundle",
    "load_meta",
    "model_id",
    "save_bundle",
]

WEIGHTS = "weights.safetensors"
META = "model.json"
MEMBERS = "members"  # model.json architecture key of an ensemble (geoseg.models.ensemble)
BUNDLE_FORMAT = "geoseg.model/1"
CLUSTERS_TAG = "GEOSEG_CLUSTERS"  # the cluster table, as JSON, in a cluster raster's GDAL metadata


@dataclass(frozen=True)
class Cluster(StyleClass):
    """One cluster of head B: its stable id, its colour and the name a user gave it; a
    StyleClass, so styles and legends take it as it is.

    ``label`` (the name, else ``cluster N``) and ``hex`` come from StyleClass.
    """

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "colour": list(self.colour), "name": self.name}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cluster:
        """The inverse of :meth:`to_dict` (JSON holds the colour as a list)."""
        red, green, blue = (int(v) for v in data["colour"])
        return cls(int(data["id"]), (red, green, blue), data.get("name"))


def clusters_to_tag(clusters: Sequence[Cluster]) -> str:
    """The cluster table as stored in a raster's ``GEOSEG_CLUSTERS`` metadata item."""
    return json.dumps([c.to_dict() for c in clusters])


def clusters_from_tag(text: str | None) -> list[Cluster] | None:
    """The cluster table of a raster's ``GEOSEG_CLUSTERS`` item; None where it has none or it is unreadable."""
    if not text:
        return None
    try:
        return [Cluster.from_dict(c) for c in json.loads(text)]
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
    method: str = "iic"  # the training method (geoseg.methods); bundles before methods were IIC
    geoseg_version: str = __version__
    format: str = BUNDLE_FORMAT

    @property
    def arch(self) -> Any:
        """The method's architecture (in_channels, k_b, k_a, subheads, preset, ...); of an
        ensemble (geoseg.models.ensemble), its first member's."""
        members = self.member_architectures
        architecture = members[0] if members else self.architecture
        if self.method == "iic":
            return Architecture.from_dict(architecture)
        if self.method == "lgmi":
            from geoseg.lgmi.model import LGMIArchitecture

            return LGMIArchitecture.from_dict(architecture)
        if self.method == "cirs":
            from geoseg.cirs.model import CIRSArchitecture

            return CIRSArchitecture.from_dict(architecture)
        from geoseg.picie.model import PiCIEArchitecture

        return PiCIEArchitecture.from_dict(architecture)

    @property
    def member_architectures(self) -> list[dict[str, Any]] | None:
        """An ensemble's member architectures (geoseg.models.ensemble); None for one network."""
        members = self.architecture.get(MEMBERS) if isinstance(self.architecture, dict) else None
        if members is None:
            return None
        if not isinstance(members, list) or len(members) < 2 or not all(isinstance(m, dict) for m in members):
            raise ValueError(f"{MEMBERS!r} must list two or more member architectures")
        return members

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMeta:
        data = dict(data)
        data["clusters"] = [Cluster.from_dict(c) for c in data["clusters"]]
        return cls(**data)


def model_id(bundle_dir: str | Path) -> str:
    """A bundle's identity by content, ``model-`` and the first 12 hex digits of its weights'
    sha256: the run catalog's model item id, and the cluster COG's ``GEOSEG_MODEL`` tag (the
    same weights anywhere have the same id; no path of the machine that wrote it)."""
    return content_id(Path(bundle_dir) / WEIGHTS)


def default_clusters(k: int) -> list[Cluster]:
    """Distinct colours for k clusters, stable by id: tab10 up to 10 clusters, tab20 up to
    20, and past 20 (head A's over-clustering: k_a = 4k) colours of a golden-angle hue walk,
    none repeating an earlier one, so that no two clusters look alike in QGIS."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"] if k > 10 else colormaps["tab10"]
    colours: list[tuple[int, int, int]] = []
    for i in range(k):
        if i < cmap.N:
            r, g, b, _ = cmap(i)
            colour = (int(r * 255), int(g * 255), int(b * 255))
        else:
            colour = _walk_colour(i, set(colours))
        colours.append(colour)
    return [Cluster(id=i, colour=c) for i, c in enumerate(colours)]


def _walk_colour(i: int, used: set[tuple[int, int, int]]) -> tuple[int, int, int]:
    import colorsys

    step = 0
    while True:  # hue by the golden angle; saturation and value cycle; never a used colour
        hue = ((i + step) * 0.6180339887498949) % 1.0
        saturation = (0.85, 0.55, 0.7)[(i + step) % 3]
        value = (0.9, 0.7, 0.55)[((i + step) // 3) % 3]
        r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
        colour = (round(r * 255), round(g * 255), round(b * 255))
        if colour not in used:
            return colour
        step += 1


def save_bundle(model: NormalisedNet, meta: ModelMeta, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the bundle atomically (a temporary directory renamed into place).

    An existing folder is replaced only when it is a bundle (holds model.json) or with
    ``overwrite``: a user's folder is never deleted by accident.
    """
    out_dir = Path(out_dir)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    with atomic_path(out_dir, replace_folder=overwrite or (out_dir / META).is_file()) as tmp:
        tmp.mkdir(parents=True)
        save_file(state, str(tmp / WEIGHTS), metadata={"format": BUNDLE_FORMAT})
        (tmp / WEIGHTS).chmod(_default_mode())  # safetensors creates 0600; the rest is 0644-like
        (tmp / META).write_text(meta.to_json())
    return out_dir


def _default_mode() -> int:
    """The mode a plain new file gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def load_meta(bundle_dir: str | Path) -> ModelMeta:
    path = Path(bundle_dir) / META
    if not path.is_file():
        where = os.path.abspath(bundle_dir)
        if not os.path.lexists(bundle_dir):
            raise InputError(f"model bundle not found: {where}")
        if (Path(bundle_dir) / "registry.json").is_file():  # geoseg.models.registry.STATE (a layer up)
            raise InputError(
                f"{where} is a model registry, not a model bundle: give {os.path.join(where, 'current')}"
                " (its promoted model) or one of its versions"
            )
        raise InputError(f"{where} is not a model bundle (no {META})")
    try:
        data = json.loads(path.read_text())
        meta = ModelMeta.from_dict(data)
    except (json.JSONDecodeError, TypeError, KeyError, AttributeError, ValueError) as exc:
        raise InputError(f"corrupt {path}: {exc}") from exc
    if meta.format != BUNDLE_FORMAT:
        raise InputError(f"{path}: unsupported bundle format {meta.format!r}")
    from geoseg.config import METHODS

    if meta.method not in METHODS:
        raise InputError(
            f"model bundle {bundle_dir} was trained with method {meta.method!r}, which this geoseg "
            f"({__version__}) does not know (known: {', '.join(METHODS)}); use a geoseg that has it"
        )
    problem = meta_problem(meta)
    if problem:
        raise InputError(f"{path}: {problem}: the file was edited or damaged; retrain or restore it")
    return meta


def meta_problem(meta: ModelMeta) -> str | None:
    """What is out of range in model.json (checked like a config), or None."""
    try:
        arch = meta.arch
    except (TypeError, KeyError, ValueError) as exc:
        return f"bad architecture {meta.architecture!r} ({exc})"
    channels = arch.in_channels
    checks = [
        (isinstance(channels, int) and 1 <= channels <= 64, f"in_channels {channels!r} not in [1, 64]"),
        (
            isinstance(arch.subheads, int) and 1 <= arch.subheads <= 16,
            f"subheads {arch.subheads!r} not in [1, 16]",
        ),
        (arch.preset in PRESET_WIDTH, f"unknown preset {arch.preset!r}"),
        (
            isinstance(meta.patch_size, int) and 8 <= meta.patch_size <= 8192,
            f"patch_size {meta.patch_size!r} not in [8, 8192]",
        ),
        (_number(meta.scale) and 0 < meta.scale <= 16, f"scale {meta.scale!r} not in (0, 16]"),
        (
            len(meta.band_names) == channels,
            f"{len(meta.band_names)} band_names for {plural(channels, 'input band')}",
        ),
        (
            len(meta.band_mean) == channels and all(_number(v) for v in meta.band_mean),
            "band_mean: one finite number per band",
        ),
        (
            len(meta.band_std) == channels and all(_number(v) and v > 0 for v in meta.band_std),
            "band_std: one positive number per band",
        ),
        (_dtype_ok(meta.dtype), f"dtype {meta.dtype!r} is not a pixel type"),
        (
            all(isinstance(c.id, int) and 0 <= c.id < 255 for c in meta.clusters),
            "cluster ids must be in [0, 254]",
        ),
        (
            all(
                len(c.colour) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c.colour)
                for c in meta.clusters
            ),
            "cluster colours must be three integers in [0, 255]",
        ),
        (
            isinstance(arch.k_b, int)
            and 1 <= arch.k_b <= 255
            and isinstance(arch.k_a, int)
            and 1 <= arch.k_a <= 255,
            "k_a and k_b must be in [1, 255]",
        ),
    ]
    return next((message for ok, message in checks if not ok), None)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _dtype_ok(name: Any) -> bool:
    import numpy as np

    try:
        return isinstance(name, str) and np.dtype(name).kind in "uif"
    except TypeError:
        return False


def load_bundle(bundle_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Any, ModelMeta]:
    """Rebuild the network of model.json's method and load its safetensors weights (eval mode)."""
    from geoseg.methods import get_method

    bundle_dir = Path(bundle_dir)
    meta = load_meta(bundle_dir)
    weights = bundle_dir / WEIGHTS
    if not weights.is_file():
        raise InputError(f"model bundle has no {WEIGHTS}: {bundle_dir}")
    try:
        method = get_method(meta.method)
        members = meta.member_architectures
        model: NormalisedNet
        if members:
            from geoseg.models.ensemble_net import EnsembleNet

            model = EnsembleNet([method.network_from_architecture(a) for a in members])
        else:
            model = method.network_from_architecture(meta.architecture)
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
