"""The default inference window: chosen from the model, the memory of one forward pass and the raster.

Every pixel is predicted by each window that covers it, so the cost of sliding-window
inference is the network's cost per pixel times the *overlap factor* (predicted pixels /
raster pixels). Windows of the training patch size (64 or 128 px) with a seam of twice the
receptive radius predict each pixel about twice; windows of a few hundred pixels with
only the seam that seamless blending needs predict it about 1.1 to 1.2 times.

The default therefore takes, among the square sides from the patch size up to
:data:`MAX_MODEL_SIDE` pixels at the model's scale (and no larger than a forward pass of
``batch_size`` windows fits into :data:`FORWARD_BYTES`), the side whose grid predicts the
fewest pixels of this raster: a 1000 px image gets three 358 px windows per axis rather
than two 512 px windows and a third shifted back. ``--window`` overrides it.
"""

from __future__ import annotations

import math

import torch

from geoseg.windows import WindowGrid

__all__ = [
    "FORWARD_BYTES",
    "MAX_MODEL_SIDE",
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


def default_grid(
    height: int, width: int, min_side: int, max_side: int, seam: int, align: int, fraction: float = 0.0
) -> WindowGrid:
    """The grid with the fewest predicted pixels among sides ``min_side..max_side`` (source px).

    ``height`` and ``width`` are multiples of ``align`` (the padded raster); every side is a
    multiple of ``align`` and larger than the seam. The overlap is the seam, or ``fraction``
    of the side where that is more (``--overlap``). Ties go to the larger side (fewer
    windows). A raster smaller than ``max_side`` gets one window.
    """
    low = max(align, math.ceil(min_side / align) * align, seam + align)
    high = max(low, min(max_side // align * align, math.ceil(max(height, width) / align) * align))
    best: WindowGrid | None = None
    for side in range(low, high + 1, align):
        overlap = max(seam, math.ceil(fraction * side / align) * align)
        grid = WindowGrid(height, width, side, min(overlap, side - align))
        if best is None or overlap_factor(grid) <= overlap_factor(best):
            best = grid
    assert best is not None  # low <= high: at least one side
    return best
