"""Paired views for IIC: the second view gx of a batch, and the warp g^-1 back.

IIC asks the network to give pixel u of x and pixel u of gx the same cluster. g is
photometric (colour jitter, which must not move pixels) and geometric (horizontal flip,
optionally rotation and scale); predictions of gx are warped back with g^-1 before the
joint is formed, so that pixel u of both maps looks at the same ground.

Everything works on whole batches on the training device (one random draw per image
from an explicit ``torch.Generator``), so a GPU run does not wait on CPU augmentation
and a seeded CPU run is reproducible.

Colour jitter touches the RGB bands only: near-infrared and other bands carry physical
meaning (vegetation indices, heights) that hue or saturation changes would destroy, so
they stay bit-identical. Jitter works on raw values of any dtype: every operation is
scale-free (multiplication, blending with a grey level, a linear hue rotation) and values
are only clamped at zero, so no "white level" has to be guessed for 12- or 16-bit data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from geoseg.errors import ConfigError

__all__ = ["PairedTransform", "Warp", "colour_jitter", "rgb_band_indices"]

_RED = ("red", "r")
_GREEN = ("green", "g")
_BLUE = ("blue", "b")
_NOT_VISIBLE = ("nir", "ir", "infrared", "nearinfrared", "swir", "re", "rededge", "dsm", "ndsm", "height")
_GENERIC = ("band", "b", "gray", "grey", "undefined", "")

# ITU-R BT.601 luma and the YIQ basis used for hue rotation.
_LUMA = (0.299, 0.587, 0.114)
_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = torch.linalg.inv(_RGB2YIQ)


def _norm(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalpha())


def rgb_band_indices(
    band_names: Sequence[str], override: Sequence[int] | None = None
) -> tuple[int, ...] | None:
    """0-based indexes of the red, green and blue bands, or None if the data has no RGB.

    ``override`` (1-based, as on the command line) wins. Otherwise bands named red/green/
    blue (or R/G/B) are used wherever they are; failing that, the first three bands are
    taken as RGB when their names are generic ("band1", "1", "") — unless a name says it
    is near-infrared or another non-visible band (e.g. ISPRS IRRG), then there is none.
    """
    n = len(band_names)
    if override is not None:
        if len(override) != 3 or len(set(override)) != 3 or not all(1 <= b <= n for b in override):
            raise ConfigError(f"rgb_bands must be three distinct 1-based band indexes <= {n}, got {override}")
        return tuple(b - 1 for b in override)
    names = [_norm(b) for b in band_names]
    found = []
    for aliases in (_RED, _GREEN, _BLUE):
        hits = [i for i, name in enumerate(names) if name in aliases]
        found.append(hits[0] if len(hits) == 1 else None)
    if all(i is not None for i in found):
        return tuple(found)  # type: ignore[arg-type]
    if n >= 3 and all(name in _GENERIC for name in names[:3]):
        return (0, 1, 2)
    return None


@dataclass
class Warp:
    """The geometric part g of a second view, per image, and its inverse.

    ``flip`` (N,) bool flips horizontally; ``theta`` (N, 2, 3) is the affine of
    ``F.affine_grid`` (output pixel -> input sampling point, normalised coordinates),
    applied after the flip, or None for flip only (then warping is exact, no resampling).
    """

    flip: torch.Tensor
    theta: torch.Tensor | None = None

    def apply(self, x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """g(x): flip, then the affine."""
        x = _flip(x, self.flip)
        if self.theta is not None:
            grid = F.affine_grid(self.theta.to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
        return x

    def invert(self, y: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """g^-1(y): maps of the second view back into the first view's frame."""
        if self.theta is not None:
            grid = F.affine_grid(_invert_affine(self.theta).to(y.dtype), list(y.shape), align_corners=False)
            y = F.grid_sample(y, grid, mode=mode, padding_mode="zeros", align_corners=False)
        return _flip(y, self.flip)

    def covered(self, valid: torch.Tensor) -> torch.Tensor:
        """(N, H, W) bool: pixels of view 1 that are valid and have a valid counterpart in view 2."""
        if self.theta is None:
            return valid  # a flip moves every pixel onto another pixel: nothing is lost
        m = valid.unsqueeze(1).float()
        back = self.invert(self.apply(m))
        return valid & (back[:, 0] > 0.999)


