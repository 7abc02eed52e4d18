"""PNG previews: cluster and class maps coloured by their tables, with a legend, so users can look."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from rasterio.enums import Resampling

from geoseg.io.fileio import atomic_path
from geoseg.io.outputs import NODATA
from geoseg.io.sources import open_dataset

NODATA_COLOUR = (0, 0, 0)
LEGEND_ROW = 18  # pixels per legend entry
LEGEND_FONT_SIZE = 12

__all__ = ["NODATA_COLOUR", "LegendClass", "colourize", "save_png", "with_legend", "write_preview"]


class LegendClass(Protocol):
    """What a preview shows of a cluster (a model's ``Cluster``, a style's ``StyleClass``)."""

    @property
    def id(self) -> int: ...

    @property
    def colour(self) -> tuple[int, int, int]: ...

    @property
    def label(self) -> str: ...


def colourize(ids: np.ndarray, colours: Sequence[tuple[int, int, int]], nodata: int = NODATA) -> np.ndarray:
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


def with_legend(rgb: np.ndarray, entries: Sequence[tuple[tuple[int, int, int], str]]) -> np.ndarray:
    """``rgb`` with a white legend panel on its right: one swatch and label per entry.

    Labels are drawn with Pillow's bundled TrueType font (Latin, Greek, Cyrillic), so names
    such as "Gebäude" come out as typed; the picture is padded below when the legend is
    taller than it.
    """
    from PIL import ImageDraw, ImageFont

    if not entries:
        return rgb
    font = ImageFont.load_default(size=LEGEND_FONT_SIZE)
    swatch = LEGEND_ROW - 6
    text_width = max(int(font.getlength(label)) for _, label in entries)
    width = 8 + swatch + 6 + text_width + 8
    height = max(rgb.shape[0], 8 + LEGEND_ROW * len(entries))
    canvas = Image.new("RGB", (rgb.shape[1] + width, height), "white")
    canvas.paste(Image.fromarray(np.ascontiguousarray(rgb)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    left = rgb.shape[1] + 8
    for row, (colour, label) in enumerate(entries):
        top = 6 + row * LEGEND_ROW
        draw.rectangle([left, top, left + swatch, top + swatch], fill=tuple(colour), outline=(40, 40, 40))
        draw.text((left + swatch + 6, top + swatch / 2), label, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(canvas)


def write_preview(clusters_tif: Path, clusters: Sequence[LegendClass], out: Path, size: int) -> Path:
    """PNG of the cluster COG with a legend of the clusters it shows, read decimated (from
    its overviews): never the full raster."""
    with open_dataset(clusters_tif) as src:
        factor = max(1.0, max(src.height, src.width) / size)
        shape = (max(1, round(src.height / factor)), max(1, round(src.width / factor)))
        ids = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    colours = [(128, 128, 128)] * (max((c.id for c in clusters), default=-1) + 1)
    for c in clusters:
        colours[c.id] = c.colour
    shown = set(np.unique(ids).tolist())
    entries = [(c.colour, c.label) for c in sorted(clusters, key=lambda c: c.id) if c.id in shown]
    return save_png(with_legend(colourize(ids, colours), entries), out, max_size=None)
