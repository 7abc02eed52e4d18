"""COG writing: internal 512 tiles, mode overviews, colour table, georeferencing, atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from geoseg.errors import InputError
from geoseg.io.cog import tiled_profile, to_cog, validate_cog

TRANSFORM = Affine(0.1, 0, 400_000.0, 0, -0.1, 3_280_000.0)


def _tiled(path: Path, data: np.ndarray) -> Path:
    profile = tiled_profile(CRS.from_epsg(32617), TRANSFORM, *data.shape, "uint8", 255)
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, data.shape[0], 300):  # written in row blocks, as segment does
            block = data[row : row + 300]
            dst.write(block, 1, window=rasterio.windows.Window(0, row, data.shape[1], len(block)))
    return path


def test_cog_is_valid_with_mode_overviews_and_colour_table(tmp_path: Path) -> None:
    rows, cols = np.indices((1300, 1100))
    # 4x4-pixel checker of ids 0/1 with a sparse sprinkle of 2: the overview must pick the
    # majority id, never an average like 0.5 or an id that is rare
    data = (((rows // 4) + (cols // 4)) % 2).astype(np.uint8)
    data[(rows % 4 == 0) & (cols % 4 == 0)] = 2
    data[:, 1000:] = 3
    data[:50, :50] = 255
    src = _tiled(tmp_path / "tiled.tif", data)
    colours = {0: (10, 20, 30, 255), 1: (200, 100, 0, 255), 2: (0, 0, 255, 255), 3: (9, 9, 9, 255)}
    out = to_cog(
        src, tmp_path / "out.tif", resampling="mode", colormap=colours, tags={"k": "v"}, description="ids"
    )
    valid, errors, _ = validate_cog(out)
    assert valid, errors
    with rasterio.open(out) as cog:
        assert cog.crs.to_epsg() == 32617 and cog.transform == TRANSFORM
        assert cog.block_shapes == [(512, 512)]
        assert cog.nodata == 255 and cog.descriptions == ("ids",) and cog.tags()["k"] == "v"
        assert cog.overviews(1) == [2, 4]
        for i, rgba in colours.items():
            assert cog.colormap(1)[i] == rgba
        assert np.array_equal(cog.read(1), data)
        overview = cog.read(1, out_shape=(650, 550))  # served from the first overview
    half_rows, half_cols = np.indices(overview.shape)
    expected = (((half_rows // 2) + (half_cols // 2)) % 2).astype(np.uint8)
    inner = overview[30:, 30:500]  # away from the nodata corner and the band of 3s
    assert np.array_equal(inner, expected[30:, 30:500]), "mode keeps the majority id of each 2x2"
    assert 2 not in inner, "the rare id (1 pixel in 4) never wins a mode overview"
    assert np.all(overview[:, 510:] == 3)


def test_validate_cog_rejects_a_plain_striped_tiff_and_a_missing_file(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tif"
    with rasterio.open(
        plain, "w", driver="GTiff", height=1200, width=1200, count=1, dtype="uint8",
        crs="EPSG:2056", transform=TRANSFORM,
    ) as dst:  # fmt: skip
        dst.write(np.zeros((1, 1200, 1200), np.uint8))
    assert validate_cog(plain)[0] is False
    with pytest.raises(InputError):
        validate_cog(tmp_path / "absent.tif")


def test_failed_copy_leaves_no_output(tmp_path: Path) -> None:
    with pytest.raises(Exception):  # noqa: B017 - GDAL's own error type for a missing source
        to_cog(tmp_path / "absent.tif", tmp_path / "out.tif")
    assert list(tmp_path.iterdir()) == []
