"""Pixel-space window grids over a raster, and the blending weights of overlapping windows.

Sliding-window inference cuts a raster into overlapping windows, predicts each and blends
the class probabilities where windows overlap. Two properties matter:

- the grid covers the raster to its last row and column: the last window of a row or
  column is shifted back to end exactly at the edge, so every window is full size
  (no padding) and nothing is left unpredicted when the size is not a multiple of the
  stride;
- the weights fall off toward a window's edges, where a convolutional network sees zero
  padding instead of context, so each pixel is decided mostly by the windows that see it
  near their centre and no seam appears. Weights stay strictly positive, so a pixel that
  only one window covers (the raster's own border) is still predicted by it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from geoseg.errors import ConfigError


def offsets(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels along an axis of ``length`` pixels.

    Starts are 0, stride, 2*stride, ... and a last one at ``length - window`` so the axis
    is covered to its end. An axis shorter than the window gets one start at 0 (the window
    is then clipped to the axis).
    """
    if length < 1 or window < 1 or stride < 1:
        raise ConfigError(f"need length, window, stride >= 1, got {length}, {window}, {stride}")
    if stride > window:
        raise ConfigError(f"stride {stride} > window {window} would leave gaps")
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


@dataclass(frozen=True)
class WindowGrid:
    """Overlapping square windows over a ``height`` x ``width`` pixel grid.

    ``window`` is the side in pixels (clipped to the raster where it is smaller) and
    ``overlap`` the number of pixels shared by neighbouring windows.
    """

    height: int
    width: int
    window: int
    overlap: int

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < self.window:
            raise ConfigError(f"overlap must be in [0, window), got {self.overlap} for window {self.window}")

    @classmethod
    def from_fraction(cls, height: int, width: int, window: int, overlap: float) -> WindowGrid:
        """Grid whose overlap is a fraction of the window (rounded up to whole pixels)."""
        return cls(height, width, window, min(window - 1, int(np.ceil(overlap * window))))

    @property
    def stride(self) -> int:
        return self.window - self.overlap

    @property
    def row_offsets(self) -> list[int]:
        return offsets(self.height, self.window, self.stride)

    @property
    def col_offsets(self) -> list[int]:
        return offsets(self.width, self.window, self.stride)

    @property
    def win_height(self) -> int:
        return min(self.window, self.height)

    @property
    def win_width(self) -> int:
        return min(self.window, self.width)

    def __len__(self) -> int:
        return len(self.row_offsets) * len(self.col_offsets)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """(row, col) offsets, row by row."""
        cols = self.col_offsets
        for row in self.row_offsets:
            for col in cols:
                yield row, col

    def rows_final_after(self, index: int) -> int:
        """Rows ``[0, n)`` that no window row after ``index`` touches (all of them after the last)."""
        rows = self.row_offsets
        return self.height if index + 1 >= len(rows) else rows[index + 1]


def ramp(length: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """1-D weights: 1 in the middle, falling linearly to ``floor`` over ``overlap`` pixels at each end."""
    if overlap <= 0:
        return np.ones(length, np.float32)
    distance = np.minimum(np.arange(length), np.arange(length)[::-1]).astype(np.float32)
    return np.clip((distance + 1.0) / (overlap + 1.0), floor, 1.0).astype(np.float32)


def blend_weights(height: int, width: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """(height, width) float32 weights of one window: the outer product of two ramps."""
    return np.outer(ramp(height, overlap, floor), ramp(width, overlap, floor))
