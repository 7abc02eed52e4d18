"""Paired views: jitter touches RGB only, warps invert, band roles come from names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from geoseg.errors import ConfigError
from geoseg.iic.transforms import PairedTransform, Warp, colour_jitter, rgb_band_indices


@pytest.fixture(scope="module")
def dubai_batch(shared_data) -> torch.Tensor:
    """Two real 48x48 RGB crops plus a synthetic 'NIR' band (N, 4, 48, 48), raw 0..255 values."""
    img = np.asarray(Image.open(shared_data / "dubai" / "tile1" / "images" / "image_part_001.jpg"))
    crops = [img[100:148, 200:248], img[300:348, 400:448]]
    rgb = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float()
    nir = rgb.mean(1, keepdim=True).round() * 0.7 + 11.0
    return torch.cat([rgb, nir], 1)  # R, G, B, NIR


def test_rgb_band_indices_from_names() -> None:
    assert rgb_band_indices(["red", "green", "blue"]) == (0, 1, 2)
    assert rgb_band_indices(["nir", "Blue", "Green", "Red"]) == (3, 2, 1)
    assert rgb_band_indices(["band1", "band2", "band3", "band4"]) == (0, 1, 2)
    assert rgb_band_indices(["nir", "red", "green"]) is None  # IRRG false colour: no blue
    assert rgb_band_indices(["pan"]) is None
    assert rgb_band_indices(["band1", "band2", "band3", "band4"], override=(2, 3, 4)) == (1, 2, 3)
    with pytest.raises(ConfigError):
        rgb_band_indices(["a", "b"], override=(1, 2, 3))


def test_jitter_changes_rgb_and_keeps_other_bands_bit_identical(dubai_batch: torch.Tensor) -> None:
    g = torch.Generator().manual_seed(0)
    out = colour_jitter(dubai_batch, (0, 1, 2), 0.4, g)
    assert torch.equal(out[:, 3], dubai_batch[:, 3])
    assert not torch.allclose(out[:, :3], dubai_batch[:, :3], atol=1.0)
    assert (out >= 0).all()
    # the input is not modified in place
    assert dubai_batch[:, :3].max() <= 255


def test_jitter_with_rgb_elsewhere_leaves_band_0_alone(dubai_batch: torch.Tensor) -> None:
    x = dubai_batch[:, [3, 0, 1, 2]]  # NIR first
    out = colour_jitter(
        x, rgb_band_indices(["nir", "red", "green", "blue"]), 0.5, torch.Generator().manual_seed(1)
    )
    assert torch.equal(out[:, 0], x[:, 0])
    assert not torch.equal(out[:, 1:], x[:, 1:])


def test_hue_rotation_preserves_grey() -> None:
    grey = torch.full((1, 3, 4, 4), 100.0)
    out = colour_jitter(grey, (0, 1, 2), 0.0, torch.Generator())
    assert torch.equal(out, grey)


def test_flip_warp_is_exact_inverse(dubai_batch: torch.Tensor) -> None:
    warp = Warp(flip=torch.tensor([True, False]))
    forward = warp.apply(dubai_batch)
    assert torch.equal(forward[0], dubai_batch[0].flip(-1))
    assert torch.equal(forward[1], dubai_batch[1])
    assert torch.equal(warp.invert(forward), dubai_batch)


def test_affine_warp_and_unwarp_recovers_map_away_from_borders(dubai_batch: torch.Tensor) -> None:
    transform = PairedTransform(
        rgb=None, jitter=0.0, flip=True, affine=True, max_rotation=20, scale=(0.9, 1.1)
    )
    g = torch.Generator().manual_seed(3)
    view2, warp = transform(dubai_batch, g)
    assert warp.theta is not None
    assert not torch.allclose(view2, dubai_batch)
    # a smooth map: bilinear resampling twice is then nearly exact
    smooth = torch.nn.functional.avg_pool2d(dubai_batch, 5, stride=1, padding=2)
    back = warp.invert(warp.apply(smooth))
    inner = (slice(None), slice(None), slice(12, 36), slice(12, 36))
    err = (back[inner] - smooth[inner]).abs().mean() / smooth[inner].abs().mean()
    assert err < 0.02
    covered = warp.covered(torch.ones(2, 48, 48, dtype=torch.bool))
    assert covered[:, 12:36, 12:36].all()
    assert not covered.all()  # rotated corners have no counterpart
    # where the warp says pixels are covered, the values really come back
    close = (back - smooth).abs().amax(1) < 0.1 * smooth.abs().amax()
    assert close[covered].float().mean() > 0.95


def test_paired_transform_is_seeded(dubai_batch: torch.Tensor) -> None:
    t = PairedTransform(rgb=(0, 1, 2), jitter=0.4, flip=True, affine=True)
    a, wa = t(dubai_batch, torch.Generator().manual_seed(5))
    b, wb = t(dubai_batch, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(wa.flip, wb.flip)
