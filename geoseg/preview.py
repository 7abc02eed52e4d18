"""PNG previews: cluster and class maps coloured by their tables, so users can look."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from geoseg.fileio import atomic_path

NODATA_COLOUR = (0, 0, 0)


def colourize(ids: np.ndarray, colours: Sequence[tuple[int, int, int]], nodata: int = 255) -> np.ndarray:
    """(H, W) integer ids -> (H, W, 3) uint8 RGB; nodata and unknown ids are black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colours)] = np.asarray(colours, np.uint8).reshape(-1, 3)[:256]
    lut[nodata] = NODATA_COLOUR
    return lut[np.clip(ids, 0, 255).astype(np.uint8)]


def save_png(rgb: np.ndarray, path: str | Path, max_size: int | None = 2048) -> Path:
    """Save an RGB array as PNG (atomically), downsampled to ``max_size`` on its long side."""
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if max_size is not None and max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.Resampling.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
