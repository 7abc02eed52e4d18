"""The default inference window: overlap factor <= 1.2, never below the patch, bounded by memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from geoseg.config import SegmentConfig
from geoseg.iic.model import Architecture, build_model
from geoseg.models.bundle import ModelMeta, default_clusters
from geoseg.strips import plan_grid, receptive_radius
from geoseg.window_size import (
    MAX_MODEL_SIDE,
    activation_bytes_per_pixel,
    default_grid,
    downsampling,
    max_side_for_memory,
    overlap_factor,
)


def model_and_meta(preset: str = "small", patch: int = 64, scale: float = 1.0):
    torch.manual_seed(0)
    arch = Architecture(in_channels=3, k_a=8, k_b=4, preset=preset)
    meta = ModelMeta(
        architecture=arch.to_dict(),
        band_names=["red", "green", "blue"],
        band_mean=[110.0] * 3,
        band_std=[50.0] * 3,
        dtype="uint8",
        patch_size=patch,
        scale=scale,
        loss={},
        clusters=default_clusters(4),
    )
    return build_model(arch).eval(), meta


SIZES = [(1000, 1000), (1024, 1024), (2000, 1500), (4000, 3000), (5000, 300), (20000, 20000), (30000, 7000)]


@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("size", SIZES)
def test_the_default_grid_predicts_each_pixel_at_most_1_2_times(scale: float, size: tuple[int, int]) -> None:
    model, meta = model_and_meta("small", scale=scale)
    grid = plan_grid(model, meta, SegmentConfig(), *size)
    assert overlap_factor(grid) <= 1.2
    # the seam is what seamless blending needs: twice the receptive radius (+ alignment)
    assert grid.overlap >= 2 * receptive_radius(model) / scale
    assert max(grid.win_height, grid.win_width) <= MAX_MODEL_SIDE / scale


@pytest.mark.parametrize("size", [(1024, 1024), (20000, 20000)])
def test_the_wide_iic_network_is_memory_bound_at_batch_8_and_reaches_1_2_with_smaller_batches(
    size: tuple[int, int],
) -> None:
    model, meta = model_and_meta("iic")
    assert overlap_factor(plan_grid(model, meta, SegmentConfig(), *size)) <= 1.25
    assert overlap_factor(plan_grid(model, meta, SegmentConfig(batch_size=2), *size)) <= 1.2


def test_the_old_default_predicted_each_pixel_about_twice() -> None:
    """The patch-sized windows of before, on the issue's 1000 x 1000 Dubai-sized image."""
    model, meta = model_and_meta(patch=64)
    old = plan_grid(model, meta, SegmentConfig(window=64, overlap=0.25), 1000, 1000)
    new = plan_grid(model, meta, SegmentConfig(), 1000, 1000)
    assert len(old) > 10 * len(new)
    assert overlap_factor(old) > 1.8 > 1.2 > overlap_factor(new)


def test_the_window_is_never_below_the_patch_size() -> None:
    model, meta = model_and_meta(patch=640)  # a patch larger than the 512 px cap
    grid = plan_grid(model, meta, SegmentConfig(), 3000, 3000)
    assert grid.window >= 640


def test_window_and_overlap_options_override_the_choice() -> None:
    model, meta = model_and_meta()
    assert plan_grid(model, meta, SegmentConfig(window=96), 1000, 1000).window == 96
    grid = plan_grid(model, meta, SegmentConfig(overlap=0.5), 1000, 1000)
    assert grid.overlap >= grid.window // 2  # the fraction is kept with a chosen window


def test_memory_bounds_the_window_of_a_wide_network() -> None:
    """The iic preset (512 channels) with a large batch gets smaller windows than with one window."""
    model, meta = model_and_meta("iic")
    per_pixel = activation_bytes_per_pixel(model)
    big_batch = plan_grid(model, meta, SegmentConfig(batch_size=32), 8000, 8000)
    one = plan_grid(model, meta, SegmentConfig(batch_size=1), 8000, 8000)
    assert big_batch.window <= max_side_for_memory(per_pixel, 32) < one.window
    assert 32 * big_batch.window**2 * per_pixel <= 1 << 30


def test_small_rasters_get_one_window_and_each_axis_gets_its_own_side() -> None:
    assert len(default_grid(256, 96, 64, 512, 38, 2)) == 1
    grid = default_grid(2000, 1500, 64, 512, 38, 2)
    assert grid.row_offsets[-1] + grid.win_height == 2000 and grid.col_offsets[-1] + grid.win_width == 1500
    assert grid.win_height != grid.win_width  # a square side would predict 1.23 x the pixels
    assert overlap_factor(grid) < 1.2 < overlap_factor(default_grid(2000, 1500, 512, 512, 38, 2))


def test_a_deep_trunk_is_aligned_to_its_stride_and_its_windows_span_several_seams() -> None:
    """PiCIE's ResNet-18 FPN: stride 32 in strided convolutions (no max-pool to count) and a
    receptive radius of ~250 px, so a 512 px window would be nearly all seam."""
    from geoseg.picie.model import PiCIEArchitecture, PiCIENet

    arch = PiCIEArchitecture(in_channels=3, k_b=4, trunk="resnet18-fpn")
    model = PiCIENet(arch).eval()
    _, meta = model_and_meta()
    meta = dataclasses.replace(meta, architecture=arch.to_dict())
    assert downsampling(model) == 32
    grid = plan_grid(model, meta, SegmentConfig(), 4000, 3000)
    assert grid.window % 32 == 0 and grid.overlap % 32 == 0
    assert all(r % 32 == 0 and c % 32 == 0 for r, c in grid)
    assert grid.overlap >= 2 * receptive_radius(model) > MAX_MODEL_SIDE / 2
    assert overlap_factor(grid) < 3.0  # 512 px windows at the seam's stride 32 would predict ~18x
    per_pixel = activation_bytes_per_pixel(model)
    assert SegmentConfig().batch_size * grid.window**2 * per_pixel <= 1 << 30


def test_the_probe_measures_each_trunks_stride() -> None:
    from geoseg.cirs.model import CIRSArchitecture, CIRSNet

    assert downsampling(model_and_meta()[0]) == 2  # IIC: one max-pool
    assert downsampling(CIRSNet(CIRSArchitecture(in_channels=3, k_b=4))) == 4  # the U-Net's two
