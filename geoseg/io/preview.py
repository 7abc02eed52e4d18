"""PNG previews: cluster and class maps coloured by their tables, with a legend, so users can look."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from geoseg.fileio import atomic_path

NODATA_COLOUR = (0, 0, 0)
LEGEND_ROW = 18  # pixels per legend entry
LEGEND_FONT_SIZE = 12

__all__ = ["NODATA_COLOUR", "colourize", "save_png", "with_legend"]


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
