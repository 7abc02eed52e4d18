"""The default inference window: chosen from the model, the memory of one forward pass and the raster.

Every pixel is predicted by each window that covers it, so the cost of sliding-window
inference is the network's cost per pixel times the *overlap factor* (predicted pixels /
raster pixels). Windows of the training patch size (64 or 128 px) with a seam of twice the
receptive radius predict each pixel about twice; windows of a few hundred pixels with
only the seam that seamless blending needs predict it about 1.1 to 1.2 times.

The default therefore takes, for each axis, among the sides from the patch size up to
:data:`MAX_MODEL_SIDE` pixels at the model's scale (and no larger than a forward pass of
``batch_size`` windows fits into :data:`FORWARD_BYTES`), the side whose windows predict
the fewest pixels of this raster: a 1000 px image gets three 358 px windows per axis
rather than two 512 px windows and a third shifted back. Windows may be rectangular
(:class:`RectGrid`). ``--window`` overrides it (square windows, as before).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from geoseg.errors import ConfigError
from geoseg.io.windows import WindowGrid, offsets

__all__ = [
    "FORWARD_BYTES",
    "MAX_MODEL_SIDE",
    "RectGrid",
    "activation_bytes_per_pixel",
    "default_grid",
    "max_side_for_memory",
    "overlap_factor",
    "seam_pixels",
]

MAX_MODEL_SIDE = 512  # px at the model's scale: beyond it the overlap factor gains little
FORWARD_BYTES = 1 << 30  # activations of one forward pass of a batch of windows


def activation_bytes_per_pixel(model: torch.nn.Module) -> float:
    """Peak activation bytes per input pixel of one forward pass (an estimate).

    Two float32 tensors of the widest convolution alive at once, at the resolution after
    the network's pooling. Measured on the CPU at 512 px windows (2026-12-02): ``small``
    ~280 B/px (estimate 256), ``iic`` ~1000 B/px (estimate 1024).
    """
    widest = max((m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)), default=1)
    pooling = 1
    for module in model.modules():
        if isinstance(module, torch.nn.MaxPool2d):
            pooling *= int(module.stride if isinstance(module.stride, int) else module.stride[0])
    return 2 * 4 * widest / pooling**2


def max_side_for_memory(bytes_per_pixel: float, batch_size: int, budget: int = FORWARD_BYTES) -> int:
    """The largest window side (px at the model's scale) whose batch fits into ``budget`` bytes."""
    return int(math.sqrt(budget / (bytes_per_pixel * batch_size)))


def seam_pixels(receptive_radius: float, align: int) -> int:
    """Overlap (source px, a multiple of ``align``) that makes the blend equal a single pass.

    Twice the receptive radius plus one alignment step (see :func:`geoseg.windows.ramp`).
    """
    return math.ceil((2 * receptive_radius + align) / align) * align


def overlap_factor(grid: WindowGrid) -> float:
    """Predicted pixels / grid pixels."""
    return len(grid) * grid.win_height * grid.win_width / (grid.height * grid.width)


@dataclass(frozen=True)
class RectGrid(WindowGrid):
    """A :class:`geoseg.windows.WindowGrid` whose windows are ``window`` rows by ``window_cols``
    columns: each axis gets the side that fits it best (a square side cannot fit a 2000 x 1500
    raster with less than 1.23 overlap factor)."""

    window_cols: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.overlap < self.window_cols:
            raise ConfigError(f"overlap {self.overlap} must be below the window width {self.window_cols}")

    @property
    def col_offsets(self) -> list[int]:
        return offsets(self.width, self.window_cols, self.window_cols - self.overlap)

    @property
    def win_width(self) -> int:
        return min(self.window_cols, self.width)


def _best_side(length: int, low: int, high: int, overlap_of: Callable[[int], int], align: int) -> int:
    """The side in ``[low, high]`` (multiples of ``align``) whose windows predict the fewest pixels
    of an axis of ``length``; ties go to the larger side (fewer windows)."""
    high = max(low, min(high, math.ceil(length / align) * align))
    best, best_cost = low, math.inf
    for side in range(low, high + 1, align):
        overlap = min(overlap_of(side), side - align)
        cost = len(offsets(length, side, side - overlap)) * min(side, length)
        if cost <= best_cost:
            best, best_cost = side, cost
    return best


def default_grid(
    height: int, width: int, min_side: int, max_side: int, seam: int, align: int, fraction: float = 0.0
) -> WindowGrid:
    """The grid with the fewest predicted pixels for sides ``min_side..max_side`` (source px).

    ``height`` and ``width`` are multiples of ``align`` (the padded raster); each side is a
    multiple of ``align``, larger than the seam, and chosen for its own axis. The overlap
    is the seam, or ``fraction`` of the smaller side where that is more (``--overlap``).
    An axis shorter than ``max_side`` gets one window.
    """
    low = max(align, math.ceil(min_side / align) * align, seam + align)
    high = max(low, max_side // align * align)

    def overlap_of(side: int) -> int:
        return max(seam, math.ceil(fraction * side / align) * align)

    rows = _best_side(height, low, high, overlap_of, align)
    cols = _best_side(width, low, high, overlap_of, align)
    overlap = min(overlap_of(min(rows, cols)), min(rows, cols) - align)
    return RectGrid(height, width, rows, overlap, window_cols=cols)
