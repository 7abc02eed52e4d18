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

__all__ = ["WindowGrid", "blend_weights", "offsets", "ramp"]


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
    def from_fraction(
        cls, height: int, width: int, window: int, overlap: float, align: int = 1
    ) -> WindowGrid:
        """Grid whose overlap is a fraction of the window (rounded up to whole pixels).

        With ``align > 1`` the window, the overlap and so every offset are multiples of
        ``align``, and so must ``height`` and ``width`` be (pad the raster): a network that
        pools by ``align`` then sees every window on the same pooling grid as a single pass.
        """
        if height % align or width % align:
            raise ConfigError(f"grid {height}x{width} is not a multiple of align={align}: pad it")
        window = max(align, window // align * align)
        step = int(np.ceil(overlap * window / align)) * align
        return cls(height, width, window, min(window - align, step))

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

    def borders(self, row: int, col: int) -> tuple[bool, bool, bool, bool]:
        """Which edges (top, bottom, left, right) of the window at (row, col) lie on the border."""
        return (
            row == 0,
            row + self.win_height >= self.height,
            col == 0,
            col + self.win_width >= self.width,
        )

    def rows_final_after(self, index: int) -> int:
        """Rows ``[0, n)`` that no window row after ``index`` touches (all of them after the last)."""
        rows = self.row_offsets
        return self.height if index + 1 >= len(rows) else rows[index + 1]


def ramp(
    length: int,
    overlap: int,
    margin: int = 0,
    floor: float = 1e-3,
    at_start: bool = False,
    at_end: bool = False,
) -> np.ndarray:
    """1-D weights: ``floor`` within ``margin`` pixels of each end, rising linearly to 1 at
    ``overlap - margin`` pixels from the end, 1 in the middle.

    ``margin`` is the network's receptive radius: predictions that close to a window edge
    saw zero padding instead of image and are (almost) ignored wherever a neighbouring
    window covers the pixel. With ``overlap >= 2 * margin`` every pixel is then decided by
    a window that saw its whole context, so the blend equals a single pass. An end that
    lies on the raster's border (``at_start``/``at_end``) keeps full weight: no window
    beyond it could do better, and a single pass sees the same border there.
    """
    if overlap <= 0:
        return np.ones(length, np.float32)
    margin = max(0, min(margin, (overlap - 1) // 2))
    index = np.arange(length, dtype=np.float32)
    far = np.full(length, length + overlap, np.float32)  # a border end never falls off
    distance = np.minimum(far if at_start else index, far if at_end else index[::-1])
    rise = max(1.0, overlap - 2.0 * margin)
    return np.clip((distance + 1.0 - margin) / rise, floor, 1.0).astype(np.float32)


def blend_weights(
    height: int,
    width: int,
    overlap: int,
    margin: int = 0,
    floor: float = 1e-3,
    borders: tuple[bool, bool, bool, bool] = (False, False, False, False),
) -> np.ndarray:
    """(height, width) float32 weights of one window: the outer product of two ramps.

    ``borders`` says which of its (top, bottom, left, right) edges lie on the raster border.
    """
    top, bottom, left, right = borders
    return np.outer(
        ramp(height, overlap, margin, floor, top, bottom), ramp(width, overlap, margin, floor, left, right)
    )
