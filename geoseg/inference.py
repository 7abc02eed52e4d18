"""Inference shared by every stage that runs a model: the device, the band check, and
probabilities of a batch of windows resampled as the model was trained.

``segment`` streams these over a raster; ``models.align`` compares two models with them
over a patch store. Written once, so both see a model the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from rasterio.io import DatasetReader

from geoseg.config import Precision
from geoseg.errors import ConfigError, InputError
from geoseg.iic.model import NormalisedNet
from geoseg.io.sources import band_names, usable_bands
from geoseg.messages import plural

if TYPE_CHECKING:  # only its shape: inference sits below the model files (docs/architecture.md)
    from geoseg.models.bundle import ModelMeta

__all__ = [
    "CPU_FORWARD_PIXELS",
    "MIN_SIDE",
    "check_bands",
    "predict_probabilities",
    "resolve_device",
    "window_probabilities",
]

MIN_SIDE = 8  # the trunk pools once: a window needs a few pixels on each side
# Pixels per forward pass on a CPU. Beyond about one 512 px window the activations leave the
# caches: five 512 px windows in one pass run at 1.5 Mpx/s, one at a time at 2.3 (small
# preset, 2 cores, bench/RESULTS.md "Default window"). GPUs take the whole batch at once.
CPU_FORWARD_PIXELS = 512 * 512


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; asking for CUDA without one is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA device is available")
    return torch.device(name)


def check_bands(src: DatasetReader, path: Path, meta: ModelMeta, model_dir: Path) -> list[int]:
    """The source bands to feed the model, checked against model.json (count, dtype, order).

    Count and dtype must match (a uint16 raster through a uint8 model gives garbage, not an
    error, so it is refused). Order is checked where both sides name their bands: a band
    name both give (red, nir, ...) at another position is refused (blue, green, red, nir
    against red, green, blue, nir as well as BGR against RGB); unrelated naming schemes are
    not compared.
    """
    bands = list(usable_bands(src, None, path))
    expected = meta.arch.in_channels
    model_names = [n.lower() for n in meta.band_names]
    if len(bands) != expected and "alpha" in model_names and src.count == expected:
        # Trained on a band GDAL tags alpha, selected with ingest's --bands (a 4th band of a
        # uint8 GeoTIFF that is really near-infrared: docs/usage-ingest.md): read it as data.
        bands = list(range(1, src.count + 1))
    if len(bands) != expected:
        raise InputError(
            f"{path} has {plural(len(bands), 'band')} (alpha excluded) but model {model_dir} expects {expected} "
            f"({', '.join(meta.band_names)})"
        )
    src_dtype, model_dtype = np.dtype(src.dtypes[bands[0] - 1]), np.dtype(meta.dtype)
    if src_dtype.kind != model_dtype.kind or (src_dtype.kind in "iu" and src_dtype != model_dtype):
        raise InputError(f"{path} is {src_dtype} but model {model_dir} was trained on {model_dtype} pixels")
    names = list(band_names(src, bands))
    if any(names.index(n) != model_names.index(n) for n in _named_once(names) & _named_once(model_names)):
        raise InputError(
            f"{path} has bands in the order {names} but model {model_dir} expects {model_names}"
            + _reorder_hint(path, names, bands, model_names)
        )
    return bands


def _reorder_hint(path: Path, names: list[str], bands: list[int], model_names: list[str]) -> str:
    """The gdal_translate call that writes the raster's bands in the model's order, when the
    raster holds each of the model's bands once; otherwise nothing."""
    if sorted(names) != sorted(model_names) or len(set(names)) != len(names):
        return ""
    order = " ".join(f"-b {bands[names.index(n)]}" for n in model_names)
    return f": reorder it first, e.g. gdal_translate {order} {path} {path.stem}_reordered.tif"


def _named_once(names: list[str]) -> set[str]:
    """Band names that say which band it is (not 'undefined' or 'gray'), each given once:
    the names whose positions must agree between a raster and its model."""
    return {n for n in names if n not in ("undefined", "gray") and names.count(n) == 1}


def predict_probabilities(
    model: NormalisedNet,
    batch: torch.Tensor,
    scale: float = 1.0,
    head: str = "b",
    precision: Precision = "fp32",
) -> torch.Tensor:
    """(N, C, h, w) raw pixels -> (N, k, h, w) float32 softmax, resampled as the model was trained.

    With ``scale != 1`` the input is resampled to the model's grid (bilinear, antialiased
    when shrinking, like an averaging read) and the probabilities back to (h, w).
    ``precision="bf16"`` runs the network under bfloat16 autocast (input normalisation and
    the returned probabilities stay float32): AMX CPUs and GPUs run it several times faster,
    with the same argmax on >= 99 % of pixels (tests/iic/test_bf16.py).
    """
    h, w = batch.shape[-2:]
    x = batch.float()
    if scale != 1.0:  # an even size at the model's scale keeps the pooling geometry exact
        size = (max(MIN_SIDE, 2 * round(h * scale / 2)), max(MIN_SIDE, 2 * round(w * scale / 2)))
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    x = x.contiguous(memory_format=torch.channels_last)
    per_pass = len(x) if x.device.type != "cpu" else max(1, CPU_FORWARD_PIXELS // (x.shape[-2] * x.shape[-1]))
    bf16 = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.inference_mode(), bf16:
        probs = torch.cat([model(part, heads=head)[head][0].float() for part in x.split(per_pass)])
    if probs.shape[-2:] != (h, w):
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return probs.contiguous()


def window_probabilities(
    model: NormalisedNet,
    windows: np.ndarray,
    scale: float = 1.0,
    head: str = "b",
    precision: Precision = "fp32",
) -> np.ndarray:
    """:func:`predict_probabilities` of a stack of windows read into host memory, on the
    model's device; float32 (N, k, h, w) back in host memory."""
    device = next(model.parameters()).device
    probs = predict_probabilities(model, torch.from_numpy(windows).to(device), scale, head, precision)
    return probs.cpu().numpy()
