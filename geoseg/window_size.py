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
from geoseg.iic.model import NormalisedNet
from geoseg.io.windows import WindowGrid, offsets

__all__ = [
    "FORWARD_BYTES",
    "MAX_MODEL_SIDE",
    "SEAMS_PER_WINDOW",
    "Probe",
    "RectGrid",
    "activation_bytes_per_pixel",
    "default_grid",
    "downsampling",
    "largest_model_side",
    "max_side_for_memory",
    "overlap_factor",
    "probe",
    "seam_pixels",
]

MAX_MODEL_SIDE = 512  # px at the model's scale: beyond it the overlap factor gains little ...
SEAMS_PER_WINDOW = 4  # ... unless the seam is large (a deep trunk): a window may grow to 4 seams
FORWARD_BYTES = 1 << 30  # activations of one forward pass of a batch of windows


def activation_bytes_per_pixel(model: NormalisedNet) -> float:
    """Peak activation bytes per input pixel of one forward pass (an estimate).

    Two float32 copies of the largest feature map of one forward pass (input and output
    of a layer alive at once), per input pixel, from the probe pass of :func:`probe`.
    Measured on the CPU at 512 px windows (2026-12-02): ``small`` ~280 B/px (estimate
    256), ``iic`` ~1000 B/px (estimate 1024).
    """
    return probe(model).activation_bytes_per_pixel


def downsampling(model: NormalisedNet) -> int:
    """The trunk's total downsampling (IIC's trunk 2, the U-Net 4, ResNet-18 FPN 32):
    windows are aligned to it, so that every window meets the same pooling and stride grid
    as one pass over the whole raster would."""
    return probe(model).downsampling


PROBE_SIDE = 256  # px of the probe pass (a multiple of every trunk's stride)


@dataclass(frozen=True)
class Probe:
    """What one small forward pass tells about a network's geometry and memory."""

    downsampling: int  # the probe's side over the smallest feature map of the trunk
    activation_bytes_per_pixel: float


def probe(model: NormalisedNet) -> Probe:
    """One forward pass of a blank ``PROBE_SIDE`` window in eval mode, its feature maps
    recorded by hooks; remembered on the model.

    Measured rather than read from the layers: a ResNet downsamples in strided convolutions
    on its main path and again, in parallel, in its shortcuts, which a walk over the layers
    would count twice; and the largest map may come before the first pooling (the U-Net).
    """
    cached = getattr(model, "_geometry_probe", None)
    if isinstance(cached, Probe):
        return cached
    trunk = set(model.trunk.modules())
    trunk_sides: list[int] = []
    largest = [0]

    def record(module: torch.nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            largest[0] = max(largest[0], output[0].numel())
            if module in trunk:
                trunk_sides.append(int(output.shape[-1]))

    hooks = [module.register_forward_hook(record) for module in model.modules()]
    parameter = next(model.parameters())
    channels = int(model.arch.in_channels)
    blank = torch.zeros(1, channels, PROBE_SIDE, PROBE_SIDE, device=parameter.device, dtype=parameter.dtype)
    training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(blank, heads="b")
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    result = Probe(
        downsampling=max(1, PROBE_SIDE // min(trunk_sides, default=PROBE_SIDE)),
        activation_bytes_per_pixel=2 * 4 * largest[0] / PROBE_SIDE**2,
    )
    model._geometry_probe = result  # type: ignore[assignment]
    return result


def max_side_for_memory(bytes_per_pixel: float, batch_size: int, budget: int = FORWARD_BYTES) -> int:
    """The largest window side (px at the model's scale) whose batch fits into ``budget`` bytes."""
    return int(math.sqrt(budget / (bytes_per_pixel * batch_size)))


def largest_model_side(model: NormalisedNet, batch_size: int, seam: int) -> int:
    """The largest default window side (px at the model's scale): :data:`MAX_MODEL_SIDE`, or
    :data:`SEAMS_PER_WINDOW` seams (``seam``, model px) where that is more, so that a deep
    trunk's seam of twice its receptive radius does not leave windows that overlap almost
    entirely; never more than a forward pass of ``batch_size`` windows fits in memory."""
    memory = max_side_for_memory(activation_bytes_per_pixel(model), batch_size)
    return min(max(MAX_MODEL_SIDE, SEAMS_PER_WINDOW * seam), memory)


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