def _flip(x: torch.Tensor, flags: torch.Tensor) -> torch.Tensor:
    return torch.where(flags.view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def _invert_affine(theta: torch.Tensor) -> torch.Tensor:
    full = torch.zeros(theta.shape[0], 3, 3, dtype=torch.float64, device=theta.device)
    full[:, :2] = theta.double()
    full[:, 2, 2] = 1.0
    return torch.linalg.inv(full)[:, :2].to(theta.dtype)


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def colour_jitter(
    x: torch.Tensor, rgb: Sequence[int], strength: float, generator: torch.Generator
) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue per image, on the ``rgb`` bands only.

    Factors are drawn from [1 - s, 1 + s] (hue: a rotation of up to +-s/4 of a turn, the
    torchvision convention), as torchvision's ColorJitter(s, s, s, s/4) would, applied in
    a fixed order. Other bands are returned bit-identical (the same values, not recomputed).
    """
    if strength <= 0 or len(rgb) != 3:
        return x
    n, device = x.shape[0], x.device
    idx = torch.as_tensor(list(rgb), device=device)
    c = x.index_select(1, idx).float()
    shape = (n, 1, 1, 1)
    brightness = _uniform(n, 1 - strength, 1 + strength, generator, device).view(shape)
    contrast = _uniform(n, 1 - strength, 1 + strength, generator, device).view(shape)
    saturation = _uniform(n, 1 - strength, 1 + strength, generator, device).view(shape)
    hue = _uniform(n, -strength / 4, strength / 4, generator, device)
    luma = torch.tensor(_LUMA, device=device).view(1, 3, 1, 1)
    c = c * brightness
    grey_mean = (c * luma).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    c = (contrast * c + (1 - contrast) * grey_mean).clamp_min(0)
    grey = (c * luma).sum(1, keepdim=True)
    c = (saturation * c + (1 - saturation) * grey).clamp_min(0)
    c = _rotate_hue(c, hue).clamp_min(0)
    out = x.clone() if x.is_floating_point() else x.float()
    out[:, idx] = c.to(out.dtype)
    return out


def _rotate_hue(c: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``turns`` (N,) of a full turn: a rotation of the I/Q chroma plane in YIQ."""
    angle = turns * 2 * math.pi
    cos, sin = angle.cos(), angle.sin()
    n = c.shape[0]
    rot = torch.zeros(n, 3, 3, device=c.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = cos, -sin
    rot[:, 2, 1], rot[:, 2, 2] = sin, cos
    mat = _YIQ2RGB.to(c.device) @ rot @ _RGB2YIQ.to(c.device)  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", mat, c)


@dataclass
class PairedTransform:
    """Draws the second view of a batch: jitter (RGB only), flip and optional affine.

    Attributes:
        rgb: 0-based RGB band indexes (see :func:`rgb_band_indices`), None for no jitter.
        jitter: colour jitter strength s in [0, 1].
        flip: random horizontal flips (probability 1/2 per image).
        affine: random rotation and scale (resampled bilinearly; borders become invalid).
        max_rotation: degrees, for ``affine``.
        scale: (min, max) zoom factor, for ``affine``.
    """

    rgb: tuple[int, ...] | None
    jitter: float = 0.4
    flip: bool = True
    affine: bool = False
    max_rotation: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, Warp]:
        """(gx, warp) for a float batch x (N, C, H, W) of raw values."""
        n, device = x.shape[0], x.device
        x2 = colour_jitter(x, self.rgb, self.jitter, generator) if self.rgb else x
        if self.flip:
            flags = torch.rand(n, generator=generator, device=device) < 0.5
        else:
            flags = torch.zeros(n, dtype=torch.bool, device=device)
        theta = None
        if self.affine:
            angle = _uniform(n, -self.max_rotation, self.max_rotation, generator, device) * math.pi / 180
            zoom = _uniform(n, self.scale[0], self.scale[1], generator, device)
            theta = torch.zeros(n, 2, 3, device=device)
            # sampling at theta @ u shows the image enlarged by `zoom` and rotated by `angle`
            theta[:, 0, 0], theta[:, 0, 1] = angle.cos() / zoom, -angle.sin() / zoom
            theta[:, 1, 0], theta[:, 1, 1] = angle.sin() / zoom, angle.cos() / zoom
        warp = Warp(flags, theta)
        return warp.apply(x2), warp
